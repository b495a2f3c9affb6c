"""The server's HTTP side and the websocket handshake, over real sockets (PROTOCOL.md 1, 2, 6).

Every test runs a real server on 127.0.0.1, port 0, under a hard
``fail_after``. Plain HTTP is spoken as raw bytes so malformed and oversized
requests can be sent. Handshake outcomes after the upgrade (4xxx close codes)
are read with trio-websocket; refusals before it (403, 404, 400) with a raw
upgrade request, since trio-websocket raises ``ConnectionRejected`` from its
reader task into the caller's nursery. Two tests drive the server with the
independent ``websockets`` library, so the wire format is not just
trio-websocket talking to itself.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import trio
import trio.lowlevel
import trio.testing
import websockets.exceptions
import websockets.sync.client
from hypothesis import given, settings
from hypothesis import strategies as st
from rawws import RawClient
from serving import (
    NETWORK_TIMEOUT,
    TOKEN,
    connect,
    http_get,
    http_json,
    make_config,
    receive,
    ws_url,
)
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    connect_websocket,
    connect_websocket_url,
)

import trio_ws.net.server
from trio_ws import __version__
from trio_ws.data.progress import NO_PROGRESS
from trio_ws.data.registry import Registry
from trio_ws.net import api
from trio_ws.net.httpio import MAX_HEAD_BYTES
from trio_ws.net.server import Server, serve
from trio_ws.state.manager import ConnectionManager

Msg = dict[str, Any]

WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
"""The sample nonce of RFC 6455; any 16 bytes in base64 do."""


# -- helpers ------------------------------------------------------------------


@pytest.fixture(autouse=True)
def server_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    with caplog.at_level(logging.INFO, logger="trio_ws"):
        yield


async def start(nursery: trio.Nursery, registry: Registry, **overrides: Any) -> Server:
    """A server with non-default settings; cancelled with the test's nursery."""
    server: Server = await nursery.start(serve, make_config(registry, **overrides))
    return server


async def exchange(server: Server, data: bytes) -> bytes:
    """Send raw bytes and read until the server closes the connection.

    A server that closes with request bytes still unread makes the kernel send
    a reset after the response; what arrived before it is the answer.
    """
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    received = b""
    async with stream:
        await stream.send_all(data)
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not chunk:
                break
            received += chunk
    return received


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:100]
    return int(response.split(b" ", 2)[1])


def http_request(path: str, *headers: str, method: str = "GET", host: str = "127.0.0.1") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def upgrade_request(server: Server, path: str, *headers: str, host: str | None = None) -> bytes:
    """A complete websocket opening handshake, as a browser would send it."""
    return http_request(
        path,
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {WS_KEY}",
        "Sec-WebSocket-Version: 13",
        *headers,
        host=host or f"127.0.0.1:{server.port}",
    )


async def upgrade_status(server: Server, path: str, *headers: str, host: str | None = None) -> int:
    """The HTTP status the server answers a raw upgrade request with."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(upgrade_request(server, path, *headers, host=host))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(4096)
            assert chunk, f"connection closed after {head!r}"
            head += chunk
    return status_of(head)


async def refusal(ws: WebSocketConnection) -> tuple[Msg, int | None, str | None]:
    """The message sent before the close, and the close code and reason."""
    message = await receive(ws)
    with pytest.raises(ConnectionClosed) as caught:
        await ws.get_message()
    reason = caught.value.reason
    assert reason is not None
    return message, reason.code, reason.reason


async def settle(*conditions: Callable[[], bool]) -> None:
    """Wait until every condition holds (bounded by the test's fail_after)."""
    # Plain counters have no event to wait on, so poll them.
    while not all(condition() for condition in conditions):  # noqa: ASYNC110
        await trio.sleep(0.01)


def count_tasks() -> int:
    """Every task alive in this run."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    count = 0
    pending = [root]
    while pending:
        task = pending.pop()
        count += 1
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return count


def json_body(body: bytes) -> Any:
    return json.loads(body)


# -- GET /healthz -----------------------------------------------------------------


async def test_healthz_reports_status_and_counts(server: Server) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        status, headers, body = await http_get(server, "/healthz")
    health = json_body(body)
    assert (status, headers["content-type"]) == (200, "application/json")
    assert set(health) == {
        "status",
        "projects",
        "subscribers",
        "producers",
        "uptime_s",
        "journal",
        "journals",
    }
    assert (health["journal"], health["journals"]) == ("memory", {})
    assert health["status"] == "ok"
    assert (health["projects"], health["subscribers"], health["producers"]) == (0, 0, 0)
    assert isinstance(health["uptime_s"], float) and health["uptime_s"] >= 0


async def test_healthz_counts_a_connected_subscriber(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await connect(nursery, server)
        assert (await receive(ws))["type"] == "hello"
        _, _, body = await http_get(server, "/healthz")
        assert (json_body(body)["subscribers"], json_body(body)["projects"]) == (1, 1)
        await ws.aclose()
        await settle(lambda: server.manager.subscriber_count == 0)
        _, _, body = await http_get(server, "/healthz")
    assert json_body(body)["subscribers"] == 0


# -- GET /api/projects ------------------------------------------------------------


async def test_api_projects_lists_every_registered_project(
    server: Server, registry: Registry, project_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "alpha"
    other.mkdir()
    registry.add("alpha", other)
    with trio.fail_after(NETWORK_TIMEOUT):
        status, headers, body = await http_get(server, "/api/projects")
    assert (status, headers["content-type"]) == (200, "application/json")
    assert json_body(body) == [
        {
            "name": name,
            "path": path.as_posix(),
            "exists": True,
            "subscribers": 0,
            "agent_status": "stopped",
            "dev_server_status": "stopped",
        }
        for name, path in [("alpha", other), ("demo", project_dir)]
    ]


async def test_api_projects_marks_a_deleted_directory(server: Server, project_dir: Path) -> None:
    shutil.rmtree(project_dir)
    with trio.fail_after(NETWORK_TIMEOUT):
        status, _, body = await http_get(server, "/api/projects")
    assert status == 200
    [demo] = json_body(body)
    assert (demo["name"], demo["exists"]) == ("demo", False)


async def test_api_projects_shows_live_subscribers_and_statuses(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await connect(nursery, server)
        await receive(ws)
        hub = server.manager.get_hub("demo")
        assert hub is not None
        hub.set_status("running")
        hub.set_status("running", stream="dev")
        _, _, body = await http_get(server, "/api/projects")
    [demo] = json_body(body)
    assert (demo["subscribers"], demo["agent_status"], demo["dev_server_status"]) == (
        1,
        "running",
        "running",
    )


async def test_a_corrupt_registry_makes_api_projects_503_and_the_server_stays_up(
    server: Server, registry: Registry, project_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry.path.write_bytes(b"this is not an sqlite database " * 64)
    with trio.fail_after(NETWORK_TIMEOUT):
        status, headers, body = await http_get(server, "/api/projects")
        health_status, _, _ = await http_get(server, "/healthz")
    error = json_body(body)
    assert (status, headers["content-type"]) == (503, "application/json")
    assert list(error) == ["error"]
    assert str(registry.path) in error["error"]
    assert health_status == 200
    assert any(
        str(registry.path) in r.getMessage() for r in caplog.records if r.levelname == "ERROR"
    )


# -- other HTTP answers -------------------------------------------------------------


async def test_unknown_path_is_404(server: Server) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        status, _, _ = await http_get(server, "/no/such/thing")
    assert status == 404


async def test_plain_get_to_a_websocket_path_is_426(server: Server, project_dir: Path) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        status, headers, _ = await http_get(server, "/ws/projects/demo")
    assert (status, headers["upgrade"]) == (426, "websocket")


async def test_post_is_405_with_allow_get(server: Server) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        response = await exchange(
            server, http_request("/healthz", "Content-Length: 0", method="POST")
        )
    assert status_of(response) == 405
    assert b"\r\nallow: GET\r\n" in response


async def test_head_is_405_with_allow_get_and_no_body(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        response = await exchange(server, http_request("/healthz", method="HEAD"))
    head, _, body = response.partition(b"\r\n\r\n")
    assert status_of(response) == 405
    assert b"\r\nallow: GET" in head
    assert body == b""
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_head_to_a_websocket_path_is_426_with_no_body(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        response = await exchange(server, http_request("/ws/projects/demo", method="HEAD"))
    assert status_of(response) == 426
    assert response.endswith(b"\r\n\r\n")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n",
        b"\x16\x03\x01\x00\xff\r\n\r\n",
    ],
    ids=["garbage", "header-without-colon", "tls-hello"],
)
async def test_malformed_request_is_400(server: Server, data: bytes) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        response = await exchange(server, data)
    assert status_of(response) == 400


@pytest.mark.parametrize(
    "headers",
    [
        ("X-Pad: " + "a" * (MAX_HEAD_BYTES + 2000),),
        tuple(f"X-Header-{i}: {'v' * 100}" for i in range(200)),
    ],
    ids=["one-long-header", "many-headers"],
)
async def test_oversized_head_is_431(server: Server, headers: tuple[str, ...]) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        response = await exchange(server, http_request("/healthz", *headers))
    assert status_of(response) == 431


async def test_a_head_just_under_the_limit_is_served(server: Server) -> None:
    bare = len(http_request("/healthz", "X-Pad: "))
    data = http_request("/healthz", "X-Pad: " + "a" * (MAX_HEAD_BYTES - bare))
    assert len(data) == MAX_HEAD_BYTES
    with trio.fail_after(NETWORK_TIMEOUT):
        response = await exchange(server, data)
    assert status_of(response) == 200


async def test_a_silent_client_is_dropped_after_the_handshake_timeout(
    nursery: trio.Nursery, registry: Registry
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, registry, handshake_timeout=0.5)
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            assert await stream.receive_some(4096) == b""


async def test_a_client_that_stops_mid_head_is_dropped_after_the_handshake_timeout(
    nursery: trio.Nursery, registry: Registry
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, registry, handshake_timeout=0.5)
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        async with stream:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            assert await stream.receive_some(4096) == b""


async def test_a_failing_handler_is_logged_with_its_peer_and_the_server_keeps_serving(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_health = api.health
    calls: list[None] = []

    def failing_once(manager: ConnectionManager, started_at: float) -> dict[str, Any]:
        calls.append(None)
        if len(calls) == 1:
            raise RuntimeError("health check exploded")
        return real_health(manager, started_at)

    monkeypatch.setattr(api, "health", failing_once)
    with trio.fail_after(NETWORK_TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        local_port = stream.socket.getsockname()[1]
        async with stream:
            await stream.send_all(http_request("/healthz"))
            assert await stream.receive_some(4096) == b""
        status, _, body = await http_get(server, "/healthz")
    assert (status, json_body(body)["status"]) == (200, "ok")
    [failure] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert f"127.0.0.1:{local_port}" in failure.getMessage()
    assert failure.exc_info is not None
    assert "health check exploded" in caplog.text


# -- handshake: Origin (403 before the upgrade) --------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "https://dash.example.com",
        "null",
        "http://localhost.evil.example",
        "http://[::1",
    ],
)
async def test_a_foreign_origin_is_403_before_the_upgrade(
    nursery: trio.Nursery, server: Server, project_dir: Path, origin: str
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        status = await upgrade_status(server, "/ws/projects/demo", f"Origin: {origin}")
    assert status == 403
    assert server.manager.get_hub("demo") is None


async def test_origin_is_checked_before_the_token(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, registry, require_token=True)
        status = await upgrade_status(
            server, f"/ws/projects/demo?token={TOKEN}", "Origin: http://evil.example"
        )
    assert status == 403


async def test_no_origin_is_allowed(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await connect(nursery, server)
        assert (await receive(ws))["type"] == "hello"


async def test_an_origin_with_the_same_host_as_the_host_header_is_allowed(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    host = "dash.example.test:8888"
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, registry, allow_hosts=frozenset({host}))
        status = await upgrade_status(
            server, "/ws/projects/demo", f"Origin: http://{host}", host=host
        )
    assert status == 101


async def test_an_origin_naming_another_host_than_the_host_header_is_403(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    host = "dash.example.test:8888"
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, registry, allow_hosts=frozenset({host}))
        status = await upgrade_status(
            server, "/ws/projects/demo", "Origin: http://other.example.test:8888", host=host
        )
    assert status == 403


@pytest.mark.parametrize(
    "origin", ["http://localhost:5173", "http://127.0.0.1:3000", "http://[::1]:8080"]
)
async def test_a_loopback_origin_is_allowed_on_loopback(
    nursery: trio.Nursery, server: Server, project_dir: Path, origin: str
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await connect_websocket_url(
            nursery,
            ws_url(server, "/ws/projects/demo"),
            extra_headers=[(b"Origin", origin.encode())],
        )
        assert (await receive(ws))["type"] == "hello"


async def test_an_allow_origin_entry_is_allowed(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(
            nursery, registry, allow_origins=frozenset({"https://dash.example.com"})
        )
        ws = await connect_websocket_url(
            nursery,
            ws_url(server, "/ws/projects/demo"),
            extra_headers=[(b"Origin", b"https://dash.example.com")],
        )
        assert (await receive(ws))["type"] == "hello"


# -- handshake: token (4001) ---------------------------------------------------------


@pytest.mark.parametrize("query", [{}, {"token": "wrong"}, {"token": TOKEN[:-1]}])
async def test_a_missing_or_wrong_token_is_4001_when_required(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, query: dict[str, str]
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, registry, require_token=True)
        ws = await connect(nursery, server, **query)
        message, code, reason = await refusal(ws)
    assert message == {"type": "error", "content": "Unauthorized"}
    assert (code, reason) == (4001, "Unauthorized")
    assert server.manager.get_hub("demo") is None


async def test_a_wrong_cookie_is_4001_when_required(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, registry, require_token=True)
        ws = await connect_websocket_url(
            nursery,
            ws_url(server, "/ws/projects/demo"),
            extra_headers=[(b"Cookie", b"trio_ws_token=wrong")],
        )
        _, code, _ = await refusal(ws)
    assert code == 4001


async def test_the_token_is_checked_before_the_project_name(
    nursery: trio.Nursery, registry: Registry
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, registry, require_token=True)
        ws = await connect(nursery, server, "bad%0A")
        _, code, _ = await refusal(ws)
    assert code == 4001


async def test_the_token_in_the_query_is_accepted(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, registry, require_token=True)
        ws = await connect(nursery, server, token=TOKEN)
        assert (await receive(ws))["type"] == "hello"


async def test_the_token_in_the_cookie_is_accepted(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, registry, require_token=True)
        ws = await connect_websocket_url(
            nursery,
            ws_url(server, "/ws/projects/demo"),
            extra_headers=[(b"Cookie", f"theme=dark; trio_ws_token={TOKEN}".encode())],
        )
        assert (await receive(ws))["type"] == "hello"


async def test_no_token_is_needed_on_loopback_by_default(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    assert not server.config.subscribers_need_token
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await connect(nursery, server, token="wrong")
        assert (await receive(ws))["type"] == "hello"


# -- handshake: project name and registry (4000, 4004) ---------------------------------


@pytest.mark.parametrize(
    "raw_name",
    ["demo%0A", "%0Ademo", "%FF%FE", "%ZZ", "de%2Fmo", "de.mo", "demo%20", "a" * 51, ""],
    ids=[
        "trailing-newline",
        "leading-newline",
        "not-utf8",
        "bad-escape",
        "encoded-slash",
        "dot",
        "trailing-space",
        "51-chars",
        "empty",
    ],
)
async def test_an_invalid_project_name_is_4000(
    nursery: trio.Nursery, server: Server, project_dir: Path, raw_name: str
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await connect(nursery, server, raw_name)
        message, code, reason = await refusal(ws)
    assert message == {"type": "error", "content": "Invalid project name"}
    assert (code, reason) == (4000, "Invalid project name")
    assert server.manager.hubs == {}


async def test_a_50_char_name_is_valid_and_looked_up(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await connect(nursery, server, "a" * 50)
        message, code, _ = await refusal(ws)
    assert (message["content"], code) == ("Project not found in registry", 4004)


async def test_an_unregistered_project_is_4004(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await connect(nursery, server, "ghost")
        message, code, reason = await refusal(ws)
    assert message == {"type": "error", "content": "Project not found in registry"}
    assert (code, reason) == (4004, "Project not found in registry")
    assert server.manager.hubs == {}


async def test_a_project_whose_directory_is_gone_is_4004(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    shutil.rmtree(project_dir)
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await connect(nursery, server)
        message, code, reason = await refusal(ws)
    assert message == {"type": "error", "content": "Project directory not found"}
    assert (code, reason) == (4004, "Project directory not found")
    assert server.manager.hubs == {}


async def test_a_corrupt_registry_closes_a_subscriber_1011(
    nursery: trio.Nursery, server: Server, registry: Registry, project_dir: Path
) -> None:
    registry.path.write_bytes(b"this is not an sqlite database " * 64)
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await connect(nursery, server)
        with pytest.raises(ConnectionClosed) as caught:
            await ws.get_message()
    assert caught.value.reason is not None
    assert caught.value.reason.code == 1011


async def test_an_internal_failure_closes_a_subscriber_1011_and_the_server_keeps_serving(
    nursery: trio.Nursery,
    server: Server,
    project_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unexpected error is not a normal closure: 1011 lets the client retry later."""
    real_lookup = trio_ws.net.server._lookup
    calls: list[None] = []

    def failing_once(registry_path: Path, name: str) -> Any:
        calls.append(None)
        if len(calls) == 1:
            raise RuntimeError("lookup exploded")
        return real_lookup(registry_path, name)

    monkeypatch.setattr(trio_ws.net.server, "_lookup", failing_once)
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await connect(nursery, server)
        with pytest.raises(ConnectionClosed) as caught:
            await ws.get_message()
        again = await connect(nursery, server)
        assert (await receive(again))["type"] == "hello"
    assert caught.value.reason is not None
    assert caught.value.reason.code == 1011
    assert "lookup exploded" in caplog.text


# -- open projects: closed idle, bounded ---------------------------------------------


async def test_a_project_closed_idle_is_reopened_by_the_next_subscriber_resumed(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    config = make_config(registry, journal="sqlite", idle_close=0.2)
    with trio.fail_after(NETWORK_TIMEOUT):
        server: Server = await nursery.start(serve, config)
        ws = await connect(nursery, server, backlog=0)
        hello = await receive(ws)
        server.manager.projects["demo"].hub.feed_lines(["before the close"])
        while (event := await receive(ws))["type"] != "log":
            pass
        await ws.aclose()
        await settle(lambda: "demo" not in server.manager.projects)
        again = await connect(nursery, server, since=event["seq"], epoch=hello["epoch"])
        reopened = await receive(again)
        resumed = await receive(again)
    assert server.manager.closed_idle == 1
    assert (reopened["type"], reopened["epoch"], reopened["seq"]) == (
        "hello",
        hello["epoch"],
        event["seq"],
    )
    assert resumed == {"type": "resumed", "since": event["seq"], "seq": event["seq"]}


async def test_a_project_with_a_connected_producer_is_not_closed_idle(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    config = make_config(registry, journal="sqlite", idle_close=0.1)
    with trio.fail_after(NETWORK_TIMEOUT):
        server: Server = await nursery.start(serve, config)
        producer = await connect_websocket_url(
            nursery,
            ws_url(server, "/ws/projects/demo/publish"),
            extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())],
        )
        await producer.send_message('{"type":"hello","producer":"p","stream":"agent"}')
        assert (await receive(producer))["type"] == "welcome"
        project = server.manager.projects["demo"]
        await trio.sleep(0.5)  # five idle timeouts
        assert server.manager.projects == {"demo": project}
        await producer.aclose()
        await settle(lambda: "demo" not in server.manager.projects)
    assert server.manager.closed_idle == 1


async def test_a_project_beyond_max_projects_is_refused_1013_and_503(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "other").mkdir()
    registry.add("other", tmp_path / "other")
    with trio.fail_after(NETWORK_TIMEOUT):
        server: Server = await nursery.start(serve, make_config(registry, max_projects=1))
        watching = await connect(nursery, server)
        assert (await receive(watching))["type"] == "hello"
        refused = await connect(nursery, server, "other")
        message, code, reason = await refusal(refused)
        status, body = await http_json(server, "GET", "/api/projects/other/progress-history")
    limit = "the server has its limit of 1 open projects (--max-projects); try again later"
    assert message == {"type": "error", "content": limit}
    assert (code, reason) == (1013, limit)
    assert (status, body) == (503, {"detail": limit})
    assert list(server.manager.projects) == ["demo"]


# -- handshake: other refusals -------------------------------------------------------


async def test_an_upgrade_to_an_unknown_websocket_path_is_404(server: Server) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        status = await upgrade_status(server, "/ws/elsewhere")
    assert status == 404


async def test_an_upgrade_without_a_key_is_400(server: Server, project_dir: Path) -> None:
    data = http_request(
        "/ws/projects/demo",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        host=f"127.0.0.1:{server.port}",
    )
    with trio.fail_after(NETWORK_TIMEOUT):
        response = await exchange(server, data)
    assert status_of(response) == 400


async def test_a_rejected_upgrade_leaves_no_task_behind(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    """The handler must end with the refused connection, not at the handshake timeout."""
    data = http_request("/ws/projects/demo", "Upgrade: websocket", "Connection: Upgrade")
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, registry, handshake_timeout=10 * NETWORK_TIMEOUT)
        await trio.testing.wait_all_tasks_blocked()
        before = count_tasks()
        response = await exchange(server, data)
        assert status_of(response) == 400
        with trio.move_on_after(NETWORK_TIMEOUT / 3):
            await settle(lambda: count_tasks() == before)
    assert count_tasks() == before, "the refused connection's handler is still running"


# -- a successful subscribe -------------------------------------------------------------


async def test_hello_comes_first_and_names_protocol_project_epoch_seq_and_server(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    hub = (await server.manager.open("demo", project_dir)).hub
    hub.set_status("running")
    # What the empty project's poll reads, so no read can add an event before hello.
    hub.publish_progress(NO_PROGRESS)
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await connect(nursery, server)
        hello = await receive(ws)
    assert hello == {
        "type": "hello",
        "protocol": 1,
        "project": "demo",
        "epoch": hub.epoch,
        "seq": 2,  # the status, then the progress
        "server": f"trio-ws/{__version__}",
    }
    assert isinstance(hello["epoch"], str) and hello["epoch"]


# -- interop: the independent `websockets` client ------------------------------------------


def recv_json(ws: websockets.sync.client.ClientConnection) -> Msg:
    text = ws.recv(timeout=NETWORK_TIMEOUT)
    assert isinstance(text, str)
    decoded = json.loads(text)
    assert isinstance(decoded, dict)
    return decoded


def recv_until(
    ws: websockets.sync.client.ClientConnection, predicate: Callable[[Msg], bool]
) -> list[Msg]:
    seen: list[Msg] = []
    while not seen or not predicate(seen[-1]):
        seen.append(recv_json(ws))
        assert len(seen) < 100, seen
    return seen


async def test_websockets_client_subscribes_sees_live_events_and_gets_pong(
    server: Server, project_dir: Path
) -> None:
    url = ws_url(server, "/ws/projects/demo")

    def client() -> list[Msg]:
        with websockets.sync.client.connect(
            url, open_timeout=NETWORK_TIMEOUT, close_timeout=NETWORK_TIMEOUT
        ) as ws:
            seen = recv_until(ws, lambda m: m["type"] == "dev_server_status")
            hub = server.manager.get_hub("demo")
            assert hub is not None
            trio.from_thread.run_sync(hub.set_status, "running")
            seen += recv_until(ws, lambda m: m["type"] == "agent_status")
            ws.send(json.dumps({"type": "ping"}))
            seen += recv_until(ws, lambda m: m["type"] == "pong")
        return seen

    with trio.fail_after(NETWORK_TIMEOUT):
        seen = await trio.to_thread.run_sync(client, abandon_on_cancel=True)
    # progress (from the poll loop) and warnings may interleave; the rest is fixed.
    kinds = [m["type"] for m in seen if m["type"] not in ("progress", "warning")]
    assert kinds == ["hello", "agent_status", "dev_server_status", "agent_status", "pong"]
    assert seen[0]["project"] == "demo"
    live = [m for m in seen if m["type"] == "agent_status"][-1]
    assert live["status"] == "running"
    seqs = [m["seq"] for m in seen[1:] if "seq" in m]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert live["seq"] > seen[0]["seq"]


async def test_websockets_client_reads_a_4004_refusal(server: Server, project_dir: Path) -> None:
    url = ws_url(server, "/ws/projects/ghost")

    def client() -> tuple[Msg, int, str]:
        with websockets.sync.client.connect(
            url, open_timeout=NETWORK_TIMEOUT, close_timeout=NETWORK_TIMEOUT
        ) as ws:
            message = recv_json(ws)
            with pytest.raises(websockets.exceptions.ConnectionClosed) as caught:
                ws.recv(timeout=NETWORK_TIMEOUT)
        close = caught.value.rcvd
        assert close is not None
        return message, close.code, close.reason

    with trio.fail_after(NETWORK_TIMEOUT):
        message, code, reason = await trio.to_thread.run_sync(client, abandon_on_cancel=True)
    assert message == {"type": "error", "content": "Project not found in registry"}
    assert (code, reason) == (4004, "Project not found in registry")


# -- no leaks ---------------------------------------------------------------------------


async def test_many_connect_disconnect_cycles_leave_nothing_behind(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    cycles = 500
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await connect(nursery, server)
        await receive(ws)
        await ws.aclose()
        hub = server.manager.get_hub("demo")
        assert hub is not None

        def idle() -> bool:
            return (
                hub.subscriber_count == 0
                and hub.stats.send_tasks == 0
                and server.manager.poll.running == 0
                and not server.manager._sessions
            )

        await settle(idle)
        await trio.testing.wait_all_tasks_blocked()
        tasks_before = count_tasks()
        for _ in range(cycles):
            ws = await connect(nursery, server)
            assert (await receive(ws))["type"] == "hello"
            await ws.aclose()
        await settle(idle, lambda: count_tasks() == tasks_before)
    assert server.manager.hubs.keys() == {"demo"}
    assert hub.subscriber_count == 0
    assert hub.stats.send_tasks == 0
    assert server.manager.poll.running == 0


# -- tokens stay out of the logs ------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        f"GET /ws/projects/demo?token={TOKEN} HTTP/1.1 junk\r\nHost: x\r\n\r\n".encode(),
        f"GET /ws/projects/demo?t={TOKEN} HTTP/1.1 junk\r\nHost: x\r\n\r\n".encode(),
        f"GET / HTTP/1.1\r\nHost: x\r\nCookie trio_ws_token={TOKEN}\r\n\r\n".encode(),
        f"GET / HTTP/1.1\r\nHost: x\r\nAuthorization Bearer {TOKEN}\r\n\r\n".encode(),
    ],
    ids=["query-token", "other-query-key", "cookie-line", "authorization-line"],
)
async def test_a_bad_request_carrying_the_token_does_not_log_it(
    server: Server, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        response = await exchange(server, data)
    assert status_of(response) == 400
    assert "bad request" in caplog.text
    assert TOKEN not in caplog.text


# -- Host check against DNS rebinding (PROTOCOL.md 1) ---------------------------------

REBIND = "rebind.evil.example"


@pytest.mark.parametrize("path", ["/api/projects", "/healthz", "/metrics", "/", "/nowhere"])
async def test_a_foreign_host_is_403_over_http(
    server: Server, project_dir: Path, path: str
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        response = await exchange(server, http_request(path, host=f"{REBIND}:{server.port}"))
    assert status_of(response) == 403
    assert project_dir.as_posix().encode() not in response


async def test_a_foreign_host_is_403_before_the_websocket_upgrade(
    server: Server, project_dir: Path
) -> None:
    host = f"{REBIND}:{server.port}"
    with trio.fail_after(NETWORK_TIMEOUT):
        status = await upgrade_status(
            server, "/ws/projects/demo", f"Origin: http://{host}", host=host
        )
    assert status == 403
    assert server.manager.get_hub("demo") is None


@pytest.mark.parametrize(
    "host",
    ["localhost", "LOCALHOST:{port}", "127.0.0.1:{port}", "[::1]:{port}", "[::1]", "localhost:1"],
)
async def test_loopback_host_names_with_any_port_are_served(server: Server, host: str) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        response = await exchange(
            server, http_request("/healthz", host=host.format(port=server.port))
        )
    assert status_of(response) == 200


@pytest.mark.parametrize(
    "host",
    [
        "localhost.{rebind}",
        "127.0.0.1.{rebind}",
        "{rebind}@127.0.0.1",
        "127.0.0.1/{rebind}",
        "localhost:notaport",
        "[::1",
        "",
    ],
)
async def test_lookalike_or_malformed_hosts_are_refused(server: Server, host: str) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        response = await exchange(server, http_request("/healthz", host=host.format(rebind=REBIND)))
    assert status_of(response) in (400, 403)  # h11 answers some malformed ones itself (400)
    assert b'"status":"ok"' not in response


async def test_an_http_1_0_request_without_host_is_served(server: Server) -> None:
    """HTTP/1.0 may omit Host (RFC 9112 3.2 requires it of HTTP/1.1 only); with no name
    there is nothing to rebind."""
    with trio.fail_after(NETWORK_TIMEOUT):
        response = await exchange(server, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert status_of(response) == 200
    assert b'"status":"ok"' in response


async def test_an_http_1_1_request_without_host_is_400(server: Server) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        response = await exchange(server, b"GET /healthz HTTP/1.1\r\n\r\n")
    assert status_of(response) == 400


async def test_two_host_headers_are_400(server: Server) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        response = await exchange(
            server, http_request("/api/projects", f"Host: {REBIND}", host="127.0.0.1")
        )
    assert status_of(response) == 400


async def test_an_allow_host_entry_is_served_over_http_and_websocket(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, registry, allow_hosts=frozenset({REBIND}))
        host = f"{REBIND}:{server.port}"
        response = await exchange(server, http_request("/api/projects", host=host))
        status = await upgrade_status(
            server, "/ws/projects/demo", f"Origin: http://{host}", host=host
        )
        other = await exchange(
            server, http_request("/healthz", host=f"other.example:{server.port}")
        )
    assert status_of(response) == 200
    assert project_dir.as_posix().encode() in response
    assert status == 101
    assert status_of(other) == 403


async def test_an_allow_host_entry_with_a_port_allows_only_that_port(
    nursery: trio.Nursery, registry: Registry
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, registry, allow_hosts=frozenset({f"{REBIND}:8080"}))
        listed = await exchange(server, http_request("/healthz", host=f"{REBIND}:8080"))
        other = await exchange(server, http_request("/healthz", host=f"{REBIND}:8081"))
    assert (status_of(listed), status_of(other)) == (200, 403)


# -- /api/projects needs the token whenever subscribers do (PROTOCOL.md 1, 6) -------------


@pytest.mark.parametrize(
    "headers",
    [
        (),
        ("Authorization: Bearer wrong",),
        ("Cookie: trio_ws_token=wrong",),
        (f"X-Token: {TOKEN}",),
    ],
    ids=["none", "wrong-bearer", "wrong-cookie", "other-header"],
)
async def test_api_projects_without_the_token_is_401_when_subscribers_need_it(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, headers: tuple[str, ...]
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, registry, require_token=True)
        response = await exchange(
            server, http_request("/api/projects?token=wrong", *headers, host="127.0.0.1")
        )
    head, _, body = response.partition(b"\r\n\r\n")
    assert status_of(response) == 401
    assert b"content-type: application/json" in head
    assert json_body(body) == {"error": "Unauthorized"}
    assert project_dir.as_posix().encode() not in response


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/api/projects", (f"Authorization: Bearer {TOKEN}",)),
        ("/api/projects", (f"Cookie: theme=dark; trio_ws_token={TOKEN}",)),
        (f"/api/projects?token={TOKEN}", ()),
    ],
    ids=["bearer", "cookie", "query"],
)
async def test_api_projects_with_the_token_is_served_when_subscribers_need_it(
    nursery: trio.Nursery,
    registry: Registry,
    project_dir: Path,
    path: str,
    headers: tuple[str, ...],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, registry, require_token=True)
        response = await exchange(server, http_request(path, *headers))
    _, _, body = response.partition(b"\r\n\r\n")
    assert status_of(response) == 200
    assert [project["name"] for project in json_body(body)] == ["demo"]
    assert TOKEN not in caplog.text


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
async def test_healthz_and_metrics_stay_open_when_a_token_is_required(
    nursery: trio.Nursery, registry: Registry, path: str
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, registry, require_token=True)
        status, _, _ = await http_get(server, path)
    assert status == 200


# -- control only from the server's own origin (PROTOCOL.md 3.4) --------------------------


async def agent_producer(nursery: trio.Nursery, server: Server) -> WebSocketConnection:
    """An agent producer of ``demo`` that has reported ``running`` (and had it acked)."""
    ws = await connect_websocket_url(
        nursery,
        ws_url(server, "/ws/projects/demo/publish"),
        extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())],
    )
    await ws.send_message(json.dumps({"type": "hello", "producer": "p", "stream": "agent"}))
    assert (await receive(ws))["type"] == "welcome"
    await ws.send_message(json.dumps({"type": "status", "pseq": 1, "status": "running"}))
    while (await receive(ws)) != {"type": "ack", "pseq": 1}:
        pass
    return ws


async def browser(nursery: trio.Nursery, server: Server, origin: str) -> WebSocketConnection:
    """A page of ``origin`` holding the dashboard's cookie (cookies ignore ports)."""
    ws = await connect_websocket_url(
        nursery,
        ws_url(server, "/ws/projects/demo"),
        extra_headers=[
            (b"Origin", origin.encode()),
            (b"Cookie", f"trio_ws_token={TOKEN}".encode()),
        ],
    )
    assert (await receive(ws))["type"] == "hello"
    return ws


async def control_replies(ws: WebSocketConnection, action: str) -> list[Msg]:
    """What the subscriber is told after sending ``control`` (up to the pong that follows)."""
    await ws.send_message(json.dumps({"type": "control", "action": action}))
    await ws.send_message(json.dumps({"type": "ping"}))
    seen: list[Msg] = []
    while not seen or seen[-1]["type"] != "pong":
        seen.append(await receive(ws))
    return seen


async def test_control_from_another_local_origin_is_refused_and_it_still_watches(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        producer = await agent_producer(nursery, server)
        page = await browser(nursery, server, "http://localhost:3000")
        replies = await control_replies(page, "stop")
        own = await browser(nursery, server, f"http://127.0.0.1:{server.port}")
        await control_replies(own, "pause")
        received = await receive(producer)
        hub = server.manager.get_hub("demo")
        assert hub is not None
        hub.set_status("running", stream="dev")
        live = await receive(page)
    [warning] = [m for m in replies if m["type"] == "warning"]
    assert warning["source"] == "control"
    assert "origin" in warning["content"]
    # The refused stop never reached the producer: the first control it got is the pause.
    assert received == {"type": "control", "action": "pause"}
    assert (live["type"], live["status"]) == ("dev_server_status", "running")


@pytest.mark.parametrize(
    ("origin", "allow"),
    [
        ("http://127.0.0.1:{port}", frozenset[str]()),
        ("http://localhost:3000", frozenset({"http://localhost:3000"})),
    ],
    ids=["own-origin", "allow-origin"],
)
async def test_control_from_the_own_or_a_listed_origin_is_forwarded(
    nursery: trio.Nursery,
    registry: Registry,
    project_dir: Path,
    origin: str,
    allow: frozenset[str],
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await start(nursery, registry, allow_origins=allow)
        producer = await agent_producer(nursery, server)
        page = await browser(nursery, server, origin.format(port=server.port))
        replies = await control_replies(page, "stop")
        received = await receive(producer)
    assert [m for m in replies if m["type"] == "warning"] == []
    assert received == {"type": "control", "action": "stop"}


# -- hostile query values: always hello, never 1011 (PROTOCOL.md 3) ------------------------


async def first_messages(nursery: trio.Nursery, server: Server, query: str) -> list[Msg]:
    """hello and what follows it, up to the pong answering a ping sent right away."""
    ws = await connect_websocket(
        nursery, "127.0.0.1", server.port, f"/ws/projects/demo?{query}", use_ssl=False
    )
    await ws.send_message(json.dumps({"type": "ping"}))
    seen = [await receive(ws)]
    while seen[-1]["type"] != "pong":
        seen.append(await receive(ws))
    await ws.aclose()
    return seen


HUGE = "9" * 5000


@pytest.mark.parametrize(
    "query",
    [
        f"since={HUGE}",
        f"since={HUGE}&epoch=x",
        "since=99999999999999999999",
        "since=%D9%A3",  # ARABIC-INDIC DIGIT THREE: int() reads it
        "since=%F0%9F%92%A9",
        "since=%FF%FE",
        "since=%00",
        "since=1_0",
        "since=%201",
        "since=-1",
        "since=1e3",
        "since=0x10",
        "since=%ZZ",
        "since=1&since=junk",
    ],
)
async def test_a_hostile_since_gets_hello_then_resync_invalid_since(
    nursery: trio.Nursery, server: Server, project_dir: Path, query: str
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        seen = await first_messages(nursery, server, query)
    assert seen[0]["type"] == "hello"
    assert (seen[1]["type"], seen[1]["reason"]) == ("resync", "invalid_since")


async def test_a_since_with_thousands_of_leading_zeros_is_read_as_its_number(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    epoch = ((await server.manager.open("demo", project_dir)).hub).epoch
    with trio.fail_after(NETWORK_TIMEOUT):
        seen = await first_messages(nursery, server, f"since={'0' * 5000}&epoch={epoch}")
    assert seen[0]["type"] == "hello"
    assert (seen[1]["type"], seen[1]["since"]) == ("resumed", 0)


@pytest.mark.parametrize(
    "query",
    [
        f"backlog={HUGE}",
        "backlog=-5",
        "backlog=%D9%A3",
        "backlog=%FF",
        "backlog=1&backlog=x&backlog=" + HUGE,
        f"epoch={HUGE}",
        "epoch=%FF%00%F0%9F%92%A9",
        "epoch=a&epoch=b",
        f"token={HUGE}",
        "token=%FF%FE%00",
        "token=%F0%9F%92%A9",
        f"token={TOKEN}&token=",
        "token=a&token=b&" + "&".join(f"k{i}=%FF" for i in range(500)),
        "=&&=x&%ZZ=%ZZ&since",
    ],
)
async def test_hostile_backlog_epoch_and_token_values_get_hello_and_a_snapshot(
    nursery: trio.Nursery, server: Server, project_dir: Path, query: str
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        seen = await first_messages(nursery, server, query)
    assert seen[0]["type"] == "hello"
    assert [m["type"] for m in seen[1:3]] == ["agent_status", "dev_server_status"]


_QUERY_PIECES = st.sampled_from(
    [
        *("since", "epoch", "backlog", "token", "=", "&", "%", "%FF", "%00", "%2B", "+"),
        *("0", "1", "-", "_", HUGE, "%D9%A3", "%F0%9F%92%A9", ";", "x", "%ZZ", "%26"),
    ]
)
_QUERIES = (
    st.lists(_QUERY_PIECES, max_size=12)
    .map("".join)
    .filter(lambda query: len(query) < 12_000)  # a head over 16 KiB is a 431, tested elsewhere
)


async def test_any_query_string_gets_hello_and_never_1011(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    """Whatever the query, the client is greeted and answered; an invalid ``since`` is
    told ``resync invalid_since``. Hypothesis runs in a worker thread with the sync
    ``websockets`` client, so the one server serves every example."""
    url = ws_url(server, "/ws/projects/demo")

    @settings(max_examples=40, deadline=None, database=None)
    @given(_QUERIES)
    def check(query: str) -> None:
        with websockets.sync.client.connect(
            f"{url}?{query}", open_timeout=NETWORK_TIMEOUT, close_timeout=NETWORK_TIMEOUT
        ) as ws:
            ws.send(json.dumps({"type": "ping"}))
            seen = recv_until(ws, lambda m: m["type"] == "pong")
        assert seen[0]["type"] == "hello"
        since = parse_qs(query).get("since", [None])[-1]
        if since is not None and not (since.isascii() and since.isdigit()):
            assert (seen[1]["type"], seen[1]["reason"]) == ("resync", "invalid_since")

    with trio.fail_after(NETWORK_TIMEOUT * 4):
        await trio.to_thread.run_sync(check, abandon_on_cancel=True)


# -- shutdown -------------------------------------------------------------------


async def test_shutdown_stops_accepting_before_it_closes_connections(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    """While shutdown waits for slow peers to close, no new connection is served."""
    with trio.fail_after(NETWORK_TIMEOUT):
        slow = await RawClient.connect(server.port, "/ws/projects/demo")
        await slow.message("hello")
        nursery.start_soon(server.shutdown, 1001, 5.0)
        assert await slow.close_code() == 1001  # shutdown is under way; slow never replies
        with pytest.raises(OSError):
            await http_get(server, "/healthz")


async def test_shutdown_closes_producers_with_1001(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await connect_websocket_url(
            nursery,
            ws_url(server, "/ws/projects/demo/publish"),
            extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())],
        )
        await ws.send_message(json.dumps({"type": "hello", "producer": "p", "stream": "dev"}))
        assert (await receive(ws))["type"] == "welcome"
        await server.shutdown(1001)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.get_message()
    assert closed.value.reason is not None and closed.value.reason.code == 1001
