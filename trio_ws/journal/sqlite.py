"""The ``sqlite`` journal backend (default): one file per project, ``<home>/journal/<project>.db``.

WAL mode, one connection per journal used only from worker threads, one at a
time (a ``CapacityLimiter(1)`` per journal), so the event loop never waits on
the disk (STATE.md 3.5). Survives ``kill -9`` with ``synchronous=NORMAL``;
only an OS crash or power loss can roll back the newest NORMAL commits, which
is why an unclean stop followed by a reboot starts a new epoch (STATE.md 3.3).

Schema: ``meta`` (key/value: epoch, head, clean-stop flag, boot id, the
synchronous mode of the session, snapshot state as JSON), ``chunks`` (the
events of one commit: first and last seq, their JSON texts joined by newlines,
which compact JSON never holds) and ``producers`` (id, highest applied pseq; rowid
order is the order of the last writes, and each group keeps its MAX_PRODUCERS newest).
A row per commit instead of per event: SQLite's cost is per row, and a busy
project commits thousands of events at once. The
file is marked with ``application_id`` and ``user_version``; a file that
lacks them, fails ``quick_check`` or is not SQLite at all is moved aside,
never deleted.
"""

from __future__ import annotations

import datetime
import fcntl
import functools
import json
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Final, Literal

import orjson
import trio

from trio_ws.journal.interface import (
    DEFAULT_HISTORY,
    DEFAULT_HISTORY_BYTES,
    MAX_PRODUCERS,
    Batch,
    Commits,
    JournalError,
    JournalState,
    JournalStats,
    JournalWriteError,
    JsonObject,
    NewEpochReason,
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
SCHEMA_VERSION: Final = 2
"""``PRAGMA user_version``: a journal of version 1 (a row per event) is migrated in
place; any other version is not read."""
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

_SCHEMA: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
    "CREATE TABLE chunks (first INTEGER PRIMARY KEY, last INTEGER NOT NULL, texts TEXT NOT NULL)",
    "CREATE TABLE producers (id TEXT PRIMARY KEY, pseq INTEGER NOT NULL)",
)
_TABLES: Final = frozenset({"meta", "chunks", "producers"})
_TABLES_V1: Final = frozenset({"meta", "events", "producers"})
_META_KEYS_V1: Final = frozenset({"epoch", "head", "clean", "boot_id", "synchronous", "state"})
_META_KEYS: Final = _META_KEYS_V1 | {"oldest"}
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
        """Every held row, oldest first, with its events' sizes: trims are decided from
        these on the event loop's side, so a commit reads nothing back."""
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
        fresh = [HeldRow(first, last, sizes, sum(sizes)) for first, last, _, sizes in rows]
        held = self._held + len(batch.events)
        size = self._size + sum(row.size for row in fresh)
        whole, cut, dropped, freed, keep = 0, 0, 0, 0, None
        if held and over_limits(held, size, self._history, self._history_bytes):
            whole, cut, dropped, freed, keep = _trim_plan(
                list(chain(self._rows, fresh)), held, size, self._history, self._history_bytes
            )
        write = Write(
            rows=[(first, last, texts) for first, last, texts, _ in rows],
            pseqs=list(batch.pseqs.items()),
            head=str(rows[-1][1]) if rows else None,
            state=state,
            oldest=keep if dropped else None,
        )
        start = time.perf_counter()
        try:
            await self._writer.run_sync(functools.partial(self._write, conn, write), self._limiter)
        except JournalWriteError:
            self._commits.write_errors += 1
            raise
        self._commits.record(time.perf_counter() - start)
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
        conn = self._connection()

        seq = max(seq, self._oldest - 1)  # a row may still hold events trimmed away

        def read() -> list[tuple[int, str]]:
            found: list[tuple[int, str]] = []
            try:
                rows = conn.execute(
                    "SELECT first, texts FROM chunks WHERE last > ? ORDER BY first", (seq,)
                )
                for first, texts in rows:
                    parts = texts.split("\n")[max(0, seq + 1 - first) :]
                    start = max(first, seq + 1)
                    found += zip(range(start, start + len(parts)), parts, strict=True)
                    if len(found) >= limit:
                        break
                rows.close()
            except sqlite3.Error as error:
                raise JournalError(f"journal {self.path}: cannot read: {_reason(error)}") from None
            return found[:limit]

        return await trio.to_thread.run_sync(read, limiter=self._limiter)

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

    def stats(self) -> JournalStats:
        return self._commits.stats(BACKEND, self._head, self._oldest, self._held, self._size)

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
        if version not in (1, SCHEMA_VERSION):
            raise _Unreadable(f"schema version {version}, this trio-ws reads {SCHEMA_VERSION}")
        required = _TABLES_V1 if version == 1 else _TABLES
        if not tables >= required:
            raise _Unreadable(f"tables {sorted(tables)} lack some of {sorted(required)}")
        check = [row[0] for row in conn.execute("PRAGMA quick_check")]
        if check != ["ok"]:
            raise _Unreadable(f"quick_check: {'; '.join(map(str, check[:3]))}")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        keys = _META_KEYS_V1 if version == 1 else _META_KEYS
        if set(meta) != keys:
            raise _Unreadable(f"meta keys {sorted(meta)}, expected {sorted(keys)}")
        try:
            int(meta["head"])
            oldest = None if meta.get("oldest") is None else int(meta["oldest"])
            if meta["state"] is not None:
                json.loads(meta["state"])
        except (TypeError, ValueError) as error:
            raise _Unreadable(f"meta values unreadable: {error}") from None
        if not meta["epoch"]:
            raise _Unreadable("no epoch")
        if version == 1:
            _migrate_from_rows(conn)
        self._rows = _held_rows(conn, oldest)
        return False

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
                self._rows.clear()
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
                    "INSERT INTO chunks (first, last, texts) VALUES "
                    + ", ".join(["(?, ?, ?)"] * len(part)),
                    [value for row in part for value in row],
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
            if write.oldest is not None:
                conn.execute("DELETE FROM chunks WHERE last < ?", (write.oldest,))
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

    rows: list[tuple[int, int, str]]
    pseqs: list[tuple[str, int]]
    head: str | None
    state: str | None
    oldest: int | None
    """The new oldest held seq after a trim: rows that end before it are deleted."""


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
    """Every held row (its events from ``oldest`` on), oldest first; _Unreadable when
    the rows do not hold one contiguous run of events."""
    rows: deque[HeldRow] = deque()
    last_seen: int | None = None
    for first, last, texts in conn.execute("SELECT first, last, texts FROM chunks ORDER BY first"):
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
        conn.execute(_SCHEMA[1])
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
    ) -> None:
        check_limits(history, history_bytes, max_producers)
        self._max_producers = max_producers
        self.home = home
        self._synchronous: Synchronous = synchronous
        self._history = history
        self._history_bytes = history_bytes
        self._boot_id_path = boot_id_path

    @property
    def name(self) -> str:
        return BACKEND

    def journal(self, project: str) -> SqliteJournal:
        return SqliteJournal(
            journal_path(self.home, project),
            project,
            synchronous=self._synchronous,
            history=self._history,
            history_bytes=self._history_bytes,
            boot_id_path=self._boot_id_path,
            max_producers=self._max_producers,
        )

    async def remove(self, project: str) -> bool:
        """Delete the project's journal files (close its journal first); moved-aside
        corrupt copies stay. False when there was no journal."""
        path = journal_path(self.home, project)
        return await trio.to_thread.run_sync(remove_files, path, project)


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
