"""The idle probe over a real server on 127.0.0.1, for both listening endpoints: a
client that talks is never pinged, a silent one gets one ping at a time and is reset
when it answers none. Each endpoint's own count of the drop is in its test module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

import pytest
import rawws
import trio
from serving import NETWORK_TIMEOUT, make_config

from trio_ws.data.registry import Registry
from trio_ws.net.liveness import PING_PAYLOAD, PROBE_CHUNK, Probed, probe_idle_sessions
from trio_ws.net.server import Server, serve

ENDPOINTS: Final = ["/ws/projects/demo", "/ws/overview"]


async def connected(
    nursery: trio.Nursery, registry: Registry, path: str, idle: float, pong: float
) -> tuple[Server, rawws.RawClient]:
    """A server pinging clients idle for ``idle`` s, and a raw client of ``path``."""
    config = make_config(registry, subscriber_idle=idle, subscriber_pong_timeout=pong)
    server: Server = await nursery.start(serve, config)
    client = await rawws.RawClient.connect(server.port, path)
    assert client.status == 101
    return server, client


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_a_client_that_keeps_talking_is_never_pinged(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, path: str
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        _, client = await connected(nursery, registry, path, idle=0.3, pong=0.3)
        sent = 12
        for _ in range(sent):  # 1.2 s: four idle periods, never silent for one
            await client.send(rawws.text({"type": "ping"}))
            await trio.sleep(0.1)
        opcodes = []
        pongs = 0
        while pongs < sent:
            frame = await client.frame()
            assert frame is not None
            opcodes.append(frame[0])
            if frame[0] == rawws.OP_TEXT and json.loads(frame[1])["type"] == "pong":
                pongs += 1
    assert rawws.OP_PING not in opcodes


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_a_silent_client_gets_one_ping_at_a_time_then_is_reset(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, path: str
) -> None:
    """The probe task looks every 0.05 s; the pong may take 1 s: one ping all along."""
    with trio.fail_after(NETWORK_TIMEOUT):
        server, silent = await connected(nursery, registry, path, idle=0.2, pong=1.0)
        started = trio.current_time()
        pings = []
        with pytest.raises(trio.BrokenResourceError):  # reset: it answered nothing
            while (frame := await silent.frame()) is not None:
                if frame[0] == rawws.OP_PING:
                    pings.append((frame[1], trio.current_time() - started))
        while server.manager.live_sessions():  # noqa: ASYNC110 (server state has no event)
            await trio.sleep(0.01)  # bounded by fail_after
    assert [payload for payload, _ in pings] == [PING_PAYLOAD]
    assert 0.2 <= pings[0][1] < 1.0


class _Asked(Probed):
    """A session that notes each time the walk asks it, and when."""

    def __init__(self, asked: list[float]) -> None:
        self.asked = asked

    def probe_if_idle(self, now: float, idle: float, pong_within: float) -> None:
        self.asked.append(now)


async def test_a_walk_over_many_sessions_lets_other_tasks_run_between_slices(
    nursery: trio.Nursery,
) -> None:
    """15,000 dashboards walked in one go held every other task for the whole walk (and
    started all their pings in one burst). A task that runs at every scheduler pass sees
    the walk between PROBE_CHUNK slices; a session that is no probe (a producer) is skipped."""
    asked: list[float] = []
    sessions: list[object] = [_Asked(asked) for _ in range(3 * PROBE_CHUNK + 1)]
    sessions.append(object())
    seen: list[int] = []
    walked = trio.Event()

    async def watch() -> None:
        while len(asked) < 3 * PROBE_CHUNK + 1:
            seen.append(len(asked))
            await trio.lowlevel.checkpoint()
        walked.set()

    with trio.fail_after(NETWORK_TIMEOUT):
        nursery.start_soon(probe_idle_sessions, lambda: sessions, 0.2, 1.0)
        nursery.start_soon(watch)
        await walked.wait()
        nursery.cancel_scope.cancel()
    # Trio runs a pass's tasks in any order, so the watcher may see a slice or two.
    during = [count for count in seen if 0 < count < 3 * PROBE_CHUNK + 1]
    assert during
    assert all(count % PROBE_CHUNK == 0 for count in during)
