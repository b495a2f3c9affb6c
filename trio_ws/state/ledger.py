"""Exactly once into a project (PROTOCOL.md 4.2): which of a producer's items are new.

A producer numbers its items (``pseq``) and sends again whatever was not acked,
so a server sees some items twice, and after a restart it sees items it never
saw. One `ProducerLedger` per project stream is the only place that decides: it
holds the highest pseq applied for each producer id, says which items of a
message are a resend (skipped), which come next (applied) and which leave a gap
(refused: resend from there). What it applies it tells the hub, which commits the
pseqs with their events; an ack says only what is committed (`committed_of`).

A producer the ledger does not know (a new run, or any producer after a restart)
starts where its oldest unacknowledged item is: everything before it was acked.
The ledger keeps the most recently used `MAX_PRODUCER_IDS` ids, as the journal
does, so a server that sees a new id per run does not grow for its whole life.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from trio_ws.core.protocol import Stream
from trio_ws.journal.interface import MAX_PRODUCERS
from trio_ws.state.hub import ProjectHub

MAX_PRODUCER_IDS: Final = MAX_PRODUCERS
"""Producer ids a ledger remembers the applied pseq of; the least recently used goes
first (the journal keeps as many per stream, the least recently written going first)."""


def producer_key(stream: Stream, producer_id: str) -> str:
    """How the journal names a producer: its stream and its id."""
    return f"{stream}:{producer_id}"


def gap(expected: int, got: int) -> str:
    return f"pseq gap: expected {expected}, got {got}; resend from there"


@dataclass
class ProducerLedger:
    """The applied pseqs of one project stream's producers."""

    stream: Stream
    hub: ProjectHub
    applied: OrderedDict[str, int] = field(default_factory=OrderedDict)

    def applied_of(self, producer_id: str) -> int:
        """The highest pseq applied for ``producer_id`` (0 if none); counts as a use."""
        if producer_id not in self.applied:
            return 0
        self.applied.move_to_end(producer_id)
        return self.applied[producer_id]

    def committed_of(self, producer_id: str) -> int:
        """The highest pseq whose events the journal holds: what acks may say (0 for an
        id the ledger has forgotten, like one after a restart)."""
        committed = self.hub.committed_pseqs.get(producer_key(self.stream, producer_id), 0)
        return min(committed, self.applied_of(producer_id))

    def remember(self, producer_id: str, pseq: int) -> None:
        """``producer_id`` was applied up to ``pseq`` already (the journal says so); the
        least recently used id beyond the bound is forgotten. That is never the connected
        producer: only it records while connected, so it is always the most recent."""
        self.applied[producer_id] = pseq
        self.applied.move_to_end(producer_id)
        while len(self.applied) > MAX_PRODUCER_IDS:
            self.applied.popitem(last=False)

    def lines_to_skip(self, producer_id: str, first: int, count: int) -> int | str:
        """Of ``count`` lines numbered from ``first``, how many at the start were applied
        already (all ``count``: a resend), or the gap they leave (a refusal to send)."""
        self._baseline(producer_id, first)
        applied = self.applied_of(producer_id)
        skip = max(0, applied + 1 - first)
        if skip >= count:
            return count
        if first + skip != applied + 1:
            return gap(applied + 1, first + skip)
        return skip

    def item_is_new(self, producer_id: str, pseq: int) -> bool | str:
        """Whether one item (a status, a progress) comes next: True to apply it, False
        for a resend (skip it silently), or the gap it leaves."""
        self._baseline(producer_id, pseq)
        applied = self.applied_of(producer_id)
        if pseq <= applied:
            return False
        if pseq != applied + 1:
            return gap(applied + 1, pseq)
        return True

    def applied_through(self, producer_id: str, pseq: int) -> None:
        """Items up to ``pseq`` were applied to the hub: the hub commits the pseq with
        their events (and acks follow the commit)."""
        self.remember(producer_id, pseq)
        self.hub.applied(producer_key(self.stream, producer_id), pseq)

    def _baseline(self, producer_id: str, pseq: int) -> None:
        """A producer this ledger does not know starts at its oldest unacked item."""
        if producer_id not in self.applied:
            self.applied_through(producer_id, pseq - 1)
