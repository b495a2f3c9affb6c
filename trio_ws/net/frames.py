"""The fan-out fast path: websocket frames built once, shared by every subscriber.

A server-to-client frame is not masked, so the bytes of one event's frame are
the same for every subscriber. A `FanOut` the hub hands every subscriber in
one synchronous loop is joined into frames on the first subscriber's write and
the same bytes go to all the others (`fan_out_frames`, a one-entry cache by
identity: nothing can run between two subscribers' parts of one fan-out).
Frames of queued or caught-up messages are built per write (`frames_of`), with
headers looked up by payload size. That is valid because
`trio_ws.net.connection.accept` never negotiates an extension (compression
would make frames per-connection). The state layer's types carry no wire
bytes (LAYERS.md rule 2): they live here.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable
from typing import Final

from trio_ws.state.fanout import FanOut
from trio_ws.state.history import FLUSH, Outgoing

FIN_TEXT: Final = 0x81
"""FIN bit set, opcode 1 (text)."""


@functools.lru_cache(maxsize=4096)
def text_header(size: int) -> bytes:
    """The header of one complete, unmasked text frame of ``size`` payload bytes."""
    if size < 126:
        return struct.pack("!BB", FIN_TEXT, size)
    if size < 1 << 16:
        return struct.pack("!BBH", FIN_TEXT, 126, size)
    return struct.pack("!BBQ", FIN_TEXT, 127, size)


def frames_of(items: Iterable[Outgoing]) -> bytes:
    """The text frames of ``items``, joined for one write."""
    parts: list[bytes] = []
    append = parts.append
    for item in items:
        if item is FLUSH:  # a wake-up, not a message: no frame
            continue
        data = item.data
        append(text_header(len(data)))
        append(data)
    return b"".join(parts)


class _LastFanOut:
    """The frames of the fan-out being handed out now, kept until the next one."""

    fan_out: FanOut | None = None
    wire: bytes = b""


_last = _LastFanOut()


def fan_out_frames(fan_out: FanOut) -> bytes:
    """A fan-out batch's frames, joined on the first subscriber's write only."""
    if _last.fan_out is not fan_out:
        _last.wire = frames_of(fan_out.items)
        _last.fan_out = fan_out
    return _last.wire
