"""Build real features databases (DATA.md section 1) for tests.

Shared by the progress reader's tests and the server's tests, so a database
is always made the way the orchestrator makes it: the current schema or one
of the two older ones, in any of the three layouts, WAL by default, writes
in ``BEGIN IMMEDIATE`` transactions. Import it as ``from features_db import
...`` (pytest puts ``tests/`` on ``sys.path``; there is no package).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

LAYOUTS: Final = (".autoforge/features.db", ".autocoder/features.db", "features.db")
"""Where a project's database may live, relative to the project, in priority order."""

Schema = Literal["current", "legacy", "oldest"]
SCHEMAS: Final[tuple[Schema, ...]] = ("current", "legacy", "oldest")

_COMMON_COLUMNS: Final = """
  id INTEGER NOT NULL PRIMARY KEY,
  priority INTEGER NOT NULL,
  category VARCHAR(100) NOT NULL,
  name VARCHAR(255) NOT NULL,
  description TEXT NOT NULL,
  steps JSON NOT NULL,
  passes BOOLEAN"""

_CREATE: Final[dict[Schema, str]] = {
    # Booleans are nullable here on purpose: old databases hold NULLs.
    "current": f"""CREATE TABLE features ({_COMMON_COLUMNS},
  in_progress BOOLEAN,
  dependencies JSON,
  needs_human_input BOOLEAN,
  human_input_request JSON,
  human_input_response JSON
)""",
    "legacy": f"""CREATE TABLE features ({_COMMON_COLUMNS},
  in_progress BOOLEAN,
  dependencies JSON
)""",
    "oldest": f"CREATE TABLE features ({_COMMON_COLUMNS}\n)",
}

_INDEX: Final[dict[Schema, str]] = {
    "current": (
        "CREATE INDEX ix_feature_status ON features (passes, in_progress, needs_human_input)"
    ),
    "legacy": "CREATE INDEX ix_feature_status ON features (passes, in_progress)",
    "oldest": "CREATE INDEX ix_feature_status ON features (passes)",
}

Flag = bool | None
"""A boolean column value; ``None`` is stored as NULL (counts as false)."""


@dataclass(frozen=True)
class Row:
    """One feature's status flags, and what the board shows of it; the other columns
    get a filler value. ``dependencies`` is the raw column text (None is NULL)."""

    passes: Flag = False
    in_progress: Flag = False
    needs_human_input: Flag = False
    priority: int = 1
    category: str = "core"
    name: str = "feature"
    dependencies: str | None = None


def rows(
    *, passing: int = 0, in_progress: int = 0, needs_human_input: int = 0, pending: int = 0
) -> list[Row]:
    """A batch of rows with the given counts, each row having one flag set."""
    return (
        [Row(passes=True)] * passing
        + [Row(in_progress=True)] * in_progress
        + [Row(needs_human_input=True)] * needs_human_input
        + [Row()] * pending
    )


def db_path(project_dir: Path, layout: str = LAYOUTS[0]) -> Path:
    """The database file of ``project_dir`` in ``layout`` (one of ``LAYOUTS``)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}")
    return project_dir / layout


def create_db(
    path: Path,
    batch: Iterable[Row] = (),
    *,
    schema: Schema = "current",
    journal_mode: Literal["wal", "delete"] = "wal",
) -> Path:
    """Create a features database at ``path`` (parents included) holding ``batch``."""
    if path.exists():
        raise FileExistsError(f"{path} already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(f"PRAGMA journal_mode={journal_mode}")
        conn.execute(_CREATE[schema])
        conn.execute(_INDEX[schema])
    insert(path, batch)
    return path


def insert(path: Path, batch: Iterable[Row]) -> None:
    """Append ``batch`` to the database at ``path`` in one ``BEGIN IMMEDIATE`` commit."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        insert_with(conn, batch)


def insert_with(conn: sqlite3.Connection, batch: Iterable[Row]) -> None:
    """Append ``batch`` through an open autocommit connection, in one transaction."""
    columns = _columns(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        for row in batch:
            conn.execute(*_insert_statement(columns, row))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _columns(conn: sqlite3.Connection) -> frozenset[str]:
    return frozenset(info[1] for info in conn.execute("PRAGMA table_info(features)"))


def _insert_statement(columns: frozenset[str], row: Row) -> tuple[str, Sequence[object]]:
    values: dict[str, object] = {
        "priority": row.priority,
        "category": row.category,
        "name": row.name,
        "description": "a feature",
        "steps": "[]",
        "passes": row.passes,
    }
    if row.dependencies is not None:
        if "dependencies" not in columns:
            raise ValueError("this schema has no dependencies column to set")
        values["dependencies"] = row.dependencies
    for flag in ("in_progress", "needs_human_input"):
        value = getattr(row, flag)
        if flag in columns:
            values[flag] = value
        elif value:
            raise ValueError(f"this schema has no {flag} column to set")
    names = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    return f"INSERT INTO features ({names}) VALUES ({marks})", list(values.values())
