"""The hub's commit: events are numbered and staged by producers, then its one writer
commits each batch to the journal (with the producers' pseqs and the snapshot state
after it) and only then fans the events out and lets the producers' acks advance
(STATE.md 3.1). A failed write keeps what is staged, warns once per streak and is
retried with backoff; `close` commits what is left, once, and closes the journal.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Final

import trio

from trio_ws.core.pipeline import AgentPipeline, DevPipeline
from trio_ws.core.protocol import Stream
from trio_ws.journal.interface import (
    CHECKPOINT_EVERY,
    Batch,
    Checkpoint,
    Journal,
    JournalConflictError,
    JournalError,
    JournalState,
    JsonObject,
    RecentPseqs,
    StoredRun,
)
from trio_ws.runtime.backoff import Backoff
from trio_ws.state.history import Outgoing
from trio_ws.state.hub_state import HubState
from trio_ws.state.replay import LOG_TAIL
from trio_ws.state.runs import RunRecorder
from trio_ws.state.snapshot import Snapshot, progress_of

log = logging.getLogger("trio_ws.state.hub")

COMMIT_RETRY: Final = (0.05, 2.0)
"""A failed commit is retried after 50 ms, doubling per failure in a row up to 2 s."""
JOURNAL_READ_CHUNK: Final = 1000
"""Events read from the journal per call when a hub opens."""
CONFLICT_RETRIES: Final = 20
"""Appends in a row that may find the shared history moved on (another node appended
first) before a commit counts as failed; each retry first applies what was appended."""


class HubCommit(HubState):
    """Opening the journal, staging, committing, closing."""

    async def open(self, journal: Journal) -> JournalState:
        """Continue the history ``journal`` holds (or the new epoch it starts): epoch,
        head, producers' pseqs, pipelines, snapshot, held events and log tails."""
        state = await journal.open()
        self.journal = journal
        self.epoch = state.epoch
        self.seq = self.head = state.head
        self.runs = RunRecorder(state.epoch)
        self._committed_pseqs = RecentPseqs()
        self._committed_pseqs.update(state.pseqs)
        if state.state is not None:
            self._restore(state.state)
        await self._hold_stored(journal, state)
        if state.new_epoch == "corrupt":
            self.warn(
                "journal",
                f"the journal could not be read and was moved aside to {state.moved_aside}; "
                "history before this epoch is lost",
                key="journal:corrupt",
            )
        return state

    async def _hold_stored(self, journal: Journal, state: JournalState) -> None:
        """Hold the events ``journal`` still has, up to ``state``'s head."""
        self.history.evicted_through = state.oldest - 1
        seq = state.oldest - 1
        while seq < state.head:
            chunk = await journal.read_since(seq, JOURNAL_READ_CHUNK)
            if not chunk:
                break
            for found, text in chunk:
                if found > state.head:
                    return
                self._hold(Outgoing.event(text)[1])
            seq = chunk[-1][0]

    def _restore(self, state: JsonObject) -> None:
        """Each part the journal holds: a shared journal may hold one stream's trackers
        and not yet the other's (only that stream ran), and an unreadable part is
        logged and starts afresh without costing the others."""
        for key in ("agent", "dev", "snapshot", "runs"):
            if key not in state:
                continue
            try:
                if key == "runs":
                    self.runs = RunRecorder.from_state(state[key], self.epoch)
                elif key == "agent":
                    self.agent = AgentPipeline.from_state(state[key], self._clock, self._secrets)
                elif key == "dev":
                    self.dev = DevPipeline.from_state(state[key], self._clock, self._secrets)
                else:
                    self._snapshot_state = Snapshot.from_state(state[key])
            except (KeyError, TypeError, ValueError) as exc:
                log.error(
                    "project %s: journalled %s state unreadable (%s); it starts afresh",
                    self.name,
                    key,
                    exc,
                )
        if self._snapshot_state.progress is not None:
            self.progress = progress_of(self._snapshot_state.progress)

    def applied(self, producer: str, pseq: int) -> None:
        """``producer`` (a key naming stream and id) has been applied up to ``pseq``;
        acked once committed."""
        self._pending_pseqs[producer] = pseq
        self._wake.set()

    def touch(self, producer: str) -> None:
        """``producer`` is back: its committed pseq is written again, so that it counts
        as recently used here and in the journal (which keep the newest MAX_PRODUCERS)."""
        pseq = self.committed_pseqs.get(producer)
        if pseq is not None and producer not in self._pending_pseqs:
            self.applied(producer, pseq)

    @property
    def committed_pseqs(self) -> dict[str, int]:
        """Each producer key's highest committed pseq: what its acks may say. The most
        recently written MAX_PRODUCERS of each stream, as the journal keeps them."""
        return self._committed_pseqs.pseqs

    @property
    def pending(self) -> int:
        """Events numbered but not yet committed."""
        return len(self._pending)

    async def run_writer(self) -> None:
        """The project's one writer: commit what is staged, then fan it out; on a write
        failure keep it (new items join it), warn once per streak and retry with backoff.
        Returns once `close` began (which commits what is left itself) or when cancelled."""
        retry = Backoff(*COMMIT_RETRY, jitter=None)
        while not self.closed:
            await self._wake.wait()
            self._wake = trio.Event()
            while (self._pending or self._pending_pseqs) and not self.closed:
                if await self.commit():
                    retry.reset()
                elif not self.closed:
                    with trio.move_on_after(retry.next()):
                        await self._closing.wait()

    async def commit(self) -> bool:
        """Commit everything staged as one batch and fan it out; False if the journal
        could not write it (it stays staged) or the hub is closing. One commit at a time
        (writer, shutdown); shielded, as the worker thread runs to its end anyway: never
        lose track of a commit it made."""
        with trio.CancelScope(shield=True):
            # No checkpoint for a free lock (the writer's every commit): the events
            # waiting for this commit would wait for a scheduler pass too.
            try:
                self._commit_lock.acquire_nowait()
            except trio.WouldBlock:
                await self._commit_lock.acquire()
            try:
                if self.closed:  # `close` committed the rest: the journal is not ours now
                    return False
                if not (self._pending or self._pending_pseqs):
                    return True  # the commit just before took it all
                done = await self._commit_following()
            finally:
                self._commit_lock.release()
        return done

    async def _commit_following(self) -> bool:
        for _ in range(CONFLICT_RETRIES):
            try:
                return await self._commit()
            except JournalConflictError as exc:
                # Another node appended first (or the shared history started again):
                # apply theirs, number ours after it, try again.
                log.info("project %s: %s; following it", self.name, exc)
                if not await self._follow_stored_or_warn():
                    return False
        self._write_failed(JournalError("the shared history kept moving on"))
        return False

    async def _commit(self) -> bool:
        journal = self.journal
        assert journal is not None
        taken = len(self._pending)
        events = self._pending[:taken]
        pseqs = dict(self._pending_pseqs)
        snapshot = self._snapshot_state.copy()
        runs = self.runs.copy() if events else self.runs
        checkpoints: list[Checkpoint] = []
        texts: list[str] = []
        for index, (message, item) in enumerate(events):
            snapshot.remember(message, item)
            runs.feed(message)
            texts.append(search_text(message))
            if item.seq is not None and item.seq % CHECKPOINT_EVERY == 0:
                checkpoints.append(self._checkpoint(snapshot, events, index))
        finished = runs.take_finished() if events else []
        # A shared journal gets only the tracker state of the streams that ran here:
        # the other stream's producer may be on another node, and its state is its own.
        # Taken now: a line fed while the append is in flight dirties its stream again,
        # so the next commit carries the state that follows it.
        taken_dirty, self._dirty = self._dirty, set()
        dirty = taken_dirty if self.shared is not None else {"agent", "dev"}
        state: JsonObject = {"snapshot": snapshot.to_state(), "runs": runs.to_state()}
        if "agent" in dirty:
            state["agent"] = self.agent.to_state()
        if "dev" in dirty:
            state["dev"] = self.dev.to_state()
        features_due, self._features_due = self._features_due, False
        if features_due and self.shared is not None:
            state["features"] = self.features
        batch = Batch(
            [(item.seq or 0, item.text) for _, item in events],
            pseqs,
            state,
            runs=[StoredRun(run.first_seq, run.last_seq, run.text()) for run in finished],
            checkpoints=checkpoints,
            texts=texts,
        )
        started = time.perf_counter()
        self._committing = taken_dirty
        try:
            await journal.append(batch)
        except JournalConflictError:
            self._dirty |= taken_dirty
            self._features_due |= features_due
            raise
        except JournalError as exc:
            self._dirty |= taken_dirty
            self._features_due |= features_due
            self._write_failed(exc)
            return False
        finally:
            self._committing = set()
        if self._write_trouble.succeeded():
            log.info("project %s: journal writes recovered", self.name)
            self.clear_warning("journal")
        del self._pending[:taken]
        for key, pseq in pseqs.items():
            if self._pending_pseqs.get(key) == pseq:
                del self._pending_pseqs[key]
        self._committed_pseqs.update(pseqs)
        self._snapshot_state = snapshot
        self.runs = runs
        seconds = time.perf_counter() - started
        if events:
            messages = [message for message, _ in events]
            items = [item for _, item in events]
            if self._walks():
                # A walk goes on while events keep coming: its alerts are staged first,
                # and it commits them.
                self._alert_on(messages)
                await self._fan_out_paced(items, self._commit_staged)
            else:
                self._fan_out(items)
                self._alert_on(messages)  # staged: the next commit
        if self.on_commit is not None:
            self.on_commit(self.name, seconds)
        self._committed.set()
        self._committed = trio.Event()
        return True

    async def _commit_staged(self) -> None:
        """What was staged during a paced fan-out, committed by it (the commit lock is
        held): its events join that fan-out. A failure keeps them staged for the writer."""
        if self._pending or self._pending_pseqs:
            await self._commit_following()

    def _checkpoint(
        self,
        snapshot: Snapshot,
        events: Sequence[tuple[Mapping[str, object], Outgoing]],
        index: int,
    ) -> Checkpoint:
        """The replay state (`state.replay.Replay`) right after ``events[index]``: the
        snapshot so far and the log tails, the held ones followed by this batch's. Once
        per CHECKPOINT_EVERY events, so the walk back over the batch costs nothing per
        event."""
        upto = [item for _, item in events[: index + 1]]
        logs = self._logs.tail(LOG_TAIL) + [item for item in upto if item.type == "log"]
        dev_logs = self._dev_logs.tail(LOG_TAIL) + [i for i in upto if i.type == "dev_log"]
        stamp = None
        for message, _ in reversed(events[: index + 1]):
            if isinstance(found := message.get("timestamp"), str):
                stamp = found
                break
        if stamp is None and self.history.tail(1):
            stamp = _stamp_of(self.history.tail(1)[0])
        seq = events[index][1].seq or 0
        state = {
            "seq": seq,
            "timestamp": stamp,
            "snapshot": snapshot.to_state(),
            "logs": [item.text for item in logs[-LOG_TAIL:]],
            "dev_logs": [item.text for item in dev_logs[-LOG_TAIL:]],
        }
        return Checkpoint(seq, stamp, json.dumps(state, separators=(",", ":")))

    def _write_failed(self, exc: JournalError) -> None:
        """Acks stop; say so once per streak of failures."""
        if self._write_trouble.failed():
            log.error("project %s: journal write failed, acks stop: %s", self.name, exc)
            self.warn("journal", f"cannot write the journal; acks stop until it can: {exc}")

    async def load_stream(self, stream: Stream) -> None:
        """Before a producer of ``stream`` is served here: its applied pseqs and its
        trackers as the node it came from stored them (same agents, same indices).
        JournalError if the shared journal cannot be read; nothing to do unshared."""
        journal = self.shared
        if journal is None:
            return
        pseqs, state = await journal.stored()
        self._committed_pseqs.update(
            {key: pseq for key, pseq in pseqs.items() if pseq > self.committed_pseqs.get(key, 0)}
        )
        if state is None or stream not in state or stream in self._dirty | self._committing:
            return  # dirty: this node ran it last, and its state here is the newer
        try:
            if stream == "agent":
                self.agent = AgentPipeline.from_state(state["agent"], self._clock, self._secrets)
            else:
                self.dev = DevPipeline.from_state(state["dev"], self._clock, self._secrets)
        except (KeyError, TypeError, ValueError) as exc:
            log.error("project %s: stored %s state unreadable (%s)", self.name, stream, exc)

    async def wait_staged_at_most(self, count: int) -> None:
        """Return once at most ``count`` events are staged (commits took the rest)."""
        while len(self._pending) > count:
            await self._committed.wait()

    async def wait_committed(self, seq: int) -> None:
        """Return once every event up to ``seq`` is committed and held: a snapshot taken
        now has it, and it is handed to every subscriber (or to a paced fan-out under way,
        which hands it on within its walk)."""
        while self.head < seq:
            await self._committed.wait()

    async def close(self) -> None:
        """Stop the writer, commit what is staged (one attempt) and close the journal,
        clean. Under the commit lock: a commit in flight ends first, and the writer
        (or a follower) that takes the lock after it finds the hub closed and touches
        the journal no more, so nothing is appended to a closed journal."""
        journal = self.journal
        if journal is None or self.closed:
            return
        with trio.CancelScope(shield=True):
            async with self._commit_lock:
                if self.closed:  # another close got the lock first
                    return
                for _ in range(2):  # the second commits the alerts the first one raised
                    if self._pending or self._pending_pseqs:
                        await self._commit_following()
                self.closed = True
                self._closing.set()
                self._wake.set()
                if self._pending or self._pending_pseqs:
                    log.warning(
                        "project %s: %d events not committed at shutdown (never acked)",
                        self.name,
                        len(self._pending),
                    )
                await journal.close(clean=True)


def search_text(message: Mapping[str, object]) -> str:
    """What a runs search looks in: a log line, an agent's thought, an orchestrator
    update's or an alert's message (`run_events.TEXT_FIELDS`)."""
    for key in ("line", "thought", "message"):
        value = message.get(key)
        if isinstance(value, str):
            return value
    return ""


def _stamp_of(item: Outgoing) -> str | None:
    stamp = json.loads(item.text).get("timestamp")
    return stamp if isinstance(stamp, str) else None
