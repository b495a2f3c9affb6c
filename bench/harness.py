"""Processes the orchestrator runs: servers under test, load generators, a stalled socket.

Every child is started with pipes, read through a thread with a deadline on
every answer, and stopped in ``finally`` (SIGTERM, then SIGKILL), so a run
always ends by itself. A child that dies or stays silent raises `BenchError`
with the tail of its stderr.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from bench import wire

REPO: Final = Path(__file__).resolve().parent.parent
PROJECT: Final = "bench"
SUBSCRIBE_PATH: Final = f"/ws/projects/{PROJECT}?backlog=0"
PUBLISH_PATH: Final = f"/ws/projects/{PROJECT}/publish"
TOKEN_ENV: Final = "BENCH_PRODUCER_TOKEN"
"""How the producer gets the server's token: not on its command line, where ps shows it."""
START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 5.0

Kind = Literal["trio-ws", "peer"]


class Placement:
    """Which CPUs the server under test gets, and which everything else gets.

    With two or more CPUs the server gets the first one to itself and the
    orchestrator, producer and subscribers share the rest, so a busy client
    can never take CPU time from the server it is measuring (both servers
    run their event loop in one thread, so one CPU is all either can use).
    `pin_clients` moves the calling process (and so every child it starts
    later) onto the client CPUs.
    """

    def __init__(self) -> None:
        cpus = sorted(os.sched_getaffinity(0))
        self.enabled = False
        self.server: set[int] = set(cpus)
        self.clients: set[int] = set(cpus)

    def pin_clients(self) -> None:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return
        self.enabled = True
        self.server, self.clients = {cpus[0]}, set(cpus[1:])
        os.sched_setaffinity(0, self.clients)

    def pin_server(self, pid: int) -> None:
        if self.enabled:
            for task in Path(f"/proc/{pid}/task").iterdir():
                os.sched_setaffinity(int(task.name), self.server)

    def describe(self) -> str:
        if not self.enabled:
            return "not pinned: server and clients share every CPU"
        return (
            f"server on CPU {_cpus(self.server)}; orchestrator, producer and subscribers on "
            f"CPU {_cpus(self.clients)}"
        )


def _cpus(cpus: set[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


PLACEMENT: Final = Placement()


class BenchError(Exception):
    """A benchmark could not be measured; the message says which process and why."""


def child_env() -> dict[str, str]:
    """The environment for children: the repo importable, no ambient trio-ws settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRIO_WS_TOKEN", "TRIO_WS_HOME")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Child:
    """A child process that answers in lines (JSON where it can) on stdout."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        logs: Path,
        stdin: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.stderr_path = logs / f"{name}.stderr"
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**child_env(), **(env or {})},
            cwd=REPO,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        for line in stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def send(self, line: str) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            stdin.write(line + "\n")
            stdin.flush()
        except BrokenPipeError as exc:
            raise self.failure("stdin closed: the process has exited") from exc

    def read_line(self, timeout: float) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise self.failure(f"no answer within {timeout:g} s") from None
        if line is None:
            self.proc.wait(timeout=STOP_TIMEOUT)
            raise self.failure(f"exited with status {self.proc.returncode}")
        return line

    def poll_line(self, timeout: float) -> str | None:
        """The next line if one comes within ``timeout``; None if not yet."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return None
        if line is None:
            self._lines.put(None)
            return self.read_line(0)
        return line

    def read(self, timeout: float) -> dict[str, Any]:
        line = self.read_line(timeout)
        try:
            answer = json.loads(line)
        except ValueError:
            raise self.failure(f"answered {line!r}, not JSON") from None
        if not isinstance(answer, dict) or "error" in answer:
            raise self.failure(f"answered {line!r}")
        return answer

    def request(self, line: str, timeout: float) -> dict[str, Any]:
        self.send(line)
        return self.read(timeout)

    def failure(self, what: str) -> BenchError:
        self._stderr.flush()
        tail = self.stderr_path.read_text(errors="replace")[-2000:].strip()
        return BenchError(f"{self.name} (pid {self.pid}): {what}" + (f"\n{tail}" if tail else ""))

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise self.failure(f"still running after {timeout:g} s") from None

    def stop(self) -> None:
        """End the process if it still runs: SIGTERM, then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                # A line still buffered for a child that exited cannot be flushed: the
                # error that brought us here is the one to report, not this one.
                with suppress(BrokenPipeError):
                    pipe.close()
        self._stderr.close()


@contextmanager
def running(child: Child) -> Iterator[Child]:
    try:
        yield child
    finally:
        child.stop()


# -- servers under test -------------------------------------------------------------


@dataclass
class Target:
    """A server under test, listening on 127.0.0.1."""

    kind: Kind
    child: Child
    port: int
    token: str
    project_dir: Path | None = None
    home: Path | None = None
    """trio-ws's home (registry and token), for `trio-ws run` against it."""

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def publish_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{PUBLISH_PATH}"

    @property
    def subscribe_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{SUBSCRIBE_PATH}"

    def get(self, path: str) -> str:
        """A plain HTTP GET against the server (trio-ws only)."""
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            body: bytes = answer.read()
        return body.decode()

    def metric(self, name: str, labels: str = f'project="{PROJECT}"') -> float:
        """One sample from trio-ws's /metrics; 0 when the series does not exist yet."""
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in self.get("/metrics").splitlines():
            if line.startswith(wanted + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def trio_ws_command() -> str:
    beside = Path(sys.executable).parent / "trio-ws"
    if beside.exists():
        return str(beside)
    found = shutil.which("trio-ws")
    if found is None:
        raise BenchError("the trio-ws command is not installed here (pip install -e '.[bench]')")
    return found


FEATURES_SCHEMA: Final = """CREATE TABLE features (
  id INTEGER NOT NULL PRIMARY KEY, priority INTEGER NOT NULL, category VARCHAR(100) NOT NULL,
  name VARCHAR(255) NOT NULL, description TEXT NOT NULL, steps JSON NOT NULL, passes BOOLEAN,
  in_progress BOOLEAN, dependencies JSON, needs_human_input BOOLEAN,
  human_input_request JSON, human_input_response JSON)"""


def features_db(project_dir: Path) -> Path:
    return project_dir / ".autoforge" / "features.db"


def create_features_db(project_dir: Path, features: int = 50) -> Path:
    """A features database as the orchestrator writes it (WAL), all features pending."""
    path = features_db(project_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=wal")
        conn.execute(FEATURES_SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        for number in range(1, features + 1):
            conn.execute(
                "INSERT INTO features (id, priority, category, name, description, steps, "
                "passes, in_progress, needs_human_input) VALUES (?, 1, 'bench', ?, '', '[]', "
                "0, 0, 0)",
                (number, f"feature {number}"),
            )
        conn.execute("COMMIT")
    return path


def pass_feature(project_dir: Path, feature: int) -> float:
    """Mark one feature passing in its own committed transaction; returns the commit time."""
    with closing(sqlite3.connect(features_db(project_dir), isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE features SET passes = 1 WHERE id = ?", (feature,))
        conn.execute("COMMIT")
        return time.time()


Journal = tuple[str, str]
"""A server's ``--journal`` and ``--sync``."""
DEFAULT_JOURNAL: Journal = ("sqlite", "normal")
"""What `trio-ws serve` uses unless told otherwise."""

_SERVING = re.compile(r"serving http://127\.0\.0\.1:(\d+)/")
_LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


def start_trio_ws(
    workdir: Path,
    logs: Path,
    poll_interval: float = 1.0,
    journal: Journal = DEFAULT_JOURNAL,
    broker: str | None = None,
    checkout: Path | None = None,
) -> Target:
    """`trio-ws serve` on a fresh home; ``journal`` is its ``--journal`` and ``--sync``,
    ``broker`` its ``--broker`` (then the journal lives in that Redis); ``checkout``
    another tree whose trio_ws the server imports (a before/after comparison)."""
    home, project = workdir / "home", workdir / "project"
    project.mkdir(parents=True)
    create_features_db(project)
    command = trio_ws_command()
    added = subprocess.run(
        [command, "projects", "add", PROJECT, str(project), "--home", str(home)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=START_TIMEOUT,
        check=False,
    )
    if added.returncode != 0:
        raise BenchError(f"trio-ws projects add failed: {added.stderr.strip()}")
    argv = [command, "serve", "--home", str(home), "--port", "0"]
    argv += ["--poll-interval", str(poll_interval), "--log-level", "warning"]
    argv += ["--journal", journal[0], "--sync", journal[1]]
    if broker is not None:
        argv += ["--broker", broker]
    name = "trio-ws" if broker is None else f"trio-ws-{workdir.name}"
    env = None if checkout is None else {"PYTHONPATH": str(checkout)}
    child = Child(name, argv, logs, stdin=False, env=env)
    PLACEMENT.pin_server(child.pid)
    try:
        line = child.read_line(START_TIMEOUT)
        found = _SERVING.search(line)
        if found is None:
            raise BenchError(f"trio-ws printed {line!r}, not its URL")
        token = (home / "token").read_text().strip()
    except BaseException:
        child.stop()
        raise
    return Target("trio-ws", child, int(found.group(1)), token, project, home)


REDIS_READY: Final = "Ready to accept connections"


@contextmanager
def redis_server(logs: Path) -> Iterator[str]:
    """A fresh ``redis-server`` on a free loopback port, as the README's recipe runs it
    (no persistence, ``noeviction``); yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not installed (Debian package redis-server)")
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--maxmemory-policy", "noeviction"]  # fmt: skip
    child = Child("redis", argv, logs, stdin=False)
    with running(child):
        deadline = time.monotonic() + START_TIMEOUT
        while REDIS_READY not in child.read_line(max(0.1, deadline - time.monotonic())):
            pass
        yield f"redis://127.0.0.1:{port}/0"


def start_peer(logs: Path) -> Target:
    argv = [sys.executable, "-m", "bench.peers.broadcast_server", "--port", "0"]
    child = Child("peer", argv, logs, stdin=False)
    PLACEMENT.pin_server(child.pid)
    try:
        line = child.read_line(START_TIMEOUT)
        found = _LISTENING.search(line)
        if found is None:
            raise BenchError(f"the peer printed {line!r}, not its port")
    except BaseException:
        child.stop()
        raise
    return Target("peer", child, int(found.group(1)), "")


@contextmanager
def target(
    kind: Kind,
    workdir: Path,
    logs: Path,
    poll_interval: float = 1.0,
    journal: Journal = DEFAULT_JOURNAL,
    broker: str | None = None,
    checkout: Path | None = None,
) -> Iterator[Target]:
    started = (
        start_trio_ws(workdir, logs, poll_interval, journal, broker, checkout)
        if kind == "trio-ws"
        else start_peer(logs)
    )
    with running(started.child):
        yield started


# -- load generators ------------------------------------------------------------------


@dataclass
class Subscribers:
    """Several subscriber processes, driven together."""

    children: list[Child]
    results: list[Path]
    counts: list[int]
    reports: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self.children]

    def broadcast(self, line: str, timeout: float) -> list[dict[str, Any]]:
        """Send ``line`` to every process first, then collect every answer."""
        for child in self.children:
            child.send(line)
        return [child.read(timeout) for child in self.children]

    def connect(self) -> dict[str, Any]:
        answers = self.broadcast("connect", timeout=120.0)
        connected = sum(answer["connected"] for answer in answers)
        failed = sum(answer["failed"] for answer in answers)
        if failed:
            errors = [error for answer in answers for error in answer["errors"]]
            raise BenchError(f"{failed} of {sum(self.counts)} subscribers failed: {errors[:3]}")
        return {
            "connected": connected,
            "seconds": max(a["finished"] for a in answers) - min(a["started"] for a in answers),
        }

    def report(self) -> list[dict[str, Any]]:
        self.broadcast("report", timeout=60.0)
        for child in self.children:
            child.wait(STOP_TIMEOUT)
        self.reports = [json.loads(path.read_text()) for path in self.results]
        return self.reports


def split(total: int, per_process: int) -> list[int]:
    """``total`` as near-equal parts of at most ``per_process``."""
    if total < 1 or per_process < 1:
        raise ValueError("need at least one subscriber and one per process")
    processes = -(-total // per_process)
    base, extra = divmod(total, processes)
    return [base + (1 if index < extra else 0) for index in range(processes)]


def split_like(total: int, counts: Sequence[int]) -> list[int]:
    """``total`` shared out in proportion to ``counts`` (largest remainders first)."""
    whole = sum(counts)
    shares = [total * count // whole for count in counts]
    by_remainder = sorted(range(len(counts)), key=lambda index: -(total * counts[index] % whole))
    for index in by_remainder[: total - sum(shares)]:
        shares[index] += 1
    return shares


@contextmanager
def subscribers(
    found: Target,
    total: int,
    per_process: int,
    logs: Path,
    tag: str = "sub",
    stride: int = 1,
    live: int | None = None,
) -> Iterator[Subscribers]:
    """Subscriber processes for ``total`` connections; ``stride``: sample 1 in that many.
    ``live``: only this many read live and sample latency, spread evenly over the
    processes and over each one's connecting order; the others read in slices
    (bench.loadgen). None: all live."""
    counts = split(total, per_process)
    lives = [-1] * len(counts) if live is None else split_like(live, counts)
    with ExitStack() as stack:
        children: list[Child] = []
        results: list[Path] = []
        for index, count in enumerate(counts):
            result = logs / f"{tag}{index}.json"
            argv = [sys.executable, "-m", "bench.loadgen", "subscribe", "127.0.0.1"]
            argv += [str(found.port), SUBSCRIBE_PATH, "--count", str(count)]
            argv += ["--result", str(result), "--stride", str(stride)]
            argv += ["--live", str(lives[index])]
            children.append(stack.enter_context(running(Child(f"{tag}{index}", argv, logs))))
            results.append(result)
        for child in children:
            child.read(START_TIMEOUT)  # {"ready": true}: imports done
        yield Subscribers(children, results, counts)


@contextmanager
def producer(
    found: Target,
    logs: Path,
    *,
    duration: float = 0.0,
    count: int = 0,
    rate: float = 0.0,
    tick: float = 0.05,
    batch: int = 64,
    window: int = 50_000,
    line_size: int = 125,
) -> Iterator[Child]:
    argv = [sys.executable, "-m", "bench.loadgen", "produce", found.publish_url]
    argv += ["--duration", str(duration), "--count", str(count)]
    argv += ["--rate", str(rate), "--tick", str(tick), "--batch", str(batch)]
    argv += ["--window", str(window)]
    argv += ["--line-size", str(line_size)]
    env = {TOKEN_ENV: found.token} if found.token else {}
    with running(Child("producer", argv, logs, env=env)) as child:
        yield child


# -- a subscriber that never reads ------------------------------------------------------


class StalledSocket:
    """Completes the websocket upgrade, then never reads: the slowest possible subscriber."""

    def __init__(self, port: int, receive_buffer: int = 4096, path: str = SUBSCRIBE_PATH) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(START_TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        request, accept = wire.upgrade_request("127.0.0.1", port, path)
        self.sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)  # byte by byte: leave everything after the head unread
            if not chunk:
                raise BenchError("the stalled subscriber's upgrade was closed")
            head += chunk
        wire.check_upgrade(head.split(b"\r\n\r\n")[0], accept)
        self.local_port: int = self.sock.getsockname()[1]
        self.server_port = port

    def close(self) -> None:
        self.sock.close()
