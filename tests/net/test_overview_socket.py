"""``/ws/overview`` on a real server on 127.0.0.1: the first full list, live updates
coalesced, the token rule of ``/api/projects``, the idle probe, a stalled reader."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Final

import pytest
import rawws
import trio
from rawws import upgrade_request
from serving import NETWORK_TIMEOUT, TOKEN, make_config, receive, receive_until, ws_url
from trio_websocket import ConnectionClosed, connect_websocket_url

from trio_ws.data.registry import Registry
from trio_ws.net.server import Server, serve

Msg = dict[str, Any]


@pytest.fixture
def two_projects(tmp_path: Path, registry: Registry) -> Registry:
    for name in ("alpha", "beta"):
        (tmp_path / name).mkdir()
        registry.add(name, tmp_path / name)
    return registry


async def start(nursery: trio.Nursery, registry: Registry, **overrides: Any) -> Server:
    server: Server = await nursery.start(serve, make_config(registry, **overrides))
    return server


async def publish(nursery: trio.Nursery, server: Server, project: str) -> Any:
    ws = await connect_websocket_url(
        nursery,
        ws_url(server, f"/ws/projects/{project}/publish"),
        extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())],
    )
    await ws.send_message(json.dumps({"type": "hello", "producer": "p1", "stream": "agent"}))
    await receive_until(ws, lambda m: m["type"] == "welcome")
    return ws


def names(message: Msg) -> list[str]:
    return [project["name"] for project in message["projects"]]


async def test_the_first_message_lists_every_registered_project(
    nursery: trio.Nursery, two_projects: Registry
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, two_projects)
        ws = await connect_websocket_url(nursery, ws_url(server, "/ws/overview"))
        first = await receive(ws)
        assert first["type"] == "overview"
        assert first["registry_error"] is None
        assert names(first) == ["alpha", "beta"]
        alpha = first["projects"][0]
        assert alpha["loaded"] is False  # nobody opened it: not loaded for the overview
        assert alpha["agent_status"] is None
        assert alpha["attention"] == "idle"
        assert server.manager.get_hub("alpha") is None
        await ws.send_message(json.dumps({"type": "ping"}))
        assert (await receive(ws))["type"] == "pong"  # the list was current: no update


async def test_a_burst_of_events_arrives_coalesced(
    nursery: trio.Nursery, two_projects: Registry
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, two_projects)
        ws = await connect_websocket_url(nursery, ws_url(server, "/ws/overview"))
        await receive(ws)
        producer = await publish(nursery, server, "alpha")
        await producer.send_message(json.dumps({"type": "status", "pseq": 1, "status": "running"}))
        updates: list[Msg] = []
        pseq = 1
        started = trio.current_time()
        for n in range(40):  # a batch every 25 ms for a second: 40 commits
            await producer.send_message(
                json.dumps({"type": "lines", "first": pseq + 1, "lines": [f"line {n}"]})
            )
            pseq += 1
            await trio.sleep(0.025)
        elapsed = trio.current_time() - started
        last_line = None
        while last_line is None or not updates or updates[-1]["agent_status"] != "running":
            with trio.move_on_after(1.5) as quiet:
                message = await receive(ws)
            if quiet.cancelled_caught:
                break
            assert message["type"] == "overview_update"
            assert message["removed"] == []
            updates += message["projects"]
            last_line = updates[-1]["last_activity"]
        alpha = [update for update in updates if update["name"] == "alpha"]
        assert alpha and alpha[-1]["agent_status"] == "running"
        assert alpha[-1]["loaded"] is True
        assert alpha[-1]["attention"] == "running"
        # At most one summary per 0.5 s (and the first one): not one per commit.
        assert len(alpha) <= elapsed / 0.5 + 3, len(alpha)


async def test_the_overview_needs_the_token_when_subscribers_do(
    nursery: trio.Nursery, two_projects: Registry
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, two_projects, require_token=True)
        ws = await connect_websocket_url(nursery, ws_url(server, "/ws/overview"))
        refusal = await receive(ws)
        assert refusal == {"type": "error", "content": "Unauthorized"}
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        assert closed.value.reason is not None
        assert closed.value.reason.code == 4001
        assert server.manager.overview.watcher_count == 0
        ws = await connect_websocket_url(nursery, ws_url(server, f"/ws/overview?token={TOKEN}"))
        assert names(await receive(ws)) == ["alpha", "beta"]


async def test_the_overview_refuses_a_foreign_origin(
    nursery: trio.Nursery, two_projects: Registry
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, two_projects)
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(upgrade_request("/ws/overview", "Origin: http://evil.example"))
            answer = await stream.receive_some(4096)
        assert answer.startswith(b"HTTP/1.1 403 ")


async def test_a_project_registered_later_and_one_removed_are_told(
    nursery: trio.Nursery, tmp_path: Path, two_projects: Registry
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, two_projects)
        ws = await connect_websocket_url(nursery, ws_url(server, "/ws/overview"))
        await receive(ws)
        (tmp_path / "gamma").mkdir()
        two_projects.add("gamma", tmp_path / "gamma")
        two_projects.remove("beta")
        await server.manager.overview.read_registry(two_projects.path)  # not the 5 s wait
        message = await receive(ws)
        assert message["type"] == "overview_update"
        assert names(message) == ["gamma"]
        assert message["removed"] == ["beta"]


async def test_shutdown_closes_the_overview_with_1001(
    nursery: trio.Nursery, two_projects: Registry
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, two_projects)
        ws = await connect_websocket_url(nursery, ws_url(server, "/ws/overview"))
        await receive(ws)
        await server.shutdown(1001)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.get_message()
        assert closed.value.reason is not None
        assert closed.value.reason.code == 1001


async def wait_until(condition: Any) -> None:
    """Poll server-side state (under the caller's fail_after) until ``condition`` holds."""
    while not condition():  # noqa: ASYNC110  (server internals offer no event to wait on)
        await trio.sleep(0.01)


def running(message: Msg) -> bool:
    return any(project["agent_status"] == "running" for project in message["projects"])


# -- liveness: a vanished overview client is not held until the next change ------------


async def test_an_overview_client_that_answers_no_ping_is_dropped(
    nursery: trio.Nursery, two_projects: Registry
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(
            nursery, two_projects, subscriber_idle=0.4, subscriber_pong_timeout=0.4
        )
        overview = server.manager.overview
        # The first list, then silence: it never sends, never answers a ping, sends no FIN,
        # and nothing changes, so no write would ever find it gone.
        silent = await rawws.RawClient.connect(server.port, "/ws/overview")
        assert silent.status == 101
        assert names(await silent.message("overview")) == ["alpha", "beta"]
        assert overview.watcher_count == 1
        started = trio.current_time()
        assert await silent.until(rawws.OP_PING) == b"alive?"
        await wait_until(lambda: overview.watcher_count == 0)
        took = trio.current_time() - started
        assert server.manager.live_sessions() == []
        with pytest.raises(trio.BrokenResourceError):  # reset: it answered nothing
            while await silent.frame() is not None:
                pass
    assert overview.watchers_dropped == 1
    assert took < 3.0


async def test_an_overview_client_that_answers_pings_stays_while_idle(
    nursery: trio.Nursery, two_projects: Registry
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(
            nursery, two_projects, subscriber_idle=0.2, subscriber_pong_timeout=0.2
        )
        overview = server.manager.overview
        ws = await connect_websocket_url(nursery, ws_url(server, "/ws/overview"))
        await receive(ws)  # trio-websocket answers pings by itself
        pinged = await rawws.RawClient.connect(server.port, "/ws/overview")
        await pinged.message("overview")
        for _ in range(3):  # several idle periods, each with a ping, each answered
            payload = await pinged.until(rawws.OP_PING)
            await pinged.send(rawws.client_frame(rawws.OP_PONG, payload))
        assert overview.watcher_count == 2
        alpha = two_projects.get("alpha")
        assert alpha is not None
        hub = (await server.manager.open("alpha", alpha.path)).hub
        hub.set_status("running")
        # Both still told (the hub's opening may come first); the raw client first, as
        # it answers pings only while read.
        while True:
            frame = await pinged.frame()
            assert frame is not None
            if frame[0] == rawws.OP_PING:
                await pinged.send(rawws.client_frame(rawws.OP_PONG, frame[1]))
            elif frame[0] == rawws.OP_TEXT and running(json.loads(frame[1])):
                break
        while not running(await receive(ws)):
            pass
    assert overview.watchers_dropped == 0


# -- a stalled reader: bounded, cut, and no one else waits for it -------------------------

MANY: Final = 60


async def test_a_stalled_overview_reader_is_bounded_and_cut_while_others_keep_up(
    nursery: trio.Nursery, tmp_path: Path, registry: Registry
) -> None:
    """60 projects change all the time; one overview client stops reading. Its backlog
    stays one summary per project (the rest are dropped for newer ones), it is cut at
    the stall timeout, and meanwhile the other overview client and a project
    subscriber are served as usual."""
    names_ = [f"p{n:02d}" for n in range(MANY)]
    for name in names_:
        (tmp_path / name).mkdir()
        registry.add(name, tmp_path / name)
    with trio.fail_after(30):
        server = await start(nursery, registry, stall_timeout=2.0)
        overview = server.manager.overview
        hubs = [(await server.manager.open(name, tmp_path / name)).hub for name in names_]
        stalled = await rawws.RawClient.connect(server.port, "/ws/overview", rcvbuf=4096)
        assert len((await stalled.message("overview"))["projects"]) == MANY
        # From here on the stalled client reads nothing.
        reader = await connect_websocket_url(nursery, ws_url(server, "/ws/overview"))
        assert len((await receive(reader))["projects"]) == MANY
        latest: dict[str, Msg] = {}
        arrivals: list[float] = []

        async def read_overview() -> None:
            while True:
                message = await receive(reader)
                arrivals.append(trio.current_time())
                latest.update((project["name"], project) for project in message["projects"])

        nursery.start_soon(read_overview)
        subscriber = await connect_websocket_url(nursery, ws_url(server, "/ws/projects/p00"))
        most_pending = 0
        rounds = 0
        started = trio.current_time()
        while overview.watchers_dropped == 0:
            for hub in hubs:
                hub.feed_lines([f"round {rounds} " + "x" * 200])
            rounds += 1
            most_pending = max(most_pending, overview.pending_summaries)
            assert trio.current_time() - started < 20, "the stalled reader was never cut"
            await trio.sleep(0.02)
        cut_after = trio.current_time() - started
        # The cut is counted as the stalled write fails; the watcher leaves as its
        # session ends, just after: then only the reader is left.
        await wait_until(lambda: overview.watcher_count == 1)
        # Everyone else kept up: the hubs fed every round at once, the reader had a
        # summary at least every second (coalesced to two a second), the subscriber
        # its project's last line.
        gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
        assert arrivals and max(gaps) < 1.5, gaps
        for hub in hubs:
            hub.set_status("running")
        await wait_until(
            lambda: (
                len(latest) == MANY
                and all(project["agent_status"] == "running" for project in latest.values())
            )
        )
        last = f"round {rounds - 1} "
        await receive_until(subscriber, lambda m: str(m.get("line", "")).startswith(last))
    # One summary per project per watcher at most (never growing with time), the
    # stalled one's older summaries dropped for newer ones.
    assert most_pending <= 2 * MANY, most_pending
    assert overview.summaries_dropped > 0
    assert overview.watchers_dropped == 1
    assert rounds > 10, rounds
    assert cut_after < 2.0 + 5.0, cut_after  # the stall timeout, once the buffers filled
