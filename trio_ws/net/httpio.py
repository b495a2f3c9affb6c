"""Plain HTTP on the shared port: read one request head with h11, answer it.

Every connection starts here. The head is read with a byte cap and the
caller's deadline, so a client that sends nothing (or too much) cannot hold
a slot, and every response is written with `send_all_bounded`, so a client
that reads nothing cannot hold one either. A websocket upgrade is answered
by `trio_ws.net.connection.accept` on the same h11 connection, which keeps the
bytes that followed the head (``connection.trailing_data``).
"""

from __future__ import annotations

import functools
import json
import os
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import h11
import trio

from trio_ws.core import defaults

MAX_HEAD_BYTES: Final = 16 * 1024
MAX_BODY_BYTES: Final = 64 * 1024
"""Most request body bytes read (and discarded); AutoForge's control POSTs send none or ``{}``."""
LINGER_BYTES: Final = 1024 * 1024
LINGER_TIMEOUT: Final = 2.0
"""Bounds on draining a refused body after the answer (`linger`)."""
RECEIVE_SIZE: Final = 4096
STALL_TIMEOUT: Final = defaults.STALL_TIMEOUT
"""A write that makes no progress for this long cuts the connection (HTTP and websocket)."""
_LINGER_RESET: Final = struct.pack("ii", 1, 0)

REASONS: Final = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    426: b"Upgrade Required",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


class HttpConnection(h11.Connection):
    """h11's server side, remembering whether the request was HEAD (h11 keeps that private),
    since a response to HEAD must carry no body, and how long a response write may stall."""

    def __init__(self, max_incomplete_event_size: int, stall_timeout: float) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_incomplete_event_size)
        self.head_request = False
        self.stall_timeout = stall_timeout
        self.status: int | None = None
        """The status of the response sent, for the access log (None: none yet)."""


@functools.cache
def _released_connection() -> HttpConnection:
    """What a released head holds instead of its h11 connection: one for all of them,
    never used (the websocket took over the socket)."""
    return HttpConnection(MAX_HEAD_BYTES, STALL_TIMEOUT)


class WriteStalled(Exception):
    """The peer accepted no byte of a write for the stall timeout; the connection was reset."""


Transport = trio.SocketStream | trio.SSLStream[trio.SocketStream]
"""A client's connection: plain TCP, or TLS over it (``serve --certfile``)."""
TLS_CHUNK: Final = 16 * 1024
"""Bytes per bounded TLS write: one TLS record, so the stall bound is on progress."""


def tcp_of(stream: Transport) -> trio.SocketStream:
    """The TCP connection under ``stream`` (itself when it is plain)."""
    return stream.transport_stream if isinstance(stream, trio.SSLStream) else stream


def reset(stream: Transport) -> None:
    """Drop a TCP connection at once with a reset: unsent bytes are discarded, not
    left to the kernel to deliver to a peer that will not read them."""
    sock = tcp_of(stream).socket
    if sock.fileno() != -1:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        sock.close()


async def send_all_bounded(
    stream: Transport, data: bytes | memoryview, stall_timeout: float
) -> int:
    """Write ``data``; raise `WriteStalled` (after resetting the connection) when the peer
    takes no byte for ``stall_timeout``: the bound is on progress, not on the whole
    write, so a slow reader is served. Returns how many writes it took; 1 means the
    kernel took everything at once, with no wait and no scheduler round trip.

    The first attempt is one non-blocking ``os.write`` on the socket's descriptor,
    read from the live socket (``fileno()`` is -1, so the write fails, once it is
    closed). What the kernel did not take is awaited with trio's socket ``send``,
    one stall timeout per call: each call either sends something or is cancelled
    having sent nothing. A write cut off partway would leave a broken stream
    behind, so it resets the connection.

    Through TLS (`send_tls_bounded`) there is no direct write: it returns 0.
    """
    if isinstance(stream, trio.SSLStream):
        await send_tls_bounded(stream, data, stall_timeout)
        return 0
    sock = stream.socket
    try:
        sent = os.write(sock.fileno(), data)
    except BlockingIOError:
        sent = 0
    except OSError as exc:
        reset(stream)
        raise trio.BrokenResourceError(f"write failed: {exc}") from None
    if sent == len(data):
        return 1
    view = memoryview(data)[sent:]
    writes = 1
    try:
        while view:
            with trio.move_on_after(stall_timeout) as scope:
                view = view[await sock.send(view) :]
                writes += 1
            if scope.cancelled_caught:
                reset(stream)
                raise WriteStalled(f"the peer accepted nothing for {stall_timeout:g} s")
    except OSError as exc:
        raise trio.BrokenResourceError(f"write failed: {exc}") from None
    finally:
        if 0 < len(view) < len(data):
            reset(stream)  # cut in the middle: nothing valid can follow
    return writes


async def send_tls_bounded(
    stream: trio.SSLStream[trio.SocketStream], data: bytes | memoryview, stall_timeout: float
) -> None:
    """`send_all_bounded` through TLS: record by record, each within ``stall_timeout``; a
    write cut off leaves the TLS stream broken, so the connection is reset."""
    view = memoryview(data)
    while view:
        chunk, view = view[:TLS_CHUNK], view[TLS_CHUNK:]
        with trio.move_on_after(stall_timeout) as scope:
            await stream.send_all(chunk)
        if scope.cancelled_caught:
            reset(stream)
            raise WriteStalled(f"the peer accepted nothing for {stall_timeout:g} s")


class BadRequest(Exception):
    """The peer sent something that is not an acceptable HTTP request head."""

    def __init__(self, status: int, detail: str, connection: h11.Connection) -> None:
        super().__init__(detail)
        self.status = status
        self.connection = connection


@dataclass
class RequestHead:
    """One parsed request head plus the h11 connection that answers it (and holds the
    bytes that followed it)."""

    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    connection: HttpConnection

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def release(self) -> None:
        """Drop the header and query values and the h11 connection (about 1 KiB, its
        states and buffer) once nothing reads them: a websocket open for hours keeps
        its head alive in the frames that serve it."""
        self.headers = {}
        self.query = {}
        self.connection = _released_connection()

    @property
    def is_websocket(self) -> bool:
        upgrade = (self.header("upgrade") or "").lower()
        return upgrade == "websocket"

    def cookie(self, name: str) -> str | None:
        for part in (self.header("cookie") or "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return None


async def read_request_head(
    stream: trio.abc.Stream, max_bytes: int = MAX_HEAD_BYTES, stall_timeout: float = STALL_TIMEOUT
) -> RequestHead | None:
    """Read until a full request head; None if the peer closed before sending one.

    Raises `BadRequest` for malformed or oversized heads. The caller bounds the
    time this may take; ``stall_timeout`` bounds the writes of the answer.
    """
    connection = HttpConnection(max_bytes, stall_timeout)
    raw = bytearray()
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as exc:
            raise BadRequest(exc.error_status_hint, str(exc), connection) from None
        if event is h11.NEED_DATA:
            data = bytes(await stream.receive_some(RECEIVE_SIZE))
            if not data and not raw:
                return None
            raw += data
            connection.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            connection.head_request = event.method == b"HEAD"
            # h11 caps only an incomplete head; one completed by the last
            # receive can be up to RECEIVE_SIZE - 1 bytes over, so check here.
            size = len(raw) - len(connection.trailing_data[0])
            if size > max_bytes:
                raise BadRequest(
                    431, f"request head is {size} bytes, over the {max_bytes} limit", connection
                )
            return _head_from(event, connection)
        if isinstance(event, h11.ConnectionClosed):
            return None
        raise BadRequest(400, f"unexpected HTTP event {type(event).__name__}", connection)


async def discard_body(
    stream: trio.abc.Stream, connection: h11.Connection, max_bytes: int = MAX_BODY_BYTES
) -> int:
    """Read the request's body to its end and drop it; returns its size.

    Read rather than left unread, because closing a socket with unread bytes
    resets the connection, and the reset can destroy the answer before the
    client reads it. Raises `BadRequest` 413 as soon as the body is known to be
    over ``max_bytes`` (from ``Content-Length`` or while reading, chunked
    bodies included), 400 for a malformed or cut-off body. The caller bounds
    the time this may take.
    """
    size = 0
    while True:
        try:
            event = connection.next_event()
        except h11.RemoteProtocolError as exc:
            raise BadRequest(exc.error_status_hint, str(exc), connection) from None
        if event is h11.NEED_DATA:
            connection.receive_data(bytes(await stream.receive_some(RECEIVE_SIZE)))
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > max_bytes:
                raise BadRequest(413, f"request body over the {max_bytes} byte limit", connection)
        elif isinstance(event, h11.EndOfMessage):
            return size
        else:
            raise BadRequest(400, f"unexpected HTTP event {type(event).__name__}", connection)


async def linger(stream: Transport) -> None:
    """After answering a request whose body was left unread (413): half-close and drop
    what the peer still sends, within bounds, so that closing with unread bytes does
    not reset the connection and destroy the answer before the peer reads it.
    (TLS has no half-close: there the peer's bytes are only drained.)"""
    with trio.move_on_after(LINGER_TIMEOUT):
        if isinstance(stream, trio.SocketStream):
            await stream.send_eof()
        drained = 0
        while drained < LINGER_BYTES and (data := await stream.receive_some(RECEIVE_SIZE)):
            drained += len(data)


def declared_body_size(head: RequestHead) -> int | None:
    """The ``Content-Length`` the request declared, if any (h11 has checked its form)."""
    raw = head.header("content-length")
    return int(raw) if raw is not None and raw.strip().isdigit() else None


def _head_from(event: h11.Request, connection: HttpConnection) -> RequestHead:
    try:
        target = event.target.decode("ascii")
        headers = {
            name.decode("ascii").lower(): value.decode("latin-1") for name, value in event.headers
        }
    except UnicodeDecodeError:
        raise BadRequest(400, "request head is not ASCII", connection) from None
    parts = urlsplit(target)
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    return RequestHead(
        method=event.method.decode("ascii"),
        target=target,
        path=parts.path,
        query=query,
        headers=headers,
        connection=connection,
    )


async def send_response(
    stream: trio.abc.Stream,
    connection: h11.Connection,
    status: int,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    extra_headers: list[tuple[str, str]] | None = None,
) -> None:
    """Send one complete response and mark the connection for closing.

    The body is left out after a HEAD request; its length is still announced.
    On a socket, the write is bounded by the connection's stall timeout.
    """
    headers = [
        ("content-type", content_type),
        ("content-length", str(len(body))),
        ("connection", "close"),
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
        *(extra_headers or []),
    ]
    reason = REASONS.get(status, b"")
    if isinstance(connection, HttpConnection):
        connection.status = status
    data = connection.send(h11.Response(status_code=status, headers=headers, reason=reason))
    data = data or b""
    if not (isinstance(connection, HttpConnection) and connection.head_request):
        data += connection.send(h11.Data(data=body)) or b""
    data += connection.send(h11.EndOfMessage()) or b""
    if isinstance(stream, (trio.SocketStream, trio.SSLStream)):
        stall = STALL_TIMEOUT
        if isinstance(connection, HttpConnection):
            stall = connection.stall_timeout
        await send_all_bounded(stream, data, stall)
    else:  # an in-memory stream has no socket and no peer to stall
        await stream.send_all(data)


async def send_streamed(
    stream: Transport,
    connection: HttpConnection,
    parts: AsyncIterator[bytes],
    content_type: str,
    extra_headers: list[tuple[str, str]] | None = None,
) -> None:
    """Send a 200 whose body is ``parts``, each written as it comes (chunked to an
    HTTP/1.1 client, else up to the close), so a long body is never held whole. Every
    write is bounded by the stall timeout; the connection closes after it."""
    headers = [
        ("content-type", content_type),
        ("connection", "close"),
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
        *(extra_headers or []),
    ]
    response = h11.Response(status_code=200, headers=headers, reason=REASONS[200])
    await send_all_bounded(stream, connection.send(response) or b"", connection.stall_timeout)
    if not connection.head_request:
        async for part in parts:
            if part:
                data = connection.send(h11.Data(data=part)) or b""
                await send_all_bounded(stream, data, connection.stall_timeout)
    await send_all_bounded(
        stream, connection.send(h11.EndOfMessage()) or b"", connection.stall_timeout
    )


async def send_json(
    stream: trio.abc.Stream,
    connection: h11.Connection,
    status: int,
    payload: Any,
    extra_headers: list[tuple[str, str]] | None = None,
) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    await send_response(stream, connection, status, body, "application/json", extra_headers)
