"""`Project`: one project's live state and everything that keeps it moving.

A project owns its `ProjectHub`, its producer slots (one per stream), its
progress poll loop (started with the first subscriber, cancelled with the
last), the routing of control actions to its agent producer, the grace
timers that mark a vanished producer's stream ``crashed``, and (alerts on)
the task that wakes the alert rules at their next deadline. The sessions that
feed and watch it live in the net layer and talk to it; it knows them only
as the small `ProducerSession` it needs, never their sockets or frames.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final, Protocol

import trio

from trio_ws.core import defaults, protocol
from trio_ws.core.alerts import AlertSettings
from trio_ws.core.protocol import LOST_LINE, Stream
from trio_ws.data.progress import ProgressError, ProgressReader
from trio_ws.journal.interface import ArchiveLimits, Journal, JournalError, SharedJournal
from trio_ws.journal.redis import RedisJournal
from trio_ws.runtime.backoff import Backoff
from trio_ws.runtime.constructors import NoPublicConstructor
from trio_ws.runtime.streak import FailureStreak
from trio_ws.runtime.supervise import contained, run_restarting
from trio_ws.state.delivery import Delivery, Notifications, NotifySetup
from trio_ws.state.hub import ProjectHub
from trio_ws.state.hub_state import DEFAULT_HISTORY, DEFAULT_HISTORY_BYTES, DEFAULT_QUEUE
from trio_ws.state.lease import LeaseError, PollLease
from trio_ws.state.ledger import ProducerLedger, producer_key
from trio_ws.state.subscriber import Subscriber

log = logging.getLogger("trio_ws.state.project")

DEFAULT_POLL_INTERVAL: Final = defaults.POLL_INTERVAL
READER_THREADS: Final = 4
POLL_RESTART: Final = defaults.POLL_RESTART
"""A crashed poll loop restarts after 0.1 s, doubling per crash in a row up to 5 s."""
PRIME_COMMIT_WAIT: Final = 1.0
"""Longest a first subscriber waits for its primed progress to be committed."""
WRITER_RESTART: Final = 1.0
"""A writer task that failed unexpectedly (a bug, logged) restarts after this long."""
RESYNC_WRITER_FAILED: Final = "delivery_failed"
"""The resync reason when the writer failed, maybe between a commit and its fan-out."""
LEASE_RELEASE_WAIT: Final = 2.0
"""Longest a stopping poll loop waits for Redis to take its lease back."""
FOLLOW_RETRY: Final = (0.05, 2.0)
"""A lost broker subscription is tried again after 50 ms, doubling per failure in a
row up to 2 s."""
STORED_CHECK: Final = 1.0
"""Seconds between looks at the broker's stored epoch while following a project: lost
data (a flush) is noticed within this long even when nothing is appended."""
LIVE_WARNING: Final = "journal:live"
"""The standing warning's key while a node cannot follow the other nodes' events."""
DEFAULT_GRACE: Final = defaults.PRODUCER_GRACE
FINAL_STATUSES: Final = frozenset({"stopped", "crashed"})
ALLOWED_FROM: Final[dict[str, frozenset[str]]] = {
    "stop": frozenset({"running", "paused", "pausing", "paused_graceful"}),
    "pause": frozenset({"running"}),
    "resume": frozenset({"paused"}),
    "graceful_pause": frozenset({"running"}),
    "graceful_resume": frozenset({"pausing", "paused_graceful"}),
}
"""Agent statuses in which each control action makes sense."""
NO_PRODUCER: Final = "no producer can act on this project"


class ProducerSession(Protocol):
    """What a project needs of a connected producer (a net-layer `PublishSession`)."""

    @property
    def producer_id(self) -> str: ...

    def send_control(self, action: str) -> bool:
        """Queue a control message; False when the producer is not taking messages."""
        ...

    def send_screenshots(self, watching: bool) -> bool:
        """Queue ``{"type":"screenshots","watching":..}``; False when not taking messages."""
        ...

    async def close(self, code: int, reason: str) -> None: ...


@dataclass
class ProducerSlot:
    """One project stream's producer: who is connected, its grace period, and the
    `ProducerLedger` of applied pseqs, kept across producer reconnects."""

    project: str
    stream: Stream
    ledger: ProducerLedger
    session: ProducerSession | None = None
    grace: trio.CancelScope | None = None
    progress_from: str | None = None
    """The producer id that sent this stream's latest ``progress`` item, if any."""

    @property
    def reports_progress(self) -> bool:
        """Whether the connected producer reads the project's progress itself (it sent
        a ``progress`` item): then the server does not poll the project."""
        session = self.session
        return session is not None and session.producer_id == self.progress_from


@dataclass
class PollStats:
    """What the poll loops did, for metrics, benchmarks and tests."""

    running: int = 0
    reads: int = 0
    errors: int = 0
    crashes: int = 0


@dataclass
class Services:
    """What every project of a server shares: the server-lifetime nursery (poll loops,
    writers, grace timers), the progress readers' thread limiter, the poll settings
    and counters, and with several nodes the poll lease."""

    nursery: trio.Nursery
    poll_interval: float = DEFAULT_POLL_INTERVAL
    poll_restart: tuple[float, float] = POLL_RESTART
    lock_timeout: float = defaults.LOCK_TIMEOUT
    grace: float = DEFAULT_GRACE
    lease: PollLease | None = None
    on_poll: Callable[[str, float, bool], None] | None = None
    history: int = DEFAULT_HISTORY
    history_bytes: int = DEFAULT_HISTORY_BYTES
    queue_size: int = DEFAULT_QUEUE
    extra_secrets: tuple[str, ...] = ()
    """Redacted from every line (the server token)."""
    on_commit: Callable[[str, float], None] | None = None
    """Told each commit's latency, for the metrics."""
    alerts: AlertSettings | None = None
    """The alert rules' thresholds; None: no alerts."""
    project_alerts: Callable[[str], AlertSettings | None] | None = None
    """A project's own thresholds over `alerts` (None: no alerts for it); blocking (it
    reads the registry), so it runs in a thread, once per opening of the project."""
    project_archive: Callable[[str], ArchiveLimits | None] | None = None
    """A project's own archive limits (its ``keep-runs``, ``archive-bytes``) for its
    journal (None: the backend's); blocking, as `project_alerts`."""
    notify: NotifySetup | None = None
    """Where alerts are delivered (``--notify``, ``--notify-command``); None: nowhere."""
    limiter: trio.CapacityLimiter = field(
        default_factory=lambda: trio.CapacityLimiter(READER_THREADS)
    )
    poll: PollStats = field(default_factory=PollStats)

    async def alerts_for(self, name: str) -> AlertSettings | None:
        """The alert thresholds of project ``name`` (None: no alerts)."""
        if self.project_alerts is None:
            return self.alerts
        return await trio.to_thread.run_sync(self.project_alerts, name)

    async def archive_for(self, name: str) -> ArchiveLimits | None:
        """The archive limits of project ``name``'s journal (None: the backend's)."""
        if self.project_archive is None:
            return None
        return await trio.to_thread.run_sync(self.project_archive, name)

    def record_poll(self, name: str, seconds: float, ok: bool) -> None:
        self.poll.reads += 1
        if not ok:
            self.poll.errors += 1
        if self.on_poll is not None:
            self.on_poll(name, seconds, ok)


class Project(metaclass=NoPublicConstructor):
    """One project's hub and what drives it: producer slots, poll loop, control, grace.

    Only `Project.open` makes one, and it returns it fully open (journal open, tasks
    running) or raises: a half-open project, which would stage forever or ack what it
    never wrote, cannot exist."""

    def __init__(self, hub: ProjectHub, directory: Path | None, services: Services) -> None:
        self.hub = hub
        self.services = services
        self.directory: Path | None = None
        """None: this node has no directory for it (a project known only to the broker),
        so it polls no progress; its producer sends it."""
        self.reader: ProgressReader | None = None
        """The one progress reader (its ``reads``/``queries`` are what polling cost)."""
        self.follow(directory)
        self.slots: dict[Stream, ProducerSlot] = {
            "agent": ProducerSlot(hub.name, "agent", ProducerLedger("agent", hub)),
            "dev": ProducerSlot(hub.name, "dev", ProducerLedger("dev", hub)),
        }
        self._poll_scope: trio.CancelScope | None = None
        self._remote_control: trio.CancelScope | None = None
        """Set while this node holds the agent producer and takes other nodes' actions."""
        self._poll_lock = trio.Lock()
        self._lease_trouble = FailureStreak()
        self._tasks: trio.Nursery | None = None
        """The project's own nursery (writer, follower, poll loop, grace timers), a task
        of the server's; `close` cancels it."""
        self._tasks_done = trio.Event()
        self.notifications: Notifications | None = None
        """The deliveries of its alerts to the notify targets (None: no targets)."""
        self._alert_clock = False
        """The alert rules' clock runs (from open, or since alerts were turned on)."""

    @property
    def name(self) -> str:
        return self.hub.name

    def follow(self, directory: Path | None) -> None:
        """Read progress from ``directory`` from now on (a re-registered project); a
        project without one keeps the directory it had."""
        if directory is None or directory == self.directory:
            return
        self.directory = directory
        self.reader = ProgressReader(directory, lock_timeout=self.services.lock_timeout)

    # -- journal -------------------------------------------------------------------

    @classmethod
    async def open(
        cls, name: str, directory: Path | None, services: Services, journal: Journal
    ) -> Project:
        """The project ``name``, its hub opened on ``journal`` and its writer (and, with a
        broker, its follower) running; JournalError if the journal cannot be opened now.
        Whatever fails, nothing is left open: the journal is closed again (not clean)."""
        hub = ProjectHub(
            name,
            history=services.history,
            history_bytes=services.history_bytes,
            queue_size=services.queue_size,
            extra_secrets=services.extra_secrets,
        )
        hub.on_commit = services.on_commit
        project = cls._create(hub, directory, services)
        try:
            await project._open(journal)
        except BaseException:
            await project._abandon()
            raise
        return project

    async def _open(self, journal: Journal) -> None:
        hub = self.hub
        alerts = await self.services.alerts_for(hub.name)
        state = await hub.open(journal)
        if state.new_epoch == "corrupt":
            log.error(
                "project %s: journal unreadable, moved aside to %s; new epoch %s",
                hub.name,
                state.moved_aside,
                state.epoch,
            )
        elif state.new_epoch == "unclean_reboot":
            log.warning(
                "project %s: unclean stop before an OS reboot; new epoch %s",
                hub.name,
                state.epoch,
            )
        for stream, slot in self.slots.items():
            prefix = producer_key(stream, "")
            for key, pseq in state.pseqs.items():
                if key.startswith(prefix):
                    slot.ledger.remember(key[len(prefix) :], pseq)
        self._tasks = await self.services.nursery.start(self._run_tasks)
        if isinstance(journal, RedisJournal):
            hub.shared = journal
            self._start("follower", self._follow, journal)
        self._start("writer", self._write)
        self._await_producers()
        if alerts is not None:
            hub.start_alerts(alerts)
            self._start_alert_clock()
        if self.services.notify is not None:
            self.notifications = Notifications(hub, self.services.notify, self.services.lease)
            for delivery in self.notifications.deliveries:
                self._start(f"notify {delivery.target.label}", self._notify, delivery)

    async def _abandon(self) -> None:
        """Undo a failed open: stop what it started, close the journal if it opened."""
        with trio.CancelScope(shield=True):
            await self._stop_tasks()
            journal = self.hub.journal
            if journal is not None:
                try:
                    await journal.close(clean=False)
                except JournalError as exc:
                    log.error("project %s: closing its journal failed: %s", self.name, exc)

    async def _run_tasks(self, task_status: trio.TaskStatus[trio.Nursery]) -> None:
        """The project's nursery, alive until `close` cancels it."""
        try:
            async with trio.open_nursery() as nursery:
                task_status.started(nursery)
                await trio.sleep_forever()
        finally:
            self._tasks_done.set()

    def _start(self, what: str, task: Callable[..., Awaitable[object]], *args: object) -> None:
        """Run ``task`` in the project's nursery, its failure logged, never passed on."""
        assert self._tasks is not None, "started only once the project is open"
        self._tasks.start_soon(contained, f"project {self.name}: {what}", task, *args)

    async def _stop_tasks(self) -> None:
        if self._tasks is not None:
            self._tasks.cancel_scope.cancel()
            await self._tasks_done.wait()

    @property
    def closed(self) -> bool:
        return self.hub.closed

    @property
    def idle(self) -> bool:
        """No subscriber, no producer, no producer's grace period running and no alert
        waiting to be delivered: closing the project now takes nothing from anyone."""
        return (
            self.hub.subscriber_count == 0
            and self.producer_count == 0
            and all(slot.grace is None for slot in self.slots.values())
            and (self.notifications is None or self.notifications.idle)
        )

    async def close(self) -> None:
        """Commit what is staged, close the journal clean and stop the project's tasks
        (at shutdown, or when it was idle for long)."""
        try:
            await self.hub.close()
        except JournalError as exc:
            log.error("project %s: closing its journal failed: %s", self.name, exc)
        finally:
            with trio.CancelScope(shield=True):
                await self._stop_tasks()

    async def _for_its_life(
        self,
        what: str,
        body: Callable[[], Awaitable[object]],
        on_crash: Callable[[Exception], None] | None = None,
    ) -> None:
        """Run one of the project's own loops until the hub closes: a bug that makes it
        raise is logged and it restarts after `WRITER_RESTART` (`run_restarting`),
        never passed to the server's nursery."""
        hub = self.hub
        await run_restarting(
            f"project {hub.name}: {what}",
            body,
            Backoff(WRITER_RESTART, WRITER_RESTART, jitter=None),
            done=lambda: hub.closed,
            on_crash=on_crash,
            logger=log,
        )

    async def _follow(self, journal: RedisJournal) -> None:
        """The project's broker follower, for the project's life."""
        await self._for_its_life("broker follower", partial(self._follow_broker, journal))

    async def _follow_broker(self, journal: RedisJournal) -> None:
        """Apply every node's appends to this hub, in seq order (STATE.md 5): subscribe
        first, then read the stream from the hub's head, then apply live batches. A lost
        subscription warns subscribers once (until following works again) and is
        subscribed and read again with backoff."""
        hub = self.hub
        retry = Backoff(*FOLLOW_RETRY, jitter=None)
        while not hub.closed:
            try:
                async with journal.live() as batches:
                    await hub.follow_stored()
                    if hub.has_warning(LIVE_WARNING):
                        log.info("project %s: following the broker again", hub.name)
                        hub.clear_warning(LIVE_WARNING)
                    retry.reset()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._watch_stored, journal)
                        async for batch in batches:
                            await hub.apply_live(batch.epoch, batch.first, batch.texts)
                continue
            except* JournalError as group:
                lost = str(group.exceptions[0])
            if hub.closed:
                return
            if not hub.has_warning(LIVE_WARNING):
                log.error("project %s: cannot follow the broker: %s", hub.name, lost)
                hub.warn(
                    "journal",
                    f"lost the broker; other nodes' events follow once it is back: {lost}",
                    key=LIVE_WARNING,
                )
            await trio.sleep(retry.next())

    async def _watch_stored(self, journal: RedisJournal) -> None:
        """While following, look at the stored epoch every STORED_CHECK seconds: a flush
        (or an eviction of the meta) publishes nothing, so an idle project would go on
        in an epoch Redis no longer has, and resume clients into it. A lost or changed
        epoch starts the history again (every subscriber resynced); JournalError when
        Redis cannot be read (the follower's retry takes it from there)."""
        hub = self.hub
        while not hub.closed:
            await journal.hold()  # `projects remove` refuses while a node holds it
            await trio.sleep(STORED_CHECK)
            stored = await journal.head()
            if stored is None or stored[0] != hub.epoch:
                await hub.follow_stored()

    async def _write(self) -> None:
        """The project's writer task; an unexpected failure is logged and it restarts,
        never passed to the server's nursery. It may have failed after a commit, before
        every subscriber had it: every subscriber is resynced, so none is left with a
        silent gap."""
        hub = self.hub
        await self._for_its_life(
            "journal writer",
            hub.run_writer,
            on_crash=lambda _exc: hub.resync_all(RESYNC_WRITER_FAILED),
        )

    def _start_alert_clock(self) -> None:
        if not self._alert_clock:
            self._alert_clock = True
            self._start("alerts", self._alerts)

    async def _alerts(self) -> None:
        """The alert rules' clock, for the project's life."""
        await self._for_its_life("alerts", self._alert_ticks)

    async def refresh_settings(self) -> None:
        """Take the project's own settings as they are now (``trio-ws projects set`` on
        a running server): its alert thresholds, alerts on or off, and its journal's
        archive limits from the next commit. RegistryError if they cannot be read:
        those in force stand."""
        alerts = await self.services.alerts_for(self.name)
        archive = await self.services.archive_for(self.name)
        if self.closed:
            return
        if alerts is not None:
            self._start_alert_clock()
        self.hub.set_alert_settings(alerts)
        journal = self.hub.journal
        if archive is not None and journal is not None:
            journal.retain(archive)

    async def _notify(self, delivery: Delivery) -> None:
        """One notify target's deliveries, for the project's life."""
        await self._for_its_life(f"notify {delivery.target.label}", delivery.run)

    async def _alert_ticks(self) -> None:
        """Publish the time-based alerts when due: sleep until the rules' next deadline,
        or until a commit fed them (a new agent or run moves it)."""
        hub = self.hub
        while not hub.closed:
            fed = hub.alerts_fed  # taken first: a feed during the tick wakes the next wait
            next_at = hub.alert_tick()
            with trio.move_on_at(next_at):
                await fed.wait()

    # -- producers -----------------------------------------------------------------

    @property
    def producer_count(self) -> int:
        return sum(slot.session is not None for slot in self.slots.values())

    async def producer_arrives(self, stream: Stream, producer_id: str) -> None:
        """Before ``producer_id`` is served here as this project's ``stream`` producer:
        take over what the node it may come from stored (its applied pseq, its
        trackers), so it continues exactly once with the same agents. JournalError if
        that cannot be read now; without other nodes, only its pseq is written again
        (a use)."""
        hub = self.hub
        key = producer_key(stream, producer_id)
        slot = self.slots[stream]
        if hub.shared is not None:
            await hub.load_stream(stream)
            stored = hub.committed_pseqs.get(key, 0)
            if stored > slot.ledger.applied_of(producer_id):
                slot.ledger.remember(producer_id, stored)
        elif slot.ledger.applied_of(producer_id) == 0 and self._live(slot):
            # A producer never seen here takes over a stream left live: the one that
            # made it live is gone (it died unseen, with the server or within its
            # grace period). Lost now, so the newcomer's run is a run of its own.
            self._lose_producer(slot, f"a new producer ({producer_id}) took the stream over")
        # Its return is a use: in the journal too, which keeps the producers written
        # last, so that it does not forget one its slot still knows.
        hub.touch(key)

    def producer_back(self, slot: ProducerSlot, session: ProducerSession) -> None:
        """``session`` now holds ``slot``: a connection it replaces is closed, a grace
        timer running for the stream is cancelled and its warning cleared."""
        previous = slot.session
        slot.session = session
        if previous is not None and previous is not session:
            log.info(
                "project %s: producer %s reconnected; replacing its old connection",
                self.name,
                session.producer_id,
            )
            self.services.nursery.start_soon(
                contained,
                f"project {self.name}: closing a replaced producer",
                previous.close,
                1000,
                "replaced by a newer connection",
            )
        if slot.grace is not None:
            slot.grace.cancel()
            slot.grace = None
        self.hub.clear_warning(f"producer:{slot.stream}")
        shared = self.hub.shared
        if slot.stream == "agent" and shared is not None and self._remote_control is None:
            self._remote_control = trio.CancelScope()
            self._start("remote control", self._take_remote_control, shared, self._remote_control)

    def producer_left(self, slot: ProducerSlot, session: ProducerSession) -> None:
        """``session`` ended. Unless a newer connection took the slot over or the stream
        reached a final status, the grace period begins: subscribers are warned, and
        the stream is marked ``crashed`` unless its producer returns in time."""
        if slot.session is not session:
            return
        slot.session = None
        if slot.stream == "agent" and self._remote_control is not None:
            self._remote_control.cancel()
            self._remote_control = None
        if self._live(slot):
            self._start_grace(slot, "disconnected")

    def _live(self, slot: ProducerSlot) -> bool:
        """``slot``'s stream is in a run (its status is neither stopped nor crashed)."""
        stream = self.hub.agent if slot.stream == "agent" else self.hub.dev
        return stream.status not in FINAL_STATUSES

    def _start_grace(self, slot: ProducerSlot, what: str) -> None:
        """Warn subscribers that ``slot``'s producer ``what``, and mark its stream crashed
        unless it returns within the grace period."""
        grace = self.services.grace
        self.hub.warn(
            "producer",
            f"the {slot.stream} producer {what}; marking it crashed unless it returns "
            f"within {grace:g} s",
            key=f"producer:{slot.stream}",
        )
        scope = trio.CancelScope()
        slot.grace = scope
        self._start(f"{slot.stream} producer's grace period", self._grace_period, slot, scope)

    def _await_producers(self) -> None:
        """Just opened: a stream the journal left live has no producer here yet. Its
        producer may have died with the last server process, so it gets the grace
        period a producer seen to leave gets; without it, the project said ``running``
        for ever. With a broker another node may hold the producer (its own grace)."""
        if self.hub.shared is not None:
            return
        for slot in self.slots.values():
            if slot.session is None and slot.grace is None and self._live(slot):
                self._start_grace(slot, "has not come back since the server restarted")

    def _lose_producer(self, slot: ProducerSlot, why: str) -> None:
        """``slot``'s producer is gone for good: the ``producer lost`` line, then
        ``crashed`` (which ends its run: RunRecorder calls it interrupted)."""
        hub = self.hub
        if slot.grace is not None:
            slot.grace.cancel()
            slot.grace = None
        hub.clear_warning(f"producer:{slot.stream}")
        log.warning("project %s: %s producer lost (%s)", self.name, slot.stream, why)
        hub.feed_lines([LOST_LINE], slot.stream)
        hub.set_status("crashed", slot.stream)

    async def _grace_period(self, slot: ProducerSlot, scope: trio.CancelScope) -> None:
        hub = self.hub
        with scope:
            started = trio.current_time()
            await trio.sleep(self.services.grace)
            slot.grace = None
            if hub.remote_seen.get(slot.stream, started) > started:
                # Another node applies this stream's items now (--broker): it moved there.
                hub.clear_warning(f"producer:{slot.stream}")
                log.info("project %s: %s producer went on elsewhere", self.name, slot.stream)
                return
            self._lose_producer(slot, "its grace period ended")

    async def control(self, action: str) -> str | None:
        """Forward a control ``action`` to the agent producer, here or (several nodes)
        on the node it is connected to; the refusal text when it cannot be."""
        session = self.slots["agent"].session
        shared = self.hub.shared
        if session is None and shared is None:
            return NO_PRODUCER
        status = self.hub.committed_agent_status
        if status not in ALLOWED_FROM[action]:
            return f"cannot {action} while the agent is {status}"
        if session is not None:
            if not session.send_control(action):
                return "the producer is not taking control messages right now"
            return None
        assert shared is not None
        try:
            taken = await shared.send_control(action)
        except JournalError as exc:
            log.error("project %s: cannot pass %s on to other nodes: %s", self.name, action, exc)
            return f"cannot reach the node this project's producer is on: {exc}"
        return None if taken else NO_PRODUCER

    async def _take_remote_control(self, shared: SharedJournal, scope: trio.CancelScope) -> None:
        """While this node holds the agent producer, pass it the actions other nodes send
        (`control` there); a lost subscription is entered again with backoff."""
        retry = Backoff(*FOLLOW_RETRY, jitter=None)
        with scope:
            while True:
                try:
                    async with shared.control_requests() as actions:
                        retry.reset()
                        async for action in actions:
                            session = self.slots["agent"].session
                            if action not in protocol.CONTROL_ACTIONS or session is None:
                                log.warning("project %s: dropped control %r", self.name, action)
                            elif not session.send_control(action):
                                log.warning("project %s: producer took no %s", self.name, action)
                except* JournalError as group:
                    log.warning("project %s: %s", self.name, group.exceptions[0])
                await trio.sleep(retry.next())

    # -- subscribers -----------------------------------------------------------

    def subscribe(self, since: int | None, epoch: str | None, backlog: int) -> Subscriber:
        """Join the fan-out; starts the poll loop with the first subscriber."""
        subscriber = self.hub.subscribe(since, epoch, backlog)
        if self._poll_scope is None and self.reader is not None:
            self._poll_scope = trio.CancelScope()
            self._start("poll loop", self._poll, self._poll_scope)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Leave the fan-out (and the screenshots' watchers); cancels the poll loop with
        the last subscriber."""
        watching = self.hub.screenshots.watching
        self.hub.unsubscribe(subscriber)
        if watching and not self.hub.screenshots.watching:
            self._tell_watching()
        if self.hub.subscriber_count == 0 and self._poll_scope is not None:
            self._poll_scope.cancel()
            self._poll_scope = None

    def watch_screenshots(self, subscriber: Subscriber, watch: bool) -> None:
        """``browser_view_subscribe`` (``watch``) or ``browser_view_unsubscribe``; the
        agent producer is told when the project's watchers go 0 to 1 or 1 to 0."""
        if self.hub.watch_screenshots(subscriber, watch):
            self._tell_watching()

    def _tell_watching(self) -> None:
        """Tell the agent producer whether anyone watches screenshots now."""
        session = self.slots["agent"].session
        if session is not None and not session.send_screenshots(self.hub.screenshots.watching):
            log.warning("project %s: the producer missed a screenshots change", self.name)

    async def prime(self) -> None:
        """Read the progress once if nothing is known yet, so that the first
        subscriber's snapshot already holds it (instead of it following as an event)."""
        hub = self.hub
        reader = self.reader
        if reader is None or hub.progress is not None or hub.has_warning("progress"):
            return
        if self._poll_scope is not None or self.services.lease is not None:
            # A running loop holds the poll lock for its life and publishes progress
            # itself; with several nodes the lease's holder reads, and its events
            # arrive through the journal. Waiting here would hold the handshake.
            return
        async with self._poll_lock:
            if hub.progress is None and not hub.has_warning("progress") and await self._may_read():
                try:
                    await read_progress_once(
                        hub,
                        reader,
                        self.services.limiter,
                        self.services.record_poll,
                        self._still_wanted,
                    )
                except Exception as exc:
                    # Progress is not worth refusing a subscriber for: it joins
                    # without it, and the poll loop keeps trying.
                    log.error("project %s: progress read failed", hub.name, exc_info=True)
                    self._poll_crashed(exc)
        with trio.move_on_after(PRIME_COMMIT_WAIT):  # a failing journal: it follows later
            await hub.wait_committed(hub.seq)

    # -- progress ----------------------------------------------------------------

    def _still_wanted(self) -> bool:
        return not self.slots["agent"].reports_progress

    async def _poll(self, scope: trio.CancelScope) -> None:
        """The poll loop; an unexpected failure is logged and the loop restarted after a
        bounded backoff, never passed to the server's nursery (which would take every
        project down). A good read ends a streak of crashes: the next crash waits the
        first delay again."""
        services = self.services
        restart = Backoff(*services.poll_restart, jitter=None)

        def reader() -> ProgressReader:
            # Polled only once it has a directory, which it then keeps (`follow`).
            assert self.reader is not None
            return self.reader

        def record(name: str, seconds: float, ok: bool) -> None:
            if ok:
                restart.reset()
            services.record_poll(name, seconds, ok)

        async def poll() -> None:
            await poll_progress(
                self.hub,
                reader,
                services.poll_interval,
                services.limiter,
                record,
                self._may_read,
                self._still_wanted,
            )

        with scope:
            # A loop cancelled when its last subscriber left may still be inside
            # its read (threads are not cancellable). Its successor waits for it,
            # so a project never has two loops, and reconnect churn on a locked
            # database cannot pile up worker threads and starve other projects.
            async with self._poll_lock:
                services.poll.running += 1
                try:
                    await run_restarting(
                        f"project {self.name}: progress poll",
                        poll,
                        restart,
                        done=lambda: False,
                        on_crash=self._poll_crashed,
                        logger=log,
                    )
                finally:
                    services.poll.running -= 1
                    if services.lease is not None:
                        await self._release_lease(services.lease)

    async def _may_read(self) -> bool:
        """Whether this node reads the project's database now: not while its agent
        producer reports progress (PROTOCOL.md 4.1), and with several nodes only
        while this one holds the poll lease (renewed here, also while the producer
        reports, so that no other node polls the project meanwhile)."""
        lease = self.services.lease
        if lease is not None:
            try:
                held = await lease.hold(self.name)
            except LeaseError as exc:
                if self._lease_trouble.failed():
                    log.warning("project %s: not polling: %s", self.name, exc)
                    self.hub.warn("progress", f"progress is not being read: {exc}", "lease")
                return False
            if self._lease_trouble.succeeded():
                log.info("project %s: poll lease reachable again", self.name)
                self.hub.clear_warning("lease")
            if not held:
                return False
        return self._still_wanted()

    async def _release_lease(self, lease: PollLease) -> None:
        """Hand the project to another node at once rather than at the lease's expiry."""
        with trio.CancelScope(shield=True), trio.move_on_after(LEASE_RELEASE_WAIT):
            try:
                await lease.release(self.name)
            except LeaseError as exc:
                log.warning("project %s: %s (it expires by itself)", self.name, exc)

    def _poll_crashed(self, exc: Exception) -> None:
        """Count an unexpected progress failure (the caller logs it with its traceback)
        and warn subscribers once per streak, as for a failing read."""
        self.services.poll.crashes += 1
        if not self.hub.has_warning("progress"):
            self.hub.warn("progress", f"progress read failed unexpectedly: {type(exc).__name__}")


async def poll_progress(
    hub: ProjectHub,
    reader: Callable[[], ProgressReader],
    interval: float,
    limiter: trio.CapacityLimiter,
    record: Callable[[str, float, bool], None] | None = None,
    may_read: Callable[[], Awaitable[bool]] | None = None,
    still_wanted: Callable[[], bool] | None = None,
) -> None:
    """Read a project's progress every ``interval`` seconds until cancelled; a turn
    where ``may_read`` says no is skipped (see `read_progress_once` for ``still_wanted``).

    A change becomes a `progress` event; a failing read becomes one `warning`
    per failure streak (and one log line), while the last good figures stand.
    """
    while True:
        if may_read is None or await may_read():
            await read_progress_once(hub, reader(), limiter, record, still_wanted)
        await trio.sleep(interval)


async def read_progress_once(
    hub: ProjectHub,
    reader: ProgressReader,
    limiter: trio.CapacityLimiter,
    record: Callable[[str, float, bool], None] | None = None,
    still_wanted: Callable[[], bool] | None = None,
) -> None:
    """One read in a worker thread: publish a change, or warn once per failure streak.

    The outcome is dropped when ``still_wanted`` says no once the read is done: a
    producer that began reporting the project's progress during the read has the
    newer figures, which a stale read must not replace."""
    started = time.perf_counter()
    try:
        progress = await trio.to_thread.run_sync(reader.read, limiter=limiter)
    except ProgressError as exc:
        if record:
            record(hub.name, time.perf_counter() - started, False)
        if still_wanted is not None and not still_wanted():
            return
        if not hub.has_warning("progress"):
            log.warning("project %s: progress read failed: %s", hub.name, exc)
            hub.warn("progress", str(exc))
    else:
        if record:
            record(hub.name, time.perf_counter() - started, True)
        if still_wanted is not None and not still_wanted():
            return
        if hub.has_warning("progress"):
            log.info("project %s: progress reads recovered", hub.name)
        hub.publish_progress(progress)
