"""Refusing a websocket the protocol's way: the ``error`` first, then the close.

Every refusal is a `trio_ws.core.errors.Refusal`, which knows its code and its
words; this is the one place that says them on a connection.
"""

from __future__ import annotations

import trio

from trio_ws.core import protocol
from trio_ws.core.errors import Refusal
from trio_ws.net.connection import CLOSE_TIMEOUT, WebSocket


async def refuse(ws: WebSocket, refusal: Refusal) -> None:
    """Send ``refusal``'s ``error`` (bounded: a peer that reads nothing does not hold the
    close up) and close with its code and reason."""
    with trio.move_on_after(CLOSE_TIMEOUT):
        await ws.send_message(protocol.encode(refusal.message()))
    await ws.aclose(refusal.code, refusal.close_reason)
