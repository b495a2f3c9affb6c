"""The ``memory`` journal backend: the journal's semantics inside the process.

For tests and throwaway servers (``--journal memory``): nothing outlives the
process, so every ``open`` starts a new, empty epoch (reason ``new``); producer
pseqs and snapshot state are therefore never read back and not kept. The archive
(events beyond the live history, closed runs, checkpoints) lives in the same lists,
bounded by `ArchiveLimits` (64 MiB of event text by default: it is the server's RAM).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from typing import Final

from trio_ws.journal.interface import (
    DEFAULT_ARCHIVE_BYTES,
    DEFAULT_HISTORY,
    DEFAULT_HISTORY_BYTES,
    ArchiveLimits,
    ArchiveStats,
    Batch,
    Checkpoint,
    Commits,
    JournalError,
    JournalState,
    JournalStats,
    JsonObject,
    archive_cut,
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
        archive: ArchiveLimits | None = None,
    ) -> None:
        check_limits(history, history_bytes)
        self._project = check_project(project)
        self._history = history
        self._history_bytes = history_bytes
        self._archive = archive or ArchiveLimits(DEFAULT_ARCHIVE_BYTES[BACKEND])
        self._events: deque[tuple[int, str, int]] = deque()
        """Every event kept, the archive's too, oldest first."""
        self._stored = 0
        """Bytes of every event kept."""
        self._live = 0
        """Events of the live history: the newest ones."""
        self._size = 0
        """Bytes of the live history."""
        self._runs: deque[tuple[int, int, str]] = deque()
        """Closed runs: first seq, last seq, summary text, oldest first."""
        self._checkpoints: deque[Checkpoint] = deque()
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
        self._runs.clear()
        self._checkpoints.clear()
        self._size = self._stored = self._live = self._head = 0
        return JournalState(new_epoch(), 0, 1, {}, None, "new")

    async def append(self, batch: Batch) -> None:
        self._check_open()
        start = time.perf_counter()
        check_batch(batch, self._head)
        for seq, text in batch.events:
            size = len(text.encode())
            self._events.append((seq, text, size))
            self._size += size
            self._stored += size
        self._live += len(batch.events)
        if batch.events:
            self._head = batch.events[-1][0]
        self._runs.extend((run.first, run.last, run.text) for run in batch.runs)
        self._checkpoints.extend(batch.checkpoints)
        if over_limits(self._live, self._size, self._history, self._history_bytes):
            self._trim()
        self._cut_archive()
        self._commits.record(time.perf_counter() - start)

    async def read_since(self, seq: int, limit: int) -> list[tuple[int, str]]:
        self._check_open()
        return self._read(max(seq, self._oldest() - 1), self._head, limit)

    async def read_range(self, after: int, last: int, limit: int) -> list[tuple[int, str]]:
        self._check_open()
        return self._read(after, last, limit)

    async def search(
        self, after: int, last: int, needle: str, limit: int, seconds: float
    ) -> tuple[list[tuple[int, str]], int]:
        self._check_open()
        found: list[tuple[int, str]] = []
        deadline = time.monotonic() + seconds
        for seq, text, _ in itertools.islice(self._events, self._index(after), None):
            if seq > last:
                break
            if needle in text.lower():
                found.append((seq, text))
                if len(found) == limit:
                    return found, seq
            if seq % 1024 == 0 and time.monotonic() > deadline:
                return found, seq
        return found, last

    async def runs(self, before: int | None, limit: int) -> list[str]:
        self._check_open()
        found = []
        for first, _, text in reversed(self._runs):
            if before is None or first < before:
                found.append(text)
                if len(found) == limit:
                    break
        return found

    async def checkpoint(self, seq: int, stamp: str | None = None) -> Checkpoint | None:
        self._check_open()
        for point in reversed(self._checkpoints):
            if point.seq <= seq and (stamp is None or (point.stamp or "") <= stamp):
                return point
        return None

    async def close(self, *, clean: bool = True) -> None:
        self._opened = False

    def retain(self, archive: ArchiveLimits) -> None:
        self._archive = archive

    def stats(self) -> JournalStats:
        archive = ArchiveStats(
            oldest=self._events[0][0] if self._events else self._head + 1,
            events=len(self._events),
            bytes=self._stored,
            runs=len(self._runs),
            oldest_run=self._runs[0][0] if self._runs else None,
        )
        return self._commits.stats(
            BACKEND, self._head, self._oldest(), self._live, self._size, archive
        )

    def _oldest(self) -> int:
        return self._head - self._live + 1

    def _index(self, after: int) -> int:
        """The position of the first kept event after seq ``after``."""
        if not self._events:
            return 0
        return max(0, after + 1 - self._events[0][0])

    def _read(self, after: int, last: int, limit: int) -> list[tuple[int, str]]:
        if limit <= 0:
            return []
        start = self._index(after)
        window = itertools.islice(self._events, start, start + limit)
        return [(seq, text) for seq, text, _ in window if seq <= last]

    def _trim(self) -> None:
        """The live history gives up its oldest events to the archive."""
        start = len(self._events) - self._live
        dropped, freed, _ = trim_point(
            ((seq, size) for seq, _, size in itertools.islice(self._events, start, None)),
            self._live,
            self._size,
            self._history,
            self._history_bytes,
        )
        self._live -= dropped
        self._size -= freed

    def _cut_archive(self) -> None:
        """Drop the oldest whole runs (and their events) beyond the archive's limits."""
        plan = archive_cut(
            ((seq, size) for seq, _, size in self._events),
            self._stored,
            [(first, last) for first, last, _ in self._runs],
            self._archive,
            self._oldest(),
        )
        if plan is None:
            return
        cut, runs_from, _ = plan
        while self._events and self._events[0][0] < cut:
            self._stored -= self._events.popleft()[2]
        while self._runs and self._runs[0][0] < runs_from:
            self._runs.popleft()
        while self._checkpoints and self._checkpoints[0].seq < cut:
            self._checkpoints.popleft()

    def _check_open(self) -> None:
        if not self._opened:
            raise JournalError(f"memory journal of {self._project!r} is not open")


class MemoryBackend:
    """``--journal memory``: journals that live and die with their objects."""

    def __init__(
        self,
        *,
        history: int = DEFAULT_HISTORY,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
        archive: ArchiveLimits | None = None,
    ) -> None:
        check_limits(history, history_bytes)
        self._history = history
        self._history_bytes = history_bytes
        self._archive = archive

    @property
    def name(self) -> str:
        return BACKEND

    def journal(self, project: str, archive: ArchiveLimits | None = None) -> MemoryJournal:
        return MemoryJournal(
            project,
            history=self._history,
            history_bytes=self._history_bytes,
            archive=archive or self._archive,
        )

    async def remove(self, project: str) -> bool:
        """Nothing outlives a memory journal, so there is never anything to remove."""
        check_project(project)
        return False

    async def last_state(self, project: str) -> JsonObject | None:
        """Nothing outlives a memory journal, so a project not open has no state."""
        check_project(project)
        return None

    async def knows(self, project: str) -> bool:
        """Nothing outlives a memory journal: no history to continue."""
        check_project(project)
        return False
