"""Read a project's feature list from its features database (DATA.md section 1).

The same database, the same rules as progress (`trio_ws.data.progress`): the
path is resolved again on every read, the file is opened read-only and
never created, a lock is waited for at most ``lock_timeout``, and every
failure is a typed ``ProgressError`` carrying the path, never an empty list.
A project without a database raises `NoFeaturesDatabase`, so a caller can
tell "nothing yet" from "no features".

Old schemas: a missing ``in_progress`` or ``needs_human_input`` column and
NULL booleans read as false. ``dependencies`` is a JSON list of feature ids:
NULL is ``[]``; malformed JSON or anything but a list is ``[]`` too, and
non-integer entries are left out (as AutoForge's own ``get_dependencies_safe``
does); how many rows that affected is counted in `FeatureList.malformed`.

Synchronous and blocking: the server calls `read_features` through
``trio.to_thread``. One short-lived connection per read: the board is read
on request, not polled.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from trio_ws.data.progress import (
    MissingTable,
    ProgressError,
    UnsupportedSchema,
    Vanished,
    find_features_db,
    open_read_only,
    sqlite_error,
)

REQUIRED_COLUMNS: Final = ("id", "priority", "category", "name", "passes")
OPTIONAL_FLAGS: Final = ("in_progress", "needs_human_input")
ATTEMPTS: Final = 3
"""A database moved while it is opened is looked up again, this many times in all."""


class NoFeaturesDatabase(ProgressError):
    """The project has no features database (yet) in any of the layouts."""


@dataclass(frozen=True, slots=True)
class Feature:
    """One row of the board, with the wire's field names."""

    id: int
    priority: int
    category: str
    name: str
    passes: bool
    in_progress: bool
    needs_human_input: bool
    dependencies: list[int]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class FeatureList:
    """The features of one read, ordered by priority then id, and where they came from."""

    path: Path
    features: list[Feature]
    malformed: int
    """Rows whose ``dependencies`` were not a JSON list of ids (read as ``[]`` or filtered)."""


def read_features(project_dir: Path, *, lock_timeout: float = 1.0) -> FeatureList:
    """The project's features; raises `NoFeaturesDatabase` or another ``ProgressError``."""
    project_dir = project_dir.absolute()
    for _attempt in range(ATTEMPTS):
        path = find_features_db(project_dir)
        if path is None:
            raise NoFeaturesDatabase(project_dir, f"no features database yet in {project_dir}")
        try:
            return _read_file(path, lock_timeout)
        except Vanished:
            continue
    raise ProgressError(
        project_dir,
        f"features database of {project_dir} keeps moving; could not pin it down",
    )


def _read_file(path: Path, lock_timeout: float) -> FeatureList:
    with closing(open_read_only(path, lock_timeout)) as conn:
        try:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(features)")}
            if not columns:
                raise MissingTable(path, f"features database {path} has no features table")
            missing = [column for column in REQUIRED_COLUMNS if column not in columns]
            if missing:
                raise UnsupportedSchema(
                    path,
                    f"features database {path}: features table has no "
                    + ", ".join(missing)
                    + (" column" if len(missing) == 1 else " columns"),
                )
            # Column names come from the constants above, never from the database.
            flags = [flag if flag in columns else "NULL" for flag in OPTIONAL_FLAGS]
            dependencies = "dependencies" if "dependencies" in columns else "NULL"
            rows = conn.execute(
                "SELECT id, priority, category, name, passes, "
                f"{flags[0]}, {flags[1]}, {dependencies} "
                "FROM features ORDER BY priority, id"
            ).fetchall()
        except sqlite3.Error as exc:
            raise sqlite_error(path, exc, lock_timeout) from exc
    features = []
    malformed = 0
    for row in rows:
        ids, ok = _dependencies(row[7])
        malformed += not ok
        try:
            feature = Feature(
                id=int(row[0]),
                priority=int(row[1]),
                category=str(row[2]),
                name=str(row[3]),
                passes=row[4] == 1,
                in_progress=row[5] == 1,
                needs_human_input=row[6] == 1,
                dependencies=ids,
            )
        except (TypeError, ValueError) as exc:  # a NULL or text where NOT NULL ints belong
            raise UnsupportedSchema(
                path, f"features database {path}: feature row {row[0]!r} is unreadable: {exc}"
            ) from exc
        features.append(feature)
    return FeatureList(path, features, malformed)


def _dependencies(raw: object) -> tuple[list[int], bool]:
    """The ids in a ``dependencies`` value, and whether it was well formed."""
    if raw is None:
        return [], True
    try:
        value = json.loads(raw) if isinstance(raw, (str, bytes)) else None
    except ValueError:
        return [], False
    if not isinstance(value, list):
        return [], False
    ids = [item for item in value if isinstance(item, int) and not isinstance(item, bool)]
    return ids, len(ids) == len(value)
