"""The AutoForge UI served from another origin, its socket and agent API proxied to
trio-ws by a real nginx: ``serve --trust-origin`` gives that origin's pages working
buttons without the token, and nobody else gets them (issue 19 item 1)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from nginx_proxy import NginxProxy, nginx_path
from services import require
from serving import NETWORK_TIMEOUT, TOKEN, http_json, make_config, receive, receive_until
from trio_websocket import connect_websocket_url

from trio_ws.data.registry import Registry
from trio_ws.net.server import Server, serve


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[NginxProxy]:
    """An nginx (not yet started: its origin must be trusted before the server starts);
    skipped on a developer's machine without it, a failure in CI, which installs it."""
    made = NginxProxy(require(nginx_path(), "nginx-light"), tmp_path / "nginx")
    yield made
    await made.stop()


async def start_behind(
    nursery: trio.Nursery, registry: Registry, proxy: NginxProxy, *, trusted: bool = True
) -> Any:
    """trio-ws behind ``proxy`` (trusting the proxy's origin, or not) with a running
    agent producer connected straight to it; returns that producer's websocket."""
    origins = frozenset({proxy.origin}) if trusted else frozenset()
    server: Server = await nursery.start(serve, make_config(registry, trust_origins=origins))
    await proxy.start(server.port)
    return await agent_producer(nursery, server)


async def post(port: int, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    """A POST with no body, as the UI's fetch sends it: the status and the JSON."""
    sent = {"content-type": "application/json", "content-length": "0", "connection": "close"}
    sent.update(headers)
    return await http_json(port, "POST", path, sent)


async def agent_producer(nursery: trio.Nursery, server: Server) -> Any:
    ws = await connect_websocket_url(
        nursery,
        f"ws://127.0.0.1:{server.port}/ws/projects/demo/publish",
        extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())],
    )
    await ws.send_message(json.dumps({"type": "hello", "producer": "run", "stream": "agent"}))
    assert (await receive(ws))["type"] == "welcome"
    await ws.send_message(json.dumps({"type": "status", "pseq": 1, "status": "running"}))
    await receive_until(ws, lambda m: m["type"] == "ack")  # a graceful pause needs a run
    return ws


PAUSE = "/api/projects/demo/agent/graceful-pause"


async def test_a_page_from_the_trusted_origin_pauses_through_the_proxy_without_the_token(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, proxy: NginxProxy
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        producer = await start_behind(nursery, registry, proxy)
        status, body = await post(proxy.port, PAUSE, {"origin": proxy.origin})
        control = await receive_until(producer, lambda m: m["type"] == "control")
    assert status == 200
    assert body["status"] is not None and "success" in body
    assert control[-1] == {"type": "control", "action": "graceful_pause"}


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("http://127.0.0.1:1", 403),  # another page on this machine
        ("http://evil.example", 403),
        (None, 401),  # a script: the token rules
    ],
)
async def test_no_other_page_and_no_script_controls_without_the_token(
    nursery: trio.Nursery,
    registry: Registry,
    project_dir: Path,
    proxy: NginxProxy,
    origin: str | None,
    expected: int,
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        await start_behind(nursery, registry, proxy)
        headers = {} if origin is None else {"origin": origin}
        status, body = await post(proxy.port, PAUSE, headers)
    assert status == expected, body


async def test_without_trust_the_proxied_page_still_needs_the_token(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, proxy: NginxProxy
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        await start_behind(nursery, registry, proxy, trusted=False)
        status, body = await post(proxy.port, PAUSE, {"origin": proxy.origin})
    assert status == 403, body


async def test_the_trusted_page_watches_and_controls_over_the_proxied_socket(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, proxy: NginxProxy
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        producer = await start_behind(nursery, registry, proxy)
        ws = await connect_websocket_url(
            nursery,
            f"ws://127.0.0.1:{proxy.port}/ws/projects/demo",
            extra_headers=[(b"origin", proxy.origin.encode())],
        )
        assert (await receive(ws))["type"] == "hello"
        await ws.send_message('{"type":"control","action":"graceful_pause"}')
        control = await receive_until(producer, lambda m: m["type"] == "control")
    assert control[-1] == {"type": "control", "action": "graceful_pause"}
