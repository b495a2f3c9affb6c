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

import struct
from typing import Final

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


class FrameWriter:
    """Writes already-encoded frames to one trio-websocket server connection."""

    def __init__(self, ws: WebSocketConnection) -> None:
        frame_protocol = getattr(ws._wsproto.connection, "_proto", None)
        if frame_protocol is None:
            raise ValueError("the websocket handshake is not complete")
        if frame_protocol.extensions:
            raise ValueError("frames cannot be pre-encoded for a connection with extensions")
        self._ws = ws

    async def write(self, data: bytes) -> None:
        """Write whole frames; `ConnectionClosed` once the connection is closing or gone."""
        ws = self._ws
        if ws._close_reason is not None:
            raise ConnectionClosed(ws._close_reason)
        async with ws._stream_lock:
            if ws._close_reason is not None:
                raise ConnectionClosed(ws._close_reason)
            try:
                await ws._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await ws._abort_web_socket()
                raise ConnectionClosed(ws._close_reason) from None
