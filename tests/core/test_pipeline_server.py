"""The line pipeline behind the real server (LINES.md 1.1, 1.4): what a producer's line costs
the other subscribers, and what of it reaches them."""

from __future__ import annotations

import json
from pathlib import Path

import trio
from serving import TOKEN, connect, receive_until
from test_publish import logs, producer, send, wait_acked
from trio_websocket import WebSocketConnection

from trio_ws.net.server import Server

TIMEOUT = 20
MAX_PING_RTT = 0.1
PING_INTERVAL = 0.01
"""Well under the subscriber rate limit (100 messages in 10 s) for the test's length."""


async def subscribed(nursery: trio.Nursery, server: Server) -> WebSocketConnection:
    """A subscriber to ``demo`` whose snapshot has been read."""
    ws = await connect(nursery, server)
    await receive_until(ws, lambda m: m["type"] == "dev_server_status")
    return ws


async def ping_until(ws: WebSocketConnection, done: trio.Event, rtts: list[float]) -> None:
    """Ping on a fixed schedule until ``done``; each round trip counts from its planned start.

    Server and test share one event loop, so a stall would delay the ping as
    well as its pong: timed from the planned start, a ping due during a stall
    shows it (no coordinated omission).
    """
    planned = trio.current_time()
    while not done.is_set():
        await trio.sleep_until(planned)
        await ws.send_message(json.dumps({"type": "ping"}))
        await receive_until(ws, lambda m: m["type"] == "pong")
        now = trio.current_time()
        rtts.append(now - planned)
        planned = max(planned + PING_INTERVAL, now)


async def test_a_ten_megabyte_line_does_not_stall_the_event_loop(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    # Redaction work in every word of the line: before the cap came first, the
    # server spent seconds on it and every ping waited.
    big = "password=hunter2 " * 620_000
    batch = json.dumps({"type": "lines", "first": 1, "lines": [big]})
    with trio.fail_after(TIMEOUT):
        pinger = await subscribed(nursery, server)
        watcher = await subscribed(nursery, server)
        ws, _ = await producer(nursery, server)
        done = trio.Event()
        rtts: list[float] = []
        async with trio.open_nursery() as pinging:
            pinging.start_soon(ping_until, pinger, done, rtts)
            await ws.send_message(batch)
            await wait_acked(ws, 1)
            seen = await receive_until(watcher, lambda m: m["type"] == "log")
            done.set()
    assert len(rtts) >= 3, rtts
    assert max(rtts) < MAX_PING_RTT, rtts
    (line,) = logs(seen)
    assert line.endswith(" chars]") and "hunter2" not in line


async def test_a_lone_surrogate_reaches_subscribers_as_a_replacement_character(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        watcher = await subscribed(nursery, server)
        ws, _ = await producer(nursery, server)
        # json.dumps writes the lone surrogate as the escape "\ud800".
        await send(ws, {"type": "lines", "first": 1, "lines": ["bad \ud800 x", "after"]})
        seen = await receive_until(watcher, lambda m: m.get("line") == "after")
    assert logs(seen) == ["bad \ufffd x", "after"]


async def test_the_servers_token_never_reaches_a_subscriber(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        watcher = await subscribed(nursery, server)
        ws, _ = await producer(nursery, server)
        await send(ws, {"type": "lines", "first": 1, "lines": [f"debug: {TOKEN}", "after"]})
        seen = await receive_until(watcher, lambda m: m.get("line") == "after")
    assert logs(seen) == ["debug: [REDACTED]", "after"]
    assert TOKEN not in json.dumps(seen)
