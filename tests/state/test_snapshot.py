"""Snapshot: what a late joiner gets, kept per event and stored with every commit."""

from __future__ import annotations

from typing import Any

import pytest
from plain import Msg

from trio_ws.state.history import Outgoing
from trio_ws.state.snapshot import ORCHESTRATOR_RECENT, Snapshot, progress_of


def remember(snapshot: Snapshot, seq: int, **fields: Any) -> None:
    message: Msg = {**fields, "seq": seq}
    snapshot.remember(message, Outgoing.of(message, seq))


def test_active_agents_are_kept_and_finished_ones_dropped() -> None:
    snapshot = Snapshot()
    remember(snapshot, 1, type="agent_update", agentIndex=0, state="working")
    remember(snapshot, 2, type="agent_update", agentIndex=1, state="working")
    remember(snapshot, 3, type="agent_update", agentIndex=0, state="success")
    assert sorted(snapshot.agents) == [1]


def test_a_stopped_run_clears_the_agents() -> None:
    snapshot = Snapshot()
    remember(snapshot, 1, type="agent_update", agentIndex=0, state="working")
    remember(snapshot, 2, type="agent_status", status="stopped")
    assert snapshot.agents == {} and snapshot.agent_status is not None


def test_only_the_recent_orchestrator_updates_are_kept() -> None:
    snapshot = Snapshot()
    for seq in range(1, ORCHESTRATOR_RECENT + 3):
        remember(snapshot, seq, type="orchestrator_update", eventType="x")
    assert [item.seq for item in snapshot.orchestrator] == list(range(3, ORCHESTRATOR_RECENT + 3))


def test_the_stored_state_reads_back_the_same_snapshot() -> None:
    snapshot = Snapshot()
    remember(snapshot, 1, type="agent_status", status="running")
    remember(snapshot, 2, type="progress", passing=1, in_progress=2, total=5, needs_human_input=0)
    remember(snapshot, 3, type="agent_update", agentIndex=2, state="working")
    remember(snapshot, 4, type="orchestrator_update", eventType="x")
    again = Snapshot.from_state(snapshot.to_state())
    assert again.to_state() == snapshot.to_state()
    assert again.progress is not None
    assert progress_of(again.progress).total == 5


def test_a_stored_state_missing_a_part_is_refused() -> None:
    with pytest.raises(KeyError):
        Snapshot.from_state({"agent_status": None})


def test_standing_alerts_are_kept_until_resolved_and_survive_the_journal() -> None:
    snapshot = Snapshot()
    remember(snapshot, 1, type="alert", id="needs_input:run:1", state="raised")
    remember(snapshot, 2, type="alert", id="auth:run:2", state="raised")
    remember(snapshot, 3, type="alert", id="needs_input:run:1", state="resolved")
    assert list(snapshot.alerts) == ["auth:run:2"]
    again = Snapshot.from_state(snapshot.to_state())
    assert [item.text for item in again.alerts.values()] == [snapshot.alerts["auth:run:2"].text]
    assert snapshot.copy().alerts == snapshot.alerts


def test_a_journalled_snapshot_from_before_alerts_reads_as_none_standing() -> None:
    state = Snapshot().to_state()
    del state["alerts"]
    assert Snapshot.from_state(state).alerts == {}
