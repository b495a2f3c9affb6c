"""A project's alerts (issue 21): the rules fed by every commit, their clock run by the
project's own task, the alerts committed and held in the snapshot like any event.
Time is trio's MockClock: a ten-minute silence costs nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import trio
import trio.testing

from trio_ws.core.alerts import AlertSettings
from trio_ws.data.registry import Registry
from trio_ws.journal.memory import MemoryBackend
from trio_ws.state.manager import SETTINGS_EVERY, ConnectionManager
from trio_ws.state.project import Project

Msg = dict[str, Any]
SETTINGS = AlertSettings(silent=600, stalled=1800)


def alerts_of(project: Project) -> list[Msg]:
    return project.hub.held(frozenset({"alert"}))


def standing(project: Project) -> list[Msg]:
    return [json.loads(item.text) for item in project.hub._snapshot_state.alerts.values()]


async def settle(project: Project) -> None:
    """Every task waits (the alert task slept, the writer committed what it staged)."""
    await trio.testing.wait_all_tasks_blocked()
    await project.hub.wait_committed(project.hub.seq)
    await trio.testing.wait_all_tasks_blocked()


async def open_project(nursery: trio.Nursery, tmp_path: Path, **kwargs: Any) -> Project:
    manager = ConnectionManager(nursery, journals=MemoryBackend(), **kwargs)
    return await manager.open("alpha", tmp_path)


def registered(
    nursery: trio.Nursery, tmp_path: Path, *names: str
) -> tuple[Registry, ConnectionManager]:
    """A registry of ``names`` (each its own directory) and a manager that reads each
    project's own alert settings from it, over the server's SETTINGS."""
    registry = Registry(tmp_path / "registry.db")
    for name in names:
        (tmp_path / name).mkdir()
        registry.add(name, tmp_path / name)
    manager = ConnectionManager(
        nursery,
        journals=MemoryBackend(),
        alerts=SETTINGS,
        project_alerts=lambda name: registry.settings(name).alert_settings(SETTINGS),
    )
    return registry, manager


async def test_an_agent_silent_for_ten_minutes_is_alerted_once_and_resolved_when_it_speaks(
    mock_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    project = await open_project(nursery, tmp_path, alerts=SETTINGS)
    hub = project.hub
    hub.set_status("running")
    hub.feed_lines(["Started coding agent for feature #4"])
    await settle(project)
    mock_clock.jump(599)
    await settle(project)
    assert alerts_of(project) == []
    mock_clock.jump(1)
    await settle(project)
    (raised,) = alerts_of(project)
    assert (raised["kind"], raised["state"], raised["agent"], raised["feature"]) == (
        "agent_silent",
        "raised",
        "Spark",
        4,
    )
    assert standing(project) == [raised]
    mock_clock.jump(1000)
    await settle(project)
    silent = [a for a in alerts_of(project) if a["kind"] == "agent_silent"]
    assert silent == [raised]  # not raised again while it stands
    hub.feed_lines(["[Feature #4] Reading app.py"])
    await settle(project)
    resolved = alerts_of(project)[-1]
    assert (resolved["id"], resolved["state"]) == (raised["id"], "resolved")
    assert standing(project) == []


async def test_a_run_without_progress_for_thirty_minutes_is_stalled_until_progress_moves(
    mock_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    from trio_ws.data.progress import Progress

    project = await open_project(nursery, tmp_path, alerts=SETTINGS)
    hub = project.hub
    hub.publish_progress(Progress(1, 0, 5, 0))
    hub.set_status("running")
    await settle(project)
    mock_clock.jump(1799)
    await settle(project)
    assert alerts_of(project) == []
    mock_clock.jump(1)
    await settle(project)
    (raised,) = alerts_of(project)
    assert (raised["kind"], raised["severity"]) == ("run_stalled", "warning")
    hub.publish_progress(Progress(2, 0, 5, 0))
    await settle(project)
    assert [a["state"] for a in alerts_of(project)] == ["raised", "resolved"]


async def test_alerts_are_committed_events_after_the_event_that_raised_them(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    project = await open_project(nursery, tmp_path, alerts=SETTINGS)
    hub = project.hub
    hub.set_status("running")
    hub.feed_lines(["[trio-ws] process exited with code 2"])
    hub.set_status("crashed")
    with trio.fail_after(5):
        await settle(project)
    (crash,) = alerts_of(project)
    status = hub.held(frozenset({"agent_status"}))[-1]
    assert crash["seq"] == status["seq"] + 1 and crash["seq"] <= hub.head
    assert crash["message"] == "the run crashed (exit code 2)"


async def test_without_alert_settings_no_alert_is_raised(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    project = await open_project(nursery, tmp_path)
    project.hub.set_status("running")
    project.hub.set_status("crashed")
    with trio.fail_after(5):
        await settle(project)
    assert alerts_of(project) == [] and project.hub.alerts is None


async def test_a_projects_own_silent_threshold_wins_over_the_servers(
    mock_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Issue 21: thresholds per project in the registry. Alpha says 1 min, beta says
    nothing (the server's 10 min): after a minute only alpha's agent is silent."""
    registry, manager = registered(nursery, tmp_path, "alpha", "beta")
    registry.set_setting("alpha", "alert-silent", "1m")
    alpha = await manager.open("alpha", tmp_path / "alpha")
    beta = await manager.open("beta", tmp_path / "beta")
    assert alpha.hub.alerts is not None and alpha.hub.alerts.settings.silent == 60
    assert beta.hub.alerts is not None and beta.hub.alerts.settings.silent == 600
    for project in (alpha, beta):
        project.hub.set_status("running")
        project.hub.feed_lines(["Started coding agent for feature #4"])
        await settle(project)
    mock_clock.jump(59)
    await settle(alpha)
    assert alerts_of(alpha) == []
    mock_clock.jump(1)
    await settle(alpha)
    await settle(beta)
    assert [(a["kind"], a["state"]) for a in alerts_of(alpha)] == [("agent_silent", "raised")]
    assert alerts_of(beta) == []
    mock_clock.jump(540)
    await settle(beta)
    assert [a["kind"] for a in alerts_of(beta)] == ["agent_silent"]


async def test_a_project_may_turn_its_alerts_off(nursery: trio.Nursery, tmp_path: Path) -> None:
    manager = ConnectionManager(
        nursery,
        journals=MemoryBackend(),
        alerts=SETTINGS,
        project_alerts=lambda name: None if name == "quiet" else SETTINGS,
    )
    quiet = await manager.open("quiet", tmp_path)
    loud = await manager.open("loud", tmp_path)
    for project in (quiet, loud):
        project.hub.set_status("running")
        project.hub.set_status("crashed")
        with trio.fail_after(5):
            await settle(project)
    assert quiet.hub.alerts is None and alerts_of(quiet) == []
    assert [a["kind"] for a in alerts_of(loud)] == ["run_crashed"]


async def test_settings_changed_on_a_running_server_apply_without_a_reopen(
    mock_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """`trio-ws projects set` reaches an open project within SETTINGS_EVERY: a shorter
    threshold raises at once, alerts turned off resolve the standing ones (no client
    keeps an alert nothing would resolve), turned on again they start afresh."""
    registry, manager = registered(nursery, tmp_path, "alpha")
    alpha = await manager.open("alpha", tmp_path / "alpha")
    alpha.hub.set_status("running")
    alpha.hub.feed_lines(["Started coding agent for feature #4"])
    await settle(alpha)
    mock_clock.jump(120)  # two minutes quiet: under the server's ten
    await settle(alpha)
    assert alerts_of(alpha) == []
    registry.set_setting("alpha", "alert-silent", "1m")
    await settings_look(manager, mock_clock, alpha)
    assert [(a["kind"], a["state"]) for a in alerts_of(alpha)] == [("agent_silent", "raised")]
    registry.set_setting("alpha", "alerts", "off")
    await settings_look(manager, mock_clock, alpha)
    assert alpha.hub.alerts is None
    assert [a["state"] for a in alerts_of(alpha)] == ["raised", "resolved"]
    assert standing(alpha) == []
    registry.unset_setting("alpha", "alerts")
    await settings_look(manager, mock_clock, alpha)
    assert alpha.hub.alerts is not None and alpha.hub.alerts.settings.silent == 60
    mock_clock.jump(60)  # timed from when they were turned on
    await settle(alpha)
    assert [a["state"] for a in alerts_of(alpha)] == ["raised", "resolved", "raised"]


async def settings_look(
    manager: ConnectionManager, mock_clock: trio.testing.MockClock, project: Project
) -> None:
    """A whole look of the manager's at the projects' settings, begun after this call
    (two rounds: one may have been under way), done. It reads the registry in a
    thread: real time, which the mock clock does not move."""
    for _ in range(2):
        looks = manager.settings_looks
        mock_clock.jump(SETTINGS_EVERY)
        with trio.fail_after(5):
            while manager.settings_looks == looks:
                await trio.to_thread.run_sync(time.sleep, 0.001)
    await settle(project)
