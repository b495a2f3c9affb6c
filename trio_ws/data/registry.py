"""The project registry: which project names map to which directories.

An SQLite file with AutoForge's ``projects`` table (DATA.md section 2), so
``--registry ~/.autoforge/registry.db`` reads and writes an AutoForge
user's registry unchanged. Synchronous on purpose: the server calls it from
a worker thread, and every method opens and closes its own connection, so
one ``Registry`` is safe to share between threads. Every failure is a typed
``RegistryError`` whose message names the file (and the project) involved.
"""

from __future__ import annotations

import builtins
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from trio_ws.core.project_settings import (
    ProjectSettings,
    SettingError,
    SettingValue,
    project_key,
    read_setting,
)
from trio_ws.core.protocol import (
    Clock,
    JsonObject,
    is_valid_project_name,
    iso_timestamp,
    wall_clock,
)

HOME_ENV: Final = "TRIO_WS_HOME"
DEFAULT_HOME: Final = Path("~/.trio-ws")
REGISTRY_FILE: Final = "registry.db"
DEFAULT_CONCURRENCY: Final = 3

BUSY_TIMEOUT_S: float = 2.0
"""How long to wait for another writer before reporting the registry locked."""

CREATE_TABLE: Final = """CREATE TABLE projects (
  name VARCHAR(50) NOT NULL PRIMARY KEY,
  path VARCHAR NOT NULL,
  created_at DATETIME NOT NULL,
  default_concurrency INTEGER NOT NULL DEFAULT 3
)"""

SETTINGS_TABLE: Final = "trio_ws_project_settings"
CREATE_SETTINGS_TABLE: Final = f"""CREATE TABLE IF NOT EXISTS {SETTINGS_TABLE} (
  project VARCHAR(50) NOT NULL,
  key VARCHAR NOT NULL,
  value VARCHAR NOT NULL,
  PRIMARY KEY (project, key)
)"""
"""Per-project settings (`core.project_settings`), one row per key set, the value as
JSON. A table of its own beside AutoForge's ``projects``, which stays as AutoForge
wrote it (AutoForge ignores a table it does not know)."""

_COLUMNS: Final = frozenset({"name", "path", "created_at", "default_concurrency"})
_SELECT: Final = "SELECT name, path, created_at, default_concurrency FROM projects"

_STORED_FORMAT: Final = "%Y-%m-%d %H:%M:%S.%f"
"""How AutoForge (SQLAlchemy on SQLite) writes a DATETIME: naive, here always UTC."""

_ADD_HINT: Final = "add a project with `trio-ws projects add NAME DIR`"


class RegistryError(Exception):
    """Base of every registry failure; the message says what and where."""


class RegistryMissing(RegistryError):
    """There is no registry file to read."""


class RegistryCorrupt(RegistryError):
    """The file is not a usable registry: not SQLite, no ``projects`` table, or a bad row."""


class RegistryLocked(RegistryError):
    """Another connection held the registry longer than the busy timeout."""


class InvalidProjectName(RegistryError):
    """The name breaks ``^[A-Za-z0-9_-]{1,50}$``."""


class ProjectExists(RegistryError):
    """The name is already registered."""


class PathAlreadyRegistered(RegistryError):
    """The directory is already registered under another name."""


class NotADirectory(RegistryError):
    """The project path does not exist or is not a directory."""


class ProjectNotFound(RegistryError):
    """No project of that name is registered."""


def resolve_home(home: str | os.PathLike[str] | None) -> Path:
    """The trio-ws home: the option, else ``$TRIO_WS_HOME``, else ``~/.trio-ws``."""
    if home is None or os.fspath(home) == "":
        home = os.environ.get(HOME_ENV) or DEFAULT_HOME
    return Path(home).expanduser().resolve()


def registry_path(home: Path, registry: str | os.PathLike[str] | None) -> Path:
    """``--registry`` when given (another file of the same shape), else ``<home>/registry.db``."""
    if registry is None or os.fspath(registry) == "":
        return home / REGISTRY_FILE
    return Path(registry).expanduser().resolve()


@dataclass(frozen=True)
class Project:
    """One registered project, as stored."""

    name: str
    path: Path
    created_at: datetime
    default_concurrency: int

    def exists(self) -> bool:
        """Whether the directory is still there (it may go away after registration)."""
        return self.path.is_dir()

    def to_json(self) -> JsonObject:
        return {
            "name": self.name,
            "path": self.path.as_posix(),
            "exists": self.exists(),
            "created_at": iso_timestamp(self.created_at.timestamp()),
            "default_concurrency": self.default_concurrency,
        }


class Registry:
    """The registry file at ``path``; opened afresh for every call."""

    def __init__(self, path: Path, *, timeout: float | None = None, clock: Clock = wall_clock):
        self.path = path
        self.timeout = BUSY_TIMEOUT_S if timeout is None else timeout
        self._clock = clock

    def add(self, name: str, directory: str | os.PathLike[str]) -> Project:
        """Register ``directory`` (resolved) as ``name``; creates the registry if missing."""
        _check_name(name)
        resolved = _resolve_directory(directory)
        created_at = datetime.fromtimestamp(self._clock(), tz=UTC)
        with self._connect(create=True) as conn:
            _execute(conn, self, "BEGIN IMMEDIATE")
            self._check_table(conn, create=True)
            existing = self._rows(conn)
            for project in existing:
                if project.name == name:
                    raise ProjectExists(
                        f"project {name!r} is already registered in {self.path} "
                        f"(at {project.path.as_posix()})"
                    )
                if _same_directory(project.path, resolved):
                    raise PathAlreadyRegistered(
                        f"{resolved.as_posix()} is already registered as project "
                        f"{project.name!r} in {self.path}"
                    )
            stored = created_at.replace(tzinfo=None).strftime(_STORED_FORMAT)
            _execute(
                conn,
                self,
                "INSERT INTO projects (name, path, created_at, default_concurrency) "
                "VALUES (?, ?, ?, ?)",
                (name, resolved.as_posix(), stored, DEFAULT_CONCURRENCY),
            )
            _execute(conn, self, "COMMIT")
        return Project(name, resolved, created_at, DEFAULT_CONCURRENCY)

    def ensure(self) -> None:
        """Create an empty registry if there is none yet; check the shape of one that is."""
        with self._connect(create=True) as conn:
            _execute(conn, self, "BEGIN IMMEDIATE")
            self._check_table(conn, create=True)
            _execute(conn, self, "COMMIT")

    def get(self, name: str) -> Project | None:
        """The project called ``name`` (case-sensitive), or None."""
        _check_name(name)
        with self._connect(create=False) as conn:
            self._check_table(conn, create=False)
            found = self._rows(conn, name)
        return found[0] if found else None

    def list(self) -> list[Project]:
        """Every project, sorted by name."""
        with self._connect(create=False) as conn:
            self._check_table(conn, create=False)
            projects = self._rows(conn)
        return sorted(projects, key=lambda project: project.name)

    def remove(self, name: str) -> Project:
        """Unregister ``name`` (its directory is left alone) and return what it was."""
        _check_name(name)
        with self._connect(create=False) as conn:
            _execute(conn, self, "BEGIN IMMEDIATE")
            self._check_table(conn, create=False)
            found = self._rows(conn, name)
            if not found:
                raise ProjectNotFound(f"no project {name!r} in registry {self.path}")
            _execute(conn, self, "DELETE FROM projects WHERE name = ?", (name,))
            if self._has_settings(conn):
                _execute(conn, self, f"DELETE FROM {SETTINGS_TABLE} WHERE project = ?", (name,))
            _execute(conn, self, "COMMIT")
        return found[0]

    # -- per-project settings ------------------------------------------------

    def settings(self, name: str) -> ProjectSettings:
        """What project ``name`` set for itself (nothing for an unknown project)."""
        _check_name(name)
        return self._read_settings(name).get(name, ProjectSettings())

    def all_settings(self) -> dict[str, ProjectSettings]:
        """Every project's own settings, by name (projects that set none are left out)."""
        return self._read_settings(None)

    def _read_settings(self, name: str | None) -> dict[str, ProjectSettings]:
        with self._connect(create=False) as conn:
            self._check_table(conn, create=False)
            if not self._has_settings(conn):
                return {}
            select = f"SELECT project, key, value FROM {SETTINGS_TABLE}"
            if name is None:
                rows = _execute(conn, self, f"{select} ORDER BY project, key")
            else:
                rows = _execute(conn, self, f"{select} WHERE project = ? ORDER BY key", (name,))
        values: dict[str, dict[str, object]] = {}
        for project, key, text in rows:
            where = f"registry {self.path}, project {project!r}, setting {key!r}"
            try:
                values.setdefault(str(project), {})[str(key)] = json.loads(text)
            except (TypeError, ValueError) as exc:
                raise RegistryCorrupt(f"{where}: {text!r} is not JSON") from exc
        found: dict[str, ProjectSettings] = {}
        for project, given in values.items():
            try:
                found[project] = ProjectSettings.read(given)
            except SettingError as exc:
                raise RegistryCorrupt(f"registry {self.path}, project {project!r}: {exc}") from exc
        return found

    def set_setting(self, name: str, key: str, value: object) -> SettingValue:
        """Set ``key`` (a `core.project_settings` key) of registered project ``name``;
        returns the value as kept. `SettingError` for an unknown key or a bad value."""
        _check_name(name)
        kept = read_setting(key, value)
        with self._connect(create=False) as conn:
            _execute(conn, self, "BEGIN IMMEDIATE")
            self._check_table(conn, create=False)
            if not self._rows(conn, name):
                raise ProjectNotFound(f"no project {name!r} in registry {self.path}")
            _execute(conn, self, CREATE_SETTINGS_TABLE)
            _execute(
                conn,
                self,
                f"INSERT OR REPLACE INTO {SETTINGS_TABLE} (project, key, value) VALUES (?, ?, ?)",
                (name, key, json.dumps(kept)),
            )
            _execute(conn, self, "COMMIT")
        return kept

    def unset_setting(self, name: str, key: str) -> bool:
        """Forget ``key`` of project ``name`` (the server's option decides again);
        whether it was set."""
        _check_name(name)
        project_key(key)
        with self._connect(create=False) as conn:
            _execute(conn, self, "BEGIN IMMEDIATE")
            self._check_table(conn, create=False)
            if not self._rows(conn, name):
                raise ProjectNotFound(f"no project {name!r} in registry {self.path}")
            removed = False
            if self._has_settings(conn):
                where = f"FROM {SETTINGS_TABLE} WHERE project = ? AND key = ?"
                removed = bool(_execute(conn, self, f"SELECT 1 {where}", (name, key)))
                _execute(conn, self, f"DELETE {where}", (name, key))
            _execute(conn, self, "COMMIT")
        return removed

    # -- internals ----------------------------------------------------------

    @contextmanager
    def _connect(self, *, create: bool) -> Iterator[sqlite3.Connection]:
        """An autocommit connection; closing it rolls back anything uncommitted."""
        if self.path.is_dir():
            raise RegistryCorrupt(f"registry {self.path} is a directory, not an SQLite file")
        if not self.path.exists():
            if not create:
                raise RegistryMissing(f"no registry at {self.path}; {_ADD_HINT}")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RegistryError(
                    f"cannot create the directory for registry {self.path}: {exc}"
                ) from exc
        mode = "rwc" if create else "rw"
        uri = f"file:{quote(self.path.as_posix())}?mode={mode}"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise _translate(exc, self) from exc
        with closing(conn):
            yield conn

    def _check_table(self, conn: sqlite3.Connection, *, create: bool) -> None:
        """Insist on a ``projects`` table; ``create`` makes it in a brand-new (empty) file."""
        tables = {
            row[0]
            for row in _execute(conn, self, "SELECT name FROM sqlite_master WHERE type='table'")
        }
        if "projects" not in tables:
            if create and not tables:
                _execute(conn, self, CREATE_TABLE)
                return
            raise RegistryCorrupt(f"{self.path} is not a registry: it has no projects table")
        columns = {row[1] for row in _execute(conn, self, "PRAGMA table_info(projects)")}
        missing = _COLUMNS - columns
        if missing:
            raise RegistryCorrupt(
                f"{self.path} is not a registry: its projects table lacks "
                f"{', '.join(sorted(missing))}"
            )

    def _has_settings(self, conn: sqlite3.Connection) -> bool:
        found = _execute(
            conn,
            self,
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name = ?",
            (SETTINGS_TABLE,),
        )
        return bool(found)

    def _rows(self, conn: sqlite3.Connection, name: str | None = None) -> builtins.list[Project]:
        if name is None:
            rows = _execute(conn, self, _SELECT)
        else:
            rows = _execute(conn, self, f"{_SELECT} WHERE name = ?", (name,))
        return [self._project(row) for row in rows]

    def _project(self, row: tuple[Any, ...]) -> Project:
        """Check one stored row; anything AutoForge would not have written is corrupt."""
        name, path, created_at, concurrency = row
        if not isinstance(name, str) or not is_valid_project_name(name):
            raise RegistryCorrupt(f"registry {self.path} has a row with invalid name {name!r}")
        where = f"registry {self.path}, project {name!r}"
        if not isinstance(path, str) or not path:
            raise RegistryCorrupt(f"{where}: path {path!r} is not a path")
        if not isinstance(concurrency, int):
            raise RegistryCorrupt(f"{where}: default_concurrency {concurrency!r} is not an integer")
        return Project(name, Path(path), _parse_created(created_at, where), concurrency)


def _check_name(name: str) -> None:
    if not is_valid_project_name(name):
        raise InvalidProjectName(f"invalid project name {name!r}: use 1 to 50 of A-Z a-z 0-9 _ -")


def _resolve_directory(directory: str | os.PathLike[str]) -> Path:
    given = Path(directory)
    resolved = given.resolve()
    if not resolved.exists():
        raise NotADirectory(f"project directory {resolved.as_posix()} does not exist")
    if not resolved.is_dir():
        raise NotADirectory(f"project path {resolved.as_posix()} is not a directory")
    return resolved


def _same_directory(stored: Path, resolved: Path) -> bool:
    """Stored paths may predate resolution (AutoForge rows), so resolve them too."""
    return stored == resolved or stored.resolve() == resolved


def _parse_created(value: object, where: str) -> datetime:
    """AutoForge writes naive UTC text; accept that, or ISO text with an offset."""
    if not isinstance(value, str):
        raise RegistryCorrupt(f"{where}: created_at {value!r} is not a datetime")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise RegistryCorrupt(f"{where}: created_at {value!r} is not a datetime") from exc
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _execute(
    conn: sqlite3.Connection, registry: Registry, sql: str, params: tuple[Any, ...] = ()
) -> list[tuple[Any, ...]]:
    """Run one statement, turning sqlite3's errors into typed registry errors."""
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.Error as exc:
        raise _translate(exc, registry) from exc


def _translate(exc: sqlite3.Error, registry: Registry) -> RegistryError:
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    path = registry.path
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return RegistryLocked(
            f"registry {path} is locked by another process (gave up after {registry.timeout:g} s)"
        )
    if primary in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
        return RegistryCorrupt(f"registry {path} is corrupt: {exc}")
    if primary == sqlite3.SQLITE_CANTOPEN and not path.exists():
        return RegistryMissing(f"no registry at {path}; {_ADD_HINT}")
    return RegistryError(f"registry {path}: {exc}")
