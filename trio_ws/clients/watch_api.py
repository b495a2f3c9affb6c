"""The HTTP reads of `trio-ws watch`: the features board and the progress history
(`read_features`, `read_history`), kept current while live by `keep_extras`.

One GET per read over h11, the token (if any) as a Bearer header; every failure
becomes a `WatchError` that says what failed, stored on the view for the screen
to show, never a silent empty board.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

import h11
import trio

from trio_ws.clients.common import bearer_header
from trio_ws.clients.run_view import ProgressCounts, RunView
from trio_ws.clients.tls import tls_failure
from trio_ws.clients.watch_session import WatchError, WatchTarget

HTTP_TIMEOUT: Final = 10.0
"""Seconds for one API read (connect, request and the whole answer)."""
MAX_API_BODY: Final = 16 * 1024 * 1024
FEATURES_INTERVAL: Final = 1.0
"""Least seconds between two reads of the features board while live."""
HISTORY_RETRY: Final = 5.0
"""Seconds before the progress history is asked for again after a failed read."""
LOOK_INTERVAL: Final = 0.25
"""Seconds between two looks at the view for a change worth a read."""


async def get_json(
    target: WatchTarget, view: str, *, within: float = HTTP_TIMEOUT
) -> tuple[int, Any]:
    """GET the project's ``view`` (the token, if any, as a Bearer header) and decode the
    JSON answer; raises `WatchError` saying what failed (never with the token)."""
    url = target.api_url(view)
    try:
        with trio.fail_after(within):
            async with await _connect(target, url) as stream:
                status, body = await _exchange(stream, _request(target, url))
    except trio.TooSlowError:
        raise WatchError(f"GET {url}: no answer in {within:g} s") from None
    except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
        raise _failure(url, exc) from None
    try:
        return status, json.loads(body)
    except ValueError:
        raise WatchError(f"GET {url}: HTTP {status} answer is not JSON: {body[:80]!r}") from None


async def stream_get(
    target: WatchTarget,
    view: str,
    on_data: Callable[[bytes], None],
    *,
    idle: float = HTTP_TIMEOUT,
) -> tuple[int, bytes]:
    """GET the project's ``view`` and hand a 200 answer's body to ``on_data`` piece by
    piece as it arrives (never held whole: an export can be gigabytes). Returns the
    status and, for any other status, its (capped) body. Raises `WatchError` when the
    server cannot be reached, breaks off, or sends nothing for ``idle`` seconds."""
    url = target.api_url(view)
    connection = h11.Connection(h11.CLIENT)
    status = 0
    refused = bytearray()
    try:
        with trio.fail_after(idle):
            stream = await _connect(target, url)
        async with stream:
            request = _request(target, url)
            await stream.send_all(connection.send(request))
            await stream.send_all(connection.send(h11.EndOfMessage()) or b"")
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    with trio.fail_after(idle):
                        connection.receive_data(bytes(await stream.receive_some(65536)))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    if status == 200:
                        on_data(bytes(event.data))
                    elif len(refused) < MAX_API_BODY:
                        refused += event.data
                elif isinstance(event, h11.EndOfMessage):
                    return status, bytes(refused)
                elif isinstance(event, h11.ConnectionClosed):
                    raise WatchError(f"GET {url}: the server closed before the answer ended")
    except trio.TooSlowError:
        raise WatchError(f"GET {url}: nothing received in {idle:g} s") from None
    except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
        raise _failure(url, exc) from None


def _failure(url: str, exc: Exception) -> WatchError:
    """What failed, in one line: an untrusted certificate as `tls_failure` says it (the
    handshake fails on the first send, as the cause of a BrokenResourceError)."""
    if isinstance(exc, trio.BrokenResourceError):
        if isinstance(exc.__cause__, ssl.SSLError):
            return WatchError(str(tls_failure(urlsplit(url).netloc, exc.__cause__)))
        return WatchError(f"GET {url}: {exc.__cause__ or exc or 'connection lost'}")
    return WatchError(f"GET {url}: {exc}")


async def _connect(target: WatchTarget, url: str) -> trio.abc.Stream:
    """A connection to the host ``url`` names, TLS for ``https`` (trusting what
    ``target.tls`` trusts: ``--cafile``)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    if secure:
        return await trio.open_ssl_over_tcp_stream(host, port, ssl_context=target.tls)
    return await trio.open_tcp_stream(host, port)


def _request(target: WatchTarget, url: str) -> h11.Request:
    """The GET of ``url``, the token (if any) as a Bearer header."""
    parts = urlsplit(url)
    headers = [(b"host", parts.netloc.encode()), (b"accept", b"application/json")]
    headers.append((b"connection", b"close"))
    if target.token:
        headers.append(bearer_header(target.token))
    return h11.Request(method="GET", target=_target(parts.path, parts.query), headers=headers)


def _target(path: str, query: str) -> str:
    """The request target: the path and, when there is one, its query."""
    return f"{path}?{query}" if query else path


async def _exchange(stream: trio.abc.Stream, request: h11.Request) -> tuple[int, bytes]:
    """One HTTP/1.1 GET over ``stream``: the status and the whole body."""
    connection = h11.Connection(h11.CLIENT)
    await stream.send_all(connection.send(request))
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
        await trio.sleep(LOOK_INTERVAL)
