"""One project's fan-out: numbering, history, snapshot state, per-subscriber queues.

A `ProjectHub` is the only place where a project's events get their `seq`.
Producers call its synchronous methods (`feed_lines`, `set_status`,
`publish_progress`); they never block and never await, so a publisher can
not be slowed by any subscriber. Each event is encoded to JSON exactly once
and the same text object goes to every subscriber.

Delivery guarantee (PROTOCOL.md 3.1): every subscriber has one bounded
memory channel. Events are put there with ``send_nowait``; when it is full
the subscriber is marked *behind* and the publisher skips it from then on.
Its send task keeps draining the channel; once empty it catches up from
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
"""

from __future__ import annotations

import bisect
import itertools
import secrets
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

import trio

from trio_ws import defaults, frames, protocol
from trio_ws.pipeline import AgentPipeline, DevPipeline
from trio_ws.progress import Progress
from trio_ws.protocol import Clock, Message, Stream, wall_clock

Send = Callable[[list["Outgoing"]], Awaitable[None]]
"""Writes a batch of messages to one subscriber, in order (one ``send_all`` on the wire)."""

DEFAULT_HISTORY: Final = defaults.HISTORY
"""Most events held per project for resume and catch-up."""
DEFAULT_HISTORY_BYTES: Final = defaults.HISTORY_BYTES
"""Most encoded bytes (websocket frames) of events held per project."""
DEFAULT_QUEUE: Final = defaults.QUEUE_SIZE
"""Per-subscriber channel capacity, in messages."""
MAX_BACKLOG: Final = defaults.MAX_BACKLOG
ORCHESTRATOR_RECENT: Final = 5
CATCH_UP_CHUNK: Final = 256
BATCH_MAX: Final = 512
"""Most messages a send task hands to one write."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message ready for the wire, encoded once for every subscriber: its JSON
    ``text`` and its websocket ``frame``. ``seq`` is None for connection messages."""

    seq: int | None
    type: str
    text: str
    frame: bytes

    @classmethod
    def of(cls, message: Message, seq: int | None = None) -> Outgoing:
        text = protocol.encode(message)
        return cls(seq, message["type"], text, frames.text_frame(text.encode()))


@dataclass(eq=False)
class Subscriber:
    """Where one watcher stands: its queue, the last seq it was given, whether it fell behind."""

    id: int
    backlog: int
    sent_seq: int
    behind: bool
    initial: list[Outgoing]
    send_channel: trio.MemorySendChannel[Outgoing]
    receive_channel: trio.MemoryReceiveChannel[Outgoing]
    warned: int
    """Serial of the newest standing warning this subscriber was handed."""
    delivered: int = 0

    def offer(self, item: Outgoing) -> bool:
        """Queue a connection message for this subscriber only; False if its queue is full."""
        try:
            self.send_channel.send_nowait(item)
        except trio.WouldBlock:
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True


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
        self.bytes += len(item.frame)
        while items and (len(items) > self.max_events or self.bytes > self.max_bytes):
            evicted = items.popleft()
            self.bytes -= len(evicted.frame)
            assert evicted.seq is not None
            self.evicted_through = evicted.seq

    def tail(self, count: int) -> list[Outgoing]:
        """The newest ``count`` held events (fewer if fewer are held), oldest first."""
        start = max(0, len(self._items) - count)
        return list(itertools.islice(self._items, start, None))

    def after(self, seq: int, limit: int) -> list[Outgoing]:
        """Up to ``limit`` held events with a seq greater than ``seq``, in order."""
        start = bisect.bisect_right(self._items, seq, key=_seq_of)
        return list(itertools.islice(self._items, start, start + limit))


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
    resyncs: int = 0
    aborted: int = 0
    send_tasks: int = 0


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
        self.queue_size = queue_size
        self.agent = AgentPipeline(clock, extra_secrets)
        self.dev = DevPipeline(clock, extra_secrets)
        self.progress: Progress | None = None
        self.stats = HubStats()
        self.history = History(history, history_bytes)
        self._subscribers: set[Subscriber] = set()
        self._ids = itertools.count(1)
        # Snapshot state, kept as already-encoded events so a snapshot costs no encoding.
        self._agent_status: Outgoing | None = None
        self._dev_status: Outgoing | None = None
        self._progress_event: Outgoing | None = None
        self._orchestrator: deque[Outgoing] = deque(maxlen=ORCHESTRATOR_RECENT)
        self._agents: dict[int, Outgoing] = {}
        # The snapshot's log tails, under the same byte bound: else 1,000 long lines
        # would be held here whatever the history's bound.
        self._logs = History(MAX_BACKLOG, history_bytes)
        self._dev_logs = History(MAX_BACKLOG, history_bytes)
        self._warnings: dict[str, tuple[int, Outgoing]] = {}
        """Standing warnings by key, each with its serial (which orders them)."""
        self._warning_serial = 0

    # -- producer side: synchronous, never blocks ------------------------------

    def feed_lines(self, lines: Iterable[str], stream: Stream = "agent") -> None:
        """Run raw output lines through the stream's pipeline and publish the events."""
        pipeline = self.agent if stream == "agent" else self.dev
        for line in lines:
            self._publish(pipeline.feed_line(line))

    def set_status(self, status: str, stream: Stream = "agent") -> None:
        """Apply a producer status; only a real change becomes an event."""
        pipeline = self.agent if stream == "agent" else self.dev
        self._publish(pipeline.set_status(status))

    def publish_progress(self, progress: Progress) -> bool:
        """Publish ``progress`` if any of its counts changed; True when it did."""
        self.clear_warning("progress")
        if progress == self.progress:
            return False
        self.progress = progress
        self._publish([progress.to_message()])
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
            if subscriber.behind:
                continue
            if subscriber.offer(item):
                subscriber.warned = self._warning_serial
            else:
                subscriber.behind = True
                self.stats.fell_behind += 1

    def clear_warning(self, key: str) -> None:
        self._warnings.pop(key, None)

    def has_warning(self, key: str) -> bool:
        return key in self._warnings

    # -- subscriber side -------------------------------------------------------

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def oldest_seq(self) -> int | None:
        return self.history.oldest_seq

    def subscribe(
        self, since: int | None = None, epoch: str | None = None, backlog: int = 100
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
                "seq": self.seq,
                "server": protocol.SERVER_NAME,
            }
        )
        initial = [hello]
        resync_reason = self._resync_reason(since, epoch)
        if since is not None and resync_reason is None:
            initial.append(Outgoing.of({"type": "resumed", "since": since, "seq": self.seq}))
            sent_seq, behind = since, True
        else:
            if resync_reason is not None:
                initial.append(self._resync_message(resync_reason))
            initial.extend(self._snapshot(backlog))
            sent_seq, behind = self.seq, False
        initial.extend(self._standing_warnings())
        send_channel, receive_channel = trio.open_memory_channel[Outgoing](self.queue_size)
        subscriber = Subscriber(
            id=next(self._ids),
            backlog=backlog,
            sent_seq=sent_seq,
            behind=behind,
            initial=initial,
            send_channel=send_channel,
            receive_channel=receive_channel,
            warned=self._warning_serial,
        )
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Forget a subscriber; idempotent."""
        self._subscribers.discard(subscriber)
        subscriber.send_channel.close()

    async def deliver(self, subscriber: Subscriber, send: Send) -> None:
        """The subscriber's send task: initial messages, then live events, catching up as needed.

        Returns when the subscriber is unsubscribed; ``send``'s errors propagate.
        """
        self.stats.send_tasks += 1
        try:
            initial, subscriber.initial = subscriber.initial, []
            for start in range(0, len(initial), BATCH_MAX):
                await send(initial[start : start + BATCH_MAX])
            del initial  # this task lives as long as the subscriber: keep nothing
            receive = subscriber.receive_channel
            while True:
                if subscriber.behind and receive.statistics().current_buffer_used == 0:
                    await self._catch_up(subscriber, send)
                try:
                    batch = [await receive.receive()]
                except trio.EndOfChannel:
                    return  # unsubscribed
                # Everything already waiting goes out in the same write.
                while len(batch) < BATCH_MAX:
                    try:
                        batch.append(receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await send(batch)
                self._sent(subscriber, batch)
        finally:
            self.stats.send_tasks -= 1

    def _sent(self, subscriber: Subscriber, batch: list[Outgoing]) -> None:
        events = 0
        for item in batch:
            if item.seq is not None:
                subscriber.sent_seq = item.seq
                events += 1
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
        if since > self.seq:
            return "invalid_since"
        if since < self.history.evicted_through:
            return "gap_evicted"
        return None

    def _resync_message(self, reason: str) -> Outgoing:
        """``resync`` with its snapshot point: live events continue from ``seq`` + 1."""
        return Outgoing.of(
            {"type": "resync", "reason": reason, "epoch": self.epoch, "seq": self.seq}
        )

    def _standing_warnings(self, newer_than: int = 0) -> list[Outgoing]:
        """Standing warnings raised after serial ``newer_than``, oldest first."""
        held = sorted(self._warnings.values(), key=lambda entry: entry[0])
        return [item for serial, item in held if serial > newer_than]

    async def _catch_up(self, subscriber: Subscriber, send: Send) -> None:
        """Bring a behind subscriber to the head from history (or resync it), then hand
        it the standing warnings it missed."""
        self.stats.catch_ups += 1
        while True:
            if subscriber.sent_seq < self.history.evicted_through:
                self.stats.resyncs += 1
                point = self.seq
                resync = [self._resync_message("gap_evicted")]
                resync += self._snapshot(subscriber.backlog)
                resync += self._standing_warnings()
                subscriber.sent_seq = point
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
        subscriber.behind = False

    def _snapshot(self, backlog: int) -> list[Outgoing]:
        """The fresh-sync messages of PROTOCOL.md 3.1, in order, already encoded."""
        items = [
            self._agent_status or Outgoing.of(protocol.agent_status(self.agent.status)),
            self._dev_status
            or Outgoing.of(protocol.dev_server_status(self.dev.status, self.dev.url)),
        ]
        if self._progress_event is not None:
            items.append(self._progress_event)
        items.extend(self._orchestrator)
        items.extend(self._agents[index] for index in sorted(self._agents))
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
            self.history.append(item)
            self._remember(message, item)
            self.stats.events[item.type] += 1
            for subscriber in self._subscribers:
                if subscriber.behind:
                    continue
                try:
                    subscriber.send_channel.send_nowait(item)
                except trio.WouldBlock:
                    subscriber.behind = True
                    self.stats.fell_behind += 1

    def _remember(self, message: Message, item: Outgoing) -> None:
        """Keep what a snapshot needs; O(1) per event."""
        kind = item.type
        if kind == "log":
            self._logs.append(item)
        elif kind == "dev_log":
            self._dev_logs.append(item)
        elif kind == "agent_update":
            index = message["agentIndex"]
            if index < 0:
                return
            if message["state"] in ("success", "error"):
                self._agents.pop(index, None)
            else:
                self._agents[index] = item
        elif kind == "orchestrator_update":
            self._orchestrator.append(item)
        elif kind == "agent_status":
            self._agent_status = item
            if message["status"] in ("stopped", "crashed"):
                self._agents.clear()
        elif kind == "dev_server_status":
            self._dev_status = item
        elif kind == "progress":
            self._progress_event = item
