"""Project's poll loop and poll_progress (PROTOCOL.md 3.2 "progress", DATA.md 1).

One poll loop per project, alive exactly while the project has subscribers,
reading through ``trio.to_thread`` under a capacity limit; progress only on
change; one warning per failure streak and never zeros; the poll lease with
several nodes. Its producers' grace period and the routing of control actions
to its agent producer. Server tests use real sockets on 127.0.0.1 and real
databases; windows are bounded by counted reads, never by wall-clock time.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import trio
import trio.testing
from features_db import create_db, db_path, insert, rows
from plain import Msg
from redis_server import RedisServer
from services import free_port
from serving import (
    NETWORK_TIMEOUT,
    TOKEN,
    connect,
    http_get,
    http_json,
    make_config,
    receive,
    receive_until,
    ws_url,
)
from test_hub import open_hub
from test_publish import (
    control,
    logs,
    producer,
    send,
    snapshot_logs,
    subscriber_with_token,
    wait_acked,
)
from trio_websocket import ConnectionClosed, WebSocketConnection, connect_websocket_url

from trio_ws.data.progress import Progress, ProgressReader
from trio_ws.data.registry import Registry
from trio_ws.journal.redis import redis_client
from trio_ws.net.config import ServerConfig
from trio_ws.net.server import Server, serve
from trio_ws.state.hub import ProjectHub
from trio_ws.state.lease import PollLease
from trio_ws.state.manager import ConnectionManager
from trio_ws.state.project import READER_THREADS, poll_progress
from trio_ws.state.subscriber import Subscriber

LOCK_TIMEOUT = 0.2
INTERVAL = 0.05
GARBAGE = b"this is not an SQLite database\n" * 200
PROGRESS_FIELDS = ("passing", "in_progress", "total", "percentage", "needs_human_input")


# -- helpers ------------------------------------------------------------------


def figures(message: Msg) -> dict[str, Any]:
    """The counts of a ``progress`` message."""
    assert message["type"] == "progress", message
    return {name: message[name] for name in PROGRESS_FIELDS}


def expected(
    passing: int, in_progress: int, total: int, percentage: float, needs_human_input: int
) -> dict[str, Any]:
    return {
        "passing": passing,
        "in_progress": in_progress,
        "total": total,
        "percentage": percentage,
        "needs_human_input": needs_human_input,
    }


def types(messages: list[Msg]) -> list[str]:
    return [message["type"] for message in messages]


def of_type(kind: str) -> Callable[[Msg], bool]:
    return lambda message: bool(message["type"] == kind)


def is_running(message: Msg) -> bool:
    """The marker event tests publish after a window of reads."""
    return bool(message["type"] == "agent_status" and message["status"] == "running")


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Wait for a condition on server state; every caller bounds it with fail_after."""
    # Server counters have no event to wait on, so poll them.
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(0.005)


async def reads_pass(manager: ConnectionManager, count: int) -> None:
    """Wait until the poll loops finished ``count`` more reads."""
    target = manager.poll.reads + count
    await wait_until(lambda: manager.poll.reads >= target)


async def failures_pass(manager: ConnectionManager, count: int) -> None:
    """Wait until the poll loops saw ``count`` more failed reads."""
    target = manager.poll.errors + count
    await wait_until(lambda: manager.poll.errors >= target)


async def start_server(nursery: trio.Nursery, registry: Registry, **overrides: Any) -> Server:
    with trio.fail_after(NETWORK_TIMEOUT):
        server: Server = await nursery.start(serve, make_config(registry, **overrides))
    return server


def add_project(registry: Registry, tmp_path: Path, name: str) -> Path:
    directory = tmp_path / name
    directory.mkdir()
    return registry.add(name, directory).path


async def subscribe(
    nursery: trio.Nursery, server: Server, project: str = "demo"
) -> WebSocketConnection:
    """A subscriber that is registered in the hub once this returns (hello received)."""
    ws = await connect(nursery, server, project, backlog=0)
    await receive_until(ws, of_type("hello"))
    return ws


async def connect_producer(nursery: trio.Nursery, server: Server) -> WebSocketConnection:
    """An agent producer of ``demo``, welcomed."""
    ws = await connect_websocket_url(
        nursery,
        ws_url(server, "/ws/projects/demo/publish"),
        extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())],
    )
    await ws.send_message('{"type":"hello","producer":"p1","stream":"agent"}')
    await receive_until(ws, of_type("welcome"))
    return ws


async def until_pong(ws: WebSocketConnection) -> list[Msg]:
    """Everything queued for ``ws`` so far: a pong comes after all of it."""
    await ws.send_message('{"type":"ping"}')
    return await receive_until(ws, of_type("pong"))


async def close_code(ws: WebSocketConnection) -> int | None:
    """Read until the server closes ``ws``; the close code it used."""
    while True:
        try:
            await receive(ws)
        except ConnectionClosed as exc:
            assert exc.reason is not None
            code: int | None = exc.reason.code
            return code


def garbage_db(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(GARBAGE)
    return path


def replace_with_garbage(path: Path) -> None:
    """Swap a corrupt file in under the database's name, as a botched copy would."""
    spare = garbage_db(path.with_name("garbage.tmp"))
    os.replace(spare, path)


def replace_with_db(path: Path, batch: list[Any]) -> None:
    spare = create_db(path.with_name("spare.db"), batch, journal_mode="delete")
    os.replace(spare, path)


class HeldLock:
    """A writer in the test holding a DELETE-journal database under EXCLUSIVE.

    ``take`` begins the transaction and adds one passing feature without
    committing; ``release`` commits it. Leaving the ``with`` block closes the
    connection, which rolls back and frees the lock even if a test failed.
    """

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(
            path, isolation_level=None, timeout=NETWORK_TIMEOUT, check_same_thread=False
        )

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._conn.close()

    async def take(self) -> None:
        await trio.to_thread.run_sync(self._take)

    def _take(self) -> None:
        self._conn.execute("BEGIN EXCLUSIVE")
        self._conn.execute(
            "INSERT INTO features (priority, category, name, description, steps, passes)"
            " VALUES (1, 'core', 'held', 'written under the lock', '[]', 1)"
        )

    async def release(self) -> None:
        await trio.to_thread.run_sync(self._conn.execute, "COMMIT")


class Polls:
    """poll_progress's ``record`` callback: the outcome of every finished read."""

    def __init__(self) -> None:
        self.outcomes: list[bool] = []
        self._changed = trio.Event()

    def __call__(self, name: str, seconds: float, ok: bool) -> None:
        self.outcomes.append(ok)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int) -> None:
        while len(self.outcomes) < count:
            await self._changed.wait()


class ThreadRecordingReader(ProgressReader):
    """A real reader that notes which thread each read ran on."""

    def __init__(self, project_dir: Path) -> None:
        super().__init__(project_dir)
        self.threads: list[int] = []

    def read(self) -> Progress:
        self.threads.append(threading.get_ident())
        return super().read()


def live_events(subscriber: Subscriber) -> list[Msg]:
    """What the hub queued for ``subscriber`` after its initial messages."""
    events: list[Msg] = []
    while subscriber.queue:
        events.append(json.loads(subscriber.queue.pop(0).text))
    return events


async def next_event(subscriber: Subscriber, kind: str) -> Msg:
    """The next ``kind`` event queued for ``subscriber`` (the caller bounds the wait)."""
    while True:
        while subscriber.queue:
            item = subscriber.queue.pop(0)
            if item.type == kind:
                message: Msg = json.loads(item.text)
                return message
        await trio.sleep(0.01)


def unit_project(tmp_path: Path, batch: list[Any], name: str = "unit") -> tuple[Path, Path]:
    directory = tmp_path / name
    directory.mkdir()
    return directory, create_db(db_path(directory), batch, journal_mode="delete")


# -- progress through the real server ------------------------------------------


async def test_committed_change_reaches_every_subscriber_as_progress(
    nursery: trio.Nursery, project_dir: Path, server: Server
) -> None:
    path = create_db(db_path(project_dir), rows(passing=1, pending=2))
    with trio.fail_after(NETWORK_TIMEOUT):
        watchers = [await subscribe(nursery, server) for _ in range(2)]
        for ws in watchers:
            seen = await receive_until(ws, of_type("progress"))
            assert figures(seen[-1]) == expected(1, 0, 3, 33.3, 0)
        await trio.to_thread.run_sync(
            insert, path, rows(passing=1, in_progress=2, needs_human_input=1)
        )
        for ws in watchers:
            seen = await receive_until(ws, of_type("progress"))
            assert types(seen) == ["progress"]
            assert figures(seen[0]) == expected(2, 2, 7, 28.6, 1)


async def test_unchanged_database_sends_no_further_progress(
    nursery: trio.Nursery, project_dir: Path, server: Server
) -> None:
    create_db(db_path(project_dir), rows(passing=2, pending=2))
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        await receive_until(ws, of_type("progress"))
        await reads_pass(server.manager, 10)
        hub = server.manager.get_hub("demo")
        assert hub is not None
        hub.set_status("running")  # a marker: everything published before it arrives first
        seen = await receive_until(ws, is_running)
    assert types(seen) == ["agent_status"]


async def test_project_without_database_gets_zero_progress_not_a_warning(
    nursery: trio.Nursery, project_dir: Path, server: Server
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        seen = await receive_until(ws, of_type("progress"))
        assert "warning" not in types(seen)
        assert figures(seen[-1]) == expected(0, 0, 0, 0, 0)
        # Appear whole (built aside, then renamed): a read between the file's
        # creation and its table's would rightly warn about a missing table.
        staged = project_dir / "staged.db"
        create_db(staged, rows(passing=1, pending=1))
        db_path(project_dir).parent.mkdir(parents=True, exist_ok=True)
        staged.replace(db_path(project_dir))
        seen = await receive_until(ws, of_type("progress"))
    assert types(seen) == ["progress"]
    assert figures(seen[0]) == expected(1, 0, 2, 50.0, 0)


# -- a locked database ------------------------------------------------------------


@pytest.fixture
def demo_db(project_dir: Path) -> Path:
    """Where demo's database goes, as the server names it (the registry resolves paths)."""
    return db_path(project_dir.resolve())


@pytest.fixture
def locked_db(demo_db: Path) -> Path:
    """demo's database in DELETE journal mode, so an exclusive writer shuts readers out."""
    return create_db(demo_db, rows(passing=1, pending=3), journal_mode="delete")


@pytest.fixture
async def lock_server(nursery: trio.Nursery, registry: Registry, locked_db: Path) -> Server:
    return await start_server(nursery, registry, lock_timeout=LOCK_TIMEOUT, poll_interval=INTERVAL)


async def test_locked_database_warns_once_and_publishes_no_zeros(
    nursery: trio.Nursery, locked_db: Path, lock_server: Server
) -> None:
    server = lock_server
    with trio.fail_after(NETWORK_TIMEOUT):
        watchers = [await subscribe(nursery, server) for _ in range(2)]
        for ws in watchers:
            seen = await receive_until(ws, of_type("progress"))
            assert figures(seen[-1]) == expected(1, 0, 4, 25.0, 0)
        with HeldLock(locked_db) as lock:
            await lock.take()
            await failures_pass(server.manager, 4)
            await lock.release()
        for ws in watchers:
            seen = await receive_until(ws, of_type("progress"))
            assert types(seen) == ["warning", "progress"]
            warning, recovered = seen
            assert warning["source"] == "progress"
            assert str(locked_db) in warning["content"]
            assert "locked" in warning["content"]
            assert figures(recovered) == expected(2, 0, 5, 40.0, 0)


async def test_every_failure_streak_warns_once(
    nursery: trio.Nursery,
    locked_db: Path,
    lock_server: Server,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = lock_server
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        await receive_until(ws, of_type("progress"))
        seen: list[Msg] = []
        for _streak in range(2):
            with HeldLock(locked_db) as lock:
                await lock.take()
                await failures_pass(server.manager, 3)
                await lock.release()
            seen += await receive_until(ws, of_type("progress"))
    assert types(seen) == ["warning", "progress", "warning", "progress"]
    assert [figures(m)["passing"] for m in seen if m["type"] == "progress"] == [2, 3]
    logged = [
        r for r in caplog.records if r.name == "trio_ws.state.project" and r.levelname == "WARNING"
    ]
    assert len(logged) == 2
    assert all(str(locked_db) in record.getMessage() for record in logged)


async def test_locked_project_does_not_hold_back_another_project(
    nursery: trio.Nursery,
    tmp_path: Path,
    registry: Registry,
    locked_db: Path,
    lock_server: Server,
) -> None:
    server = lock_server
    other_db = create_db(db_path(add_project(registry, tmp_path, "other")), rows(pending=2))
    with trio.fail_after(NETWORK_TIMEOUT):
        locked_ws = await subscribe(nursery, server)
        other_ws = await subscribe(nursery, server, "other")
        await receive_until(other_ws, of_type("progress"))
        with HeldLock(locked_db) as lock:
            await lock.take()
            await receive_until(locked_ws, of_type("warning"))
            await trio.to_thread.run_sync(insert, other_db, rows(passing=2))
            first = await receive_until(other_ws, of_type("progress"))
            await trio.to_thread.run_sync(insert, other_db, rows(in_progress=1))
            second = await receive_until(other_ws, of_type("progress"))
            hub = server.manager.get_hub("demo")
            assert hub is not None and hub.has_warning("progress")  # still in the streak
            await lock.release()
    assert types(first) == ["progress"] and types(second) == ["progress"]
    assert figures(first[0]) == expected(2, 0, 4, 50.0, 0)
    assert figures(second[0]) == expected(2, 1, 5, 40.0, 0)


async def test_subscriber_joining_during_a_streak_gets_the_warning_after_its_snapshot(
    nursery: trio.Nursery, locked_db: Path, lock_server: Server
) -> None:
    server = lock_server
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        await receive_until(ws, of_type("progress"))
        with HeldLock(locked_db) as lock:
            await lock.take()
            await receive_until(ws, of_type("warning"))
            late = await connect(nursery, server, backlog=0)
            joined = await until_pong(late)
            await lock.release()
        after = await receive_until(late, of_type("progress"))
    assert types(joined) == [
        "hello",
        "agent_status",
        "dev_server_status",
        "progress",
        "warning",
        "pong",
    ]
    assert figures(joined[3]) == expected(1, 0, 4, 25.0, 0)  # the last good figures
    assert joined[4]["source"] == "progress" and "locked" in joined[4]["content"]
    assert types(after) == ["progress"]
    assert figures(after[0]) == expected(2, 0, 5, 40.0, 0)


async def test_subscriber_joining_after_recovery_gets_no_warning(
    nursery: trio.Nursery, locked_db: Path, lock_server: Server
) -> None:
    server = lock_server
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        await receive_until(ws, of_type("progress"))
        with HeldLock(locked_db) as lock:
            await lock.take()
            await receive_until(ws, of_type("warning"))
            await lock.release()
        await receive_until(ws, of_type("progress"))
        fresh = await connect(nursery, server, backlog=0)
        joined = await until_pong(fresh)
    assert types(joined) == ["hello", "agent_status", "dev_server_status", "progress", "pong"]
    assert figures(joined[3]) == expected(2, 0, 5, 40.0, 0)


# -- a corrupt database -------------------------------------------------------------


def truncated_db(path: Path) -> None:
    """A real database cut after its first page and a bit: SQLite calls it malformed."""
    source = create_db(path.with_name("whole.db"), rows(passing=3), journal_mode="delete")
    path.write_bytes(source.read_bytes()[:4196])
    source.unlink()


@pytest.mark.parametrize("make_corrupt", [garbage_db, truncated_db], ids=["garbage", "truncated"])
async def test_corrupt_database_warns_instead_of_zeros(
    nursery: trio.Nursery,
    demo_db: Path,
    server: Server,
    make_corrupt: Callable[[Path], object],
) -> None:
    path = demo_db
    path.parent.mkdir(parents=True, exist_ok=True)
    make_corrupt(path)
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        seen = await receive_until(ws, of_type("warning"))
        await failures_pass(server.manager, 3)
        hub = server.manager.get_hub("demo")
        assert hub is not None
        hub.set_status("running")
        later = await receive_until(ws, is_running)
        status, _, _ = await http_get(server, "/healthz")
    assert types(seen) == ["agent_status", "dev_server_status", "warning"]
    assert seen[-1]["source"] == "progress"
    assert str(path) in seen[-1]["content"] and "corrupt" in seen[-1]["content"]
    assert types(later) == ["agent_status"]  # no zeros, no second warning
    assert hub.progress is None
    assert status == 200
    assert server.manager.poll.running == 1


async def test_database_corrupted_after_a_good_read_keeps_the_last_figures(
    nursery: trio.Nursery, project_dir: Path, server: Server
) -> None:
    path = create_db(db_path(project_dir), rows(passing=1, pending=1))
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        await receive_until(ws, of_type("progress"))
        replace_with_garbage(path)
        seen = await receive_until(ws, of_type("warning"))
        late = await connect(nursery, server, backlog=0)
        joined = await until_pong(late)
    assert types(seen) == ["warning"]
    assert types(joined) == [
        "hello",
        "agent_status",
        "dev_server_status",
        "progress",
        "warning",
        "pong",
    ]
    assert figures(joined[3]) == expected(1, 0, 2, 50.0, 0)


# -- poll loop lifecycle -------------------------------------------------------------


async def test_no_poll_loop_before_any_subscriber(
    nursery: trio.Nursery, project_dir: Path, server: Server
) -> None:
    manager = server.manager
    await manager.open("demo", project_dir)
    with trio.fail_after(NETWORK_TIMEOUT):
        status, _, _ = await http_get(server, "/healthz")
        refused = await connect(nursery, server, "nobody")
        assert await close_code(refused) == 4004
    reader = manager.projects["demo"].reader
    assert status == 200
    assert reader is not None and reader.reads == 0
    assert manager.poll.running == 0 and manager.poll.reads == 0


async def test_one_poll_loop_per_project_whatever_its_subscriber_count(
    nursery: trio.Nursery, project_dir: Path, server: Server
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        await subscribe(nursery, server)
        await reads_pass(server.manager, 2)
        assert server.manager.poll.running == 1
        for _ in range(4):
            await subscribe(nursery, server)
        await reads_pass(server.manager, 5)
    assert server.manager.poll.running == 1


async def test_two_projects_have_two_poll_loops(
    nursery: trio.Nursery, tmp_path: Path, registry: Registry, project_dir: Path, server: Server
) -> None:
    add_project(registry, tmp_path, "other")
    with trio.fail_after(NETWORK_TIMEOUT):
        for project in ("demo", "demo", "other", "other"):
            await subscribe(nursery, server, project)
        await reads_pass(server.manager, 4)
    assert server.manager.poll.running == 2


async def test_poll_loop_stops_with_the_last_subscriber(
    nursery: trio.Nursery, project_dir: Path, server: Server
) -> None:
    manager = server.manager
    with trio.fail_after(NETWORK_TIMEOUT):
        first = await subscribe(nursery, server)
        second = await subscribe(nursery, server)
        await first.aclose()
        hub = manager.get_hub("demo")
        assert hub is not None
        await wait_until(lambda: hub.subscriber_count == 1)
        await reads_pass(manager, 2)
        assert manager.poll.running == 1
        await second.aclose()
        await wait_until(lambda: manager.poll.running == 0)
    assert hub.subscriber_count == 0


async def test_poll_loop_restarts_with_a_new_subscriber(
    nursery: trio.Nursery, project_dir: Path, server: Server
) -> None:
    manager = server.manager
    path = create_db(db_path(project_dir), rows(pending=2))
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        await receive_until(ws, of_type("progress"))
        await ws.aclose()
        await wait_until(lambda: manager.poll.running == 0)
        insert(path, rows(passing=2))  # changed while nobody watched
        ws = await subscribe(nursery, server)
        seen = await receive_until(ws, lambda m: m["type"] == "progress" and m["passing"] == 2)
    assert figures(seen[-1]) == expected(2, 0, 4, 50.0, 0)
    assert manager.poll.running == 1


async def test_resubscribing_during_a_slow_read_keeps_one_loop(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """The cancelled loop may still be inside its (uncancellable) read; no second loop joins it."""
    directory, path = unit_project(tmp_path, rows(passing=1))
    manager = ConnectionManager(nursery, poll_interval=0.01, lock_timeout=NETWORK_TIMEOUT)
    await manager.open("slow", directory)
    reader = manager.projects["slow"].reader
    assert reader is not None
    with HeldLock(path) as lock:
        await lock.take()
        with trio.fail_after(NETWORK_TIMEOUT / 2):
            subscriber = manager.projects["slow"].subscribe(None, None, 0)
            await wait_until(lambda: reader.reads == 1)  # stuck on the lock in a worker thread
            manager.projects["slow"].unsubscribe(subscriber)
            manager.projects["slow"].subscribe(None, None, 0)
            await trio.testing.wait_all_tasks_blocked()
            assert manager.poll.running == 1
            await lock.release()
            await wait_until(lambda: reader.reads == 2)  # the new loop reads after the old ended
    assert manager.poll.running == 1


async def test_resubscribe_churn_on_a_locked_project_does_not_starve_another(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    slow_dir, slow_path = unit_project(tmp_path, rows(passing=1), name="slow")
    other_dir, _ = unit_project(tmp_path, rows(passing=1), name="other")
    manager = ConnectionManager(nursery, poll_interval=0.01, lock_timeout=NETWORK_TIMEOUT)
    await manager.open("slow", slow_dir)
    await manager.open("other", other_dir)
    slow_reader, other_reader = manager.projects["slow"].reader, manager.projects["other"].reader
    assert slow_reader is not None and other_reader is not None
    manager.projects["other"].subscribe(None, None, 0)
    with HeldLock(slow_path) as lock:
        await lock.take()
        with trio.fail_after(NETWORK_TIMEOUT / 2):
            subscriber = manager.projects["slow"].subscribe(None, None, 0)
            await wait_until(lambda: slow_reader.reads == 1)
            for _ in range(READER_THREADS):  # a dashboard reconnecting again and again
                manager.projects["slow"].unsubscribe(subscriber)
                subscriber = manager.projects["slow"].subscribe(None, None, 0)
                await trio.testing.wait_all_tasks_blocked()
            before = other_reader.reads
            # Within a third of the slow read's wait, the other project keeps being read.
            with trio.fail_after(NETWORK_TIMEOUT / 3):
                await wait_until(lambda: other_reader.reads >= before + 3)
            await lock.release()


# -- cost of reading ------------------------------------------------------------------


async def test_database_reads_do_not_grow_with_subscribers(
    nursery: trio.Nursery, tmp_path: Path, registry: Registry, project_dir: Path, server: Server
) -> None:
    """Another project with one subscriber is the metronome: same interval, one read a turn."""
    window = 10
    manager = server.manager
    create_db(db_path(project_dir), rows(passing=1, pending=1))
    create_db(db_path(add_project(registry, tmp_path, "other")), rows(pending=1))

    async def demo_reads_per_window() -> int:
        demo, metronome = manager.projects["demo"].reader, manager.projects["other"].reader
        assert demo is not None and metronome is not None
        demo_start, metronome_start = demo.reads, metronome.reads
        await wait_until(lambda: metronome.reads >= metronome_start + window)
        return demo.reads - demo_start

    with trio.fail_after(NETWORK_TIMEOUT):
        await subscribe(nursery, server, "other")
        ws = await subscribe(nursery, server)
        await receive_until(ws, of_type("progress"))
        alone = await demo_reads_per_window()
        for _ in range(19):
            await subscribe(nursery, server)
        crowd = await demo_reads_per_window()
    assert abs(alone - window) <= 3
    assert abs(crowd - alone) <= 3


async def test_unchanged_database_is_not_queried_again(
    nursery: trio.Nursery, project_dir: Path, server: Server
) -> None:
    create_db(db_path(project_dir), rows(passing=1, pending=1))
    with trio.fail_after(NETWORK_TIMEOUT):
        for _ in range(20):
            await subscribe(nursery, server)
        await reads_pass(server.manager, 2)
        reader = server.manager.projects["demo"].reader
        assert reader is not None
        queries, reads = reader.queries, reader.reads
        await reads_pass(server.manager, 10)
    assert reader.reads >= reads + 10
    assert reader.queries == queries


# -- poll_progress on its own (no sockets) -------------------------------------------


async def test_poll_publishes_the_first_read_then_only_changes(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    directory, path = unit_project(tmp_path, rows(passing=1, pending=1))
    hub = await open_hub("unit")
    nursery.start_soon(hub.run_writer)
    watcher = hub.subscribe(backlog=0)
    reader, polls = ProgressReader(directory), Polls()
    nursery.start_soon(poll_progress, hub, lambda: reader, 0.01, trio.CapacityLimiter(1), polls)
    with trio.fail_after(5):
        await polls.wait_for(3)
        await trio.to_thread.run_sync(insert, path, rows(in_progress=1))
        mark = len(polls.outcomes)
        await polls.wait_for(mark + 2 + 6)  # the second read from mark saw the commit
    await hub.wait_committed(hub.seq)
    events = live_events(watcher)
    assert types(events) == ["progress", "progress"]
    assert figures(events[0]) == expected(1, 0, 2, 50.0, 0)
    assert figures(events[1]) == expected(1, 1, 3, 33.3, 0)
    assert reader.queries == 2


async def test_poll_reads_once_per_interval(
    mock_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Time only moves when the test jumps the clock, so intervals cost nothing."""
    directory, _ = unit_project(tmp_path, rows(passing=1))
    reader, polls = ProgressReader(directory), Polls()
    nursery.start_soon(
        poll_progress, ProjectHub("unit"), lambda: reader, 30.0, trio.CapacityLimiter(1), polls
    )
    await polls.wait_for(1)
    for reads in (1, 2, 3):
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(29)
        await trio.testing.wait_all_tasks_blocked()
        assert len(polls.outcomes) == reads  # still sleeping
        mock_clock.jump(1)
        await polls.wait_for(reads + 1)
    assert reader.reads == 4


async def test_poll_waits_for_a_thread_from_the_limiter(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    directory, _ = unit_project(tmp_path, rows(passing=1))
    limiter = trio.CapacityLimiter(1)
    reader, polls = ProgressReader(directory), Polls()
    await limiter.acquire()
    nursery.start_soon(poll_progress, ProjectHub("unit"), lambda: reader, 0.01, limiter, polls)
    await trio.testing.wait_all_tasks_blocked()
    assert reader.reads == 0
    assert limiter.statistics().tasks_waiting == 1
    limiter.release()
    with trio.fail_after(5):
        await polls.wait_for(1)
    assert reader.reads == 1


async def test_poll_reads_off_the_event_loop_thread(nursery: trio.Nursery, tmp_path: Path) -> None:
    directory, _ = unit_project(tmp_path, rows(passing=1))
    reader, polls = ThreadRecordingReader(directory), Polls()
    nursery.start_soon(
        poll_progress, ProjectHub("unit"), lambda: reader, 0.01, trio.CapacityLimiter(2), polls
    )
    with trio.fail_after(5):
        await polls.wait_for(3)
    assert len(reader.threads) >= 3
    assert threading.get_ident() not in reader.threads


async def test_poll_failure_streak_warns_once_and_keeps_the_last_figures(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory, path = unit_project(tmp_path, rows(passing=1, pending=1))
    hub = await open_hub("unit")
    nursery.start_soon(hub.run_writer)
    watcher = hub.subscribe(backlog=0)
    reader, polls = ProgressReader(directory), Polls()
    nursery.start_soon(poll_progress, hub, lambda: reader, 0.01, trio.CapacityLimiter(1), polls)
    with trio.fail_after(5):
        await polls.wait_for(1)
        good = hub.progress
        replace_with_garbage(path)
        await polls.wait_for(len(polls.outcomes) + 6)
    assert polls.outcomes[-4:] == [False] * 4
    assert hub.progress == good
    await hub.wait_committed(hub.seq)
    events = live_events(watcher)
    assert types(events) == ["progress", "warning"]
    assert "corrupt" in events[1]["content"] and str(path) in events[1]["content"]
    logged = [
        r for r in caplog.records if r.name == "trio_ws.state.project" and r.levelname == "WARNING"
    ]
    assert len(logged) == 1


async def test_poll_recovery_clears_the_warning_and_a_new_streak_warns_again(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    directory, path = unit_project(tmp_path, rows(passing=1, pending=1))
    hub = await open_hub("unit")
    nursery.start_soon(hub.run_writer)
    watcher = hub.subscribe(backlog=0)
    reader, polls = ProgressReader(directory), Polls()
    nursery.start_soon(poll_progress, hub, lambda: reader, 0.01, trio.CapacityLimiter(1), polls)
    with trio.fail_after(5):
        await polls.wait_for(1)
        replace_with_garbage(path)
        await wait_until(lambda: hub.has_warning("progress"))
        replace_with_db(path, rows(passing=2))
        await wait_until(lambda: not hub.has_warning("progress"))
        replace_with_garbage(path)
        await wait_until(lambda: hub.has_warning("progress"))
    await hub.wait_committed(hub.seq)
    events = live_events(watcher)
    assert types(events) == ["progress", "warning", "progress", "warning"]
    assert figures(events[2]) == expected(2, 0, 2, 100.0, 0)


# -- a re-registered directory ----------------------------------------------------


async def test_reregistered_directory_feeds_the_next_progress(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    old_dir, _ = unit_project(tmp_path, rows(passing=1, pending=3), name="old")
    new_dir, _ = unit_project(tmp_path, rows(passing=2, in_progress=1), name="new")
    manager = ConnectionManager(nursery, poll_interval=0.01)
    hub = (await manager.open("moving", old_dir)).hub
    epoch = hub.epoch
    subscriber = manager.projects["moving"].subscribe(None, None, 0)
    with trio.fail_after(5):
        first = await next_event(subscriber, "progress")
        assert (await manager.open("moving", new_dir)).hub is hub
        second = await next_event(subscriber, "progress")
    assert figures(first) == expected(1, 0, 4, 25.0, 0)
    assert figures(second) == expected(2, 1, 3, 66.7, 0)
    assert hub.epoch == epoch
    reader = manager.projects["moving"].reader
    assert reader is not None and reader.project_dir == new_dir.absolute()


# -- a poll loop that crashes is restarted, alone ------------------------------------


class FaultyRead:
    """Stands in for one reader's ``read``: raises ``RuntimeError`` ``failures`` times
    (in the worker thread, as a bug in the reader would), then reads for real."""

    def __init__(self, reader: ProgressReader, failures: int) -> None:
        self._real = reader.read
        self.failures = failures

    def __call__(self) -> Progress:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("reader exploded")
        return self._real()


def restart_delays(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The restart delays the crashed loops logged, in order."""
    return [
        record.getMessage().rsplit(" in ", 1)[1]
        for record in caplog.records
        if record.name == "trio_ws.state.project" and "restarting in" in record.getMessage()
    ]


async def test_a_crashing_poll_loop_is_logged_restarted_with_backoff_and_spares_other_projects(
    nursery: trio.Nursery,
    tmp_path: Path,
    registry: Registry,
    project_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    demo_db = create_db(db_path(project_dir), rows(pending=1))
    other_db = create_db(db_path(add_project(registry, tmp_path, "other")), rows(pending=2))
    server = await start_server(nursery, registry, poll_restart=(0.01, 0.04))
    with trio.fail_after(NETWORK_TIMEOUT):
        demo_ws = await subscribe(nursery, server)
        other_ws = await subscribe(nursery, server, "other")
        await receive_until(demo_ws, of_type("progress"))
        await receive_until(other_ws, of_type("progress"))
        reader = server.manager.projects["demo"].reader
        assert reader is not None
        faulty = FaultyRead(reader, failures=5)
        monkeypatch.setattr(reader, "read", faulty)
        warning = (await receive_until(demo_ws, of_type("warning")))[-1]
        # The other project keeps its loop, its subscribers and new ones.
        await trio.to_thread.run_sync(insert, other_db, rows(passing=2))
        other_progress = (await receive_until(other_ws, of_type("progress")))[-1]
        late_ws = await subscribe(nursery, server, "other")
        # Once the fault stops, the restarted loop reads again.
        await wait_until(lambda: faulty.failures == 0)
        await trio.to_thread.run_sync(insert, demo_db, rows(passing=3))
        demo_progress = (await receive_until(demo_ws, of_type("progress")))[-1]
        await until_pong(late_ws)
    assert (warning["source"], "RuntimeError" in warning["content"]) == ("progress", True)
    assert figures(other_progress) == expected(2, 0, 4, 50.0, 0)
    assert figures(demo_progress) == expected(3, 0, 4, 75.0, 0)
    assert restart_delays(caplog) == ["0.01 s", "0.02 s", "0.04 s", "0.04 s", "0.04 s"]
    crashes = [
        r for r in caplog.records if r.name == "trio_ws.state.project" and r.levelname == "ERROR"
    ]
    assert len(crashes) == 5
    assert all(r.exc_info is not None and "reader exploded" in str(r.exc_info[1]) for r in crashes)
    assert server.manager.poll.running == 2


async def test_a_good_read_resets_the_restart_backoff(
    nursery: trio.Nursery,
    project_dir: Path,
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    create_db(db_path(project_dir), rows(pending=1))
    server = await start_server(nursery, registry, poll_restart=(0.01, 0.04))
    with trio.fail_after(NETWORK_TIMEOUT):
        await subscribe(nursery, server)
        reader = server.manager.projects["demo"].reader
        assert reader is not None
        faulty = FaultyRead(reader, failures=2)
        monkeypatch.setattr(reader, "read", faulty)
        await wait_until(lambda: faulty.failures == 0)
        await reads_pass(server.manager, 1)
        faulty.failures = 2
        await wait_until(lambda: faulty.failures == 0)
        await reads_pass(server.manager, 1)
    assert restart_delays(caplog) == ["0.01 s", "0.02 s", "0.01 s", "0.02 s"]


async def test_a_reader_that_raises_does_not_refuse_a_new_subscriber(
    nursery: trio.Nursery,
    project_dir: Path,
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first subscriber's one-off read (``prime``) fails too: it still joins, told why."""
    create_db(db_path(project_dir), rows(pending=1))
    server = await start_server(nursery, registry, poll_restart=(0.01, 0.04))
    await server.manager.open("demo", project_dir)
    reader = server.manager.projects["demo"].reader
    assert reader is not None
    monkeypatch.setattr(reader, "read", FaultyRead(reader, failures=1))
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await connect(nursery, server, backlog=0)
        seen = await receive_until(ws, of_type("progress"))
    assert types(seen)[:3] == ["hello", "agent_status", "dev_server_status"]
    assert {"type": "warning", "source": "progress"}.items() <= seen[3].items()
    assert figures(seen[-1]) == expected(0, 0, 1, 0.0, 0)
    assert "reader exploded" in caplog.text


# -- several nodes: the poll lease ---------------------------------------------------


async def test_with_a_shared_lease_one_manager_polls_and_the_other_takes_over_when_it_stops(
    redis_server: RedisServer, project_dir: Path
) -> None:
    """Two managers (two nodes) share one Redis and both have a subscriber on ``demo``:
    only one reads its database; once that one's last subscriber leaves, the other
    reads within a few intervals."""
    create_db(db_path(project_dir), rows(passing=1, pending=1))
    with trio.fail_after(NETWORK_TIMEOUT):
        async with redis_client(redis_server.url) as client, trio.open_nursery() as nursery:
            await client.flushall()
            nodes = [
                ConnectionManager(
                    nursery, poll_interval=INTERVAL, lease=PollLease(client, 3 * INTERVAL)
                )
                for _ in range(2)
            ]
            subscribers = []
            for node in nodes:
                await node.open("demo", project_dir)
                subscribers.append(node.projects["demo"].subscribe(None, None, 0))
            await wait_until(lambda: sum(node.poll.reads for node in nodes) >= 20)
            polling = [node.poll.reads > 0 for node in nodes]
            assert polling.count(True) == 1
            holder, other = (0, 1) if polling[0] else (1, 0)
            nodes[holder].projects["demo"].unsubscribe(subscribers[holder])
            stopped_at = trio.current_time()
            await wait_until(lambda: nodes[other].poll.reads > 0)
            took_over_after = trio.current_time() - stopped_at
            nodes[other].projects["demo"].unsubscribe(subscribers[other])
            nursery.cancel_scope.cancel()
    assert took_over_after < 5 * INTERVAL  # released at once, not left to expire


async def test_with_a_lease_a_node_that_dies_without_releasing_is_replaced_after_expiry(
    redis_server: RedisServer, project_dir: Path
) -> None:
    """The holder's lease is taken by a node that never releases it (a node that died):
    the other node reads once it has expired."""
    create_db(db_path(project_dir), rows(passing=1))
    ttl = 3 * INTERVAL
    with trio.fail_after(NETWORK_TIMEOUT):
        async with redis_client(redis_server.url) as client, trio.open_nursery() as nursery:
            await client.flushall()
            assert await PollLease(client, ttl).hold("demo")  # the node that died
            node = ConnectionManager(nursery, poll_interval=INTERVAL, lease=PollLease(client, ttl))
            await node.open("demo", project_dir)
            started = trio.current_time()
            node.projects["demo"].subscribe(None, None, 0)
            await wait_until(lambda: node.poll.reads > 0)
            waited = trio.current_time() - started
            nursery.cancel_scope.cancel()
    assert ttl * 0.8 <= waited < ttl + 3 * INTERVAL


async def test_a_manager_polls_nothing_while_the_agent_producer_reports_progress(
    nursery: trio.Nursery, project_dir: Path, server: Server
) -> None:
    """Protocol-level: a producer's ``progress`` item pauses the server's reads of the
    project; its disconnect resumes them."""
    create_db(db_path(project_dir), rows(passing=1, pending=1))
    manager = server.manager
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        await receive_until(ws, of_type("progress"))
        producer = await connect_producer(nursery, server)
        await producer.send_message(
            json.dumps(
                {
                    "type": "progress",
                    "pseq": 1,
                    "passing": 7,
                    "in_progress": 0,
                    "total": 9,
                    "needs_human_input": 0,
                }
            )
        )
        await receive_until(ws, lambda m: m["type"] == "progress" and m["passing"] == 7)
        # A read that had begun before the item arrived may still finish (and be
        # dropped): let it, then count.
        await trio.sleep(2 * INTERVAL)
        paused_at = manager.poll.reads
        # A subscriber's ping makes the server go round its loop; many of them span
        # many poll intervals, and no read may happen in them.
        for _ in range(10):
            await until_pong(ws)
            await trio.sleep(INTERVAL)
        assert manager.poll.reads == paused_at
        await producer.aclose()
        back = await receive_until(ws, lambda m: m["type"] == "progress" and m["passing"] == 1)
    assert figures(back[-1]) == expected(1, 0, 2, 50.0, 0)
    assert manager.poll.reads > paused_at


async def test_with_an_unreachable_lease_store_a_manager_reads_nothing_and_says_so(
    project_dir: Path,
) -> None:
    """Without Redis no node can know it alone polls: none reads, and subscribers are
    told why progress stands still."""
    create_db(db_path(project_dir), rows(passing=1))
    with trio.fail_after(NETWORK_TIMEOUT):
        async with (
            redis_client(f"redis://127.0.0.1:{free_port()}/0") as unreachable,
            trio.open_nursery() as nursery,
        ):
            node = ConnectionManager(
                nursery, poll_interval=INTERVAL, lease=PollLease(unreachable, 3 * INTERVAL)
            )
            hub = (await node.open("demo", project_dir)).hub
            node.projects["demo"].subscribe(None, None, 0)
            await wait_until(lambda: hub.has_warning("lease"))
            nursery.cancel_scope.cancel()
    assert node.poll.reads == 0
    assert hub.progress is None


async def test_a_read_that_ends_after_the_producer_reported_does_not_replace_its_figures(
    nursery: trio.Nursery, registry: Registry, locked_db: Path
) -> None:
    """The server's read is held up by a writer's lock; meanwhile the producer reports
    7 of 9. The read then finishes with the database's 2 of 5: dropped, 7 of 9 stands."""
    server = await start_server(
        nursery, registry, lock_timeout=NETWORK_TIMEOUT, poll_interval=INTERVAL
    )
    manager = server.manager
    with HeldLock(locked_db) as lock, trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        await receive_until(ws, lambda m: m["type"] == "progress" and m["passing"] == 1)
        await lock.take()
        reader = manager.projects["demo"].reader
        assert reader is not None
        # A read has begun and not finished (every read of this manager is of demo's
        # reader): it waits on the lock.
        await wait_until(lambda: reader.reads > manager.poll.reads)
        finished = manager.poll.reads
        producer = await connect_producer(nursery, server)
        await producer.send_message(
            json.dumps(
                {
                    "type": "progress",
                    "pseq": 1,
                    "passing": 7,
                    "in_progress": 0,
                    "total": 9,
                    "needs_human_input": 0,
                }
            )
        )
        await receive_until(ws, lambda m: m["type"] == "progress" and m["passing"] == 7)
        await lock.release()
        await wait_until(lambda: manager.poll.reads > finished)  # the held read is done
        after = await until_pong(ws)
    hub = manager.get_hub("demo")
    assert hub is not None and hub.progress is not None
    assert (hub.progress.passing, hub.progress.total) == (7, 9)
    assert not [m for m in after if m["type"] == "progress"]


# -- producers: the grace period -------------------------------------------------------


async def test_vanished_producer_is_crashed_after_grace(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server: Server = await nursery.start(serve, make_config(registry, producer_grace=0.3))
        watcher = await connect(nursery, server)
        ws, _ = await producer(nursery, server)
        await send(ws, {"type": "status", "pseq": 1, "status": "running"})
        await send(
            ws, {"type": "lines", "first": 2, "lines": ["Started coding agent for feature #1"]}
        )
        await wait_acked(ws, 2)
        await ws.aclose()
        seen = await receive_until(
            watcher, lambda m: m["type"] == "agent_status" and m["status"] == "crashed"
        )
    warnings = [m for m in seen if m["type"] == "warning"]
    assert [w["source"] for w in warnings] == ["producer"]
    assert logs(seen)[-1] == "[trio-ws] producer lost"
    late = await snapshot_logs(nursery, server)
    assert late[-1] == "[trio-ws] producer lost"


async def test_producer_returning_within_grace_is_not_crashed(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server: Server = await nursery.start(serve, make_config(registry, producer_grace=0.5))
        ws, _ = await producer(nursery, server)
        await send(ws, {"type": "status", "pseq": 1, "status": "running"})
        await wait_acked(ws, 1)
        await ws.aclose()
        _, acked = await producer(nursery, server)
        assert acked == 1
        await trio.sleep(0.8)  # past the grace period: the timer must have been cancelled
        hub = server.manager.get_hub("demo")
        assert hub is not None and hub.agent.status == "running"
        assert not hub.has_warning("producer:agent")


async def test_clean_exit_leaves_no_producer_warning(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server: Server = await nursery.start(serve, make_config(registry, producer_grace=0.1))
        ws, _ = await producer(nursery, server)
        await send(ws, {"type": "status", "pseq": 1, "status": "running"})
        await send(ws, {"type": "status", "pseq": 2, "status": "stopped", "exit_code": 0})
        await wait_acked(ws, 2)
        await ws.aclose()
        await trio.sleep(0.3)
        hub = server.manager.get_hub("demo")
        assert hub is not None and hub.agent.status == "stopped"
        assert "[trio-ws] producer lost" not in await snapshot_logs(nursery, server)


async def test_a_replaced_connection_ending_starts_no_grace_period(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    """Only the slot's current session leaving starts the grace period: the stale
    connection a reconnect replaced ends without warning anyone."""
    with trio.fail_after(NETWORK_TIMEOUT):
        server: Server = await nursery.start(serve, make_config(registry, producer_grace=60.0))
        old, _ = await producer(nursery, server, producer_id="same")
        await send(old, {"type": "status", "pseq": 1, "status": "running"})
        await wait_acked(old, 1)
        await producer(nursery, server, producer_id="same")
        with pytest.raises(ConnectionClosed):
            while True:
                await old.get_message()
        await trio.testing.wait_all_tasks_blocked()
    project = server.manager.projects["demo"]
    slot = project.slots["agent"]
    assert slot.session is not None and slot.grace is None
    assert project.producer_count == 1
    assert not project.hub.has_warning("producer:agent")


async def runs_of(server: Server) -> list[dict[str, Any]]:
    status, body = await http_json(server, "GET", "/api/projects/demo/runs")
    assert status == 200, body
    runs: list[dict[str, Any]] = body["runs"]
    return runs


async def test_a_new_producer_on_a_live_stream_ends_the_old_ones_run(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    """A producer that died unseen within its grace period, and a new one (another id)
    starting: the old one is lost at once, and the new run is a run of its own (it
    used to merge into the old one, whose `running` it repeated)."""
    with trio.fail_after(NETWORK_TIMEOUT):
        server: Server = await nursery.start(serve, make_config(registry, producer_grace=60.0))
        watcher = await connect(nursery, server)
        await receive_until(watcher, lambda m: m["type"] == "hello")  # subscribed
        old, _ = await producer(nursery, server, producer_id="first")
        await send(old, {"type": "status", "pseq": 1, "status": "running"})
        await send(old, {"type": "lines", "first": 2, "lines": ["first run works"]})
        await wait_acked(old, 2)
        await old.aclose()
        new, acked = await producer(nursery, server, producer_id="second")
        assert acked == 0
        await send(new, {"type": "status", "pseq": 1, "status": "running"})
        await send(new, {"type": "lines", "first": 2, "lines": ["second run works"]})
        await send(new, {"type": "status", "pseq": 3, "status": "stopped", "exit_code": 0})
        await wait_acked(new, 3)
        seen = await receive_until(
            watcher,
            lambda m: m["type"] == "agent_status" and m.get("seq") and m["status"] == "stopped",
        )
        runs = await runs_of(server)
    statuses = [m["status"] for m in seen if m["type"] == "agent_status" and "seq" in m]
    assert statuses == ["running", "crashed", "running", "stopped"]
    assert "[trio-ws] producer lost" in logs(seen)
    assert [(run["ended"], run["status"]) for run in runs] == [
        ("stopped", "stopped"),
        ("interrupted", "crashed"),
    ]
    assert not server.manager.projects["demo"].hub.has_warning("producer:agent")


async def first_life(config: ServerConfig, *statuses: str, producer_id: str = "p1") -> None:
    """A server's first life: its producer reports ``statuses``, acked, then the server
    and its producer go together (as a kill of both would leave the journal)."""
    async with trio.open_nursery() as life:
        server: Server = await life.start(serve, config)
        ws, _ = await producer(life, server, producer_id=producer_id)
        for pseq, status in enumerate(statuses, start=1):
            await send(ws, {"type": "status", "pseq": pseq, "status": status})
        await wait_acked(ws, len(statuses))
        life.cancel_scope.cancel()


async def test_a_producer_that_died_with_the_server_is_lost_after_grace_on_restart(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, home: Path
) -> None:
    """The journal says `running`, and no producer comes back after a restart: the
    grace period runs as if the server had seen it go, so the project does not say
    `running` for ever; its run ends interrupted."""
    config = make_config(registry, journal="sqlite", home=home, producer_grace=0.3)
    with trio.fail_after(NETWORK_TIMEOUT):
        await first_life(config, "running")
        server = await nursery.start(serve, config)
        watcher = await connect(nursery, server)
        seen = await receive_until(
            watcher, lambda m: m["type"] == "agent_status" and m["status"] == "crashed"
        )
        runs = await runs_of(server)
    warnings = [m["content"] for m in seen if m["type"] == "warning"]
    assert len(warnings) == 1 and "since the server restarted" in warnings[0]
    assert logs(seen)[-1] == "[trio-ws] producer lost"
    assert [run["ended"] for run in runs] == ["interrupted"]


async def test_a_project_left_live_is_opened_at_start_and_its_producer_lost(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, home: Path
) -> None:
    """Nobody needs to watch: a server that starts on a journal left `running` opens
    that project itself, so its grace period runs out and says `crashed` (and alerts)."""
    config = make_config(registry, journal="sqlite", home=home, producer_grace=0.2)
    with trio.fail_after(NETWORK_TIMEOUT):
        await first_life(config, "running")
        server = await nursery.start(serve, config)
        await wait_until(lambda: server.manager.get_hub("demo") is not None)
        hub = server.manager.get_hub("demo")
        assert hub is not None
        await wait_until(lambda: hub.committed_agent_status == "crashed")


async def test_a_stopped_project_is_not_opened_at_start(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, home: Path
) -> None:
    config = make_config(registry, journal="sqlite", home=home)
    with trio.fail_after(NETWORK_TIMEOUT):
        await first_life(config, "running", "stopped")
        server = await nursery.start(serve, config)
        await http_json(server, "GET", "/healthz")  # the start-up task had its turn
        await trio.testing.wait_all_tasks_blocked(0.05)
    assert server.manager.get_hub("demo") is None


async def test_a_producer_back_after_a_restart_carries_on_its_run(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, home: Path
) -> None:
    """The same producer returning within the grace period after a restart continues
    its run: no crash, the warning cleared."""
    config = make_config(registry, journal="sqlite", home=home, producer_grace=0.5)
    with trio.fail_after(NETWORK_TIMEOUT):
        await first_life(config, "running", producer_id="same")
        server = await nursery.start(serve, config)
        await connect(nursery, server)  # opens the project: the grace period starts
        _, acked = await producer(nursery, server, producer_id="same")
        assert acked == 1
        await trio.sleep(0.8)  # past the grace period: the timer must have been cancelled
        hub = server.manager.get_hub("demo")
        assert hub is not None and hub.agent.status == "running"
        assert not hub.has_warning("producer:agent")
        runs = await runs_of(server)
    assert [run["ended"] for run in runs] == [None]


# -- background tasks: contained -----------------------------------------------------


class BrokenSession:
    """A producer session whose close fails unexpectedly (a bug in a session)."""

    producer_id = "same"

    def send_control(self, action: str) -> bool:
        return False

    def send_screenshots(self, watching: bool) -> bool:
        return False

    async def close(self, code: int, reason: str) -> None:
        raise RuntimeError("injected close failure")


def logged_failure(caplog: pytest.LogCaptureFixture, text: str) -> logging.LogRecord | None:
    return next((record for record in caplog.records if text in record.getMessage()), None)


async def test_a_replaced_producer_whose_close_fails_is_logged_and_the_server_goes_on(
    nursery: trio.Nursery, server: Server, project_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="trio_ws.state.project")
    with trio.fail_after(NETWORK_TIMEOUT):
        project = await server.manager.open("demo", project_dir)
        slot = project.slots["agent"]
        project.producer_back(slot, BrokenSession())
        project.producer_back(slot, BrokenSession())  # closes the first: that fails
        failure = "project demo: closing a replaced producer failed"
        await wait_until(lambda: logged_failure(caplog, failure) is not None)
        ws = await subscribe(nursery, server)  # still serving
        await ws.send_message('{"type":"ping"}')
        await receive_until(ws, of_type("pong"))
    record = logged_failure(caplog, failure)
    assert record is not None and record.exc_info is not None  # with its traceback
    assert "injected close failure" in caplog.text


async def test_a_grace_period_that_fails_is_logged_and_the_server_goes_on(
    nursery: trio.Nursery,
    registry: Registry,
    project_dir: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.ERROR, logger="trio_ws.state.project")
    with trio.fail_after(NETWORK_TIMEOUT):
        server: Server = await nursery.start(serve, make_config(registry, producer_grace=0.05))
        project = await server.manager.open("demo", project_dir)
        project.hub.set_status("running")

        def broken(lines: object, stream: str = "agent") -> None:
            raise RuntimeError("injected grace failure")

        monkeypatch.setattr(project.hub, "feed_lines", broken)
        slot = project.slots["agent"]
        session = BrokenSession()
        project.producer_back(slot, session)
        project.producer_left(slot, session)  # the grace period starts, and fails at its end
        failure = "project demo: agent producer's grace period failed"
        await wait_until(lambda: logged_failure(caplog, failure) is not None)
        ws = await subscribe(nursery, server)  # still serving
        await ws.send_message('{"type":"ping"}')
        await receive_until(ws, of_type("pong"))
    record = logged_failure(caplog, failure)
    assert record is not None and record.exc_info is not None
    assert "injected grace failure" in caplog.text


# -- control routing -----------------------------------------------------------------


async def test_control_reaches_the_agent_producer(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws, _ = await producer(nursery, server)
        await send(ws, {"type": "status", "pseq": 1, "status": "running"})
        await wait_acked(ws, 1)
        dashboard = await subscriber_with_token(nursery, server)
        await control(dashboard, "pause")
        received = await receive_until(ws, lambda m: m["type"] == "control")
        assert received[-1] == {"type": "control", "action": "pause"}


@pytest.mark.parametrize(
    ("status", "action", "refusal"),
    [
        ("running", "resume", "cannot resume while the agent is running"),
        ("paused", "pause", "cannot pause while the agent is paused"),
        ("stopped", "stop", "cannot stop while the agent is stopped"),
        ("running", "graceful_resume", "cannot graceful_resume while the agent is running"),
    ],
)
async def test_control_not_valid_in_current_status_is_a_private_warning(
    nursery: trio.Nursery,
    server: Server,
    project_dir: Path,
    status: str,
    action: str,
    refusal: str,
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws, _ = await producer(nursery, server)
        if status != "stopped":
            await send(ws, {"type": "status", "pseq": 1, "status": status})
            await wait_acked(ws, 1)
        bystander = await subscriber_with_token(nursery, server)
        dashboard = await subscriber_with_token(nursery, server)
        await control(dashboard, action)
        await send(dashboard, {"type": "ping"})
        replies = await receive_until(dashboard, lambda m: m["type"] == "pong")
        assert {"type": "warning", "source": "control", "content": refusal} in replies
        await send(bystander, {"type": "ping"})
        assert all(m["type"] != "warning" for m in await receive_until(bystander, of_type("pong")))


async def test_control_without_producer_is_refused(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        dashboard = await subscriber_with_token(nursery, server)
        await control(dashboard, "stop")
        reply = await receive_until(dashboard, lambda m: m["type"] == "warning")
        assert reply[-1]["content"] == "no producer can act on this project"
