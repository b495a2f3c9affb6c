"""`trio-ws watch` with no project: every project at a glance, from ``/ws/overview``.

`follow_overview` keeps an `OverviewView` current across reconnects (jittered
backoff; a do-not-retry refusal raises `WatchRefused`, as for one project);
`overview_once` reads the first list; `render_overview` draws the view as one
table, what needs the user first. The modes (`watch_overview_live`,
`watch_overview_json`) are the command's.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn

import trio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    open_websocket_url,
)

from trio_ws.clients.common import bearer_header, refuses_for_good, websocket_base
from trio_ws.clients.overview_view import OverviewView
from trio_ws.clients.run_view import parse_timestamp
from trio_ws.clients.tls import TlsFailure, check_tls, client_tls, for_url
from trio_ws.clients.watch_render import ALERT_STYLES, format_age, printable
from trio_ws.clients.watch_session import (
    CLOSE_TIMEOUT,
    CONNECT_TIMEOUT,
    SNAPSHOT_TIMEOUT,
    OnMessage,
    WatchError,
    WatchRefused,
    decode,
    tls_retry_reason,
)
from trio_ws.core import protocol
from trio_ws.runtime.backoff import Backoff

REFRESH: Final = 0.5
"""Seconds between two redraws (the server sends at most two summaries a second)."""
LISTED_AGENTS: Final = 3
ATTENTION_STYLES: Final = {
    "error": "bold red",
    "needs_input": "bold yellow",
    "crashed": "red",
    "warning": "yellow",
    "running": "green",
    "idle": "dim",
}


@dataclass(frozen=True)
class OverviewTarget:
    """Where the overview is: the server's websocket base and the optional token."""

    base: str
    token: str | None = None
    tls: ssl.SSLContext | None = None
    """What a ``wss://`` server is trusted by (``--cafile``); None for ``ws://``."""

    @classmethod
    def from_server(
        cls, server: str, token: str | None = None, cafile: Path | None = None
    ) -> OverviewTarget:
        """``cafile``: trust only this CA's certificates (ValueError for a plain server)."""
        return cls(websocket_base(server), token, client_tls(server, cafile))

    @property
    def url(self) -> str:
        return f"{self.base}/ws/overview"

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The token goes in a header, never in the URL."""
        return [bearer_header(self.token)] if self.token else []


class _Dropped(Exception):
    """The connection ended in a way worth retrying."""


def _refusal(exc: ConnectionClosed, view: OverviewView) -> WatchRefused | None:
    reason = exc.reason
    if reason is None or not refuses_for_good(close_code=reason.code):
        return None
    content = view.detail or reason.reason or "refused"
    return WatchRefused(f"{content} (close {reason.code})", reason.code)


def _handshake_failure(exc: HandshakeError, target: OverviewTarget) -> WatchError:
    if isinstance(exc, ConnectionRejected):
        body = (exc.body or b"").decode("utf-8", "replace").strip()
        message = f"{target.url} refused the websocket: HTTP {exc.status_code}"
        message += f" {body}" if body else ""
        if refuses_for_good(status=exc.status_code):
            return WatchRefused(message, exc.status_code)
        return WatchError(message)
    cause = exc.__cause__
    return WatchError(f"cannot connect to {target.url}: {cause or type(exc).__name__}")


async def _session(
    target: OverviewTarget, view: OverviewView, on_message: OnMessage | None, delays: Backoff
) -> NoReturn:
    """One connection, read until it ends: raises `_Dropped`, `WatchRefused` or `WatchError`."""
    retry = await tls_retry_reason(
        target.base, target.tls, target.url, lambda why: view.set_connection("closed", why)
    )
    if retry is not None:
        raise _Dropped(retry)
    try:
        async with open_websocket_url(
            target.url,
            ssl_context=for_url(target.base, target.tls),
            extra_headers=target.headers,
            connect_timeout=CONNECT_TIMEOUT,
            disconnect_timeout=CLOSE_TIMEOUT,
        ) as ws:
            while True:
                message = decode(await ws.get_message())
                if on_message is not None:
                    on_message(message)
                if message.get("type") == "error":
                    view.set_connection("closing", str(message.get("content", "")))
                view.apply(message)
                if message.get("type") == "overview":
                    delays.reset()
    except ConnectionClosed as exc:
        refused = _refusal(exc, view)
        if refused is not None:
            view.set_connection("closed", str(refused))
            raise refused from None
        raise _Dropped("connection closed") from None
    except HandshakeError as exc:
        failure = _handshake_failure(exc, target)
        if isinstance(failure, WatchRefused):
            view.set_connection("closed", str(failure))
            raise failure from None
        raise _Dropped(str(failure)) from None
    except ValueError as exc:
        raise WatchError(f"protocol error from {target.url}: {exc}") from None


async def follow_overview(
    target: OverviewTarget,
    view: OverviewView,
    on_message: OnMessage | None = None,
    *,
    backoff: Backoff | None = None,
    on_drop: Callable[[str], None] | None = None,
) -> NoReturn:
    """Keep ``view`` current forever; every drop but a do-not-retry refusal is retried."""
    delays = backoff or Backoff()
    while True:
        try:
            await _session(target, view, on_message, delays)
        except _Dropped as exc:
            reason = str(exc)
        view.set_connection("reconnecting", reason)
        if on_drop is not None:
            on_drop(reason)
        await trio.sleep(delays.next())


async def overview_once(
    target: OverviewTarget, on_message: OnMessage | None = None, *, within: float = SNAPSHOT_TIMEOUT
) -> OverviewView:
    """Connect once and read the first full list."""
    view = OverviewView()
    try:
        with trio.fail_after(within):
            await check_tls(target.base, target.tls)
            async with open_websocket_url(
                target.url,
                ssl_context=for_url(target.base, target.tls),
                extra_headers=target.headers,
                connect_timeout=CONNECT_TIMEOUT,
                disconnect_timeout=CLOSE_TIMEOUT,
            ) as ws:
                while view.lists == 0:
                    message = decode(await ws.get_message())
                    if on_message is not None:
                        on_message(message)
                    if message.get("type") == "error":
                        view.set_connection("closing", str(message.get("content", "")))
                    view.apply(message)
    except ConnectionClosed as exc:
        refused = _refusal(exc, view)
        if refused is not None:
            raise refused from None
        raise WatchError(f"{target.url} closed before the list was sent") from None
    except HandshakeError as exc:
        raise _handshake_failure(exc, target) from None
    except TlsFailure as exc:
        raise WatchError(str(exc)) from None
    except OSError as exc:
        raise WatchError(f"cannot connect to {target.url}: {exc.strerror or exc}") from None
    except trio.TooSlowError:
        raise WatchError(f"{target.url}: no list in {within:g} s") from None
    except ValueError as exc:
        raise WatchError(f"protocol error from {target.url}: {exc}") from None
    return view


# -- drawing -----------------------------------------------------------------------


def _age(stamp: object, now: float) -> str:
    then = parse_timestamp(stamp)
    return format_age(None if then is None else now - then)


def render_overview(view: OverviewView, now: float) -> RenderableType:
    """The projects as one table, what needs the user first; alerts under their row."""
    head = Text()
    head.append("trio-ws overview", "bold")
    head.append(f"  {view.connection}", "green" if view.connection == "live" else "yellow")
    if view.detail:
        head.append(f" ({printable(view.detail)})", "dim")
    head.append(f"  {len(view.projects)} projects", "dim")
    if view.needing:
        head.append(f"  {view.needing} need you", "bold red")
    parts: list[RenderableType] = [head]
    if view.registry_error:
        parts.append(Text(f"registry: {printable(view.registry_error)}", "red"))
    table = Table(box=None, header_style="bold", pad_edge=False, expand=False)
    for column in ("", "project", "status", "progress", "agents", "active"):
        table.add_column(column, no_wrap=column != "agents", overflow="ellipsis")
    for project in view.ordered():
        attention = str(project.get("attention", "idle"))
        style = ATTENTION_STYLES.get(attention, "")
        status = project.get("agent_status")
        shown_status = (
            str(status)
            if status is not None
            else ("no run yet" if project.get("loaded") else "not open")
        )
        progress = project.get("progress")
        shown_progress = (
            f"{progress['passing']}/{progress['total']} {progress['percentage']}%"
            if isinstance(progress, dict)
            else "-"
        )
        agents = project.get("agents") or []
        names = [printable(str(agent.get("name"))) for agent in agents[:LISTED_AGENTS]]
        if len(agents) > LISTED_AGENTS:
            names.append(f"+{len(agents) - LISTED_AGENTS}")
        table.add_row(
            Text(attention.replace("_", " "), style),
            Text(printable(str(project.get("name"))), "bold"),
            Text(shown_status, style if attention != "idle" else "dim"),
            shown_progress,
            Text(", ".join(names) if names else "-"),
            _age(project.get("last_activity"), now),
        )
        for alert in project.get("alerts") or []:
            severity = str(alert.get("severity", "warning"))
            line = Text(f"  {alert.get('kind')}: {printable(str(alert.get('message')))}")
            line.stylize(ALERT_STYLES.get(severity, ""))
            table.add_row("", line, "", "", "", "")
    parts.append(table)
    if not view.projects and view.lists:
        parts.append(Text("No project is registered yet: trio-ws projects add NAME PATH", "dim"))
    return Group(*parts)


# -- the modes -----------------------------------------------------------------------


async def watch_overview_live(
    target: OverviewTarget,
    console: Console,
    *,
    backoff: Backoff | None = None,
    clock: Callable[[], float] = time.time,
    bell: bool = True,
) -> NoReturn:
    """The live overview until cancelled; the bell rings when a project comes to need
    the user (its rank rises to error, needs input or crashed)."""
    view = OverviewView()

    async def refresh(live: Live) -> None:
        needing: set[str] = set()
        first = True
        while True:
            live.update(render_overview(view, clock()), refresh=True)
            now_needing = {
                name for name, project in view.projects.items() if project.get("rank", 9) <= 2
            }
            if bell and not first and now_needing - needing:
                console.bell()
            if view.lists:
                first = False
            needing = now_needing
            await trio.sleep(REFRESH)

    failure: WatchError | None = None
    with Live(render_overview(view, clock()), console=console, auto_refresh=False) as live:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(refresh, live)
            try:
                await follow_overview(target, view, backoff=backoff)
            except WatchError as exc:
                failure = exc
            finally:
                nursery.cancel_scope.cancel()
                live.update(render_overview(view, clock()))
    assert failure is not None  # follow_overview() only ends by raising
    raise failure


async def watch_overview_json(
    target: OverviewTarget,
    write: Callable[[str], None],
    *,
    backoff: Backoff | None = None,
    on_drop: Callable[[str], None] | None = None,
) -> NoReturn:
    """Every received message as one compact JSON line, across reconnects."""
    await follow_overview(
        target,
        OverviewView(),
        lambda message: write(protocol.encode(message)),
        backoff=backoff,
        on_drop=on_drop,
    )
