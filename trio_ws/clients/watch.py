"""`trio-ws watch`: a terminal dashboard for one project (the subscribe side of
PROTOCOL.md 3), over the pure `run_view.RunView` and `watch_render.render`.

`follow` and `fetch_snapshot` are the network: they connect, feed every message
to the view (and to an optional callback), and reconnect with jittered
exponential backoff, resuming with ``since``/``epoch``. `read_features` and
`read_history` fetch the features board and the progress history over HTTP
(`keep_extras` keeps both current while live). `watch_live` and `watch_json`
are the command's modes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, NoReturn
from urllib.parse import quote, urlsplit

import h11
import trio
from rich.console import Console, RenderableType
from rich.live import Live
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from trio_ws.clients.common import bearer_header, refuses_for_good, websocket_base
from trio_ws.clients.run_view import ProgressCounts, RunView, SequenceGap
from trio_ws.clients.watch_render import fitting_log_lines, render
from trio_ws.core import defaults, protocol
from trio_ws.core.protocol import Message
from trio_ws.runtime.backoff import Backoff

CONNECT_TIMEOUT: Final = 10.0
SNAPSHOT_TIMEOUT: Final = 30.0
HEARTBEAT: Final = 15.0
"""Seconds between websocket pings; a peer that doesn't answer within this is dropped."""
REFRESH: Final = 0.25
CLOSE_TIMEOUT: Final = 2.0
HTTP_TIMEOUT: Final = 10.0
"""Seconds for one API read (connect, request and the whole answer)."""
MAX_API_BODY: Final = 16 * 1024 * 1024
FEATURES_INTERVAL: Final = 1.0
"""Least seconds between two reads of the features board while live."""
HISTORY_RETRY: Final = 5.0
"""Seconds before the progress history is asked for again after a failed read."""
ONCE_WIDTH: Final = 200
"""Columns of ``--once`` output when stdout is not a terminal (rich would cut at 80)."""
OnMessage = Callable[[Message], None]


# -- the network ------------------------------------------------------------------


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


@dataclass(frozen=True)
class WatchTarget:
    """Where to watch: the websocket base URL, the project, the optional token."""

    base: str
    project: str
    token: str | None = None
    backlog: int = defaults.CLIENT_BACKLOG

    @classmethod
    def from_server(
        cls,
        server: str,
        project: str,
        token: str | None = None,
        backlog: int = defaults.CLIENT_BACKLOG,
    ) -> WatchTarget:
        """Map an ``http(s)://`` (or ``ws(s)://``) server URL to its subscribe endpoint."""
        base = websocket_base(server)
        if not protocol.is_valid_project_name(project):
            raise ValueError(f"invalid project name {project!r}")
        return cls(base, project, token, backlog)

    @property
    def display_url(self) -> str:
        """The endpoint without its query: safe to print."""
        return f"{self.base}/ws/projects/{self.project}"

    def api_url(self, view: str) -> str:
        """``http(s)://.../api/projects/NAME/{view}``: the project's HTTP API."""
        scheme, rest = self.base.split(":", 1)
        return f"{'https' if scheme == 'wss' else 'http'}:{rest}/api/projects/{self.project}/{view}"

    def url(self, resume: tuple[int, str] | None = None) -> str:
        query = [f"backlog={self.backlog}"]
        if resume is not None:
            query += [f"since={resume[0]}", f"epoch={quote(resume[1], safe='')}"]
        if self.token:
            query.append(f"token={quote(self.token, safe='')}")
        return f"{self.display_url}?{'&'.join(query)}"


def decode(text: str | bytes) -> Message:
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


async def _read(ws: WebSocketConnection, view: RunView, on_message: OnMessage | None) -> Message:
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
            async with open_websocket_url(
                target.url(), connect_timeout=CONNECT_TIMEOUT, disconnect_timeout=CLOSE_TIMEOUT
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
    except trio.TooSlowError:
        raise WatchError(f"{target.display_url}: no complete snapshot in {within:g} s") from None
    except ValueError as exc:
        raise WatchError(f"protocol error from {target.display_url}: {exc}") from None
    view.set_connection("snapshot")
    return view


async def get_json(
    target: WatchTarget, view: str, *, within: float = HTTP_TIMEOUT
) -> tuple[int, Any]:
    """GET the project's ``view`` (the token, if any, as a Bearer header) and decode the
    JSON answer; raises `WatchError` saying what failed (never with the token)."""
    url = target.api_url(view)
    parts = urlsplit(url)
    host = parts.hostname or ""
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    headers = [(b"host", parts.netloc.encode()), (b"accept", b"application/json")]
    headers.append((b"connection", b"close"))
    if target.token:
        headers.append(bearer_header(target.token))
    try:
        with trio.fail_after(within):
            if secure:
                stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(host, port)
            else:
                stream = await trio.open_tcp_stream(host, port)
            async with stream:
                status, body = await _exchange(stream, parts.path, headers)
    except trio.TooSlowError:
        raise WatchError(f"GET {url}: no answer in {within:g} s") from None
    except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
        raise WatchError(f"GET {url}: {exc}") from None
    try:
        return status, json.loads(body)
    except ValueError:
        raise WatchError(f"GET {url}: HTTP {status} answer is not JSON: {body[:80]!r}") from None


async def _exchange(
    stream: trio.abc.Stream, path: str, headers: list[tuple[bytes, bytes]]
) -> tuple[int, bytes]:
    """One HTTP/1.1 GET over ``stream``: the status and the whole body."""
    connection = h11.Connection(h11.CLIENT)
    await stream.send_all(connection.send(h11.Request(method="GET", target=path, headers=headers)))
    await stream.send_all(connection.send(h11.EndOfMessage()) or b"")
    status = 0
    body = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_API_BODY:
                raise OSError(f"answer over {MAX_API_BODY} bytes")
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return status, bytes(body)


async def read_features(target: WatchTarget, view: RunView) -> None:
    """Read the features board into ``view``; a failure becomes its ``features_error``."""
    try:
        status, body = await get_json(target, "features")
        view.apply_features(status, body)
    except (WatchError, ValueError) as exc:
        view.features = None
        view.features_error = str(exc)


async def read_history(target: WatchTarget, view: RunView) -> None:
    """Merge the progress history into ``view``; a failure becomes its ``history_error``."""
    try:
        status, body = await get_json(target, "progress-history")
        if status != 200:
            detail = body.get("detail") if isinstance(body, dict) else body
            raise WatchError(f"progress history: HTTP {status}: {detail}")
        view.apply_history(body)
    except (WatchError, ValueError) as exc:
        view.history_error = str(exc)


async def keep_extras(
    target: WatchTarget, view: RunView, *, clock: Callable[[], float] = time.monotonic
) -> NoReturn:
    """Keep the view's features board and progress history current while live: the
    board is read again when the progress counts change (at most every
    `FEATURES_INTERVAL`), the history once per synced epoch (after a resync too)."""
    features_read = False
    read_for: ProgressCounts | None = None
    history_tried = -HISTORY_RETRY
    while True:
        if not features_read or view.progress != read_for:
            features_read = True
            read_for = view.progress
            await read_features(target, view)
            await trio.sleep(FEATURES_INTERVAL)
            continue
        if (
            view.synced
            and view.history_epoch != view.epoch
            and clock() - history_tried >= HISTORY_RETRY
        ):
            history_tried = clock()
            await read_history(target, view)
        await trio.sleep(REFRESH)


async def once(target: WatchTarget) -> RunView:
    """The snapshot, the features board and the progress history, read once."""
    view = await fetch_snapshot(target)
    await read_features(target, view)
    await read_history(target, view)
    return view


def once_console() -> Console:
    """The console for ``--once``: the terminal's width, or when stdout is no terminal
    (a file, a pipe) `ONCE_WIDTH` columns unless ``COLUMNS`` says otherwise."""
    console = Console(highlight=False)
    if console.is_terminal or os.environ.get("COLUMNS"):
        return console
    return Console(highlight=False, width=ONCE_WIDTH)


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
    try:
        async with open_websocket_url(
            target.url(view.resume_point),
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


# -- the command's modes ------------------------------------------------------------


async def watch_live(
    target: WatchTarget,
    console: Console,
    *,
    log_lines: int | None = None,
    backoff: Backoff | None = None,
    clock: Callable[[], float] = time.time,
) -> NoReturn:
    """The live dashboard until cancelled; raises `WatchRefused` on a do-not-retry close.

    The screen is redrawn every `REFRESH` seconds from the trio task that owns
    the view (never from rich's refresh thread, which would read it mid-update).
    """
    view = RunView(project=target.project)

    def current() -> RenderableType:
        now = clock()
        lines = log_lines if log_lines is not None else fitting_log_lines(view, console, now)
        return render(view, now, lines)

    async def refresh(live: Live) -> None:
        while True:
            live.update(current(), refresh=True)
            await trio.sleep(REFRESH)

    failure: WatchError | None = None
    with Live(current(), console=console, auto_refresh=False) as live:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(refresh, live)
            nursery.start_soon(partial(keep_extras, target, view))
            try:
                await follow(target, view, backoff=backoff)
            except WatchError as exc:
                failure = exc
            finally:
                nursery.cancel_scope.cancel()
                live.update(current())
    assert failure is not None  # follow() only ends by raising
    raise failure


async def watch_json(
    target: WatchTarget,
    write: Callable[[str], None],
    *,
    backoff: Backoff | None = None,
    on_drop: Callable[[str], None] | None = None,
) -> NoReturn:
    """Every received message as one compact JSON line, across reconnects."""
    view = RunView(project=target.project)
    await follow(
        target,
        view,
        lambda message: write(protocol.encode(message)),
        backoff=backoff,
        on_drop=on_drop,
    )
