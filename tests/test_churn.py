"""Churn: nothing lost while watchers come and go (issue 17, PROTOCOL.md 3.1).

Everything is real: a `trio-ws serve` process (sqlite journal), a `trio-ws
publish` producer writing numbered mark lines as fast as its stdin takes them,
and 50 raw websocket subscribers on 127.0.0.1. While the marks flow:

- steady watchers stay connected (until the server is killed, then resume);
- churners close and reconnect with ``since``+``epoch`` every few milliseconds;
- droppers vanish without a close frame and come back resuming;
- stallers stop reading for a while (their queues overflow), then read on;
- short-lived ones connect fresh, read a little and leave;
- the server is killed with SIGKILL once and started again on the same port.

Every subscriber checks every message it gets: after ``hello`` (or ``resync``,
which names the point it continues from), event seqs go up by exactly one; a
``resumed`` continues exactly after the ``since`` it asked for. Across a
subscriber's reconnections this makes every event after its first sync point
arrive exactly once, unless it was told ``resync``. At the end the steady
watchers hold every mark the producer wrote, each once and in order, and the
server's log holds no traceback.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import rawws
import trio
from test_restart import TRIO_WS, start_producer, start_server

from trio_ws.data.registry import Registry

TIME_LIMIT = 55.0
"""The whole test, as a hard bound (the issue's budget is 60 s)."""
SETTLE = 5.0
"""What the test keeps of its budget once the producer stopped trying: the steady
watchers reading the last marks, the server's stop."""
MARKS = 12_000
"""Mark lines the producer writes."""
CHURNED_CONNECTIONS = 500
CHURNED_RESUMES = 400
"""The churn the churners must have made before the last `LAST_MARKS` are written."""
LAST_MARKS = 1_000
"""Marks held back until the churn happened, so it happens while marks flow whatever
the CPU the churners get (at load 10 on 2 cores they made 300 resumes in 25 s)."""
KILL_AFTER_MARKS = 5_000
"""The server is killed with SIGKILL once the producer wrote this many marks."""
WIDE = "wide " + "lorem ipsum dolor sit amet " * 400
"""A ~10 KB line, written every 500 marks (a frame of its own on every socket)."""

Message = dict[str, Any]


class ChurnViolation(AssertionError):
    """A subscriber saw something PROTOCOL.md 3.1 rules out."""


@dataclass
class Watcher:
    """One subscriber across all its connections: where it stands, what it got."""

    name: str
    since: int | None = None
    epoch: str | None = None
    marks: list[int] = field(default_factory=list)
    """Mark numbers received, in order, since its last sync point."""
    resyncs: int = 0
    connections: int = 0
    resumed: int = 0
    gaps: list[str] = field(default_factory=list)

    def query(self) -> str:
        if self.since is None or self.epoch is None:
            return ""
        return f"?since={self.since}&epoch={self.epoch}"

    def take(self, message: Message, fresh: list[bool]) -> None:
        """Check one message against the protocol and note it. ``fresh[0]`` is True
        until this connection's first live event (snapshot events keep old seqs)."""
        kind = message["type"]
        if kind == "hello":
            asked = self.since
            self.epoch = message["epoch"]
            if asked is None:
                self.since = message["seq"]
                self.marks = []
            # A resume is answered by `resumed` or `resync` next; both reset `since`.
            return
        if kind == "resumed":
            if message["since"] != self.since:
                self.gaps.append(f"resumed at {message['since']}, asked {self.since}")
            self.resumed += 1
            fresh[0] = False
            return
        if kind == "resync":
            self.resyncs += 1
            self.epoch = message["epoch"]
            self.since = message["seq"]
            self.marks = []
            fresh[0] = True
            return
        seq = message.get("seq")
        if not isinstance(seq, int) or kind == "warning":
            return
        assert self.since is not None
        if seq <= self.since and fresh[0]:
            return  # a snapshot event, sent before the live ones
        fresh[0] = False
        if seq != self.since + 1:
            self.gaps.append(f"{self.name}: seq {self.since} -> {seq} without resync")
        self.since = seq
        line = message.get("line")
        if kind == "log" and isinstance(line, str) and line.startswith("churn mark "):
            self.marks.append(int(line.split()[2]))


async def connect(port: int, watcher: Watcher) -> rawws.RawClient | None:
    """A subscriber connection resuming where ``watcher`` stands; None while the
    server is down."""
    try:
        client = await rawws.RawClient.connect(port, "/ws/projects/demo" + watcher.query())
    except (OSError, AssertionError, trio.BrokenResourceError):
        return None
    if client.status != 101:
        await client.stream.aclose()
        return None
    watcher.connections += 1
    return client


async def read_some(
    client: rawws.RawClient, watcher: Watcher, fresh: list[bool], count: int
) -> bool:
    """Read up to ``count`` text messages; False once the connection ended."""
    for _ in range(count):
        try:
            frame = await client.frame()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return False
        if frame is None:
            return False
        opcode, payload = frame
        if opcode == rawws.OP_CLOSE:
            return False
        if opcode == rawws.OP_PING:
            await client.send(rawws.client_frame(rawws.OP_PONG, payload))
            continue
        if opcode == rawws.OP_TEXT:
            watcher.take(json.loads(payload), fresh)
    return True


async def close_politely(client: rawws.RawClient) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await client.send(rawws.client_frame(rawws.OP_CLOSE, b"\x03\xe8"))
    await client.stream.aclose()


@dataclass
class Run:
    port: int = 0
    done: trio.Event = field(default_factory=trio.Event)
    watchers: list[Watcher] = field(default_factory=list)


async def steady(run: Run, watcher: Watcher) -> None:
    """Stays connected; resumes only when the connection is lost."""
    while not run.done.is_set():
        client = await connect(run.port, watcher)
        if client is None:
            await trio.sleep(0.05)
            continue
        fresh = [True]
        while await read_some(client, watcher, fresh, 100):
            pass
        await client.stream.aclose()


async def churner(run: Run, watcher: Watcher, rng: random.Random, polite: bool) -> None:
    """Reads a few messages, leaves (with or without a close frame), resumes."""
    while not run.done.is_set():
        client = await connect(run.port, watcher)
        if client is None:
            await trio.sleep(0.05)
            continue
        fresh = [True]
        with trio.move_on_after(rng.uniform(0.002, 0.03)):
            while await read_some(client, watcher, fresh, 1):
                pass
        if polite:
            await close_politely(client)
        else:
            client.stream.socket.close()  # vanish: no close frame
        await trio.sleep(rng.uniform(0, 0.01))


async def staller(run: Run, watcher: Watcher, rng: random.Random) -> None:
    """Stops reading for a while (its queue overflows), then reads on."""
    while not run.done.is_set():
        client = await connect(run.port, watcher)
        if client is None:
            await trio.sleep(0.05)
            continue
        fresh = [True]
        alive = True
        while alive and not run.done.is_set():
            with trio.move_on_after(rng.uniform(0.2, 0.6)):
                while alive:
                    alive = await read_some(client, watcher, fresh, 50)
            await trio.sleep(rng.uniform(0.2, 0.8))  # stalled
        await client.stream.aclose()


async def short_lived(run: Run, rng: random.Random) -> None:
    """A fresh subscriber every few milliseconds that reads a little and leaves."""
    while not run.done.is_set():
        watcher = Watcher("short")
        client = await connect(run.port, watcher)
        if client is not None:
            fresh = [True]
            await read_some(client, watcher, fresh, rng.randint(1, 20))
            if watcher.gaps:
                run.watchers.append(watcher)
            await close_politely(client)
        await trio.sleep(rng.uniform(0, 0.02))


def churn_done(run: Run) -> bool:
    """Whether the churners connected and resumed as often as the test asks."""
    churned = [w for w in run.watchers if w.name.startswith("churn")]
    return (
        sum(w.connections for w in churned) > CHURNED_CONNECTIONS
        and sum(w.resumed for w in churned) > CHURNED_RESUMES
    )


async def produce(
    process: trio.Process, written: Callable[[int], None], churned: Callable[[], bool]
) -> None:
    assert process.stdin is not None
    batch: list[str] = []
    for mark in range(MARKS):
        if mark == MARKS - LAST_MARKS:
            while not churned():  # noqa: ASYNC110
                await trio.sleep(0.05)
        batch.append(f"churn mark {mark:06d}")
        if mark % 500 == 499:
            batch.append(WIDE)
        if len(batch) >= 100:
            await process.stdin.send_all(("\n".join(batch) + "\n").encode())
            batch = []
            written(mark + 1)
            await trio.sleep(0.005)
    await process.stdin.send_all(("\n".join(batch) + "\n").encode() if batch else b"")
    written(MARKS)
    await process.stdin.aclose()


WALKING = """
import sys
from trio_ws.faces.cli import main
from trio_ws.state import fanout
fanout.PACE_ABOVE = 2
fanout.FAN_OUT_CHUNK = 1
sys.exit(main())
"""
"""`trio-ws` whose every commit's fan-out is a walk (`HubFanOut._fan_out_paced`,
above 2 subscribers, one at a time): the commits it makes and hands on mid-walk, and
`handed_seq`, go through the same churn as the whole fan-out."""

SERVERS = {"whole": (TRIO_WS,), "walking": (sys.executable, "-c", WALKING)}


@pytest.mark.parametrize("fan_out", sorted(SERVERS))
async def test_every_watcher_sees_every_event_once_under_churn_and_kill_9(
    tmp_path: Path, fan_out: str
) -> None:
    command = SERVERS[fan_out]
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "demo").mkdir()
    Registry(home / "registry.db").add("demo", tmp_path / "demo")
    log = tmp_path / "server.log"
    run = Run()
    steadies = [Watcher(f"steady-{n}") for n in range(10)]
    run.watchers += steadies
    killed = trio.Event()

    producer_err = tmp_path / "producer.err"
    producer: trio.Process | None = None
    deadline = trio.current_time() + TIME_LIMIT
    with trio.fail_at(deadline):
        server, run.port = await start_server(home, 0, log, command=command)
        try:
            async with trio.open_nursery() as nursery:
                for watcher in steadies:
                    nursery.start_soon(steady, run, watcher)
                for n in range(20):
                    watcher = Watcher(f"churn-{n}")
                    run.watchers.append(watcher)
                    nursery.start_soon(churner, run, watcher, random.Random(n), n % 2 == 0)
                for n in range(8):
                    watcher = Watcher(f"stall-{n}")
                    run.watchers.append(watcher)
                    nursery.start_soon(staller, run, watcher, random.Random(100 + n))
                for n in range(12):
                    nursery.start_soon(short_lived, run, random.Random(200 + n))
                await trio.sleep(0.3)  # the steady watchers are in before the first mark
                # Once its input ended, the producer waits for the server this test kills
                # to be back (its restart took 4-7 s at load 6 on 2 cores), for its next
                # reconnect attempt (up to BACKOFF_MAX later) and for the resend to be
                # acked. None of that has a bound short of the test's own, so it keeps
                # trying for what is left of the budget; a loss still fails below.
                flush_within = deadline - trio.current_time() - SETTLE
                producer = await start_producer(
                    home,
                    run.port,
                    *("publish", "--flush-within", f"{flush_within:.1f}"),
                    stdin=True,
                    stderr=producer_err,
                )

                def written(count: int) -> None:
                    if count >= KILL_AFTER_MARKS and not killed.is_set():
                        killed.set()

                async def kill_and_restart() -> None:
                    nonlocal server
                    await killed.wait()
                    server.send_signal(signal.SIGKILL)
                    await server.wait()
                    server, _ = await start_server(home, run.port, log, command=command)

                nursery.start_soon(kill_and_restart)
                await produce(producer, written, lambda: churn_done(run))
                code = await producer.wait()
                assert code == 0, f"the producer exited {code}: {producer_err.read_text()}"

                # Until every steady watcher holds the last mark (or time runs out).
                while not all(w.marks and w.marks[-1] == MARKS - 1 for w in steadies):  # noqa: ASYNC110
                    await trio.sleep(0.05)
                run.done.set()
                nursery.cancel_scope.cancel()  # readers blocked on a quiet socket
        finally:
            if producer is not None and producer.returncode is None:
                producer.kill()  # out of time while it still tried: it must not outlive us
            server.send_signal(signal.SIGTERM)
            with trio.move_on_after(5):
                await server.wait()
            if server.returncode is None:
                server.kill()

    gaps = [gap for watcher in run.watchers for gap in watcher.gaps]
    assert gaps == [], f"{len(gaps)} gaps without resync, e.g. {gaps[:5]}"
    for watcher in steadies:
        assert watcher.resyncs == 0, f"{watcher.name} was resynced"
        assert watcher.marks == list(range(MARKS)), f"{watcher.name} lost or repeated marks"
        assert watcher.resumed >= 1  # it came back after the kill, in the same epoch
    assert churn_done(run)  # the churn really happened (before the last marks)
    server_log = log.read_text(errors="replace")
    assert "Traceback" not in server_log, server_log[max(0, server_log.index("Traceback") - 500) :][
        :3000
    ]
    assert "writer failed" not in server_log
