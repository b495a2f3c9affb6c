"""The project's own soak: a busy server's day in N minutes, checked event by event.

``python -m bench.soak --minutes N --kill-every M`` (or ``nox -s soak -- ...``)
runs a real `trio-ws serve` (default sqlite journal, its own temporary home,
one project, a fixed loopback port so it can come back on the same one) and
loads it the way a busy user's server is loaded:

- a real `trio-ws publish` producer at about 250 lines/s: lines of a real
  AutoForge transcript (tests/corpus/autoforge-run.txt), a 10-16 KB line every
  few seconds, and one short numbered mark line every 20 ms; the producer is
  restarted every minute, ending its input by EOF and by SIGTERM in turn;
- 50 checking subscribers, 5 of them disconnecting and reconnecting with
  ``since`` + ``epoch`` every second; one stalled subscriber (handshake, then
  never reads); two short-lived subscribers opened every second;
- ``kill -9`` of the server every M minutes (0: never), restarted at once on
  the same port and home, timed until ``/healthz`` answers.

Every subscriber checks the promise of PROTOCOL.md 3.1 with `SeqChecker`:
seqs go up by one, except right after ``resync`` (which says its snapshot
point) and ``resumed`` (which continues at ``since`` + 1); a jump without a
``resync`` is a gap, and every mark line committed after a subscriber synced
must reach it exactly once. The server's RSS and open fds are sampled from
/proc, the ping round trip is measured, and at the end the server gets
SIGTERM (it must exit 0) and its log is searched for errors. The report goes
to docs/soak.md and docs/soak.json (``--out``); the exit status is 1 when a
gap, a lost or duplicated mark, an RSS slope over 0.1 MiB/min or an unclean
exit was seen, so the soak can gate a release.

Everything runs on 127.0.0.1 and stops by itself: the clients in this (trio)
process, the server and the producer as child processes.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import functools
import itertools
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from contextlib import closing, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

import orjson
import trio

from bench import wire
from bench.harness import (
    REPO,
    BenchError,
    StalledSocket,
    child_env,
    create_features_db,
    trio_ws_command,
)
from bench.loadgen import raise_file_limit
from bench.run import git_commit
from bench.stats import summarize_ms

PROJECT: Final = "soak"
SUBSCRIBE_PATH: Final = f"/ws/projects/{PROJECT}"
TRANSCRIPT: Final = REPO / "tests" / "corpus" / "autoforge-run.txt"
COMMAND_ENV: Final = "SOAK_COMMAND"
"""Set by `nox -s soak` to the command line as the user typed it."""

MARK_PREFIX: Final = "soak mark "
MARK_EVERY: Final = 0.02
LINES_PER_S: Final = 250
BIG_LINE_EVERY: Final = 3.0
BIG_LINE_BYTES: Final = (10_000, 16_000)
PRODUCER_RESTART_EVERY: Final = 60.0

SUBSCRIBERS: Final = 50
CHURNERS: Final = 5
CHURN_EVERY: Final = 1.0
SHORT_LIVED_PER_S: Final = 2
SHORT_LIFE: Final = (0.2, 1.5)
PINGERS: Final = 5
PING_EVERY: Final = 1.0

SAMPLE_EVERY: Final = 10.0
WARMUP_S: Final = 60.0
"""RSS samples taken in a server's first minute (after start or restart) are not in the slope."""
MAX_RSS_SLOPE: Final = 0.1
"""MiB/min: more than this is a leak (the goal of issue 17)."""
START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 10.0
RECONNECT_PAUSE: Final = 0.05
RECONNECT_WITHIN: Final = 60.0
QUOTED_ERRORS: Final = 5


# -- the checker -------------------------------------------------------------------------


@dataclass
class Totals:
    """What every subscriber saw, counted in one place (one soak, one process)."""

    events: int = 0
    """Events with a ``seq`` checked, snapshot messages included."""
    gaps: int = 0
    """Seq jumps without a ``resync``."""
    missed_events: int = 0
    """Events skipped by those jumps."""
    regressions: int = 0
    """Live events whose seq was not above the one before: duplicates or reordering."""
    duplicate_marks: int = 0
    """Marks a subscriber received a second time (or after a later one)."""
    marks_committed_twice: int = 0
    """Marks seen at two different seqs of one epoch."""
    hellos: int = 0
    resumed: int = 0
    resyncs: Counter[str] = field(default_factory=Counter)
    """By reason; a mid-stream resync (a subscriber that fell behind) is ``behind``
    when it names no reason."""
    protocol_errors: int = 0
    protocol_samples: list[str] = field(default_factory=list)
    marks: dict[int, tuple[str, int]] = field(default_factory=dict)
    """Mark number -> (epoch, seq) where a subscriber first saw it committed."""
    gap_spans: list[tuple[str, int, int]] = field(default_factory=list)
    """(epoch, last seq before, first seq after) of every gap."""
    gap_roles: Counter[str] = field(default_factory=Counter)
    """Gaps by the kind of subscriber that saw them (steady, churning, short-lived)."""

    def protocol_error(self, text: str) -> None:
        self.protocol_errors += 1
        if len(self.protocol_samples) < 20:
            self.protocol_samples.append(text)

    def lost_marks(self) -> tuple[int, int]:
        """(distinct marks lost, deliveries lost): marks committed (someone saw them)
        whose seq falls inside another subscriber's gap."""
        by_epoch: dict[str, list[tuple[int, int]]] = {}
        for mark, (epoch, seq) in self.marks.items():
            by_epoch.setdefault(epoch, []).append((seq, mark))
        for entries in by_epoch.values():
            entries.sort()
        lost: set[int] = set()
        deliveries = 0
        for epoch, before, after in self.gap_spans:
            entries = by_epoch.get(epoch, [])
            low = bisect.bisect_right(entries, (before, sys.maxsize))
            high = bisect.bisect_left(entries, (after, -1))
            for _, mark in entries[low:high]:
                lost.add(mark)
                deliveries += 1
        return len(lost), deliveries


def mark_of(message: dict[str, Any]) -> int | None:
    """The number of the mark line this ``log`` event carries, if it is one."""
    line = message.get("line")
    if message.get("type") != "log" or not isinstance(line, str):
        return None
    if not line.startswith(MARK_PREFIX):
        return None
    digits = line[len(MARK_PREFIX) :]
    return int(digits) if digits.isdigit() else None


class SeqChecker:
    """One subscriber's view of the stream, across its reconnects (PROTOCOL.md 3.1).

    ``floor`` is the last seq accounted for: after a fresh ``hello`` or a
    ``resync`` it is the snapshot point (snapshot messages at or below it are
    fine), after ``resumed`` the ``since`` the client sent. The next live event
    must be ``floor`` + 1.
    """

    def __init__(self, totals: Totals, role: str = "steady") -> None:
        self.totals = totals
        self.role = role
        self.epoch: str | None = None
        self.floor: int | None = None
        self.live = False
        self.awaiting = False
        self.last_mark = 0

    def resume_point(self) -> tuple[int, str] | None:
        """(since, epoch) to reconnect with, or None before the first sync."""
        if self.floor is None or self.epoch is None:
            return None
        return self.floor, self.epoch

    def hello(self, message: dict[str, Any], resuming: bool) -> None:
        """``resuming``: this connection was opened with ``since`` and ``epoch``."""
        self.totals.hellos += 1
        epoch, seq = message.get("epoch"), message.get("seq")
        if not isinstance(epoch, str) or not isinstance(seq, int):
            self.totals.protocol_error(f"hello without epoch or seq: {message}")
            return
        if resuming:
            self.awaiting = True  # resumed or resync comes next
            return
        self.epoch, self.floor, self.live, self.awaiting = epoch, seq, False, False

    def message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "resumed":
            self._resumed(message)
        elif kind == "resync":
            self._resync(message)
        elif isinstance(message.get("seq"), int):
            self._event(message["seq"], message)

    def _resumed(self, message: dict[str, Any]) -> None:
        since = message.get("since")
        if not self.awaiting:
            self.totals.protocol_error(f"resumed without a resuming hello: {message}")
        elif since != self.floor:
            self.totals.protocol_error(f"resumed since {since}, but the last seq was {self.floor}")
            if isinstance(since, int):
                self.floor = since
        self.totals.resumed += 1
        self.awaiting, self.live = False, True

    def _resync(self, message: dict[str, Any]) -> None:
        epoch, seq = message.get("epoch"), message.get("seq")
        self.totals.resyncs[str(message.get("reason") or "behind")] += 1
        if not isinstance(seq, int):
            self.totals.protocol_error(f"resync without its snapshot point: {message}")
            return
        if isinstance(epoch, str):
            self.epoch = epoch
        self.floor, self.live, self.awaiting = seq, False, False

    def _event(self, seq: int, message: dict[str, Any]) -> None:
        totals = self.totals
        totals.events += 1
        floor, epoch = self.floor, self.epoch
        if self.awaiting or floor is None or epoch is None:
            totals.protocol_error(f"event {seq} before the client was synced")
            return
        if seq <= floor:
            if self.live:
                totals.regressions += 1
            return  # a snapshot message: at or below the snapshot point
        if seq != floor + 1:
            totals.gaps += 1
            totals.missed_events += seq - floor - 1
            totals.gap_spans.append((epoch, floor, seq))
            totals.gap_roles[self.role] += 1
        self.floor, self.live = seq, True
        mark = mark_of(message)
        if mark is None:
            return
        first = totals.marks.setdefault(mark, (epoch, seq))
        if first != (epoch, seq) and first[0] == epoch:
            totals.marks_committed_twice += 1
            totals.marks[mark] = (epoch, min(first[1], seq))
        if mark <= self.last_mark:
            totals.duplicate_marks += 1
        else:
            self.last_mark = mark


# -- figures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One reading of the server's /proc entries."""

    at_s: float
    """Seconds since the soak started."""
    incarnation: int
    """Which server process (0 the first, +1 per kill -9)."""
    uptime_s: float
    rss_mib: float
    fds: int


def rss_slope(samples: Sequence[Sample], warmup_s: float = WARMUP_S) -> float | None:
    """RSS growth in MiB/min: least squares with one intercept per server process.

    A kill -9 starts the RSS over, so each process gets its own level and they
    share one slope; samples from a process's first ``warmup_s`` are left out.
    None when no process has two samples after its warm-up.
    """
    groups: dict[int, list[Sample]] = {}
    for sample in samples:
        if sample.uptime_s >= warmup_s:
            groups.setdefault(sample.incarnation, []).append(sample)
    covariance = variance = 0.0
    for group in groups.values():
        if len(group) < 2:
            continue
        mean_t = sum(s.uptime_s for s in group) / len(group)
        mean_rss = sum(s.rss_mib for s in group) / len(group)
        covariance += sum((s.uptime_s - mean_t) * (s.rss_mib - mean_rss) for s in group)
        variance += sum((s.uptime_s - mean_t) ** 2 for s in group)
    if variance == 0:
        return None
    return covariance / variance * 60


def per_minute(samples: Sequence[Sample]) -> list[Sample]:
    """The last sample of each minute of the soak, for the report's table."""
    chosen: dict[int, Sample] = {}
    for sample in samples:
        chosen[int(sample.at_s // 60)] = sample
    return [chosen[minute] for minute in sorted(chosen)]


def read_proc(pid: int) -> tuple[float, int]:
    """(VmRSS in MiB, open fds) of a running process."""
    rss_kib = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def log_errors(text: str, quoted: int = QUOTED_ERRORS) -> dict[str, Any]:
    """ERROR lines and tracebacks in a server log, with the first few quoted whole
    (the ERROR line and the traceback lines that follow it)."""
    lines = text.splitlines()
    errors = [index for index, line in enumerate(lines) if " ERROR " in line]
    tracebacks = sum(1 for line in lines if line.startswith("Traceback (most recent call last)"))
    quotes: list[str] = []
    for index in errors[:quoted]:
        block = [lines[index]]
        for line in lines[index + 1 : index + 40]:
            if _is_log_record(line):
                break
            block.append(line)
        quotes.append("\n".join(block))
    return {"error_lines": len(errors), "tracebacks": tracebacks, "first": quotes}


def _is_log_record(line: str) -> bool:
    """A line that starts a new record of the server's log format (asctime first)."""
    return len(line) > 20 and line[:4].isdigit() and line[4] == "-" and line[10] == " "


def failures(results: dict[str, Any]) -> list[str]:
    """Why this soak fails the gate; empty when it passes."""
    checks = results["checks"]
    found = [
        f"{checks[key]} {what}"
        for key, what in (
            ("gaps", "seq gaps without a resync"),
            ("lost_marks", "mark lines lost"),
            ("duplicate_marks", "mark lines duplicated"),
            ("marks_committed_twice", "mark lines committed twice"),
            ("regressions", "events repeated or out of order"),
            ("protocol_errors", "protocol violations"),
        )
        if checks[key]
    ]
    slope = results["server"]["rss_slope_mib_per_min"]
    if slope is not None and slope > MAX_RSS_SLOPE:
        found.append(f"RSS grows {slope:.3f} MiB/min (limit {MAX_RSS_SLOPE})")
    final = results["server"]["final_stop"]
    if final["exit_code"] != 0:
        found.append(f"the server's SIGTERM exit status was {final['exit_code']}, not 0")
    return found


# -- the report ------------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    """docs/soak.md from the results (docs/soak.json holds the same, and every sample)."""
    checks, server, load = results["checks"], results["server"], results["load"]
    failed = results["failures"]
    out: list[str] = ["# Soak", ""]
    out.append(
        "What a busy server lives through, compressed, and checked event by event "
        "(`bench/soak.py`; how it loads the server is in its docstring)."
    )
    out.append("")
    out.append("| | |")
    out.append("|---|---|")
    out.append(f"| command | `{results['command']}` |")
    out.append(f"| commit | `{results['commit']}` |")
    out.append(f"| started | {results['started']} |")
    out.append(f"| duration | {results['duration_s'] / 60:.1f} min |")
    out.append(f"| verdict | {'**FAIL**: ' + '; '.join(failed) if failed else 'pass'} |")
    out.append("")
    out.append("## What every subscriber checked")
    out.append("")
    out.append("| figure | value |")
    out.append("|---|---|")
    rows: list[tuple[str, Any]] = [
        ("events checked", f"{checks['events']:,}"),
        ("mark lines written / seen committed", _pair(load["marks_written"], checks["marks"])),
        ("seq gaps without resync", _gaps(checks)),
        ("events skipped by those gaps", f"{checks['missed_events']:,}"),
        ("mark lines lost (distinct / deliveries)", _pair(*checks["lost"])),
        ("mark lines duplicated", checks["duplicate_marks"]),
        ("mark lines committed twice", checks["marks_committed_twice"]),
        ("events repeated or out of order", checks["regressions"]),
        ("protocol violations", checks["protocol_errors"]),
        ("connections (hello)", f"{checks['hellos']:,}"),
        ("reconnects with since+epoch", f"{checks['reconnects']:,}"),
        ("resumed", f"{checks['resumed']:,}"),
        ("resync", _counts(checks["resyncs"])),
        ("close codes received", _counts(checks["closes"])),
        ("1011 closes", checks["closes"].get("1011", 0)),
        ("connections that failed", checks["connect_failures"]),
        ("ping round trip", _ping(checks["ping"])),
    ]
    out += [f"| {name} | {value} |" for name, value in rows]
    for sample in checks["protocol_samples"][:5]:
        out.append(f"\nProtocol violation: `{sample}`")
    out.append("")
    out.append("## Server")
    out.append("")
    kills = server["kills"]
    restarts = ", ".join(f"{kill['restart_s']:.2f} s" for kill in kills) or "none"
    slope = server["rss_slope_mib_per_min"]
    slope_text = (
        f"{slope:+.3f} MiB/min (least squares, one level per process, first "
        f"{WARMUP_S:.0f} s of each process left out; limit {MAX_RSS_SLOPE})"
        if slope is not None
        else f"not measurable: no server process lived {WARMUP_S:.0f} s past its warm-up"
    )
    final = server["final_stop"]
    out.append(f"- `kill -9`: {len(kills)}; restart until `/healthz` answers: {restarts}")
    out.append(f"- RSS slope: {slope_text}")
    out.append(
        f"- SIGTERM at the end: exit status {final['exit_code']} after {final['seconds']:.2f} s"
    )
    errors = server["log"]
    out.append(
        f"- server log: {errors['error_lines']} ERROR lines, {errors['tracebacks']} tracebacks "
        f"(`{server['log_path']}`)"
    )
    out.append("")
    out.append("| minute | process | RSS MiB | open fds |")
    out.append("|---|---|---|---|")
    for row in per_minute([Sample(**sample) for sample in server["samples"]]):
        out.append(f"| {row.at_s / 60:.1f} | {row.incarnation} | {row.rss_mib:.1f} | {row.fds} |")
    for quote in errors["first"]:
        out += ["", "```", quote, "```"]
    out.append("")
    out.append("## Load")
    out.append("")
    producer = load["producer"]
    out.append(
        f"- producer: `trio-ws publish` at {LINES_PER_S} lines/s, {load['lines_written']:,} "
        f"lines written ({load['big_lines']} of 10-16 KB), restarted {producer['restarts']} "
        f"times (exit statuses {_counts(producer['exit_codes'])})"
    )
    out.append(
        f"- subscribers: {SUBSCRIBERS} checking ({CHURNERS} reconnecting every "
        f"{CHURN_EVERY:g} s with since+epoch), 1 stalled, {load['short_lived']:,} short-lived "
        f"({SHORT_LIVED_PER_S}/s)"
    )
    out.append(f"- server: {results['server_command']}")
    out.append("")
    return "\n".join(out)


def _gaps(checks: dict[str, Any]) -> str:
    by_role = checks.get("gaps_by_subscriber") or {}
    return f"{checks['gaps']:,}" + (f" ({_counts(by_role)})" if by_role else "")


def _pair(first: int, second: int) -> str:
    return f"{first:,} / {second:,}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key}: {value:,}" for key, value in sorted(counts.items())) or "none"


def _ping(summary: dict[str, Any]) -> str:
    if not summary.get("count"):
        return "no pongs"
    return (
        f"p99 {summary['p99_ms']:.1f} ms, p50 {summary['p50_ms']:.1f} ms, max "
        f"{summary['max_ms']:.1f} ms over {summary['count']:,} pings "
        f"({summary['unanswered']} unanswered)"
    )


# -- the server --------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port free now; the server keeps it across its restarts."""
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class Server:
    """`trio-ws serve` on one home and one port, killed and started again as told."""

    def __init__(self, home: Path, port: int, log: IO[bytes]) -> None:
        self.home, self.port, self.log = home, port, log
        self.argv = [trio_ws_command(), "serve", "--home", str(home), "--port", str(port)]
        self.argv += ["--log-level", "info"]
        self.process: trio.Process | None = None
        self.incarnation = -1
        self.started = 0.0
        self.up = trio.Event()
        self.gone = trio.Event()
        """Set when the current process is killed (a new one gets a new event)."""

    @property
    def pid(self) -> int:
        if self.process is None:
            raise BenchError("the server is not running")
        return self.process.pid

    def note(self, text: str) -> None:
        """A line of ours in the server log, so its restarts can be told apart."""
        stamp = datetime.now(tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        self.log.write(f"{stamp} SOAK {text}\n".encode())
        self.log.flush()

    async def start(self) -> float:
        """Start the server and wait until /healthz answers; returns how long that took."""
        self.incarnation += 1
        self.note(f"starting server process {self.incarnation}")
        began = time.monotonic()
        self.process = await trio.lowlevel.open_process(
            self.argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
            env=child_env(), cwd=REPO,
        )  # fmt: skip
        with trio.move_on_after(START_TIMEOUT):
            while not await healthz(self.port):
                if self.process.poll() is not None:
                    raise BenchError(f"the server exited with {self.process.returncode}")
                await trio.sleep(0.01)
            self.started = time.monotonic()
            self.up.set()
            return self.started - began
        raise BenchError(f"the server did not answer /healthz within {START_TIMEOUT:g} s")

    async def kill(self) -> float:
        """``kill -9``, then start again on the same port and home; returns the seconds
        from the kill until /healthz answers again."""
        process = self.process
        if process is None:
            raise BenchError("the server is not running")
        self.up = trio.Event()
        self.gone.set()
        self.gone = trio.Event()
        began = time.monotonic()
        self.note(f"kill -9 of server process {self.incarnation}")
        process.kill()
        await process.wait()
        await self.start()
        return time.monotonic() - began

    async def terminate(self) -> dict[str, Any]:
        """SIGTERM; the exit status and how long the server took to exit."""
        process = self.process
        if process is None:
            raise BenchError("the server is not running")
        self.note("SIGTERM")
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT):
            code = await process.wait()
            return {"exit_code": code, "seconds": round(time.monotonic() - began, 3)}
        process.kill()
        await process.wait()
        return {"exit_code": None, "seconds": round(time.monotonic() - began, 3)}

    def stop_now(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()


async def healthz(port: int) -> bool:
    """True when the server answers GET /healthz with 200."""
    try:
        with trio.fail_after(2):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(
                    f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
                answer = await stream.receive_some(4096)
    except (OSError, trio.BrokenResourceError, trio.TooSlowError):
        return False
    return answer.startswith(b"HTTP/1.1 200")


# -- the producer ----------------------------------------------------------------------


def transcript_lines() -> list[str]:
    lines = TRANSCRIPT.read_text().splitlines()
    if not lines:
        raise BenchError(f"{TRANSCRIPT} has no lines")
    return lines


def big_line(rng: random.Random, lines: Sequence[str]) -> str:
    """A 10-16 KB line, as a tool's long output would be."""
    size = rng.randint(*BIG_LINE_BYTES)
    pieces = ["   Input:"]
    length = len(pieces[0])
    start = rng.randrange(len(lines))
    for line in itertools.islice(itertools.cycle(lines), start, None):
        pieces.append(line)
        length += len(line) + 3
        if length >= size:
            break
    return " | ".join(pieces)[:size]


@dataclass
class ProducerLog:
    lines_written: int = 0
    marks_written: int = 0
    big_lines: int = 0
    restarts: int = 0
    exit_codes: Counter[str] = field(default_factory=Counter)


class Producer:
    """`trio-ws publish` fed from here at about 250 lines/s, restarted every minute."""

    def __init__(self, server: Server, log: IO[bytes]) -> None:
        self.server = server
        self.log = log
        self.argv = [trio_ws_command(), "publish", PROJECT, "--home", str(server.home)]
        self.argv += ["--server", f"http://127.0.0.1:{server.port}"]
        self.process: trio.Process | None = None
        self.lock = trio.Lock()
        self.figures = ProducerLog()
        self.rng = random.Random(17)
        self.lines = transcript_lines()

    async def start(self) -> None:
        self.process = await trio.lowlevel.open_process(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=self.log,
            stderr=self.log,
            env=child_env(),
            cwd=REPO,
        )

    async def _end(self, how: str) -> None:
        """End the current producer by EOF or SIGTERM and count how it exited."""
        process = self.process
        if process is None:
            return
        self.process = None
        if how == "eof" and process.stdin is not None:
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await process.stdin.aclose()
        else:
            process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT + 10):
            code = await process.wait()
            self.figures.exit_codes[f"{how} {code}"] += 1
            return
        process.kill()
        await process.wait()
        self.figures.exit_codes[f"{how} hung, killed"] += 1

    async def restart(self, how: str) -> None:
        async with self.lock:
            await self._end(how)
            await self.start()
            self.figures.restarts += 1

    async def stop(self) -> None:
        async with self.lock:
            await self._end("eof")

    async def feed(self, until: float) -> None:
        """Write lines on schedule: each 20 ms tick one mark and its share of
        transcript lines, a big line every few seconds."""
        per_tick = LINES_PER_S * MARK_EVERY - 1
        owed = 0.0
        transcript = itertools.cycle(self.lines)
        began = trio.current_time()
        next_big = began + BIG_LINE_EVERY
        for tick in itertools.count(1):
            now = trio.current_time()
            if now >= until:
                return
            owed += per_tick
            batch = [next(transcript) for _ in range(int(owed))]
            owed -= int(owed)
            if now >= next_big:
                batch.append(big_line(self.rng, self.lines))
                self.figures.big_lines += 1
                next_big += BIG_LINE_EVERY
            self.figures.marks_written += 1
            batch.append(f"{MARK_PREFIX}{self.figures.marks_written:08d}")
            await self._write(batch)
            await trio.sleep_until(began + tick * MARK_EVERY)

    async def _write(self, batch: list[str]) -> None:
        async with self.lock:
            process = self.process
            if process is None or process.stdin is None:
                return
            try:
                await process.stdin.send_all(("\n".join(batch) + "\n").encode())
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # It exited by itself: say how, and carry on with a new one.
                code = await process.wait()
                self.figures.exit_codes[f"exited by itself {code}"] += 1
                await self.start()
                return
            self.figures.lines_written += len(batch)


# -- subscribers ---------------------------------------------------------------------------


class Dropped(Exception):
    """The connection ended: EOF, reset, or a close frame."""


@dataclass
class Clients:
    """What the subscriber tasks share: the checkers' totals and the connection figures."""

    port: int
    server: Server
    totals: Totals = field(default_factory=Totals)
    closes: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0
    connect_failures: int = 0
    connect_errors: list[str] = field(default_factory=list)
    pings: list[float] = field(default_factory=list)
    unanswered_pings: int = 0
    short_lived: int = 0

    def failed(self, text: str) -> None:
        self.connect_failures += 1
        if len(self.connect_errors) < 10:
            self.connect_errors.append(text)


class Connection:
    """One subscriber websocket on a raw trio socket (bench/wire.py does the framing)."""

    def __init__(self, stream: trio.SocketStream, clients: Clients) -> None:
        self.stream = stream
        self.clients = clients
        self.send_lock = trio.Lock()
        self.texts: list[bytes] = []
        self.controls: list[tuple[int, bytes]] = []
        self.reader = wire.FrameReader(self._text, self._control)
        self.pings: deque[float] = deque()

    def _text(self, buf: bytearray, start: int, end: int) -> None:
        self.texts.append(bytes(buf[start:end]))

    def _control(self, opcode: int, payload: bytes) -> None:
        self.controls.append((opcode, payload))

    @classmethod
    async def open(cls, clients: Clients, query: str) -> Connection:
        stream = await trio.open_tcp_stream("127.0.0.1", clients.port)
        try:
            path = SUBSCRIBE_PATH + (f"?{query}" if query else "")
            request, accept = wire.upgrade_request("127.0.0.1", clients.port, path)
            await stream.send_all(request)
            head = bytearray()
            while (end := head.find(b"\r\n\r\n")) < 0:
                data = await stream.receive_some(65536)
                if not data:
                    raise Dropped("closed during the upgrade")
                head += data
            wire.check_upgrade(bytes(head[:end]), accept)
        except BaseException:
            await stream.aclose()
            raise
        connection = cls(stream, clients)
        if len(head) > end + 4:
            connection.reader.feed(bytes(head[end + 4 :]))
        return connection

    async def messages(self) -> list[dict[str, Any]]:
        """The next messages from the server; raises `Dropped` when the connection ends."""
        while not self.texts:
            try:
                data = await self.stream.receive_some(1 << 18)
            except (trio.BrokenResourceError, OSError) as exc:
                raise Dropped(f"{type(exc).__name__}: {exc}") from exc
            if not data:
                raise Dropped("EOF")
            try:
                self.reader.feed(data)
            except wire.ProtocolViolation as exc:
                self.clients.totals.protocol_error(f"frame: {exc}")
                raise Dropped(str(exc)) from exc
            await self._answer_controls()
        texts, self.texts = self.texts, []
        try:
            return [orjson.loads(text) for text in texts]
        except orjson.JSONDecodeError as exc:
            self.clients.totals.protocol_error(f"not JSON: {exc}")
            raise Dropped(str(exc)) from exc

    async def _answer_controls(self) -> None:
        controls, self.controls = self.controls, []
        for opcode, payload in controls:
            if opcode == wire.OP_PING:
                await self.send(wire.client_frame(wire.OP_PONG, payload[:125]))
            elif opcode == wire.OP_CLOSE:
                code = wire.close_code(payload)
                self.clients.closes[str(code)] += 1
                with suppress(Dropped):
                    await self.send(wire.client_frame(wire.OP_CLOSE, payload[:2]))
                raise Dropped(f"closed by the server with {code}")

    async def send(self, frame: bytes) -> None:
        async with self.send_lock:
            try:
                await self.stream.send_all(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise Dropped(f"{type(exc).__name__}: {exc}") from exc

    async def ping(self) -> None:
        self.pings.append(time.monotonic())
        await self.send(wire.client_frame(wire.OP_TEXT, b'{"type":"ping"}'))

    def pong(self) -> None:
        if self.pings:
            self.clients.pings.append(time.monotonic() - self.pings.popleft())

    async def close(self) -> None:
        """Say goodbye (1000) and drop the socket without waiting for the reply."""
        self.clients.unanswered_pings += len(self.pings)
        self.pings.clear()
        with suppress(Dropped), trio.move_on_after(1):
            await self.send(wire.client_frame(wire.OP_CLOSE, (1000).to_bytes(2, "big")))
        await self.stream.aclose()


def _dispatch(
    message: dict[str, Any],
    connection: Connection,
    checker: SeqChecker,
    resuming: bool,
) -> None:
    kind = message.get("type")
    if kind == "hello":
        checker.hello(message, resuming)
    elif kind == "pong":
        connection.pong()
    else:
        checker.message(message)


async def subscriber(
    clients: Clients, until: float, *, churn: float = 0.0, pinger: bool = False
) -> None:
    """A checking subscriber until ``until``: reconnects (with since+epoch) whenever its
    connection drops, and every ``churn`` seconds when that is set."""
    checker = SeqChecker(clients.totals, "churning" if churn else "steady")
    first = True
    while trio.current_time() < until:
        resuming = checker.resume_point() is not None
        try:
            connection = await connect_checked(clients, checker)
        except (OSError, Dropped, trio.BrokenResourceError, wire.ProtocolViolation):
            await trio.sleep(1)
            continue
        if not first and resuming:
            clients.reconnects += 1
        first = False
        stop_at = until if not churn else min(until, trio.current_time() + churn)
        async with trio.open_nursery() as nursery:
            if pinger:
                nursery.start_soon(_pinger, connection)
            with trio.move_on_at(stop_at):
                try:
                    while True:
                        for message in await connection.messages():
                            _dispatch(message, connection, checker, resuming)
                except Dropped:
                    pass
            nursery.cancel_scope.cancel()
        await connection.close()


async def connect_checked(clients: Clients, checker: SeqChecker) -> Connection:
    """A connection resuming where ``checker`` stopped (fresh before its first sync);
    retries while the server is down (a kill -9), for at most a minute."""
    point = checker.resume_point()
    query = "" if point is None else f"since={point[0]}&epoch={point[1]}"
    deadline = trio.current_time() + RECONNECT_WITHIN
    while True:
        try:
            connection = await Connection.open(clients, query)
        except (OSError, Dropped, trio.BrokenResourceError, wire.ProtocolViolation) as exc:
            if trio.current_time() >= deadline:
                clients.failed(f"{type(exc).__name__}: {exc}")
                raise
            await trio.sleep(RECONNECT_PAUSE)
            continue
        return connection


async def _pinger(connection: Connection) -> None:
    while True:
        await trio.sleep(PING_EVERY)
        try:
            await connection.ping()
        except Dropped:
            return


async def short_lived(clients: Clients, rng: random.Random) -> None:
    """A fresh subscriber that stays a moment, checking what it gets, then leaves."""
    clients.short_lived += 1
    checker = SeqChecker(clients.totals, "short-lived")
    try:
        connection = await Connection.open(clients, "")
    except (OSError, Dropped, trio.BrokenResourceError, wire.ProtocolViolation):
        return  # the server is being restarted; the steady subscribers count that
    with trio.move_on_after(rng.uniform(*SHORT_LIFE)):
        try:
            while True:
                for message in await connection.messages():
                    _dispatch(message, connection, checker, resuming=False)
        except Dropped:
            pass
    await connection.close()


async def stalled(clients: Clients, until: float) -> None:
    """One subscriber that completes the handshake and never reads; opened again after
    each restart of the server (its connection dies with the server)."""
    server = clients.server
    with trio.move_on_at(until):
        while True:
            await server.up.wait()
            gone = server.gone
            try:
                sock = await trio.to_thread.run_sync(
                    functools.partial(StalledSocket, clients.port, path=SUBSCRIBE_PATH)
                )
            except (OSError, BenchError):
                await trio.sleep(1)
                continue
            try:
                await gone.wait()
            finally:
                sock.close()


# -- the soak --------------------------------------------------------------------------


@dataclass
class Options:
    minutes: float
    kill_every: float
    out: Path
    log: Path


async def register(run_dir: Path) -> Path:
    """A fresh trio-ws home in ``run_dir`` with the soak project registered (its
    directory has a features database, so progress reads work); returns the home."""
    home, project = run_dir / "home", run_dir / "project"
    project.mkdir(parents=True)
    create_features_db(project)
    added = await trio.run_process(
        [trio_ws_command(), "projects", "add", PROJECT, str(project), "--home", str(home)],
        capture_stdout=True, capture_stderr=True, env=child_env(), check=False,
    )  # fmt: skip
    if added.returncode != 0:
        raise BenchError(f"trio-ws projects add failed: {added.stderr.decode().strip()}")
    return home


async def soak(options: Options, run_dir: Path, command: str) -> dict[str, Any]:
    home = await register(run_dir)
    options.log.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    began_wall = datetime.now(tz=UTC)
    with options.log.open("wb") as log, (run_dir / "producer.log").open("wb") as producer_log:
        server = Server(home, port, log)
        producer = Producer(server, producer_log)
        clients = Clients(port, server)
        samples: list[Sample] = []
        kills: list[dict[str, float]] = []
        try:
            first_start = await server.start()
            began = trio.current_time()
            until = began + options.minutes * 60
            await producer.start()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer.feed, until)
                nursery.start_soon(_restart_producer, producer, began, until)
                for index in range(SUBSCRIBERS):
                    churn = CHURN_EVERY if index < CHURNERS else 0.0
                    pinger = CHURNERS <= index < CHURNERS + PINGERS
                    nursery.start_soon(
                        functools.partial(subscriber, clients, until, churn=churn, pinger=pinger)
                    )
                nursery.start_soon(stalled, clients, until)
                nursery.start_soon(_short_lived_opener, clients, until)
                nursery.start_soon(_sampler, server, samples, began, until)
                if options.kill_every > 0:
                    nursery.start_soon(_killer, server, kills, began, until, options.kill_every)
            await producer.stop()
            final = await server.terminate()
        finally:
            server.stop_now()
            if producer.process is not None and producer.process.poll() is None:
                producer.process.kill()
        duration = trio.current_time() - began
    log_text = options.log.read_text(errors="replace")
    totals = clients.totals
    lost = totals.lost_marks()
    figures = producer.figures
    results: dict[str, Any] = {
        "command": command,
        "commit": git_commit(),
        "started": began_wall.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "duration_s": round(duration, 1),
        "options": {"minutes": options.minutes, "kill_every": options.kill_every},
        "server_command": f"`{shlex.join(server.argv[1:])}` (sqlite journal), port {port}",
        "checks": {
            "events": totals.events,
            "marks": len(totals.marks),
            "gaps": totals.gaps,
            "gaps_by_subscriber": dict(totals.gap_roles),
            "missed_events": totals.missed_events,
            "lost": list(lost),
            "lost_marks": lost[0],
            "duplicate_marks": totals.duplicate_marks,
            "marks_committed_twice": totals.marks_committed_twice,
            "regressions": totals.regressions,
            "protocol_errors": totals.protocol_errors,
            "protocol_samples": totals.protocol_samples,
            "hellos": totals.hellos,
            "reconnects": clients.reconnects,
            "resumed": totals.resumed,
            "resyncs": dict(totals.resyncs),
            "closes": dict(clients.closes),
            "connect_failures": clients.connect_failures,
            "connect_errors": clients.connect_errors,
            "gap_spans": [list(span) for span in totals.gap_spans[:200]],
            "ping": {
                **summarize_ms(clients.pings),
                "unanswered": clients.unanswered_pings,
            },
        },
        "server": {
            "first_start_s": round(first_start, 3),
            "kills": kills,
            "samples": [dataclasses.asdict(sample) for sample in samples],
            "rss_slope_mib_per_min": _round(rss_slope(samples)),
            "final_stop": final,
            "log_path": str(options.log),
            "log": log_errors(log_text),
        },
        "load": {
            "lines_written": figures.lines_written,
            "marks_written": figures.marks_written,
            "big_lines": figures.big_lines,
            "short_lived": clients.short_lived,
            "producer": {"restarts": figures.restarts, "exit_codes": dict(figures.exit_codes)},
        },
    }
    results["failures"] = failures(results)
    return results


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


async def _restart_producer(producer: Producer, began: float, until: float) -> None:
    """Every minute, end the producer (by EOF and by SIGTERM in turn) and start another."""
    for number, how in enumerate(itertools.cycle(("eof", "sigterm")), start=1):
        at = began + number * PRODUCER_RESTART_EVERY
        if at + 1 >= until:
            return
        await trio.sleep_until(at)
        await producer.restart(how)


async def _short_lived_opener(clients: Clients, until: float) -> None:
    rng = random.Random(4)
    async with trio.open_nursery() as nursery:
        while trio.current_time() < until:
            nursery.start_soon(short_lived, clients, rng)
            await trio.sleep(1 / SHORT_LIVED_PER_S)


async def _sampler(server: Server, samples: list[Sample], began: float, until: float) -> None:
    while True:
        now = trio.current_time()
        if server.up.is_set():
            try:
                rss, fds = read_proc(server.pid)
            except (OSError, StopIteration):
                pass  # killed between the check and the read: the next sample counts
            else:
                samples.append(
                    Sample(
                        at_s=round(now - began, 1),
                        incarnation=server.incarnation,
                        uptime_s=round(time.monotonic() - server.started, 1),
                        rss_mib=round(rss, 2),
                        fds=fds,
                    )
                )
        if now + SAMPLE_EVERY > until:
            return
        await trio.sleep(SAMPLE_EVERY)


async def _killer(
    server: Server, kills: list[dict[str, float]], began: float, until: float, minutes: float
) -> None:
    for number in itertools.count(1):
        await trio.sleep_until(began + number * minutes * 60)
        if trio.current_time() + 5 >= until:
            return
        restart = await server.kill()
        kills.append(
            {"at_s": round(trio.current_time() - began, 1), "restart_s": round(restart, 3)}
        )


def write(results: dict[str, Any], out: Path) -> list[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    out.write_text(render(results))
    return [out, json_path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to soak")
    parser.add_argument(
        "--kill-every", type=float, default=5.0, help="minutes between kill -9 (0: never)"
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "docs" / "soak.md", help="the report (.json beside)"
    )
    parser.add_argument(
        "--log",
        type=Path,
        default=REPO / "build" / "soak" / "server.log",
        help="where the server's log is kept",
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.kill_every < 0:
        parser.error("--minutes must be positive and --kill-every not negative")
    typed = " ".join(["python -m bench.soak", *(argv if argv is not None else sys.argv[1:])])
    command = os.environ.get(COMMAND_ENV) or typed
    out: Path = args.out
    options = Options(args.minutes, args.kill_every, out, args.log)
    raise_file_limit()
    run_dir = Path(tempfile.mkdtemp(prefix="trio-ws-soak-"))
    print(f"soak: {args.minutes:g} min, kill -9 every {args.kill_every:g} min", flush=True)
    results = trio.run(soak, options, run_dir, command)
    written = write(results, out)
    print(f"soak: wrote {', '.join(str(path) for path in written)}; logs in {run_dir}")
    for line in _summary(results):
        print(f"soak: {line}", flush=True)
    return 1 if results["failures"] else 0


def _summary(results: dict[str, Any]) -> Iterator[str]:
    checks = results["checks"]
    yield (
        f"{checks['events']:,} events, {checks['gaps']} gaps, lost marks {checks['lost']}, "
        f"{checks['duplicate_marks']} duplicated, {checks['reconnects']} reconnects, "
        f"{checks['resumed']} resumed, resync {checks['resyncs']}"
    )
    slope = results["server"]["rss_slope_mib_per_min"]
    yield f"RSS slope {slope} MiB/min, ping {checks['ping']}"
    yield "verdict: " + ("; ".join(results["failures"]) or "pass")


if __name__ == "__main__":
    sys.exit(main())
