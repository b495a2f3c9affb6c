"""The README's two Caddy snippets against a real Caddy: the AutoForge UI's routes
(its page, the proxied socket and agent API with ``--trust-origin``), and "Caddy in
front" over TLS (the dashboard page, a wss subscriber, ``watch`` and ``publish`` as
real subprocesses, and the ``--allow-host`` its kept ``Host`` needs)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from caddy_proxy import CaddyProxy, caddy_path
from services import require
from serving import NETWORK_TIMEOUT, TOKEN, make_config, receive, receive_until
from test_behind_proxy import PAUSE, agent_producer, post
from trio_websocket import connect_websocket_url, wrap_client_stream

from trio_ws.data.registry import Registry
from trio_ws.net.server import Server, serve

TRIO_WS = str(Path(sys.executable).parent / "trio-ws")
NAME = "dash.test"  # not a loopback name: Caddy is reached at 127.0.0.1 with it as SNI/Host


@pytest.fixture
async def caddy(tmp_path: Path) -> AsyncIterator[CaddyProxy]:
    """A Caddy (not yet started: it needs trio-ws's port); skipped on a developer's
    machine without it, a failure in CI, which installs it."""
    made = CaddyProxy(require(caddy_path(), "caddy"), tmp_path / "caddy")
    yield made
    await made.stop()


async def routes_in_front(nursery: trio.Nursery, registry: Registry, caddy: CaddyProxy) -> Any:
    """trio-ws trusting the UI's origin behind the AutoForge routes, with a running agent
    producer connected straight to it; returns that producer's websocket."""
    config = make_config(registry, trust_origins=frozenset({caddy.origin}))
    server: Server = await nursery.start(serve, config)
    await caddy.start_routes(server.port)
    return await agent_producer(nursery, server)


async def test_the_routes_serve_the_ui_page_from_autoforges_backend(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, caddy: CaddyProxy
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        await routes_in_front(nursery, registry, caddy)
        stream = await trio.open_tcp_stream("127.0.0.1", caddy.port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 200") and b"<title>the UI</title>" in data


async def test_the_trusted_page_watches_live_and_controls_through_caddy(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, caddy: CaddyProxy
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        producer = await routes_in_front(nursery, registry, caddy)
        ws = await connect_websocket_url(
            nursery,
            f"ws://127.0.0.1:{caddy.port}/ws/projects/demo",
            extra_headers=[(b"origin", caddy.origin.encode())],
        )
        assert (await receive(ws))["type"] == "hello"
        await producer.send_message(
            json.dumps({"type": "lines", "first": 2, "lines": ["live through caddy"]})
        )
        await receive_until(ws, lambda m: "live through caddy" in json.dumps(m))
        await ws.send_message('{"type":"control","action":"graceful_pause"}')
        control = await receive_until(producer, lambda m: m["type"] == "control")
    assert control[-1] == {"type": "control", "action": "graceful_pause"}


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("trusted", 200),
        ("http://127.0.0.1:1", 403),  # another page on this machine
        ("http://evil.example", 403),
        (None, 401),  # a script: the token rules
    ],
)
async def test_the_agent_api_through_caddy_obeys_only_the_trusted_origin(
    nursery: trio.Nursery,
    registry: Registry,
    project_dir: Path,
    caddy: CaddyProxy,
    origin: str | None,
    expected: int,
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        producer = await routes_in_front(nursery, registry, caddy)
        sent = caddy.origin if origin == "trusted" else origin
        status, body = await post(caddy.port, PAUSE, {} if sent is None else {"origin": sent})
        if expected == 200:
            control = await receive_until(producer, lambda m: m["type"] == "control")
            assert control[-1] == {"type": "control", "action": "graceful_pause"}
    assert status == expected, body


async def in_front(
    nursery: trio.Nursery, registry: Registry, caddy: CaddyProxy, allow_hosts: frozenset[str]
) -> Server:
    """trio-ws on loopback behind "Caddy in front" for ``localhost`` and ``NAME``."""
    server: Server = await nursery.start(serve, make_config(registry, allow_hosts=allow_hosts))
    await caddy.start_in_front(server.port, "localhost", NAME)
    return server


async def tls_stream(caddy: CaddyProxy, name: str) -> trio.SSLStream[trio.SocketStream]:
    """A TLS connection to Caddy on 127.0.0.1 for ``name`` (SNI), trusting its root."""
    stream = await trio.open_tcp_stream("127.0.0.1", caddy.https_port)
    tls = trio.SSLStream(stream, caddy.ssl_context(), server_hostname=name, https_compatible=True)
    await tls.do_handshake()
    return tls


async def https_get(caddy: CaddyProxy, name: str, path: str) -> tuple[int, bytes]:
    tls = await tls_stream(caddy, name)
    async with tls:
        host = f"{name}:{caddy.https_port}"
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        await tls.send_all(request.encode())
        data = b""
        while chunk := await tls.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_the_dashboard_and_a_wss_subscriber_over_caddys_tls(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, caddy: CaddyProxy
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        await in_front(nursery, registry, caddy, frozenset())
        status, page = await https_get(caddy, "localhost", f"/projects/demo?token={TOKEN}")
        assert status == 200, page
        assert b"<html" in page.lower()
        ws = await connect_websocket_url(
            nursery,
            f"wss://localhost:{caddy.https_port}/ws/projects/demo?token={TOKEN}",
            ssl_context=caddy.ssl_context(),
        )
        assert (await receive(ws))["type"] == "hello"


async def test_a_name_behind_caddy_needs_allow_host(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, caddy: CaddyProxy
) -> None:
    """Caddy keeps ``Host``: trio-ws on loopback refuses ``dash.test`` as a rebinding
    page would send it, until ``--allow-host dash.test``."""
    with trio.fail_after(NETWORK_TIMEOUT):
        await in_front(nursery, registry, caddy, frozenset())
        status, _ = await https_get(caddy, NAME, f"/projects/demo?token={TOKEN}")
    assert status == 403


async def test_with_allow_host_the_name_serves_the_page_and_the_socket(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, caddy: CaddyProxy
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        await in_front(nursery, registry, caddy, frozenset({NAME}))
        status, page = await https_get(caddy, NAME, f"/projects/demo?token={TOKEN}")
        assert status == 200, page
        ws = await wrap_client_stream(
            nursery,
            await tls_stream(caddy, NAME),
            f"{NAME}:{caddy.https_port}",
            f"/ws/projects/demo?token={TOKEN}",
            extra_headers=[(b"origin", f"https://{NAME}:{caddy.https_port}".encode())],
        )  # the page's own origin, as the dashboard's browser sends it
        assert (await receive(ws))["type"] == "hello"


async def trio_ws(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [TRIO_WS, *args], stdin=stdin, capture_stdout=True, capture_stderr=True, check=False
    )


async def test_publish_and_watch_as_subprocesses_through_caddy(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, home: Path, caddy: CaddyProxy
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT * 2):
        await in_front(nursery, registry, caddy, frozenset())
        url = f"https://localhost:{caddy.https_port}"
        client = ("--server", url, "--cafile", str(caddy.root_ca), "--token", TOKEN)
        published = await trio_ws("publish", "demo", *client, stdin=b"published via caddy\n")
        assert published.returncode == 0, published.stderr
        watched = await trio_ws("watch", "demo", "--once", "--json", *client)
    assert watched.returncode == 0, watched.stderr
    assert "published via caddy" in watched.stdout.decode()
