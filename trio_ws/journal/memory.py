"""The ``memory`` journal backend: the journal's semantics inside the process.

For tests and throwaway servers (``--journal memory``): nothing outlives the
process, so every ``open`` starts a new, empty epoch (reason ``new``); producer
pseqs and snapshot state are therefore never read back and not kept.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from typing import Final

from trio_ws.journal.interface import (
    DEFAULT_HISTORY,
    DEFAULT_HISTORY_BYTES,
    Batch,
    Commits,
    JournalError,
    JournalState,
    JournalStats,
    check_batch,
    check_limits,
    check_project,
    new_epoch,
    over_limits,
    trim_point,
)

BACKEND: Final = "memory"


class MemoryJournal:
    """One project's journal held in lists; every open is a new, empty epoch."""

    def __init__(
        self,
        project: str,
        *,
        history: int = DEFAULT_HISTORY,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
    ) -> None:
        check_limits(history, history_bytes)
        self._project = check_project(project)
        self._history = history
        self._history_bytes = history_bytes
        self._events: deque[tuple[int, str, int]] = deque()
        self._size = 0
        self._head = 0
        self._opened = False
        self._commits = Commits()

    @property
    def project(self) -> str:
        return self._project

    async def open(self) -> JournalState:
        if self._opened:
            raise JournalError(f"memory journal of {self._project!r} is already open")
        self._opened = True
        self._events.clear()
        self._size = self._head = 0
        return JournalState(new_epoch(), 0, 1, {}, None, "new")

    async def append(self, batch: Batch) -> None:
        self._check_open()
        start = time.perf_counter()
        check_batch(batch, self._head)
        for seq, text in batch.events:
            size = len(text.encode())
            self._events.append((seq, text, size))
            self._size += size
        if batch.events:
            self._head = batch.events[-1][0]
        if over_limits(len(self._events), self._size, self._history, self._history_bytes):
            self._trim()
        self._commits.record(time.perf_counter() - start)

    async def read_since(self, seq: int, limit: int) -> list[tuple[int, str]]:
        self._check_open()
        if not self._events or limit <= 0:
            return []
        start = max(0, seq + 1 - self._events[0][0])
        return [(s, text) for s, text, _ in itertools.islice(self._events, start, start + limit)]

    async def close(self, *, clean: bool = True) -> None:
        self._opened = False

    def stats(self) -> JournalStats:
        oldest = self._events[0][0] if self._events else self._head + 1
        return self._commits.stats(BACKEND, self._head, oldest, len(self._events), self._size)

    def _trim(self) -> None:
        dropped, freed, _ = trim_point(
            ((seq, size) for seq, _, size in self._events),
            len(self._events),
            self._size,
            self._history,
            self._history_bytes,
        )
        for _ in range(dropped):
            self._events.popleft()
        self._size -= freed

    def _check_open(self) -> None:
        if not self._opened:
            raise JournalError(f"memory journal of {self._project!r} is not open")


class MemoryBackend:
    """``--journal memory``: journals that live and die with their objects."""

    def __init__(
        self, *, history: int = DEFAULT_HISTORY, history_bytes: int = DEFAULT_HISTORY_BYTES
    ) -> None:
        check_limits(history, history_bytes)
        self._history = history
        self._history_bytes = history_bytes

    @property
    def name(self) -> str:
        return BACKEND

    def journal(self, project: str) -> MemoryJournal:
        return MemoryJournal(project, history=self._history, history_bytes=self._history_bytes)

    async def remove(self, project: str) -> bool:
        """Nothing outlives a memory journal, so there is never anything to remove."""
        check_project(project)
        return False

    async def knows(self, project: str) -> bool:
        """Nothing outlives a memory journal: no history to continue."""
        check_project(project)
        return False
