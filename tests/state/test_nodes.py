"""Several nodes over one Redis (PROTOCOL.md 7, STATE.md 5): two `serve` instances on
two ports share their projects through a real ``redis-server``.

Each node has its own home and registry, as two machines would. Nodes run in this
process (``serve``) except where a node must die by ``kill -9`` or the CLI itself is
the point; those are real ``trio-ws serve --broker`` subprocesses.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from redis_server import RedisServer
from services import free_port
from serving import NETWORK_TIMEOUT, TOKEN, TRIO_WS, http_json, make_config, serve_subprocess
from test_alerts_server import crash, producer
from test_cli_run import TRANSCRIPT, transcript_lines
from trio_websocket import ConnectionClosed, WebSocketConnection, connect_websocket_url
from webhook_receiver import WebhookReceiver

from trio_ws.core.alerts import AlertSettings
from trio_ws.core.notify import webhook_target
from trio_ws.core.pipeline import AgentPipeline
from trio_ws.data.registry import Registry
from trio_ws.journal.redis import redis_client
from trio_ws.net.server import Server, serve
from trio_ws.state.lease import PollLease, lease_key
from trio_ws.state.project import LIVE_WARNING

Message = dict[str, Any]


# -- fixtures and helpers --------------------------------------------------------------


@pytest.fixture
async def flushed(redis_server: RedisServer) -> RedisServer:
    """The session's Redis, emptied for this test."""
    async with redis_client(redis_server.url) as client:
        await client.flushall()
    return redis_server


@pytest.fixture
def own_redis(redis_server: RedisServer, tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, free to be stopped and restarted."""
    server = RedisServer(redis_server.binary, tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def node_home(tmp_path: Path, name: str, *projects: str) -> Registry:
    """A node's own home and registry, with a directory for each of ``projects``."""
    home = tmp_path / name
    home.mkdir()
    registry = Registry(home / "registry.db")
    registry.ensure()
    for project in projects:
        directory = tmp_path / f"{name}-{project}"
        directory.mkdir()
        registry.add(project, directory)
    return registry


async def start_node(
    nursery: trio.Nursery,
    tmp_path: Path,
    name: str,
    broker: str,
    *projects: str,
    **overrides: Any,
) -> Server:
    registry = node_home(tmp_path, name, *projects)
    config = make_config(registry, journal="redis", broker=broker, **overrides)
    server: Server = await nursery.start(serve, config)
    return server


def url(port: int, path: str) -> str:
    return f"ws://127.0.0.1:{port}{path}"


@dataclass
class Watcher:
    """A subscriber that keeps every message it is sent (the connection's own list)."""

    messages: list[Message] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)
    ws: WebSocketConnection | None = None

    async def watch(self, port: int, project: str = "demo", query: str = "") -> None:
        path = f"/ws/projects/{project}" + (f"?{query}" if query else "")
        async with trio.open_nursery() as nursery:
            self.ws = await connect_websocket_url(nursery, url(port, path))
            try:
                while True:
                    self.messages.append(json.loads(await self.ws.get_message()))
                    self.changed.set()
                    self.changed = trio.Event()
            except ConnectionClosed:
                return
            finally:
                nursery.cancel_scope.cancel()

    async def until(self, predicate: Callable[[Message], bool]) -> Message:
        """The first message matching ``predicate`` (waits under the caller's deadline)."""
        while True:
            for message in self.messages:
                if predicate(message):
                    return message
            await self.changed.wait()

    @property
    def events(self) -> list[Message]:
        """Live events: those after the point each hello, resumed or resync names (a
        snapshot's events are at or before it)."""
        live, point = [], 0
        for message in self.messages:
            if message["type"] in ("hello", "resync"):
                point = message["seq"]
            elif message["type"] == "resumed":
                point = message["since"]
            elif message.get("seq", 0) > point:
                live.append(message)
        return live

    def logs(self) -> list[str]:
        return [message["line"] for message in self.events if message["type"] == "log"]


async def watching(
    nursery: trio.Nursery, port: int, project: str = "demo", query: str = ""
) -> Watcher:
    """A watcher of ``project`` on the node at ``port``, once it has its snapshot."""
    watcher = Watcher()
    nursery.start_soon(watcher.watch, port, project, query)
    await watcher.until(lambda m: m["type"] in ("agent_status", "resumed"))
    return watcher


def is_log(text: str) -> Callable[[Message], bool]:
    return lambda message: message["type"] == "log" and message["line"] == text


@dataclass
class Producer:
    """A raw producer connection: what it was welcomed with and the acks it got."""

    ws: WebSocketConnection
    welcome: Message
    acks: list[int] = field(default_factory=list)
    controls: list[str] = field(default_factory=list)
    """The control actions it was sent."""

    @property
    def acked(self) -> int:
        return max(self.acks, default=self.welcome["acked"])

    async def lines(self, first: int, lines: list[str]) -> None:
        await self.ws.send_message(json.dumps({"type": "lines", "first": first, "lines": lines}))

    async def status(self, pseq: int, status: str) -> None:
        await self.ws.send_message(json.dumps({"type": "status", "pseq": pseq, "status": status}))


async def produce(
    nursery: trio.Nursery, port: int, project: str = "demo", producer: str = "p1",
    stream: str = "agent",
) -> Producer:  # fmt: skip
    ws = await connect_websocket_url(
        nursery,
        url(port, f"/ws/projects/{project}/publish"),
        extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())],
    )
    await ws.send_message(json.dumps({"type": "hello", "producer": producer, "stream": stream}))
    welcome = json.loads(await ws.get_message())
    assert welcome["type"] == "welcome", welcome
    made = Producer(ws, welcome)

    async def read_acks() -> None:
        try:
            while True:
                message = json.loads(await ws.get_message())
                if message["type"] == "ack":
                    made.acks.append(message["pseq"])
                elif message["type"] == "control":
                    made.controls.append(message["action"])
        except ConnectionClosed:
            return

    nursery.start_soon(read_acks)
    return made


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` under the caller's deadline (acks come on a timer)."""
    for _ in itertools.count():
        if condition():
            return
        await trio.sleep(0.01)


def line(number: int) -> str:
    return f"line {number:04d}"


class Proxy:
    """A TCP proxy in front of Redis that can be cut (every connection dropped, new
    ones closed at once) and restored: Redis out of reach while it keeps its data."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cut = False
        self._links: set[trio.CancelScope] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    def down(self) -> None:
        self.cut = True
        for link in self._links:
            link.cancel()

    def up(self) -> None:
        self.cut = False

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if self.cut:
                return
            with trio.CancelScope() as link:
                self._links.add(link)
                upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
                async with upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
                    nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)
            self._links.discard(link)

    @staticmethod
    async def _pump(
        source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while chunk := await source.receive_some(65536):
                await sink.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the other side went: the link is over either way
        scope.cancel()


# -- any node, any client ----------------------------------------------------------------


async def test_a_subscriber_on_one_node_sees_every_event_made_on_another_in_order(
    nursery: trio.Nursery, tmp_path: Path, flushed: RedisServer
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        a = await start_node(nursery, tmp_path, "a", flushed.url, "demo")
        b = await start_node(nursery, tmp_path, "b", flushed.url, "demo")
        on_a, on_b = await watching(nursery, a.port), await watching(nursery, b.port)
        producer = await produce(nursery, a.port)
        for first in range(1, 101, 10):
            await producer.lines(first, [line(n) for n in range(first, first + 10)])
        await on_b.until(is_log(line(100)))
        await on_a.until(is_log(line(100)))
    assert on_b.logs() == [line(n) for n in range(1, 101)]
    start = on_b.messages[0]["seq"]
    assert on_b.events == [m for m in on_a.events if m["seq"] > start]
    assert [m["seq"] for m in on_b.events] == list(range(start + 1, on_b.events[-1]["seq"] + 1))


async def test_a_client_resumes_on_the_other_node_and_gets_nothing_twice(
    nursery: trio.Nursery, tmp_path: Path, flushed: RedisServer
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        a = await start_node(nursery, tmp_path, "a", flushed.url, "demo")
        b = await start_node(nursery, tmp_path, "b", flushed.url, "demo")
        producer = await produce(nursery, a.port)
        first = Watcher()
        async with trio.open_nursery() as watching:
            watching.start_soon(first.watch, a.port)
            await first.until(lambda m: m["type"] == "agent_status")
            await producer.lines(1, [line(n) for n in range(1, 21)])
            await first.until(is_log(line(20)))
            watching.cancel_scope.cancel()
        hello, last = first.messages[0], first.events[-1]["seq"]
        await producer.lines(21, [line(n) for n in range(21, 41)])
        await until(lambda: producer.acked == 40)
        second = Watcher()
        nursery.start_soon(second.watch, b.port, "demo", f"since={last}&epoch={hello['epoch']}")
        await second.until(is_log(line(40)))
    assert second.messages[0]["epoch"] == hello["epoch"]
    assert second.messages[1] == {
        "type": "resumed",
        "since": last,
        "seq": second.messages[0]["seq"],
    }
    assert [m["seq"] for m in second.events] == list(range(last + 1, second.events[-1]["seq"] + 1))
    assert first.logs() + second.logs() == [line(n) for n in range(1, 41)]


async def test_two_producers_on_two_nodes_share_one_seq_sequence(
    nursery: trio.Nursery, tmp_path: Path, flushed: RedisServer
) -> None:
    """The agent producer on A and the dev producer on B write at once: every node
    numbers their events alike, each exactly once, and each node keeps the other's
    tracker state (a later subscriber's snapshot has both streams' statuses)."""
    with trio.fail_after(NETWORK_TIMEOUT):
        a = await start_node(nursery, tmp_path, "a", flushed.url, "demo")
        b = await start_node(nursery, tmp_path, "b", flushed.url, "demo")
        on_a, on_b = await watching(nursery, a.port), await watching(nursery, b.port)
        agent = await produce(nursery, a.port, producer="agent-1")
        dev = await produce(nursery, b.port, producer="dev-1", stream="dev")
        await agent.status(1, "running")
        await dev.status(1, "running")

        async def feed(producer: Producer, prefix: str) -> None:
            for first in range(2, 202, 4):
                await producer.lines(first, [f"{prefix} {n}" for n in range(first, first + 4)])

        async with trio.open_nursery() as feeding:
            feeding.start_soon(feed, agent, "agent")
            feeding.start_soon(feed, dev, "dev")
        await until(lambda: agent.acked == 201 and dev.acked == 201)
        for watcher in (on_a, on_b):
            await watcher.until(is_log("agent 201"))
            await watcher.until(lambda m: m["type"] == "dev_log" and m["line"] == "dev 201")
        late = await watching(nursery, a.port)
        await late.until(lambda m: m["type"] == "dev_server_status")
    start = max(on_a.messages[0]["seq"], on_b.messages[0]["seq"])
    assert [m for m in on_a.events if m["seq"] > start] == [
        m for m in on_b.events if m["seq"] > start
    ]
    seqs = [m["seq"] for m in on_a.events]
    assert seqs == list(range(seqs[0], seqs[-1] + 1))
    assert on_a.logs() == [f"agent {n}" for n in range(2, 202)]
    dev_lines = [m["line"] for m in on_b.events if m["type"] == "dev_log"]
    assert dev_lines == [f"dev {n}" for n in range(2, 202)]
    # Conflicts between the two writers are followed at once, not failures of the
    # journal: no warning, and no ack was held back for long.
    assert not [m for m in on_a.messages + on_b.messages if m["type"] == "warning"]
    snapshot = {m["type"]: m for m in late.messages}
    assert snapshot["agent_status"]["status"] == "running"
    assert snapshot["dev_server_status"]["status"] == "running"


# -- a producer whose node dies ------------------------------------------------------


@asynccontextmanager
async def cli_node(
    tmp_path: Path, name: str, broker: str, *projects: str
) -> AsyncIterator[tuple[trio.Process, int]]:
    """`trio-ws serve --broker` as a subprocess of its own home; yields it and its port."""
    registry = node_home(tmp_path, name, *projects)
    env = {**os.environ, "TRIO_WS_TOKEN": TOKEN}
    home = registry.path.parent
    options = ("--broker", broker, "--journal", "memory")
    async with serve_subprocess(home, *options, env=env) as (process, port, _):
        yield process, port


async def test_a_producer_whose_node_is_killed_continues_on_another_exactly_once(
    nursery: trio.Nursery, tmp_path: Path, flushed: RedisServer
) -> None:
    """kill -9 of the producer's node, some lines unacked: the producer reconnects to
    B, is welcomed with what A committed, resends the rest, and B skips what A had
    already applied. The agents carry on with the same indices and names."""
    lines = transcript_lines(TRANSCRIPT)
    split = 120  # past the first agents (from line 99 on)
    with trio.fail_after(NETWORK_TIMEOUT * 2):
        b = await start_node(nursery, tmp_path, "b", flushed.url, "demo")
        watcher = await watching(nursery, b.port)
        async with (
            cli_node(tmp_path, "a", flushed.url, "demo") as (node_a, port_a),
            trio.open_nursery() as on_a,
        ):
            producer = await produce(on_a, port_a)
            await producer.status(1, "running")
            await producer.lines(2, lines[:split])
            await until(lambda: producer.acked == split + 1)
            await watcher.until(is_log(lines[split - 1]))
            # More lines, and the node dies while they may or may not be committed.
            await producer.lines(split + 2, lines[split : split + 30])
            node_a.send_signal(signal.SIGKILL)
            await node_a.wait()
            on_a.cancel_scope.cancel()
        again = await produce(nursery, b.port)
        # The producer resends from its oldest unacked item: here everything again
        # (its acks may have been lost with the node), the hardest case.
        await again.status(1, "running")
        await again.lines(2, lines)
        await until(lambda: again.acked == len(lines) + 1)
        await watcher.until(is_log(lines[-1]))
    assert split + 1 <= again.welcome["acked"] <= split + 31
    assert watcher.logs() == lines
    seqs = [m["seq"] for m in watcher.events]
    assert seqs == list(range(seqs[0], seqs[-1] + 1))
    pipeline = AgentPipeline()
    reference = pipeline.set_status("running") + pipeline.feed_lines(lines)
    names = [(m["agentIndex"], m["agentName"], m["state"]) for m in watcher.events
             if m["type"] == "agent_update"]  # fmt: skip
    assert names == [
        (m["agentIndex"], m["agentName"], m["state"])
        for m in reference
        if m["type"] == "agent_update"
    ]


# -- project names across nodes ------------------------------------------------------


async def test_a_producer_feeds_a_project_only_its_own_machine_has_a_directory_for(
    nursery: trio.Nursery, tmp_path: Path, flushed: RedisServer
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        a = await start_node(nursery, tmp_path, "a", flushed.url)
        b = await start_node(nursery, tmp_path, "b", flushed.url)
        nobody = Watcher()
        await nobody.watch(b.port, "elsewhere")
        producer = await produce(nursery, a.port, project="elsewhere")
        await producer.lines(1, ["hello from elsewhere"])
        await until(lambda: producer.acked == 1)
        watcher = Watcher()
        nursery.start_soon(watcher.watch, b.port, "elsewhere", "backlog=10")
        await watcher.until(is_log("hello from elsewhere"))
        stranger = Watcher()
        await stranger.watch(b.port, "nobody")
    assert nobody.messages == [{"type": "error", "content": "Project not found in registry"}]
    assert nobody.ws is not None and nobody.ws.closed is not None
    assert nobody.ws.closed.code == 4004
    assert stranger.ws is not None and stranger.ws.closed is not None
    assert stranger.ws.closed.code == 4004


async def test_a_node_without_the_directory_answers_the_rest_api_as_its_socket_does(
    nursery: trio.Nursery, tmp_path: Path, flushed: RedisServer
) -> None:
    """The progress chart, the features board and the agent API find a project the way
    the websocket does: node B, with no directory for it, does not 404 (issue 19)."""
    rows = [{"id": 1, "name": "Add a todo", "passes": True, "in_progress": False}]
    with trio.fail_after(NETWORK_TIMEOUT):
        a = await start_node(nursery, tmp_path, "a", flushed.url)
        b = await start_node(nursery, tmp_path, "b", flushed.url)
        producer = await produce(nursery, a.port, project="elsewhere")
        await producer.ws.send_message(json.dumps({"type": "features", "features": rows}))
        await producer.lines(1, ["a line to commit with"])
        await until(lambda: producer.acked == 1)
        base = "/api/projects/elsewhere"
        features = await http_json(b.port, "GET", f"{base}/features")
        history = await http_json(b.port, "GET", f"{base}/progress-history")
        status = await http_json(b.port, "GET", f"{base}/agent/status")
        bearer = {"authorization": f"Bearer {TOKEN}"}
        pause = await http_json(b.port, "POST", f"{base}/agent/graceful-pause", bearer)
        unknown = await http_json(b.port, "GET", "/api/projects/nobody/features")
    assert features == (200, {"project": "elsewhere", "features": rows})
    assert history[0] == 200 and status[0] == 200
    assert pause[0] == 200 and pause[1]["success"] is False  # no run yet: nothing to pause
    assert unknown == (404, {"detail": "Project 'nobody' not found in registry"})


async def test_a_node_following_another_records_the_same_runs(
    nursery: trio.Nursery, tmp_path: Path, flushed: RedisServer
) -> None:
    """Node B applies node A's commits (its watcher keeps it following) and records
    the runs from them: the same ids and figures on both nodes."""
    with trio.fail_after(NETWORK_TIMEOUT):
        a = await start_node(nursery, tmp_path, "a", flushed.url, "demo")
        b = await start_node(nursery, tmp_path, "b", flushed.url, "demo")
        on_b = await watching(nursery, b.port)
        producer = await produce(nursery, a.port)
        await producer.status(1, "running")
        await producer.lines(2, ["work"])
        await producer.status(3, "stopped")
        await producer.status(4, "running")
        await on_b.until(lambda m: m.get("status") == "running" and m["seq"] > 3)
        runs_a = await http_json(a.port, "GET", "/api/projects/demo/runs")
        runs_b = await http_json(b.port, "GET", "/api/projects/demo/runs")
    assert runs_a[0] == runs_b[0] == 200
    assert [run["ended"] for run in runs_b[1]["runs"]] == [None, "stopped"]
    assert runs_b[1]["runs"] == runs_a[1]["runs"]


async def test_the_project_list_on_one_node_shows_the_status_a_producer_on_another_set(
    nursery: trio.Nursery, tmp_path: Path, flushed: RedisServer
) -> None:
    """``/api/projects`` on node B says ``running`` for a run whose producer is on node
    A: the committed status, not B's own tracker (which has seen no producer)."""
    with trio.fail_after(NETWORK_TIMEOUT):
        a = await start_node(nursery, tmp_path, "a", flushed.url, "demo")
        b = await start_node(nursery, tmp_path, "b", flushed.url, "demo")
        watcher = await watching(nursery, b.port)
        producer = await produce(nursery, a.port)
        await producer.status(1, "running")
        await watcher.until(lambda m: m.get("status") == "running")
        status, listing = await http_json(b.port, "GET", "/api/projects")
    assert status == 200
    assert [(p["name"], p["agent_status"]) for p in listing] == [("demo", "running")]


async def test_control_on_one_node_reaches_the_producer_on_another(
    nursery: trio.Nursery, tmp_path: Path, flushed: RedisServer
) -> None:
    """Pause on node B's dashboard or API acts on the run connected to node A (issue 24:
    behind a load balancer it used to work or fail by chance)."""
    with trio.fail_after(NETWORK_TIMEOUT):
        a = await start_node(nursery, tmp_path, "a", flushed.url, "demo")
        b = await start_node(nursery, tmp_path, "b", flushed.url, "demo")
        watcher = await watching(nursery, b.port)
        producer = await produce(nursery, a.port)
        await producer.status(1, "running")
        await watcher.until(lambda m: m.get("status") == "running")
        bearer = {"authorization": f"Bearer {TOKEN}"}
        path = "/api/projects/demo/agent/graceful-pause"
        status, body = await http_json(b.port, "POST", path, bearer)
        assert body["success"] is True, body
        await until(lambda: producer.controls == ["graceful_pause"])
        control = await connect_websocket_url(
            nursery,
            url(b.port, f"/ws/projects/demo?token={TOKEN}"),
            extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())],
        )
        await control.send_message('{"type":"control","action":"stop"}')
        await until(lambda: producer.controls == ["graceful_pause", "stop"])
        await producer.ws.aclose()  # the run's node loses it: nobody takes control now
        hub = b.manager.get_hub("demo")
        assert hub is not None
        status_after, gone = await http_json(b.port, "POST", path, bearer)
    assert status == 200 and body["success"] is True, body
    assert status_after == 200 and gone["success"] is False
    assert gone["message"] == "no producer can act on this project"


# -- Redis loses its data, goes away, comes back --------------------------------------


async def test_a_flushed_redis_starts_a_new_epoch_and_resyncs_every_node(
    nursery: trio.Nursery, tmp_path: Path, flushed: RedisServer
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        a = await start_node(nursery, tmp_path, "a", flushed.url, "demo")
        b = await start_node(nursery, tmp_path, "b", flushed.url, "demo")
        on_a, on_b = await watching(nursery, a.port), await watching(nursery, b.port)
        producer = await produce(nursery, a.port)
        await producer.lines(1, [line(1)])
        await on_b.until(is_log(line(1)))
        await on_a.until(is_log(line(1)))
        async with redis_client(flushed.url) as client:
            await client.flushall()
        await producer.lines(2, [line(2)])
        for watcher in (on_a, on_b):
            await watcher.until(is_log(line(2)))
    before = on_a.messages[0]["epoch"]
    for watcher in (on_a, on_b):
        resync = next(m for m in watcher.messages if m["type"] == "resync")
        assert resync["reason"] == "epoch_changed"
        assert resync["epoch"] != before
        after = watcher.messages[watcher.messages.index(resync) :]
        logs = [m for m in after if m["type"] == "log"]
        assert [m["line"] for m in logs] == [line(2)]
        assert logs[0]["seq"] > resync["seq"]
    assert on_a.messages.index(next(m for m in on_a.messages if m["type"] == "resync")) > 0


async def test_a_redis_restarted_without_its_data_starts_a_new_epoch(
    nursery: trio.Nursery, tmp_path: Path, own_redis: RedisServer
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        a = await start_node(nursery, tmp_path, "a", own_redis.url, "demo")
        b = await start_node(nursery, tmp_path, "b", own_redis.url, "demo")
        watcher = await watching(nursery, b.port)
        producer = await produce(nursery, a.port)
        await producer.lines(1, [line(1)])
        await watcher.until(is_log(line(1)))
        own_redis.stop()
        await watcher.until(lambda m: m["type"] == "warning" and m["source"] == "journal")
        own_redis.start()
        resync = await watcher.until(lambda m: m["type"] == "resync")
        await producer.lines(2, [line(2)])
        await watcher.until(is_log(line(2)))
    assert resync["reason"] == "epoch_changed"
    assert resync["epoch"] != watcher.messages[0]["epoch"]
    assert watcher.logs() == [line(1), line(2)]


async def test_a_redis_restarted_from_an_older_snapshot_starts_a_new_epoch(
    nursery: trio.Nursery, tmp_path: Path, own_redis: RedisServer
) -> None:
    """Its data came back, but maybe not its newest appends: seqs must not be reused."""
    with trio.fail_after(NETWORK_TIMEOUT):
        b = await start_node(nursery, tmp_path, "b", own_redis.url, "demo")
        watcher = await watching(nursery, b.port)
        producer = await produce(nursery, b.port)
        await producer.lines(1, [line(1)])
        await watcher.until(is_log(line(1)))
        async with redis_client(own_redis.url) as client:
            await client.save()
        await producer.lines(2, [line(2)])  # not in the snapshot
        await watcher.until(is_log(line(2)))
        own_redis.stop()
        own_redis.start()
        resync = await watcher.until(lambda m: m["type"] == "resync")
    assert resync["reason"] == "epoch_changed"
    assert resync["epoch"] != watcher.messages[0]["epoch"]


async def test_redis_out_of_reach_holds_acks_warns_and_loses_nothing(
    nursery: trio.Nursery, tmp_path: Path, flushed: RedisServer
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT * 2):
        proxy = Proxy(flushed.port)
        await nursery.start(proxy.run)
        a = await start_node(nursery, tmp_path, "a", proxy.url, "demo")
        b = await start_node(nursery, tmp_path, "b", proxy.url, "demo")
        watcher = await watching(nursery, b.port)
        producer = await produce(nursery, a.port)
        await producer.lines(1, [line(n) for n in range(1, 6)])
        await until(lambda: producer.acked == 5)
        await watcher.until(is_log(line(5)))
        proxy.down()
        await watcher.until(lambda m: m["type"] == "warning" and m["source"] == "journal")
        await producer.lines(6, [line(n) for n in range(6, 11)])
        hub = a.manager.get_hub("demo")
        assert hub is not None
        await until(lambda: hub.has_warning("journal"))  # A tried to write and could not
        assert producer.acked == 5
        proxy.up()
        await until(lambda: producer.acked == 10)
        await watcher.until(is_log(line(10)))
    assert watcher.logs() == [line(n) for n in range(1, 11)]
    assert not [m for m in watcher.messages if m["type"] == "resync"]
    seqs = [m["seq"] for m in watcher.events]
    assert seqs == list(range(seqs[0], seqs[-1] + 1))


async def test_a_broker_out_of_reach_warns_a_follower_once_and_clears_when_back(
    nursery: trio.Nursery, tmp_path: Path, flushed: RedisServer
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT * 2):
        proxy = Proxy(flushed.port)
        await nursery.start(proxy.run)
        b = await start_node(nursery, tmp_path, "b", proxy.url, "demo")
        watcher = await watching(nursery, b.port)
        hub = b.manager.get_hub("demo")
        assert hub is not None
        proxy.down()
        await until(lambda: hub.has_warning(LIVE_WARNING))
        await trio.sleep(1.0)  # several retries (0.05 s, doubling) fail meanwhile
        proxy.up()
        await until(lambda: not hub.has_warning(LIVE_WARNING))
    lost = [m for m in watcher.messages if "lost the broker" in m.get("content", "")]
    assert len(lost) == 1


async def test_a_follower_that_crashes_restarts_and_its_watchers_miss_nothing(
    nursery: trio.Nursery,
    tmp_path: Path,
    flushed: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        a = await start_node(nursery, tmp_path, "a", flushed.url, "demo")
        b = await start_node(nursery, tmp_path, "b", flushed.url, "demo")
        on_b = await watching(nursery, b.port)
        hub = b.manager.get_hub("demo")
        assert hub is not None
        apply_live = hub.apply_live
        crashed: list[int] = []

        async def crash_once(epoch: str, first: int, texts: list[str]) -> None:
            if not crashed:
                crashed.append(first)
                raise RuntimeError("a bug in the follower")
            await apply_live(epoch, first, texts)

        monkeypatch.setattr(hub, "apply_live", crash_once)
        producer = await produce(nursery, a.port)
        await producer.lines(1, [line(n) for n in range(1, 11)])
        await on_b.until(is_log(line(10)))
    assert crashed
    assert "broker follower failed; restarting" in caplog.text
    assert on_b.logs() == [line(n) for n in range(1, 11)]
    seqs = [m["seq"] for m in on_b.events]
    assert seqs == list(range(seqs[0], seqs[-1] + 1))


# -- the command line -----------------------------------------------------------------


def test_serve_with_an_unreachable_broker_says_so_in_one_line_and_exits_1(
    tmp_path: Path,
) -> None:
    port = free_port()
    result = subprocess.run(
        [TRIO_WS, "serve", "--home", str(tmp_path), "--port", "0",
         "--broker", f"redis://127.0.0.1:{port}/0"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"trio-ws: error: cannot reach the broker at 127.0.0.1:{port}: "
        f"Unable to establish a connection to 127.0.0.1:{port}"
    ]


async def test_a_node_writing_one_stream_keeps_the_other_streams_trackers(
    nursery: trio.Nursery, tmp_path: Path, flushed: RedisServer
) -> None:
    """B commits dev lines while the agent producer is on A: B's (empty) agent trackers
    must not replace A's, so when the agent producer moves to B its agents go on."""
    lines = transcript_lines(TRANSCRIPT)
    split = 120
    with trio.fail_after(NETWORK_TIMEOUT):
        a = await start_node(nursery, tmp_path, "a", flushed.url, "demo")
        b = await start_node(nursery, tmp_path, "b", flushed.url, "demo")
        watcher = await watching(nursery, b.port)
        async with trio.open_nursery() as on_a:
            agent = await produce(on_a, a.port)
            await agent.status(1, "running")
            await agent.lines(2, lines[:split])
            await until(lambda: agent.acked == split + 1)
            await watcher.until(is_log(lines[split - 1]))
            dev = await produce(nursery, b.port, producer="dev-1", stream="dev")
            await dev.status(1, "running")
            await dev.lines(2, ["vite ready"])
            await until(lambda: dev.acked == 2)
            on_a.cancel_scope.cancel()
        moved = await produce(nursery, b.port)
        await moved.lines(split + 2, lines[split:])
        await until(lambda: moved.acked == len(lines) + 1)
        await watcher.until(is_log(lines[-1]))
    pipeline = AgentPipeline()
    reference = pipeline.set_status("running") + pipeline.feed_lines(lines)
    assert [
        (m["agentIndex"], m["agentName"], m["state"])
        for m in watcher.events
        if m["type"] == "agent_update"
    ] == [
        (m["agentIndex"], m["agentName"], m["state"])
        for m in reference
        if m["type"] == "agent_update"
    ]


async def test_the_readme_recipe_publish_on_one_node_watch_on_the_other(
    tmp_path: Path, flushed: RedisServer
) -> None:
    """README 'Several nodes' as written: two `serve --broker` nodes with their own
    homes and one token, `publish` into node A, `watch --json` on node B."""
    env = {**os.environ, "TRIO_WS_TOKEN": TOKEN}
    with trio.fail_after(NETWORK_TIMEOUT * 2):
        async with (
            cli_node(tmp_path, "a", flushed.url, "demo") as (_, port_a),
            cli_node(tmp_path, "b", flushed.url) as (_, port_b),
        ):
            home_a = str(tmp_path / "a")
            published = await trio.run_process(
                [TRIO_WS, "publish", "demo", "--home", home_a,
                 "--server", f"http://127.0.0.1:{port_a}"],
                stdin=b"built on node A\n", env=env, capture_stderr=True, check=False,
            )  # fmt: skip
            assert published.returncode == 0, published.stderr
            watch = await trio.lowlevel.open_process(
                [TRIO_WS, "watch", "demo", "--json", "--home", str(tmp_path / "b"),
                 "--server", f"http://127.0.0.1:{port_b}/"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
            )  # fmt: skip
            try:
                assert watch.stdout is not None
                seen = b""
                while b"built on node A" not in seen:
                    chunk = await watch.stdout.receive_some(65536)
                    assert chunk, f"watch exited: {seen.decode()[-500:]}"
                    seen += chunk
            finally:
                watch.kill()
                await watch.wait()


async def test_a_producer_that_moved_to_another_node_is_not_marked_crashed_by_the_first(
    nursery: trio.Nursery, tmp_path: Path, flushed: RedisServer
) -> None:
    """A still runs when its producer goes on at B: A's grace period ends seeing the
    stream's events come from B, so it writes no `producer lost` and no `crashed`."""
    with trio.fail_after(NETWORK_TIMEOUT):
        registry_a = node_home(tmp_path, "a", "demo")
        a: Server = await nursery.start(
            serve, make_config(registry_a, journal="redis", broker=flushed.url, producer_grace=0.3)
        )
        b = await start_node(nursery, tmp_path, "b", flushed.url, "demo")
        watcher = await watching(nursery, b.port)
        async with trio.open_nursery() as on_a:
            producer = await produce(on_a, a.port)
            await producer.status(1, "running")
            await until(lambda: producer.acked == 1)
            await producer.ws.aclose()
            on_a.cancel_scope.cancel()
        hub_a = a.manager.get_hub("demo")
        assert hub_a is not None
        await until(lambda: hub_a.has_warning("producer:agent"))  # A's grace period runs
        moved = await produce(nursery, b.port)
        pseq = 2
        deadline = trio.current_time() + 1.0  # well past A's grace period
        while trio.current_time() < deadline:
            await moved.lines(pseq, [line(pseq)])
            pseq += 1
            await trio.sleep(0.05)
        await until(lambda: moved.acked == pseq - 1)
        await watcher.until(is_log(line(pseq - 1)))
    statuses = [m["status"] for m in watcher.events if m["type"] == "agent_status"]
    assert statuses == ["running"]
    assert "[trio-ws] producer lost" not in watcher.logs()


@pytest.mark.parametrize(
    ("broker", "words"),
    [
        ("http://127.0.0.1:6379/0", "is not a Redis URL (redis://HOST:PORT/DB)"),
        ("redis://127.0.0.1:6379/abc", "the database ('abc') must be a number"),
    ],
)
def test_serve_refuses_a_broker_that_is_not_a_redis_url(
    tmp_path: Path, broker: str, words: str
) -> None:
    result = subprocess.run(
        [TRIO_WS, "serve", "--home", str(tmp_path), "--port", "0", "--broker", broker],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert words in result.stderr


async def test_a_node_opening_the_project_later_restores_a_state_one_stream_wrote(
    nursery: trio.Nursery, tmp_path: Path, flushed: RedisServer
) -> None:
    """Only the dev stream ran (on A), so Redis holds no agent trackers: a node that
    opens the project afterwards still restores the snapshot and the dev trackers."""
    with trio.fail_after(NETWORK_TIMEOUT):
        a = await start_node(nursery, tmp_path, "a", flushed.url, "demo")
        dev = await produce(nursery, a.port, producer="dev-1", stream="dev")
        await dev.status(1, "running")
        await dev.lines(2, ["  Local:   http://localhost:5173/"])
        await until(lambda: dev.acked == 2)
        b = await start_node(nursery, tmp_path, "b", flushed.url, "demo")
        watcher = await watching(nursery, b.port)
        status = await watcher.until(lambda m: m["type"] == "dev_server_status")
        hub_b = b.manager.get_hub("demo")
    assert (status["status"], status["url"]) == ("running", "http://localhost:5173/"), (
        watcher.messages
    )
    assert hub_b is not None
    assert (hub_b.dev.status, hub_b.dev.url) == ("running", "http://localhost:5173/")


async def test_two_nodes_with_watchers_poll_a_project_from_one_node_only(
    nursery: trio.Nursery, tmp_path: Path, flushed: RedisServer
) -> None:
    """The poll lease through the broker: both nodes have the directory and watchers, one
    reads; when that node stops, the other takes over."""
    with trio.fail_after(NETWORK_TIMEOUT):
        a = await start_node(nursery, tmp_path, "a", flushed.url, "demo")
        b = await start_node(nursery, tmp_path, "b", flushed.url, "demo")
        await watching(nursery, a.port)
        await watching(nursery, b.port)
        await trio.sleep(20 * a.config.poll_interval)
        reads = [node.manager.poll.reads for node in (a, b)]
        assert sorted(reads)[0] <= 1 and sorted(reads)[1] >= 5, reads  # 1: a first-subscriber read
        polling, other = (a, b) if reads[0] > reads[1] else (b, a)
        before = other.manager.poll.reads
        await polling.shutdown(1001)
        for _ in range(100):  # the lease expires within 3 intervals; bounded by fail_after
            if other.manager.poll.reads >= before + 3:
                break
            await trio.sleep(polling.config.poll_interval)
        assert other.manager.poll.reads >= before + 3


async def test_watchers_are_served_at_once_while_another_node_holds_the_poll_lease(
    nursery: trio.Nursery, tmp_path: Path, flushed: RedisServer
) -> None:
    """No progress known here and a poll loop running: a new watcher's handshake does not
    wait for the loop (it once waited for the loop's lock: 1,000 subscribers timed out)."""
    async with redis_client(flushed.url) as client:
        with trio.fail_after(NETWORK_TIMEOUT):
            assert await PollLease(client, ttl=60).hold("demo")  # a node elsewhere polls
            a = await start_node(nursery, tmp_path, "a", flushed.url, "demo")
            await watching(nursery, a.port)
            with trio.fail_after(2):
                for _ in range(3):
                    await watching(nursery, a.port)
            assert a.manager.poll.reads == 0


async def test_a_flush_of_an_idle_project_is_noticed_within_two_seconds(
    nursery: trio.Nursery, tmp_path: Path, flushed: RedisServer
) -> None:
    """No append follows the flush: the node must see the lost epoch by itself, resync
    its subscribers and resync (not resume) a client that comes back with the old one."""
    with trio.fail_after(NETWORK_TIMEOUT):
        node = await start_node(nursery, tmp_path, "a", flushed.url, "demo")
        watcher = await watching(nursery, node.port)
        producer = await produce(nursery, node.port)
        await producer.lines(1, [line(1)])
        await watcher.until(is_log(line(1)))
        old = watcher.messages[0]["epoch"]
        since = max(m["seq"] for m in watcher.messages if "seq" in m)
        async with redis_client(flushed.url) as client:
            await client.flushall()
        with trio.fail_after(2):
            resync = await watcher.until(lambda m: m["type"] == "resync")
        back = await watching(nursery, node.port, query=f"since={since}&epoch={old}")
    assert (resync["reason"], resync["epoch"] != old) == ("epoch_changed", True)
    assert [m["type"] for m in back.messages[:2]] == ["hello", "resync"]
    assert back.messages[1]["reason"] == "epoch_changed"
    assert back.messages[0]["epoch"] == resync["epoch"]


async def test_two_nodes_deliver_each_alert_once_and_the_other_takes_over(
    nursery: trio.Nursery, tmp_path: Path, flushed: RedisServer
) -> None:
    """Both nodes have the project open and the same webhook; only the node holding the
    notify lease delivers, so each alert goes out once, in order; when that node stops,
    the other continues from the cursor stored in Redis."""
    receiver = WebhookReceiver()
    with trio.fail_after(NETWORK_TIMEOUT):
        await nursery.start(receiver.serve)
        options: dict[str, Any] = {
            "alerts": AlertSettings(),
            "notify": (webhook_target(receiver.url()),),
            "notify_retry": (0.05, 0.2),
        }
        a = await start_node(nursery, tmp_path, "a", flushed.url, "demo", **options)
        b = await start_node(nursery, tmp_path, "b", flushed.url, "demo", **options)
        await watching(nursery, a.port)
        await watching(nursery, b.port)
        ws = await producer(nursery, a)
        await crash(ws)
        await ws.send_message(json.dumps({"type": "status", "pseq": 4, "status": "running"}))
        await receiver.wait_for(2)
        await trio.sleep(0.5)  # a second node delivering too would have by now
        assert len(receiver.received) == 2
        async with redis_client(flushed.url) as client:
            holder = await client.get(lease_key("demo", "notify"))
        delivering, other = (a, b) if holder == node_id(a) else (b, a)
        assert holder == node_id(delivering)
        await delivering.shutdown(1001)
        again = await producer(nursery, other)  # the producer moves, if it was there
        await crash(again, first=5)
        await receiver.wait_for(3)
        await trio.sleep(0.5)
    alerts = [json.loads(request.body) for request in receiver.received]
    assert [(alert["kind"], alert["state"]) for alert in alerts] == [
        ("run_crashed", "raised"),
        ("run_crashed", "resolved"),
        ("run_crashed", "raised"),
    ]
    assert [alert["seq"] for alert in alerts] == sorted({alert["seq"] for alert in alerts})


def node_id(server: Server) -> str:
    lease = server.manager.services.lease
    assert lease is not None
    return lease.node_id
