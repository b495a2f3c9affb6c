"""The access log (issue 23 item 3): one line per HTTP request and per websocket
session, through the real server on 127.0.0.1, and never the token."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from serving import NETWORK_TIMEOUT, TOKEN, connect, http_get, make_config, receive
from trio_websocket import ConnectionClosed

from trio_ws.data.registry import Registry
from trio_ws.net.access_log import _project_named
from trio_ws.net.server import Server, serve


@pytest.fixture(autouse=True)
def server_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    with caplog.at_level(logging.INFO, logger="trio_ws"):
        yield


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "trio_ws.net.access"]


class AccessSeen(logging.Handler):
    """Wakes a test once the server said as many access lines as it waits for."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.changed = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        self.changed.set()
        self.changed = trio.Event()


@pytest.fixture
def access_seen() -> Iterator[AccessSeen]:
    handler = AccessSeen()
    logger = logging.getLogger("trio_ws.net.access")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


async def wait_for_access(
    caplog: pytest.LogCaptureFixture, seen: AccessSeen, count: int
) -> list[logging.LogRecord]:
    while seen.count < count:
        await seen.changed.wait()
    return access_lines(caplog)


def every_logged_text(caplog: pytest.LogCaptureFixture) -> str:
    """Each record as text and as a JSON line, fields and all."""
    from trio_ws.runtime.log_format import JsonFormatter

    formatter = JsonFormatter()
    return "\n".join(
        f"{record.getMessage()} {formatter.format(record)}" for record in caplog.records
    )


async def test_an_http_request_is_one_access_line_without_the_query_or_the_token(
    server: Server, project_dir: Path, caplog: pytest.LogCaptureFixture, access_seen: AccessSeen
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        status, _, _ = await http_get(
            server,
            f"/api/projects?token={TOKEN}&x=1",
            headers={"Authorization": f"Bearer {TOKEN}", "Cookie": f"trio_ws_token={TOKEN}"},
        )
        await http_get(server, "/nowhere")
        first, second = await wait_for_access(caplog, access_seen, 2)
    assert status == 200
    assert first.levelno == logging.INFO
    fields = {key: getattr(first, key) for key in ("method", "path", "status", "websocket")}
    assert fields == {"method": "GET", "path": "/api/projects", "status": 200, "websocket": False}
    assert first.client.startswith("127.0.0.1:")  # type: ignore[attr-defined]
    assert 0 <= first.duration_ms < NETWORK_TIMEOUT * 1000  # type: ignore[attr-defined]
    assert first.getMessage().startswith("GET /api/projects 200 ")
    assert (second.path, second.status) == ("/nowhere", 404)  # type: ignore[attr-defined]
    assert TOKEN not in every_logged_text(caplog)


async def test_a_websocket_session_is_one_access_line_with_its_close_code(
    nursery: trio.Nursery,
    registry: Registry,
    project_dir: Path,
    caplog: pytest.LogCaptureFixture,
    access_seen: AccessSeen,
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await nursery.start(serve, make_config(registry, require_token=True))
        ws = await connect(nursery, server, token=TOKEN)
        assert (await receive(ws))["type"] == "hello"
        await ws.aclose(1000)
        refused = await connect(nursery, server, project="nope", token=TOKEN)
        with pytest.raises(ConnectionClosed):
            while True:
                await refused.get_message()
        lines = await wait_for_access(caplog, access_seen, 2)
    by_path = {line.path: line for line in lines}  # type: ignore[attr-defined]
    session, missing = by_path["/ws/projects/demo"], by_path["/ws/projects/nope"]
    assert (session.path, session.status, session.websocket) == (  # type: ignore[attr-defined]
        "/ws/projects/demo",
        1000,
        True,
    )
    assert session.project == "demo"  # type: ignore[attr-defined]
    assert (missing.path, missing.status) == ("/ws/projects/nope", 4004)  # type: ignore[attr-defined]
    assert TOKEN not in every_logged_text(caplog)


@pytest.mark.parametrize(
    ("path", "project"),
    [
        ("/ws/projects/todo", "todo"),
        ("/ws/projects/todo/publish", "todo"),
        ("/api/projects/to%2Ddo/runs", "to-do"),
        ("/projects/todo", "todo"),
        ("/api/projects", None),
        ("/healthz", None),
        ("/projects/%ff", None),
    ],
)
def test_the_line_names_the_project_its_path_names(path: str, project: str | None) -> None:
    assert _project_named(path) == project
