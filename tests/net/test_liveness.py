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
from trio_ws.net.liveness import PING_PAYLOAD
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
