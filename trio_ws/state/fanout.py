"""The hub's fan-out: each subscriber's bounded queue, direct writes, catch-up and
resync (PROTOCOL.md 3.1), with the `Subscriber` state machine deciding who takes
live events. One subscriber's failure is contained: it is ended, the others go on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final

import trio

from trio_ws.core import defaults, protocol
from trio_ws.journal.interface import JournalError
from trio_ws.state.history import Outgoing
from trio_ws.state.hub_state import HubState
from trio_ws.state.subscriber import BEHIND, CATCHING_UP, JOINING, Subscriber

log = logging.getLogger("trio_ws.state.hub")

Send = Callable[[list[Outgoing]], Awaitable[None]]
"""Writes a batch of messages to one subscriber, in order (one ``send_all`` on the wire)."""
Direct = Callable[["FanOut"], bool]
"""Writes a batch to one subscriber now, without waiting, if its connection can: False
when nothing was written (the caller queues the events). What the kernel did not take
the connection keeps and writes before anything else (it wakes its send task with
`FLUSH`). Handed over by the connection layer, so the hub holds no socket."""

MAX_BACKLOG: Final = defaults.MAX_BACKLOG
CATCH_UP_CHUNK: Final = 256
BATCH_MAX: Final = 512
"""Most messages a send task hands to one write."""
FAN_OUT_CHUNK: Final = 256
"""Subscribers a paced fan-out writes to before it lets other tasks run: about 2.5 ms
of writes on a 2.1 GHz core, so each step of a late joiner's handshake waits no more."""
PACE_ABOVE: Final = 1024
"""Subscribers above which a commit's fan-out is paced (`HubFanOut._fan_out_paced`)."""


@dataclass(eq=False, slots=True)
class FanOut:
    """Committed events handed to every subscriber's direct write at once, the same
    object to each (the connection layer joins their frames once for all)."""

    items: list[Outgoing]


class HubFanOut(HubState):
    """Subscribers: joining, live delivery, catch-up, warnings, resync."""

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

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

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
        subscriber = Subscriber._create(
            id=next(self._ids),
            backlog=backlog,
            sent_seq=sent_seq,
            handed_seq=sent_seq,
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
        self.screenshots.unwatch(subscriber)  # leaving counts as unsubscribe
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
        # Backlog 0 is a client that appends whatever it gets (the AutoForge UI): only
        # the latest orchestrator update, and the agents' cards without their thoughts,
        # so a reconnect repeats no row of its feeds.
        if backlog == 0:
            items.extend(list(state.orchestrator)[-1:])
            items.extend(state.cards())
        else:
            items.extend(state.orchestrator)
            items.extend(state.agents[index] for index in sorted(state.agents))
        items.extend(state.alerts.values())  # the standing alerts, oldest first
        if backlog:
            items.extend(self._logs.tail(backlog))
            items.extend(self._dev_logs.tail(backlog))
        return items

    def _fan_out(self, items: list[Outgoing]) -> None:
        """Committed events, in order: hold them and hand them to every subscriber not
        behind, as one write where its connection takes them now, else queued. While a
        paced fan-out runs they join it instead (`_fan_out_paced`), so no subscriber can
        get them before the events it is still owed.

        The direct write is tried only while the subscriber's send task has nothing
        queued or in hand (``queued`` is 0), so it can never overtake a queued event;
        the connection refuses it while anything else is writing. Every subscriber
        gets the same `FanOut`, so its frames are joined once for all of them.
        """
        self._hold_all(items)
        self._fanned_out(items)
        if self._sweep is not None:
            self._sweep.extend(items)
            return
        self._hand_over_to(self._subscribers, items)

    async def _fan_out_paced(
        self, items: list[Outgoing], commit_staged: Callable[[], Awaitable[object]]
    ) -> None:
        """`_fan_out`, letting other tasks run after every FAN_OUT_CHUNK subscribers,
        and handing on what is committed meanwhile in the same walk.

        At 15,000 subscribers one walk is some 100 ms of writes. Done in one go, every
        other task (a late joiner's handshake, a producer's ack) waited a whole walk
        per scheduler round; and an event staged during a walk waited for its end
        before its own walk began, so a subscriber got it after one to two walks.
        Instead, after each chunk the walk commits what is staged (``commit_staged``,
        by the caller, who holds the commit lock) and the subscribers it has not
        reached yet get those events in the same write; the ones it passed get them
        in a next walk. It ends after a walk in which nothing more was committed, or
        once another task waits for the commit lock (shutdown, a broker follower):
        then it only finishes handing out what it holds.

        Each walk takes the subscribers as they are when it begins, and hands each
        only what follows its ``handed_seq``: one that joined meanwhile got the
        events in its snapshot, one that caught up from the history holds them, one
        that left or fell behind is skipped (``takes_live``).

        The commit calls it only when `_walks` says so (no walk under way, over
        PACE_ABOVE subscribers); else it calls `_fan_out`.
        """
        self._hold_all(items)
        self._fanned_out(items)
        sweep = self._sweep = list(items)
        try:
            while sweep:
                held = len(sweep)
                subscribers = list(self._subscribers)
                for start in range(0, len(subscribers), FAN_OUT_CHUNK):
                    if start:
                        await trio.lowlevel.checkpoint()
                        if not self._commit_lock.statistics().tasks_waiting:
                            await commit_staged()  # its events join the sweep
                    if owed := self._sweep:
                        self._hand_over_to(subscribers[start : start + FAN_OUT_CHUNK], owed)
                # Every subscriber of this walk holds what the walk began with. If the
                # history started again meanwhile (`resync_all`: a new list), every
                # event of the new one is owed still.
                now = self._sweep
                assert now is not None
                sweep = self._sweep = now[held:] if now is sweep else now
        finally:
            self._sweep = None

    def _walks(self) -> bool:
        """Would a fan-out now be a walk of its own (`_fan_out_paced`)?"""
        return self._sweep is None and len(self._subscribers) > PACE_ABOVE

    def _hand_over_to(self, subscribers: Iterable[Subscriber], items: list[Outgoing]) -> None:
        """`_hand_over` to each of ``subscribers`` that takes live events what follows
        its ``handed_seq`` in ``items`` (consecutive events): all of them, the part it
        lacks, or nothing. Subscribers lacking the same part get the same `FanOut`. One
        whose connection fails at it is ended, at no cost to the others."""
        first, last = items[0].seq, items[-1].seq
        assert first is not None and last is not None
        whole = FanOut(items)
        parts: dict[int, FanOut] = {}
        for subscriber in subscribers:
            if not subscriber.takes_live:
                continue
            handed = subscriber.handed_seq
            if handed >= last:
                continue
            if handed < first:
                fan_out = whole
            else:
                part = parts.get(handed)
                if part is None:
                    part = parts[handed] = FanOut(items[handed + 1 - first :])
                fan_out = part
            try:
                self._hand_over(subscriber, fan_out)
            except Exception:  # noqa: BLE001 (logged with its traceback by _failed)
                self._failed(subscriber)

    def _hold_all(self, items: list[Outgoing]) -> None:
        for item in items:
            self._hold(item)
            self.stats.events[item.type] += 1

    def _fanned_out(self, items: list[Outgoing]) -> None:
        if any(item.type == "agent_status" for item in items):
            self._agent_status_changed.set()
            self._agent_status_changed = trio.Event()
        if self.on_summary is not None:
            self.on_summary(self.name)

    def _hand_over(self, subscriber: Subscriber, fan_out: FanOut) -> None:
        """One subscriber's part of a fan-out: written now, or queued (or it falls behind)."""
        items = fan_out.items
        last_seq = items[-1].seq
        assert last_seq is not None
        direct = subscriber.direct
        if direct is not None and subscriber.queued == 0 and direct(fan_out):
            subscriber.sent_seq = subscriber.handed_seq = last_seq
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
        subscriber.handed_seq = last_seq

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
        when the history started again, or when a commit may not have reached them all.
        A paced fan-out under way has nothing more to hand out (the snapshots hold it)."""
        if self._sweep is not None:
            self._sweep = []
        for subscriber in self._subscribers:
            messages = [self._resync_message(reason), *self._snapshot(subscriber.backlog)]
            try:
                subscriber.must_resync(messages, self.head)
            except Exception:  # noqa: BLE001 (logged with its traceback by _failed)
                self._failed(subscriber)
