"""The fan-out fast path: a websocket frame encoded once per event.

A server-to-client frame is not masked, so the bytes of one event's frame
are the same for every subscriber: `text_frame` builds them once per event
(RFC 6455 section 5.2) and every subscriber's send task writes the same
bytes, a whole batch of them in one write (`WebSocket.send_frames`). That
is valid because `trio_ws.connection.accept` never negotiates an extension
(compression would make frames per-connection).
"""

from __future__ import annotations

import struct
from typing import Final

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
