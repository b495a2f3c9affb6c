"""`trio-ws run` and `trio-ws publish` as real subprocesses against a real server.

Each test subscribes to ``demo`` first, then runs the command and checks what
the subscriber sees: every line once, in order, between ``running`` and the
final status (the snapshot's own ``stopped`` comes first and is skipped).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from features_db import create_db, db_path, insert, rows
from serving import NETWORK_TIMEOUT, TOKEN, connect, make_config, receive, receive_until
from trio_websocket import ConnectionClosed, WebSocketConnection

from trio_ws.clients.supervisor import PAUSE_FILE
from trio_ws.core.pipeline import AgentPipeline, sanitize
from trio_ws.data.registry import Registry
from trio_ws.net.publish import ACK_INTERVAL
from trio_ws.net.server import Server, serve

TRIO_WS = str(Path(sys.executable).parent / "trio-ws")
TESTS = Path(__file__).parent.parent
SCRIPT = str(TESTS / "scripts" / "print_transcript.py")
TRANSCRIPT = TESTS / "corpus" / "autoforge-run.txt"
EXIT_LINE = "[trio-ws] process exited with code"
PACED_LINES = 40
IDLE_LATENCY_BOUND = 0.015
"""Median print-to-subscriber seconds of a paced child's lines; 50 ms batching gave ~25."""
BURST_LINES = 8_000
"""Within the server's event history, so a subscriber that falls behind catches up whole."""
BURST_MESSAGES_MAX = 80
"""``lines`` messages a burst of `BURST_LINES` may take: at least 100 lines each on average."""

Message = dict[str, Any]


def transcript_lines(path: Path) -> list[str]:
    lines = path.read_bytes().decode().split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def child(*args: str) -> list[str]:
    return [sys.executable, SCRIPT, *args]


@dataclass
class Run:
    """A started `trio-ws` subprocess and what it printed."""

    process: trio.Process
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    closed: list[trio.Event] = field(default_factory=lambda: [trio.Event(), trio.Event()])

    async def wait(self) -> int:
        """Its exit status, once it exited and all its output is collected."""
        code = await self.process.wait()
        for event in self.closed:
            await event.wait()
        return code


async def start(
    nursery: trio.Nursery,
    server: Server,
    home: Path,
    command: str,
    *args: str,
    stdin: bytes | None = None,
    keep_stdin_open: bool = False,
    close_stdout: bool = False,
    stall_stdout: bool = False,
    port: int | None = None,
    servers: tuple[str, ...] = (),
) -> Run:
    """Start ``trio-ws COMMAND demo`` against ``server`` (through ``port`` if given, a relay
    in front of it; or ``servers``, one ``--server`` each); collect its output in the
    background."""
    env = {key: value for key, value in os.environ.items() if key != "TRIO_WS_TOKEN"}
    process = await trio.lowlevel.open_process(
        [
            TRIO_WS,
            command,
            "demo",
            *server_options(servers or (f"http://127.0.0.1:{port or server.port}",)),
            "--token",
            TOKEN,
            "--home",
            str(home),
            *args,
        ],
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    run = Run(process)
    assert process.stdout is not None and process.stderr is not None
    if close_stdout:  # like `trio-ws run … | head` once head has exited
        await process.stdout.aclose()
        run.closed[0].set()
    elif stall_stdout:  # like a pager nobody scrolls: the pipe stays open and fills up
        run.closed[0].set()
    else:
        nursery.start_soon(collect, process.stdout, run.stdout, run.closed[0])
    nursery.start_soon(collect, process.stderr, run.stderr, run.closed[1])
    if stdin is not None:
        assert process.stdin is not None
        await process.stdin.send_all(stdin)
        if not keep_stdin_open:
            await process.stdin.aclose()
    return run


def server_options(urls: tuple[str, ...]) -> list[str]:
    return [option for url in urls for option in ("--server", url)]


async def collect(stream: trio.abc.ReceiveStream, into: bytearray, closed: trio.Event) -> None:
    async with stream:
        while chunk := await stream.receive_some(65536):
            into += chunk
    closed.set()


async def subscribe(nursery: trio.Nursery, server: Server, **query: Any) -> WebSocketConnection:
    ws = await connect(nursery, server, **query)
    assert (await receive(ws))["type"] == "hello"
    return ws


def status_is(*statuses: str) -> Callable[[Message], bool]:
    return lambda message: message["type"] == "agent_status" and message["status"] in statuses


async def receive_run(ws: WebSocketConnection, final: str = "stopped") -> list[Message]:
    """Events from the run's ``running`` up to its final status, both included."""
    await receive_until(ws, status_is("running"))
    return [
        {"type": "agent_status", "status": "running"},
        *await receive_until(ws, status_is(final)),
    ]


def logs(messages: list[Message]) -> list[str]:
    return [message["line"] for message in messages if message["type"] == "log"]


def statuses(messages: list[Any]) -> list[str]:
    return [message["status"] for message in messages if message["type"] == "agent_status"]


async def receive_log(ws: WebSocketConnection, prefix: str) -> str:
    """The first ``log`` line starting with ``prefix``."""
    found = await receive_until(
        ws, lambda message: message["type"] == "log" and message["line"].startswith(prefix)
    )
    line = found[-1]["line"]
    assert isinstance(line, str)
    return line


# -- trio-ws run ------------------------------------------------------------------------


async def test_run_publishes_every_line_once_in_order_and_exits_with_the_child_code(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        run = await start(
            nursery,
            server,
            home,
            "run",
            "--quiet",
            "--",
            *child(str(TRANSCRIPT), "--pause", "0.001", "--exit", "3"),
        )
        seen = await receive_run(ws, final="crashed")
        assert await run.wait() == 3
    lines = [*transcript_lines(TRANSCRIPT), f"{EXIT_LINE} 3"]
    assert logs(seen) == [sanitize(line) for line in lines]
    # The transcript's drain literals move the status too; the pure pipeline says how.
    pipeline = AgentPipeline()
    expected = pipeline.set_status("running") + pipeline.feed_lines(lines)
    expected += pipeline.set_status("crashed")
    assert statuses(seen) == statuses(expected)
    assert run.stdout == b""


async def test_run_exit_0_reports_stopped(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path, tmp_path: Path
) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("one\ntwo\n")
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        run = await start(nursery, server, home, "run", "--quiet", "--", *child(str(lines)))
        seen = await receive_run(ws)
        assert await run.wait() == 0
    assert logs(seen) == ["one", "two", f"{EXIT_LINE} 0"]
    assert statuses(seen) == ["running", "stopped"]


async def test_run_prints_the_child_output_locally_without_quiet(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path, tmp_path: Path
) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("shown here\nand there\n")
    with trio.fail_after(NETWORK_TIMEOUT):
        run = await start(nursery, server, home, "run", "--", *child(str(lines)))
        assert await run.wait() == 0
    assert run.stdout == b"shown here\nand there\n"


async def test_run_keeps_publishing_when_its_own_stdout_is_closed(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path, tmp_path: Path
) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("first\nsecond\n")
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        run = await start(nursery, server, home, "run", "--", *child(str(lines)), close_stdout=True)
        seen = await receive_run(ws)
        assert await run.wait() == 0
    assert logs(seen) == ["first", "second", f"{EXIT_LINE} 0"]
    assert b"stopped printing the output here: Broken pipe" in run.stderr


def big_output(tmp_path: Path) -> tuple[Path, list[str]]:
    """1,500 lines of 1,000 characters: far more than a pipe buffer and `ECHO_BUFFER`."""
    lines = [f"{index:04d} " + "o" * 995 for index in range(1500)]
    path = tmp_path / "big.txt"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path, lines


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some(65536):
        data += chunk
    return bytes(data)


async def test_run_publishes_every_line_while_its_stdout_is_stalled(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path, tmp_path: Path
) -> None:
    """Nobody reads `run`'s stdout: publishing goes on; what could not be printed
    here is dropped and counted, exactly (the pipe then holds the rest)."""
    path, lines = big_output(tmp_path)
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        run = await start(
            nursery, server, home, "run", "--flush-within", "2", "--", *child(str(path)),
            stall_stdout=True,
        )  # fmt: skip
        seen = await receive_run(ws)
        assert await run.wait() == 0, run.stderr
        assert run.process.stdout is not None
        printed = await read_all(run.process.stdout)
    assert logs(seen) == [*lines, f"{EXIT_LINE} 0"]
    output = path.read_bytes()
    assert 0 < len(printed) < len(output) and output.startswith(printed)
    assert run.stderr.decode().splitlines() == [
        "trio-ws: stdout is not keeping up: not printing some output here",
        f"trio-ws: {len(output) - len(printed)} bytes of output were not printed here: "
        "stdout was stalled",
    ]


async def test_run_stops_on_sigterm_while_its_stdout_is_stalled(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path, tmp_path: Path
) -> None:
    path, lines = big_output(tmp_path)
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        run = await start(
            nursery, server, home, "run", "--flush-within", "2", "--",
            *child(str(path), "--hold", "20"), stall_stdout=True,
        )  # fmt: skip
        await receive_log(ws, lines[-1])  # printed all and holding; our pipe is full
        run.process.send_signal(signal.SIGTERM)
        seen = await receive_until(ws, status_is("stopped", "crashed"))
        assert await run.wait() == 128 + signal.SIGTERM
    assert statuses(seen) == ["stopped"]


async def test_run_sends_a_line_from_an_idle_child_at_once(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path, tmp_path: Path
) -> None:
    """A child printing 100 lines/s, each stamped with the time it was printed: the
    subscriber gets each well within the 50 ms `run` used to wait before sending
    (the median, so one late wake-up on a busy machine cannot fail it)."""
    path = tmp_path / "paced.txt"
    path.write_text("".join(f"paced {index}\n" for index in range(PACED_LINES)))
    delays: list[float] = []
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        run = await start(
            nursery, server, home, "run", "--quiet", "--",
            *child(str(path), "--stamp", "--pause", "0.01"),
        )  # fmt: skip
        await receive_until(ws, status_is("running"))
        while len(delays) < PACED_LINES:
            message = await receive(ws)
            if message["type"] == "log" and " paced " in message["line"]:
                delays.append(time.time() - float(message["line"].split()[0]))
        assert await run.wait() == 0
    assert statistics.median(delays) < IDLE_LATENCY_BOUND, sorted(delays)


class ProducerTap:
    """What a producer sends, read off the bytes a relay passes to the server: the
    upgrade request, then masked client frames, kept as decoded text messages."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._buffer = bytearray()
        self._upgraded = False

    def feed(self, data: bytes) -> None:
        self._buffer += data
        if not self._upgraded:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            del self._buffer[: end + 4]
            self._upgraded = True
        while (frame := self._frame()) is not None:
            opcode, payload = frame
            if opcode == 0x1:  # text; a producer never fragments, pings are not counted
                self.messages.append(json.loads(payload))

    def _frame(self) -> tuple[int, bytes] | None:
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        size, at = buffer[1] & 0x7F, 2
        if size >= 126:
            width = 2 if size == 126 else 8
            if len(buffer) < at + width:
                return None
            size, at = int.from_bytes(buffer[at : at + width], "big"), at + width
        if len(buffer) < at + 4 + size:
            return None
        key, masked = bytes(buffer[at : at + 4]), bytes(buffer[at + 4 : at + 4 + size])
        mask = (key * (size // 4 + 1))[:size]
        payload = (int.from_bytes(masked, "big") ^ int.from_bytes(mask, "big")).to_bytes(
            size, "big"
        )
        opcode = buffer[0] & 0x0F
        del buffer[: at + 4 + size]
        return opcode, payload


async def relay(nursery: trio.Nursery, server: Server, tap: ProducerTap) -> int:
    """A TCP relay to ``server`` on a port of its own that shows ``tap`` what clients send."""

    async def pipe(
        source: trio.SocketStream, sink: trio.SocketStream, tap: ProducerTap | None
    ) -> None:
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await source.receive_some(65536):
                if tap is not None:
                    tap.feed(data)
                await sink.send_all(data)
            await sink.send_eof()

    async def handle(client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with client, upstream, trio.open_nursery() as both:
            both.start_soon(pipe, upstream, client, None)
            both.start_soon(pipe, client, upstream, tap)

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    port: int = listeners[0].socket.getsockname()[1]
    return port


async def test_run_coalesces_a_burst_into_few_messages(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path, tmp_path: Path
) -> None:
    """8,000 lines printed in one write go out in few messages, not one each (the
    relay counts them), and every line reaches the server and the subscriber once,
    in order. (A child printing line by line no faster than `run` sends gets its
    lines sent as they come: nothing is in flight to batch them behind.)"""
    lines = [f"burst {index:05d}" for index in range(BURST_LINES)]
    path = tmp_path / "burst.txt"
    path.write_text("".join(f"{line}\n" for line in lines))
    tap = ProducerTap()
    with trio.fail_after(NETWORK_TIMEOUT):
        port = await relay(nursery, server, tap)
        ws = await subscribe(nursery, server)
        run = await start(
            nursery, server, home, "run", "--quiet", "--", *child(str(path), "--at-once"), port=port
        )
        await receive_until(ws, status_is("running"))
        seen = await receive_until(ws, status_is("stopped"), limit=2 * BURST_LINES)
        assert await run.wait() == 0
    print(
        "TAP",
        len(tap.messages),
        sorted(len(b["lines"]) for b in tap.messages if b["type"] == "lines")[:8],
    )
    assert logs(seen) == [*lines, f"{EXIT_LINE} 0"]
    batches = [message for message in tap.messages if message["type"] == "lines"]
    sent = [line for batch in batches for line in batch["lines"]]
    assert sent == [*lines, f"{EXIT_LINE} 0"][: len(sent)]
    assert len(sent) == BURST_LINES  # the exit line is the server's own
    assert len(batches) <= BURST_MESSAGES_MAX, [len(batch["lines"]) for batch in batches]


async def test_run_merges_stderr_keeps_final_partial_line_and_replaces_bad_utf8(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path, tmp_path: Path
) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("out 0\nerr 1\nout 2\n")
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        args = ("--stderr", "--invalid-utf8", "--no-final-newline")
        run = await start(nursery, server, home, "run", "--quiet", "--", *child(str(lines), *args))
        seen = await receive_run(ws)
        assert await run.wait() == 0
    assert logs(seen) == ["out 0", "err 1", "out 2", "bad \ufffd\ufffd bytes", f"{EXIT_LINE} 0"]


async def test_run_defaults_cwd_to_the_project_directory_and_sets_unbuffered(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path
) -> None:
    code = "import os; print(os.getcwd()); print(os.environ['PYTHONUNBUFFERED'])"
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        run = await start(nursery, server, home, "run", "--quiet", "--", sys.executable, "-c", code)
        seen = await receive_run(ws)
        assert await run.wait() == 0
    assert logs(seen)[:2] == [str(project_dir), "1"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_stops_the_child_group_and_reports_stopped(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path, signum: int
) -> None:
    """The child starts a grandchild in its group; both are gone after the signal."""
    code = (
        "import subprocess, sys, time; "
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(20)']); "
        "print('grandchild', g.pid, flush=True); time.sleep(20)"
    )
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        run = await start(nursery, server, home, "run", "--quiet", "--", sys.executable, "-c", code)
        grandchild = int((await receive_log(ws, "grandchild ")).split()[1])
        run.process.send_signal(signum)
        seen = await receive_until(ws, status_is("stopped", "crashed"))
        assert await run.wait() == 128 + signal.SIGTERM
        assert await eventually(lambda: not alive(grandchild))
    assert statuses(seen) == ["stopped"]
    assert logs(seen) == [f"{EXIT_LINE} {128 + signal.SIGTERM}"]


async def eventually(condition: Callable[[], bool]) -> bool:
    """``condition`` becomes true within a second (a signal takes effect asynchronously)."""
    for _ in range(100):
        if condition():
            return True
        await trio.sleep(0.01)
    return condition()


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_child_ignoring_sigterm_is_killed_after_the_bound(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        run = await start(
            nursery,
            server,
            home,
            "run",
            "--quiet",
            "--kill-after",
            "0.2",
            "--",
            *child("--pid", "--ignore-sigterm", "--hold", "20"),
        )
        await receive_log(ws, "pid ")
        run.process.send_signal(signal.SIGTERM)
        seen = await receive_until(ws, status_is("stopped", "crashed"))
        assert await run.wait() == 128 + signal.SIGKILL
    assert statuses(seen) == ["stopped"]
    assert b"SIGKILL" in run.stderr


# -- refusals and failures ----------------------------------------------------------------


async def test_run_with_a_wrong_token_is_refused_before_the_child_starts(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "started"
    with trio.fail_after(NETWORK_TIMEOUT):
        run = await start(
            nursery,
            server,
            home,
            "run",
            "--token",
            "wrong",
            "--",
            sys.executable,
            "-c",
            f"open({str(marker)!r}, 'w')",
        )
        assert await run.wait() == 1
    assert not marker.exists()
    assert run.stderr.decode().startswith("trio-ws: error: server refused the producer: HTTP 401")


async def test_run_without_a_token_says_where_it_looked(
    nursery: trio.Nursery, server: Server, tmp_path: Path, project_dir: Path
) -> None:
    empty_home = tmp_path / "empty-home"
    env = {key: value for key, value in os.environ.items() if key != "TRIO_WS_TOKEN"}
    with trio.fail_after(NETWORK_TIMEOUT):
        result = await trio.run_process(
            [TRIO_WS, "run", "demo", "--home", str(empty_home), "--", "true"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"trio-ws: error: no token at {empty_home / 'token'}; "
        "start `trio-ws serve` once or pass --token\n"
    )


async def test_run_of_an_unregistered_project_needs_cwd(home: Path, project_dir: Path) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        result = await trio.run_process(
            [TRIO_WS, "run", "ghost", "--home", str(home), "--token", TOKEN, "--", "true"],
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"trio-ws: error: no project 'ghost' in registry {home / 'registry.db'}; "
        "register it with `trio-ws projects add` or pass --cwd\n"
    )


async def test_run_without_a_registry_needs_cwd(tmp_path: Path) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        result = await trio.run_process(
            [TRIO_WS, "run", "demo", "--home", str(tmp_path), "--token", TOKEN, "--", "true"],
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert stderr.startswith(f"trio-ws: error: no registry at {tmp_path / 'registry.db'}")
    assert stderr.endswith("; or pass --cwd to run without a registered project\n")


async def test_run_reports_undelivered_items_when_the_server_is_away(
    tmp_path: Path, home: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        result = await trio.run_process(
            [
                TRIO_WS,
                "run",
                "demo",
                "--cwd",
                str(tmp_path),
                "--server",
                "http://127.0.0.1:9",  # discard: nothing listens
                "--token",
                TOKEN,
                "--flush-within",
                "0.2",
                "--quiet",
                "--",
                *child("--exit", "4"),
            ],
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 4
    assert result.stderr.decode().endswith(
        "trio-ws: 2 items were not delivered to ws://127.0.0.1:9/ws/projects/demo/publish\n"
    )


# -- trio-ws publish ----------------------------------------------------------------------


async def test_publish_sends_stdin_lines_between_running_and_stopped(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        run = await start(nursery, server, home, "publish", stdin=b"a\nb\n")
        seen = await receive_run(ws)
        assert await run.wait() == 0
    assert logs(seen) == ["a", "b"]
    assert statuses(seen) == ["running", "stopped"]


async def test_publish_dev_feeds_the_dev_stream(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        run = await start(nursery, server, home, "publish", "--dev", stdin=b"vite ready\n")
        seen = await receive_until(ws, lambda m: m["type"] == "dev_log")
        assert await run.wait() == 0
    assert seen[-1]["line"] == "vite ready"
    assert "log" not in [message["type"] for message in seen]


async def test_publish_fails_when_items_cannot_be_delivered(home: Path) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        result = await trio.run_process(
            [
                TRIO_WS,
                "publish",
                "demo",
                "--server",
                "http://127.0.0.1:9",
                "--token",
                TOKEN,
                "--flush-within",
                "0.2",
            ],
            stdin=b"lost\n",
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    assert "3 items were not delivered" in result.stderr.decode()


# -- controls from a subscriber ----------------------------------------------------------------


async def send_control(ws: WebSocketConnection, action: str) -> None:
    await ws.send_message(f'{{"type":"control","action":"{action}"}}')


async def test_control_pause_stops_the_child_output_and_resume_continues_it(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server, token=TOKEN)
        run = await start(
            nursery, server, home, "run", "--quiet", "--", *child("--pid", "--ticks", "20")
        )
        pid = int((await receive_log(ws, "pid ")).split()[1])
        await receive_log(ws, "tick ")
        await send_control(ws, "pause")
        await receive_until(ws, status_is("paused"))
        assert await eventually(lambda: process_state(pid) == "T")  # stopped by SIGSTOP
        await send_control(ws, "resume")
        await receive_until(ws, status_is("running"))
        assert await eventually(lambda: process_state(pid) != "T")
        await receive_log(ws, "tick ")  # and it prints again
        await send_control(ws, "stop")
        seen = await receive_until(ws, status_is("stopped", "crashed"))
        assert await run.wait() == 128 + signal.SIGTERM
    assert statuses(seen) == ["stopped"]


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def test_control_graceful_pause_writes_the_pause_file_and_resume_removes_it(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path
) -> None:
    pause_file = project_dir / PAUSE_FILE
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server, token=TOKEN)
        run = await start(
            nursery, server, home, "run", "--quiet", "--", *child("--pid", "--hold", "20")
        )
        pid = (await receive_log(ws, "pid ")).split()[1]
        await send_control(ws, "graceful_pause")
        await receive_until(ws, status_is("pausing"))
        assert pause_file.read_text().strip() == pid
        await send_control(ws, "graceful_resume")
        await receive_until(ws, status_is("running"))
        assert not pause_file.exists()
        await send_control(ws, "stop")
        await receive_until(ws, status_is("stopped", "crashed"))
        assert await run.wait() == 128 + signal.SIGTERM


async def test_publish_ends_the_input_on_sigint_and_reports_stopped(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        run = await start(nursery, server, home, "publish", stdin=b"", keep_stdin_open=True)
        await receive_until(ws, status_is("running"))
        assert run.process.stdin is not None
        await run.process.stdin.send_all(b"typed\n")
        await receive_log(ws, "typed")
        run.process.send_signal(signal.SIGINT)
        seen = await receive_until(ws, status_is("stopped"))
        assert await run.wait() == 0
        await run.process.stdin.aclose()
    assert statuses(seen) == ["stopped"]


async def test_run_delivers_across_a_server_restart_without_gaps(
    nursery: trio.Nursery, registry: Registry, home: Path, project_dir: Path, tmp_path: Path
) -> None:
    """The server goes away mid-run and a new one (fresh history) takes its port.
    The child prints 20 lines, waits at a gate until the new server is up, then
    prints the rest: the first server showed those 20 lines, the second shows the
    rest from at most the first unacked one on, with nothing missing in between."""
    expected = [sanitize(line) for line in transcript_lines(TRANSCRIPT)]
    gate = tmp_path / "gate"
    with trio.fail_after(NETWORK_TIMEOUT):
        async with trio.open_nursery() as first_life:
            first: Server = await first_life.start(serve, make_config(registry))
            ws = await subscribe(first_life, first)
            run = await start(
                nursery,
                first,
                home,
                "run",
                "--quiet",
                "--",
                *child(str(TRANSCRIPT), "--gate", str(gate), "--gate-after", "20", "--exit", "3"),
            )
            before = [await receive_until(ws, lambda m: m["type"] == "log") for _ in range(20)]
            first_life.start_soon(drain, ws)  # keep reading so the 1001 close completes at once
            await first.shutdown(1001)
        second: Server = await nursery.start(serve, make_config(registry, port=first.port))
        ws = await subscribe(nursery, second, backlog=1000)
        gate.touch()
        after = await receive_until(ws, status_is("crashed"))
        assert await run.wait() == 3
    assert [logs(messages)[-1] for messages in before] == expected[:20]
    shown = logs(after)
    assert shown[-1] == f"{EXIT_LINE} 3"
    resumed_at = len(expected) - (len(shown) - 1)
    assert 0 <= resumed_at <= 20
    assert shown[:-1] == expected[resumed_at:]


async def test_run_tells_a_server_that_lost_its_history_that_it_is_running(
    nursery: trio.Nursery, registry: Registry, home: Path, project_dir: Path, tmp_path: Path
) -> None:
    """The server goes away mid-run, once it has acked what the child printed so
    far; a new one with a fresh home (no record of the run) takes its port. While
    the child still waits at its gate, the new server learns that the run is
    ``running``; after the gate it gets the rest: every line once, in order (from
    at most the first unacked one), and the child's exit status."""
    expected = [sanitize(line) for line in transcript_lines(TRANSCRIPT)]
    gate = tmp_path / "gate"
    fresh_home = tmp_path / "fresh-home"
    fresh_home.mkdir()
    fresh = Registry(fresh_home / "registry.db")
    fresh.add("demo", project_dir)
    with trio.fail_after(NETWORK_TIMEOUT):
        async with trio.open_nursery() as first_life:
            first: Server = await first_life.start(serve, make_config(registry))
            ws = await subscribe(first_life, first)
            run = await start(
                nursery,
                first,
                home,
                "run",
                "--quiet",
                "--",
                *child(str(TRANSCRIPT), "--gate", str(gate), "--gate-after", "20", "--exit", "3"),
            )
            await receive_until(ws, lambda m: m["type"] == "log" and m["line"] == expected[19])
            # Acks go out on the server's timer, which nothing outside the child can
            # see: let a few ticks pass so the run's `running` is acked and forgotten.
            await trio.sleep(5 * ACK_INTERVAL)
            first_life.start_soon(drain, ws)  # keep reading so the 1001 close completes at once
            await first.shutdown(1001)
        second: Server = await nursery.start(serve, make_config(fresh, port=first.port))
        ws = await subscribe(nursery, second, backlog=1000)
        resent = [m for m in await receive_until(ws, status_is("running")) if "seq" in m]
        gate.touch()
        rest = await receive_until(ws, status_is("crashed"))
        assert await run.wait() == 3
    assert statuses(resent) == ["running"]
    assert statuses(rest)[-1] == "crashed"
    shown = logs(resent) + logs(rest)
    assert shown[-1] == f"{EXIT_LINE} 3"
    resumed_at = len(expected) - (len(shown) - 1)
    assert 0 <= resumed_at <= 20
    assert shown[:-1] == expected[resumed_at:]
    assert "no record of items" not in run.stderr.decode()


async def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed again)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port: int = listeners[0].socket.getsockname()[1]
    for listener in listeners:
        await listener.aclose()
    return port


async def test_run_skips_a_dead_server_and_delivers_everything_to_the_next(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path
) -> None:
    """Two ``--server`` URLs, the first a closed port: the producer moves on to the
    second, which gets every line once, in order."""
    dead = await closed_port()
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        run = await start(
            nursery,
            server,
            home,
            "run",
            "--quiet",
            "--",
            *child(str(TRANSCRIPT), "--exit", "3"),
            servers=(f"http://127.0.0.1:{dead}", f"http://127.0.0.1:{server.port}"),
        )
        seen = await receive_run(ws, final="crashed")
        assert await run.wait() == 3
    lines = [*transcript_lines(TRANSCRIPT), f"{EXIT_LINE} 3"]
    assert logs(seen) == [sanitize(line) for line in lines]
    assert f"no connection to ws://127.0.0.1:{dead}/" in run.stderr.decode()


async def test_run_moves_to_the_other_server_when_its_server_shuts_down(
    nursery: trio.Nursery, registry: Registry, home: Path, project_dir: Path, tmp_path: Path
) -> None:
    """Two servers that share nothing, both given with ``--server``. The child prints
    20 lines to the first; the first shuts down; the child prints the rest behind a
    gate. The second server gets them from at most the first one unacked on: every
    line reaches one of the two, each in order, nothing missing in between."""
    expected = [sanitize(line) for line in transcript_lines(TRANSCRIPT)]
    gate = tmp_path / "gate"
    with trio.fail_after(NETWORK_TIMEOUT):
        second: Server = await nursery.start(serve, make_config(registry))
        later = await subscribe(nursery, second, backlog=1000)
        async with trio.open_nursery() as first_life:
            first: Server = await first_life.start(serve, make_config(registry))
            ws = await subscribe(first_life, first)
            run = await start(
                nursery,
                first,
                home,
                "run",
                "--quiet",
                "--",
                *child(str(TRANSCRIPT), "--gate", str(gate), "--gate-after", "20", "--exit", "3"),
                servers=(f"http://127.0.0.1:{first.port}", f"http://127.0.0.1:{second.port}"),
            )
            before = [await receive_until(ws, lambda m: m["type"] == "log") for _ in range(20)]
            first_life.start_soon(drain, ws)  # keep reading so the 1001 close completes at once
            await first.shutdown(1001)
        gate.touch()
        after = await receive_until(later, status_is("crashed"))
        assert await run.wait() == 3
    assert [logs(messages)[-1] for messages in before] == expected[:20]
    shown = logs(after)
    assert shown[-1] == f"{EXIT_LINE} 3"
    resumed_at = len(expected) - (len(shown) - 1)
    assert 0 <= resumed_at <= 20
    assert shown[:-1] == expected[resumed_at:]
    assert f"connected to ws://127.0.0.1:{second.port}/" in run.stderr.decode()


async def drain(ws: WebSocketConnection) -> None:
    with suppress(ConnectionClosed):
        while True:
            await ws.get_message()


async def test_control_stop_ends_a_paused_child(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path
) -> None:
    """SIGTERM alone would wait for a SIGSTOPped child forever; stop continues it too."""
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server, token=TOKEN)
        run = await start(
            nursery, server, home, "run", "--quiet", "--", *child("--pid", "--hold", "20")
        )
        await receive_log(ws, "pid ")
        await send_control(ws, "pause")
        await receive_until(ws, status_is("paused"))
        await send_control(ws, "stop")
        seen = await receive_until(ws, status_is("stopped", "crashed"))
        assert await run.wait() == 128 + signal.SIGTERM
    assert statuses(seen) == ["stopped"]


# -- bounded producer messages (PROTOCOL.md 4.1) ----------------------------------------


def publish_command(server: Server, home: Path) -> str:
    return (
        f"{TRIO_WS} publish demo --server http://127.0.0.1:{server.port} "
        f"--token {TOKEN} --home {home}"
    )


def warnings_from(messages: list[Message], source: str) -> list[Message]:
    return [m for m in messages if m["type"] == "warning" and m["source"] == source]


async def test_publish_caps_a_3_mb_line_and_the_stream_goes_on(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path
) -> None:
    """The issue's command, through a real pipe: 3,000,000 x U+0001 is 18 MB of JSON,
    over the server's 16 MiB cap; the producer cuts the line at 64 Ki chars instead."""
    shell = (
        "{ echo first; head -c 3000000 /dev/zero | tr '\\0' '\\1'; echo; echo after; } | "
        + publish_command(server, home)
    )
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        result = await trio.run_process(["sh", "-c", shell], capture_stderr=True, check=False)
        assert result.returncode == 0, result.stderr
        seen = await receive_run(ws)
    producer_cut = 65536 - len(" … [truncated 2934492 chars]")
    assert producer_cut == 65508  # the producer's line: 65,508 x U+0001 and its mark
    server_cut = 16384 - len(" … [truncated 65536 chars]")
    assert logs(seen) == [
        "first",
        "\x01" * server_cut + f" … [truncated {65536 - server_cut} chars]",
        "after",
    ]
    assert warnings_from(seen, "producer") == []
    assert result.stderr == b""


async def test_publish_splits_a_refused_batch_and_skips_a_refused_line(
    nursery: trio.Nursery,
    registry: Registry,
    home: Path,
    project_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that takes less than the producer's 1 MiB closes with 1009: the
    producer splits the batch it refused, replaces a line it refuses on its own
    by a line saying so, and goes on; it never resends the same refused message."""
    monkeypatch.setattr("trio_ws.net.server.MAX_PRODUCER_MESSAGE", 128 * 1024)
    small = await nursery.start(serve, make_config(registry))
    many = [f"{index:04d} " + "x" * 995 for index in range(300)]  # ~300 KB: split
    text = "\n".join(["first", *many, "\x01" * 30_000, "after"]) + "\n"  # 180 KB of JSON
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, small)
        run = await start(nursery, small, home, "publish", stdin=text.encode())
        seen = await receive_run(ws)
        assert await run.wait() == 0, run.stderr
    skipped = "[trio-ws] item 303 (a line of 30000 chars) refused by the server as too big; skipped"
    assert logs(seen) == ["first", *many, skipped, "after"]
    assert run.stderr.decode().count("trio-ws: the server refused item 303") == 1


async def test_run_refuses_a_lifeline_that_is_not_an_open_pipe(tmp_path: Path) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        result = await trio.run_process(
            [TRIO_WS, "run", "demo", "--cwd", str(tmp_path), "--token", TOKEN,
             "--lifeline", "77", "--", "true"],
            capture_stderr=True,
            check=False,
        )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.decode() == "trio-ws: error: --lifeline 77 is not an open pipe\n"


@pytest.mark.parametrize("command", ["run", "publish"])
async def test_second_signal_while_delivering_to_a_gone_server_exits_now(
    nursery: trio.Nursery, registry: Registry, home: Path, project_dir: Path, command: str
) -> None:
    """Once the input ended, what is left waits up to --flush-within for the server;
    a second Ctrl-C stops that wait: exit now with 128 + SIGINT."""
    args = ["--", *child("--pid", "--hold", "20")] if command == "run" else []
    with trio.fail_after(NETWORK_TIMEOUT):
        async with trio.open_nursery() as life:
            server: Server = await life.start(serve, make_config(registry))
            ws = await subscribe(life, server)
            run = await start(
                nursery, server, home, command, "--flush-within", "600", *args,
                stdin=b"" if command == "publish" else None, keep_stdin_open=True,
            )  # fmt: skip
            await receive_until(ws, status_is("running"))
            if command == "run":
                pid = int((await receive_log(ws, "pid ")).split()[1])
            life.start_soon(drain, ws)
            await server.shutdown(1001)
            life.cancel_scope.cancel()
        run.process.send_signal(signal.SIGINT)
        assert await eventually(lambda: f"signal {signal.SIGINT}: ".encode() in run.stderr)
        if command == "run":  # the child is gone and reaped: only the delivery is left
            assert await eventually(lambda: not Path(f"/proc/{pid}").exists())
        run.process.send_signal(signal.SIGINT)
        assert await run.wait() == 128 + signal.SIGINT
    assert f"signal {signal.SIGINT} again: exiting now".encode() in run.stderr


# -- progress from the producer's machine -----------------------------------------------


def progress_is(passing: int, total: int) -> Callable[[Message], bool]:
    return lambda m: m["type"] == "progress" and (m["passing"], m["total"]) == (passing, total)


def reads(server: Server) -> int:
    reader = server.manager.projects["demo"].reader
    assert reader is not None
    return reader.reads


async def test_run_sends_the_progress_it_reads_and_the_server_polls_nothing_meanwhile(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path, tmp_path: Path
) -> None:
    """The server's registered directory of ``demo`` is empty; the run's ``--cwd`` has
    the features database. Subscribers get the run's figures, a change to the
    database becomes a new progress event, and while the run reports, the server's
    own reader (polling every 0.05 s otherwise) reads nothing."""
    work = tmp_path / "work"
    database = create_db(db_path(work), rows(passing=2, in_progress=1, pending=3))
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        run = await start(
            nursery,
            server,
            home,
            "run",
            "--quiet",
            "--cwd",
            str(work),
            "--",
            *child("--hold", "20"),
        )
        first = (await receive_until(ws, progress_is(2, 6)))[-1]
        # A server read that had begun before the run's item arrived may still finish
        # (and be dropped): let it, then count.
        await trio.sleep(2 * server.config.poll_interval)
        reads_then = reads(server)
        insert(database, rows(passing=1))
        second = (await receive_until(ws, progress_is(3, 7)))[-1]
        reads_after = reads(server)
        run.process.send_signal(signal.SIGTERM)
        await receive_until(ws, status_is("stopped"))
        assert await run.wait() == 128 + signal.SIGTERM
    assert (first["in_progress"], first["needs_human_input"], first["percentage"]) == (1, 0, 33.3)
    assert (second["in_progress"], second["percentage"]) == (1, 42.9)
    assert reads_after == reads_then
    assert "progress" not in run.stderr.decode()


async def test_run_sends_the_features_board_with_each_change_of_progress(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path, tmp_path: Path
) -> None:
    """A node with no directory for the project answers ``/features`` with it."""
    work = tmp_path / "work"
    database = create_db(db_path(work), rows(passing=2, pending=3))
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        run = await start(
            nursery, server, home, "run", "--quiet", "--cwd", str(work), "--",
            *child("--hold", "20"),
        )  # fmt: skip
        await receive_until(ws, progress_is(2, 5))
        hub = server.manager.get_hub("demo")
        assert hub is not None
        while hub.features is None:  # noqa: ASYNC110 (no event to wait on)
            await trio.sleep(0.01)
        first = [row["passes"] for row in hub.features]
        insert(database, rows(passing=1))
        await receive_until(ws, progress_is(3, 6))
        while len(hub.features) != 6:  # noqa: ASYNC110
            await trio.sleep(0.01)
        run.process.send_signal(signal.SIGTERM)
        assert await run.wait() == 128 + signal.SIGTERM
    assert sorted(first) == [False, False, False, True, True]
    assert [row["passes"] for row in hub.features].count(True) == 3


async def test_the_server_polls_again_once_the_reporting_run_is_gone(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    create_db(db_path(work), rows(passing=2, pending=3))
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        run = await start(
            nursery,
            server,
            home,
            "run",
            "--quiet",
            "--cwd",
            str(work),
            "--",
            *child("--hold", "20"),
        )
        await receive_until(ws, progress_is(2, 5))
        reads_then = reads(server)
        run.process.send_signal(signal.SIGTERM)
        assert await run.wait() == 128 + signal.SIGTERM
        # The server's own directory has no database: its next read says so.
        await receive_until(ws, progress_is(0, 0))
    assert reads(server) > reads_then


async def test_run_says_once_that_it_cannot_read_progress_and_sends_no_zeros(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path, tmp_path: Path
) -> None:
    """A database that is not one: one line on stderr, no progress item (so the
    server, which would stop polling on one, keeps polling its own directory)."""
    work = tmp_path / "work"
    db_path(work).parent.mkdir(parents=True)
    db_path(work).write_bytes(b"this is not an sqlite database" * 100)
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        run = await start(
            nursery,
            server,
            home,
            "run",
            "--quiet",
            "--cwd",
            str(work),
            "--",
            *child("--hold", "20"),
        )
        await receive_until(ws, status_is("running"))
        reads_then = reads(server)
        for _ in range(1000):  # the run reads every second: wait for its second failure
            if reads(server) > reads_then + 2 / server.config.poll_interval:
                break
            await trio.sleep(server.config.poll_interval)
        run.process.send_signal(signal.SIGTERM)
        seen = await receive_until(ws, status_is("stopped"))
        assert await run.wait() == 128 + signal.SIGTERM
    assert not [m for m in seen if m["type"] == "progress" and m["total"] != 0]
    said = run.stderr.decode()
    assert said.count("cannot report progress") == 1
    assert f"{db_path(work)} is corrupt" in said


async def test_run_with_no_progress_sends_none(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    create_db(db_path(work), rows(passing=2, pending=3))
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        run = await start(
            nursery,
            server,
            home,
            "run",
            "--quiet",
            "--no-progress",
            "--cwd",
            str(work),
            "--",
            *child(str(TRANSCRIPT)),
        )
        seen = await receive_run(ws)
        assert await run.wait() == 0
    assert not [m for m in seen if m["type"] == "progress" and m["total"] != 0]


async def test_run_where_there_is_no_features_database_sends_no_progress(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path, tmp_path: Path
) -> None:
    """A ``--cwd`` without a database is not the project's directory: the run sends no
    (zero) progress, and the server keeps reading the database it can see."""
    create_db(db_path(project_dir), rows(passing=2, pending=3))
    work = tmp_path / "work"
    work.mkdir()
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        run = await start(
            nursery,
            server,
            home,
            "run",
            "--quiet",
            "--cwd",
            str(work),
            "--",
            *child(str(TRANSCRIPT)),
        )
        seen = await receive_run(ws)
        assert await run.wait() == 0
        reads_then = reads(server)
        insert(db_path(project_dir), rows(passing=1))
        await receive_until(ws, progress_is(3, 6))
    assert not [m for m in seen if m["type"] == "progress"]
    assert reads(server) > reads_then
