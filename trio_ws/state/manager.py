"""`ConnectionManager`: the server's projects and its live connections.

One `Project` per name, so two projects never share a history or a
subscriber set; each drives itself (`trio_ws.state.project`). The manager opens
them on their journals (only fully: `Project.open`), closes one that nobody
used for a while (it opens again on its next use, from its journal), bounds
how many are open, closes the journals at shutdown, counts what healthz and
metrics report, holds the live sessions that shutdown closes, and tells the
`Overview` which projects are open.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import trio

from trio_ws.core import defaults
from trio_ws.core.alerts import AlertSettings
from trio_ws.data.registry import RegistryError
from trio_ws.journal.interface import ArchiveLimits, JournalBackend, JournalError
from trio_ws.journal.memory import MemoryBackend
from trio_ws.runtime.streak import FailureStreak
from trio_ws.runtime.supervise import contained
from trio_ws.state.delivery import NotifySetup
from trio_ws.state.hub import ProjectHub
from trio_ws.state.hub_state import DEFAULT_HISTORY, DEFAULT_HISTORY_BYTES, DEFAULT_QUEUE
from trio_ws.state.lease import PollLease
from trio_ws.state.overview import Overview
from trio_ws.state.project import (
    DEFAULT_GRACE,
    DEFAULT_POLL_INTERVAL,
    POLL_RESTART,
    PollStats,
    Project,
    Services,
)

log = logging.getLogger("trio_ws.state.manager")

SETTINGS_EVERY: Final = 5.0
"""Seconds between looks at the open projects' own settings: a ``trio-ws projects set``
reaches a running server within this."""
IDLE_CHECKS: Final = 4
"""Idle projects are looked for this many times per idle timeout (at most every
`IDLE_CHECK_MAX` seconds): one is closed within 1.25 timeouts of its last use."""
IDLE_CHECK_MAX: Final = 30.0


class TooManyProjects(Exception):
    """The server holds as many open projects as it may (``--max-projects``); a new one
    opens once another was closed idle."""


class Closable(Protocol):
    """A live session the manager can close on shutdown (implemented by the endpoints)."""

    async def close(self, code: int, reason: str) -> None: ...


class ConnectionManager:
    """Owns every project and the sessions to close at shutdown."""

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
        grace: float = DEFAULT_GRACE,
        extra_secrets: Iterable[str] = (),
        journals: JournalBackend | None = None,
        on_commit: Callable[[str, float], None] | None = None,
        lease: PollLease | None = None,
        idle_close: float | None = defaults.IDLE_CLOSE,
        max_projects: int = defaults.MAX_PROJECTS,
        alerts: AlertSettings | None = None,
        project_alerts: Callable[[str], AlertSettings | None] | None = None,
        project_archive: Callable[[str], ArchiveLimits | None] | None = None,
        notify: NotifySetup | None = None,
    ) -> None:
        """``journals`` is where each project's history lives (default: in memory);
        ``lease``, with several nodes, makes one node at a time poll a project;
        ``idle_close`` (seconds, None: never) closes a project nobody used for that
        long, except on the memory journal, whose history would be lost with it;
        ``max_projects`` bounds how many are open at once; ``alerts`` are the alert
        rules' thresholds (None: no alerts), and ``project_alerts`` a project's own
        over them (blocking: it runs in a thread when the project opens);
        ``project_archive`` a project's own archive limits over the journals' (None:
        theirs), read the same way, so a project's retention settings take effect
        when its journal opens; ``notify`` where alerts are delivered."""
        if max_projects < 1:
            raise ValueError("max_projects must be at least 1")
        if idle_close is not None and idle_close <= 0:
            raise ValueError("idle_close must be positive (or None: never)")
        self.services = Services(
            nursery,
            poll_interval=poll_interval,
            poll_restart=poll_restart,
            lock_timeout=lock_timeout,
            grace=grace,
            lease=lease,
            on_poll=on_poll,
            history=history,
            history_bytes=history_bytes,
            queue_size=queue_size,
            extra_secrets=tuple(extra_secrets),
            on_commit=on_commit,
            alerts=alerts,
            project_alerts=project_alerts,
            project_archive=project_archive,
            notify=notify,
        )
        self.journals: JournalBackend = journals or MemoryBackend(
            history=history, history_bytes=history_bytes
        )
        self.max_projects = max_projects
        self.idle_close = None if isinstance(self.journals, MemoryBackend) else idle_close
        self._projects: dict[str, _Entry] = {}
        self._opening: dict[str, _Opening] = {}
        self._closing: dict[str, trio.Event] = {}
        self._shut = False
        self._sessions: set[Closable] = set()
        self.overview = Overview()
        """Every project's summary for ``/ws/overview``; told of each open and close."""
        self.overview.last_state = self.journals.last_state
        self.closed_idle = 0
        """Projects closed because nobody used them (for tests and metrics)."""
        self.settings_looks = 0
        """Rounds of `_follow_settings` done (for tests)."""
        self.started_at = time.monotonic()
        if self.idle_close is not None:
            nursery.start_soon(contained, "closing idle projects", self._close_idle)
        if self.services.project_alerts is not None or self.services.project_archive is not None:
            nursery.start_soon(contained, "following project settings", self._follow_settings)

    @property
    def limiter(self) -> trio.CapacityLimiter:
        """The progress readers' thread limiter (the features board reads under it too)."""
        return self.services.limiter

    @property
    def poll(self) -> PollStats:
        return self.services.poll

    # -- projects ----------------------------------------------------------------

    @property
    def projects(self) -> dict[str, Project]:
        """Every open project by name (a copy)."""
        return {name: entry.project for name, entry in self._projects.items()}

    @property
    def hubs(self) -> dict[str, ProjectHub]:
        return {name: entry.project.hub for name, entry in self._projects.items()}

    def get_hub(self, name: str) -> ProjectHub | None:
        entry = self._projects.get(name)
        return entry.project.hub if entry else None

    async def open(self, name: str, directory: Path | None) -> Project:
        """The project, fully open (on its journal on first use, or again after it was
        closed idle); follows a re-registered directory. For a moment's use (an HTTP
        request): a connection that stays holds it with `hold`. JournalError if the
        journal cannot be opened now (the next call tries again), TooManyProjects at
        the bound."""
        return (await self._acquire(name, directory)).project

    async def hold(self, name: str, directory: Path | None) -> Project:
        """`open`, and keep the project from being closed idle until `release` (a
        subscriber's or producer's connection, from its handshake on)."""
        entry = await self._acquire(name, directory)
        entry.users += 1
        return entry.project

    def release(self, project: Project) -> None:
        """A `hold` ended: the project's idle time counts from now."""
        entry = self._projects.get(project.name)
        if entry is not None and entry.project is project:  # else closed at shutdown
            entry.users -= 1
            entry.used = trio.current_time()

    async def _acquire(self, name: str, directory: Path | None) -> _Entry:
        """The open project's entry; waits for an open or a close of ``name`` in flight.

        Concurrent callers share one open: each gets its project or its error. A
        project is registered only once `Project.open` returned it fully open, so a
        failure of any kind (or a cancelled opener) leaves nothing behind."""
        while True:
            if self._shut:
                raise JournalError("the server is shutting down")
            closing = self._closing.get(name)
            if closing is not None:  # closing idle: open it again once it is closed
                await closing.wait()
                continue
            entry = self._projects.get(name)
            if entry is not None:
                entry.project.follow(directory)
                entry.used = trio.current_time()
                return entry
            opening = self._opening.get(name)
            if opening is not None:  # another connection opens it: share the outcome
                await opening.done.wait()
                if opening.error is not None:
                    raise opening.error
                continue  # opened (or its opener was cancelled: try ourselves)
            if len(self._projects) + len(self._opening) >= self.max_projects:
                raise TooManyProjects(
                    f"the server has its limit of {self.max_projects} open projects "
                    "(--max-projects); try again later"
                )
            return await self._open_new(name, directory)

    async def _open_new(self, name: str, directory: Path | None) -> _Entry:
        opening = self._opening[name] = _Opening()
        try:
            archive = await self.services.archive_for(name)
            project = await Project.open(
                name, directory, self.services, self.journals.journal(name, archive)
            )
        except JournalError as exc:
            log.error("project %s: cannot open its journal: %s", name, exc)
            opening.error = exc
            raise
        except Exception as exc:
            log.error("project %s: cannot be opened", name, exc_info=True)
            opening.error = exc
            raise
        else:
            entry = self._projects[name] = _Entry(project, used=trio.current_time())
            self.overview.opened(project.hub)
            return entry
        finally:
            del self._opening[name]
            opening.done.set()

    async def _follow_settings(self, every: float = SETTINGS_EVERY) -> None:
        """Every ``every`` seconds, each open project takes its own settings as they are
        now (`Project.refresh_settings`). A registry that cannot be read is said once
        per streak; the settings in force stand meanwhile."""
        trouble = FailureStreak()
        while True:
            await trio.sleep(every)
            try:
                for entry in list(self._projects.values()):
                    await entry.project.refresh_settings()
            except RegistryError as exc:
                if trouble.failed():
                    log.error("project settings unreadable; those in force stand: %s", exc)
                continue
            if trouble.succeeded():
                log.info("project settings readable again")
            self.settings_looks += 1

    async def _close_idle(self) -> None:
        """Close every project nobody used for `idle_close` seconds, for good."""
        assert self.idle_close is not None
        timeout = self.idle_close
        while True:
            await trio.sleep(min(timeout / IDLE_CHECKS, IDLE_CHECK_MAX))
            await self._close_unused(timeout)

    async def _close_unused(self, unused_for: float) -> None:
        """One round of `_close_idle` (a function of its own, so that no local of it
        keeps a closed project alive until the next round)."""
        now = trio.current_time()
        for name, entry in list(self._projects.items()):
            if entry.idle and now - entry.used >= unused_for and self._projects.get(name) is entry:
                log.info("project %s: unused for %g s; closing it", name, now - entry.used)
                self.closed_idle += 1
                try:
                    await self._close(name, entry)
                except Exception:  # a bug: the others are still closed, and it is gone
                    log.exception("project %s: closing it failed", name)

    async def _close(self, name: str, entry: _Entry) -> None:
        """Close one project; whoever asks for it meanwhile waits, then opens it again."""
        closing = self._closing[name] = trio.Event()
        del self._projects[name]
        try:
            with trio.CancelScope(shield=True):  # never leave it half closed
                await entry.project.close()
        finally:
            self.overview.closed(entry.project.hub)
            del self._closing[name]
            closing.set()

    async def close_journals(self) -> None:
        """Commit what is staged and close every journal clean (at shutdown); nothing
        opens after this."""
        self._shut = True
        for name, entry in list(self._projects.items()):
            if self._projects.get(name) is entry:
                await self._close(name, entry)
        for closing in list(self._closing.values()):
            await closing.wait()

    @property
    def subscriber_count(self) -> int:
        return sum(entry.project.hub.subscriber_count for entry in self._projects.values())

    @property
    def producer_count(self) -> int:
        return sum(entry.project.producer_count for entry in self._projects.values())

    # -- sessions (for shutdown) -----------------------------------------------

    def add_session(self, session: Closable) -> None:
        self._sessions.add(session)

    def remove_session(self, session: Closable) -> None:
        self._sessions.discard(session)

    def live_sessions(self) -> list[Closable]:
        """Every live session (a copy: sessions come and go while it is walked)."""
        return list(self._sessions)

    async def close_all(self, code: int, reason: str, within: float = 2.0) -> None:
        """Close every live session with ``code``, all at once, within ``within`` seconds."""
        with trio.move_on_after(within):
            async with trio.open_nursery() as nursery:
                for session in list(self._sessions):
                    nursery.start_soon(session.close, code, reason)


@dataclass
class _Entry:
    """An open project and who uses it: held by `users` connections, last used at
    ``used`` (trio clock)."""

    project: Project
    used: float
    users: int = 0

    @property
    def idle(self) -> bool:
        return self.users == 0 and self.project.idle


@dataclass
class _Opening:
    """An open in flight, which concurrent callers of the same name wait for."""

    done: trio.Event = field(default_factory=trio.Event)
    error: Exception | None = None
