"""The journal under a real server (STATE.md 3): real SQLite files, real sockets.

A journal that cannot be read is moved aside and said so; a journal that cannot
be written stops acks and warns, and writing resumes by itself with nothing
lost; a resume older than memory is served from the journal; a clean restart
continues the same history.
"""

from __future__ import annotations

import itertools
import json
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from serving import (
    NETWORK_TIMEOUT,
    TOKEN,
    connect,
    http_get,
    make_config,
    receive,
    receive_until,
    ws_url,
)
from trio_websocket import WebSocketConnection, connect_websocket_url

from trio_ws.data.registry import Registry
from trio_ws.journal.interface import ArchiveLimits, JournalBackend
from trio_ws.journal.sqlite import SqliteBackend, SqliteJournal, journal_path
from trio_ws.net.config import ServerConfig
from trio_ws.net.publish import ACK_INTERVAL
from trio_ws.net.server import Server, serve

Message = dict[str, Any]


@dataclass(frozen=True)
class HookedConfig(ServerConfig):
    """A server whose sqlite journals see each new connection first (to set SQLite
    limits such as ``max_page_count``, as a full disk would)."""

    hook: Callable[[sqlite3.Connection], object] | None = None

    def journal_backend(self) -> JournalBackend:
        hook = self.hook
        home = self.journal_home

        class Hooked(SqliteBackend):
            def journal(self, project: str, archive: ArchiveLimits | None = None) -> SqliteJournal:
                return SqliteJournal(journal_path(home, project), project, on_connect=hook)

        return Hooked(home)


def sqlite_config(registry: Registry, **overrides: Any) -> ServerConfig:
    return make_config(registry, journal="sqlite", **overrides)


async def start(nursery: trio.Nursery, config: ServerConfig) -> Server:
    server: Server = await nursery.start(serve, config)
    return server


async def producer(nursery: trio.Nursery, server: Server, acks: list[int]) -> WebSocketConnection:
    """A raw agent producer ``p1``; ``acks`` collects the pseqs it is acked."""
    ws = await connect_websocket_url(
        nursery,
        ws_url(server, "/ws/projects/demo/publish"),
        extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())],
    )
    await ws.send_message(json.dumps({"type": "hello", "producer": "p1", "stream": "agent"}))
    assert (await receive(ws))["type"] == "welcome"

    async def read_acks() -> None:
        while True:
            message = await receive(ws)
            if message["type"] == "ack":
                acks.append(message["pseq"])

    nursery.start_soon(read_acks)
    return ws


async def send_lines(ws: WebSocketConnection, first: int, lines: list[str]) -> None:
    await ws.send_message(json.dumps({"type": "lines", "first": first, "lines": lines}))


def line(number: int) -> str:
    return f"line {number:04d} " + "x" * 1000


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (acks arrive on the server's timer) under the caller's deadline."""
    for _ in itertools.count():
        if condition():
            return
        await trio.sleep(0.01)


# -- cannot write: disk full, read-only ---------------------------------------------


@pytest.mark.parametrize(
    ("failing", "healthy"),
    [
        ("PRAGMA max_page_count = 40", "PRAGMA max_page_count = 1000000"),  # disk full
        ("PRAGMA query_only = ON", "PRAGMA query_only = OFF"),  # read-only
    ],
    ids=["full", "read_only"],
)
async def test_a_journal_that_cannot_write_stops_acks_warns_and_resumes_losing_nothing(
    nursery: trio.Nursery,
    registry: Registry,
    home: Path,
    project_dir: Path,
    failing: str,
    healthy: str,
) -> None:
    connections: list[sqlite3.Connection] = []
    ok = [True]

    def hook(conn: sqlite3.Connection) -> None:
        connections.append(conn)
        if failing.startswith("PRAGMA max_page_count"):
            conn.execute(failing if ok[0] else healthy)

    config = HookedConfig(**vars(sqlite_config(registry, home=home)), hook=hook)
    count = 300
    with trio.fail_after(NETWORK_TIMEOUT):
        async with trio.open_nursery() as life:
            server = await start(life, config)
            watcher = await connect(life, server, backlog=1000)
            acks: list[int] = []
            ws = await producer(life, server, acks)
            if failing.startswith("PRAGMA query_only"):
                await until(lambda: bool(connections))
                await send_lines(ws, 1, [line(1)])
                await until(lambda: acks[-1:] == [1])
                connections[-1].execute(failing)
                sent = 1
            else:
                sent = 0
            for first in range(sent + 1, count + 1, 10):
                await send_lines(
                    ws, first, [line(n) for n in range(first, min(first + 10, count + 1))]
                )
            seen = await receive_until(
                watcher, lambda m: m["type"] == "warning" and m["source"] == "journal"
            )
            await trio.sleep(3 * ACK_INTERVAL)  # acks would have gone out by now
            stuck = acks[-1] if acks else 0
            shown = [m["line"] for m in seen if m["type"] == "log"]
            assert stuck < count
            assert len(shown) < count
            hub = server.manager.get_hub("demo")
            assert hub is not None and hub.has_warning("journal")
            _, _, body = await http_get(server, "/healthz")
            assert json.loads(body)["journals"]["demo"]["write_errors"] >= 1
            ok[0] = False
            connections[-1].execute(healthy)  # space freed / remounted read-write
            rest = await receive_until(
                watcher, lambda m: m["type"] == "log" and m["line"] == line(count)
            )
            await until(lambda: acks[-1:] == [count])
            assert not hub.has_warning("journal")
            shown += [m["line"] for m in rest if m["type"] == "log"]
            assert shown == [line(n) for n in range(1, count + 1)]
            epoch = hub.epoch
            life.cancel_scope.cancel()  # a clean stop
        # Nothing acked is lost: the restarted server holds every line once, in order.
        async with trio.open_nursery() as second:
            server = await start(second, config)
            watcher = await connect(second, server, since=0, epoch=epoch)
            assert (await receive(watcher))["type"] == "hello"
            assert (await receive(watcher))["type"] == "resumed"
            events = await receive_until(
                watcher, lambda m: m["type"] == "log" and m["line"] == line(count)
            )
            assert [m["line"] for m in events if m["type"] == "log"] == shown
            second.cancel_scope.cancel()


# -- cannot read: garbage, wrong schema ------------------------------------------------


def garbage(path: Path) -> Callable[[Path], bool]:
    data = b"this is no database \x00\xff" * 500
    path.write_bytes(data)
    return lambda aside: aside.read_bytes() == data


def wrong_schema(path: Path) -> Callable[[Path], bool]:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE events (id INTEGER, body BLOB)")
        conn.execute("INSERT INTO events VALUES (1, x'00')")
    conn.close()

    def kept(aside: Path) -> bool:
        check = sqlite3.connect(aside)
        try:
            return check.execute("SELECT id, body FROM events").fetchall() == [(1, b"\x00")]
        finally:
            check.close()

    return kept


@pytest.mark.parametrize("spoil", [garbage, wrong_schema], ids=["garbage", "wrong_schema"])
async def test_an_unreadable_journal_is_moved_aside_and_a_new_epoch_is_announced(
    nursery: trio.Nursery,
    registry: Registry,
    home: Path,
    project_dir: Path,
    caplog: pytest.LogCaptureFixture,
    spoil: Callable[[Path], Callable[[Path], bool]],
) -> None:
    path = journal_path(home, "demo")
    path.parent.mkdir()
    kept = spoil(path)
    caplog.set_level(logging.ERROR)
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, sqlite_config(registry, home=home))
        watcher = await connect(nursery, server)
        hello = await receive(watcher)
        seen = await receive_until(
            watcher, lambda m: m["type"] == "warning" and m["source"] == "journal"
        )
        server._cancel.cancel()
    aside = [
        p for p in path.parent.glob("demo.db.corrupt-*") if not p.name.endswith(("-wal", "-shm"))
    ]
    assert len(aside) == 1 and kept(aside[0])
    assert str(aside[0]) in seen[-1]["content"]
    assert hello["seq"] <= 1  # a new epoch: at most the progress read for this subscriber
    errors = [r.getMessage() for r in caplog.records if "moved aside" in r.getMessage()]
    assert len(errors) == 1 and str(aside[0]) in errors[0]


# -- resume reaches as far as the journal ------------------------------------------------


async def test_a_since_older_than_memory_but_in_the_journal_is_resumed_from_the_journal(
    nursery: trio.Nursery, registry: Registry, home: Path, project_dir: Path
) -> None:
    """100 events held in memory; the journal trims only past 110, so it still holds
    events 1-105 when memory holds 6-105."""
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, sqlite_config(registry, home=home, history=100))
        hub = (await server.manager.open("demo", project_dir)).hub
        hub.feed_lines([f"l{n}" for n in range(1, 106)])
        await hub.wait_committed(105)
        assert hub.oldest_seq == 6
        watcher = await connect(nursery, server, since=2, epoch=hub.epoch)
        assert (await receive(watcher))["type"] == "hello"
        assert (await receive(watcher))["type"] == "resumed"
        events = [await receive(watcher) for _ in range(103)]
        server._cancel.cancel()
    assert [m["seq"] for m in events] == list(range(3, 106))
    assert [m["line"] for m in events] == [f"l{n}" for n in range(3, 106)]
    assert hub.stats.journal_catch_ups >= 1


# -- a clean restart ------------------------------------------------------------------


async def test_a_clean_restart_keeps_epoch_head_statuses_and_acked_pseqs(
    nursery: trio.Nursery, registry: Registry, home: Path, project_dir: Path
) -> None:
    config = sqlite_config(registry, home=home)
    with trio.fail_after(NETWORK_TIMEOUT):
        async with trio.open_nursery() as life:
            server = await start(life, config)
            acks: list[int] = []
            ws = await producer(life, server, acks)
            await ws.send_message(json.dumps({"type": "status", "pseq": 1, "status": "running"}))
            await send_lines(ws, 2, ["one", "two"])
            await until(lambda: acks[-1:] == [3])
            hub = server.manager.get_hub("demo")
            assert hub is not None
            before = (hub.epoch, hub.head)
            life.cancel_scope.cancel()
        async with trio.open_nursery() as second:
            server = await start(second, config)
            watcher = await connect(second, server)
            hello = await receive(watcher)
            status = await receive(watcher)
            again = await connect_websocket_url(
                second,
                ws_url(server, "/ws/projects/demo/publish"),
                extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())],
            )
            await again.send_message(
                json.dumps({"type": "hello", "producer": "p1", "stream": "agent"})
            )
            welcome = await receive(again)
            second.cancel_scope.cancel()
    assert hello["epoch"] == before[0]
    assert hello["seq"] in (before[1], before[1] + 1)  # + 1: progress, read for the subscriber
    assert (status["type"], status["status"], status["seq"]) == ("agent_status", "running", 1)
    assert welcome == {"type": "welcome", "acked": 3}


async def test_metrics_show_the_journal_of_each_project(
    nursery: trio.Nursery, registry: Registry, home: Path, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, sqlite_config(registry, home=home))
        hub = (await server.manager.open("demo", project_dir)).hub
        hub.feed_lines(["a", "b"])
        await hub.wait_committed(2)
        _, _, body = await http_get(server, "/metrics")
        server._cancel.cancel()
    text = body.decode()
    assert 'trio_ws_journal_info{backend="sqlite",project="demo"} 1.0' in text
    assert 'trio_ws_journal_head_seq{project="demo"} 2.0' in text
    assert 'trio_ws_journal_oldest_seq{project="demo"} 1.0' in text
    assert 'trio_ws_journal_write_errors_total{project="demo"} 0.0' in text
    assert 'trio_ws_journal_commit_seconds_count{project="demo"}' in text


async def test_a_producer_is_not_read_past_the_staged_limit_while_the_journal_cannot_write(
    nursery: trio.Nursery, registry: Registry, home: Path, project_dir: Path
) -> None:
    """A full disk stops commits; a producer that goes on sending is back-pressured at
    the staged limit (its items wait in its own buffers) instead of growing the
    server, and once the disk has room every line arrives, once, in order."""
    connections: list[sqlite3.Connection] = []

    def hook(conn: sqlite3.Connection) -> None:
        connections.append(conn)
        conn.execute("PRAGMA max_page_count = 40")

    config = HookedConfig(**vars(sqlite_config(registry, home=home, staged_limit=200)), hook=hook)
    count, per_message = 3000, 100
    most_staged = 0
    with trio.fail_after(NETWORK_TIMEOUT):
        async with trio.open_nursery() as life:
            server = await start(life, config)
            watcher = await connect(life, server, backlog=1000)
            acks: list[int] = []
            ws = await producer(life, server, acks)

            async def send_all() -> None:
                for first in range(1, count + 1, per_message):
                    await send_lines(
                        ws, first, [line(n) for n in range(first, first + per_message)]
                    )

            life.start_soon(send_all)
            hub = server.manager.get_hub("demo")
            assert hub is not None
            await until(lambda: hub.has_warning("journal"))
            for _ in range(100):  # a second of the producer pushing against the limit
                most_staged = max(most_staged, hub.pending)
                await trio.sleep(0.01)
            assert hub.pending < count  # it really is held back, not all read
            connections[-1].execute("PRAGMA max_page_count = 1000000")  # room again
            seen = await receive_until(
                watcher, lambda m: m["type"] == "log" and m["line"] == line(count)
            )
            await until(lambda: acks[-1:] == [count])
            life.cancel_scope.cancel()
    assert most_staged < 200 + per_message
    shown = [m["line"] for m in seen if m["type"] == "log"]
    assert shown[-count:] == [line(n) for n in range(1, count + 1)]
