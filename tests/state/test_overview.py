"""The overview's summaries over real hubs (a `ConnectionManager` on the memory journal,
a registry in a tmp dir): a hub's commit is a change notice, the coalescing task
summarises each project once per look, a watcher holds one summary per project."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from serving import NETWORK_TIMEOUT
from test_project import wait_until

from trio_ws.data.progress import Progress
from trio_ws.data.registry import Registry
from trio_ws.journal.sqlite import SqliteBackend, journal_path
from trio_ws.state.manager import ConnectionManager
from trio_ws.state.overview import Overview, OverviewWatcher


def decoded(texts: list[str]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in map(json.loads, texts)}


def test_a_watcher_keeps_only_the_latest_summary_per_project() -> None:
    watcher = OverviewWatcher()
    assert watcher.offer("a", '{"n":-1}') is False  # nothing replaced
    replaced = 0
    for n in range(1000):
        replaced += watcher.offer("a", f'{{"n":{n}}}')
        replaced += watcher.offer("b", f'{{"m":{n}}}')
    assert replaced == 1000 + 999  # every summary but the two latest was dropped
    assert watcher.wake.is_set()
    assert watcher.take() == (['{"n":999}', '{"m":999}'], [])
    assert not watcher.wake.is_set()
    watcher.offer("a", '{"n":999}')  # what it was given already: nothing to send
    assert not watcher.wake.is_set()
    watcher.gone("b")
    watcher.gone("c")  # never given: nothing to take back
    assert watcher.take() == ([], ["b"])
    watcher.offer("b", "{}")  # back again
    assert watcher.take() == (["{}"], [])


async def test_commits_become_one_summary_per_look(nursery: trio.Nursery, tmp_path: Path) -> None:
    manager = ConnectionManager(nursery)
    overview = manager.overview
    hub = (await manager.open("alpha", tmp_path)).hub
    assert hub.on_summary == overview.changed
    watcher = overview.watch()
    overview.publish()
    first = decoded(watcher.take()[0])["alpha"]
    assert first["loaded"] is True and first["agent_status"] is None
    made = overview.summaries_made
    hub.set_status("running")
    for n in range(50):  # fifty commits between two looks
        hub.feed_lines([f"line {n}"])
        await hub.commit()
    hub.publish_progress(Progress(2, 1, 8, 1))
    await hub.commit()
    overview.publish()
    assert overview.summaries_made == made + 1  # once, not 52 times
    texts, removed = watcher.take()
    assert removed == []
    alpha = decoded(texts)["alpha"]
    assert alpha["agent_status"] == "running"
    assert alpha["attention"] == "needs_input"
    assert alpha["progress"] == {
        "passing": 2,
        "in_progress": 1,
        "total": 8,
        "needs_human_input": 1,
        "percentage": 25.0,
    }
    assert isinstance(alpha["last_activity"], str)
    overview.publish()  # nothing changed: nothing offered
    assert watcher.take() == ([], [])


async def test_an_unchanged_summary_is_not_offered_again(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    manager = ConnectionManager(nursery)
    hub = (await manager.open("alpha", tmp_path)).hub
    watcher = manager.overview.watch()
    manager.overview.publish()
    watcher.take()
    manager.overview.changed("alpha")  # a notice, yet the same summary
    manager.overview.publish()
    assert watcher.take() == ([], [])
    assert hub.subscriber_count == 0


async def test_the_registry_lists_projects_not_open_and_their_removal(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    registry = Registry(tmp_path / "registry.db")
    for name in ("cold", "gone"):
        (tmp_path / name).mkdir()
        registry.add(name, tmp_path / name)
    overview = Overview()
    await overview.read_registry(registry.path)
    watcher = overview.watch()
    listed = decoded(overview.first_list(watcher))
    assert sorted(listed) == ["cold", "gone"]
    assert listed["cold"]["loaded"] is False
    assert listed["cold"]["path"] == (tmp_path / "cold").as_posix()
    assert listed["cold"]["exists"] is True
    overview.publish()
    assert watcher.take() == ([], [])  # the first list had them all
    registry.remove("gone")
    await overview.read_registry(registry.path)
    overview.publish()
    assert watcher.take() == ([], ["gone"])
    assert sorted(decoded(overview.first_list(overview.watch()))) == ["cold"]


async def test_a_missing_registry_lists_nothing_and_a_broken_one_says_why(
    tmp_path: Path,
) -> None:
    overview = Overview()
    await overview.read_registry(tmp_path / "none.db")
    assert overview.first_list(overview.watch()) == []
    assert overview.registry_error is None
    broken = tmp_path / "broken.db"
    broken.mkdir()  # a directory where the registry file should be
    await overview.read_registry(broken)
    assert overview.registry_error is not None and "directory" in overview.registry_error


async def test_a_project_closed_idle_keeps_its_last_summary(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    manager = ConnectionManager(
        nursery, journals=SqliteBackend(tmp_path / "journals"), idle_close=0.2
    )
    with trio.fail_after(NETWORK_TIMEOUT):
        hub = (await manager.open("alpha", tmp_path)).hub
        hub.set_status("crashed")
        await hub.wait_committed(hub.seq)
        await wait_until(lambda: manager.get_hub("alpha") is None and hub.on_summary is None)
    assert hub.closed
    alpha = manager.overview.entry_of("alpha")
    assert alpha["loaded"] is False
    assert alpha["agent_status"] == "crashed"  # as it was when it closed
    assert alpha["attention"] == "crashed"


async def test_a_project_not_open_since_a_restart_is_shown_as_its_journal_left_it(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """After a restart the overview lists what each project was doing, read from its
    journal without opening it, where it used to say "not open here"."""
    registry = Registry(tmp_path / "registry.db")
    for name in ("alpha", "never"):
        (tmp_path / name).mkdir()
        registry.add(name, tmp_path / name)
    journals = tmp_path / "journals"
    with trio.fail_after(NETWORK_TIMEOUT):
        async with trio.open_nursery() as first_life:
            before = ConnectionManager(first_life, journals=SqliteBackend(journals))
            hub = (await before.open("alpha", tmp_path / "alpha")).hub
            hub.set_status("running")
            hub.publish_progress(Progress(3, 1, 10, 0))
            hub.set_status("crashed")
            await hub.wait_committed(hub.seq)
            await before.close_journals()
            first_life.cancel_scope.cancel()
        manager = ConnectionManager(nursery, journals=SqliteBackend(journals))
        await manager.overview.read_registry(registry.path)
    assert manager.get_hub("alpha") is None  # read, not opened
    listed = decoded(manager.overview.first_list(manager.overview.watch()))
    alpha = listed["alpha"]
    assert (alpha["loaded"], alpha["agent_status"], alpha["attention"]) == (
        False,
        "crashed",
        "crashed",
    )
    assert (alpha["progress"]["passing"], alpha["progress"]["total"]) == (3, 10)
    assert listed["never"]["agent_status"] is None  # no journal: nothing known


async def test_an_unreadable_journal_leaves_its_project_unknown_and_says_so(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry(tmp_path / "registry.db")
    (tmp_path / "alpha").mkdir()
    registry.add("alpha", tmp_path / "alpha")
    backend = SqliteBackend(tmp_path / "journals")
    path = journal_path(backend.home, "alpha")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a database at all" * 100)
    manager = ConnectionManager(nursery, journals=backend)
    await manager.overview.read_registry(registry.path)
    alpha = manager.overview.entry_of("alpha")
    assert alpha["agent_status"] is None and alpha["loaded"] is False
    assert "overview: project alpha: journal unreadable" in caplog.text
    assert path.read_bytes() == b"not a database at all" * 100  # left as it was


async def test_the_task_looks_at_most_once_per_coalesce_interval(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    registry = Registry(tmp_path / "registry.db")
    (tmp_path / "x").mkdir()
    registry.add("x", tmp_path / "x")
    overview = Overview(coalesce=0.5)
    await overview.read_registry(registry.path)  # a thread: the mock clock jumps past it
    nursery.start_soon(overview.run, registry.path)
    await trio.sleep(0.1)
    made = overview.summaries_made
    for _ in range(40):  # a notice every 50 ms for 2 s
        overview.changed("x")
        await trio.sleep(0.05)
    assert 4 <= overview.summaries_made - made <= 5


async def test_a_watcher_that_takes_nothing_holds_one_summary_per_project(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A slow client's backlog is bounded by the projects, not by time: it gets the
    latest of each when it reads again."""
    manager = ConnectionManager(nursery)
    hubs = [(await manager.open(name, tmp_path)).hub for name in ("alpha", "beta", "gamma")]
    overview = manager.overview
    slow = overview.watch()
    overview.first_list(slow)
    for passing in range(1, 101):  # a hundred looks, each with a change in every project
        for hub in hubs:
            hub.publish_progress(Progress(passing, 0, 100, 0))
            await hub.commit()
        overview.publish()
        assert len(slow.pending) <= 3
    texts, _ = slow.take()
    assert sorted(entry["progress"]["passing"] for entry in decoded(texts).values()) == [100] * 3


async def test_the_overview_counts_what_slow_watchers_never_got(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    manager = ConnectionManager(nursery)
    overview = manager.overview
    hub = (await manager.open("alpha", tmp_path)).hub
    slow, quick = overview.watch(), overview.watch()
    overview.publish()
    quick.take()
    assert overview.pending_summaries == 1  # the slow one's
    for n in range(5):
        await trio.sleep(0.001)  # a later timestamp: each summary differs
        hub.feed_lines([f"line {n}"])
        await hub.commit()
        overview.publish()
        quick.take()
    assert overview.pending_summaries == 1  # still one: the latest
    assert overview.summaries_dropped == 5  # the slow one's older five
    overview.unwatch(slow)
    assert overview.pending_summaries == 0
