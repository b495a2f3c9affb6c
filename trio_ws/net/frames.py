"""The fan-out fast path: a websocket frame header built once per event.

A server-to-client frame is not masked, so the bytes of one event's frame
are the same for every subscriber: `frames_of` builds each message's header
once (RFC 6455 section 5.2) and keeps it on the message, and every
subscriber's send task writes the same bytes, a whole batch of them in one
write (`WebSocket.send_frames`); a `FanOut` the fan-out hands every
subscriber is joined once for all (`fan_out_frames`). That is valid because
`trio_ws.net.connection.accept` never negotiates an extension (compression
would make frames per-connection).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final

from trio_ws.state.fanout import FanOut
from trio_ws.state.history import Outgoing

FIN_TEXT: Final = 0x81
"""FIN bit set, opcode 1 (text)."""


def text_header(size: int) -> bytes:
    """The header of one complete, unmasked text frame of ``size`` payload bytes."""
    if size < 126:
        return struct.pack("!BB", FIN_TEXT, size)
    if size < 1 << 16:
        return struct.pack("!BBH", FIN_TEXT, 126, size)
    return struct.pack("!BBQ", FIN_TEXT, 127, size)


def frames_of(items: Iterable[Outgoing]) -> bytes:
    """The text frames of ``items``, joined for one write; each message's header is
    built on its first write and kept on it for every later one."""
    parts: list[bytes] = []
    append = parts.append
    for item in items:
        header = item.header
        if header is None:
            header = item.header = text_header(len(item.data))
        append(header)
        append(item.data)
    return b"".join(parts)


def fan_out_frames(fan_out: FanOut) -> bytes:
    """A fan-out batch's frames, joined on the first subscriber's write only."""
    wire = fan_out.wire
    if wire is None:
        wire = fan_out.wire = frames_of(fan_out.items)
    return wire
