"""The sqlite journal's file cases (STATE.md 3.2, 3.3): real files, a real SIGKILL."""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from trio_ws.journal.interface import ArchiveLimits, Batch, JournalError, JournalWriteError
from trio_ws.journal.sqlite import (
    CHUNK_EVENTS,
    INDEX_EVERY,
    LOCK_SUFFIX,
    SCHEMA_VERSION,
    SqliteBackend,
    SqliteJournal,
    Synchronous,
    journal_path,
    lock_journal,
)

TESTS = Path(__file__).parent.parent
WRITER = str(TESTS / "scripts" / "journal_writer.py")
KILL_TIMEOUT = 30


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def boot(tmp_path: Path) -> Path:
    path = tmp_path / "boot_id"
    path.write_text("boot-1\n")
    return path


def journal(home: Path, boot: Path, synchronous: Synchronous = "NORMAL") -> SqliteJournal:
    return SqliteBackend(home, boot_id_path=boot, synchronous=synchronous).journal("demo")


def batch(first: int, count: int, **pseqs: int) -> Batch:
    return Batch([(seq, f'{{"seq":{seq}}}') for seq in range(first, first + count)], pseqs)


async def seqs(opened: SqliteJournal) -> list[int]:
    return [seq for seq, _ in await opened.read_since(0, 1_000_000)]


async def test_the_file_is_private_and_in_wal_mode(home: Path, boot: Path) -> None:
    opened = journal(home, boot)
    await opened.open()
    await opened.append(batch(1, 1))
    path = journal_path(home, "demo")
    assert opened.path == path == home / "journal" / "demo.db"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    await opened.close()


async def test_garbage_is_moved_aside_and_a_new_epoch_starts(home: Path, boot: Path) -> None:
    path = journal_path(home, "demo")
    path.parent.mkdir(parents=True)
    garbage = os.urandom(8192)
    path.write_bytes(garbage)
    opened = journal(home, boot)
    state = await opened.open()
    assert state.new_epoch == "corrupt"
    assert state.moved_aside is not None
    moved = Path(state.moved_aside)
    assert moved.parent == path.parent
    assert moved.name.startswith("demo.db.corrupt-") and moved.name.endswith("Z")
    assert await trio.Path(moved).read_bytes() == garbage
    await opened.append(batch(1, 2))
    await opened.close()
    again = await journal(home, boot).open()
    assert (again.new_epoch, again.head, again.epoch) == (None, 2, state.epoch)


async def test_a_sqlite_file_of_another_application_is_moved_aside(home: Path, boot: Path) -> None:
    path = journal_path(home, "demo")
    path.parent.mkdir(parents=True)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE projects (name TEXT)")
    conn.close()
    state = await journal(home, boot).open()
    assert state.new_epoch == "corrupt"
    assert state.moved_aside is not None
    with sqlite3.connect(state.moved_aside) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("projects",)]
    conn.close()


async def test_a_journal_of_another_schema_version_is_moved_aside(home: Path, boot: Path) -> None:
    opened = journal(home, boot)
    first = await opened.open()
    await opened.append(batch(1, 3))
    await opened.close()
    with sqlite3.connect(journal_path(home, "demo")) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    state = await journal(home, boot).open()
    assert (state.new_epoch, state.head) == ("corrupt", 0)
    assert state.epoch != first.epoch
    assert state.moved_aside is not None and await trio.Path(state.moved_aside).exists()


async def test_a_damaged_page_is_moved_aside(home: Path, boot: Path) -> None:
    opened = journal(home, boot)
    await opened.open()
    for first in range(1, 400, 50):
        await opened.append(batch(first, 50))
    await opened.close()
    path = journal_path(home, "demo")
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    data[2 * page : 4 * page] = os.urandom(2 * page)  # inside the tables, past the header
    path.write_bytes(bytes(data))
    state = await journal(home, boot).open()
    assert (state.new_epoch, state.head) == ("corrupt", 0)


async def test_a_wal_without_its_database_is_moved_aside(home: Path, boot: Path) -> None:
    opened = journal(home, boot)
    await opened.open()
    await opened.append(batch(1, 1))
    path = journal_path(home, "demo")
    wal = Path(f"{path}-wal")
    kept = await trio.Path(wal).read_bytes()
    await opened.close(clean=False)
    await trio.Path(wal).write_bytes(kept)  # as if the database alone had been deleted
    path.unlink()
    state = await journal(home, boot).open()
    assert state.new_epoch == "corrupt"
    assert await trio.Path(f"{state.moved_aside}-wal").read_bytes() == kept


async def test_an_unclean_stop_then_a_reboot_starts_a_new_epoch(home: Path, boot: Path) -> None:
    opened = journal(home, boot)
    first = await opened.open()
    await opened.append(Batch([(1, "1")], {"p": 1}, {"agents": 1}))
    await opened.close(clean=False)
    await trio.Path(boot).write_text("boot-2\n")
    state = await journal(home, boot).open()
    assert state.new_epoch == "unclean_reboot"
    assert state.epoch != first.epoch
    assert (state.head, state.oldest, state.pseqs, state.state) == (0, 1, {}, None)


async def test_an_unclean_stop_without_reboot_continues(home: Path, boot: Path) -> None:
    opened = journal(home, boot)
    first = await opened.open()
    await opened.append(Batch([(1, "1")], {"p": 1}, {"agents": 1}))
    await opened.close(clean=False)
    state = await journal(home, boot).open()
    assert (state.new_epoch, state.epoch, state.head) == (None, first.epoch, 1)
    assert (state.pseqs, state.state) == ({"p": 1}, {"agents": 1})


async def test_a_clean_stop_survives_a_reboot(home: Path, boot: Path) -> None:
    opened = journal(home, boot)
    first = await opened.open()
    await opened.append(batch(1, 1))
    await opened.close()
    await trio.Path(boot).write_text("boot-2\n")
    state = await journal(home, boot).open()
    assert (state.new_epoch, state.epoch, state.head) == (None, first.epoch, 1)


async def test_full_sync_survives_an_unclean_reboot(home: Path, boot: Path) -> None:
    opened = journal(home, boot, "FULL")
    first = await opened.open()
    await opened.append(batch(1, 1))
    await opened.close(clean=False)
    await trio.Path(boot).write_text("boot-2\n")
    state = await journal(home, boot, "FULL").open()
    assert (state.new_epoch, state.epoch, state.head) == (None, first.epoch, 1)


async def test_without_a_boot_id_an_unclean_stop_counts_as_a_reboot(
    home: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-boot-id"
    opened = journal(home, missing)
    await opened.open()
    await opened.append(batch(1, 1))
    await opened.close(clean=False)
    state = await journal(home, missing).open()
    assert state.new_epoch == "unclean_reboot"


async def test_a_full_disk_fails_the_append_and_a_later_one_succeeds(
    home: Path, boot: Path
) -> None:
    connections: list[sqlite3.Connection] = []
    opened = SqliteJournal(
        journal_path(home, "demo"), "demo", boot_id_path=boot, on_connect=connections.append
    )
    first = await opened.open()
    await opened.append(batch(1, 1, p=1))
    conn = connections[-1]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    big = Batch([(2 + n, "z" * 2000) for n in range(200)], {"p": 2}, {"s": 2})
    with pytest.raises(JournalWriteError, match=r"demo\.db: cannot write: .*full"):
        await opened.append(big)
    assert opened.stats().write_errors == 1
    assert (opened.stats().head, await seqs(opened)) == (1, [1])
    conn.execute("PRAGMA max_page_count = 1000000")
    await opened.append(big)
    assert await seqs(opened) == list(range(1, 202))
    await opened.close()
    state = await journal(home, boot).open()
    assert (state.epoch, state.head, state.pseqs, state.state) == (
        first.epoch,
        201,
        {"p": 2},
        {"s": 2},
    )


async def test_a_read_only_database_fails_the_append_and_a_later_one_succeeds(
    home: Path, boot: Path
) -> None:
    connections: list[sqlite3.Connection] = []
    opened = SqliteJournal(
        journal_path(home, "demo"), "demo", boot_id_path=boot, on_connect=connections.append
    )
    await opened.open()
    connections[-1].execute("PRAGMA query_only = ON")
    with pytest.raises(JournalWriteError, match="readonly"):
        await opened.append(batch(1, 3))
    connections[-1].execute("PRAGMA query_only = OFF")
    await opened.append(batch(1, 3))
    assert await seqs(opened) == [1, 2, 3]


@pytest.fixture
def immutable(home: Path) -> Iterator[list[Path]]:
    """Files made immutable with chattr (which stops even root, unlike chmod); undone after."""
    if shutil.which("chattr") is None:
        pytest.skip("needs chattr to make a file unwritable even for root")
    made: list[Path] = []
    yield made
    if made:
        subprocess.run(["chattr", "-i", *map(str, made)], check=True)


async def test_an_unwritable_file_fails_the_append_and_a_later_one_succeeds(
    home: Path, boot: Path, immutable: list[Path]
) -> None:
    opened = journal(home, boot)
    await opened.open()
    await opened.append(batch(1, 1))
    path = journal_path(home, "demo")
    files = [path, Path(f"{path}-wal"), path.parent]
    made = await trio.run_process(["chattr", "+i", *files], capture_stderr=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"chattr +i refused here: {made.stderr.decode().strip()}")
    immutable.extend(files)
    with pytest.raises(JournalWriteError, match="cannot write"):
        await opened.append(batch(2, 5))
    assert opened.stats().head == 1
    await trio.run_process(["chattr", "-i", *files])
    immutable.clear()
    await opened.append(batch(2, 5))
    assert await seqs(opened) == [1, 2, 3, 4, 5, 6]


async def test_a_locked_journal_is_not_moved_aside(home: Path, boot: Path) -> None:
    opened = journal(home, boot)
    await opened.open()
    await opened.close()
    path = journal_path(home, "demo")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        blocked = SqliteJournal(
            path,
            "demo",
            boot_id_path=boot,
            on_connect=lambda conn: conn.execute("PRAGMA busy_timeout = 50"),
        )
        with pytest.raises(JournalError, match="cannot open: database is locked"):
            await blocked.open()
    finally:
        holder.close()
    assert sorted(p.name for p in path.parent.iterdir() if "corrupt" in p.name) == []


@pytest.mark.parametrize("seed", range(5))
async def test_kill_9_loses_no_committed_append(home: Path, boot: Path, seed: int) -> None:
    stop_after = random.Random(seed).randrange(3, 150)
    reported: list[int] = []
    with trio.fail_after(KILL_TIMEOUT):
        process = await trio.lowlevel.open_process(
            [sys.executable, WRITER, str(home), "demo", str(boot), str(seed)],
            stdout=subprocess.PIPE,
        )
        assert process.stdout is not None
        buffer = b""
        epoch = None
        try:
            while len(reported) < stop_after:
                chunk = await process.stdout.receive_some()
                assert chunk, "the writer ended before it was killed"
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if epoch is None:
                        epoch = line.decode()
                    else:
                        reported.append(int(line))
            process.send_signal(signal.SIGKILL)
            while chunk := await process.stdout.receive_some():  # heads printed before the kill
                buffer += chunk
            reported += [int(line) for line in buffer.split(b"\n") if line]
        finally:
            process.kill()
            await process.wait()
    assert process.returncode == -signal.SIGKILL
    reopened = journal(home, boot)
    state = await reopened.open()
    assert (state.new_epoch, state.epoch) == (None, epoch)
    assert state.head >= reported[-1]
    assert await seqs(reopened) == list(range(state.oldest, state.head + 1))
    assert state.state == {"head": state.head}
    assert state.pseqs == {"producer": state.head}
    await reopened.close()
    with sqlite3.connect(journal_path(home, "demo")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()


async def test_an_unreachable_directory_fails_open_clearly(home: Path, boot: Path) -> None:
    home.parent.mkdir(parents=True, exist_ok=True)
    await trio.Path(home).write_text("a file where the home directory should be")
    with pytest.raises(JournalError, match=r"demo\.db: cannot open: .*Not a directory"):
        await journal(home, boot).open()


def write_version_1_journal(path: Path, epoch: str, texts: list[str]) -> None:
    """A journal as trio-ws wrote it before chunks: a row per event, user_version 1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute(
            "CREATE TABLE events (seq INTEGER PRIMARY KEY, text TEXT NOT NULL, "
            "size INTEGER NOT NULL)"
        )
        conn.execute("CREATE TABLE producers (id TEXT PRIMARY KEY, pseq INTEGER NOT NULL)")
        first = 1
        conn.executemany(
            "INSERT INTO events VALUES (?, ?, ?)",
            [(first + i, text, len(text.encode())) for i, text in enumerate(texts)],
        )
        conn.execute("INSERT INTO producers VALUES ('agent:p1', 17)")
        meta = {
            "epoch": epoch,
            "head": str(len(texts)),
            "clean": "1",
            "boot_id": "boot-1",
            "synchronous": "NORMAL",
            "state": '{"snapshot":{}}',
        }
        conn.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        conn.execute("PRAGMA application_id = 1953658739")  # "trws"
        conn.execute("PRAGMA user_version = 1")
    conn.close()


async def test_a_version_1_journal_is_migrated_with_its_history(home: Path, boot: Path) -> None:
    texts = [f'{{"type":"log","line":"é {seq}","seq":{seq}}}' for seq in range(1, 2501)]
    write_version_1_journal(journal_path(home, "demo"), "e1", texts)
    opened = journal(home, boot)
    state = await opened.open()
    assert (state.new_epoch, state.epoch, state.head, state.oldest) == (None, "e1", 2500, 1)
    assert (state.pseqs, state.state) == ({"agent:p1": 17}, {"snapshot": {}})
    assert await opened.read_since(0, 10_000) == list(enumerate(texts, start=1))
    assert await opened.read_since(1499, 3) == [(seq, texts[seq - 1]) for seq in (1500, 1501, 1502)]
    stats = opened.stats()
    assert (stats.events_held, stats.bytes_held) == (2500, sum(len(t.encode()) for t in texts))
    await opened.append(batch(2501, 2))
    assert [seq for seq, _ in await opened.read_since(2499, 10)] == [2500, 2501, 2502]
    await opened.close()
    with sqlite3.connect(journal_path(home, "demo")) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()


async def test_a_trim_inside_a_commit_keeps_the_rest_of_it(home: Path, boot: Path) -> None:
    opened = SqliteBackend(home, boot_id_path=boot, history=5).journal("demo")
    await opened.open()
    await opened.append(batch(1, 4))
    await opened.append(batch(5, 4))
    assert await seqs(opened) == [4, 5, 6, 7, 8]
    await opened.close()
    again = SqliteBackend(home, boot_id_path=boot, history=5).journal("demo")
    state = await again.open()
    assert (state.head, state.oldest) == (8, 4)
    assert await seqs(again) == [4, 5, 6, 7, 8]
    assert again.stats().events_held == 5


async def test_chunks_that_do_not_run_on_are_moved_aside(home: Path, boot: Path) -> None:
    opened = journal(home, boot)
    await opened.open()
    await opened.append(batch(1, 3))
    await opened.append(batch(4, 3))
    await opened.close()
    with sqlite3.connect(journal_path(home, "demo")) as conn:
        conn.execute("UPDATE chunks SET first = 5 WHERE first = 4")
    conn.close()
    state = await journal(home, boot).open()
    assert (state.new_epoch, state.head) == ("corrupt", 0)
    assert state.moved_aside is not None


async def test_a_big_commit_is_stored_in_bounded_chunks_and_trims_exactly(
    home: Path, boot: Path
) -> None:
    opened = SqliteBackend(home, boot_id_path=boot, history=300).journal("demo")
    await opened.open()
    await opened.append(batch(1, 2 * CHUNK_EVENTS + 88))
    head = 2 * CHUNK_EVENTS + 88
    assert await seqs(opened) == list(range(head - 299, head + 1))
    await opened.close()
    with sqlite3.connect(journal_path(home, "demo")) as conn:
        rows = conn.execute("SELECT first, last FROM chunks ORDER BY first").fetchall()
        (oldest,) = conn.execute("SELECT value FROM meta WHERE key = 'oldest'").fetchone()
    conn.close()
    # The rows stay on disk (the archive); the oldest seq of the live history says
    # where a catch-up may start, so a trim never rewrites a row.
    assert int(oldest) == head - 299
    assert rows[0][0] == 1 and rows[-1][1] == head
    assert any(first <= int(oldest) <= last for first, last in rows)
    assert max(last - first + 1 for first, last in rows) <= CHUNK_EVENTS


def test_a_lock_file_unlinked_while_it_is_taken_is_taken_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`projects remove` unlinks the lock file: a server that had opened the old file
    would lock a file no path names, and the next process would lock a new one too."""
    path = journal_path(tmp_path, "demo")
    path.parent.mkdir(parents=True)
    lock_file = Path(f"{path}{LOCK_SUFFIX}")
    real_flock = fcntl.flock
    unlinked: list[bool] = []

    def flock_after_a_remove(fd: int, operation: int) -> None:
        if not unlinked:
            unlinked.append(True)
            lock_file.unlink()  # what remove_files does between our open and our flock
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_remove)  # the module the journal uses
    lock = lock_journal(path, "demo")
    try:
        assert unlinked
        assert os.fstat(lock).st_ino == lock_file.stat().st_ino
        with pytest.raises(JournalError, match="open in another trio-ws process"):
            os.close(lock_journal(path, "demo"))
    finally:
        os.close(lock)


async def test_a_search_reads_only_the_rows_whose_texts_hold_every_trigram(
    home: Path, boot: Path
) -> None:
    """Events written with their texts are found through the trigram index, a span of
    INDEX_EVERY events at a time (the JSON's keys are not in it), the newest not yet
    indexed row by row; the index's spans go with the archive."""
    opened = SqliteBackend(
        home, boot_id_path=boot, history=10, archive=ArchiveLimits(40_000)
    ).journal("demo")
    await opened.open()
    seq = 0
    for number in range(40):  # rows of 256 events; one line in each row names it
        texts = [f"row {number} line {n}" if n else f"Needle{number}" for n in range(256)]
        events = [
            (seq + n + 1, f'{{"type":"log","line":"{text}"}}') for n, text in enumerate(texts)
        ]
        await opened.append(Batch(events, texts=texts))
        seq += 256
    found, through = await opened.search(0, seq, "needle39", 10, 5.0)
    assert [text for _, text in found] == ['{"type":"log","line":"Needle39"}']
    assert through == seq
    assert (await opened.search(0, seq, '"type"', 10, 5.0))[0] == []  # keys: not texts
    await opened.close()
    with sqlite3.connect(journal_path(home, "demo")) as conn:
        spans = conn.execute("SELECT rowid, last FROM search ORDER BY rowid").fetchall()
        (first,) = conn.execute("SELECT min(first) FROM chunks").fetchone()
    conn.close()
    assert first > 1 and spans  # the archive was cut, and the index with it
    assert spans[0][0] > 1
    assert all(last - start + 1 >= INDEX_EVERY for start, last in spans)
