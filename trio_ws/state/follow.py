"""Following a shared journal (``--broker``): every node's commits, applied in seq
order (STATE.md 5). Another node's events are remembered, held and fanned out here
without running a pipeline; what this node has staged is numbered after them. When
the stored history is another epoch or no longer reaches back to this hub's head,
the hub starts again on it and resyncs every subscriber.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Final

import trio

from trio_ws.core.protocol import Stream
from trio_ws.journal.interface import JournalConflictError, JournalError, RecentPseqs, SharedJournal
from trio_ws.state.commit import JOURNAL_READ_CHUNK
from trio_ws.state.history import History, Outgoing
from trio_ws.state.hub_state import MAX_BACKLOG, HubState
from trio_ws.state.runs import RunRecorder
from trio_ws.state.snapshot import Snapshot, progress_of

log = logging.getLogger("trio_ws.state.hub")

STREAM_OF: Final[dict[str, Stream]] = {
    "log": "agent",
    "agent_update": "agent",
    "orchestrator_update": "agent",
    "agent_status": "agent",
    "dev_log": "dev",
    "dev_server_status": "dev",
}
"""Which producer stream makes each event type."""


class HubFollow(HubState):
    """Applying what other nodes committed to the shared journal."""

    async def follow_stored(self) -> None:
        """Apply what other nodes appended since this hub's head, or start again on the
        stored history (resyncing every subscriber) when it is another epoch or no
        longer reaches back here. JournalError if the journal cannot be read."""
        with trio.CancelScope(shield=True):
            async with self._commit_lock:
                if not self.closed:  # a closed journal is read no more
                    await self._follow_stored()

    async def apply_live(self, epoch: str, first: int, texts: Iterable[str]) -> None:
        """One batch another node (or this one) committed, as pub/sub delivered it:
        apply what is new; on a gap or another epoch, read the stored history instead.
        JournalError if it had to be read and could not."""
        rows = [(seq, text) for seq, text in enumerate(texts, start=first)]
        with trio.CancelScope(shield=True):
            async with self._commit_lock:  # an own commit in flight: its events come first
                if self.closed:
                    return
                if epoch != self.epoch or first > self.head + 1:
                    await self._follow_stored()
                elif rows and rows[-1][0] > self.head:
                    self._apply_remote(rows)

    async def _follow_stored_or_warn(self) -> bool:
        try:
            await self._follow_stored()
        except JournalError as exc:
            self._write_failed(exc)
            return False
        return True

    async def _follow_stored(self) -> None:
        journal = self.shared
        if journal is None:
            raise JournalConflictError(f"project {self.name}: its journal is not shared")
        stored = await journal.head()
        if stored is None or stored[0] != self.epoch:
            await self._start_again(journal)
            return
        head = stored[1]
        while self.head < head:
            rows = await journal.read_since(self.head, JOURNAL_READ_CHUNK)
            rows = [(seq, text) for seq, text in rows if seq <= head]
            if not rows or rows[0][0] != self.head + 1:  # trimmed past this node's head
                await self._start_again(journal)
                return
            self._apply_remote(rows)

    def _apply_remote(self, rows: list[tuple[int, str]]) -> None:
        """Committed events of another node, from this hub's head on: remember, hold and
        fan out each (no pipeline runs for them), then number what is staged after them."""
        items: list[Outgoing] = []
        head = self.head
        for seq, text in rows:
            if seq <= head:
                continue
            head = seq
            message, item = Outgoing.event(text)
            self._snapshot_state.remember(message, item)
            self.runs.feed(message)
            stream = STREAM_OF.get(item.type)
            if stream is not None:
                self.remote_seen[stream] = trio.current_time()
            if item.type == "progress":
                self.progress = progress_of(item)
            items.append(item)
        self.runs.take_finished()  # the node that committed them stored them
        if items:  # one write per subscriber for the whole read
            self._fan_out(items)
        if self.shared is not None:
            self.shared.seen(self.head)
        self._renumber()
        self._committed.set()
        self._committed = trio.Event()

    def _renumber(self) -> None:
        """Give the staged events the seqs after the head (another node took theirs)."""
        seq = self.head
        renumbered = []
        for message, item in self._pending:
            seq += 1
            if item.seq != seq:
                message["seq"] = seq
                item = Outgoing.of(message, seq)
            renumbered.append((message, item))
        self._pending = renumbered
        self.seq = seq

    async def _start_again(self, journal: SharedJournal) -> None:
        """Continue on the history stored now: another epoch (Redis lost its data) or
        the same one trimmed past this node's head. Every subscriber is resynced; what
        is staged here is numbered after the stored head."""
        state = await journal.reopen()
        reason = "epoch_changed" if state.epoch != self.epoch else "gap_evicted"
        log.warning(
            "project %s: the shared history starts again (%s): epoch %s at seq %d",
            self.name,
            reason,
            state.epoch,
            state.head,
        )
        # When the stream holds the whole history (a new epoch does), subscribers are
        # resynced at its start and then get its events live, as a hub that never
        # lost Redis would have sent them; else at the stored head and snapshot.
        whole = state.oldest == 1
        self.epoch = state.epoch
        self.head = 0 if whole else state.head
        self._committed_pseqs = RecentPseqs()
        self._committed_pseqs.update(state.pseqs)
        self.history = History(self.history.max_events, self.history.max_bytes)
        self._logs = History(MAX_BACKLOG, self.history.max_bytes)
        self._dev_logs = History(MAX_BACKLOG, self.history.max_bytes)
        self._snapshot_state = Snapshot()
        self.runs = RunRecorder(state.epoch)
        self.progress = None
        stored = state.state or {}
        if not whole and "snapshot" in stored:
            try:
                self._snapshot_state = Snapshot.from_state(stored["snapshot"])
            except (KeyError, TypeError, ValueError) as exc:
                log.error("project %s: stored snapshot unreadable (%s)", self.name, exc)
        if not whole and "runs" in stored:
            try:
                self.runs = RunRecorder.from_state(stored["runs"], state.epoch)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("project %s: stored runs unreadable (%s)", self.name, exc)
        if self._snapshot_state.progress is not None:
            self.progress = progress_of(self._snapshot_state.progress)
        if not whole:
            await self._hold_stored(journal, state)
            self.head = state.head
        self.resync_all(reason)
        while self.head < state.head:
            rows = await journal.read_since(self.head, JOURNAL_READ_CHUNK)
            if not rows:
                break
            self._apply_remote([(seq, text) for seq, text in rows if seq <= state.head])
        self._renumber()
        self._dirty.update(("agent", "dev"))  # a new epoch holds no tracker state yet
        if self._pending or self._pending_pseqs:
            self._wake.set()
