"""`watch_session`: the watch client's websocket against a real server on 127.0.0.1
port 0 (snapshot, follow, resume, resync, refusals, dead peers).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import trio
from plain import Msg
from services import free_port
from serving import NETWORK_TIMEOUT, make_config
from test_run_view import AGENT_LINES
from watching import FAST, populate, target_of

from trio_ws.clients.run_view import RunView
from trio_ws.clients.watch_session import (
    WatchError,
    WatchRefused,
    WatchTarget,
    fetch_snapshot,
    follow,
)
from trio_ws.data.registry import Registry
from trio_ws.net.server import Server, serve
from trio_ws.state.hub import ProjectHub

# -- the client against a real server --------------------------------------------------


def same_state(left: RunView, right: RunView) -> None:
    """Two views agree on everything the run's history decides."""
    assert (left.epoch, left.seq) == (right.epoch, right.seq)
    assert (left.agent_status, left.dev_status, left.dev_url) == (
        right.agent_status,
        right.dev_status,
        right.dev_url,
    )
    assert (left.progress, left.orchestrator) == (right.progress, right.orchestrator)
    assert left.agents == right.agents
    assert list(left.logs) == list(right.logs)
    assert list(left.dev_logs) == list(right.dev_logs)


async def settle(hub: ProjectHub, seen: Collector) -> None:
    """Wait until the client holds a complete snapshot: a live event has reached it."""
    await seen.until(lambda m: m.get("line") == AGENT_LINES[-1])  # the snapshot's last line
    hub.feed_lines(["after the snapshot"])
    await seen.until(lambda m: m.get("line") == "after the snapshot")


class Collector:
    """Messages a client passed on, readable by the test as they arrive."""

    def __init__(self) -> None:
        self.seen: list[Msg] = []
        self._send, self._receive = trio.open_memory_channel[Msg](10_000)

    def __call__(self, message: Msg) -> None:
        self.seen.append(message)
        self._send.send_nowait(message)

    async def until(self, predicate: Callable[[Msg], bool]) -> Msg:
        async for message in self._receive:
            if predicate(message):
                return message
        raise AssertionError("channel closed")


async def test_fetch_snapshot_builds_the_servers_state(server: Server, project_dir: Path) -> None:
    hub = await populate(server, project_dir)
    with trio.fail_after(NETWORK_TIMEOUT):
        view = await fetch_snapshot(target_of(server))
    assert (view.epoch, view.seq, view.agent_status) == (hub.epoch, hub.seq, "running")
    assert [card.name for card in view.agents.values()] == ["Spark", "Fizz"]
    assert view.progress is not None and (view.progress.passing, view.progress.total) == (3, 10)
    assert [entry.line for entry in view.logs] == AGENT_LINES
    assert view.connection == "snapshot"


async def test_fetch_snapshot_of_an_unknown_project_is_refused(
    server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT), pytest.raises(WatchRefused) as refused:
        await fetch_snapshot(target_of(server, "nope"))
    assert refused.value.code == 4004
    assert "Project not found in registry" in str(refused.value)


async def test_fetch_snapshot_of_an_unreachable_server_fails_clearly() -> None:
    port = free_port()
    target = WatchTarget.from_server(f"http://127.0.0.1:{port}", "demo")
    with trio.fail_after(NETWORK_TIMEOUT), pytest.raises(WatchError) as failed:
        await fetch_snapshot(target)
    assert str(failed.value).startswith(f"cannot connect to ws://127.0.0.1:{port}/ws/projects/demo")


async def test_follow_resumes_after_the_server_drops_it(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    hub = await populate(server, project_dir)
    view = RunView()
    seen = Collector()
    with trio.fail_after(NETWORK_TIMEOUT):
        nursery.start_soon(lambda: follow(target_of(server), view, seen, backoff=FAST))
        await settle(hub, seen)
        await server.manager.close_all(1012, "restarting")
        hub.feed_lines(["Feature #3 completed", "[Feature #5] [Tool: Bash] npm test"])
        hub.feed_lines(["VITE ready at http://localhost:5173"], stream="dev")
        resumed = await seen.until(lambda m: m["type"] == "resumed")
        await seen.until(lambda m: m.get("seq") == hub.seq)
        fresh = await fetch_snapshot(target_of(server))
    assert [m["type"] for m in seen.seen].count("hello") == 2
    assert (view.resumes, view.resyncs, view.duplicates) == (1, 0, 0)
    assert view.connection == "live"
    after = seen.seen[seen.seen.index(resumed) + 1 :]
    assert [m["seq"] for m in after] == list(range(resumed["since"] + 1, hub.seq + 1))
    same_state(view, fresh)
    assert [card.name for card in view.agents.values()] == ["Fizz"]
    assert view.dev_url == "http://localhost:5173"


async def test_follow_resyncs_when_a_new_server_has_a_new_epoch(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        first: Server = await nursery.start(serve, make_config(registry))
        old = await populate(first, project_dir)
        view = RunView()
        seen = Collector()
        target = target_of(first)
        nursery.start_soon(lambda: follow(target, view, seen, backoff=FAST))
        await settle(old, seen)
        await first.shutdown(1001)
        second: Server = await nursery.start(serve, make_config(registry, port=first.port))
        hub = (await second.manager.open("demo", project_dir)).hub
        hub.feed_lines(["Started coding agent for feature #9"])
        resync = await seen.until(lambda m: m["type"] == "resync")
        await seen.until(lambda m: m["type"] == "agent_update")
        fresh = await fetch_snapshot(target)
        second._cancel.cancel()
    assert resync["reason"] == "epoch_changed"
    assert (view.epoch, view.resyncs) == (hub.epoch, 1)
    assert view.epoch != old.epoch
    same_state(view, fresh)
    assert [(card.name, card.feature_ids) for card in view.agents.values()] == [("Spark", (9,))]


async def test_follow_does_not_retry_a_4004(server: Server, project_dir: Path) -> None:
    view = RunView()
    drops: list[str] = []
    with trio.fail_after(NETWORK_TIMEOUT), pytest.raises(WatchRefused) as refused:
        await follow(target_of(server, "nope"), view, backoff=FAST, on_drop=drops.append)
    assert refused.value.code == 4004
    assert drops == []
    assert (view.connection, view.error) == ("closed", "Project not found in registry")


async def test_follow_keeps_retrying_an_unreachable_server() -> None:
    view = RunView()
    drops: list[str] = []
    target = WatchTarget.from_server(f"http://127.0.0.1:{free_port()}", "demo")
    with trio.fail_after(NETWORK_TIMEOUT):
        async with trio.open_nursery() as nursery:

            def dropped(reason: str) -> None:
                drops.append(reason)
                if len(drops) == 3:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(lambda: follow(target, view, backoff=FAST, on_drop=dropped))
    assert len(drops) == 3
    assert all(reason.startswith("cannot connect to ws://127.0.0.1:") for reason in drops)
    assert view.connection == "reconnecting"


async def test_follow_drops_a_server_that_stops_answering_pings() -> None:
    drops: list[str] = []
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, silent_websocket_server, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        target = WatchTarget.from_server(f"http://127.0.0.1:{port}", "demo")

        def dropped(reason: str) -> None:
            drops.append(reason)
            nursery.cancel_scope.cancel()

        with trio.fail_after(NETWORK_TIMEOUT):
            await follow(target, RunView(), backoff=FAST, heartbeat=0.05, on_drop=dropped)
    assert drops == ["no answer to a ping in 0.05 s"]


async def silent_websocket_server(stream: trio.SocketStream) -> None:
    """Accepts the upgrade, then never answers anything; hangs up on the client's close."""
    request = b""
    while b"\r\n\r\n" not in request:
        request += await stream.receive_some(4096)
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    await stream.send_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    while data := await stream.receive_some(4096):
        if data[0] & 0x0F == 0x8:  # a close frame: the client gave up on us
            break
    await stream.aclose()


async def test_follow_retries_an_http_429_as_run_does(nursery: trio.Nursery) -> None:
    """The refusal rule is `trio-ws run`'s: 429 (and 408) mean "not now", so a busy
    server behind a rate limiter is retried, not given up on for good."""
    answered = 0

    async def too_many(stream: trio.SocketStream) -> None:
        nonlocal answered
        async with stream:
            await stream.receive_some(65536)
            answered += 1
            await stream.send_all(
                b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 4\r\n"
                b"connection: close\r\n\r\nbusy"
            )

    listeners = await nursery.start(partial(trio.serve_tcp, too_many, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    target = WatchTarget.from_server(f"http://127.0.0.1:{port}", "demo")
    drops: list[str] = []
    with trio.fail_after(NETWORK_TIMEOUT):
        async with trio.open_nursery() as inner:

            def dropped(reason: str) -> None:
                drops.append(reason)
                if len(drops) == 3:
                    inner.cancel_scope.cancel()

            inner.start_soon(lambda: follow(target, RunView(), backoff=FAST, on_drop=dropped))
    assert answered == 3
    assert all("HTTP 429" in reason for reason in drops)
