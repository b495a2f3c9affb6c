"""Helpers for tests that talk to the real server over 127.0.0.1."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from trio_websocket import WebSocketConnection, connect_websocket_url

from trio_ws.data.registry import Registry
from trio_ws.net.config import ServerConfig
from trio_ws.net.server import Server

TOKEN = "test-token-not-secret"
NETWORK_TIMEOUT = 15
TRIO_WS = str(Path(sys.executable).parent / "trio-ws")
"""The installed command, for tests that run it as a real subprocess."""
SERVE_URL = re.compile(r"serving ((https?)://127\.0\.0\.1:(\d+)/\S*)")
"""The URL line `trio-ws serve` prints first: the URL, its scheme and its port."""


def make_config(registry: Registry, **overrides: Any) -> ServerConfig:
    settings: dict[str, Any] = {
        "registry_path": registry.path,
        "token": TOKEN,
        "host": "127.0.0.1",
        "port": 0,
        "poll_interval": 0.05,
        "journal": "memory",  # the journal is not the point of most tests: keep them fast
    }
    settings.update(overrides)
    return ServerConfig(**settings)


def ws_url(server: Server, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


async def connect(
    nursery: trio.Nursery, server: Server, project: str = "demo", **query: Any
) -> WebSocketConnection:
    """A subscriber connection to ``project`` with the given query parameters."""
    params = "&".join(f"{key}={value}" for key, value in query.items())
    path = f"/ws/projects/{project}" + (f"?{params}" if params else "")
    return await connect_websocket_url(nursery, ws_url(server, path))


async def receive(ws: WebSocketConnection) -> dict[str, Any]:
    message = await ws.get_message()
    assert isinstance(message, str)
    decoded = json.loads(message)
    assert isinstance(decoded, dict)
    return decoded


async def receive_until(
    ws: WebSocketConnection, predicate: Any, limit: int = 10_000
) -> list[dict[str, Any]]:
    """Messages up to and including the first one matching ``predicate``."""
    seen: list[dict[str, Any]] = []
    for _ in range(limit):
        message = await receive(ws)
        seen.append(message)
        if predicate(message):
            return seen
    raise AssertionError(f"no matching message in {limit}")


async def http_get(
    server: Server, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP/1.1 GET over a real socket; returns status, headers and body."""
    return await http_request(server, "GET", path, headers)


async def http_json(
    server: Server | int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, Any]:
    """``http_request`` with the body decoded as JSON."""
    status, _, raw = await http_request(server, method, path, headers, body)
    return status, json.loads(raw)


async def http_request(
    server: Server | int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP/1.1 request over a real socket to ``server`` (or a port on 127.0.0.1:
    a proxy), with ``Content-Length`` when it has a body; status, headers and body."""
    port = server if isinstance(server, int) else server.port
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        lines += [f"{key}: {value}" for key, value in (headers or {}).items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, received = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    parsed = {}
    for line in header_lines:
        key, _, value = line.partition(":")
        parsed[key.strip().lower()] = value.strip()
    return status, parsed, received


async def first_line(process: trio.Process) -> str:
    """What a `trio-ws serve` subprocess printed up to its first newline (its URL)."""
    assert process.stdout is not None
    printed = b""
    while b"\n" not in printed:
        chunk = await process.stdout.receive_some(4096)
        assert chunk, "serve exited before printing its URL"
        printed += chunk
    return printed.decode()


@asynccontextmanager
async def serve_subprocess(
    home: Path, *extra: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[trio.Process, int, str]]:
    """`trio-ws serve --home HOME --port 0 EXTRA...` as a real subprocess (in ``env``,
    else ours); yields the process, its port and the URL it printed: https with
    ``--certfile``, else http. Killed at the end if it still runs."""
    process = await trio.lowlevel.open_process(
        [TRIO_WS, "serve", "--home", str(home), "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        printed = await first_line(process)
        match = SERVE_URL.search(printed)
        assert match, printed
        assert match.group(2) == ("https" if "--certfile" in extra else "http"), printed
        yield process, int(match.group(3)), match.group(1)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
