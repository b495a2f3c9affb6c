"""Alerts through a real server on 127.0.0.1 (issue 21): live to every subscriber, in a
late joiner's snapshot while they stand, kept by the sqlite journal across a restart,
and harmless to the AutoForge UI, which knows no ``alert``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio
from autoforge_ui import AutoForgeUI
from serving import NETWORK_TIMEOUT, TOKEN, connect, make_config, receive_until, ws_url
from trio_websocket import WebSocketConnection, connect_websocket_url

from trio_ws.core.alerts import AlertSettings
from trio_ws.data.registry import Registry
from trio_ws.net.config import ServerConfig
from trio_ws.net.server import Server, serve

Msg = dict[str, Any]


def is_alert(state: str) -> Any:
    return lambda message: message["type"] == "alert" and message["state"] == state


async def start(nursery: trio.Nursery, config: ServerConfig) -> Server:
    server: Server = await nursery.start(serve, config)
    return server


async def producer(nursery: trio.Nursery, server: Server) -> WebSocketConnection:
    ws = await connect_websocket_url(
        nursery,
        ws_url(server, "/ws/projects/demo/publish"),
        extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())],
    )
    await ws.send_message(json.dumps({"type": "hello", "producer": "p1", "stream": "agent"}))
    await receive_until(ws, lambda m: m["type"] == "welcome")
    return ws


async def crash(ws: WebSocketConnection, first: int = 1) -> None:
    """A run that starts, says one line and crashes with exit code 3."""
    items = [
        {"type": "status", "pseq": first, "status": "running"},
        {"type": "lines", "first": first + 1, "lines": ["working"]},
        {"type": "status", "pseq": first + 2, "status": "crashed", "exit_code": 3},
    ]
    for item in items:
        await ws.send_message(json.dumps(item))


async def snapshot(nursery: trio.Nursery, server: Server) -> list[Msg]:
    """A late joiner's first messages (AutoForge's way: no backlog), up to a pong."""
    watcher = await connect(nursery, server)
    await watcher.send_message('{"type":"ping"}')
    return await receive_until(watcher, lambda m: m["type"] == "pong")


async def test_a_subscriber_gets_the_alert_and_a_late_joiner_the_standing_one(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, make_config(registry, alerts=AlertSettings()))
        watcher = await connect(nursery, server)
        await receive_until(watcher, lambda m: m["type"] == "hello")
        await crash(await producer(nursery, server))
        seen = await receive_until(watcher, is_alert("raised"))
        late = await snapshot(nursery, server)
    alert = seen[-1]
    assert (alert["kind"], alert["severity"], alert["project"]) == ("run_crashed", "error", "demo")
    assert alert["message"] == "the run crashed (exit code 3)"
    assert alert["seq"] == seen[-2]["seq"] + 1  # numbered like every event, after the crash
    assert alert in late and late.index(alert) > 0  # the standing alert, its own seq


async def test_a_restart_keeps_the_standing_alert_and_resolves_it_under_its_id(
    registry: Registry, home: Path, project_dir: Path
) -> None:
    config = make_config(registry, journal="sqlite", home=home, alerts=AlertSettings())
    with trio.fail_after(NETWORK_TIMEOUT):
        async with trio.open_nursery() as life:
            server = await start(life, config)
            watcher = await connect(life, server)
            await crash(await producer(life, server))
            (raised,) = [m for m in await receive_until(watcher, is_alert("raised"))][-1:]
            life.cancel_scope.cancel()
        async with trio.open_nursery() as second:
            server = await start(second, config)
            late = await snapshot(second, server)
            watcher = await connect(second, server)
            again = await producer(second, server)
            await again.send_message(json.dumps({"type": "status", "pseq": 4, "status": "running"}))
            resolved = (await receive_until(watcher, is_alert("resolved")))[-1]
            second.cancel_scope.cancel()
    assert raised in late
    assert resolved["id"] == raised["id"]


async def test_the_autoforge_ui_ignores_alerts(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    """An agent's card stands; a ``needs_input`` alert comes; the UI's state is unchanged."""
    ui = AutoForgeUI()
    needs_input = {
        "type": "progress",
        "pseq": 2,  # after the line
        "passing": 0,
        "in_progress": 1,
        "total": 3,
        "needs_human_input": 1,
    }
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, make_config(registry, alerts=AlertSettings()))
        watcher = await connect(nursery, server)
        ws = await producer(nursery, server)
        start_agent = ["Started coding agent for feature #1"]
        await ws.send_message(json.dumps({"type": "lines", "first": 1, "lines": start_agent}))
        before = await receive_until(watcher, lambda m: m["type"] == "agent_update")
        for message in before:
            ui.apply(message)
        cards, activity = json.dumps(ui.cards), list(ui.activity)
        await ws.send_message(json.dumps(needs_input))
        after = await receive_until(watcher, is_alert("raised"))
        for message in after:
            ui.apply(message)
    assert after[-1]["kind"] == "needs_input"
    assert json.dumps(ui.cards) == cards and ui.activity == activity
    assert ui.repeated_keys == []
