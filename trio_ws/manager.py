"""`ConnectionManager`: the hubs of all projects, their poll loops, live sessions.

One hub per project name, so two projects never share a history or a
subscriber set. Each project's progress is read by one `poll_progress` loop,
started with its first subscriber and cancelled with its last; every loop
reads through `trio.to_thread` under one shared capacity limiter, so a
locked database stalls a worker thread, never the event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import trio

from trio_ws import defaults
from trio_ws.hub import (
    DEFAULT_HISTORY,
    DEFAULT_HISTORY_BYTES,
    DEFAULT_QUEUE,
    ProjectHub,
    Subscriber,
)
from trio_ws.journal import JournalBackend, JournalError
from trio_ws.journal_memory import MemoryBackend
from trio_ws.journal_redis import RedisJournal
from trio_ws.lease import LeaseError, PollLease
from trio_ws.progress import ProgressError, ProgressReader
from trio_ws.protocol import Stream
from trio_ws.publish import ProducerSlot, control_refusal, producer_key

log = logging.getLogger("trio_ws.manager")

DEFAULT_POLL_INTERVAL: Final = defaults.POLL_INTERVAL
READER_THREADS: Final = 4
POLL_RESTART: Final = defaults.POLL_RESTART
"""A crashed poll loop restarts after 0.1 s, doubling per crash in a row up to 5 s."""
PRIME_COMMIT_WAIT: Final = 1.0
"""Longest a first subscriber waits for its primed progress to be committed."""
WRITER_RESTART: Final = 1.0
"""A writer task that failed unexpectedly (a bug, logged) restarts after this long."""
LEASE_RELEASE_WAIT: Final = 2.0
"""Longest a stopping poll loop waits for Redis to take its lease back."""
FOLLOW_RETRY: Final = (0.05, 2.0)
"""A lost broker subscription is tried again after 50 ms, doubling per failure in a
row up to 2 s."""
LIVE_WARNING: Final = "journal:live"
"""The standing warning's key while a node cannot follow the other nodes' events."""


@dataclass
class PollStats:
    """What the poll loops did, for metrics, benchmarks and tests."""

    running: int = 0
    reads: int = 0
    errors: int = 0
    crashes: int = 0


class Closable(Protocol):
    """A live session the manager can close on shutdown (implemented by the endpoints)."""

    async def close(self, code: int, reason: str) -> None: ...


@dataclass
class _Project:
    hub: ProjectHub
    directory: Path | None
    """None: this node has no directory for it (a project known only to the broker),
    so it polls no progress; its producer sends it."""
    reader: ProgressReader | None
    slots: dict[Stream, ProducerSlot]
    poll_scope: trio.CancelScope | None = None
    poll_lock: trio.Lock = field(default_factory=trio.Lock)
    lease_failing: bool = False
    opened: trio.Event = field(default_factory=trio.Event)
    open_error: JournalError | None = None


class ConnectionManager:
    """Owns every project hub, their poll loops and the sessions to close at shutdown."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        history: int = DEFAULT_HISTORY,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
        queue_size: int = DEFAULT_QUEUE,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        lock_timeout: float = defaults.LOCK_TIMEOUT,
        on_poll: Callable[[str, float, bool], None] | None = None,
        poll_restart: tuple[float, float] = POLL_RESTART,
        extra_secrets: Iterable[str] = (),
        journals: JournalBackend | None = None,
        on_commit: Callable[[str, float], None] | None = None,
        lease: PollLease | None = None,
    ) -> None:
        """``journals`` is where each project's history lives (default: in memory);
        ``lease``, with several nodes, makes one node at a time poll a project."""
        self._nursery = nursery
        self.journals: JournalBackend = journals or MemoryBackend(
            history=history, history_bytes=history_bytes
        )
        self._extra_secrets = tuple(extra_secrets)  # redacted from every line (the server token)
        self._history = history
        self._history_bytes = history_bytes
        self._queue_size = queue_size
        self.poll_interval = poll_interval
        self._lock_timeout = lock_timeout
        self._projects: dict[str, _Project] = {}
        self._sessions: set[Closable] = set()
        self.limiter = trio.CapacityLimiter(READER_THREADS)
        self.poll = PollStats()
        self._on_poll = on_poll
        self._on_commit = on_commit
        self._poll_restart = poll_restart
        self.lease = lease
        self.started_at = time.monotonic()

    @property
    def nursery(self) -> trio.Nursery:
        """The server-lifetime nursery (poll loops, producer grace timers)."""
        return self._nursery

    # -- hubs ------------------------------------------------------------------

    @property
    def hubs(self) -> dict[str, ProjectHub]:
        return {name: project.hub for name, project in self._projects.items()}

    def get_hub(self, name: str) -> ProjectHub | None:
        project = self._projects.get(name)
        return project.hub if project else None

    async def open_hub(self, name: str, directory: Path | None) -> ProjectHub:
        """The project's hub, opened on its journal on first use (its writer task
        started); follows a re-registered directory. JournalError if the journal cannot
        be opened now (the next call tries again)."""
        project = self._projects.get(name)
        if project is None:
            hub = ProjectHub(
                name,
                history=self._history,
                history_bytes=self._history_bytes,
                queue_size=self._queue_size,
                extra_secrets=self._extra_secrets,
            )
            hub.on_commit = self._on_commit
            slots: dict[Stream, ProducerSlot] = {
                "agent": ProducerSlot(name, "agent"),
                "dev": ProducerSlot(name, "dev"),
            }
            project = _Project(hub, directory, self._new_reader(directory), slots)
            self._projects[name] = project
            await self._open(project)
        elif directory is not None and project.directory != directory:
            project.directory = directory
            project.reader = self._new_reader(directory)
        await project.opened.wait()
        if project.open_error is not None:
            raise project.open_error
        return project.hub

    async def _open(self, project: _Project) -> None:
        hub = project.hub
        journal = self.journals.journal(hub.name)
        try:
            state = await hub.open(journal)
        except JournalError as exc:
            log.error("project %s: cannot open its journal: %s", hub.name, exc)
            project.open_error = exc
            del self._projects[hub.name]  # the next connection tries again
            project.opened.set()
            return
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
        for stream, slot in project.slots.items():
            prefix = producer_key(stream, "")
            for key, pseq in state.pseqs.items():
                if key.startswith(prefix):
                    slot.record(key[len(prefix) :], pseq)
        if isinstance(journal, RedisJournal):
            hub.shared = journal
            self._nursery.start_soon(self._follow, hub, journal)
        self._nursery.start_soon(self._write, hub)
        project.opened.set()

    async def _follow(self, hub: ProjectHub, journal: RedisJournal) -> None:
        """Apply every node's appends to this hub, in seq order (STATE.md 5): subscribe
        first, then read the stream from the hub's head, then apply live batches; on a
        lost subscription warn subscribers, and subscribe and read again with backoff."""
        first, cap = FOLLOW_RETRY
        failures = 0
        while not hub.closed:
            lost: str | None = None
            crashed = False
            try:
                async with journal.live() as batches:
                    await hub.follow_stored()
                    if failures:
                        log.info("project %s: following the broker again", hub.name)
                        hub.clear_warning(LIVE_WARNING)
                    failures = 0
                    async for batch in batches:
                        await hub.apply_live(batch.epoch, batch.first, batch.texts)
            except* JournalError as group:
                lost = str(group.exceptions[0])
            except* Exception:
                log.error("project %s: follower failed; restarting", hub.name, exc_info=True)
                crashed = True
            if crashed:
                await trio.sleep(WRITER_RESTART)
                continue
            if lost is None or hub.closed:
                continue
            failures += 1
            if failures == 1:
                log.error("project %s: cannot follow the broker: %s", hub.name, lost)
                hub.warn(
                    "journal",
                    f"lost the broker; other nodes' events follow once it is back: {lost}",
                    key=LIVE_WARNING,
                )
            await trio.sleep(min(first * 2 ** (failures - 1), cap))

    async def _write(self, hub: ProjectHub) -> None:
        """The project's writer task; an unexpected failure is logged and it restarts,
        never passed to the server's nursery."""
        while not hub.closed:
            try:
                await hub.run_writer()
            except Exception:
                log.error("project %s: journal writer failed; restarting", hub.name, exc_info=True)
                await trio.sleep(WRITER_RESTART)

    async def close_journals(self) -> None:
        """Commit what is staged and close every journal clean (at shutdown)."""
        for project in list(self._projects.values()):
            try:
                await project.hub.close()
            except JournalError as exc:
                log.error("project %s: closing its journal failed: %s", project.hub.name, exc)

    async def remove_journal(self, name: str) -> bool:
        """Delete a project's journal (it must not be open here)."""
        return await self.journals.remove(name)

    def reader_for(self, name: str) -> ProgressReader | None:
        """The project's one progress reader (its ``reads``/``queries`` are what polling cost)."""
        project = self._projects.get(name)
        return project.reader if project else None

    def _new_reader(self, directory: Path | None) -> ProgressReader | None:
        if directory is None:
            return None
        return ProgressReader(directory, lock_timeout=self._lock_timeout)

    @property
    def subscriber_count(self) -> int:
        return sum(project.hub.subscriber_count for project in self._projects.values())

    # -- producers -----------------------------------------------------------------

    def producer_slots(self, name: str) -> dict[Stream, ProducerSlot]:
        return self._projects[name].slots

    async def producer_arrives(self, name: str, stream: Stream, producer_id: str) -> None:
        """Before ``producer_id`` is served here as ``name``'s ``stream`` producer: take
        over what the node it may come from stored (its applied pseq, its trackers), so
        it continues exactly once with the same agents. JournalError if that cannot be
        read now; nothing to do when no other node shares the journal."""
        project = self._projects[name]
        hub = project.hub
        if hub.shared is None:
            return
        await hub.load_stream(stream)
        stored = hub.committed_pseqs.get(producer_key(stream, producer_id), 0)
        slot = project.slots[stream]
        if stored > slot.applied_of(producer_id):
            slot.record(producer_id, stored)

    @property
    def producer_count(self) -> int:
        return sum(
            slot.session is not None
            for project in self._projects.values()
            for slot in project.slots.values()
        )

    def producers_of(self, name: str) -> int:
        project = self._projects.get(name)
        if project is None:
            return 0
        return sum(slot.session is not None for slot in project.slots.values())

    async def control(self, name: str, action: str) -> str | None:
        """Forward a subscriber's control action to the agent producer, or say why not."""
        project = self._projects.get(name)
        if project is None:
            return "no producer can act on this project"
        await trio.lowlevel.checkpoint()
        return control_refusal(project.hub, project.slots["agent"], action)

    # -- subscribers -----------------------------------------------------------

    def subscribe(
        self, name: str, since: int | None, epoch: str | None, backlog: int
    ) -> tuple[ProjectHub, Subscriber]:
        """Join a project's fan-out; starts its poll loop with the first subscriber."""
        project = self._projects[name]
        subscriber = project.hub.subscribe(since, epoch, backlog)
        if project.poll_scope is None and project.reader is not None:
            project.poll_scope = trio.CancelScope()
            self._nursery.start_soon(self._poll, project, project.poll_scope)
        return project.hub, subscriber

    async def prime(self, name: str) -> None:
        """Read a project's progress once if nothing is known yet, so that the first
        subscriber's snapshot already holds it (instead of it following as an event)."""
        project = self._projects[name]
        reader = project.reader
        if reader is None:
            return
        if project.hub.progress is not None or project.hub.has_warning("progress"):
            return
        if project.poll_scope is not None or self.lease is not None:
            # A running loop holds the poll lock for its life and publishes progress
            # itself; with several nodes the lease's holder reads, and its events
            # arrive through the journal. Waiting here would hold the handshake.
            return
        async with project.poll_lock:
            if (
                project.hub.progress is None
                and not project.hub.has_warning("progress")
                and await self._may_read(project)
            ):
                try:
                    await read_progress_once(
                        project.hub,
                        reader,
                        self.limiter,
                        self._record_poll,
                        lambda: not project.slots["agent"].reports_progress,
                    )
                except Exception as exc:
                    # Progress is not worth refusing a subscriber for: it joins
                    # without it, and the poll loop keeps trying.
                    log.error("project %s: progress read failed", project.hub.name, exc_info=True)
                    self._poll_crashed(project.hub, exc)
        with trio.move_on_after(PRIME_COMMIT_WAIT):  # a failing journal: it follows later
            await project.hub.wait_committed(project.hub.seq)

    def unsubscribe(self, name: str, subscriber: Subscriber) -> None:
        """Leave the fan-out; cancels the poll loop with the last subscriber."""
        project = self._projects[name]
        project.hub.unsubscribe(subscriber)
        if project.hub.subscriber_count == 0 and project.poll_scope is not None:
            project.poll_scope.cancel()
            project.poll_scope = None

    # -- sessions (for shutdown) -----------------------------------------------

    def add_session(self, session: Closable) -> None:
        self._sessions.add(session)

    def remove_session(self, session: Closable) -> None:
        self._sessions.discard(session)

    async def close_all(self, code: int, reason: str, within: float = 2.0) -> None:
        """Close every live session with ``code``, all at once, within ``within`` seconds."""
        with trio.move_on_after(within):
            async with trio.open_nursery() as nursery:
                for session in list(self._sessions):
                    nursery.start_soon(session.close, code, reason)

    # -- progress ----------------------------------------------------------------

    async def _poll(self, project: _Project, scope: trio.CancelScope) -> None:
        """The project's poll loop; an unexpected failure is logged and the loop restarted
        after a bounded backoff, never passed to the server's nursery (which would take
        every project down)."""
        first_delay, max_delay = self._poll_restart
        delay = 0.0
        good_reads = 0

        def reader() -> ProgressReader:
            # Polled only once it has a directory, which it then keeps (open_hub).
            assert project.reader is not None
            return project.reader

        def record(name: str, seconds: float, ok: bool) -> None:
            nonlocal good_reads
            good_reads += ok
            self._record_poll(name, seconds, ok)

        with scope:
            # A loop cancelled when its last subscriber left may still be inside
            # its read (threads are not cancellable). Its successor waits for it,
            # so a project never has two loops, and reconnect churn on a locked
            # database cannot pile up worker threads and starve other projects.
            async with project.poll_lock:
                self.poll.running += 1
                try:
                    while True:
                        good_reads = 0
                        try:
                            await poll_progress(
                                project.hub,
                                reader,
                                self.poll_interval,
                                self.limiter,
                                record,
                                lambda: self._may_read(project),
                                lambda: not project.slots["agent"].reports_progress,
                            )
                        except Exception as exc:
                            # A crash after a good read starts a new streak.
                            fresh = good_reads > 0 or delay == 0
                            delay = first_delay if fresh else min(delay * 2, max_delay)
                            log.error(
                                "project %s: progress poll failed; restarting in %g s",
                                project.hub.name,
                                delay,
                                exc_info=True,
                            )
                            self._poll_crashed(project.hub, exc)
                            await trio.sleep(delay)
                finally:
                    self.poll.running -= 1
                    if self.lease is not None:
                        await self._release_lease(project)

    async def _may_read(self, project: _Project) -> bool:
        """Whether this node reads the project's database now: not while its agent
        producer reports progress (PROTOCOL.md 4.1), and with several nodes only
        while this one holds the poll lease (renewed here, also while the producer
        reports, so that no other node polls the project meanwhile)."""
        if self.lease is not None:
            name = project.hub.name
            try:
                held = await self.lease.hold(name)
            except LeaseError as exc:
                if not project.lease_failing:
                    log.warning("project %s: not polling: %s", name, exc)
                    project.hub.warn("progress", f"progress is not being read: {exc}", "lease")
                project.lease_failing = True
                return False
            if project.lease_failing:
                log.info("project %s: poll lease reachable again", name)
                project.hub.clear_warning("lease")
                project.lease_failing = False
            if not held:
                return False
        return not project.slots["agent"].reports_progress

    async def _release_lease(self, project: _Project) -> None:
        """Hand the project to another node at once rather than at the lease's expiry."""
        assert self.lease is not None
        with trio.CancelScope(shield=True), trio.move_on_after(LEASE_RELEASE_WAIT):
            try:
                await self.lease.release(project.hub.name)
            except LeaseError as exc:
                log.warning("project %s: %s (it expires by itself)", project.hub.name, exc)

    def _poll_crashed(self, hub: ProjectHub, exc: Exception) -> None:
        """Count an unexpected progress failure (the caller logs it with its traceback)
        and warn subscribers once per streak, as for a failing read."""
        self.poll.crashes += 1
        if not hub.has_warning("progress"):
            hub.warn("progress", f"progress read failed unexpectedly: {type(exc).__name__}")

    def _record_poll(self, name: str, seconds: float, ok: bool) -> None:
        self.poll.reads += 1
        if not ok:
            self.poll.errors += 1
        if self._on_poll is not None:
            self._on_poll(name, seconds, ok)


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
