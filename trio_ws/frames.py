"""The fan-out fast path: websocket frames encoded once, written in batches.

A server-to-client frame is not masked, so the bytes of one event's frame
are the same for every subscriber: `text_frame` builds them once per event
(RFC 6455 section 5.2) and every subscriber's send task writes the same
bytes. `FrameWriter` writes many such frames with one ``send_all``.

This is the only module that reaches past trio-websocket's public API (its
``_stream``, ``_stream_lock`` and ``_close_reason``). Writing under the
connection's own stream lock keeps whole frames from interleaving with what
trio-websocket itself sends (pongs, the close handshake), and checking the
close reason first means nothing is written after a close frame. Data
frames carry no state in wsproto as long as no extension (compression) was
negotiated, which trio-websocket's server never does; `FrameWriter`
refuses a connection that has one, rather than corrupt its stream.
"""

from __future__ import annotations

import os
import struct
from typing import Final, NoReturn

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

FIN_TEXT: Final = 0x81
"""FIN bit set, opcode 1 (text)."""


def text_frame(payload: bytes) -> bytes:
    """One complete, unmasked text frame carrying ``payload`` (UTF-8 JSON)."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", FIN_TEXT, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", FIN_TEXT, 126, size)
    else:
        header = struct.pack("!BBQ", FIN_TEXT, 127, size)
    return header + payload


class WriteStalled(Exception):
    """The peer accepted none of a write for the stall timeout."""


class FrameWriter:
    """Writes already-encoded frames to one trio-websocket server connection.

    The common case costs no scheduler round trip: when the connection's
    stream lock is free and the kernel takes all the bytes, they are written
    at once with a non-blocking ``send`` on the socket. Only what the kernel
    does not take is awaited, through the socket stream, under the stall
    timeout. Both paths hold trio-websocket's stream lock, so frames never
    interleave with its own.
    """

    def __init__(
        self, ws: WebSocketConnection, socket_stream: trio.SocketStream, stall_timeout: float
    ) -> None:
        frame_protocol = getattr(ws._wsproto.connection, "_proto", None)
        if frame_protocol is None:
            raise ValueError("the websocket handshake is not complete")
        if frame_protocol.extensions:
            raise ValueError("frames cannot be pre-encoded for a connection with extensions")
        self._ws = ws
        self._stream = socket_stream
        self._fd = socket_stream.socket.fileno()
        self._stall_timeout = stall_timeout
        self.immediate = 0
        """Writes the kernel took whole, with no waiting (the fast path)."""

    async def write(self, data: bytes) -> None:
        """Write whole frames; `ConnectionClosed` once the connection is closing or gone,
        `WriteStalled` when the peer takes nothing for the stall timeout."""
        ws = self._ws
        if ws._close_reason is not None:
            raise ConnectionClosed(ws._close_reason)
        lock = ws._stream_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            if ws._close_reason is not None:
                raise ConnectionClosed(ws._close_reason)
            try:
                sent = os.write(self._fd, data)
            except BlockingIOError:
                sent = 0
            except OSError:
                await self._broken()
            if sent == len(data):
                self.immediate += 1
                return
            with trio.move_on_after(self._stall_timeout) as scope:
                try:
                    await self._stream.send_all(memoryview(data)[sent:])
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._broken()
            if scope.cancelled_caught:
                raise WriteStalled
        finally:
            lock.release()

    async def _broken(self) -> NoReturn:
        await self._ws._abort_web_socket()
        raise ConnectionClosed(self._ws._close_reason) from None
