"""The ``sqlite`` journal backend (default): one file per project, ``<home>/journal/<project>.db``.

WAL mode, one connection per journal used only from worker threads, one at a
time (a ``CapacityLimiter(1)`` per journal), so the event loop never waits on
the disk (STATE.md 3.5). Survives ``kill -9`` with ``synchronous=NORMAL``;
only an OS crash or power loss can roll back the newest NORMAL commits, which
is why an unclean stop followed by a reboot starts a new epoch (STATE.md 3.3).

Schema: ``meta`` (key/value: epoch, head, clean-stop flag, boot id, the
synchronous mode of the session, snapshot state as JSON, the oldest seq of the live
history and of the archive), ``chunks`` (the events of one commit: first and last
seq, their UTF-8 size, their JSON texts joined by newlines, which compact JSON never
holds; the size comes before the texts so reading it reads no overflow page),
``producers`` (id, highest applied pseq; rowid order is the order of the last writes,
and each group keeps its MAX_PRODUCERS newest), ``runs`` (closed run summaries by
first seq) and ``checkpoints`` (replay state every CHECKPOINT_EVERY events).

The rows hold more than the live history: trimming the history (``--history``,
``--history-bytes``) only moves ``oldest``, and the rows before it are the archive,
cut by whole runs to `ArchiveLimits` (``--archive-bytes``, 1 GiB by default, and
``--keep-runs``).
A row per commit instead of per event: SQLite's cost is per row, and a busy
project commits thousands of events at once. The
file is marked with ``application_id`` and ``user_version``; a file that
lacks them, fails ``quick_check`` or is not SQLite at all is moved aside,
never deleted.
"""

from __future__ import annotations

import bisect
import datetime
import fcntl
import functools
import json
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Final, Literal

import orjson
import trio

from trio_ws.journal.interface import (
    DEFAULT_ARCHIVE_BYTES,
    DEFAULT_HISTORY,
    DEFAULT_HISTORY_BYTES,
    MAX_PRODUCERS,
    ArchiveLimits,
    ArchiveStats,
    Batch,
    Checkpoint,
    Commits,
    JournalError,
    JournalState,
    JournalStats,
    JournalWriteError,
    JsonObject,
    NewEpochReason,
    archive_cut,
    check_batch,
    check_limits,
    check_project,
    new_epoch,
    over_limits,
    producer_group,
    trim_point,
)
from trio_ws.runtime.dedicated_thread import DedicatedThread

BACKEND: Final = "sqlite"
APPLICATION_ID: Final = 0x74727773
"""``PRAGMA application_id`` of a trio-ws journal ("trws")."""
SCHEMA_VERSION: Final = 3
"""``PRAGMA user_version``: a journal of version 1 (a row per event) or 2 (no sizes,
runs or checkpoints) is migrated in place; any other version is not read."""
CHUNK_EVENTS: Final = 256
"""Events per row at most: a commit of thousands is a few rows, and a trim that
cuts into a row rewrites at most this many events."""
ROWS_PER_INSERT: Final = 256
"""Chunks per INSERT statement: one statement is one step, and a step is where the
worker thread gives up the GIL and must wait to get it back from the event loop."""
CACHE_KIB: Final = 16 * 1024
"""SQLite's page cache per journal: trimming frees pages that the next commits
reuse, and they are cheaper to reuse while still cached (the default is 2 MiB)."""
BOOT_ID_PATH: Final = Path("/proc/sys/kernel/random/boot_id")
JOURNAL_SIZE_LIMIT: Final = 16 * 1024 * 1024
"""Bytes the ``-wal`` file is truncated to after a checkpoint, so a burst does not keep it big."""
JOURNAL_DIR: Final = "journal"
SUFFIXES: Final = ("", "-wal", "-shm")
"""The database file and the two files SQLite keeps beside it in WAL mode."""
LOCK_ATTEMPTS: Final = 5
"""Times a lock is taken again when its file was replaced under it (see `lock_journal`)."""
LOCK_SUFFIX: Final = ".lock"
"""Beside the database: the open journal holds an exclusive ``flock`` on it, so a second
process (another server, ``projects remove``) is refused instead of writing under it.
The kernel drops it with the process, so a ``kill -9`` leaves nothing to clean up."""

Synchronous = Literal["NORMAL", "FULL"]
ConnectionHook = Callable[[sqlite3.Connection], object]

_CHUNKS: Final = (
    "CREATE TABLE chunks (first INTEGER PRIMARY KEY, last INTEGER NOT NULL, "
    "size INTEGER NOT NULL, texts TEXT NOT NULL)"
)
_ARCHIVE_TABLES: Final = (
    "CREATE TABLE runs (first INTEGER PRIMARY KEY, last INTEGER NOT NULL, summary TEXT NOT NULL)",
    "CREATE TABLE checkpoints (seq INTEGER PRIMARY KEY, stamp TEXT, state TEXT NOT NULL)",
    # A row per span of about INDEX_EVERY events (rowid: its first seq, ``last`` its
    # last): their texts, trigram-indexed, so a search reads only the chunks of the
    # spans that hold every trigram of what it looks for.
    "CREATE VIRTUAL TABLE search USING fts5(t, last UNINDEXED, tokenize='trigram', detail='none')",
)
SEARCH_MIN: Final = 3
"""Shortest text the trigram index can find; a shorter one is searched row by row."""
INDEX_EVERY: Final = 2000
"""Events whose texts are indexed at once, in the commit that reaches this many: an
FTS5 insert costs per transaction (a new segment, merges), about 0.35 ms, so one per
commit would double a one-line commit's cost. Until then (and after a crash, until
the next open indexes them) they are searched row by row."""
_SCHEMA: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
    _CHUNKS,
    "CREATE TABLE producers (id TEXT PRIMARY KEY, pseq INTEGER NOT NULL)",
    *_ARCHIVE_TABLES,
)
_TABLES: Final = frozenset({"meta", "chunks", "producers", "runs", "checkpoints", "search"})
_TABLES_V2: Final = frozenset({"meta", "chunks", "producers"})
_TABLES_V1: Final = frozenset({"meta", "events", "producers"})
_META_KEYS_V1: Final = frozenset({"epoch", "head", "clean", "boot_id", "synchronous", "state"})
_META_KEYS_V2: Final = _META_KEYS_V1 | {"oldest"}
_META_KEYS: Final = _META_KEYS_V2 | {"archived"}
"""``archived``: the oldest seq the archive still holds (NULL: every seq in the rows)."""
"""``oldest``: the oldest seq still held (NULL: every seq in the rows). A trim deletes the
rows before it and moves it, so it never rewrites a row it cuts into."""
_TRANSIENT: Final = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_CANTOPEN",
    "SQLITE_IOERR",
    "SQLITE_PERM",
    "SQLITE_NOMEM",
    "SQLITE_READONLY",
    "SQLITE_FULL",
    "SQLITE_AUTH",
)
"""Error codes that say the journal cannot be reached now, not that it is unreadable:
such a journal is never moved aside, ``open`` fails instead."""


class _Unreadable(Exception):
    """The file is not a trio-ws journal this version can read (moved aside by ``open``)."""


def journal_path(home: Path, project: str) -> Path:
    """Where ``project``'s journal lives under ``home``."""
    return home / JOURNAL_DIR / f"{check_project(project)}.db"


def read_boot_id(path: Path) -> str | None:
    """This boot's id, or None where the system does not tell (then every unclean stop
    counts as a possible reboot)."""
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _reason(error: sqlite3.Error) -> str:
    name = getattr(error, "sqlite_errorname", None)
    return f"{error} ({name})" if name else str(error)


def _transient(error: sqlite3.Error) -> bool:
    name = getattr(error, "sqlite_errorname", "") or ""
    return name.startswith(_TRANSIENT)


class SqliteJournal:
    """One project's journal in one SQLite file."""

    def __init__(
        self,
        path: Path,
        project: str,
        *,
        synchronous: Synchronous = "NORMAL",
        history: int = DEFAULT_HISTORY,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
        boot_id_path: Path = BOOT_ID_PATH,
        on_connect: ConnectionHook | None = None,
        max_producers: int = MAX_PRODUCERS,
        archive: ArchiveLimits | None = None,
    ) -> None:
        """``on_connect`` sees the connection once it is set up (tests use it to set
        SQLite limits such as ``max_page_count``)."""
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        check_limits(history, history_bytes, max_producers)
        self._max_producers = max_producers
        self.path = path
        self._project = check_project(project)
        self._synchronous = synchronous
        self._history = history
        self._history_bytes = history_bytes
        self._boot_id_path = boot_id_path
        self._on_connect = on_connect
        self._limiter = trio.CapacityLimiter(1)
        self._writer = DedicatedThread(f"journal {self._project}")
        """Where commits run (reads and the rest go through `trio.to_thread`, all of
        them holding ``_limiter``, so the connection has one user at a time)."""
        self._conn: sqlite3.Connection | None = None
        self._lock: int | None = None
        """The descriptor holding the journal's lock while it is open."""
        self._head = 0
        self._oldest = 1
        self._held = 0
        self._size = 0
        self._rows: deque[HeldRow] = deque()
        """Every row of the live history, oldest first, with its events' sizes: trims
        are decided from these on the event loop's side, so a commit reads nothing back."""
        self._archive = archive or ArchiveLimits(DEFAULT_ARCHIVE_BYTES[BACKEND])
        self._stored: deque[tuple[int, int]] = deque()
        """Every row kept (archive and live history): its last seq and size."""
        self._stored_bytes = 0
        self._archived = 1
        """The oldest seq the archive holds."""
        self._runs: deque[tuple[int, int]] = deque()
        """The closed runs kept: first and last seq, oldest first."""
        self._indexed = 0
        """The last seq of the newest span in the search index."""
        self._spans: list[int] = []
        """The first seq of each span in the index, oldest first: spans are contiguous,
        each ends where the next begins (the newest at ``_indexed``), so a search reads
        no span's stored text to know where it ends."""
        self._unindexed: list[str] = []
        """The searchable texts of the events after it, a string per commit."""
        self._commits = Commits()

    @property
    def project(self) -> str:
        return self._project

    async def open(self) -> JournalState:
        if self._conn is not None:
            raise JournalError(f"journal {self.path} is already open")
        try:
            state = await trio.to_thread.run_sync(self._open, limiter=self._limiter)
        except OSError as error:  # the directory or the file itself is out of reach
            raise JournalError(f"journal {self.path}: cannot open: {error}") from None
        self._head, self._oldest = state.head, state.oldest
        return state

    async def append(self, batch: Batch) -> None:
        await self._commit(batch)

    async def _commit(self, batch: Batch) -> None:
        """Prepare the commit here (rows, sizes, the trim: so the worker thread runs a
        handful of statements and nothing else), write it there, then take it in."""
        conn = self._connection()
        check_batch(batch, self._head)
        state = None if batch.state is None else _state_text(batch.state)
        rows = _rows(batch.events)
        texts = batch.texts
        if len(texts) != len(batch.events):
            texts = [_searchable(text) for _, text in batch.events]
        pending = [*self._unindexed, "\n".join(texts)] if batch.events else self._unindexed
        indexing = len(pending) > 0 and self._head + len(batch.events) - self._indexed >= (
            INDEX_EVERY
        )
        fresh = [HeldRow(first, last, sizes, sum(sizes)) for first, last, _, sizes in rows]
        held = self._held + len(batch.events)
        size = self._size + sum(row.size for row in fresh)
        whole, cut, dropped, freed, keep = 0, 0, 0, 0, None
        if held and over_limits(held, size, self._history, self._history_bytes):
            whole, cut, dropped, freed, keep = _trim_plan(
                list(chain(self._rows, fresh)), held, size, self._history, self._history_bytes
            )
        runs = [(run.first, run.last) for run in batch.runs]
        stored_bytes = self._stored_bytes + sum(row.size for row in fresh)
        planned = archive_cut(
            chain(self._stored, ((row.last, row.size) for row in fresh)),
            stored_bytes,
            [*self._runs, *runs],
            self._archive,
            keep if dropped and keep is not None else self._oldest,
        )
        # The spans that end before the cut go with it (a span ends where the next begins).
        spans_gone, spans_from = 0, 0
        if planned is not None:
            starts = bisect.bisect_right(self._spans, planned[0])
            spans_gone = max(0, starts - 1)
            spans_from = self._spans[spans_gone] if self._spans else 0
        write = Write(
            rows=[(first, last, sum(sizes), texts) for first, last, texts, sizes in rows],
            pseqs=list(batch.pseqs.items()),
            head=str(rows[-1][1]) if rows else None,
            state=state,
            oldest=keep if dropped else None,
            runs=[(run.first, run.last, run.text) for run in batch.runs],
            checkpoints=[(point.seq, point.stamp, point.text) for point in batch.checkpoints],
            archived=None if planned is None else (planned[0], planned[1], spans_from),
            search=(self._indexed + 1, rows[-1][1] if rows else self._head, "\n".join(pending))
            if indexing
            else None,
        )
        start = time.perf_counter()
        try:
            await self._writer.run_sync(functools.partial(self._write, conn, write), self._limiter)
        except JournalWriteError:
            self._commits.write_errors += 1
            raise
        self._commits.record(time.perf_counter() - start)
        if indexing:
            self._spans.append(self._indexed + 1)
            self._unindexed, self._indexed = [], rows[-1][1] if rows else self._head
        else:
            self._unindexed = pending
        self._stored.extend((row.last, row.size) for row in fresh)
        self._stored_bytes = stored_bytes
        self._runs.extend(runs)
        if planned is not None:
            self._archived = planned[0]
            while self._stored and self._stored[0][0] < planned[0]:
                self._stored_bytes -= self._stored.popleft()[1]
            while self._runs and self._runs[0][0] < planned[1]:
                self._runs.popleft()
            del self._spans[:spans_gone]
        self._rows.extend(fresh)
        for _ in range(whole):
            self._rows.popleft()
        if cut:
            self._rows[0] = self._rows[0].without(cut)
        if rows:
            self._head = rows[-1][1]
        self._held, self._size = held - dropped, size - freed
        self._oldest = self._rows[0].first if self._rows else self._head + 1

    async def read_since(self, seq: int, limit: int) -> list[tuple[int, str]]:
        # The rows before the live history are the archive's: not for a catch-up.
        return await self.read_range(max(seq, self._oldest - 1), self._head, limit)

    async def read_range(self, after: int, last: int, limit: int) -> list[tuple[int, str]]:
        conn = self._connection()
        after = max(after, self._archived - 1)  # a row may still hold events cut away

        def read() -> list[tuple[int, str]]:
            found: list[tuple[int, str]] = []
            try:
                rows = conn.execute(
                    "SELECT first, texts FROM chunks WHERE last > ? AND first <= ? ORDER BY first",
                    (after, last),
                )
                for first, texts in rows:
                    parts = texts.split("\n")[max(0, after + 1 - first) :]
                    start = max(first, after + 1)
                    found += zip(range(start, start + len(parts)), parts, strict=True)
                    if len(found) >= limit:
                        break
                rows.close()
            except sqlite3.Error as error:
                raise JournalError(f"journal {self.path}: cannot read: {_reason(error)}") from None
            return [(seq, text) for seq, text in found[:limit] if seq <= last]

        return await trio.to_thread.run_sync(read, limiter=self._limiter)

    async def search(
        self, after: int, last: int, needle: str, limit: int, seconds: float
    ) -> tuple[list[tuple[int, str]], int]:
        """SQLite finds the rows that hold ``needle`` (``instr`` over ``lower``, which
        folds ASCII only: a needle with other letters is matched in Python alone), and
        only those are split into events here."""
        conn = self._connection()
        after = max(after, self._archived - 1)
        # ``needle`` is as the text appears inside JSON: with no escape in it, it is the
        # text itself, which the trigram index (case-insensitive) finds.
        indexed = self._indexed if len(needle) >= SEARCH_MIN and "\\" not in needle else 0
        ends = {start: end - 1 for start, end in zip(self._spans, self._spans[1:], strict=False)}
        if self._spans:
            ends[self._spans[-1]] = self._indexed
        in_sql = needle.isascii()
        ranged = "SELECT first, last, texts FROM chunks WHERE last > ? AND first <= ?"
        plain = ranged + " AND instr(lower(texts), ?) > 0" if in_sql else ranged

        def search() -> tuple[list[tuple[int, str]], int]:
            found: list[tuple[int, str]] = []
            deadline = time.monotonic() + seconds
            # The indexed spans that may hold it, then the rows after the index.
            reads: list[tuple[str, int, int]] = []  # query, after, last
            if indexed > after:
                spans = conn.execute(
                    "SELECT rowid FROM search WHERE search MATCH ? ORDER BY rowid",
                    (_trigram_query(needle),),
                ).fetchall()
                for (first,) in spans:
                    span_last = ends.get(first, indexed)
                    if span_last > after and first <= min(last, indexed):
                        reads.append((ranged, max(after, first - 1), min(last, span_last)))
            reads.append((plain, max(after, indexed), last))
            try:
                for query, low, high in reads:
                    args = (low, high, needle) if query is plain and in_sql else (low, high)
                    rows = conn.execute(query + " ORDER BY first", args)
                    for first, row_last, texts in rows:
                        start = max(first, low + 1)
                        for seq, text in enumerate(texts.split("\n")[start - first :], start):
                            if seq <= high and needle in text.lower():
                                found.append((seq, text))
                                if len(found) == limit:
                                    rows.close()
                                    return found, seq
                        if time.monotonic() > deadline:
                            rows.close()
                            return found, min(row_last, last)
                    rows.close()
            except sqlite3.Error as error:
                raise JournalError(f"journal {self.path}: cannot read: {_reason(error)}") from None
            return found, last

        return await trio.to_thread.run_sync(search, limiter=self._limiter)

    async def runs(self, before: int | None, limit: int) -> list[str]:
        conn = self._connection()

        def read() -> list[str]:
            try:
                rows = conn.execute(
                    "SELECT summary FROM runs WHERE first < ? ORDER BY first DESC LIMIT ?",
                    (self._head + 1 if before is None else before, limit),
                ).fetchall()
            except sqlite3.Error as error:
                raise JournalError(f"journal {self.path}: cannot read: {_reason(error)}") from None
            return [str(row[0]) for row in rows]

        return await trio.to_thread.run_sync(read, limiter=self._limiter)

    async def checkpoint(self, seq: int, stamp: str | None = None) -> Checkpoint | None:
        conn = self._connection()

        def read() -> tuple[int, str | None, str] | None:
            query = "SELECT seq, stamp, state FROM checkpoints WHERE seq <= ? AND seq >= ?"
            args: tuple[object, ...] = (seq, self._archived)
            if stamp is not None:
                query += " AND coalesce(stamp, '') <= ?"
                args += (stamp,)
            try:
                row = conn.execute(query + " ORDER BY seq DESC LIMIT 1", args).fetchone()
            except sqlite3.Error as error:
                raise JournalError(f"journal {self.path}: cannot read: {_reason(error)}") from None
            return None if row is None else (int(row[0]), row[1], str(row[2]))

        found = await trio.to_thread.run_sync(read, limiter=self._limiter)
        return None if found is None else Checkpoint(*found)

    async def close(self, *, clean: bool = True) -> None:
        conn = self._connection()
        self._conn = None

        def close() -> None:
            try:
                if clean:
                    with conn:
                        conn.execute("UPDATE meta SET value = '1' WHERE key = 'clean'")
            except sqlite3.Error as error:
                raise JournalWriteError(
                    f"journal {self.path}: cannot record the clean stop: {_reason(error)}"
                ) from None
            finally:
                conn.close()
                self._unlock()

        try:
            await trio.to_thread.run_sync(close, limiter=self._limiter)
        finally:
            self._writer.stop()

    def retain(self, archive: ArchiveLimits) -> None:
        self._archive = archive

    def stats(self) -> JournalStats:
        first = self._stored[0] if self._stored else None
        held = 0 if first is None else self._head - self._archived + 1
        archive = ArchiveStats(
            oldest=self._archived if first is not None else self._head + 1,
            events=held,
            bytes=self._stored_bytes,
            runs=len(self._runs),
            oldest_run=self._runs[0][0] if self._runs else None,
        )
        return self._commits.stats(
            BACKEND, self._head, self._oldest, self._held, self._size, archive
        )

    # -- worker-thread side ---------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise JournalError(f"journal {self.path} is not open")
        return self._conn

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            if self._on_connect is not None:
                self._on_connect(conn)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _unlock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            os.close(lock)  # closing the descriptor releases the flock

    def _open(self) -> JournalState:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = lock_journal(self.path, self._project)
        try:
            return self._open_locked()
        except BaseException:
            self._unlock()
            raise

    def _open_locked(self) -> JournalState:
        boot_id = read_boot_id(self._boot_id_path)
        reason: NewEpochReason | None = None
        moved: Path | None = None
        conn: sqlite3.Connection | None = None
        if self.path.exists():
            conn, fresh = self._open_existing()
            if conn is None:
                moved, reason = self._move_aside(), "corrupt"
            elif fresh:
                reason = "new"
        elif any(Path(f"{self.path}{suffix}").exists() for suffix in SUFFIXES[1:]):
            # A -wal without its database: replayed into a new file it would corrupt it.
            moved, reason = self._move_aside(), "corrupt"
        else:
            reason = "new"
        try:
            if conn is None:
                # Created here so that it (and the -wal/-shm SQLite copies it for) is 0600.
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
                conn = self._connect()
                self._create(conn)
            state = self._start(conn, reason, boot_id)
        except sqlite3.Error as error:
            if conn is not None:
                conn.close()
            raise JournalError(f"journal {self.path}: cannot open: {_reason(error)}") from None
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        self._conn = conn
        return JournalState(
            state.epoch,
            state.head,
            state.oldest,
            state.pseqs,
            state.state,
            state.new_epoch,
            None if moved is None else str(moved),
        )

    def _open_existing(self) -> tuple[sqlite3.Connection | None, bool]:
        """A connection to the existing file once it proved readable (None if it is not),
        and whether it was an empty database (a creation cut short, now made a journal)."""
        conn: sqlite3.Connection | None = None
        try:
            conn = self._connect()
            fresh = self._check(conn)
        except (sqlite3.DatabaseError, _Unreadable) as error:
            if conn is not None:
                conn.close()
            if isinstance(error, sqlite3.Error) and _transient(error):
                raise JournalError(f"journal {self.path}: cannot open: {_reason(error)}") from None
            return None, False
        return conn, fresh

    def _check(self, conn: sqlite3.Connection) -> bool:
        """Raise _Unreadable unless ``conn`` holds a journal of this schema that passes
        ``quick_check``; an empty database is made one (then True)."""
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if application_id == 0 and version == 0 and not tables:
            self._create(conn)
            return True
        if application_id != APPLICATION_ID:
            raise _Unreadable(f"not a trio-ws journal (application_id {application_id})")
        if version not in (1, 2, SCHEMA_VERSION):
            raise _Unreadable(f"schema version {version}, this trio-ws reads {SCHEMA_VERSION}")
        required = {1: _TABLES_V1, 2: _TABLES_V2}.get(version, _TABLES)
        if not tables >= required:
            raise _Unreadable(f"tables {sorted(tables)} lack some of {sorted(required)}")
        check = [row[0] for row in conn.execute("PRAGMA quick_check")]
        if check != ["ok"]:
            raise _Unreadable(f"quick_check: {'; '.join(map(str, check[:3]))}")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        keys = {1: _META_KEYS_V1, 2: _META_KEYS_V2}.get(version, _META_KEYS)
        if set(meta) != keys:
            raise _Unreadable(f"meta keys {sorted(meta)}, expected {sorted(keys)}")
        try:
            int(meta["head"])
            oldest = None if meta.get("oldest") is None else int(meta["oldest"])
            archived = None if meta.get("archived") is None else int(meta["archived"])
            if meta["state"] is not None:
                json.loads(meta["state"])
        except (TypeError, ValueError) as error:
            raise _Unreadable(f"meta values unreadable: {error}") from None
        if not meta["epoch"]:
            raise _Unreadable("no epoch")
        if version == 1:
            _migrate_from_rows(conn)
        if version < SCHEMA_VERSION:
            _migrate_to_archive(conn)
        self._rows = _held_rows(conn, oldest)
        self._load_archive(conn, archived)
        return False

    def _load_archive(self, conn: sqlite3.Connection, archived: int | None) -> None:
        """What the archive holds: every row's last seq and size, the closed runs."""
        self._stored = deque(
            (int(last), int(size))
            for last, size in conn.execute("SELECT last, size FROM chunks ORDER BY first")
        )
        self._stored_bytes = sum(size for _, size in self._stored)
        first = conn.execute("SELECT min(first) FROM chunks").fetchone()[0]
        self._archived = max(archived or 1, int(first or 1))
        self._runs = deque(
            (int(first), int(last))
            for first, last in conn.execute("SELECT first, last FROM runs ORDER BY first")
        )
        newest = conn.execute("SELECT last FROM search ORDER BY rowid DESC LIMIT 1").fetchone()
        self._indexed = 0 if newest is None else int(newest[0])
        self._spans = [
            int(row[0]) for row in conn.execute("SELECT rowid FROM search ORDER BY rowid")
        ]
        # What a crash left out of the index (or a journal older than it): the next
        # commit indexes it.
        self._unindexed = [
            "\n".join(_searchable(text) for text in str(texts).split("\n"))
            for (texts,) in conn.execute(
                "SELECT texts FROM chunks WHERE last > ? ORDER BY first", (self._indexed,)
            )
        ]

    def _create(self, conn: sqlite3.Connection) -> None:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [(key, None) for key in sorted(_META_KEYS)],
            )
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _move_aside(self) -> Path:
        """Rename the unreadable file (and its -wal/-shm) to ``.corrupt-<UTC time>``."""
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        number = 0
        while any(Path(f"{target}{suffix}").exists() for suffix in SUFFIXES):
            number += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{number}")
        for suffix in reversed(SUFFIXES):  # the database last: a crash midway leaves it found
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.rename(f"{target}{suffix}")
        return target

    def _start(
        self, conn: sqlite3.Connection, reason: NewEpochReason | None, boot_id: str | None
    ) -> JournalState:
        """Continue the stored history or start a new epoch; mark the session unclean."""
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if reason is None and meta["clean"] != "1":
            rebooted = boot_id is None or boot_id != meta["boot_id"]
            if rebooted and meta["synchronous"] != "FULL":
                reason = "unclean_reboot"
        epoch = meta["epoch"] if reason is None else new_epoch()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            if reason is not None:
                conn.execute("DELETE FROM chunks")
                conn.execute("DELETE FROM runs")
                conn.execute("DELETE FROM checkpoints")
                conn.execute("UPDATE meta SET value = NULL WHERE key = 'archived'")
                self._rows.clear()
                self._stored.clear()
                self._stored_bytes, self._archived = 0, 1
                self._runs.clear()
                self._indexed, self._unindexed, self._spans = 0, [], []
                conn.execute("DELETE FROM search")
                conn.execute("UPDATE meta SET value = NULL WHERE key = 'oldest'")
                conn.execute("DELETE FROM producers")
                conn.execute("UPDATE meta SET value = NULL WHERE key = 'state'")
                conn.execute("UPDATE meta SET value = '0' WHERE key = 'head'")
                conn.execute("UPDATE meta SET value = ? WHERE key = 'epoch'", (epoch,))
            conn.executemany(
                "UPDATE meta SET value = ? WHERE key = ?",
                [("0", "clean"), (boot_id, "boot_id"), (self._synchronous, "synchronous")],
            )
        stored = None if reason is not None else meta["state"]
        head = int(meta["head"]) if reason is None else 0
        self._held = sum(row.last - row.first + 1 for row in self._rows)
        self._size = sum(row.size for row in self._rows)
        oldest = self._rows[0].first if self._rows else None
        pseqs = {
            str(pid): int(pseq)
            for pid, pseq in conn.execute("SELECT id, pseq FROM producers ORDER BY rowid")
        }
        return JournalState(
            epoch=str(epoch),
            head=head,
            oldest=head + 1 if oldest is None else int(oldest),
            pseqs=pseqs,
            state=None if stored is None else json.loads(stored),
            new_epoch=reason,
        )

    def _write(self, conn: sqlite3.Connection, write: Write) -> None:
        """Commit one batch, and drop the rows before ``write.keep``: a handful of
        statements (each one is where this thread waits for the GIL again)."""
        try:
            if conn.in_transaction:  # a rollback that failed last time
                conn.rollback()
            conn.execute("BEGIN IMMEDIATE")
            for start in range(0, len(write.rows), ROWS_PER_INSERT):
                part = write.rows[start : start + ROWS_PER_INSERT]
                conn.execute(
                    "INSERT INTO chunks (first, last, size, texts) VALUES "
                    + ", ".join(["(?, ?, ?, ?)"] * len(part)),
                    [value for row in part for value in row],
                )
            if write.search is not None:
                conn.execute("INSERT INTO search (rowid, last, t) VALUES (?, ?, ?)", write.search)
            if write.runs:
                conn.executemany(
                    "INSERT OR REPLACE INTO runs (first, last, summary) VALUES (?, ?, ?)",
                    write.runs,
                )
            if write.checkpoints:
                conn.executemany(
                    "INSERT OR REPLACE INTO checkpoints (seq, stamp, state) VALUES (?, ?, ?)",
                    write.checkpoints,
                )
            if write.pseqs:
                # REPLACE gives a written row a new, highest rowid: rowid order is the
                # order of the last writes, and each group keeps its newest rows.
                conn.execute(
                    "INSERT OR REPLACE INTO producers (id, pseq) VALUES "
                    + ", ".join(["(?, ?)"] * len(write.pseqs)),
                    [value for pair in write.pseqs for value in pair],
                )
                for group in sorted({producer_group(key) for key, _ in write.pseqs}):
                    prefix = f"{group}:"
                    conn.execute(
                        "DELETE FROM producers WHERE substr(id, 1, length(?1)) = ?1 AND rowid <= "
                        "(SELECT rowid FROM producers WHERE substr(id, 1, length(?1)) = ?1 "
                        "ORDER BY rowid DESC LIMIT 1 OFFSET ?2)",
                        (prefix, self._max_producers),
                    )
            if write.head is not None or write.state is not None or write.oldest is not None:
                conn.execute(  # one statement: NULL leaves a value as it is
                    "UPDATE meta SET value = coalesce(CASE key WHEN 'head' THEN ? "
                    "WHEN 'state' THEN ? ELSE ? END, value) "
                    "WHERE key IN ('head', 'state', 'oldest')",
                    (write.head, write.state, write.oldest),
                )
            if write.archived is not None:
                cut, runs_from, spans_from = write.archived
                conn.execute("DELETE FROM search WHERE rowid < ?", (spans_from,))
                conn.execute("DELETE FROM chunks WHERE last < ?", (cut,))
                conn.execute("DELETE FROM runs WHERE first < ?", (runs_from,))
                conn.execute("DELETE FROM checkpoints WHERE seq < ?", (cut,))
                conn.execute("UPDATE meta SET value = ? WHERE key = 'archived'", (cut,))
            conn.execute("COMMIT")
        except sqlite3.Error as error:
            message = f"journal {self.path}: cannot write: {_reason(error)}"
            if conn.in_transaction:
                try:
                    conn.rollback()
                except sqlite3.Error as rollback:
                    message += f"; rollback failed too: {_reason(rollback)}"
            raise JournalWriteError(message) from None


@dataclass(frozen=True, slots=True)
class Write:
    """What one commit writes, prepared on the event loop's side (None: unchanged)."""

    rows: list[tuple[int, int, int, str]]
    pseqs: list[tuple[str, int]]
    head: str | None
    state: str | None
    oldest: int | None
    """The new oldest seq of the live history after a trim (the rows stay: archive)."""
    runs: list[tuple[int, int, str]]
    checkpoints: list[tuple[int, str | None, str]]
    search: tuple[int, int, str] | None
    """A span for the search index: first and last seq, the texts of its events."""
    archived: tuple[int, int, int] | None
    """The new oldest seq of the archive (rows and checkpoints before it go), the first
    seq of the oldest run kept (runs that start before it go) and of the oldest span of
    the search index kept."""


def _searchable(text: str) -> str:
    """An event's searchable text read off its JSON (for events given without it)."""
    try:
        message = json.loads(text)
    except ValueError:
        return ""
    if isinstance(message, dict):
        for key in ("line", "thought", "message"):
            if isinstance(value := message.get(key), str):
                return value
    return ""


def _trigram_query(text: str) -> str:
    """An FTS5 query for the rows whose index holds every trigram of ``text`` (the
    index keeps no positions: the rows found are checked event by event)."""
    trigrams = sorted({text[start : start + 3] for start in range(len(text) - 2)})
    return " AND ".join('"' + trigram.replace('"', '""') + '"' for trigram in trigrams)


def _state_text(state: JsonObject) -> str:
    """The state's JSON for the ``meta`` row, written with every commit: orjson (a
    tenth of ``json.dumps``'s 36 us for a 3 KB state, on a one-line commit's path),
    ``json`` for what orjson refuses (an int beyond 64 bits)."""
    try:
        return orjson.dumps(state).decode()
    except orjson.JSONEncodeError:
        return json.dumps(state, separators=(",", ":"))


def _utf8_sizes(row: str, texts: list[str]) -> list[int]:
    """The UTF-8 size of each of ``texts``, events of ``row``: one ``isascii`` pass over
    the row spares the common row an encode per event."""
    if row.isascii():
        return list(map(len, texts))
    return [len(text.encode()) for text in texts]


def _rows(events: Sequence[tuple[int, str]]) -> list[tuple[int, int, str, list[int]]]:
    """``(first, last, texts, sizes)`` rows of at most CHUNK_EVENTS events each, with
    each event's UTF-8 size."""
    rows = []
    for start in range(0, len(events), CHUNK_EVENTS):
        part = events[start : start + CHUNK_EVENTS]
        part_texts = [text for _, text in part]
        texts = "\n".join(part_texts)
        if texts.count("\n") != len(part) - 1:
            raise ValueError("an event text holds a newline: not compact JSON")
        rows.append((part[0][0], part[-1][0], texts, _utf8_sizes(texts, part_texts)))
    return rows


@dataclass(frozen=True, slots=True)
class HeldRow:
    """A row's events still held: ``first``..``last``, each one's UTF-8 size in ``sizes``
    (oldest first), ``size`` their sum."""

    first: int
    last: int
    sizes: list[int]
    size: int

    def without(self, count: int) -> HeldRow:
        """This row once its ``count`` oldest events are trimmed away."""
        gone = self.sizes[:count]
        return HeldRow(self.first + count, self.last, self.sizes[count:], self.size - sum(gone))


def _trim_plan(
    rows: Sequence[HeldRow], held: int, size: int, history: int, history_bytes: int
) -> tuple[int, int, int, int, int | None]:
    """journal.trim_point over rows: ``(whole rows dropped, events cut from the next
    row, events dropped, bytes freed, oldest seq kept)``. A row goes whole when even its
    newest event would be dropped, so only the row the cut falls into is walked."""
    dropped = freed = 0
    for index, row in enumerate(rows):
        left = held - dropped - (row.last - row.first)
        left_bytes = size - freed - (row.size - row.sizes[-1])
        if left > 1 and (left > history or left_bytes > history_bytes):
            dropped += row.last - row.first + 1
            freed += row.size
            continue
        cut, cut_bytes, keep = trim_point(
            zip(range(row.first, row.last + 1), row.sizes, strict=True),
            held - dropped,
            size - freed,
            history,
            history_bytes,
        )
        return index, cut, dropped + cut, freed + cut_bytes, keep
    return len(rows), 0, dropped, freed, None


def _held_rows(conn: sqlite3.Connection, oldest: int | None) -> deque[HeldRow]:
    """Every row of the live history (its events from ``oldest`` on), oldest first;
    _Unreadable when the rows do not hold one contiguous run of events."""
    rows: deque[HeldRow] = deque()
    last_seen: int | None = None
    for first, last, texts in conn.execute(
        "SELECT first, last, texts FROM chunks WHERE last >= ? ORDER BY first", (oldest or 0,)
    ):
        parts = texts.split("\n")
        if last != first + len(parts) - 1 or (last_seen is not None and first != last_seen + 1):
            raise _Unreadable(f"chunk {first}..{last} holds {len(parts)} events out of order")
        last_seen = last
        skip = 0 if oldest is None else max(0, oldest - first)
        if skip < len(parts):
            sizes = _utf8_sizes(texts, parts[skip:])
            rows.append(HeldRow(first + skip, last, sizes, sum(sizes)))
    return rows


def _migrate_from_rows(conn: sqlite3.Connection) -> None:
    """A version 1 journal held a row per event: regroup them into chunks, in one
    transaction (the same history, epoch and head)."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "CREATE TABLE chunks (first INTEGER PRIMARY KEY, last INTEGER NOT NULL, "
            "texts TEXT NOT NULL)"
        )
        run: list[tuple[int, str]] = []

        def flush() -> None:
            conn.execute(
                "INSERT INTO chunks (first, last, texts) VALUES (?, ?, ?)",
                (run[0][0], run[-1][0], "\n".join(text for _, text in run)),
            )
            run.clear()

        for seq, text in conn.execute("SELECT seq, text FROM events ORDER BY seq").fetchall():
            if "\n" in text:
                raise _Unreadable(f"event {seq} is not compact JSON")
            if run and (seq != run[-1][0] + 1 or len(run) == CHUNK_EVENTS):
                flush()
            run.append((int(seq), str(text)))
        if run:
            flush()
        conn.execute("DROP TABLE events")
        conn.execute("INSERT INTO meta (key, value) VALUES ('oldest', NULL)")
        conn.execute("PRAGMA user_version = 2")


def _migrate_to_archive(conn: sqlite3.Connection) -> None:
    """A version 2 journal: its rows get their sizes (before the texts), and the runs,
    checkpoints and archive bound are added, in one transaction. The closed runs its
    snapshot state lists are stored by the next commit."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ALTER TABLE chunks RENAME TO chunks_v2")
        conn.execute(_CHUNKS)
        for first, last, texts in conn.execute(
            "SELECT first, last, texts FROM chunks_v2 ORDER BY first"
        ).fetchall():
            size = sum(_utf8_sizes(texts, texts.split("\n")))
            conn.execute(
                "INSERT INTO chunks (first, last, size, texts) VALUES (?, ?, ?, ?)",
                (first, last, size, texts),
            )
        conn.execute("DROP TABLE chunks_v2")
        for statement in _ARCHIVE_TABLES:
            conn.execute(statement)
        conn.execute("INSERT INTO meta (key, value) VALUES ('archived', NULL)")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


class SqliteBackend:
    """``--journal sqlite``: a journal file per project under ``<home>/journal/``."""

    def __init__(
        self,
        home: Path,
        *,
        synchronous: Synchronous = "NORMAL",
        history: int = DEFAULT_HISTORY,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
        boot_id_path: Path = BOOT_ID_PATH,
        max_producers: int = MAX_PRODUCERS,
        archive: ArchiveLimits | None = None,
    ) -> None:
        check_limits(history, history_bytes, max_producers)
        self._max_producers = max_producers
        self._archive = archive
        self.home = home
        self._synchronous: Synchronous = synchronous
        self._history = history
        self._history_bytes = history_bytes
        self._boot_id_path = boot_id_path

    @property
    def name(self) -> str:
        return BACKEND

    def journal(self, project: str, archive: ArchiveLimits | None = None) -> SqliteJournal:
        return SqliteJournal(
            journal_path(self.home, project),
            project,
            synchronous=self._synchronous,
            history=self._history,
            history_bytes=self._history_bytes,
            boot_id_path=self._boot_id_path,
            max_producers=self._max_producers,
            archive=archive or self._archive,
        )

    async def remove(self, project: str) -> bool:
        """Delete the project's journal files (close its journal first); moved-aside
        corrupt copies stay. False when there was no journal."""
        path = journal_path(self.home, project)
        return await trio.to_thread.run_sync(remove_files, path, project)

    async def knows(self, project: str) -> bool:
        """Does the project's journal file exist?"""
        return await trio.to_thread.run_sync(journal_path(self.home, project).exists)

    async def last_state(self, project: str) -> JsonObject | None:
        """Read through a read-only connection: nothing is created, locked or migrated,
        and the server's own open journal of it (if it opens meanwhile) is not held up."""
        return await trio.to_thread.run_sync(read_last_state, journal_path(self.home, project))


def read_last_state(path: Path) -> JsonObject | None:
    """The ``state`` meta value of the journal at ``path`` (None: no file, or no state
    committed yet); JournalError if it cannot be read or is not JSON."""
    if not path.exists():
        return None
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()
    except sqlite3.Error as error:
        raise JournalError(f"journal {path}: cannot read its state: {_reason(error)}") from None
    if row is None or row[0] is None:
        return None
    try:
        state = json.loads(row[0])
    except ValueError as error:
        raise JournalError(f"journal {path}: its state is not JSON: {error}") from None
    if not isinstance(state, dict):
        raise JournalError(f"journal {path}: its state is not a JSON object")
    return state


def lock_journal(path: Path, project: str) -> int:
    """Take the journal's lock (its descriptor; closing it releases the lock), with this
    process's id in the file for whoever is refused; JournalError when a process
    holds it. OSError when the lock file cannot be made.

    A lock taken on a file that `remove_files` unlinked meanwhile would lock nothing
    (the next process makes a new file and locks that too), so the lock counts only
    while the path still names the locked file; otherwise it is taken again."""
    for _attempt in range(LOCK_ATTEMPTS):
        lock = _lock_file(path, project)
        try:
            if os.fstat(lock).st_ino == os.stat(f"{path}{LOCK_SUFFIX}").st_ino:
                break
        except FileNotFoundError:
            pass  # unlinked after we opened it: take the new one
        except BaseException:
            os.close(lock)
            raise
        os.close(lock)
    else:
        raise JournalError(f"project {project!r}: its journal's lock file {path} keeps changing")
    os.ftruncate(lock, 0)
    os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)
    return lock


def _lock_file(path: Path, project: str) -> int:
    """Open the lock file and take its flock (not yet checked against the path)."""
    lock = os.open(f"{path}{LOCK_SUFFIX}", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(lock, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(lock)
        raise JournalError(
            f"project {project!r}: its journal {path} is open in another trio-ws process "
            f"(pid {holder}); stop that server (or let it close the project) first"
        ) from None
    except BaseException:
        os.close(lock)
        raise
    return lock


def remove_files(path: Path, project: str) -> bool:
    """Delete a journal file and its -wal/-shm, the database last (a WAL left without
    its database would be replayed into the next one), then its lock file; JournalError
    while a process has the journal open."""
    if not Path(f"{path}{LOCK_SUFFIX}").exists() and not path.exists():
        return False
    lock = lock_journal(path, project)
    try:
        existed = path.exists()
        for suffix in reversed(SUFFIXES):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        Path(f"{path}{LOCK_SUFFIX}").unlink(missing_ok=True)
    finally:
        os.close(lock)
    return existed
