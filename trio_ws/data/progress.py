"""Read a project's progress from its features database (DATA.md section 1).

The database belongs to the orchestrator and its agents, which write it from
several processes; we only ever open it read-only and never create it. The
path is resolved again on every read because projects get migrated between
layouts while running. Failures are typed exceptions carrying the path, never
zeros: the server keeps the last good figures and warns (PROTOCOL.md 3.2).

Everything here is synchronous and blocking. The server calls it through
``trio.to_thread``, with one ``ProgressReader`` per project.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Final, NamedTuple

from trio_ws.core import defaults
from trio_ws.core.messages import ProgressEvent

LAYOUTS: Final = (
    Path(".autoforge") / "features.db",
    Path(".autocoder") / "features.db",
    Path("features.db"),
)
"""Where a project's database may live, relative to the project, in priority order."""

_FLAGS: Final = ("passes", "in_progress", "needs_human_input")


class Progress(NamedTuple):
    """The four counts of one read; ``percentage`` is derived, as on the wire."""

    passing: int
    in_progress: int
    total: int
    needs_human_input: int

    @property
    def percentage(self) -> float:
        """``round(passing / total * 100, 1)``; the int ``0`` when there are no features."""
        if self.total == 0:
            return 0
        return round(self.passing / self.total * 100, 1)

    def to_message(self, timestamp: str | None = None) -> ProgressEvent:
        """The ``progress`` event of PROTOCOL.md 3.2 (the hub adds ``seq``); the optional
        ``timestamp`` places it on a progress chart."""
        message: ProgressEvent = {
            "type": "progress",
            "passing": self.passing,
            "in_progress": self.in_progress,
            "total": self.total,
            "percentage": self.percentage,
            "needs_human_input": self.needs_human_input,
        }
        if timestamp is not None:
            message["timestamp"] = timestamp
        return message


NO_PROGRESS: Final = Progress(passing=0, in_progress=0, total=0, needs_human_input=0)
"""A project without a database yet."""


class ProgressError(Exception):
    """A features database exists but could not be read; ``str()`` says which and why."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


class MissingTable(ProgressError):
    """The database has no ``features`` table."""


class UnsupportedSchema(ProgressError):
    """The ``features`` table lacks the ``passes`` column every schema has."""


class CorruptDatabase(ProgressError):
    """The file is not an SQLite database, or is malformed."""


class DatabaseLocked(ProgressError):
    """Another connection kept the database locked beyond the bounded wait."""


class PermissionDenied(ProgressError):
    """The process may not read the database file (or reach it)."""


def find_features_db(project_dir: Path) -> Path | None:
    """The first existing database of ``LAYOUTS`` under ``project_dir``, or None.

    Raises ``PermissionDenied`` when a candidate cannot even be looked at, since
    then we cannot tell whether it exists.
    """
    for layout in LAYOUTS:
        path = project_dir / layout
        try:
            os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError as exc:
            raise PermissionDenied(path, _denied(path, exc.strerror)) from exc
        except OSError as exc:
            raise ProgressError(
                path, f"features database {path} cannot be looked at: {exc}"
            ) from exc
        return path
    return None


def count_passing_tests(
    project_dir: Path, *, lock_timeout: float = defaults.LOCK_TIMEOUT
) -> Progress:
    """One-shot read: open, count, close. Prefer a kept ``ProgressReader`` when polling."""
    reader = ProgressReader(project_dir, lock_timeout=lock_timeout)
    try:
        return reader.read()
    finally:
        reader.close()


_get_count_passing_tests = count_passing_tests
"""The name this function has in the original server (ART-0131)."""


_FileId = tuple[int, int]


class ProgressReader:
    """Reads one project's progress, cheaply when nothing changed.

    Keeps one read-only connection and skips the counting query while the
    resolved path, the file's identity (device, inode) and ``PRAGMA
    data_version`` are all unchanged. Calls must not overlap (the server
    runs one read at a time per project); a lock serialises them anyway.
    After any error the connection is dropped, so the next read starts clean.
    """

    def __init__(self, project_dir: Path, *, lock_timeout: float = defaults.LOCK_TIMEOUT) -> None:
        self.project_dir = project_dir.absolute()
        self.lock_timeout = lock_timeout
        self.reads = 0
        """Number of ``read()`` calls."""
        self.queries = 0
        """Number of counting queries actually run."""
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._path: Path | None = None
        self._file_id: _FileId | None = None
        self._data_version: int | None = None
        self._count_sql = ""
        self._last = NO_PROGRESS

    @property
    def path(self) -> Path | None:
        """The database the kept connection reads, if any."""
        return self._path

    def read(self) -> Progress:
        """Current progress; ``NO_PROGRESS`` when the project has no database.

        Blocks for at most about ``lock_timeout`` on a locked database, then
        raises ``DatabaseLocked``. Raises a ``ProgressError`` on any failure.
        """
        with self._lock:
            self.reads += 1
            try:
                return self._read()
            except BaseException:
                self._drop()
                raise

    def close(self) -> None:
        """Close the kept connection; a later ``read()`` reopens it."""
        with self._lock:
            self._drop()

    def _read(self) -> Progress:
        # A database moved or replaced while we look it up is looked up again.
        for _attempt in range(3):
            found = find_features_db(self.project_dir)
            if found is None:
                self._drop()
                return NO_PROGRESS
            try:
                return self._read_file(found)
            except Vanished:
                self._drop()
        raise ProgressError(
            self.project_dir,
            f"features database of {self.project_dir} keeps moving; could not pin it down",
        )

    def _read_file(self, path: Path) -> Progress:
        file_id = _file_id(path)
        conn = self._conn
        if conn is not None and (path, file_id) == (self._path, self._file_id):
            version = self._query_version(conn, path)
            if version == self._data_version:
                return self._last
        else:
            self._drop()
            # Identity is taken before opening: if the file is replaced in
            # between, the next read sees a new identity and reopens.
            conn = self._open(path)
            self._conn, self._path, self._file_id = conn, path, file_id
            self._count_sql = self._count_statement(conn, path)
            version = self._query_version(conn, path)
        self._data_version = version
        self._last = self._count(conn, path)
        return self._last

    def _open(self, path: Path) -> sqlite3.Connection:
        return open_read_only(path, self.lock_timeout)

    def _count_statement(self, conn: sqlite3.Connection, path: Path) -> str:
        """The counting query for this connection's schema (columns read once)."""
        try:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(features)")}
        except sqlite3.Error as exc:
            raise self._error(path, exc) from exc
        if not columns:
            raise MissingTable(path, f"features database {path} has no features table")
        if "passes" not in columns:
            raise UnsupportedSchema(
                path, f"features database {path}: features table has no passes column"
            )
        # Column names come from _FLAGS, never from the database.
        sums = ", ".join(
            f"COALESCE(SUM({flag} = 1), 0)" if flag in columns else "0" for flag in _FLAGS
        )
        return f"SELECT COUNT(*), {sums} FROM features"

    def _query_version(self, conn: sqlite3.Connection, path: Path) -> int:
        try:
            row = conn.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error as exc:
            raise self._error(path, exc) from exc
        return int(row[0])

    def _count(self, conn: sqlite3.Connection, path: Path) -> Progress:
        try:
            total, passing, in_progress, needs_human_input = conn.execute(
                self._count_sql
            ).fetchone()
        except sqlite3.Error as exc:
            raise self._error(path, exc) from exc
        self.queries += 1
        return Progress(
            passing=int(passing),
            in_progress=int(in_progress),
            total=int(total),
            needs_human_input=int(needs_human_input),
        )

    def _error(self, path: Path, exc: sqlite3.Error) -> ProgressError:
        return sqlite_error(path, exc, self.lock_timeout)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._path = self._file_id = self._data_version = None
        self._last = NO_PROGRESS
        if conn is not None:
            conn.close()


def open_read_only(path: Path, lock_timeout: float) -> sqlite3.Connection:
    """A read-only, autocommit connection to the features database at ``path``.

    mode=ro never creates the file; autocommit means no read transaction
    outlives a read and blocks writers. Raises a typed ``ProgressError``.
    """
    try:
        return sqlite3.connect(
            path.as_uri() + "?mode=ro",
            uri=True,
            timeout=lock_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as exc:
        raise sqlite_error(path, exc, lock_timeout) from exc


def sqlite_error(path: Path, exc: sqlite3.Error, lock_timeout: float) -> ProgressError:
    """The typed error for what SQLite said about the features database at ``path``.

    May raise ``Vanished`` (the file moved away) or ``PermissionDenied`` instead.
    """
    code = getattr(exc, "sqlite_errorcode", -1) & 0xFF
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return DatabaseLocked(
            path, f"features database {path} is locked (waited {float(lock_timeout)} s)"
        )
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return CorruptDatabase(path, f"features database {path} is corrupt: {exc}")
    if code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH):
        _file_id(path)  # raises Vanished or PermissionDenied when that is why
        if not os.access(path, os.R_OK):
            return PermissionDenied(path, _denied(path, str(exc)))
    return ProgressError(path, f"features database {path} could not be read: {exc}")


class Vanished(Exception):
    """The resolved database disappeared before we could open it (it moved)."""


def _file_id(path: Path) -> _FileId:
    """(device, inode) of ``path``: same values, same file, even if renamed."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise Vanished from exc
    except PermissionError as exc:
        raise PermissionDenied(path, _denied(path, exc.strerror)) from exc
    except OSError as exc:
        raise ProgressError(path, f"features database {path} cannot be looked at: {exc}") from exc
    return st.st_dev, st.st_ino


def _denied(path: Path, detail: str | None) -> str:
    return f"features database {path} cannot be read: permission denied ({detail})"
