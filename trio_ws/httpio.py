"""Plain HTTP on the shared port: read one request head with h11, answer it.

Every connection starts here. The head is read with a byte cap and the
caller's deadline, so a client that sends nothing (or too much) cannot hold
a slot. A websocket upgrade is not answered here: the bytes already read
are replayed through `ReplayStream` to trio-websocket, which parses the
handshake itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import h11
import trio

MAX_HEAD_BYTES: Final = 16 * 1024
RECEIVE_SIZE: Final = 4096

REASONS: Final = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    426: b"Upgrade Required",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


class HttpConnection(h11.Connection):
    """h11's server side, remembering whether the request was HEAD (h11 keeps that private),
    since a response to HEAD must carry no body."""

    def __init__(self, max_incomplete_event_size: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_incomplete_event_size)
        self.head_request = False


class BadRequest(Exception):
    """The peer sent something that is not an acceptable HTTP request head."""

    def __init__(self, status: int, detail: str, connection: h11.Connection) -> None:
        super().__init__(detail)
        self.status = status
        self.connection = connection


@dataclass
class RequestHead:
    """One parsed request head plus what is needed to answer or replay it."""

    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw: bytes
    connection: h11.Connection

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

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
    stream: trio.abc.Stream, max_bytes: int = MAX_HEAD_BYTES
) -> RequestHead | None:
    """Read until a full request head; None if the peer closed before sending one.

    Raises `BadRequest` for malformed or oversized heads. The caller bounds the
    time this may take.
    """
    connection = HttpConnection(max_bytes)
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
            return _head_from(event, bytes(raw), connection)
        if isinstance(event, h11.ConnectionClosed):
            return None
        raise BadRequest(400, f"unexpected HTTP event {type(event).__name__}", connection)


def _head_from(event: h11.Request, raw: bytes, connection: h11.Connection) -> RequestHead:
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
        raw=raw,
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
    data = connection.send(h11.Response(status_code=status, headers=headers, reason=reason))
    data = data or b""
    if not (isinstance(connection, HttpConnection) and connection.head_request):
        data += connection.send(h11.Data(data=body)) or b""
    data += connection.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)


async def send_json(
    stream: trio.abc.Stream, connection: h11.Connection, status: int, payload: Any
) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    await send_response(stream, connection, status, body, "application/json")


class ReplayStream(trio.abc.Stream):
    """A stream that first returns bytes already read, then reads from the real one.

    ``closed`` is set once it is closed, so whoever handed it over can tell
    that its user gave up on the connection (trio-websocket closes the
    stream after refusing a malformed handshake but reports nothing).
    """

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self.stream = stream
        self._prefix = prefix
        self.closed = trio.Event()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            if max_bytes is None:
                data, self._prefix = self._prefix, b""
            else:
                data, self._prefix = self._prefix[:max_bytes], self._prefix[max_bytes:]
            await trio.lowlevel.checkpoint()
            return data
        return bytes(await self.stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        self.closed.set()
        await self.stream.aclose()
