"""The subscribe side of `trio-ws watch` (PROTOCOL.md 3): connect, feed every message
to a `RunView` (and to an optional callback), and reconnect with jittered
exponential backoff, resuming with ``since``/``epoch``.

`fetch_snapshot` reads one fresh-sync snapshot; `follow` keeps a view current
forever. A do-not-retry refusal (`refuses_for_good`, the same rule as `trio-ws
run`'s) raises `WatchRefused`; every other drop is retried.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn
from urllib.parse import quote

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from trio_ws.clients.common import http_base, refuses_for_good, websocket_base
from trio_ws.clients.run_view import RunView, SequenceGap
from trio_ws.clients.tls import TlsFailure, check_tls, client_tls, for_url
from trio_ws.core import defaults, protocol
from trio_ws.core.protocol import JsonObject
from trio_ws.runtime.backoff import Backoff

CONNECT_TIMEOUT: Final = 10.0
SNAPSHOT_TIMEOUT: Final = 30.0
HEARTBEAT: Final = 15.0
"""Seconds between websocket pings; a peer that doesn't answer within this is dropped."""
CLOSE_TIMEOUT: Final = 2.0
OnMessage = Callable[[JsonObject], None]


class WatchError(Exception):
    """Watching cannot go on; the message says why (and never includes the token)."""


class WatchRefused(WatchError):
    """The server said not to retry: a 4xxx close or an HTTP 4xx refusal of the upgrade."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class OutputClosed(WatchError):
    """Raised by an ``on_message`` callback whose reader went away (e.g. ``| head``)."""


class _Dropped(Exception):
    """The connection ended in a way worth retrying."""


async def tls_retry_reason(
    url: str, tls: ssl.SSLContext | None, shown: str, closed: Callable[[str], None]
) -> str | None:
    """One TLS handshake before the websocket's own (trio-websocket waits forever on a
    failed one): None when it passed or ``url`` is plain, else why to try again. An
    untrusted certificate is no reason to retry: ``closed`` is told why, and WatchError
    raised."""
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            await check_tls(url, tls)
    except TlsFailure as exc:
        if exc.for_good:
            closed(str(exc))
            raise WatchError(str(exc)) from None
        return str(exc)
    except (OSError, trio.TooSlowError) as exc:
        return f"cannot connect to {shown}: {exc}"
    return None


@dataclass(frozen=True)
class WatchTarget:
    """Where to watch: the websocket base URL, the project, the optional token."""

    base: str
    project: str
    token: str | None = None
    backlog: int = defaults.CLIENT_BACKLOG
    tls: ssl.SSLContext | None = None
    """What a ``wss://`` server's certificate is checked against (None: the system's)."""

    @classmethod
    def from_server(
        cls,
        server: str,
        project: str,
        token: str | None = None,
        backlog: int = defaults.CLIENT_BACKLOG,
        cafile: Path | None = None,
    ) -> WatchTarget:
        """Map an ``http(s)://`` (or ``ws(s)://``) server URL to its subscribe endpoint;
        ``cafile``: trust only this CA's certificates."""
        base = websocket_base(server)
        if not protocol.is_valid_project_name(project):
            raise ValueError(f"invalid project name {project!r}")
        return cls(base, project, token, backlog, client_tls(server, cafile))

    @property
    def display_url(self) -> str:
        """The endpoint without its query: safe to print."""
        return f"{self.base}/ws/projects/{self.project}"

    def api_url(self, view: str) -> str:
        """``http(s)://.../api/projects/NAME/{view}``: the project's HTTP API."""
        return f"{http_base(self.base)}/api/projects/{self.project}/{view}"

    def url(self, resume: tuple[int, str] | None = None) -> str:
        query = [f"backlog={self.backlog}"]
        if resume is not None:
            query += [f"since={resume[0]}", f"epoch={quote(resume[1], safe='')}"]
        if self.token:
            query.append(f"token={quote(self.token, safe='')}")
        return f"{self.display_url}?{'&'.join(query)}"


def decode(text: str | bytes) -> JsonObject:
    """One received frame as a message; the server only sends JSON objects."""
    if isinstance(text, bytes):
        raise ValueError("server sent a binary frame")
    payload = json.loads(text)
    if not isinstance(payload, dict):
        raise ValueError(f"server sent JSON that is not an object: {text[:80]!r}")
    return payload


def _refusal(exc: ConnectionClosed, view: RunView) -> WatchRefused | None:
    reason = exc.reason
    if reason is None or not refuses_for_good(close_code=reason.code):
        return None
    content = view.error or reason.reason or "refused"
    return WatchRefused(f"{content} (close {reason.code})", reason.code)


def _close_text(exc: ConnectionClosed) -> str:
    reason = exc.reason
    if reason is None:
        return "connection closed"
    text = f"closed {reason.code}"
    return f"{text}: {reason.reason}" if reason.reason else text


def _handshake_failure(exc: HandshakeError, target: WatchTarget) -> WatchError:
    """A failed connect: fatal for a do-not-retry refusal (`refuses_for_good`, the same
    rule as `trio-ws run`'s), otherwise worth a retry."""
    if isinstance(exc, ConnectionRejected):
        status = exc.status_code
        body = (exc.body or b"").decode("utf-8", "replace").strip()
        message = f"{target.display_url} refused the websocket: HTTP {status}"
        message += f" {body}" if body else ""
        if refuses_for_good(status=status):
            return WatchRefused(message, status)
        return WatchError(message)
    cause = exc.__cause__
    detail = str(cause) if cause is not None else (type(exc).__name__)
    return WatchError(f"cannot connect to {target.display_url}: {detail}")


async def _read(ws: WebSocketConnection, view: RunView, on_message: OnMessage | None) -> JsonObject:
    """The next message, applied to ``view``; passed on unless it is the pong we asked for."""
    message = decode(await ws.get_message())
    if on_message is not None and message.get("type") != "pong":
        on_message(message)
    view.apply(message)
    return message


PING: Final = protocol.encode({"type": "ping"})


async def fetch_snapshot(
    target: WatchTarget,
    on_message: OnMessage | None = None,
    *,
    within: float = SNAPSHOT_TIMEOUT,
) -> RunView:
    """Connect once, read the fresh-sync snapshot and return the view it builds.

    A ping sent right after ``hello`` marks the snapshot's end: the server
    sends the whole snapshot before anything queued for this subscriber, so
    its pong comes after it. The pong itself is not passed to ``on_message``.
    """
    view = RunView(project=target.project)
    try:
        with trio.fail_after(within):
            await check_tls(target.base, target.tls)
            async with open_websocket_url(
                target.url(),
                ssl_context=for_url(target.base, target.tls),
                connect_timeout=CONNECT_TIMEOUT,
                disconnect_timeout=CLOSE_TIMEOUT,
            ) as ws:
                first = await _read(ws, view, on_message)
                while first.get("type") == "error":  # a refusal: its close follows
                    first = await _read(ws, view, on_message)
                if first.get("type") != "hello":
                    raise WatchError(f"expected hello first, got {first.get('type')!r}")
                await ws.send_message(PING)
                while (await _read(ws, view, on_message)).get("type") != "pong":
                    pass
    except ConnectionClosed as exc:
        refused = _refusal(exc, view)
        if refused is not None:
            raise refused from None
        raise WatchError(
            f"{target.display_url} {_close_text(exc)} before the snapshot was complete"
        ) from None
    except HandshakeError as exc:
        raise _handshake_failure(exc, target) from None
    except TlsFailure as exc:
        raise WatchError(str(exc)) from None
    except OSError as exc:
        raise WatchError(f"cannot connect to {target.display_url}: {exc.strerror or exc}") from None
    except trio.TooSlowError:
        raise WatchError(f"{target.display_url}: no complete snapshot in {within:g} s") from None
    except ValueError as exc:
        raise WatchError(f"protocol error from {target.display_url}: {exc}") from None
    view.set_connection("snapshot")
    return view


async def follow(
    target: WatchTarget,
    view: RunView,
    on_message: OnMessage | None = None,
    *,
    backoff: Backoff | None = None,
    heartbeat: float = HEARTBEAT,
    on_drop: Callable[[str], None] | None = None,
) -> NoReturn:
    """Watch ``target`` forever, keeping ``view`` current across reconnects.

    Every reconnect asks to resume from ``view.resume_point``. Every close and
    network failure is retried after a ``backoff`` delay, except the
    do-not-retry ones, which raise `WatchRefused`; a message that breaks the
    protocol raises `WatchError`. ``on_drop`` is told why each connection ended.
    """
    delays = backoff or Backoff()
    view.set_connection("connecting")
    while True:
        try:
            await _session(target, view, on_message, delays, heartbeat)
        except _Dropped as exc:
            reason = str(exc)
        view.set_connection("reconnecting", reason)
        if on_drop is not None:
            on_drop(reason)
        await trio.sleep(delays.next())


async def _session(
    target: WatchTarget,
    view: RunView,
    on_message: OnMessage | None,
    delays: Backoff,
    heartbeat: float,
) -> NoReturn:
    """One connection, read until it ends: raises `_Dropped`, `WatchRefused` or `WatchError`."""
    ended: BaseException | None = None
    retry = await tls_retry_reason(
        target.base, target.tls, target.display_url, lambda why: view.set_connection("closed", why)
    )
    if retry is not None:
        raise _Dropped(retry)
    try:
        async with open_websocket_url(
            target.url(view.resume_point),
            ssl_context=for_url(target.base, target.tls),
            connect_timeout=CONNECT_TIMEOUT,
            disconnect_timeout=CLOSE_TIMEOUT,
        ) as ws:
            async with trio.open_nursery() as nursery:
                silent = trio.Event()
                nursery.start_soon(_keep_alive, ws, heartbeat, silent, nursery.cancel_scope)
                # Kept out of the nursery, so the exception is not wrapped in a group.
                try:
                    while True:
                        message = await _read(ws, view, on_message)
                        if message.get("type") == "hello":
                            await ws.send_message(PING)  # its pong marks the snapshot's end
                            delays.reset()
                            view.set_connection("live")
                except (ConnectionClosed, SequenceGap, ValueError, WatchError) as exc:
                    ended = exc
                nursery.cancel_scope.cancel()
            if silent.is_set():
                ended = _Dropped(f"no answer to a ping in {heartbeat:g} s")
    except HandshakeError as exc:
        if ended is None:  # the connect failed, not the close after a failure
            failure = _handshake_failure(exc, target)
            if isinstance(failure, WatchRefused):
                view.set_connection("closed", str(failure))
                raise failure from None
            raise _Dropped(str(failure)) from None
    if isinstance(ended, ConnectionClosed):
        refused = _refusal(ended, view)
        if refused is not None:
            view.set_connection("closed", str(refused))
            raise refused
        raise _Dropped(_close_text(ended))
    if isinstance(ended, WatchError):
        raise ended
    if isinstance(ended, ValueError):
        raise WatchError(f"protocol error from {target.display_url}: {ended}")
    if isinstance(ended, SequenceGap):
        raise _Dropped(f"{ended}; resuming")
    if isinstance(ended, _Dropped):
        raise ended
    raise _Dropped("connection closed")


async def _keep_alive(
    ws: WebSocketConnection, interval: float, silent: trio.Event, scope: trio.CancelScope
) -> None:
    """Ping every ``interval``; a peer that doesn't answer within it is gone."""
    while True:
        await trio.sleep(interval)
        with trio.move_on_after(interval) as waited:
            try:
                await ws.ping()
            except ConnectionClosed:
                return  # the reader sees the close too
        if waited.cancelled_caught:
            silent.set()
            scope.cancel()
            return
