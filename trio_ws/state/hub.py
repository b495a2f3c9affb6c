"""One project's fan-out: numbering, history, snapshot state, per-subscriber queues.

A `ProjectHub` is the only place where a project's events get their `seq`.
Producers call its synchronous methods (`feed_lines`, `set_status`,
`publish_progress`); they never block and never await, so a publisher can
not be slowed by any subscriber. Each event is encoded to JSON exactly once
and the same text object goes to every subscriber.

Delivery guarantee (PROTOCOL.md 3.1): every subscriber has one bounded
queue. A commit's events are written straight to its socket when nothing is
queued and the socket takes them now (`Direct`, handed over by the connection
layer: no task wakes); otherwise they are queued, and a send task is started
to write them (`drain`). When the queue is full the subscriber is marked
*behind* and the publisher skips it from then on. Its send task keeps
draining the queue; once empty it catches up from
the held history (still in order, nothing twice), or, when the history no
longer reaches back to what it last sent, sends ``resync`` (which names its
snapshot point) and a fresh snapshot and continues from that point. Then it
is handed the standing warnings raised while it was behind. Clearing
*behind* happens with no checkpoint after the "caught up" check, so no event
or warning can slip between catch-up and live delivery. Resume is the same
mechanism: a resuming subscriber starts *behind* at its ``since``.

A ``seq`` is taken only once its event is fully encoded, so a message that
fails to encode can never leave a hole; the history is looked up by ``seq``
all the same, never by position.

Commit, then fan out (STATE.md 3.1): a hub opened on a journal (`open`) only
numbers and stages what producers give it; its writer task (`run_writer`)
commits everything staged as one batch, with the producers' applied pseqs
and the snapshot state after it, and only then holds, remembers and fans
out those events and lets the producers' acks advance. A hub with no journal
(unit tests of the fan-out) commits each event as it is made.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

import trio

from trio_ws.core import defaults, protocol
from trio_ws.core.pipeline import AgentPipeline, DevPipeline
from trio_ws.core.protocol import Clock, Message, Stream, wall_clock
from trio_ws.data.progress import Progress
from trio_ws.journal.interface import (
    Batch,
    Journal,
    JournalConflictError,
    JournalError,
    JournalState,
    JsonObject,
    RecentPseqs,
    SharedJournal,
)
from trio_ws.runtime.backoff import Backoff
from trio_ws.state.subscriber import BEHIND, CATCHING_UP, JOINING, Subscriber

log = logging.getLogger("trio_ws.state.hub")

Send = Callable[[list["Outgoing"]], Awaitable[None]]
"""Writes a batch of messages to one subscriber, in order (one ``send_all`` on the wire)."""
Direct = Callable[["FanOut"], bool]
"""Writes a batch to one subscriber now, without waiting, if its connection can: False
when nothing was written (the caller queues the events). What the kernel did not take
the connection keeps and writes before anything else (it wakes its send task with
`FLUSH`). Handed over by the connection layer, so the hub holds no socket."""

DEFAULT_HISTORY: Final = defaults.HISTORY
"""Most events held per project for resume and catch-up."""
DEFAULT_HISTORY_BYTES: Final = defaults.HISTORY_BYTES
"""Most encoded bytes (UTF-8 JSON) of events held per project."""
DEFAULT_QUEUE: Final = defaults.QUEUE_SIZE
"""Per-subscriber channel capacity, in messages."""
MAX_BACKLOG: Final = defaults.MAX_BACKLOG
ORCHESTRATOR_RECENT: Final = 5
CATCH_UP_CHUNK: Final = 256
BATCH_MAX: Final = 512
"""Most messages a send task hands to one write."""
COMMIT_RETRY: Final = (0.05, 2.0)
"""A failed commit is retried after 50 ms, doubling per failure in a row up to 2 s."""
JOURNAL_READ_CHUNK: Final = 1000
"""Events read from the journal per call when a hub opens."""
STREAM_OF: Final[dict[str, Stream]] = {
    "log": "agent",
    "agent_update": "agent",
    "orchestrator_update": "agent",
    "agent_status": "agent",
    "dev_log": "dev",
    "dev_server_status": "dev",
}
"""Which producer stream makes each event type."""
CONFLICT_RETRIES: Final = 20
"""Appends in a row that may find the shared history moved on (another node appended
first) before a commit counts as failed; each retry first applies what was appended."""


@dataclass(eq=False, slots=True)
class Outgoing:
    """One message encoded once for every subscriber: its JSON ``text`` and that text's
    UTF-8 ``data``. ``seq`` is None for connection messages. ``header`` is the
    connection layer's to fill (its frame header, built once per message); the hub
    never reads it."""

    seq: int | None
    type: str
    text: str
    data: bytes
    header: bytes | None = None

    @classmethod
    def of(cls, message: Message, seq: int | None = None) -> Outgoing:
        text = protocol.encode(message)
        return cls(seq, message["type"], text, text.encode())

    @classmethod
    def event(cls, text: str) -> tuple[Message, Outgoing]:
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


FLUSH: Final = Outgoing(None, "flush", "", b"", b"")
"""Wakes a send task to write what its connection kept of a direct write; no frame."""


@dataclass(eq=False, slots=True)
class FanOut:
    """Committed events handed to every subscriber's direct write at once. ``wire`` is
    the connection layer's to fill (their frames, joined once for every subscriber);
    the hub never reads it."""

    items: list[Outgoing]
    wire: bytes | None = None


def _seq_of(item: Outgoing) -> int:
    assert item.seq is not None  # only events are held
    return item.seq


@dataclass
class HubStats:
    """Counters the server exposes (healthz, metrics) and tests assert on."""

    events: Counter[str] = field(default_factory=Counter)
    deliveries: int = 0
    fell_behind: int = 0
    catch_ups: int = 0
    journal_catch_ups: int = 0
    resyncs: int = 0
    aborted: int = 0
    send_tasks: int = 0
    direct_writes: int = 0
    """Fan-out writes the connection took without waking the send task."""
    delivery_failures: int = 0
    """Subscribers whose part of a fan-out raised (a bug): their connections were ended."""


@dataclass
class Snapshot:
    """What a fresh sync is made of besides the log tails, as already-encoded events."""

    agent_status: Outgoing | None = None
    dev_status: Outgoing | None = None
    progress: Outgoing | None = None
    orchestrator: deque[Outgoing] = field(default_factory=lambda: deque(maxlen=ORCHESTRATOR_RECENT))
    agents: dict[int, Outgoing] = field(default_factory=dict)

    def copy(self) -> Snapshot:
        return Snapshot(
            self.agent_status,
            self.dev_status,
            self.progress,
            deque(self.orchestrator, maxlen=ORCHESTRATOR_RECENT),
            dict(self.agents),
        )

    def remember(self, message: Message, item: Outgoing) -> None:
        """Keep what a snapshot needs of one event; O(1)."""
        kind = item.type
        if kind == "agent_update":
            index = message["agentIndex"]
            if index < 0:
                return
            if message["state"] in ("success", "error"):
                self.agents.pop(index, None)
            else:
                self.agents[index] = item
        elif kind == "orchestrator_update":
            self.orchestrator.append(item)
        elif kind == "agent_status":
            self.agent_status = item
            if message["status"] in ("stopped", "crashed"):
                self.agents.clear()
        elif kind == "dev_server_status":
            self.dev_status = item
        elif kind == "progress":
            self.progress = item

    def to_state(self) -> JsonObject:
        """The snapshot as event texts, for the journal."""
        return {
            "agent_status": None if self.agent_status is None else self.agent_status.text,
            "dev_server_status": None if self.dev_status is None else self.dev_status.text,
            "progress": None if self.progress is None else self.progress.text,
            "orchestrator": [item.text for item in self.orchestrator],
            "agents": [self.agents[index].text for index in sorted(self.agents)],
        }

    @classmethod
    def from_state(cls, state: JsonObject) -> Snapshot:
        """The snapshot `to_state` wrote; ValueError/KeyError/TypeError if it is not one."""
        snapshot = cls()
        singles = [state["agent_status"], state["dev_server_status"], state["progress"]]
        for text in singles + list(state["orchestrator"]) + list(state["agents"]):
            if text is not None:
                snapshot.remember(*Outgoing.event(str(text)))
        return snapshot


class ProjectHub:
    """The live state and history of one project, and its subscribers."""

    def __init__(
        self,
        name: str,
        *,
        history: int = DEFAULT_HISTORY,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
        queue_size: int = DEFAULT_QUEUE,
        clock: Clock = wall_clock,
        extra_secrets: Iterable[str] = (),
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.name = name
        self.epoch = secrets.token_hex(8)
        self.seq = 0
        """The newest seq given out (staged or committed)."""
        self.head = 0
        """The newest committed seq: all a subscriber may see (hello, resume)."""
        self.queue_size = queue_size
        self._clock = clock
        self._secrets = tuple(extra_secrets)
        self.agent = AgentPipeline(clock, self._secrets)
        self.dev = DevPipeline(clock, self._secrets)
        self.progress: Progress | None = None
        self.stats = HubStats()
        self.history = History(history, history_bytes)
        self.journal: Journal | None = None
        self.shared: SharedJournal | None = None
        """The journal again when other nodes append to it too (``--broker``): then the
        hub follows their events and writes only its own streams' tracker state."""
        self._dirty: set[Stream] = set()
        """Streams whose pipeline ran since the last commit (their state is due)."""
        self._committing: set[Stream] = set()
        """Streams whose state the append in flight carries."""
        self.remote_seen: dict[Stream, float] = {}
        """When (trio clock) each stream's newest event from another node was applied:
        its producer runs elsewhere now."""
        self._committed_pseqs = RecentPseqs()
        self._pending: list[tuple[Message, Outgoing]] = []
        self._pending_pseqs: dict[str, int] = {}
        self._wake = trio.Event()
        self._write_failing = False
        self._committed = trio.Event()
        self._commit_lock = trio.Lock()
        self.closed = False
        """Set by `close` once it committed the rest: nothing touches the journal after."""
        self._closing = trio.Event()
        """Set with ``closed``: cuts the writer's retry backoff short."""
        self.on_commit: Callable[[str, float], None] | None = None
        """Told each commit's latency (seconds), for the metrics, right after its
        fan-out."""
        self._subscribers: set[Subscriber] = set()
        self._ids = itertools.count(1)
        self._snapshot_state = Snapshot()
        # The snapshot's log tails, under the same byte bound: else 1,000 long lines
        # would be held here whatever the history's bound.
        self._logs = History(MAX_BACKLOG, history_bytes)
        self._dev_logs = History(MAX_BACKLOG, history_bytes)
        self._warnings: dict[str, tuple[int, Outgoing]] = {}
        """Standing warnings by key, each with its serial (which orders them)."""
        self._warning_serial = 0
        self._agent_status_changed = trio.Event()

    # -- journal ----------------------------------------------------------------

    async def open(self, journal: Journal) -> JournalState:
        """Continue the history ``journal`` holds (or the new epoch it starts): epoch,
        head, producers' pseqs, pipelines, snapshot, held events and log tails."""
        state = await journal.open()
        self.journal = journal
        self.epoch = state.epoch
        self.seq = self.head = state.head
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
        for key in ("agent", "dev", "snapshot"):
            if key not in state:
                continue
            try:
                if key == "agent":
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
            self.progress = _progress_of(self._snapshot_state.progress)

    def applied(self, producer: str, pseq: int) -> None:
        """``producer`` (a key naming stream and id) has been applied up to ``pseq``;
        acked once committed."""
        if self.journal is None:
            self._committed_pseqs.update({producer: pseq})
        else:
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
            async with self._commit_lock:
                if self.closed:  # `close` committed the rest: the journal is not ours now
                    return False
                if not (self._pending or self._pending_pseqs):
                    return True  # the commit just before took it all
                done = await self._commit_following()
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
            stream = STREAM_OF.get(item.type)
            if stream is not None:
                self.remote_seen[stream] = trio.current_time()
            if item.type == "progress":
                self.progress = _progress_of(item)
            items.append(item)
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
        self.progress = None
        stored = state.state or {}
        if not whole and "snapshot" in stored:
            try:
                self._snapshot_state = Snapshot.from_state(stored["snapshot"])
            except (KeyError, TypeError, ValueError) as exc:
                log.error("project %s: stored snapshot unreadable (%s)", self.name, exc)
        if self._snapshot_state.progress is not None:
            self.progress = _progress_of(self._snapshot_state.progress)
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

    async def _commit(self) -> bool:
        journal = self.journal
        assert journal is not None
        taken = len(self._pending)
        events = self._pending[:taken]
        pseqs = dict(self._pending_pseqs)
        snapshot = self._snapshot_state.copy()
        for message, item in events:
            snapshot.remember(message, item)
        # A shared journal gets only the tracker state of the streams that ran here:
        # the other stream's producer may be on another node, and its state is its own.
        # Taken now: a line fed while the append is in flight dirties its stream again,
        # so the next commit carries the state that follows it.
        taken_dirty, self._dirty = self._dirty, set()
        dirty = taken_dirty if self.shared is not None else {"agent", "dev"}
        state: JsonObject = {"snapshot": snapshot.to_state()}
        if "agent" in dirty:
            state["agent"] = self.agent.to_state()
        if "dev" in dirty:
            state["dev"] = self.dev.to_state()
        batch = Batch([(item.seq or 0, item.text) for _, item in events], pseqs, state)
        started = time.perf_counter()
        self._committing = taken_dirty
        try:
            await journal.append(batch)
        except JournalConflictError:
            self._dirty |= taken_dirty
            raise
        except JournalError as exc:
            self._dirty |= taken_dirty
            self._write_failed(exc)
            return False
        finally:
            self._committing = set()
        if self._write_failing:
            self._write_failing = False
            log.info("project %s: journal writes recovered", self.name)
            self.clear_warning("journal")
        del self._pending[:taken]
        for key, pseq in pseqs.items():
            if self._pending_pseqs.get(key) == pseq:
                del self._pending_pseqs[key]
        self._committed_pseqs.update(pseqs)
        self._snapshot_state = snapshot
        seconds = time.perf_counter() - started
        if events:
            self._fan_out([item for _, item in events])
        if self.on_commit is not None:
            self.on_commit(self.name, seconds)
        self._committed.set()
        self._committed = trio.Event()
        return True

    def _write_failed(self, exc: JournalError) -> None:
        """Acks stop; say so once per streak of failures."""
        if not self._write_failing:
            self._write_failing = True
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
        """Return once every event up to ``seq`` is committed (and fanned out)."""
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

    # -- producer side: synchronous, never blocks ------------------------------

    def feed_lines(self, lines: Iterable[str], stream: Stream = "agent") -> None:
        """Run raw output lines through the stream's pipeline and publish the events."""
        pipeline = self.agent if stream == "agent" else self.dev
        self._dirty.add(stream)
        for line in lines:
            self._publish(pipeline.feed_line(line))

    def set_status(self, status: str, stream: Stream = "agent") -> None:
        """Apply a producer status; only a real change becomes an event."""
        pipeline = self.agent if stream == "agent" else self.dev
        self._dirty.add(stream)
        events = pipeline.set_status(status)
        for event in events:
            if event["type"] == "agent_status":
                event["timestamp"] = protocol.iso_timestamp(self._clock())
        self._publish(events)

    def publish_progress(self, progress: Progress) -> bool:
        """Publish ``progress`` if any of its counts changed; True when it did."""
        self.clear_warning("progress")
        if progress == self.progress:
            return False
        self.progress = progress
        self._publish([progress.to_message(protocol.iso_timestamp(self._clock()))])
        return True

    def warn(self, source: str, content: str, key: str | None = None) -> None:
        """Tell every subscriber (and later joiners, until cleared by ``key``, default
        ``source``) about a problem; warnings carry no seq.

        A subscriber that is behind (or whose queue is full now) is handed it
        when it catches up, if the warning still stands then.
        """
        item = Outgoing.of(protocol.warning(source, content))
        self._warning_serial += 1
        self._warnings[key or source] = (self._warning_serial, item)
        for subscriber in self._subscribers:
            if not subscriber.takes_live:
                continue
            try:
                offered = subscriber.offer(item)
            except Exception:  # noqa: BLE001 (logged with its traceback by _failed)
                self._failed(subscriber)
                continue
            if offered:
                subscriber.warned = self._warning_serial
            elif subscriber.is_open:
                subscriber.overflowed()
                self.stats.fell_behind += 1

    def clear_warning(self, key: str) -> None:
        self._warnings.pop(key, None)

    def has_warning(self, key: str) -> bool:
        return key in self._warnings

    def agent_status_changed(self) -> trio.Event:
        """Set when the next ``agent_status`` event is published (a control request
        waits on it to answer with the status after its action)."""
        return self._agent_status_changed

    def held(self, types: frozenset[str]) -> list[Message]:
        """The held events of ``types``, decoded, oldest first (for the HTTP views:
        progress history, the agent status's details)."""
        return [json.loads(item.text) for item in self.history.of_types(types)]

    # -- subscriber side -------------------------------------------------------

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def oldest_seq(self) -> int | None:
        return self.history.oldest_seq

    def subscribe(
        self, since: int | None = None, epoch: str | None = None, backlog: int = 0
    ) -> Subscriber:
        """Register a subscriber and fix what it is sent first; contains no checkpoint.

        Taking the snapshot (or the resume point) and joining the fan-out set
        happen in one synchronous step, so no event can fall between them.
        """
        backlog = max(0, min(backlog, MAX_BACKLOG))
        hello = Outgoing.of(
            {
                "type": "hello",
                "protocol": protocol.PROTOCOL_VERSION,
                "project": self.name,
                "epoch": self.epoch,
                "seq": self.head,
                "server": protocol.SERVER_NAME,
            }
        )
        initial = [hello]
        resync_reason = self._resync_reason(since, epoch)
        if since is not None and resync_reason is None:
            initial.append(Outgoing.of({"type": "resumed", "since": since, "seq": self.head}))
            sent_seq, state = since, CATCHING_UP
        else:
            if resync_reason is not None:
                initial.append(self._resync_message(resync_reason))
            initial.extend(self._snapshot(backlog))
            sent_seq, state = self.head, JOINING
        initial.extend(self._standing_warnings())
        subscriber = Subscriber(
            id=next(self._ids),
            backlog=backlog,
            sent_seq=sent_seq,
            state=state,
            initial=initial,
            capacity=self.queue_size,
            warned=self._warning_serial,
        )
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Forget a subscriber; idempotent. Nothing is offered to it or woken any more."""
        self._subscribers.discard(subscriber)
        subscriber.leave()

    async def drain(self, subscriber: Subscriber, send: Send, direct: Direct | None) -> bool:
        """A send task on demand: write the initial messages, what is queued and any
        catch-up, then return (True; False once unsubscribed). Started by the
        connection layer from ``subscriber.wake``, so an idle subscriber holds no task.

        ``direct`` is the connection's non-blocking write: once the initial messages
        are out, the fan-out writes through it while nothing is queued (`_fan_out`),
        and a send task only writes what the kernel did not take. It returns with no
        checkpoint after finding the queue empty, so its caller can note that it
        ended before anything else is queued. ``send``'s errors propagate.
        """
        self.stats.send_tasks += 1
        try:
            return await self._drain(subscriber, send, direct)
        finally:
            self.stats.send_tasks -= 1

    async def _drain(self, subscriber: Subscriber, send: Send, direct: Direct | None) -> bool:
        try:
            if subscriber.initial:
                initial, subscriber.initial = subscriber.initial, []
                for start in range(0, len(initial), BATCH_MAX):
                    await send(initial[start : start + BATCH_MAX])
                del initial
                subscriber.joined(direct)
            queue = subscriber.queue
            while True:
                if subscriber.resync is not None and queue:
                    # Events queued before the shared history started again: the
                    # resync and its snapshot stand for them. Replies still go out.
                    kept = [item for item in queue if item.seq is None]
                    subscriber.queued -= len(queue) - len(kept)
                    queue[:] = kept
                if subscriber.is_behind and not queue:
                    await self._catch_up(subscriber, send)
                if not queue:
                    return subscriber.is_open
                # Everything already waiting goes out in the same write.
                batch = queue[:BATCH_MAX]
                del queue[:BATCH_MAX]
                await send(batch)
                subscriber.queued -= len(batch)
                self._sent(subscriber, batch)
        except BaseException:
            subscriber.direct = None  # the connection failed (or the task was cancelled)
            raise

    def _sent(self, subscriber: Subscriber, batch: list[Outgoing]) -> None:
        events = 0
        last = None
        for item in batch:
            if item.seq is not None:
                last = item.seq
                events += 1
        # A pending resync fixed the point it continues from: a batch of the old
        # history in hand when it was set does not move it.
        if last is not None and subscriber.resync is None:
            subscriber.sent_seq = last
        subscriber.delivered += events
        self.stats.deliveries += events

    # -- internals -------------------------------------------------------------

    def _resync_reason(self, since: int | None, epoch: str | None) -> str | None:
        if since is None:
            return None
        if since < 0:  # not a seq at all (parse_since), whatever the epoch
            return "invalid_since"
        if epoch != self.epoch:
            return "epoch_changed"
        if since > self.head:
            return "invalid_since"
        if since < self.history.evicted_through and not self._in_journal(since):
            return "gap_evicted"
        return None

    def _in_journal(self, since: int) -> bool:
        """Does the journal still hold every event after ``since``?"""
        return self.journal is not None and since + 1 >= self.journal.stats().oldest

    def _resync_message(self, reason: str) -> Outgoing:
        """``resync`` with its snapshot point: live events continue from ``seq`` + 1."""
        return Outgoing.of(
            {"type": "resync", "reason": reason, "epoch": self.epoch, "seq": self.head}
        )

    def _standing_warnings(self, newer_than: int = 0) -> list[Outgoing]:
        """Standing warnings raised after serial ``newer_than``, oldest first."""
        held = sorted(self._warnings.values(), key=lambda entry: entry[0])
        return [item for serial, item in held if serial > newer_than]

    async def _from_journal(self, since: int) -> list[Outgoing]:
        """Committed events after ``since`` read from the journal (STATE.md 3.4), or []
        when it no longer holds the next one or cannot be read."""
        if self.journal is None or not self._in_journal(since):
            return []
        try:
            rows = await self.journal.read_since(since, CATCH_UP_CHUNK)
        except JournalError as exc:
            log.error("project %s: journal read for a catch-up failed: %s", self.name, exc)
            return []
        chunk = [Outgoing.event(text)[1] for seq, text in rows if seq <= self.head]
        if not chunk or chunk[0].seq != since + 1:
            return []
        return chunk

    async def _catch_up(self, subscriber: Subscriber, send: Send) -> None:
        """Bring a behind subscriber to the head from history, or from the journal where
        the history no longer reaches (or resync it), then hand it the standing warnings
        it missed."""
        self.stats.catch_ups += 1
        while True:
            if not subscriber.is_open:
                return
            if subscriber.state is BEHIND:  # also when a resync came during a write
                subscriber.catch_up()
            if subscriber.resync is not None:
                resync, subscriber.resync = subscriber.resync, None
                self.stats.resyncs += 1
                resync += self._standing_warnings()
                subscriber.warned = self._warning_serial
                for start in range(0, len(resync), BATCH_MAX):
                    await send(resync[start : start + BATCH_MAX])
                continue
            if subscriber.sent_seq < self.history.evicted_through:
                chunk = await self._from_journal(subscriber.sent_seq)
                if chunk:
                    self.stats.journal_catch_ups += 1
                    await send(chunk)
                    self._sent(subscriber, chunk)
                    continue
                self.stats.resyncs += 1
                resync = [self._resync_message("gap_evicted")]
                resync += self._snapshot(subscriber.backlog)
                resync += self._standing_warnings()
                subscriber.sent_seq = self.head
                subscriber.warned = self._warning_serial
                for start in range(0, len(resync), BATCH_MAX):
                    await send(resync[start : start + BATCH_MAX])
                continue
            chunk = self.history.after(subscriber.sent_seq, CATCH_UP_CHUNK)
            if chunk:
                await send(chunk)
                self._sent(subscriber, chunk)
                await trio.lowlevel.checkpoint()  # a write may not yield; a long catch-up must
                continue
            owed = self._standing_warnings(subscriber.warned)
            if not owed:
                break
            subscriber.warned = self._warning_serial
            await send(owed)
        # Caught up: from here on the publisher queues for it again. No checkpoint
        # between the loop's last check and this line.
        subscriber.caught_up()

    def _snapshot(self, backlog: int) -> list[Outgoing]:
        """The fresh-sync messages of PROTOCOL.md 3.1, in order, already encoded."""
        state = self._snapshot_state
        items = [
            state.agent_status or Outgoing.of(protocol.agent_status(self.agent.status)),
            state.dev_status
            or Outgoing.of(protocol.dev_server_status(self.dev.status, self.dev.url)),
        ]
        if state.progress is not None:
            items.append(state.progress)
        # Backlog 0 is a client that appends whatever it gets (the AutoForge UI):
        # only the latest orchestrator update, so a reconnect repeats none.
        items.extend(list(state.orchestrator)[-1:] if backlog == 0 else state.orchestrator)
        items.extend(state.agents[index] for index in sorted(state.agents))
        if backlog:
            items.extend(self._logs.tail(backlog))
            items.extend(self._dev_logs.tail(backlog))
        return items

    def _publish(self, messages: list[Message]) -> None:
        for message in messages:
            seq = self.seq + 1
            message["seq"] = seq
            item = Outgoing.of(message, seq)
            self.seq = seq  # taken only now: an event that fails to encode leaves no hole
            if self.journal is None:
                self._snapshot_state.remember(message, item)
                self._fan_out([item])
            else:
                self._pending.append((message, item))
        if self.journal is not None and messages:
            self._wake.set()

    def _hold(self, item: Outgoing) -> None:
        """Hold a committed event in the history and the snapshot's log tails."""
        assert item.seq is not None
        self.head = item.seq
        self.history.append(item)
        if item.type == "log":
            self._logs.append(item)
        elif item.type == "dev_log":
            self._dev_logs.append(item)

    def _fan_out(self, items: list[Outgoing]) -> None:
        """Committed events, in order: hold them and hand them to every subscriber not
        behind, as one write where its connection takes them now, else queued.

        The direct write is tried only while the subscriber's send task has nothing
        queued or in hand (``queued`` is 0), so it can never overtake a queued event;
        the connection refuses it while anything else is writing. Every subscriber
        gets the same `FanOut`, so its frames are joined once for all of them.
        """
        status_changed = False
        for item in items:
            self._hold(item)
            self.stats.events[item.type] += 1
            status_changed = status_changed or item.type == "agent_status"
        fan_out = FanOut(items)
        for subscriber in self._subscribers:
            if not subscriber.takes_live:
                continue
            try:
                self._hand_over(subscriber, fan_out)
            except Exception:  # noqa: BLE001 (logged with its traceback by _failed)
                self._failed(subscriber)
        if status_changed:
            self._agent_status_changed.set()
            self._agent_status_changed = trio.Event()

    def _hand_over(self, subscriber: Subscriber, fan_out: FanOut) -> None:
        """One subscriber's part of a fan-out: written now, or queued (or it falls behind)."""
        items = fan_out.items
        direct = subscriber.direct
        if direct is not None and subscriber.queued == 0 and direct(fan_out):
            last_seq = items[-1].seq
            assert last_seq is not None
            subscriber.sent_seq = last_seq
            subscriber.delivered += len(items)
            self.stats.deliveries += len(items)
            self.stats.direct_writes += 1
            return
        for item in items:
            if not subscriber.offer(item):
                if subscriber.is_open:
                    subscriber.overflowed()
                    self.stats.fell_behind += 1
                return

    def _failed(self, subscriber: Subscriber) -> None:
        """Handing a subscriber something raised (a bug in its connection): it must not
        cost the others, so its connection is ended (its client resumes) and it is
        never offered anything again."""
        log.exception(
            "project %s: delivery to subscriber %d failed; its connection is ended",
            self.name,
            subscriber.id,
        )
        self.stats.delivery_failures += 1
        subscriber.fail()

    def resync_all(self, reason: str) -> None:
        """Every subscriber is told ``resync`` and given a fresh snapshot at the head:
        when the history started again, or when a commit may not have reached them all."""
        for subscriber in self._subscribers:
            messages = [self._resync_message(reason), *self._snapshot(subscriber.backlog)]
            try:
                subscriber.must_resync(messages, self.head)
            except Exception:  # noqa: BLE001 (logged with its traceback by _failed)
                self._failed(subscriber)


def _progress_of(item: Outgoing) -> Progress:
    """The counts of a ``progress`` event."""
    message = json.loads(item.text)
    return Progress(
        message["passing"], message["in_progress"], message["total"], message["needs_human_input"]
    )
