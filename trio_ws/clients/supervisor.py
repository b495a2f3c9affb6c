"""``trio-ws run -- CMD``: supervise a child in its own process group, publish its
output through a `Producer`, apply the server's controls (pause, resume, stop;
PROTOCOL.md 4.3), report its statuses and its project's progress, and flush
before exit.
"""

from __future__ import annotations

import os
import select
import signal
import ssl
import subprocess
import sys
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from trio_ws.clients.browser_sessions import BrowserSessions
from trio_ws.clients.browser_view import INTERVAL as SCREENSHOT_INTERVAL
from trio_ws.clients.browser_view import BrowserView
from trio_ws.clients.outbox import DEFAULT_CAPACITY, LineSplitter, Outbox, Report, stderr_report
from trio_ws.clients.producer import Producer, new_producer_id
from trio_ws.core import defaults
from trio_ws.core.protocol import Stream
from trio_ws.data.features import read_features
from trio_ws.data.progress import Progress, ProgressError, ProgressReader
from trio_ws.runtime.signals import exit_now, on_stop_signals
from trio_ws.runtime.streak import FailureStreak

CONNECT_WAIT: Final = 3.0
"""How long `run`/`publish` wait for the first welcome before starting anyway."""
FLUSH_WITHIN: Final = defaults.FLUSH_WITHIN
KILL_AFTER: Final = defaults.KILL_AFTER
DRAIN_AFTER_EXIT: Final = 2.0
FEATURES_LOCK_TIMEOUT: Final = 1.0
"""Seconds a features read waits for the orchestrator's write lock."""
"""How long output is still read after the child exited (grandchildren may hold the pipe)."""
PAUSE_FILE: Final = Path(".autoforge") / ".pause_drain"
READ_SIZE: Final = 65536
ECHO_BUFFER: Final = 1024 * 1024
"""Bytes of a child's output waiting to be printed locally; more are dropped (and counted)."""
FAILURE: Final = 1
"""Exit status when the server refused us or items were not delivered (publish)."""
PROGRESS_INTERVAL: Final = defaults.POLL_INTERVAL
"""Seconds between reads of the features database by ``trio-ws run``."""


def exit_status(returncode: int) -> int:
    """A shell-style exit status: a death by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


@dataclass(frozen=True)
class RunOptions:
    """What ``trio-ws run`` was asked to do."""

    command: Sequence[str]
    url: str | Sequence[str]
    """The server's publish URL, or several (tried in turn: see `Producer`)."""
    token: str
    cwd: Path
    project_dir: Path
    """Where ``.autoforge/.pause_drain`` goes (the registered directory, else ``cwd``)."""
    stream: Stream = "agent"
    quiet: bool = False
    capacity: int = DEFAULT_CAPACITY
    kill_after: float = KILL_AFTER
    flush_within: float = FLUSH_WITHIN
    connect_wait: float = CONNECT_WAIT
    lifeline: int | None = None
    """A pipe's read end whose writer is the process that started us: at its EOF
    that process is gone, and the command is stopped (``trio-ws demo`` uses it)."""
    progress: bool = True
    """Read the features database under ``cwd`` and send the project's progress
    (agent stream only): then the server need not see the project's directory."""
    progress_interval: float = PROGRESS_INTERVAL
    screenshots: bool = False
    """Capture the agents' browsers (``playwright-cli``) while a subscriber watches
    (agent stream only; `trio_ws.clients.browser_view`)."""
    screenshot_interval: float = SCREENSHOT_INTERVAL
    tls: ssl.SSLContext | None = None
    """What ``wss://`` servers' certificates are checked against (None: the system's)."""


@dataclass(frozen=True)
class Outcome:
    """How a run or publish ended: the exit status to use and what is left to say."""

    exit_code: int
    undelivered: int = 0
    refused: str | None = None


class Echo:
    """A child's output printed locally (``trio-ws run`` without ``--quiet``).

    Worker threads write it, so a stdout that stalls (a pipe nobody reads, a
    pager) never stalls publishing, acks or signal handling. At most
    `ECHO_BUFFER` bytes wait; what comes on top is dropped, said once when it
    starts and counted. Each write is at most ``PIPE_BUF`` bytes, which a pipe
    takes whole or not at all, so what is counted as not printed is exact. A
    write that fails (``| head`` has exited) ends the printing for good;
    publishing goes on either way.
    """

    def __init__(self, fd: int, report: Report, limit: int = ECHO_BUFFER) -> None:
        self.fd = fd
        self.report = report
        self.limit = limit
        self.dropped = 0
        self.failed = False
        self._waiting = bytearray()
        self._wake = trio.Event()
        self._written = trio.Event()

    def write(self, chunk: bytes) -> None:
        """Queue ``chunk`` for printing; never blocks."""
        if self.failed:
            return
        if len(self._waiting) + len(chunk) > self.limit:
            if not self.dropped:
                self.report("stdout is not keeping up: not printing some output here")
            self.dropped += len(chunk)
            return
        self._waiting += chunk
        self._wake.set()

    async def run(self) -> None:
        """Print what is queued until cancelled (a write stuck in its thread is abandoned)."""
        while True:
            while not self._waiting:
                self._wake = trio.Event()
                await self._wake.wait()
            piece = bytes(self._waiting[: select.PIPE_BUF])
            try:
                written = await trio.to_thread.run_sync(
                    os.write, self.fd, piece, abandon_on_cancel=True
                )
            except OSError as exc:  # e.g. `trio-ws run … | head`: keep publishing
                self.failed = True
                self._waiting.clear()
                self._written.set()
                self.report(f"stopped printing the output here: {exc.strerror or exc}")
                return
            del self._waiting[:written]
            self._written.set()
            self._written = trio.Event()

    async def drain(self, deadline: float) -> int:
        """Wait until ``deadline`` (trio time) at most for the queue to be printed; the
        bytes that never were (dropped or still waiting), 0 once printing failed (said)."""
        with trio.move_on_at(deadline):
            while self._waiting and not self.failed:
                await self._written.wait()
        return 0 if self.failed else self.dropped + len(self._waiting)


async def run_command(options: RunOptions, *, report: Report = stderr_report) -> Outcome:
    """Run ``options.command`` under supervision until it exits; see `Supervisor`."""
    echo = None if options.quiet else Echo(sys.stdout.fileno(), report)
    return await Supervisor(options, report, echo).run()


class ProgressReport:
    """The project's progress, read from its features database on this machine (under
    ``project_dir``, the layouts of DATA.md) every ``interval`` seconds in a worker
    thread, and sent as a ``progress`` item whenever it changed (PROTOCOL.md 4.1).

    A failing read is said once on stderr (until a read succeeds again) and sends
    nothing: the server keeps the last figures rather than zeros. Nor is anything
    sent while there is no database here (a ``--cwd`` that is not the project): the
    server, which may see the project's directory, then keeps polling it.
    """

    def __init__(
        self, producer: Producer, project_dir: Path, interval: float, report: Report
    ) -> None:
        self.producer = producer
        self.interval = interval
        self.report = report
        self.project_dir = project_dir
        self.reader = ProgressReader(project_dir)
        self.sent: Progress | None = None
        self.failures = FailureStreak()

    async def run(self) -> None:
        """Read and send until cancelled."""
        while True:
            await self.read()
            await trio.sleep(self.interval)

    async def read(self) -> None:
        """One read; a change is sent, a failure said once per streak."""
        try:
            progress = await trio.to_thread.run_sync(self.reader.read)
        except ProgressError as exc:
            if self.failures.failed():
                self.report(f"cannot report progress: {exc}")
            return
        if self.failures.succeeded():
            self.report("progress reads recovered")
        if self.reader.path is not None and progress != self.sent:
            self.sent = progress
            self.producer.send_progress(progress)
            await self.read_features()

    async def read_features(self) -> None:
        """The board too, whenever the counts moved: a server on another machine (several
        nodes) has no directory to read it from. A failing read is said, not sent."""
        try:
            found = await trio.to_thread.run_sync(
                lambda: read_features(self.project_dir, lock_timeout=FEATURES_LOCK_TIMEOUT)
            )
        except ProgressError as exc:
            self.report(f"cannot send the features board: {exc}")
            return
        self.producer.send_features([feature.to_json() for feature in found.features])


class Supervisor:
    """One child process in its own process group, its output and its controls.

    The child runs without a shell, in a new session (so signals reach its
    whole group and a terminal's Ctrl-C reaches only us), with stdout and
    stderr merged into one pipe and stdin from /dev/null. SIGINT/SIGTERM, or a
    ``stop`` control, sends SIGTERM (and SIGCONT, in case it is paused) to the
    group, then SIGKILL after ``kill_after`` seconds; a second signal kills at once.
    """

    def __init__(self, options: RunOptions, report: Report, echo: Echo | None) -> None:
        self.options = options
        self.report = report
        self.echo = echo
        self.producer = Producer(
            options.url,
            options.token,
            options.stream,
            producer_id=new_producer_id("run"),
            outbox=Outbox(options.capacity),
            on_control=self.apply if options.stream == "agent" else None,
            report=report,
            tls=options.tls,
        )
        self.process: trio.Process | None = None
        self.state = "running"
        self.stop_requested = False
        self.pause_file = options.project_dir / PAUSE_FILE
        self.wrote_pause_file = False
        self.progress = (
            ProgressReport(self.producer, options.cwd, options.progress_interval, report)
            if options.progress and options.stream == "agent"
            else None
        )
        self.browsers = (
            BrowserSessions() if options.screenshots and options.stream == "agent" else None
        )
        self.browser_view = (
            None
            if self.browsers is None
            else BrowserView(
                self.producer,
                self.browsers,
                options.project_dir,
                report,
                interval=options.screenshot_interval,
            )
        )
        self._splitter = LineSplitter()
        self._output_done = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def run(self) -> Outcome:
        signals = on_stop_signals(self._on_signal, self._on_signal_again)
        async with signals, trio.open_nursery() as outer:
            outer.start_soon(self.producer.run)
            if self.echo is not None:
                outer.start_soon(self.echo.run)
            try:
                return await self._supervise()
            finally:
                with trio.CancelScope(shield=True):
                    await self.producer.close()
                outer.cancel_scope.cancel()  # the echo: what it has not printed is lost

    async def _supervise(self) -> Outcome:
        options = self.options
        with trio.move_on_after(options.connect_wait):
            await self.producer.ready.wait()
        if self.producer.refused is not None:
            return Outcome(FAILURE, refused=str(self.producer.refused))
        try:
            process = await trio.lowlevel.open_process(
                list(options.command),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=options.cwd,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        except OSError as exc:
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            self.report(f"cannot start {options.command[0]!r}: {exc.strerror or exc}")
            self.producer.send_line(
                f"[trio-ws] cannot start {options.command[0]}: {exc.strerror or exc}"
            )
            self.producer.send_status("crashed", code)
            return Outcome(code, await self.producer.flush(options.flush_within))
        self.process = process
        self.producer.send_status("running")
        assert process.stdout is not None
        try:
            async with trio.open_nursery() as helpers:
                self._nursery = helpers
                if self.stop_requested:  # a signal came while we waited for the server
                    self._terminate()
                helpers.start_soon(self._pump, process.stdout)
                helpers.start_soon(self._watch_refusal)
                if self.progress is not None:
                    helpers.start_soon(self.progress.run)
                if self.browser_view is not None:
                    helpers.start_soon(self.browser_view.run)
                if options.lifeline is not None:
                    helpers.start_soon(self._watch_lifeline, options.lifeline)
                returncode = await process.wait()
                with trio.move_on_after(DRAIN_AFTER_EXIT):
                    await self._output_done.wait()
                helpers.cancel_scope.cancel()
        finally:
            self._nursery = None
            if process.returncode is None:  # leaving abnormally: never orphan the group
                self._signal_group(signal.SIGKILL)
        for line in self._splitter.close():
            self.producer.send_line(line)
        if self.browsers is not None:
            self.browsers.stop()
        if self.progress is not None:
            await self.progress.read()  # where the run left the project
            self.progress.reader.close()
        code = exit_status(returncode)
        status = "stopped" if code == 0 or self.stop_requested else "crashed"
        self.producer.send_status(status, code)
        self._remove_pause_file()
        deadline = trio.current_time() + options.flush_within
        undelivered = await self.producer.flush(options.flush_within)
        if self.echo is not None:
            unprinted = await self.echo.drain(deadline)
            if unprinted:
                self.report(
                    f"{unprinted} bytes of output were not printed here: stdout was stalled"
                )
        refused = self.producer.refused
        return Outcome(code, undelivered, str(refused) if refused is not None else None)

    # -- tasks ------------------------------------------------------------------------

    async def _pump(self, stdout: trio.abc.ReceiveStream) -> None:
        while chunk := bytes(await stdout.receive_some(READ_SIZE)):
            if self.echo is not None:
                self.echo.write(chunk)
            for line in self._splitter.feed(chunk):
                self.producer.send_line(line)
                if self.browsers is not None:
                    self.browsers.feed(line)
        self._output_done.set()

    def _on_signal(self, signum: int) -> None:
        """The first SIGINT/SIGTERM: stop the command as ``stop`` does (unless that
        already happened: then this is a second request)."""
        if self.stop_requested:
            self._on_signal_again(signum)
            return
        if not self.options.quiet:  # quiet: whoever sent it (the demo) says so itself
            self.report(f"signal {signum}: stopping the command")
        self.request_stop()

    def _on_signal_again(self, signum: int) -> None:
        """Kill the group while it runs; once it is gone (or before it started),
        stop delivering what is left and exit now."""
        if self.process is not None and self.process.returncode is None:
            self.report(f"signal {signum} again: killing the process group now")
            self._signal_group(signal.SIGKILL)
        else:
            self.report(f"signal {signum} again: exiting now")
            exit_now(signum)

    async def _watch_refusal(self) -> None:
        await self.producer.finished.wait()
        if self.producer.refused is not None:
            self.report(f"{self.producer.refused}; stopping the command")
            self.request_stop()

    async def _watch_lifeline(self, fd: int) -> None:
        async with trio.lowlevel.FdStream(fd) as lifeline:
            while await lifeline.receive_some():
                pass  # nothing is ever written: only its end matters
        self.report("the process that started us is gone; stopping the command")
        self.request_stop()

    async def _escalate(self) -> None:
        await trio.sleep(self.options.kill_after)
        if self.process is not None and self.process.returncode is None:
            self.report(f"still running {self.options.kill_after:g} s after SIGTERM: SIGKILL")
            self._signal_group(signal.SIGKILL)

    # -- actions ----------------------------------------------------------------------

    def request_stop(self) -> None:
        """SIGTERM the child's group now and SIGKILL it after ``kill_after`` seconds."""
        if self.stop_requested:
            return
        self.stop_requested = True
        self._terminate()

    def _terminate(self) -> None:
        """Carry out a requested stop; before the child started (or after it was
        reaped) there is nothing to signal: `_supervise` calls this again at its start."""
        if self._nursery is None:
            return
        self._signal_group(signal.SIGTERM)
        self._signal_group(signal.SIGCONT)
        self._nursery.start_soon(self._escalate)

    def apply(self, action: str) -> None:
        """Carry out a control from the server; one that does not fit the state is logged."""
        process = self.process
        if process is None or process.returncode is not None or self.stop_requested:
            self.report(f"ignored control {action!r}: the command is not running")
            return
        if action == "stop":
            self.report("stop requested through the server")
            self.request_stop()
            return
        wanted = {
            "pause": "running",
            "resume": "paused",
            "graceful_pause": "running",
            "graceful_resume": "pausing",
        }.get(action)
        if wanted is None or self.state != wanted:
            self.report(f"ignored control {action!r} while {self.state}")
            return
        if action == "pause":
            self._signal_group(signal.SIGSTOP)
            self._set_state("paused")
        elif action == "resume":
            self._signal_group(signal.SIGCONT)
            self._set_state("running")
        elif action == "graceful_pause":
            try:
                self.pause_file.parent.mkdir(parents=True, exist_ok=True)
                self.pause_file.write_text(f"{process.pid}\n")
            except OSError as exc:
                self.report(f"cannot write {self.pause_file}: {exc.strerror or exc}")
                return
            self.wrote_pause_file = True
            self._set_state("pausing")
        else:
            if not self._remove_pause_file():
                return
            self._set_state("running")

    def _set_state(self, state: str) -> None:
        self.state = state
        self.producer.send_status(state)

    def _remove_pause_file(self) -> bool:
        """Delete the pause file we wrote; False (reported) when that failed."""
        if not self.wrote_pause_file:
            return True
        try:
            self.pause_file.unlink(missing_ok=True)
        except OSError as exc:
            self.report(f"cannot remove {self.pause_file}: {exc.strerror or exc}")
            return False
        self.wrote_pause_file = False
        return True

    def _signal_group(self, signum: int) -> None:
        if self.process is None:
            return
        with suppress(ProcessLookupError):  # the whole group is gone already
            os.killpg(self.process.pid, signum)
