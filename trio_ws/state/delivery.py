"""Delivering a project's alerts to each ``--notify`` target: in order, at least once,
and journalled, so that a restart (even after kill -9) neither loses a pending alert
nor resends a delivered one.

Each target has a cursor in the project's journal: the seq of the last alert it was
delivered (or given up), stored under ``notify:<hash>`` beside the producers' pseqs,
and committed by the hub's one writer (an events-free batch, atomic on every
backend). The alerts pending for a target are the journal's ``alert`` events after
its cursor: read from the journal when a delivery starts (and whenever its queue
overflowed), then taken live as the hub holds each committed alert. One alert at a
time per target: the next is not tried before the previous one was delivered or
given up. A target new to a project starts at its head (no flood of old alerts).

With several nodes (a shared journal), a node delivers a project's alerts only while
it holds the project's notify lease (`lease.PollLease`, key ``tws:{P}:notify``); the
node taking it over continues from the cursor stored in Redis (kept as the highest
written), so each alert goes out from one node, again only if a node died between
delivering it and committing its cursor.

`AlertQueue` and `Attempts` are the pure parts; `Delivery` is the loop, sending
through the net layer's `Sender` (HTTP, a process), which it knows only by this seam.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import trio

from trio_ws.core.notify import NotifyTarget, Outcome
from trio_ws.journal.interface import JournalError
from trio_ws.runtime.backoff import Backoff
from trio_ws.runtime.streak import FailureStreak
from trio_ws.state.history import Outgoing
from trio_ws.state.hub import ProjectHub
from trio_ws.state.lease import LeaseError, PollLease

log = logging.getLogger("trio_ws.state.delivery")

RETRY: Final = (1.0, 60.0)
"""A failed attempt is tried again after 1 s, doubling per failure in a row up to 60 s."""
COMMAND_ATTEMPTS: Final = 4
"""Tries of a ``--notify-command`` for one alert before it is given up (a webhook is
tried until it answers, or refuses for good)."""
QUEUE_LIMIT: Final = 1000
"""Alerts held in memory per target; beyond it, the rest is read from the journal
again once these are delivered."""
READ_CHUNK: Final = 1000
"""Events read from the journal per call while looking for pending alerts."""
LEASE_RENEW: Final = 1.0
"""With several nodes: seconds between renewals of the notify lease while holding it,
and between tries to take it while another node does (at most; a third of the lease's
life when that is shorter)."""
LEASE_NAME: Final = "notify"


class Sender(Protocol):
    """How one attempt is made (the net layer: an HTTP POST, a process)."""

    async def send(self, target: NotifyTarget, event_text: str, delivery: str) -> Outcome:
        """Try to deliver one alert (its journalled JSON) to ``target``; never raises
        for what a target can do wrong (a refusal, a timeout): that is the `Outcome`."""
        ...


@dataclass(frozen=True)
class NotifySetup:
    """The server's notify targets and how to reach them, shared by every project."""

    targets: Sequence[NotifyTarget]
    sender: Sender
    retry: tuple[float, float] = RETRY
    command_attempts: int = COMMAND_ATTEMPTS
    lease_renew: float = LEASE_RENEW
    queue_limit: int = QUEUE_LIMIT
    jitter: bool = True
    """Spread the retries (False in tests that pin them)."""


@dataclass
class AlertQueue:
    """One target's alerts of one project: which are settled (``cursor``), which wait
    (``pending``, oldest first) and how far the alerts were looked for (``scanned``).

    ``behind``: alerts after ``scanned`` may exist that are not queued (at the start,
    or when the queue was full), so the journal is to be read from ``scanned`` on."""

    cursor: int
    limit: int = QUEUE_LIMIT
    pending: deque[tuple[int, str]] = field(default_factory=deque)
    scanned: int = -1
    behind: bool = True

    def __post_init__(self) -> None:
        self.scanned = max(self.scanned, self.cursor)

    def take_live(self, seq: int, text: str) -> None:
        """A newly committed alert: queued unless the queue is ``behind`` (then the
        journal is read for it, in order, once the queue has room)."""
        if not self.behind:
            self.offer(seq, text)

    def offer(self, seq: int, text: str) -> bool:
        """Queue the alert ``seq`` unless already queued or settled; False (and
        ``behind``) when the queue is full."""
        if seq <= self.scanned:
            return True
        if len(self.pending) >= self.limit:
            self.behind = True
            return False
        self.pending.append((seq, text))
        self.scanned = seq
        return True

    def scanned_to(self, seq: int) -> None:
        """Every alert up to ``seq`` was offered: read no further back than it."""
        self.scanned = max(self.scanned, seq)

    @property
    def head(self) -> tuple[int, str] | None:
        """The next alert to deliver."""
        return self.pending[0] if self.pending else None

    def settle(self, seq: int) -> None:
        """The head alert ``seq`` was delivered or given up: the cursor moves past it."""
        assert self.pending and self.pending[0][0] == seq, "settled out of order"
        self.pending.popleft()
        self.cursor = seq

    def restart(self, cursor: int) -> None:
        """Continue after ``cursor`` (another node delivered up to it): forget what is
        queued and look again."""
        self.pending.clear()
        self.cursor = cursor
        self.scanned = cursor
        self.behind = True


@dataclass
class Attempts:
    """The tries of one alert: how long to wait after a failure, until ``limit`` tries
    (None: until it is delivered or refused for good)."""

    delays: Backoff
    limit: int | None = None
    made: int = 0

    def failed(self) -> float | None:
        """One more try failed: seconds to wait before the next, or None: give up."""
        self.made += 1
        if self.limit is not None and self.made >= self.limit:
            return None
        return self.delays.next()


class Delivery:
    """The deliveries of one project's alerts to one target, for the project's life."""

    def __init__(
        self,
        hub: ProjectHub,
        target: NotifyTarget,
        setup: NotifySetup,
        lease: PollLease | None = None,
    ) -> None:
        self.hub = hub
        self.target = target
        self.setup = setup
        self.lease = lease if hub.shared is not None else None
        cursor = hub.committed_pseqs.get(target.key)
        if cursor is None or cursor > hub.head:
            if cursor is not None:
                log.warning(
                    "project %s: %s: its cursor (seq %d) is past the history's head "
                    "(seq %d, a new epoch); it continues from the head",
                    hub.name,
                    target.label,
                    cursor,
                    hub.head,
                )
            cursor = hub.head  # a new target: from now on, no flood of old alerts
            hub.applied(target.key, cursor)
        self.queue = AlertQueue(cursor, setup.queue_limit)
        self._epoch = hub.epoch
        self._inbox: deque[tuple[int, str]] = deque()
        self._arrived = trio.Event()
        self._held = self.lease is None
        self._lease_trouble = FailureStreak()
        self._renew = (
            math.inf if self.lease is None else min(setup.lease_renew, self.lease.ttl_ms / 3000)
        )
        hub.alert_listeners.append(self._offer)

    @property
    def idle(self) -> bool:
        """Nothing waits to be delivered here (another node's turn counts as nothing)."""
        if not self._held:
            return True
        return not (self.queue.pending or self._inbox or self.queue.behind)

    def _offer(self, seq: int, text: str) -> None:
        """The hub held a committed alert (called in its fan-out: never blocks)."""
        if len(self._inbox) < self.queue.limit and self._held:
            self._inbox.append((seq, text))
        else:
            self.queue.behind = True  # read from the journal once there is room
        self._arrived.set()

    async def run(self) -> None:
        """Deliver, one alert at a time, until the hub closes (or the task is cancelled)."""
        hub = self.hub
        while not hub.closed:
            if not await self._hold_lease():
                self._inbox.clear()
                await trio.sleep(self._renew)
                continue
            if hub.epoch != self._epoch:
                self._new_epoch()
            if self._arrived.is_set():
                self._arrived = trio.Event()
            queue = self.queue
            while self._inbox:  # behind: dropped, as the journal is read for them
                queue.take_live(*self._inbox.popleft())
            if queue.behind and queue.head is None:
                await self._scan()
                continue
            head = queue.head
            if head is None:
                with trio.move_on_after(self._renew):
                    await self._arrived.wait()
                continue
            await self._deliver(*head)

    def _new_epoch(self) -> None:
        """The shared history started again (Redis lost its data): its seqs are new, so
        this target continues from the new head."""
        log.warning(
            "project %s: %s: the history started a new epoch; alerts not yet delivered "
            "from the old one are lost (%d queued)",
            self.hub.name,
            self.target.label,
            len(self.queue.pending),
        )
        self._epoch = self.hub.epoch
        self._inbox.clear()
        self.queue.restart(self.hub.head)
        self.hub.applied(self.target.key, self.hub.head)

    async def _scan(self) -> None:
        """Queue the journal's alerts after ``scanned``, as many as fit, reading the
        archive too (events trimmed from the live history stay there); say how many
        events the journal no longer holds before they were looked at (alerts among
        them are lost: the archive keeps to --archive-bytes and --keep-runs)."""
        hub, queue = self.hub, self.queue
        journal = hub.journal
        assert journal is not None
        seq = queue.scanned
        while True:
            head = hub.head
            try:
                chunk = await journal.read_range(seq, head, READ_CHUNK)
            except JournalError as exc:
                log.error(
                    "project %s: %s: cannot read pending alerts: %s; trying again",
                    hub.name,
                    self.target.label,
                    exc,
                )
                await trio.sleep(self.setup.retry[0])
                return
            if chunk and chunk[0][0] > seq + 1:
                log.error(
                    "project %s: %s: %d events after seq %d left the journal (archive "
                    "limits) before their alerts were delivered; any alerts among them are lost",
                    hub.name,
                    self.target.label,
                    chunk[0][0] - seq - 1,
                    seq,
                )
            for found, text in chunk:
                if found > head:
                    break
                is_alert = '"alert"' in text and Outgoing.event(text)[1].type == "alert"
                if is_alert and not queue.offer(found, text):
                    return  # full: read on from here once these are delivered
                queue.scanned_to(found)
                seq = found
            if not chunk or seq >= head or chunk[-1][0] > head:
                queue.scanned_to(head)
                queue.behind = False
                return

    async def _deliver(self, seq: int, text: str) -> None:
        """Try the alert ``seq`` until it is delivered, refused for good, or given up;
        then its cursor is committed. With several nodes the notify lease is renewed
        all along (tries and the waits between them may outlast it), and a node that
        lost it anyway stops: the new holder delivers the alert (again)."""
        if self.lease is None:
            await self._tries(seq, text)
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keep_lease)
            await self._tries(seq, text)
            nursery.cancel_scope.cancel()

    async def _tries(self, seq: int, text: str) -> None:
        hub, target = self.hub, self.target
        limit = self.setup.command_attempts if target.kind == "command" else None
        backoff = Backoff(*self.setup.retry) if self.setup.jitter else None
        attempts = Attempts(backoff or Backoff(*self.setup.retry, jitter=None), limit)
        delivery = f"{hub.name}:{hub.epoch}:{seq}"
        while True:
            outcome = await self.setup.sender.send(target, text, delivery)
            if not self._still_mine(seq):
                return
            if outcome.kind == "delivered":
                if attempts.made:
                    log.info(
                        "project %s: %s: alert seq %d delivered at try %d",
                        hub.name,
                        target.label,
                        seq,
                        attempts.made + 1,
                    )
                break
            if outcome.kind == "permanent":
                log.error(
                    "project %s: %s refused alert seq %d for good (%s); it is not sent again",
                    hub.name,
                    target.label,
                    seq,
                    outcome.detail,
                )
                break
            delay = attempts.failed()
            if delay is not None:
                delay = max(delay, outcome.after)
            if delay is None:
                log.error(
                    "project %s: %s: alert seq %d given up after %d tries (last: %s)",
                    hub.name,
                    target.label,
                    seq,
                    attempts.made,
                    outcome.detail,
                )
                break
            log.warning(
                "project %s: %s: alert seq %d, try %d failed (%s); next try in %.1f s",
                hub.name,
                target.label,
                seq,
                attempts.made,
                outcome.detail,
                delay,
            )
            await trio.sleep(delay)
            if hub.closed or not self._still_mine(seq):
                return
        self.queue.settle(seq)
        hub.applied(target.key, seq)

    def _still_mine(self, seq: int) -> bool:
        """This node still delivers alert ``seq`` (it kept the lease throughout)."""
        head = self.queue.head
        return self._held and head is not None and head[0] == seq

    async def _keep_lease(self) -> None:
        while True:
            await trio.sleep(self._renew)
            await self._hold_lease()

    async def _hold_lease(self) -> bool:
        """Whether this node delivers now: always with one node; with several, while it
        holds the notify lease. Taking it over continues from the stored cursor."""
        lease = self.lease
        if lease is None:
            return True
        hub = self.hub
        try:
            held = await lease.hold(hub.name, LEASE_NAME)
            if held and not self._held:
                assert hub.shared is not None
                pseqs, _ = await hub.shared.stored()
                stored = pseqs.get(self.target.key, self.queue.cursor)
                self.queue.restart(max(stored, self.queue.cursor))
        except (LeaseError, JournalError) as exc:
            if self._lease_trouble.failed():
                log.error("project %s: %s: no notify lease: %s", hub.name, self.target.label, exc)
            held = False
        else:
            if self._lease_trouble.succeeded():
                log.info("project %s: %s: notify lease works again", hub.name, self.target.label)
        self._held = held
        return held


class Notifications:
    """A project's deliveries, one per target."""

    def __init__(self, hub: ProjectHub, setup: NotifySetup, lease: PollLease | None) -> None:
        self.deliveries = [Delivery(hub, target, setup, lease) for target in setup.targets]

    @property
    def idle(self) -> bool:
        """Nothing waits to be delivered: the project may be closed idle."""
        return all(delivery.idle for delivery in self.deliveries)
