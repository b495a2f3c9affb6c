"""`trio-ws run`'s supervisor pieces that need no child process: the progress reads.

The child's supervision itself (signals, controls, exit statuses) runs through the
real command in tests/faces/test_cli_run.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import trio
from features_db import create_db, db_path, rows

from trio_ws.clients.producer import Producer
from trio_ws.clients.supervisor import ProgressReport

URL = "ws://127.0.0.1:9/ws/projects/demo/publish"
"""Never connected to: these tests only queue items in the producer's outbox."""


def progress_report(work: Path, said: list[str]) -> ProgressReport:
    producer = Producer(URL, "token", "agent", report=said.append)
    return ProgressReport(producer, work, interval=1.0, report=said.append)


async def test_a_failing_progress_read_is_said_once_and_its_recovery_once(
    tmp_path: Path,
) -> None:
    """A corrupt database read three times says so once; the first good read after
    it says the reads recovered, and the next good read says nothing."""
    work = tmp_path / "work"
    db_path(work).parent.mkdir(parents=True)
    db_path(work).write_bytes(b"this is not an sqlite database" * 100)
    said: list[str] = []
    report = progress_report(work, said)
    with trio.fail_after(10):
        for _ in range(3):
            await report.read()
        assert [line for line in said if "cannot report progress" in line] == said
        assert len(said) == 1
        os.unlink(db_path(work))
        create_db(db_path(work), rows(passing=2, pending=3))
        await report.read()
        await report.read()
    assert said[1:] == ["progress reads recovered"]
    assert report.producer.outbox.pending == 1  # the one change, sent once
    report.reader.close()
