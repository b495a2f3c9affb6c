"""Tests for trio_ws.data.progress: real SQLite files, every layout and schema."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
import trio
from features_db import (
    LAYOUTS,
    SCHEMAS,
    Row,
    Schema,
    create_db,
    db_path,
    insert,
    insert_with,
    rows,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_ws.core.messages import ProgressEvent
from trio_ws.core.protocol import encode
from trio_ws.data.progress import (
    NO_PROGRESS,
    CorruptDatabase,
    DatabaseLocked,
    MissingTable,
    PermissionDenied,
    Progress,
    ProgressError,
    ProgressReader,
    UnsupportedSchema,
    _get_count_passing_tests,
    count_passing_tests,
    find_features_db,
)

LOCK_TIMEOUT = 0.2


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[ProgressReader]:
    r = ProgressReader(tmp_path, lock_timeout=LOCK_TIMEOUT)
    yield r
    r.close()


def expected(batch: list[Row], schema: Schema = "current") -> Progress:
    """What the database should report, computed from the rows themselves."""
    return Progress(
        passing=sum(r.passes is True for r in batch),
        in_progress=sum(r.in_progress is True for r in batch) if schema != "oldest" else 0,
        total=len(batch),
        needs_human_input=(
            sum(r.needs_human_input is True for r in batch) if schema == "current" else 0
        ),
    )


def files_under(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*"))


# -- Progress --------------------------------------------------------------


@pytest.mark.parametrize(
    ("passing", "total", "percentage"),
    [(1, 3, 33.3), (2, 3, 66.7), (1, 6, 16.7), (1, 8, 12.5), (3, 3, 100.0)],
)
def test_percentage_rounds_to_one_decimal(passing: int, total: int, percentage: float) -> None:
    assert Progress(passing, 0, total, 0).percentage == percentage


def test_percentage_is_int_zero_without_features() -> None:
    percentage = NO_PROGRESS.percentage
    assert percentage == 0
    assert type(percentage) is int


def test_to_message_has_the_wire_fields() -> None:
    message = Progress(passing=1, in_progress=2, total=4, needs_human_input=3).to_message()
    assert message == {
        "type": "progress",
        "passing": 1,
        "in_progress": 2,
        "total": 4,
        "percentage": 25.0,
        "needs_human_input": 3,
    }


def test_to_message_has_exactly_the_keys_of_its_typed_dict() -> None:
    """With and without the chart timestamp, required and optional keys as declared."""
    progress = Progress(passing=1, in_progress=2, total=4, needs_human_input=3)
    assert progress.to_message().keys() == ProgressEvent.__required_keys__
    dated = progress.to_message("2026-11-25T17:04:05.123456Z")
    assert dated.keys() - ProgressEvent.__required_keys__ == {"timestamp"}
    assert {"timestamp"} <= ProgressEvent.__optional_keys__


def test_message_without_features_encodes_percentage_as_zero() -> None:
    assert json.loads(encode(NO_PROGRESS.to_message()))["percentage"] == 0
    assert '"percentage":0,' in encode(NO_PROGRESS.to_message())


# -- where the database is -------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_find_features_db_finds_each_layout(tmp_path: Path, layout: str) -> None:
    create_db(db_path(tmp_path, layout))
    assert find_features_db(tmp_path) == tmp_path / layout


@pytest.mark.parametrize("first", range(len(LAYOUTS)))
def test_find_features_db_prefers_the_earlier_layout(tmp_path: Path, first: int) -> None:
    for layout in LAYOUTS[first:]:
        create_db(db_path(tmp_path, layout))
    assert find_features_db(tmp_path) == tmp_path / LAYOUTS[first]


def test_find_features_db_is_none_without_database(tmp_path: Path) -> None:
    assert find_features_db(tmp_path) is None


def test_find_features_db_skips_a_layout_directory_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / ".autoforge").write_text("not a directory")
    create_db(db_path(tmp_path, "features.db"))
    assert find_features_db(tmp_path) == tmp_path / "features.db"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reads_each_layout(tmp_path: Path, reader: ProgressReader, layout: str) -> None:
    batch = rows(passing=2, in_progress=1, needs_human_input=1, pending=3)
    create_db(db_path(tmp_path, layout), batch)
    assert reader.read() == expected(batch)


def test_reads_the_preferred_database_when_several_exist(
    tmp_path: Path, reader: ProgressReader
) -> None:
    create_db(db_path(tmp_path, ".autocoder/features.db"), rows(passing=5))
    create_db(db_path(tmp_path, "features.db"), rows(pending=7))
    assert reader.read() == expected(rows(passing=5))


def test_no_database_reads_zeros(reader: ProgressReader) -> None:
    assert reader.read() == NO_PROGRESS
    assert reader.queries == 0


def test_reading_never_creates_a_database(tmp_path: Path, reader: ProgressReader) -> None:
    (tmp_path / ".autoforge").mkdir()
    before = files_under(tmp_path)
    reader.read()
    count_passing_tests(tmp_path)
    assert files_under(tmp_path) == before


# -- schemas ---------------------------------------------------------------


@pytest.mark.parametrize("schema", SCHEMAS)
def test_counts_each_schema(tmp_path: Path, reader: ProgressReader, schema: Schema) -> None:
    batch = rows(passing=3, in_progress=2, pending=4)
    if schema == "current":
        batch += rows(needs_human_input=1)
    if schema == "oldest":
        batch = rows(passing=3, pending=4)
    create_db(db_path(tmp_path), batch, schema=schema)
    assert reader.read() == expected(batch, schema)


def test_null_booleans_count_as_false(tmp_path: Path, reader: ProgressReader) -> None:
    batch = [Row(passes=None, in_progress=None, needs_human_input=None), Row(passes=True)]
    create_db(db_path(tmp_path), batch)
    assert reader.read() == Progress(passing=1, in_progress=0, total=2, needs_human_input=0)


def test_in_progress_counts_even_when_passing(tmp_path: Path, reader: ProgressReader) -> None:
    create_db(db_path(tmp_path), [Row(passes=True, in_progress=True)])
    assert reader.read() == Progress(passing=1, in_progress=1, total=1, needs_human_input=0)


def test_empty_table_reads_zeros(tmp_path: Path, reader: ProgressReader) -> None:
    create_db(db_path(tmp_path))
    assert reader.read() == NO_PROGRESS
    assert reader.queries == 1


_directories = itertools.count()
_flag = st.sampled_from([True, False, None])


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    schema=st.sampled_from(SCHEMAS),
    flags=st.lists(st.tuples(_flag, _flag, _flag), max_size=30),
)
def test_counts_match_the_rows(
    tmp_path: Path, schema: Schema, flags: list[tuple[bool | None, bool | None, bool | None]]
) -> None:
    batch = [
        Row(
            passes=passes,
            in_progress=in_progress if schema != "oldest" else False,
            needs_human_input=needs if schema == "current" else False,
        )
        for passes, in_progress, needs in flags
    ]
    project = tmp_path / str(next(_directories))
    create_db(db_path(project), batch, schema=schema)
    assert count_passing_tests(project) == expected(batch, schema)


# -- moves, replacements and caching ---------------------------------------


def test_database_moved_between_layouts_is_followed(tmp_path: Path, reader: ProgressReader) -> None:
    create_db(db_path(tmp_path, "features.db"), rows(passing=1))
    assert reader.read() == expected(rows(passing=1))
    create_db(db_path(tmp_path, ".autoforge/features.db"), rows(passing=2, pending=2))
    (tmp_path / "features.db").unlink()
    assert reader.read() == expected(rows(passing=2, pending=2))
    assert reader.path == tmp_path / ".autoforge/features.db"


def test_database_removed_reads_zeros(tmp_path: Path, reader: ProgressReader) -> None:
    create_db(db_path(tmp_path), rows(passing=1))
    reader.read()
    shutil.rmtree(tmp_path / ".autoforge")
    assert reader.read() == NO_PROGRESS
    assert reader.path is None


def test_unchanged_database_runs_no_new_query(tmp_path: Path, reader: ProgressReader) -> None:
    create_db(db_path(tmp_path), rows(passing=1, pending=1))
    first = reader.read()
    assert [reader.read() for _ in range(5)] == [first] * 5
    assert (reader.reads, reader.queries) == (6, 1)


def test_commit_from_another_connection_is_seen(tmp_path: Path, reader: ProgressReader) -> None:
    path = create_db(db_path(tmp_path), rows(passing=1))
    reader.read()
    insert(path, rows(in_progress=1))
    assert reader.read() == expected(rows(passing=1, in_progress=1))
    assert reader.queries == 2


def test_replaced_file_is_seen(tmp_path: Path, reader: ProgressReader) -> None:
    path = create_db(db_path(tmp_path), rows(passing=1), journal_mode="delete")
    reader.read()
    replacement = create_db(tmp_path / "new.db", rows(pending=3), journal_mode="delete")
    os.replace(replacement, path)
    assert reader.read() == expected(rows(pending=3))


def test_close_then_read_reopens(tmp_path: Path, reader: ProgressReader) -> None:
    create_db(db_path(tmp_path), rows(passing=1))
    reader.read()
    reader.close()
    assert reader.path is None
    assert reader.read() == expected(rows(passing=1))
    assert reader.queries == 2


def test_wal_writer_committing_between_reads(tmp_path: Path, reader: ProgressReader) -> None:
    path = create_db(db_path(tmp_path), rows(pending=1))
    batch = rows(pending=1)
    with closing(sqlite3.connect(path, isolation_level=None)) as writer:
        for step in range(3):
            assert reader.read() == expected(batch)
            insert_with(writer, rows(passing=1))
            batch += rows(passing=1)
            assert reader.read() == expected(batch)
            assert reader.queries == step + 2


def test_wal_open_write_transaction_neither_blocks_nor_leaks(
    tmp_path: Path, reader: ProgressReader
) -> None:
    path = create_db(db_path(tmp_path), rows(passing=1))
    with closing(sqlite3.connect(path, isolation_level=None)) as writer:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("DELETE FROM features")
        assert reader.read() == expected(rows(passing=1))
        writer.execute("ROLLBACK")


def test_reader_holds_no_lock_between_reads(tmp_path: Path, reader: ProgressReader) -> None:
    path = create_db(db_path(tmp_path), rows(passing=1), journal_mode="delete")
    reader.read()
    with closing(sqlite3.connect(path, isolation_level=None, timeout=0)) as writer:
        writer.execute("BEGIN EXCLUSIVE")  # fails at once if a read lock lingered
        writer.execute("DELETE FROM features")
        writer.execute("COMMIT")
    assert reader.read() == NO_PROGRESS


async def test_reads_from_worker_threads(tmp_path: Path, reader: ProgressReader) -> None:
    path = create_db(db_path(tmp_path), rows(passing=1))
    reader.read()  # connection made in this thread, used in others below
    insert(path, rows(pending=1))
    assert await trio.to_thread.run_sync(reader.read) == expected(rows(passing=1, pending=1))
    assert await trio.to_thread.run_sync(reader.read) == expected(rows(passing=1, pending=1))


def test_count_passing_tests_one_shot(tmp_path: Path) -> None:
    create_db(db_path(tmp_path, ".autocoder/features.db"), rows(passing=2, pending=1))
    assert count_passing_tests(tmp_path) == expected(rows(passing=2, pending=1))
    assert _get_count_passing_tests is count_passing_tests


# -- errors ----------------------------------------------------------------


def exclusive_lock(path: Path) -> sqlite3.Connection:
    """A rollback-journal writer holding an EXCLUSIVE lock with a pending write."""
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=DELETE")
    writer.execute("BEGIN EXCLUSIVE")
    writer.execute("DELETE FROM features")
    return writer


def test_locked_database_raises_within_the_bound(tmp_path: Path, reader: ProgressReader) -> None:
    path = create_db(db_path(tmp_path), rows(passing=1), journal_mode="delete")
    with closing(exclusive_lock(path)):
        start = time.monotonic()
        with pytest.raises(DatabaseLocked) as caught:
            reader.read()
        elapsed = time.monotonic() - start
    assert LOCK_TIMEOUT * 0.9 <= elapsed < LOCK_TIMEOUT + 2
    assert str(caught.value) == f"features database {path} is locked (waited {LOCK_TIMEOUT} s)"
    assert caught.value.path == path


def test_locked_database_is_reported_even_when_cached(
    tmp_path: Path, reader: ProgressReader
) -> None:
    path = create_db(db_path(tmp_path), rows(passing=1), journal_mode="delete")
    reader.read()
    with closing(exclusive_lock(path)), pytest.raises(DatabaseLocked):
        reader.read()


def test_read_succeeds_after_the_lock_is_released(tmp_path: Path, reader: ProgressReader) -> None:
    path = create_db(db_path(tmp_path), rows(passing=1, pending=2), journal_mode="delete")
    with closing(exclusive_lock(path)) as writer:
        with pytest.raises(DatabaseLocked):
            reader.read()
        writer.execute("COMMIT")
    assert reader.read() == NO_PROGRESS
    assert reader.queries == 1


def test_random_bytes_are_a_corrupt_database(tmp_path: Path, reader: ProgressReader) -> None:
    path = db_path(tmp_path)
    path.parent.mkdir()
    path.write_bytes(bytes(range(256)) * 16)
    with pytest.raises(CorruptDatabase, match="file is not a database") as caught:
        reader.read()
    assert str(path) in str(caught.value)
    assert caught.value.path == path


def test_truncated_database_is_corrupt(tmp_path: Path, reader: ProgressReader) -> None:
    path = create_db(db_path(tmp_path), rows(passing=3000, pending=3000), journal_mode="delete")
    os.truncate(path, path.stat().st_size // 3)
    with pytest.raises(CorruptDatabase, match="malformed") as caught:
        reader.read()
    assert str(path) in str(caught.value)


def test_missing_table(tmp_path: Path, reader: ProgressReader) -> None:
    path = db_path(tmp_path)
    path.parent.mkdir()
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE other (id INTEGER)")
    with pytest.raises(MissingTable) as caught:
        reader.read()
    assert str(caught.value) == f"features database {path} has no features table"


def test_empty_file_has_no_table(tmp_path: Path, reader: ProgressReader) -> None:
    path = db_path(tmp_path)
    path.parent.mkdir()
    path.touch()
    with pytest.raises(MissingTable):
        reader.read()


def test_table_created_after_an_error_is_read(tmp_path: Path, reader: ProgressReader) -> None:
    path = db_path(tmp_path)
    path.parent.mkdir()
    path.touch()
    with pytest.raises(MissingTable):
        reader.read()
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:  # same file
        conn.execute("CREATE TABLE features (id INTEGER PRIMARY KEY, passes BOOLEAN)")
        conn.execute("INSERT INTO features (passes) VALUES (1)")
    assert reader.read() == expected(rows(passing=1), "oldest")


def test_table_without_passes_is_unsupported(tmp_path: Path, reader: ProgressReader) -> None:
    path = db_path(tmp_path)
    path.parent.mkdir()
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE features (id INTEGER, done BOOLEAN)")
    with pytest.raises(UnsupportedSchema, match=str(path)):
        reader.read()


def test_directory_in_place_of_the_database_is_an_error(
    tmp_path: Path, reader: ProgressReader
) -> None:
    path = db_path(tmp_path)
    path.mkdir(parents=True)
    with pytest.raises(ProgressError, match="could not be read") as caught:
        reader.read()
    assert caught.value.path == path
    assert str(path) in str(caught.value)


# Root reads anything, so the permission test runs the reader in a child process;
# as root that child loses the capabilities that bypass file permissions.
_READ_IN_CHILD = """
import sys
from pathlib import Path
from trio_ws.data.progress import ProgressError, ProgressReader
try:
    ProgressReader(Path(sys.argv[1])).read()
except ProgressError as exc:
    print(type(exc).__name__, exc.path, exc, sep="\\n")
else:
    print("read succeeded")
"""
_DROP_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


def _unprivileged_prefix() -> list[str] | None:
    """Command prefix under which file permissions apply, or None when unavailable."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    probe = subprocess.run([*_DROP_DAC, "true"], capture_output=True, check=False)
    return _DROP_DAC if probe.returncode == 0 else None


@pytest.mark.parametrize("denied", ["features.db", "directory"])
def test_permission_denied(tmp_path: Path, denied: str) -> None:
    prefix = _unprivileged_prefix()
    if prefix is None:
        pytest.skip("running as root without a working setpriv to drop DAC capabilities")
    path = create_db(db_path(tmp_path), rows(passing=1))
    target = path if denied == "features.db" else path.parent
    target.chmod(0)
    try:
        child = subprocess.run(
            [*prefix, sys.executable, "-c", _READ_IN_CHILD, str(tmp_path)],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    finally:
        target.chmod(0o755)
    name, error_path, message = child.stdout.splitlines()
    assert (name, error_path) == (PermissionDenied.__name__, str(path))
    assert message.startswith(f"features database {path} cannot be read: permission denied")
