"""The dashboard over real HTTP: pages, static files, security headers, the token cookie."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
import trio
from serving import NETWORK_TIMEOUT, TOKEN, http_get, make_config, receive
from trio_websocket import connect_websocket_url

from trio_ws.data.registry import Registry
from trio_ws.net.dashboard import SCRIPT_MODULES, session_cookie
from trio_ws.net.server import Server, serve

PAGE_PATHS = ["/", "/projects/demo", "/projects/demo/runs", "/projects/demo/runs/e1-1"]


def control_meta(body: bytes) -> str:
    found: list[bytes] = re.findall(rb'<meta name="trio-ws-control" content="([^"]*)">', body)
    assert len(found) == 1, body[:400]
    return found[0].decode()


@pytest.mark.parametrize("path", PAGE_PATHS)
async def test_page_paths_serve_the_html_page(server: Server, project_dir: Path, path: str) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        status, headers, body = await http_get(server, path)
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert b'<script type="module" src="/static/js/main.js"></script>' in body


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/projects/not-registered", "Project not found in registry"),
        ("/projects/bad%20name", "Project not found in registry"),
        ("/projects/not-registered/runs", "Project not found in registry"),
        ("/projects/not-registered/runs/e1-1", "Project not found in registry"),
    ],
)
async def test_the_page_of_a_project_this_server_lacks_is_a_clear_404(
    server: Server, project_dir: Path, path: str, says: str
) -> None:
    """Not an empty dashboard waiting forever: what is missing and how to add it."""
    with trio.fail_after(NETWORK_TIMEOUT):
        status, headers, body = await http_get(server, path)
    assert (status, headers["content-type"]) == (404, "text/html; charset=utf-8")
    assert says.encode() in body and b"trio-ws projects add" in body


async def test_the_page_of_a_project_whose_directory_is_gone_says_so(
    server: Server, project_dir: Path
) -> None:
    await trio.to_thread.run_sync(project_dir.rmdir)
    with trio.fail_after(NETWORK_TIMEOUT):
        status, _, body = await http_get(server, "/projects/demo")
    assert status == 404 and b"Project directory not found" in body


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("js/main.js", "text/javascript; charset=utf-8"),
        ("js/board.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ],
)
async def test_static_files_are_served_with_their_types(
    server: Server, name: str, content_type: str
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        status, headers, body = await http_get(server, f"/static/{name}")
    assert status == 200
    assert headers["content-type"] == content_type
    static = resources.files("trio_ws.net") / "static"
    assert body == static.joinpath(*name.split("/")).read_bytes()


@pytest.mark.parametrize("path", ["/", "/projects/demo", "/static/js/main.js", "/static/nope.js"])
async def test_dashboard_responses_carry_the_security_headers(server: Server, path: str) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        _, headers, _ = await http_get(server, path)
    assert headers["content-security-policy"] == (
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
        "style-src 'self'; script-src 'self'"
    )
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize(
    "path",
    [
        "/static/nope.js",
        "/static/",
        "/static/index.html",
        "/static/../dashboard.py",
        "/static/%2e%2e/server.py",
        "/static/..%2fserver.py",
        "/static//etc/passwd",
        "/static/js/main.js/",
        "/static/static/js/main.js",
        "/static/js/",
        "/static/js/../style.css",
        "/static/main.js",
        "/static/app.js",
        "/projects/",
        "/projects/demo/extra",
        "/projects/demo/runs/",
        "/projects/demo/runs/e1-1/more",
        "/projects/demo/run/e1-1",
    ],
)
async def test_other_dashboard_paths_are_not_found(server: Server, path: str) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        status, headers, body = await http_get(server, path)
    assert (status, body) == (404, b"not found\n")
    assert headers["content-type"] == "text/plain; charset=utf-8"


def test_every_script_module_is_served() -> None:
    """A module the page imports but the server does not list would fail in the browser."""
    folder = Path(str(resources.files("trio_ws.net") / "static" / "js"))
    assert sorted(path.name for path in folder.glob("*.js")) == sorted(SCRIPT_MODULES)


def test_script_modules_import_only_listed_modules() -> None:
    folder = Path(str(resources.files("trio_ws.net") / "static" / "js"))
    for path in folder.glob("*.js"):
        for imported in re.findall(r'^import .* from "\./([^"]+)";$', path.read_text(), re.M):
            assert imported in SCRIPT_MODULES, (path.name, imported)


async def test_page_holds_no_inline_script_or_style(server: Server) -> None:
    """The CSP forbids inline code; a page that relied on it would break in the browser."""
    with trio.fail_after(NETWORK_TIMEOUT):
        _, _, body = await http_get(server, "/")
    page = body.decode()
    entry = '<script type="module" src="/static/js/main.js">'
    assert re.findall(r"<script\b[^>]*>", page) == [entry]
    assert re.search(r"\son[a-z]+\s*=", page) is None
    assert re.search(r"\sstyle\s*=|<style\b", page) is None
    assert "__TRIO_WS_" not in page


async def test_page_without_token_offers_no_control(server: Server) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        _, headers, body = await http_get(server, "/projects/demo")
    assert control_meta(body) == "off"
    assert "set-cookie" not in headers


async def test_valid_token_in_query_sets_an_http_only_cookie(server: Server) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        _, headers, body = await http_get(server, f"/projects/demo?token={TOKEN}")
    assert headers["set-cookie"] == f"trio_ws_token={TOKEN}; HttpOnly; SameSite=Strict; Path=/"
    assert control_meta(body) == "on"


async def test_wrong_token_in_query_sets_no_cookie(server: Server) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        _, headers, body = await http_get(server, "/projects/demo?token=guess")
    assert "set-cookie" not in headers
    assert control_meta(body) == "rejected"


@pytest.mark.parametrize(("cookie", "control"), [(TOKEN, "on"), ("guess", "off"), ("", "off")])
async def test_token_cookie_decides_control(server: Server, cookie: str, control: str) -> None:
    headers = {"Cookie": f"theme=dark; trio_ws_token={cookie}"}
    with trio.fail_after(NETWORK_TIMEOUT):
        _, answer, body = await http_get(server, "/", headers)
    assert control_meta(body) == control
    assert "set-cookie" not in answer


async def test_token_a_cookie_cannot_carry_is_not_set(
    nursery: trio.Nursery, registry: Registry
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server: Server = await nursery.start(serve, make_config(registry, token="a;b c"))
        _, headers, body = await http_get(server, "/?token=a%3Bb%20c")
    assert "set-cookie" not in headers
    assert control_meta(body) == "uncookieable"


def test_session_cookie_refuses_a_token_that_would_break_the_header() -> None:
    with pytest.raises(ValueError, match="cannot carry"):
        session_cookie("x; Domain=evil.example")


async def test_cookie_set_by_the_page_authorizes_the_websocket(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    """On a server that requires the token, the page's cookie is what lets the socket in."""
    with trio.fail_after(NETWORK_TIMEOUT):
        server: Server = await nursery.start(serve, make_config(registry, require_token=True))
        _, headers, _ = await http_get(server, f"/projects/demo?token={TOKEN}")
        cookie = headers["set-cookie"].split(";", 1)[0]
        ws = await connect_websocket_url(
            nursery,
            f"ws://127.0.0.1:{server.port}/ws/projects/demo",
            extra_headers=[(b"cookie", cookie.encode())],
        )
        assert (await receive(ws))["type"] == "hello"
