"""Server-side websockets that trio-ws owns: wsproto's frame protocol over the front door's socket.

The h11 front door (`trio_ws.net.httpio`) has already read and parsed the upgrade
request; `accept` answers it on the same h11 connection and hands the bytes
that followed the head (a client may send its first frame in the same
packet) to a wsproto `Connection`. From there a `WebSocket` is the one owner
of every byte written to the socket: data, pongs and close frames all go
through `_write` under one lock, so frames never interleave, and every write
is bounded by the stall timeout, which counts time *without progress*: a
peer that takes no byte for that long is cut (reset), a slow reader is not.

Frames to a client are not masked, so the fan-out writes frames built once
per event (`frames.frames_of`) with `send_frames`; that is valid only while
no extension is negotiated, and `accept` never negotiates one (an offered
permessage-deflate is ignored, as RFC 6455 allows).

Reading is done by whichever task calls `get_message` (an endpoint's receive
loop); pings are answered and the close handshake is completed there.
`aclose` waits for the peer's close reply through the same reader, so a
connection never has two readers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Final

import h11
import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.utilities import generate_accept_token

from trio_ws.net.httpio import (
    RequestHead,
    Transport,
    WriteStalled,
    reset,
    send_all_bounded,
    send_response,
    tcp_of,
)
from trio_ws.runtime.constructors import NoPublicConstructor

log = logging.getLogger("trio_ws.net.connection")

CLOSE_TIMEOUT: Final = 2.0
"""How long a close handshake may take before the TCP connection is dropped anyway."""
RECEIVE_SIZE: Final = 64 * 1024
DISCARD_READS: Final = 16
"""At most this many reads of unread input are discarded when a connection ends."""
ABNORMAL: Final = 1006
"""Close code for a connection that ended without a close frame (never sent on the wire)."""


class ConnectionClosed(Exception):
    """The websocket is closed or closing: nothing more can be sent or received."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"{code} {reason}".strip())
        self.code = code
        self.reason = reason


class PeerStalled(ConnectionClosed):
    """The peer accepted no byte for the stall timeout; the connection was reset."""


def _refusal(head: RequestHead) -> tuple[int, str, list[tuple[str, str]]] | None:
    """What is wrong with an upgrade request (RFC 6455 4.2.1), as wsproto checks it."""
    if head.method != "GET":
        return 400, "a websocket upgrade must be a GET", []
    tokens = {token.strip().lower() for token in (head.header("connection") or "").split(",")}
    if "upgrade" not in tokens:
        return 400, "missing header Connection: Upgrade", []
    version = head.header("sec-websocket-version")
    if version != "13":
        status = 426 if version else 400
        return status, "Sec-WebSocket-Version must be 13", [("sec-websocket-version", "13")]
    if not head.header("sec-websocket-key"):
        return 400, "missing header Sec-WebSocket-Key", []
    return None


async def accept(
    stream: Transport, head: RequestHead, *, max_message: int, stall_timeout: float
) -> WebSocket | None:
    """Answer a websocket upgrade on the front door's h11 connection; None if it was
    refused (400/426, answered here). No extension or subprotocol is negotiated."""
    connection = head.connection
    refusal = _refusal(head)
    if refusal is None and not isinstance(connection.next_event(), h11.EndOfMessage):
        refusal = 400, "a websocket upgrade has no body", []
    if refusal is not None:
        status, detail, headers = refusal
        body = f"{detail}\n".encode()
        await send_response(stream, connection, status, body, extra_headers=headers)
        return None
    key = (head.header("sec-websocket-key") or "").encode("latin-1")
    response = h11.InformationalResponse(
        status_code=101,
        reason=b"Switching Protocols",
        headers=[
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", generate_accept_token(key).decode("ascii")),
        ],
    )
    await send_all_bounded(stream, connection.send(response) or b"", stall_timeout)
    trailing, _closed = connection.trailing_data
    protocol = Connection(ConnectionType.SERVER, trailing_data=bytes(trailing))
    return WebSocket._create(stream, protocol, max_message=max_message, stall_timeout=stall_timeout)


async def _take(lock: trio.Lock) -> None:
    """Acquire ``lock``, with no checkpoint when it is free (the common case): a caller
    that needs none, such as a write that must not yield between frames, stays put."""
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()


class WebSocket(metaclass=NoPublicConstructor):
    """One accepted server-side websocket; the only writer of its socket. Made only by
    `accept`, once the handshake is answered."""

    __slots__ = (  # thousands sit idle: no per-instance dict
        "_ended", "_max_message", "_parts", "_pings", "_protocol", "_readable", "_reading",
        "_rest", "_size", "_stall_timeout", "_stream", "_tls", "_writing", "closed",
        "data_writes", "immediate",
    )  # fmt: skip

    def __init__(
        self,
        stream: Transport,
        protocol: Connection,
        *,
        max_message: int,
        stall_timeout: float,
    ) -> None:
        self._stream = stream
        self._tls = isinstance(stream, trio.SSLStream)
        """Through TLS every byte goes through the `trio.SSLStream`: no direct path."""
        self._protocol = protocol
        self._max_message = max_message
        self._stall_timeout = stall_timeout
        self._writing = trio.Lock()
        self._reading = trio.Lock()
        self._pings: dict[bytes, trio.Event] = {}
        self._parts: list[str | bytes] = []
        self._size = 0
        self._readable = True
        """False once nothing more can be parsed: after a protocol error, or the end."""
        self._ended = False
        """True once the peer's close (or the end of the TCP stream) was seen."""
        self.closed: ConnectionClosed | None = None
        """Why the websocket closed (the first close frame, either way), once it did."""
        self.immediate = 0
        """Writes the kernel took whole, with no waiting (the fast path)."""
        self.data_writes = 0
        """Writes of data frames, by either path (`send_frames`, `send_now`)."""
        self._rest: memoryview | None = None
        """What the kernel did not take of a `send_now`, a view of the frames every
        subscriber shares (no copy per slow subscriber); written before anything else."""

    # -- writing -------------------------------------------------------------------

    async def send_frames(self, data: bytes) -> None:
        """Write already-encoded data frames (`frames.frames_of`) in one write.

        Raises `ConnectionClosed` once a close frame was sent or the connection
        is gone, `WriteStalled` when the peer took nothing for the stall timeout.
        """
        await _take(self._writing)
        try:
            self._check_open()
            self.data_writes += 1
            await self._write(data)
        finally:
            self._writing.release()

    def send_now(self, data: bytes) -> int:
        """Write already-encoded data frames at once if the socket takes them without
        waiting and nothing else is writing: the fan-out's direct path, with no task
        switch. Returns the bytes the kernel took: 0 when it wrote nothing (the caller
        queues the frames for the send task instead); when fewer than all, the rest is
        kept and goes out first with the next write, which the caller must cause
        (the send task's next `send_frames`, even of no bytes).

        Never waits, so it cannot be cancelled partway through a frame.
        """
        if self._tls or self._writing.locked() or self._rest is not None or self._ended:
            return 0
        if self._protocol.state is not ConnectionState.OPEN:
            return 0
        try:
            sent = os.write(self._stream.socket.fileno(), data)
        except OSError:
            # Would block, or the connection is failing: the send task's awaited write
            # meets the same condition and handles it (waits, or reports the failure).
            return 0
        if sent:
            self.data_writes += 1
            if sent == len(data):
                self.immediate += 1
            else:
                self._rest = memoryview(data)[sent:]
        return sent

    async def send_message(self, text: str) -> None:
        """Send one text message (encoded by wsproto)."""
        await self._send_event(TextMessage(data=text))

    async def ping(self, payload: bytes) -> None:
        """Send a ping and wait for its pong; someone must be reading (`get_message`)."""
        answered = self._pings.setdefault(payload, trio.Event())
        try:
            await self._send_event(Ping(payload=payload))
            await answered.wait()
            self._check_open()  # woken by the end of the connection, not by a pong
        finally:
            self._pings.pop(payload, None)

    async def answers_ping(self, payload: bytes, within: float) -> bool | None:
        """Ping and wait up to ``within`` seconds for the pong: True when it came, None
        when the connection ended meanwhile, False when the peer stayed silent. A
        silent peer's connection is reset here: the deadline may have cut the ping
        mid-frame, and a peer that is gone sends no FIN to end it otherwise."""
        with trio.move_on_after(within) as waited:
            try:
                await self.ping(payload)
            except ConnectionClosed:
                return None
        if waited.cancelled_caught:
            self.abort()
            return False
        return True

    async def _send_event(self, event: Event) -> None:
        """Encode under the write lock, so wsproto's state and the bytes on the wire agree."""
        async with self._writing:
            self._check_open()
            await self._write(self._protocol.send(event))

    async def _send_close(self, code: int, reason: str) -> None:
        """Our close frame, unless one was already sent; ends what may be sent."""
        async with self._writing:
            if self._protocol.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                return
            if self.closed is None:
                self.closed = ConnectionClosed(code, reason)
            if self._ended:
                return
            await self._write(self._protocol.send(CloseConnection(code=code, reason=reason)))

    def _check_open(self) -> None:
        if self._protocol.state is not ConnectionState.OPEN or self._ended:
            raise self._closed_error()

    def _closed_error(self) -> ConnectionClosed:
        why = self.closed
        if why is None:
            return ConnectionClosed(ABNORMAL, "connection lost")
        return type(why)(why.code, why.reason)

    async def _write(self, data: bytes) -> None:
        """Every byte sent goes through here, with the write lock held: first what a
        direct write (`send_now`) left, on its own so that it is never copied, then
        ``data``."""
        rest, self._rest = self._rest, None
        if rest is not None:
            await self._write_bounded(rest)
        if data:
            await self._write_bounded(data)

    async def _write_bounded(self, data: bytes | memoryview) -> None:
        try:
            writes = await send_all_bounded(self._stream, data, self._stall_timeout)
        except WriteStalled as exc:
            self._lost(PeerStalled(ABNORMAL, str(exc)))
            raise PeerStalled(ABNORMAL, str(exc)) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._lost(ConnectionClosed(ABNORMAL, str(exc)))
            raise self._closed_error() from None
        if writes == 1:
            self.immediate += 1

    # -- reading -------------------------------------------------------------------

    async def get_message(self) -> str | bytes:
        """The next complete message. Answers pings, completes the close handshake,
        and closes 1009 a message over the size limit and 1002/1007 a protocol
        error; raises `ConnectionClosed` once the websocket is closed.

        A message already received is returned without a checkpoint, so a caller
        takes in a burst the peer sent before anything else runs (a producer's
        burst becomes one commit and one write per subscriber); every read from
        the socket checkpoints, so no peer can keep the loop to itself."""
        await _take(self._reading)
        try:
            while True:
                for event in self._protocol.events():
                    message = await self._handle(event)
                    if message is not None:
                        return message
                    if not self._readable:
                        break
                if not self._readable:
                    raise self._closed_error()
                # Read here, not in a helper: an idle connection waits in this frame
                # (one coroutine frame fewer for each of thousands of watchers).
                await trio.lowlevel.checkpoint()
                data = await self._read()
                if data:
                    self._protocol.receive_data(data)
                else:
                    self._end(ConnectionClosed(ABNORMAL, "connection lost"))
        finally:
            self._reading.release()

    async def _read(self) -> bytes:
        """What the peer sent next; b"" at the end of the stream or when it broke.

        A non-blocking read, then trio's wait for readability, on the live
        socket: an idle connection waits here with two frames fewer than through
        ``SocketStream.receive_some`` (thousands of idle subscribers each hold one).
        Through TLS, the `trio.SSLStream` reads and decrypts.
        """
        if isinstance(self._stream, trio.SSLStream):
            try:
                return bytes(await self._stream.receive_some(RECEIVE_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return b""
        sock = self._stream.socket
        while True:
            try:
                return os.read(sock.fileno(), RECEIVE_SIZE)
            except BlockingIOError:
                pass
            except OSError:  # reset, or closed here (fileno() is -1): the end either way
                return b""
            try:
                await trio.lowlevel.wait_readable(sock)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return b""

    async def _handle(self, event: Event) -> str | bytes | None:
        if isinstance(event, (TextMessage, BytesMessage)):
            return await self._message_part(event)
        if isinstance(event, Ping):
            # A ping after our close frame gets no pong (RFC 6455 5.5.2).
            with contextlib.suppress(ConnectionClosed):
                await self._send_event(Pong(payload=event.payload))
        elif isinstance(event, Pong):
            answered = self._pings.get(bytes(event.payload))
            if answered is not None:
                answered.set()
        elif isinstance(event, CloseConnection):
            await self._close_event(event)
        return None

    async def _message_part(self, event: TextMessage | BytesMessage) -> str | bytes | None:
        data = event.data if isinstance(event.data, str) else bytes(event.data)
        if isinstance(data, str):
            self._size += len(data) if data.isascii() else len(data.encode())
        else:
            self._size += len(data)
        if self._size > self._max_message:
            await self._fail(1009, f"message over {self._max_message} bytes")
            return None
        self._parts.append(data)
        if not event.message_finished:
            return None
        parts, self._parts, self._size = self._parts, [], 0
        if isinstance(event, TextMessage):
            return "".join(part for part in parts if isinstance(part, str))
        return b"".join(part for part in parts if isinstance(part, bytes))

    async def _close_event(self, event: CloseConnection) -> None:
        state = self._protocol.state
        if state is ConnectionState.REMOTE_CLOSING:
            # The peer closes first: echo its code, then end the TCP connection.
            self.closed = ConnectionClosed(event.code, event.reason or "")
            with contextlib.suppress(ConnectionClosed):  # then it just ends
                await self._send_close(event.code, event.reason or "")
            self._end(self.closed)
        elif state is ConnectionState.CLOSED:
            self._end(self.closed or ConnectionClosed(event.code, event.reason or ""))
        else:
            # wsproto reports a frame it cannot parse as a close event and leaves
            # the connection open: fail it with the code it names (RFC 6455 7.1.7).
            await self._fail(event.code, event.reason or "protocol error")

    async def _fail(self, code: int, reason: str) -> None:
        """Fail the connection on a bad frame or message (RFC 6455 7.1.7): our close
        frame, then the TCP connection is closed at once, by the server first (7.1.1).
        Nothing after a bad frame can be parsed, so there is no close reply to wait for."""
        log.info("websocket closed %d: %s", code, reason)
        self._readable = False
        self._parts, self._size = [], 0
        with contextlib.suppress(ConnectionClosed):  # then it just ends
            await self._send_close(code, reason)
        if not self._ended:
            self._end(self.closed or ConnectionClosed(code, reason))

    def _end(self, why: ConnectionClosed) -> None:
        """The websocket is over (the peer closed or vanished, or we failed it): the
        server ends the TCP connection first (RFC 6455 7.1.1). Our FIN goes out
        after whatever was written (the close frame); what the peer sent and nobody
        will read is discarded first, so that closing does not turn into a reset
        that could cost the peer the close frame still in its buffers."""
        self._over(why)
        sock = tcp_of(self._stream).socket
        with contextlib.suppress(OSError):  # already gone: closing is all that is left
            sock.shutdown(socket.SHUT_WR)
            for _ in range(DISCARD_READS):
                if not os.read(sock.fileno(), RECEIVE_SIZE):
                    break
        sock.close()

    def _lost(self, why: ConnectionClosed) -> None:
        """We give up on the connection (a stalled or failed write, no close reply): reset it."""
        self._over(why)
        reset(self._stream)

    def _over(self, why: ConnectionClosed) -> None:
        if self.closed is None:
            self.closed = why
        self._readable = False
        self._ended = True
        for answered in self._pings.values():
            answered.set()  # nobody will answer; `ping` raises once woken

    # -- closing -------------------------------------------------------------------

    def abort(self) -> None:
        """Reset the connection now, without a close handshake (a peer that is gone)."""
        self._lost(ConnectionClosed(ABNORMAL, "aborted"))

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """The close handshake, bounded by ``CLOSE_TIMEOUT``: send our close frame
        (unless one was sent), wait for the peer's, then end the TCP connection;
        reset it if the peer does not answer in time. Safe to call more than once."""
        try:
            with trio.move_on_after(CLOSE_TIMEOUT), contextlib.suppress(ConnectionClosed):
                await self._send_close(code, reason)
                await self._drain()
        finally:  # also when cancelled: the connection never outlives this call
            if not self._ended:
                self._lost(self.closed or ConnectionClosed(code, reason))

    async def _drain(self) -> None:
        """Read until the peer's close or EOF, discarding messages: they arrived after ours."""
        while not self._ended:
            if self._readable:
                with contextlib.suppress(ConnectionClosed):  # the loop condition decides
                    await self.get_message()
                continue
            async with self._reading:
                if self._ended:
                    return
                data = await self._read()
                if not data:
                    self._end(self.closed or ConnectionClosed(ABNORMAL, "connection lost"))
