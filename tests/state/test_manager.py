"""ConnectionManager: the server's set of projects and its live sessions.

A name opens one project (one hub, one reader), two names two, and only fully
(a failed open leaves nothing behind); a project nobody used for a while is
closed and opens again from its journal; the number open is bounded; shutdown
closes every live session with 1001 within its bound, whatever the peers do.
Real sockets on 127.0.0.1; the per-project behaviour is tests/test_project.py's.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import weakref
from pathlib import Path

import pytest
import trio
import trio.testing
import wsproto
from plain import Msg
from redis_server import RedisServer
from serving import NETWORK_TIMEOUT
from test_project import (
    add_project,
    close_code,
    start_server,
    subscribe,
    until_pong,
    wait_until,
)
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from trio_ws.data.registry import Registry
from trio_ws.journal.interface import ArchiveLimits, JournalState
from trio_ws.journal.redis import open_redis_backend, redis_client
from trio_ws.journal.sqlite import SqliteBackend, SqliteJournal, journal_path
from trio_ws.net.server import Server
from trio_ws.state.hub import ProjectHub
from trio_ws.state.manager import ConnectionManager, TooManyProjects
from trio_ws.state.project import Project, Services

# -- opening projects -------------------------------------------------------------


async def test_open_gives_the_same_hub_for_the_same_name(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    manager = ConnectionManager(nursery)
    hub = (await manager.open("alpha", tmp_path)).hub
    reader = manager.projects["alpha"].reader
    assert (await manager.open("alpha", tmp_path)).hub is hub
    assert manager.get_hub("alpha") is hub
    assert manager.projects["alpha"].reader is reader  # its cached connection is kept


async def test_open_gives_different_names_different_hubs_and_epochs(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    manager = ConnectionManager(nursery)
    alpha = (await manager.open("alpha", tmp_path / "alpha")).hub
    beta = (await manager.open("beta", tmp_path / "beta")).hub
    assert alpha is not beta
    assert alpha.epoch != beta.epoch
    assert manager.hubs == {"alpha": alpha, "beta": beta}
    assert manager.projects["alpha"].reader is not manager.projects["beta"].reader


class InjectedJournal(SqliteJournal):
    """A real sqlite journal whose open may fail (``fail``), whose reads may fail once
    it is open (``fail_read``: the hub's open then fails after the journal's), and
    whose close may wait for a gate."""

    def __init__(
        self, path: Path, project: str, fail: Exception | None, gate: trio.Event | None
    ) -> None:
        super().__init__(path, project)
        self.fail = fail
        self.fail_read: Exception | None = None
        self.gate = gate
        self.closed_clean: bool | None = None
        self.open_gate: trio.Event | None = None

    async def open(self) -> JournalState:
        if self.open_gate is not None:
            await self.open_gate.wait()
        if self.fail is not None:
            raise self.fail
        return await super().open()

    async def read_since(self, seq: int, limit: int) -> list[tuple[int, str]]:
        if self.fail_read is not None:
            raise self.fail_read
        return await super().read_since(seq, limit)

    async def close(self, *, clean: bool = True) -> None:
        if self.gate is not None:
            await self.gate.wait()
        await super().close(clean=clean)
        self.closed_clean = clean


class InjectedJournals(SqliteBackend):
    """Sqlite journals under ``home``; the next ones fail to open with ``failures``
    (one each), the next ones' reads with ``read_failures``, and each close waits
    for ``close_gate`` when one is set."""

    def __init__(self, home: Path) -> None:
        super().__init__(home)
        self.failures: list[Exception] = []
        self.read_failures: list[Exception] = []
        self.open_gate: trio.Event | None = None
        self.close_gate: trio.Event | None = None
        self.made: list[InjectedJournal] = []

    def journal(self, project: str, archive: ArchiveLimits | None = None) -> InjectedJournal:
        fail = self.failures.pop(0) if self.failures else None
        made = InjectedJournal(journal_path(self.home, project), project, fail, self.close_gate)
        made.fail_read = self.read_failures.pop(0) if self.read_failures else None
        made.open_gate = self.open_gate
        self.made.append(made)
        return made


async def test_a_project_cannot_be_constructed_half_open(nursery: trio.Nursery) -> None:
    with pytest.raises(TypeError, match="no public constructor"):
        Project(ProjectHub("alpha"), None, Services(nursery))


@pytest.mark.parametrize("error", [RuntimeError("injected"), OSError(5, "injected")])
async def test_an_open_that_fails_unexpectedly_leaves_nothing_and_the_next_open_works(
    nursery: trio.Nursery, tmp_path: Path, error: Exception
) -> None:
    journals = InjectedJournals(tmp_path)
    journals.failures.append(error)
    manager = ConnectionManager(nursery, journals=journals)
    with trio.fail_after(NETWORK_TIMEOUT):
        with pytest.raises(type(error), match="injected"):
            await manager.open("alpha", tmp_path)
        assert manager.projects == {} and manager.get_hub("alpha") is None
        project = await manager.open("alpha", tmp_path)
        project.hub.feed_lines(["after the failed open"])
        await project.hub.wait_committed(project.hub.seq)  # its writer runs
    assert manager.projects == {"alpha": project}
    assert len(journals.made) == 2


async def test_a_failure_after_the_journal_opened_closes_it_and_caches_nothing(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    journals = InjectedJournals(tmp_path)
    with trio.fail_after(NETWORK_TIMEOUT):
        earlier = ConnectionManager(nursery, journals=journals)
        project = await earlier.open("alpha", tmp_path)
        project.hub.feed_lines(["held", "events"])
        await project.hub.wait_committed(project.hub.seq)
        epoch, head = project.hub.epoch, project.hub.head
        await earlier.close_journals()
        journals.read_failures.append(RuntimeError("injected"))
        manager = ConnectionManager(nursery, journals=journals)
        with pytest.raises(RuntimeError, match="injected"):
            await manager.open("alpha", tmp_path)
        assert journals.made[1].closed_clean is False  # not left open, not marked clean
        assert manager.projects == {}
        again = await manager.open("alpha", tmp_path)
    assert (again.hub.epoch, again.hub.head) == (epoch, head)


async def test_concurrent_opens_share_one_failed_open(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    journals = InjectedJournals(tmp_path)
    journals.failures.append(RuntimeError("injected"))
    journals.open_gate = gate = trio.Event()
    manager = ConnectionManager(nursery, journals=journals)
    errors: list[BaseException] = []

    async def open_alpha() -> None:
        try:
            await manager.open("alpha", tmp_path)
        except RuntimeError as exc:
            errors.append(exc)

    with trio.fail_after(NETWORK_TIMEOUT):
        async with trio.open_nursery() as openers:
            openers.start_soon(open_alpha)
            openers.start_soon(open_alpha)
            await trio.testing.wait_all_tasks_blocked()
            assert len(journals.made) == 1  # the second waits for the first's open
            gate.set()
    assert [str(error) for error in errors] == ["injected", "injected"]
    assert len(journals.made) == 1  # one open, whose error both got
    assert manager.projects == {}


# -- closing idle projects, the bound ---------------------------------------------

IDLE = 0.2


async def test_an_unused_project_is_closed_clean_and_reopens_in_its_epoch(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    journals = InjectedJournals(tmp_path)
    manager = ConnectionManager(nursery, journals=journals, idle_close=IDLE)
    with trio.fail_after(NETWORK_TIMEOUT):
        first = await manager.open("alpha", tmp_path)
        first.hub.feed_lines(["one", "two"])
        await first.hub.wait_committed(first.hub.seq)
        epoch, head = first.hub.epoch, first.hub.head
        await wait_until(lambda: "alpha" not in manager.projects)
        again = await manager.open("alpha", tmp_path)  # once the close finished
    assert first.closed and journals.made[0].closed_clean is True
    assert again is not first and not again.closed
    assert (again.hub.epoch, again.hub.head) == (epoch, head)
    assert manager.closed_idle == 1


async def test_a_broker_project_closed_idle_stops_following_and_reopens_in_its_epoch(
    redis_server: RedisServer,
) -> None:
    """Its follower (a Redis subscription) ends with it; the next open reads its head."""
    async with redis_client(redis_server.url) as client:
        await client.flushall()
    with trio.fail_after(NETWORK_TIMEOUT):
        async with open_redis_backend(redis_server.url) as journals, trio.open_nursery() as nursery:
            manager = ConnectionManager(nursery, journals=journals, idle_close=IDLE)
            first = await manager.open("alpha", None)
            first.hub.feed_lines(["shared"])
            await first.hub.wait_committed(first.hub.seq)
            epoch, head = first.hub.epoch, first.hub.head
            await wait_until(lambda: "alpha" not in manager.projects)
            again = await manager.open("alpha", None)
            assert (again.hub.epoch, again.hub.head) == (epoch, head)
            await manager.close_journals()
            nursery.cancel_scope.cancel()
    assert first.closed and again.closed


async def test_a_project_closed_idle_is_freed(nursery: trio.Nursery, tmp_path: Path) -> None:
    """Closing is for its memory (history, writer): nothing may keep it alive."""
    manager = ConnectionManager(nursery, journals=SqliteBackend(tmp_path), idle_close=IDLE)
    with trio.fail_after(NETWORK_TIMEOUT):
        project = await manager.open("alpha", None)
        project.hub.feed_lines(["held"])
        await project.hub.wait_committed(project.hub.seq)
        freed = weakref.ref(project)
        del project
        await wait_until(lambda: not manager.projects)
        # The close ends in a worker thread (the journal's), which a task waiting on
        # counts as blocked: wait for the last reference to go rather than guess.
        await wait_until(lambda: gc.collect() >= 0 and freed() is None)


async def test_a_held_project_is_not_closed_until_released(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    manager = ConnectionManager(nursery, journals=SqliteBackend(tmp_path), idle_close=IDLE)
    with trio.fail_after(NETWORK_TIMEOUT):
        project = await manager.hold("alpha", tmp_path)
        await trio.sleep(IDLE * 3)
        assert manager.projects == {"alpha": project}
        manager.release(project)
        await wait_until(lambda: "alpha" not in manager.projects)
        await wait_until(lambda: project.closed)  # it leaves the table before it closes


async def test_a_project_with_a_subscriber_is_not_closed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    manager = ConnectionManager(nursery, journals=SqliteBackend(tmp_path), idle_close=IDLE)
    with trio.fail_after(NETWORK_TIMEOUT):
        project = await manager.open("alpha", None)
        subscriber = project.subscribe(None, None, 0)
        await trio.sleep(IDLE * 3)
        assert manager.projects == {"alpha": project}
        project.unsubscribe(subscriber)
        await wait_until(lambda: "alpha" not in manager.projects)


async def test_an_open_while_closing_waits_and_gets_a_fully_open_project(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    journals = InjectedJournals(tmp_path)
    journals.close_gate = gate = trio.Event()
    manager = ConnectionManager(nursery, journals=journals, idle_close=IDLE)
    with trio.fail_after(NETWORK_TIMEOUT):
        first = await manager.open("alpha", tmp_path)
        epoch = first.hub.epoch
        await wait_until(lambda: "alpha" not in manager.projects)  # closing, held at the gate
        assert journals.made[0].closed_clean is None
        opened: list[Project] = []

        async def open_alpha() -> None:
            opened.append(await manager.open("alpha", tmp_path))

        nursery.start_soon(open_alpha)
        await trio.testing.wait_all_tasks_blocked()
        assert opened == [] and len(journals.made) == 1  # it waits for the close
        gate.set()
        await wait_until(lambda: bool(opened))
    again = opened[0]
    assert journals.made[0].closed_clean is True
    assert again is not first and not again.closed and again.hub.epoch == epoch
    assert manager.projects == {"alpha": again}


async def test_a_project_beyond_the_bound_is_refused_until_one_is_closed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    manager = ConnectionManager(
        nursery, journals=SqliteBackend(tmp_path), idle_close=IDLE, max_projects=1
    )
    with trio.fail_after(NETWORK_TIMEOUT):
        await manager.open("alpha", None)
        with pytest.raises(TooManyProjects, match="limit of 1 open projects"):
            await manager.open("beta", None)
        assert list(manager.projects) == ["alpha"]
        await wait_until(lambda: "alpha" not in manager.projects)
        beta = await manager.open("beta", None)
    assert manager.projects == {"beta": beta}


async def test_memory_projects_are_never_closed_idle(nursery: trio.Nursery) -> None:
    """Their history lives only in the process: closing one would lose it."""
    manager = ConnectionManager(nursery, idle_close=IDLE)
    with trio.fail_after(NETWORK_TIMEOUT):
        project = await manager.open("alpha", None)
        await trio.sleep(IDLE * 3)
    assert manager.idle_close is None and manager.projects == {"alpha": project}


async def test_a_failing_idle_close_is_logged_and_the_others_are_still_closed(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journals = InjectedJournals(tmp_path)
    manager = ConnectionManager(nursery, journals=journals, idle_close=IDLE)
    with trio.fail_after(NETWORK_TIMEOUT):
        alpha = await manager.open("alpha", None)

        async def broken(*, clean: bool = True) -> None:
            raise RuntimeError("injected close failure")

        journals.made[0].close = broken  # type: ignore[method-assign]
        beta = await manager.open("beta", None)
        with caplog.at_level(logging.ERROR, logger="trio_ws.state.manager"):
            await wait_until(lambda: not manager.projects)
            await wait_until(lambda: beta.closed)
    assert alpha.closed and manager.closed_idle == 2
    failed = [record for record in caplog.records if "closing it failed" in record.message]
    assert failed and failed[0].exc_info is not None  # with its traceback


# -- shutdown ---------------------------------------------------------------------


async def test_shutdown_closes_every_subscriber_with_1001(
    nursery: trio.Nursery, tmp_path: Path, registry: Registry, project_dir: Path, server: Server
) -> None:
    add_project(registry, tmp_path, "other")
    with trio.fail_after(NETWORK_TIMEOUT):
        watchers = [await subscribe(nursery, server, name) for name in ("demo", "demo", "other")]
        for ws in watchers:
            await until_pong(ws)  # read everything, so each client answers the close at once
        assert server.manager.subscriber_count == 3
    with trio.fail_after(5):
        await server.shutdown(1001)
    with trio.fail_after(NETWORK_TIMEOUT):
        codes = [await close_code(ws) for ws in watchers]
        await wait_until(lambda: server.manager.poll.running == 0)
    assert codes == [1001, 1001, 1001]
    assert server.manager.subscriber_count == 0


async def test_shutdown_is_not_held_up_by_a_subscriber_that_reads_nothing(
    nursery: trio.Nursery, project_dir: Path, server: Server
) -> None:
    """trio-websocket's client cannot answer a close while its unread messages fill its queue."""
    with trio.fail_after(NETWORK_TIMEOUT):
        idle = await subscribe(nursery, server)  # its snapshot stays unread
        reading = await subscribe(nursery, server)
        await until_pong(reading)
    with trio.fail_after(5):
        await server.shutdown(1001)
    with trio.fail_after(NETWORK_TIMEOUT):
        codes = [await close_code(ws) for ws in (idle, reading)]
    assert codes == [1001, 1001]


class RawClient:
    """A websocket client driven by hand (wsproto), so the test decides when it answers a close."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self._text = ""

    @classmethod
    async def connect(cls, server: Server, target: str) -> RawClient:
        client = cls(await trio.open_tcp_stream("127.0.0.1", server.port))
        await client.send(Request(host=f"127.0.0.1:{server.port}", target=target))
        await client.next_event(AcceptConnection)
        return client

    async def send(self, event: wsproto.events.Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def next_event(self, *kinds: type[wsproto.events.Event]) -> wsproto.events.Event:
        """The next event of one of ``kinds``, skipping any other."""
        while True:
            for event in self.ws.events():
                if isinstance(event, kinds):
                    return event
            data = await self.stream.receive_some(65536)
            assert data, "server closed the TCP connection"
            self.ws.receive_data(data)

    async def text(self) -> Msg:
        while True:
            event = await self.next_event(TextMessage)
            assert isinstance(event, TextMessage)
            self._text += event.data
            if event.message_finished:
                message: Msg = json.loads(self._text)
                self._text = ""
                return message


async def test_shutdown_finishes_once_the_subscriber_answers_the_close(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    # A long poll interval: nothing runs on a timer while the test waits for quiet.
    server = await start_server(nursery, registry, poll_interval=60.0)
    done = trio.Event()

    async def shut_down() -> None:
        await server.shutdown(1001)
        done.set()

    with trio.fail_after(NETWORK_TIMEOUT):
        client = await RawClient.connect(server, "/ws/projects/demo?backlog=0")
        await client.send(TextMessage(data='{"type":"ping"}'))
        while (await client.text())["type"] != "pong":
            pass
        nursery.start_soon(shut_down)
        close = await client.next_event(CloseConnection)
        assert isinstance(close, CloseConnection) and close.code == 1001
        # The server has done all it can without the reply; a slow network, not a dead peer.
        await trio.testing.wait_all_tasks_blocked(0.05)
        with contextlib.suppress(trio.BrokenResourceError):
            await client.send(close.response())
    with trio.fail_after(1):  # the close bound is 2 s; answered, it takes a round trip
        await done.wait()
