"""The events a project holds: each encoded once (`Outgoing`) and kept by seq (`History`).

An event is turned into JSON text once, and that text (and its UTF-8 bytes) is what
every subscriber, the journal and the history share: the fan-out never encodes per
subscriber. The history is bounded by count and by bytes, and found by ``seq``.
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections import deque
from dataclasses import dataclass
from typing import Final

from trio_ws.core import protocol
from trio_ws.core.protocol import JsonObject, MessageFields


@dataclass(eq=False, slots=True)
class Outgoing:
    """One message encoded once for every subscriber: its JSON ``text`` and that text's
    UTF-8 ``data``. ``seq`` is None for connection messages. Its websocket frame is
    the connection layer's business (`trio_ws.net.frames`)."""

    seq: int | None
    type: str
    text: str
    data: bytes

    @classmethod
    def of(cls, message: MessageFields, seq: int | None = None) -> Outgoing:
        text = protocol.encode(message)
        return cls(seq, message["type"], text, text.encode())

    @classmethod
    def event(cls, text: str) -> tuple[JsonObject, Outgoing]:
        """An event read back from a journal (its final text), and its decoded message."""
        message = json.loads(text)
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ValueError(f"journalled event is not an event: {text[:80]!r}")
        seq = message.get("seq")
        return message, cls(
            seq if isinstance(seq, int) else None,
            message["type"],
            text,
            text.encode(),
        )


class History:
    """Held events, oldest first, bounded by count and by encoded bytes (the history
    itself, and the snapshot's log tails).

    Found by ``seq`` (bisect), never by position, so a hole in the numbering
    could not shift a lookup. ``evicted_through`` is the highest ``seq`` no
    longer held: every event after it still is.
    """

    def __init__(self, max_events: int, max_bytes: int) -> None:
        if max_events < 1:
            raise ValueError("history must hold at least one event")
        if max_bytes < 1:
            raise ValueError("history_bytes must be at least 1")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.bytes = 0
        self.evicted_through = 0
        self._items: deque[Outgoing] = deque()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def oldest_seq(self) -> int | None:
        return self._items[0].seq if self._items else None

    def append(self, item: Outgoing) -> None:
        """Hold ``item`` (which has a seq), evicting the oldest beyond either bound."""
        items = self._items
        items.append(item)
        self.bytes += len(item.data)
        while items and (len(items) > self.max_events or self.bytes > self.max_bytes):
            evicted = items.popleft()
            self.bytes -= len(evicted.data)
            assert evicted.seq is not None
            self.evicted_through = evicted.seq

    def tail(self, count: int) -> list[Outgoing]:
        """The newest ``count`` held events (fewer if fewer are held), oldest first."""
        start = max(0, len(self._items) - count)
        return list(itertools.islice(self._items, start, None))

    def of_types(self, types: frozenset[str]) -> list[Outgoing]:
        """Every held event of one of ``types``, oldest first."""
        return [item for item in self._items if item.type in types]

    def after(self, seq: int, limit: int) -> list[Outgoing]:
        """Up to ``limit`` held events with a seq greater than ``seq``, in order."""
        start = bisect.bisect_right(self._items, seq, key=_seq_of)
        return list(itertools.islice(self._items, start, start + limit))


FLUSH: Final = Outgoing(None, "flush", "", b"")
"""Wakes a send task to write what its connection kept of a direct write; no frame."""


def _seq_of(item: Outgoing) -> int:
    assert item.seq is not None  # only events are held
    return item.seq
