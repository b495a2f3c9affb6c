"""The hub's commit (STATE.md 3.1, 3.2): events reach subscribers and the history only
once committed; a reopened hub continues; close commits the rest once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from trio_ws.journal.interface import MAX_PRODUCERS
from trio_ws.journal.sqlite import SqliteBackend
from trio_ws.state.hub import ProjectHub
from trio_ws.state.run_events import list_runs


def log_lines(count: int, start: int = 0) -> list[str]:
    return [f"plain output line {i}" for i in range(start, start + count)]


async def open_on_sqlite(tmp_path: Path) -> ProjectHub:
    hub = ProjectHub("demo")
    await hub.open(SqliteBackend(tmp_path).journal("demo"))
    return hub


async def test_events_reach_subscribers_and_history_only_once_committed(tmp_path: Path) -> None:
    hub = await open_on_sqlite(tmp_path)
    subscriber = hub.subscribe(backlog=0)
    hub.feed_lines(["one", "two"])
    hub.applied("agent:p1", 2)
    staged = (hub.seq, hub.head, len(hub.history), dict(hub.committed_pseqs))
    queued = len(subscriber.queue)
    assert await hub.commit()
    assert (staged, queued) == ((2, 0, 0, {}), 0)
    assert hub.head == 2 and hub.committed_pseqs == {"agent:p1": 2}
    seqs = [subscriber.queue.pop(0).seq for _ in range(2)]
    assert seqs == [1, 2]


async def test_a_reopened_hub_continues_epoch_head_trackers_and_pseqs(tmp_path: Path) -> None:
    hub = await open_on_sqlite(tmp_path)
    hub.set_status("running")
    hub.feed_lines(["[Feature #3] Started coding agent for feature #3", "work"])
    hub.applied("agent:p1", 7)
    assert await hub.commit()
    await hub.close()
    again = await open_on_sqlite(tmp_path)
    assert (again.epoch, again.head, again.committed_pseqs) == (
        hub.epoch,
        hub.head,
        {"agent:p1": 7},
    )
    assert again.agent.to_state() == hub.agent.to_state()
    snapshot = [item.text for item in again.subscribe(backlog=10).initial[1:]]
    assert snapshot == [item.text for item in hub.subscribe(backlog=10).initial[1:]]


async def test_close_while_the_writer_commits_commits_the_rest_once_and_logs_no_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub = await open_on_sqlite(tmp_path)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.run_writer)
            hub.feed_lines(log_lines(50))
            hub.applied("agent:p1", 50)
            await trio.testing.wait_all_tasks_blocked()  # the writer is in its worker thread
            hub.feed_lines(log_lines(50, 50))  # staged while that commit is in flight
            hub.applied("agent:p1", 100)
            await hub.close()
            await trio.testing.wait_all_tasks_blocked()
            assert nursery.child_tasks == frozenset()  # the writer ended by itself
    failures = [r.getMessage() for r in caplog.records if "journal write failed" in r.getMessage()]
    assert (failures, hub.head) == ([], 100)
    again = await open_on_sqlite(tmp_path)
    assert (again.head, again.committed_pseqs) == (100, {"agent:p1": 100})
    assert again.journal is not None and again.journal.stats().oldest == 1


async def test_committed_pseqs_keep_the_newest_producers_of_each_stream(tmp_path: Path) -> None:
    """A producer id per run: beyond MAX_PRODUCERS per stream the oldest go, in memory
    and in the journal alike, in the commit that adds the newer ones."""
    hub = await open_on_sqlite(tmp_path)
    hub.applied("dev:d1", 1)
    for run in range(1000):
        hub.applied(f"agent:r{run}", run + 1)
    assert await hub.commit()
    for run in range(1000, MAX_PRODUCERS + 30):
        hub.applied(f"agent:r{run}", run + 1)
    assert await hub.commit()
    newest = [f"agent:r{run}" for run in range(30, MAX_PRODUCERS + 30)]
    assert list(hub.committed_pseqs) == ["dev:d1", *newest]
    await hub.close()
    again = await open_on_sqlite(tmp_path)
    assert again.committed_pseqs == hub.committed_pseqs


async def record_a_run_and_start_another(hub: ProjectHub) -> None:
    hub.set_status("running")
    hub.feed_lines(["first run"])
    hub.set_status("stopped")
    hub.set_status("running")
    hub.feed_lines(["second run"])
    assert await hub.commit()


async def test_a_reopened_hub_keeps_the_runs_and_continues_the_open_one(tmp_path: Path) -> None:
    hub = await open_on_sqlite(tmp_path)
    await record_a_run_and_start_another(hub)
    await hub.close()
    again = await open_on_sqlite(tmp_path)
    again.feed_lines(["more of the second run"])
    again.set_status("stopped")
    assert await again.commit()
    assert again.journal is not None
    listed, more = await list_runs(again.journal, again.runs, None, 10)
    runs = [(run.id, run.first_seq, run.last_seq, run.ended, run.log_lines) for run in listed]
    assert not more
    assert runs == [
        (f"{hub.epoch}-4", 4, 7, "stopped", 2),
        (f"{hub.epoch}-1", 1, 3, "stopped", 1),
    ]


async def test_a_hub_never_closed_keeps_its_committed_runs(tmp_path: Path) -> None:
    """No `close` of the hub: its journal is released unclean, as `kill -9` leaves
    it, and what was staged is lost."""
    hub = await open_on_sqlite(tmp_path)
    await record_a_run_and_start_another(hub)
    hub.feed_lines(["staged, never committed"])
    assert hub.journal is not None
    await hub.journal.close(clean=False)
    again = await open_on_sqlite(tmp_path)
    assert again.epoch == hub.epoch
    open_run = again.runs.open
    assert open_run is not None
    assert (open_run.first_seq, open_run.last_seq, open_run.log_lines) == (4, 5, 1)
    assert again.journal is not None
    listed, _ = await list_runs(again.journal, again.runs, None, 10)
    assert [run.ended for run in listed] == [None, "stopped"]
    assert "closed" not in json.dumps(again.runs.to_state())
