"""`ConnectionManager`: the server's projects and its live connections.

One `Project` per name, so two projects never share a history or a
subscriber set; each drives itself (`trio_ws.project`). The manager opens
them on their journals, closes the journals at shutdown, counts what
healthz and metrics report, and holds the live sessions that shutdown
closes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import trio

from trio_ws import defaults
from trio_ws.hub import DEFAULT_HISTORY, DEFAULT_HISTORY_BYTES, DEFAULT_QUEUE, ProjectHub
from trio_ws.journal import JournalBackend, JournalError
from trio_ws.journal_memory import MemoryBackend
from trio_ws.lease import PollLease
from trio_ws.project import (
    DEFAULT_GRACE,
    DEFAULT_POLL_INTERVAL,
    POLL_RESTART,
    PollStats,
    Project,
    Services,
)

log = logging.getLogger("trio_ws.manager")


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
    ) -> None:
        """``journals`` is where each project's history lives (default: in memory);
        ``lease``, with several nodes, makes one node at a time poll a project."""
        self.services = Services(
            nursery,
            poll_interval=poll_interval,
            poll_restart=poll_restart,
            lock_timeout=lock_timeout,
            grace=grace,
            lease=lease,
            on_poll=on_poll,
        )
        self.journals: JournalBackend = journals or MemoryBackend(
            history=history, history_bytes=history_bytes
        )
        self._extra_secrets = tuple(extra_secrets)  # redacted from every line (the server token)
        self._history = history
        self._history_bytes = history_bytes
        self._queue_size = queue_size
        self._on_commit = on_commit
        self._projects: dict[str, Project] = {}
        self._opened: dict[str, trio.Event] = {}
        self._sessions: set[Closable] = set()
        self.started_at = time.monotonic()

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
        return dict(self._projects)

    @property
    def hubs(self) -> dict[str, ProjectHub]:
        return {name: project.hub for name, project in self._projects.items()}

    def get_hub(self, name: str) -> ProjectHub | None:
        project = self._projects.get(name)
        return project.hub if project else None

    async def open(self, name: str, directory: Path | None) -> Project:
        """The project, opened on its journal on first use; follows a re-registered
        directory. JournalError if the journal cannot be opened now (the next call
        tries again)."""
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
            project = Project(hub, directory, self.services)
            self._projects[name] = project
            opened = self._opened[name] = trio.Event()
            try:
                await project.open(self.journals.journal(name))
            except JournalError as exc:
                log.error("project %s: cannot open its journal: %s", name, exc)
                del self._projects[name]  # the next connection tries again
                raise
            finally:
                del self._opened[name]
                opened.set()
            return project
        project.follow(directory)
        opening = self._opened.get(name)
        if opening is not None:  # another connection opens it: wait for the outcome
            await opening.wait()
            if self._projects.get(name) is not project:
                raise JournalError(f"project {name}: its journal could not be opened")
        return project

    async def close_journals(self) -> None:
        """Commit what is staged and close every journal clean (at shutdown)."""
        for project in list(self._projects.values()):
            await project.close()

    async def remove_journal(self, name: str) -> bool:
        """Delete a project's journal (it must not be open here)."""
        return await self.journals.remove(name)

    @property
    def subscriber_count(self) -> int:
        return sum(project.hub.subscriber_count for project in self._projects.values())

    @property
    def producer_count(self) -> int:
        return sum(project.producer_count for project in self._projects.values())

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
