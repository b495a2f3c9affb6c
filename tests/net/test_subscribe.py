"""Subscribing end to end over 127.0.0.1 (PROTOCOL.md 3): sync, resume, slow peers, inbound.

Every test talks to a real server through real sockets. Events are checked
by their ``seq`` and order, never by timing. The stalled subscriber is a
bare socket with a tiny receive buffer speaking websocket through wsproto,
so the server's writes to it really block in the kernel.
"""

from __future__ import annotations

import gc
import json
import logging
import socket
import tracemalloc
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import rawws
import trio
import trio.lowlevel
import trio.testing
import wsproto
from autoforge_ui import AutoForgeUI
from features_db import create_db, db_path, rows
from plain import EVENT_KINDS
from serving import NETWORK_TIMEOUT, TOKEN, connect, make_config, receive, receive_until
from trio_websocket import ConnectionClosed, WebSocketConnection, connect_websocket_url
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from trio_ws.data.registry import Registry
from trio_ws.net import subscribe
from trio_ws.net.server import Server, serve
from trio_ws.state.hub import ProjectHub

Msg = dict[str, Any]

RUN = (
    (Path(__file__).parent.parent / "corpus" / "autoforge-run.txt").read_text("utf-8").splitlines()
)
CONNECTION_WITH_SEQ = frozenset({"hello", "resumed", "resync"})
"""Connection messages that carry the head ``seq`` rather than one of their own."""


# -- helpers ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No connection handler may fail with an unexpected exception in any of these tests."""
    with caplog.at_level(logging.INFO, logger="trio_ws"):
        yield
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    errors = [r for r in records if r.name.startswith("trio_ws") and r.levelno >= logging.ERROR]
    assert errors == []


def is_event(message: Msg) -> bool:
    return "seq" in message and message["type"] not in CONNECTION_WITH_SEQ


def event_seqs(messages: list[Msg]) -> list[int]:
    return [m["seq"] for m in messages if is_event(m)]


def seq_at_least(seq: int) -> Callable[[Msg], bool]:
    return lambda m: is_event(m) and m["seq"] >= seq


def log_lines(count: int, start: int = 0, tag: str = "line") -> list[str]:
    return [f"plain output {tag} {i}" for i in range(start, start + count)]


def wide_lines(count: int, start: int = 0) -> list[str]:
    """About 1 KB each, plain words so redaction leaves them alone."""
    filler = "lorem ipsum dolor sit amet " * 37
    return [f"wide line {i:05d} {filler}" for i in range(start, start + count)]


async def start_server(nursery: trio.Nursery, registry: Registry, **settings: Any) -> Server:
    server: Server = await nursery.start(serve, make_config(registry, **settings))
    return server


async def settled(nursery: trio.Nursery, server: Server, **query: Any) -> WebSocketConnection:
    """The project's first subscriber, after the poll loop's first ``progress`` event.

    The first read happens right after the first subscriber joins, so waiting
    for it keeps later seq arithmetic deterministic.
    """
    ws = await connect(nursery, server, **query)
    await receive_until(ws, lambda m: m["type"] == "progress")
    return ws


def hub_of(server: Server, project: str = "demo") -> ProjectHub:
    hub = server.manager.get_hub(project)
    assert hub is not None, f"no hub for {project}: nobody subscribed yet"
    return hub


EVENT_TYPES = frozenset(EVENT_KINDS)


async def next_reply(ws: WebSocketConnection) -> Msg:
    """The next connection message, skipping events and snapshot messages.

    The poll loop may publish ``progress`` at any time, and on a fresh hub the
    snapshot's statuses have no ``seq`` yet.
    """
    while True:
        message = await receive(ws)
        if message["type"] not in EVENT_TYPES:
            return message


async def read_to_close(ws: WebSocketConnection) -> tuple[list[Msg], int]:
    """Everything the server sends until it closes, and its close code."""
    seen: list[Msg] = []
    with pytest.raises(ConnectionClosed) as caught:
        while True:
            seen.append(await receive(ws))
    reason = caught.value.reason
    assert reason is not None
    code: int = reason.code
    return seen, code


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll server-side state (under the caller's fail_after) until ``condition`` holds."""
    # Server internals offer no event to wait on; polling is bounded by fail_after.
    while not condition():  # noqa: ASYNC110
        await trio.sleep(0.01)


class Watcher:
    """A subscriber that reads everything in the background, into ``messages``."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.messages: list[Msg] = []
        self._changed = trio.Event()

    async def run(self) -> None:
        try:
            while True:
                self.messages.append(await receive(self.ws))
                self._changed.set()
                self._changed = trio.Event()
        except ConnectionClosed:
            self._changed.set()

    async def wait_for_seq(self, seq: int) -> None:
        while not any(is_event(m) and m["seq"] >= seq for m in self.messages):
            await self._changed.wait()


async def watch(nursery: trio.Nursery, ws: WebSocketConnection) -> Watcher:
    watcher = Watcher(ws)
    nursery.start_soon(watcher.run)
    return watcher


class StalledClient:
    """A websocket client on a bare socket with a tiny receive buffer; reads only when asked.

    While it does not read, the kernel's buffers on both ends fill up and the
    server's ``send`` to it blocks for real.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.messages: deque[Msg] = deque()
        self.close_code: int | None = None
        self.ended = False
        self._parts: list[str] = []
        self._accepted = False

    @classmethod
    async def open(cls, server: Server, target: str, rcvbuf: int = 4096) -> StalledClient:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", server.port))
        client = cls(trio.SocketStream(sock))
        request = Request(host=f"127.0.0.1:{server.port}", target=target)
        await client.stream.send_all(client.conn.send(request))
        while not client._accepted:
            if not await client._pump(256):
                raise AssertionError(f"handshake for {target} ended early")
        return client

    async def next(self) -> Msg | None:
        """The next message, or None once the server closed the connection."""
        while not self.messages:
            if not await self._pump(65536):
                return None
        return self.messages.popleft()

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def send_text(self, text: str) -> None:
        await self.stream.send_all(self.conn.send(TextMessage(data=text)))

    async def read_until(self, predicate: Callable[[Msg], bool]) -> list[Msg]:
        seen: list[Msg] = []
        while True:
            message = await self.next()
            assert message is not None, f"connection ended after {len(seen)} messages"
            seen.append(message)
            if predicate(message):
                return seen

    async def _pump(self, size: int) -> bool:
        """Read once and parse; False when the connection has ended."""
        if self.ended:
            return False
        try:
            data = await self.stream.receive_some(size)
        except trio.BrokenResourceError:
            data = b""
        if not data:
            self.ended = True
            return False
        self.conn.receive_data(data)
        for event in self.conn.events():
            if isinstance(event, AcceptConnection):
                self._accepted = True
            elif isinstance(event, RejectConnection):
                raise AssertionError("server rejected the websocket handshake")
            elif isinstance(event, TextMessage):
                self._parts.append(event.data)
                if event.message_finished:
                    self.messages.append(json.loads("".join(self._parts)))
                    self._parts = []
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
            elif isinstance(event, Ping):
                await self.stream.send_all(self.conn.send(event.response()))
        return True


def after(messages: list[Msg], point: int) -> list[Msg]:
    """The events with seq greater than ``point``."""
    return [m for m in messages if is_event(m) and m["seq"] > point]


# -- fresh sync -----------------------------------------------------------------

RUN_TWO_FINISHED = 177
"""RUN[:177]: eight orchestrator updates; agents 0 and 1 finished, 2 and 3 at work."""
DEV_LINES = ["> todo-app@0.1.0 dev", "  Local:   http://localhost:5173/", "  ready in 312 ms"]


def expected_snapshot(history: list[Msg], backlog: int) -> list[Msg]:
    """PROTOCOL.md 3.1's fresh-sync order, derived from a subscriber that saw everything."""

    def of(kind: str) -> list[Msg]:
        return [m for m in history if m["type"] == kind]

    latest_agent: dict[int, Msg] = {}
    for update in of("agent_update"):
        latest_agent[update["agentIndex"]] = update
    active = [
        latest_agent[index]
        for index in sorted(latest_agent)
        if latest_agent[index]["state"] not in ("success", "error")
    ]
    return [
        of("agent_status")[-1],
        of("dev_server_status")[-1],
        of("progress")[-1],
        *of("orchestrator_update")[-5:],
        *active,
        *of("log")[-backlog:],
        *of("dev_log")[-backlog:],
    ]


async def test_fresh_sync_sends_snapshot_in_protocol_order(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    create_db(db_path(project_dir), rows(passing=3, in_progress=2, needs_human_input=1, pending=4))
    with trio.fail_after(NETWORK_TIMEOUT):
        early = await connect(nursery, server)
        history = await receive_until(early, lambda m: m["type"] == "progress")
        hub = hub_of(server)
        hub.set_status("running")
        hub.feed_lines(RUN[:RUN_TWO_FINISHED])
        hub.set_status("running", stream="dev")
        hub.feed_lines(DEV_LINES, stream="dev")
        history += await receive_until(early, seq_at_least(hub.seq))

        late = await connect(nursery, server, backlog=2)
        hello = await receive(late)
        expected = expected_snapshot(history, backlog=2)
        snapshot = [await receive(late) for _ in expected]

    assert hello == {
        "type": "hello",
        "protocol": 1,
        "project": "demo",
        "epoch": hub.epoch,
        "seq": hub.seq,
        "server": hello["server"],
    }
    assert hello["server"].startswith("trio-ws/")
    assert snapshot == expected
    progress = {k: v for k, v in snapshot[2].items() if k not in ("seq", "timestamp")}
    assert progress == {
        "type": "progress",
        "passing": 3,
        "in_progress": 2,
        "total": 10,
        "percentage": 30.0,
        "needs_human_input": 1,
    }
    assert snapshot[1]["url"] == "http://localhost:5173/"
    # The data really exercises the caps and the finished-agent rule.
    assert len([m for m in history if m["type"] == "orchestrator_update"]) > 5
    assert [m["agentIndex"] for m in snapshot if m["type"] == "agent_update"] == [2, 3]


async def test_backlog_zero_sends_no_log_lines(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        early = await settled(nursery, server)
        hub = hub_of(server)
        hub.feed_lines(log_lines(5))
        hub.feed_lines(DEV_LINES, stream="dev")
        await receive_until(early, seq_at_least(hub.seq))
        late = await connect(nursery, server, backlog=0)
        received = [await receive(late)]  # hello: the server has subscribed it
        hub.feed_lines(["after the snapshot"])
        received += await receive_until(late, seq_at_least(hub.seq))
    types = [m["type"] for m in received]
    assert types == [
        "hello",
        "agent_status",
        "dev_server_status",
        "progress",
        "log",
    ]
    assert received[-1]["line"] == "after the snapshot"


class Producer:
    """A real agent producer on the publish endpoint, numbering its items from 1."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.pseq = 0

    @classmethod
    async def connect(
        cls, nursery: trio.Nursery, server: Server, project: str = "demo"
    ) -> Producer:
        ws = await connect_websocket_url(
            nursery,
            f"ws://127.0.0.1:{server.port}/ws/projects/{project}/publish",
            extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())],
        )
        await ws.send_message(json.dumps({"type": "hello", "producer": "ui", "stream": "agent"}))
        assert (await receive(ws))["type"] == "welcome"
        return cls(ws)

    async def status(self, status: str) -> None:
        self.pseq += 1
        await self.ws.send_message(
            json.dumps({"type": "status", "pseq": self.pseq, "status": status})
        )
        await self._acked()

    async def lines(self, lines: list[str]) -> None:
        first = self.pseq + 1
        self.pseq += len(lines)
        await self.ws.send_message(json.dumps({"type": "lines", "first": first, "lines": lines}))
        await self._acked()

    async def _acked(self) -> None:
        await receive_until(self.ws, lambda m: m["type"] == "ack" and m["pseq"] >= self.pseq)


async def record_like_the_ui(ws: WebSocketConnection, server: Server) -> list[Msg]:
    """What the AutoForge UI appends: the snapshot (a pong marks its end), then live
    events up to the hub's head."""
    await ws.send_message('{"type":"ping"}')
    seen = await receive_until(ws, lambda m: m["type"] == "pong")
    point = next(m["seq"] for m in seen if m["type"] == "hello")
    head = hub_of(server).seq
    if max([point, *event_seqs(seen)]) < head:  # events after the snapshot's point
        seen += await receive_until(ws, seq_at_least(head))
    return seen


async def test_a_client_reconnecting_without_parameters_is_given_nothing_twice(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    """The AutoForge UI connects with no query and appends whatever it receives; its
    reconnect must repeat no log line and no orchestrator update (PROTOCOL.md 3)."""
    with trio.fail_after(NETWORK_TIMEOUT):
        producer = await Producer.connect(nursery, server)
        await producer.status("running")
        await producer.lines(RUN[:60])
        first = await connect(nursery, server)
        received = await record_like_the_ui(first, server)
        await producer.lines(RUN[60:120])
        received += await receive_until(first, seq_at_least(hub_of(server).seq))
        await first.aclose()
        await producer.lines(RUN[120:170])  # while the UI is away
        second = await connect(nursery, server)
        again = await record_like_the_ui(second, server)
        await producer.lines(RUN[170:])
        again += await receive_until(second, seq_at_least(hub_of(server).seq))

    def seqs_of(kind: str) -> list[int]:
        return [m["seq"] for m in received + again if m["type"] == kind]

    for kind in ("log", "orchestrator_update"):
        assert len(seqs_of(kind)) == len(set(seqs_of(kind))), f"a {kind} came twice"
    # Both connections really carried both kinds, the reconnect's snapshot included.
    for messages in (received, again):
        kinds = {m["type"] for m in messages}
        assert {"log", "orchestrator_update", "agent_status"} <= kinds
    snapshot = again[: next(i for i, m in enumerate(again) if m["type"] == "pong")]
    assert [m["type"] for m in snapshot if m["type"] in ("log", "orchestrator_update")] == [
        "orchestrator_update"
    ]


async def test_the_autoforge_ui_files_no_row_twice_across_a_reconnect_and_a_restart(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    """The UI keeps its activity rows across reconnects and appends every agent update
    with a thought: no snapshot may hand it one again (a duplicate React key), while a
    fresh UI still gets a card for every active agent."""
    config = make_config(registry, journal="sqlite")
    ui = AutoForgeUI()

    async def follow_like_the_ui(ws: WebSocketConnection, server: Server) -> None:
        for message in await record_like_the_ui(ws, server):
            ui.apply(message)

    with trio.fail_after(NETWORK_TIMEOUT * 2):
        async with trio.open_nursery() as first_life:
            server: Server = await first_life.start(serve, config)
            producer = await Producer.connect(first_life, server)
            await producer.status("running")
            await producer.lines(RUN[:110])  # two agents are at work from line 100 on
            ws = await connect(first_life, server)
            await follow_like_the_ui(ws, server)
            await producer.lines(RUN[110:150])
            for message in await receive_until(ws, seq_at_least(hub_of(server).seq)):
                ui.apply(message)
            await ws.aclose()
            await follow_like_the_ui(await connect(first_life, server), server)  # reconnect
            first_life.cancel_scope.cancel()
        server = await nursery.start(serve, config)  # a restart: same journal, same epoch
        await follow_like_the_ui(await connect(nursery, server), server)
        fresh = AutoForgeUI()
        for message in await record_like_the_ui(await connect(nursery, server), server):
            fresh.apply(message)
    assert ui.repeated_keys == []
    assert ui.activity, "the live updates were filed as rows"
    assert fresh.cards and fresh.cards.keys() == ui.cards.keys()
    assert fresh.activity == []


async def test_browser_view_subscriptions_are_accepted_without_a_word(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    """AutoForge 0.1.22's UI sends them from its Browsers view."""
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscriber(nursery, server)
        await ws.send_message('{"type":"browser_view_subscribe"}')
        await ws.send_message('{"type":"browser_view_unsubscribe"}')
        await ws.send_message('{"type":"ping"}')
        assert await next_reply(ws) == {"type": "pong"}


async def test_a_pong_is_not_lost_when_the_subscribers_queue_is_full(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    """The 0.1.22 UI pings every 20 s and drops a socket that got no frame for 90 s: a
    client that reads slowly must still get its pong, after what was queued before."""
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start_server(
            nursery, registry, queue_size=STALL_QUEUE, stall_timeout=NETWORK_TIMEOUT * 2
        )
        stalled = await StalledClient.open(server, "/ws/projects/demo")
        await wait_until(lambda: server.manager.subscriber_count == 1)
        hub = hub_of(server)
        await publish_while_stalled(hub, 300)  # far more than the kernel buffers hold
        await wait_until(lambda: hub.stats.fell_behind == 1)
        await stalled.send_text('{"type":"ping"}')
        received = await stalled.read_until(lambda m: m["type"] == "pong")
    assert received[0]["type"] == "hello"
    events = event_seqs(received)
    assert events == list(range(events[0], events[-1] + 1))  # in order, nothing skipped


async def test_live_events_continue_from_the_snapshot_without_gap(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        early = await settled(nursery, server)
        hub = hub_of(server)
        joined = trio.Event()

        async def publish() -> None:
            # Lines keep coming while the second subscriber connects and after it joined.
            count = 0
            while hub.subscriber_count < 2:
                hub.feed_lines(log_lines(1, count))
                count += 1
                # A line per millisecond: a checkpoint alone let tens of thousands
                # pile up unread in the early subscriber's socket, which then stalled.
                await trio.sleep(0.001)
            hub.feed_lines(log_lines(20, count))
            joined.set()

        nursery.start_soon(publish)
        late = await connect(nursery, server, backlog=1000)
        await joined.wait()
        received = await receive_until(late, seq_at_least(hub.seq))
        await receive_until(early, seq_at_least(hub.seq))

    hello = received[0]
    point = hello["seq"]
    snapshot_logs = [m["seq"] for m in received if m["type"] == "log" and m["seq"] <= point]
    live = after(received, point)
    assert event_seqs(live) == list(range(point + 1, hub.seq + 1))
    assert len(live) >= 20
    # The snapshot's logs run up to the snapshot point: the last 1000 (seq 1 is progress).
    assert len(snapshot_logs) == min(point - 1, 1000)
    assert snapshot_logs == list(range(point - len(snapshot_logs) + 1, point + 1))


async def test_mid_run_joiner_gets_active_agents_and_orchestrator_state(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    hub = (await server.manager.open("demo", project_dir)).hub
    hub.set_status("running")
    hub.feed_lines(RUN[:150])  # two coding agents at work, nobody was watching
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await connect(nursery, server, backlog=1)
        await ws.send_message('{"type":"ping"}')  # the pong follows the whole snapshot
        received = await receive_until(ws, lambda m: m["type"] == "pong")

    agents = [m for m in received if m["type"] == "agent_update"]
    assert [
        (m["agentIndex"], m["agentName"], m["featureIds"], m["state"], m["thought"]) for m in agents
    ] == [
        (0, "Spark", [1, 2, 3], "working", "mcp__features__feature_mark_passing"),
        (1, "Fizz", [4, 5], "thinking", "[Tool: Read]"),
    ]
    orchestrator = [m for m in received if m["type"] == "orchestrator_update"]
    latest = orchestrator[-1]
    assert (latest["eventType"], latest["featureId"], latest["codingAgents"]) == (
        "coding_spawn",
        4,
        2,
    )
    assert [m["eventType"] for m in orchestrator] == [
        "init_start",
        "init_complete",
        "coding_spawn",
        "coding_spawn",
    ]
    assert received[1] == {
        "type": "agent_status",
        "status": "running",
        "seq": 1,
        "timestamp": received[1]["timestamp"],
    }


# -- resume -------------------------------------------------------------------


async def test_resume_replays_exactly_the_missed_events_then_live(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        first = await settled(nursery, server)
        hub = hub_of(server)
        epoch = hub.epoch
        hub.feed_lines(log_lines(10))
        seen = await receive_until(first, seq_at_least(hub.seq - 5))
        since = seen[-1]["seq"]
        await first.aclose()
        hub.feed_lines(log_lines(10, 10))
        head = hub.seq

        again = await connect(nursery, server, since=since, epoch=epoch)
        opening = [await receive(again), await receive(again)]
        missed = await receive_until(again, seq_at_least(head))
        hub.feed_lines(["live after resume"])
        live = await receive(again)

    assert opening[0]["type"] == "hello"
    assert opening[0]["seq"] == head
    assert opening[1] == {"type": "resumed", "since": since, "seq": head}
    assert event_seqs(missed) == list(range(since + 1, head + 1))
    assert [m["line"] for m in missed] == log_lines(20)[20 - len(missed) :]
    assert live["seq"] == head + 1
    assert live["line"] == "live after resume"


async def test_resume_after_eviction_gets_gap_evicted_and_snapshot(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start_server(nursery, registry, history=10)
        first = await settled(nursery, server)
        hub = hub_of(server)
        epoch = hub.epoch
        hub.feed_lines(log_lines(3))
        since = (await receive_until(first, seq_at_least(hub.seq)))[-1]["seq"]
        await first.aclose()
        hub.feed_lines(log_lines(30, 3))  # pushes since + 1 out of the 10 held events
        head = hub.seq

        again = await connect(nursery, server, since=since, epoch=epoch, backlog=2)
        opening = [await receive(again) for _ in range(7)]
        hub.feed_lines(["live after resync"])
        live = await receive(again)

    assert hub.oldest_seq is not None and since + 1 < hub.oldest_seq
    assert [m["type"] for m in opening] == [
        "hello",
        "resync",
        "agent_status",
        "dev_server_status",
        "progress",
        "log",
        "log",
    ]
    assert opening[1] == {"type": "resync", "reason": "gap_evicted", "epoch": epoch, "seq": head}
    assert event_seqs(opening[5:]) == [head - 1, head]
    assert live["seq"] == head + 1


@pytest.mark.parametrize(
    ("since", "epoch", "reason"),
    [
        ("{head}", "not-the-epoch", "epoch_changed"),
        ("{beyond}", "{epoch}", "invalid_since"),
        ("-3", "{epoch}", "invalid_since"),
        ("seven", "{epoch}", "invalid_since"),
        ("0_2", "{epoch}", "invalid_since"),  # Python's int() would read 2
        ("%D9%A3", "{epoch}", "invalid_since"),  # ARABIC-INDIC DIGIT THREE
    ],
)
async def test_resume_that_cannot_resume_gets_resync_and_snapshot(
    nursery: trio.Nursery, server: Server, project_dir: Path, since: str, epoch: str, reason: str
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        first = await settled(nursery, server)
        hub = hub_of(server)
        hub.feed_lines(log_lines(3))
        await receive_until(first, seq_at_least(hub.seq))
        head = hub.seq
        values = {"head": head, "beyond": head + 1, "epoch": hub.epoch}
        again = await connect(
            nursery, server, since=since.format(**values), epoch=epoch.format(**values)
        )
        opening = [await receive(again) for _ in range(3)]
        hub.feed_lines(["live after resync"])
        rest = await receive_until(again, seq_at_least(head + 1))

    assert [m["type"] for m in opening] == ["hello", "resync", "agent_status"]
    assert opening[1] == {"type": "resync", "reason": reason, "epoch": hub.epoch, "seq": head}
    assert all(m["seq"] <= head for m in rest[:-1] if is_event(m))
    assert rest[-1]["seq"] == head + 1


# -- a subscriber that stops reading -----------------------------------------

STALL_QUEUE = 16
BURST = 12
"""Below the queue size, so the two reading subscribers never fall behind."""
WIDE_LINES = 2000


async def publish_while_stalled(hub: ProjectHub, total: int) -> None:
    """Publish ``total`` wide lines in bursts, letting every reader drain between bursts."""
    for start in range(0, total, BURST):
        hub.feed_lines(wide_lines(min(BURST, total - start), start))
        await trio.testing.wait_all_tasks_blocked()


async def open_stall_scene(
    nursery: trio.Nursery, server: Server, target: str
) -> tuple[Watcher, Watcher, StalledClient]:
    first = await watch(nursery, await settled(nursery, server))
    second = await watch(nursery, await connect(nursery, server))
    stalled = await StalledClient.open(server, target)
    # The server subscribes after the upgrade: wait so the snapshot point is known.
    await wait_until(lambda: hub_of(server).subscriber_count == 3)
    return first, second, stalled


def assert_every_event(watcher: Watcher, start: int, head: int) -> None:
    """``watcher`` saw each seq from ``start`` to ``head`` exactly once, in order, and no resync."""
    seqs = event_seqs(watcher.messages)
    assert [seq for seq in seqs if seq >= start] == list(range(start, head + 1))
    assert seqs == sorted(set(seqs))
    assert "resync" not in [m["type"] for m in watcher.messages]


async def test_stalled_subscriber_holds_back_no_one_and_is_caught_up_from_history(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start_server(
            nursery, registry, queue_size=STALL_QUEUE, stall_timeout=NETWORK_TIMEOUT * 2
        )
        first, second, stalled = await open_stall_scene(nursery, server, "/ws/projects/demo")
        hub = hub_of(server)
        start = hub.seq + 1

        await publish_while_stalled(hub, WIDE_LINES)

        head = start + WIDE_LINES - 1
        assert hub.seq == head  # the publisher finished while one subscriber reads nothing
        assert hub.stats.fell_behind == 1  # only the stalled one
        for watcher in (first, second):
            await watcher.wait_for_seq(head)
            assert_every_event(watcher, start, head)

        received = await stalled.read_until(seq_at_least(head))
        assert received[0] == {**received[0], "type": "hello", "seq": start - 1}
        assert event_seqs(after(received, start - 1)) == list(range(start, head + 1))
        assert "resync" not in [m["type"] for m in received]
        assert hub.stats.resyncs == 0

        hub.feed_lines(log_lines(3))  # caught up: live delivery again
        live = await stalled.read_until(seq_at_least(head + 3))
        assert event_seqs(live) == [head + 1, head + 2, head + 3]
        await stalled.aclose()


async def test_stalled_subscriber_past_history_gets_resync_then_continuous_events(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start_server(
            nursery,
            registry,
            queue_size=STALL_QUEUE,
            history=200,
            stall_timeout=NETWORK_TIMEOUT * 2,
        )
        first, second, stalled = await open_stall_scene(
            nursery, server, "/ws/projects/demo?backlog=3"
        )
        hub = hub_of(server)
        start = hub.seq + 1

        await publish_while_stalled(hub, WIDE_LINES)

        head = start + WIDE_LINES - 1
        assert hub.seq == head
        assert hub.stats.fell_behind == 1
        for watcher in (first, second):
            await watcher.wait_for_seq(head)
            assert_every_event(watcher, start, head)

        received = await stalled.read_until(lambda m: m["type"] == "resync")
        assert received[-1] == {
            "type": "resync",
            "reason": "gap_evicted",
            "epoch": hub.epoch,
            "seq": head,
        }
        assert received[0] == {**received[0], "type": "hello", "seq": start - 1}
        before = event_seqs(after(received, start - 1))
        assert before == list(range(start, start + len(before)))  # no gap before the resync
        assert start + len(before) - 1 < head - 200  # it really had fallen out of history

        hub.feed_lines(log_lines(3))
        resynced = await stalled.read_until(seq_at_least(head + 3))
        types = [m["type"] for m in resynced]
        assert types == [
            "agent_status",
            "dev_server_status",
            "progress",
            "log",
            "log",
            "log",
            "log",
            "log",
            "log",
        ]
        assert event_seqs(resynced[3:]) == [head - 2, head - 1, head, head + 1, head + 2, head + 3]
        assert hub.stats.resyncs == 1
        await stalled.aclose()


async def test_stalled_subscriber_is_aborted_after_stall_timeout(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start_server(nursery, registry, queue_size=STALL_QUEUE, stall_timeout=0.5)
        reader = await watch(nursery, await settled(nursery, server))
        stalled = await StalledClient.open(server, "/ws/projects/demo")
        hub = hub_of(server)
        await wait_until(lambda: hub.subscriber_count == 2)

        await publish_while_stalled(hub, 300)  # far more than the kernel buffers hold
        await wait_until(lambda: hub.stats.aborted == 1)
        await wait_until(lambda: hub.subscriber_count == 1)

        await reader.wait_for_seq(hub.seq)
        assert_every_event(reader, 2, hub.seq)
        # The stalled peer, reading at last, finds its connection ended by the server.
        received: list[Msg] = []
        while (message := await stalled.next()) is not None:
            received.append(message)
        await stalled.aclose()

        await reader.ws.aclose()
        await wait_until(lambda: server.manager.subscriber_count == 0)
    assert hub.stats.aborted == 1
    assert stalled.close_code is None  # aborted: no close handshake with a dead peer
    assert received[0]["type"] == "hello"
    got = event_seqs(after(received, received[0]["seq"]))
    assert got == list(range(2, 2 + len(got)))
    assert len(got) < hub.seq - 1
    assert [r.name for r in caplog.records if "aborted" in r.getMessage()] == [
        "trio_ws.net.subscribe"
    ]


async def test_a_failing_session_set_up_leaves_no_subscriber_and_no_poll_loop(
    nursery: trio.Nursery,
    server: Server,
    project_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever fails after the subscription was made undoes it (issue 9 item 18)."""

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("session set-up failed")

    monkeypatch.setattr(subscribe.SubscriberSession, "__init__", broken)
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await connect(nursery, server)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        hub = hub_of(server)
        await wait_until(lambda: server.manager.poll.running == 0)
        await wait_until(lambda: any(r.levelno >= logging.ERROR for r in caplog.records))
    assert closed.value.reason is not None and closed.value.reason.code == 1011
    assert hub.subscriber_count == 0
    assert server.manager.subscriber_count == 0
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.name for r in failures] == ["trio_ws.net.server"]  # logged, then nothing else
    caplog.clear()  # the one error this test causes on purpose


# -- inbound frames -------------------------------------------------------------


async def subscriber(nursery: trio.Nursery, server: Server, **query: Any) -> WebSocketConnection:
    ws = await connect(nursery, server, **query)
    assert (await receive(ws))["type"] == "hello"
    return ws


async def test_ping_gets_pong(nursery: trio.Nursery, server: Server, project_dir: Path) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscriber(nursery, server)
        await ws.send_message('{"type":"ping"}')
        assert await next_reply(ws) == {"type": "pong"}


@pytest.mark.parametrize("frame", ["not json {", "[1, 2]", "42", '"ping"', "null"])
async def test_text_that_is_not_a_json_object_warns_and_keeps_the_connection(
    nursery: trio.Nursery, server: Server, project_dir: Path, frame: str
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscriber(nursery, server)
        await ws.send_message(frame)
        warning = await next_reply(ws)
        await ws.send_message('{"type":"ping"}')
        pong = await next_reply(ws)
    assert (warning["type"], warning["source"]) == ("warning", "protocol")
    assert warning["content"]
    assert pong == {"type": "pong"}


async def test_binary_frame_warns_and_keeps_the_connection(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscriber(nursery, server)
        await ws.send_message(b'{"type":"ping"}')
        warning = await next_reply(ws)
        await ws.send_message('{"type":"ping"}')
        pong = await next_reply(ws)
    assert (warning["type"], warning["source"]) == ("warning", "protocol")
    assert "binary" in warning["content"]
    assert pong == {"type": "pong"}


async def test_unknown_objects_are_ignored(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscriber(nursery, server)
        await ws.send_message('{"type":"subscribe","project":"demo"}')
        await ws.send_message('{"no":"type"}')
        await ws.send_message('{"type":"ping"}')
        assert await next_reply(ws) == {"type": "pong"}


def padded_ping(size: int) -> str:
    """A ping object of exactly ``size`` characters."""
    frame = '{"type":"ping","pad":""}'
    return frame[:-2] + "x" * (size - len(frame)) + frame[-2:]


async def test_frame_of_64_kib_is_accepted(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscriber(nursery, server)
        frame = padded_ping(64 * 1024)
        assert len(frame.encode()) == 64 * 1024
        await ws.send_message(frame)
        assert await next_reply(ws) == {"type": "pong"}


async def test_frame_over_64_kib_closes_1009(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscriber(nursery, server)
        await ws.send_message(padded_ping(64 * 1024 + 1))
        _, code = await read_to_close(ws)
    assert code == 1009


async def test_a_hundred_messages_are_allowed(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscriber(nursery, server)
        for _ in range(100):
            await ws.send_message('{"type":"ping"}')
        replies = [await next_reply(ws) for _ in range(100)]
        hub = hub_of(server)
        hub.feed_lines(["still connected"])
        event = await receive_until(ws, lambda m: m.get("line") == "still connected")
    assert replies == [{"type": "pong"}] * 100
    assert event[-1]["seq"] == hub.seq


async def test_flood_of_101_messages_closes_1008(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscriber(nursery, server)
        for _ in range(101):
            await ws.send_message('{"type":"ping"}')
        replies, code = await read_to_close(ws)
    assert code == 1008
    # The close is sent at once; pongs still queued for the send task may be lost.
    replies = [m for m in replies if m["type"] not in EVENT_TYPES]
    assert replies == [{"type": "pong"}] * len(replies)
    assert len(replies) <= 100


@pytest.mark.parametrize(
    ("query", "action", "says"),
    [
        ({}, "stop", "token"),
        ({"token": TOKEN}, "stop", "no producer"),
        ({"token": TOKEN}, "explode", "unknown control action"),
        ({}, "explode", "unknown control action"),
    ],
)
async def test_control_is_refused_with_a_warning(
    nursery: trio.Nursery,
    server: Server,
    project_dir: Path,
    query: dict[str, str],
    action: str,
    says: str,
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscriber(nursery, server, **query)
        await ws.send_message(json.dumps({"type": "control", "action": action}))
        warning = await next_reply(ws)
        await ws.send_message('{"type":"ping"}')
        pong = await next_reply(ws)
    assert (warning["type"], warning["source"]) == ("warning", "control")
    assert says in warning["content"]
    assert TOKEN not in warning["content"]
    assert pong == {"type": "pong"}


# -- projects -------------------------------------------------------------------


async def test_two_projects_never_see_each_others_events(
    nursery: trio.Nursery, server: Server, registry: Registry, project_dir: Path, tmp_path: Path
) -> None:
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    registry.add("other", other_dir)
    with trio.fail_after(NETWORK_TIMEOUT):
        demo_ws = await settled(nursery, server)
        other_ws = await settled(nursery, server, project="other")
        demo, other = hub_of(server), hub_of(server, "other")
        demo.feed_lines(log_lines(5, tag="demo"))
        other.feed_lines(["other only"])
        demo.feed_lines(["demo end"])
        other_seen = await receive_until(other_ws, lambda m: m.get("line") == "other only")
        demo_seen = await receive_until(demo_ws, lambda m: m.get("line") == "demo end")

    assert demo.epoch != other.epoch
    assert [m["line"] for m in other_seen if m["type"] == "log"] == ["other only"]
    assert [m["line"] for m in demo_seen if m["type"] == "log"] == [
        *log_lines(5, tag="demo"),
        "demo end",
    ]
    assert event_seqs(other_seen) == [other.seq]
    assert event_seqs(demo_seen) == list(range(2, demo.seq + 1))


# -- what an idle subscriber costs -------------------------------------------------------------

IDLE_BYTES: Final = 14_500
"""Most Python heap bytes one idle subscriber may hold (the peer, python-websockets,
holds about 15 KiB of RSS per connection; issue 11)."""


def _idle_clients(port: int, count: int) -> list[socket.socket]:
    """``count`` subscribers that read their initial messages, then sit idle (blocking
    sockets in a worker thread: next to nothing on the traced heap)."""
    clients = []
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", port), timeout=NETWORK_TIMEOUT)
        clients.append(client)
        client.sendall(rawws.upgrade_request("/ws/projects/demo"))
        received = b""
        while b'"type":"hello"' not in received:
            chunk = client.recv(65536)
            assert chunk, "closed before its hello"
            received += chunk
    return clients


async def test_an_idle_subscriber_holds_little_memory(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    """Tasks, nursery, queue, websocket and request state of one idle subscriber, counted
    by tracemalloc over many: no send task while idle, no header values, lean objects."""
    count = 200
    with trio.fail_after(NETWORK_TIMEOUT * 2):
        await server.manager.open("demo", project_dir)
        warm = await trio.to_thread.run_sync(_idle_clients, server.port, 5)
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            clients = await trio.to_thread.run_sync(_idle_clients, server.port, count)
            await trio.testing.wait_all_tasks_blocked()
            gc.collect()
            held = (tracemalloc.get_traced_memory()[0] - before) / count
        finally:
            tracemalloc.stop()
        assert hub_of(server).subscriber_count == count + len(warm)
        for client in warm + clients:
            client.close()
    assert held <= IDLE_BYTES, f"{held:.0f} bytes per idle subscriber"


# -- liveness: a vanished dashboard is not held forever ---------------------------------


async def test_a_subscriber_that_answers_no_ping_is_dropped(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start_server(
            nursery, registry, subscriber_idle=0.4, subscriber_pong_timeout=0.4
        )
        # Handshake, then silence: it never sends, never answers a ping (no FIN either).
        silent = await rawws.RawClient.connect(server.port, "/ws/projects/demo")
        assert silent.status == 101
        await wait_until(lambda: server.manager.subscriber_count == 1)
        hub = hub_of(server)
        started = trio.current_time()
        assert await silent.until(rawws.OP_PING) == b"alive?"
        await wait_until(lambda: hub.subscriber_count == 0)
        took = trio.current_time() - started
    assert hub.stats.aborted == 1
    assert took < 3.0


async def test_a_subscriber_that_answers_pings_stays_while_idle(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start_server(
            nursery, registry, subscriber_idle=0.2, subscriber_pong_timeout=0.2
        )
        ws = await settled(nursery, server)  # trio-websocket answers pings by itself
        await trio.sleep(1.5)  # several idle periods, each with a ping
        hub = hub_of(server)
        assert hub.subscriber_count == 1
        hub.feed_lines(["still here"])
        found = await receive_until(ws, lambda m: m.get("line") == "still here")
    assert found[-1]["type"] == "log"
    assert hub.stats.aborted == 0
