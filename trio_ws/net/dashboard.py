"""The dashboard page: one HTML shell, its script modules, style and icon, from package data.

Pure apart from reading the package data once (`load_assets`): a request's
path, query and token cookie go in, a `Response` comes out, so the server
only has to write it. The same HTML serves ``/`` (the overview of every
project, live over ``/ws/overview``), ``/projects/{name}``, its runs
``/projects/{name}/runs`` and a run's replay ``/projects/{name}/runs/{id}``; the
script routes on ``location.pathname``.

The page's scripts are all external (``script-src 'self'``), so the only
thing rendered into the HTML per request is data: a ``<meta>`` tag telling
the script whether this page may send control messages. It says ``on`` only
after the offered token (``?token=`` or the ``trio_ws_token`` cookie) matched
the server's token; ``rejected`` for a wrong ``?token=``, ``uncookieable`` for
a right one that a cookie cannot carry (``;``, spaces, quotes...). A valid
``?token=`` is also answered with an ``HttpOnly; SameSite=Strict`` cookie, so
the websocket handshake carries it and the page can drop the token from its
URL.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Final

from trio_ws import __version__
from trio_ws.core.security import token_matches
from trio_ws.net.access import TOKEN_COOKIE

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'"
)
SECURITY_HEADERS: Final = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("referrer-policy", "no-referrer"),
)
"""Sent with every dashboard response (``nosniff`` is added by the HTTP layer)."""

PAGE_FILE: Final = "index.html"
SCRIPT_TYPE: Final = "text/javascript; charset=utf-8"
SCRIPT_MODULES: Final = (
    "main.js",
    "dom.js",
    "banners.js",
    "token.js",
    "overview.js",
    "notify.js",
    "runs.js",
    "replay.js",
    "state.js",
    "messages.js",
    "connection.js",
    "status.js",
    "agents.js",
    "shots.js",
    "board.js",
    "chart.js",
    "log.js",
)
"""The page's ES modules in ``static/js/``, one per panel or concern; ``main.js`` is the
entry the page loads with ``<script type="module">``, which imports the rest. Served
as they are: no build step."""
STATIC_TYPES: Final = {
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
    **{f"js/{name}": SCRIPT_TYPE for name in SCRIPT_MODULES},
}
"""The files served under ``/static/``; nothing else is, whatever the path says."""

HTML_TYPE: Final = "text/html; charset=utf-8"
TEXT_TYPE: Final = "text/plain; charset=utf-8"

CONTROL_MARKER: Final = "__TRIO_WS_CONTROL__"
VERSION_MARKER: Final = "__TRIO_WS_VERSION__"

_PROJECT_PAGE: Final = re.compile(r"/projects/(?P<name>[^/]+)(?:/runs(?:/[^/]+)?)?")
"""A project's live view, its runs (``/runs``) and one run's replay (``/runs/{id}``)."""
_COOKIE_VALUE: Final = re.compile(r"[\x21\x23-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]+")
"""RFC 6265 cookie-octets: a token with anything else cannot travel in a cookie."""


class DashboardError(Exception):
    """The package data of the dashboard is missing or malformed."""


@dataclass(frozen=True)
class Response:
    """One HTTP answer: status, content type, body and headers beyond the usual ones."""

    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Assets:
    """The dashboard's files, read once: the page template and the static files."""

    page: str
    static: Mapping[str, bytes]


@functools.cache
def load_assets() -> Assets:
    """Read ``trio_ws/net/static`` once; raises `DashboardError` naming what is missing."""
    folder = resources.files("trio_ws.net") / "static"
    try:
        page = (folder / PAGE_FILE).read_text(encoding="utf-8")
        static = {name: folder.joinpath(*name.split("/")).read_bytes() for name in STATIC_TYPES}
    except FileNotFoundError as exc:
        raise DashboardError(f"dashboard file missing from trio_ws/net/static: {exc}") from None
    for marker in (CONTROL_MARKER, VERSION_MARKER):
        if page.count(marker) != 1:
            raise DashboardError(f"trio_ws/net/static/{PAGE_FILE} must hold {marker} exactly once")
    return Assets(page, static)


def respond(
    path: str,
    query: Mapping[str, str],
    cookie_token: str | None,
    server_token: str,
    assets: Assets | None = None,
) -> Response:
    """The answer to ``GET path`` for the dashboard's paths; 404 for anything else.

    ``query`` is the request's decoded query, ``cookie_token`` the value of the
    ``trio_ws_token`` cookie, ``server_token`` the token the server checks.
    """
    assets = assets or load_assets()
    if path == "/" or _PROJECT_PAGE.fullmatch(path):
        return _page(assets, query.get("token"), cookie_token, server_token)
    if path.startswith("/static/"):
        name = path.removeprefix("/static/")
        body = assets.static.get(name)
        if body is not None:
            return Response(200, STATIC_TYPES[name], body, SECURITY_HEADERS)
    return Response(404, TEXT_TYPE, b"not found\n", SECURITY_HEADERS)


def project_of(path: str) -> str | None:
    """The (still percent-encoded) project name of a project page's path, else None."""
    match = _PROJECT_PAGE.fullmatch(path)
    return None if match is None else match["name"]


def missing_project(name: str, reason: str) -> Response:
    """A clear 404 page for a project this server does not have (rather than an empty
    dashboard that waits forever): what is missing, and how to add it."""
    shown = html.escape(name)
    body = (
        "<!doctype html><meta charset=utf-8><title>no such project</title>"
        f"<h1>No project {shown} here</h1><p>{html.escape(reason)}.</p>"
        f"<p>Register it with <code>trio-ws projects add {shown} DIRECTORY</code>, or see "
        '<a href="/">every project</a>.</p>\n'
    )
    return Response(404, HTML_TYPE, body.encode(), SECURITY_HEADERS)


def _page(
    assets: Assets, offered: str | None, cookie_token: str | None, server_token: str
) -> Response:
    headers = list(SECURITY_HEADERS)
    if offered is not None:
        if not token_matches(offered, server_token):
            control = "rejected"
        elif _COOKIE_VALUE.fullmatch(offered) is None:
            control = "uncookieable"
        else:
            control = "on"
            headers.append(("set-cookie", session_cookie(offered)))
    elif token_matches(cookie_token, server_token):
        control = "on"
    else:
        control = "off"
    html = assets.page.replace(CONTROL_MARKER, control).replace(VERSION_MARKER, __version__)
    return Response(200, HTML_TYPE, html.encode(), tuple(headers))


def session_cookie(token: str) -> str:
    """The ``Set-Cookie`` value that keeps the token away from scripts and other sites.

    Raises `ValueError` for a token that is not made of cookie-octets.
    """
    if _COOKIE_VALUE.fullmatch(token) is None:
        raise ValueError("the token holds characters a cookie cannot carry")
    return f"{TOKEN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
