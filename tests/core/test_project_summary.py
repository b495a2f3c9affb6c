"""The overview's summariser, pure: events in, a project summary and its order out."""

from __future__ import annotations

from typing import Any

import pytest

from trio_ws.core import project_summary
from trio_ws.core.project_summary import ATTENTION, RunSummary, entry, order_key, summarise

Msg = dict[str, Any]


def status(value: str, at: str = "2026-12-05T10:00:00.000000Z") -> Msg:
    return {"type": "agent_status", "status": value, "timestamp": at}


def progress(passing: int, total: int, needs: int = 0) -> Msg:
    return {
        "type": "progress",
        "passing": passing,
        "in_progress": 1,
        "total": total,
        "needs_human_input": needs,
        "percentage": round(passing / total * 100, 1),
        "timestamp": "2026-12-05T10:00:01.000000Z",
    }


def agent(index: int, name: str, state: str = "working", feature: int = 4) -> Msg:
    return {
        "type": "agent_update",
        "agentIndex": index,
        "agentName": name,
        "agentType": "coding",
        "featureId": feature,
        "featureIds": [feature],
        "featureName": "",
        "state": state,
        "thought": None,
        "timestamp": "2026-12-05T10:00:02.000000Z",
    }


def alert(alert_id: str, severity: str, state: str = "raised", kind: str = "run_crashed") -> Msg:
    return {
        "type": "alert",
        "id": alert_id,
        "kind": kind,
        "severity": severity,
        "state": state,
        "project": "demo",
        "agent": "Spark" if kind == "agent_silent" else None,
        "feature": None,
        "message": f"{kind} happened",
        "timestamp": "2026-12-05T10:00:03.000000Z",
    }


def test_a_run_in_progress_is_summarised_from_its_events() -> None:
    summary = summarise(
        [
            status("running"),
            progress(3, 24),
            agent(0, "Spark"),
            agent(1, "Fizz", feature=5),
            {"type": "log", "line": "x", "timestamp": "2026-12-05T10:00:09.000000Z"},
        ]
    )
    assert summary.agent_status == "running"
    assert summary.progress == {
        "passing": 3,
        "in_progress": 1,
        "total": 24,
        "needs_human_input": 0,
        "percentage": 12.5,
    }
    assert [a["name"] for a in summary.agents.values()] == ["Spark", "Fizz"]
    assert summary.agents[1] == {
        "index": 1,
        "name": "Fizz",
        "type": "coding",
        "feature": 5,
        "state": "working",
    }
    assert summary.last_activity == "2026-12-05T10:00:09.000000Z"
    assert summary.attention == "running"


def test_agents_leave_when_done_and_all_when_the_run_ends() -> None:
    summary = summarise([status("running"), agent(0, "Spark"), agent(1, "Fizz")])
    summary.feed(agent(0, "Spark", state="success"))
    assert list(summary.agents) == [1]
    summary.feed(agent(-1, "Ghost", state="success"))  # an untracked completion: no card
    assert list(summary.agents) == [1]
    summary.feed(status("stopped"))
    assert summary.agents == {}
    assert summary.attention == "idle"


def test_standing_alerts_are_the_raised_ones_not_yet_resolved() -> None:
    summary = summarise(
        [alert("a:run:1", "error"), alert("b:run:2", "warning", kind="run_stalled")]
    )
    assert [a["id"] for a in summary.alerts.values()] == ["a:run:1", "b:run:2"]
    summary.feed(alert("a:run:1", "error", state="resolved"))
    assert [a["id"] for a in summary.alerts.values()] == ["b:run:2"]
    assert summary.alerts["b:run:2"]["message"] == "run_stalled happened"


def test_last_activity_is_the_newest_time_whatever_the_order() -> None:
    summary = summarise(
        [
            {"type": "log", "line": "a", "timestamp": "2026-12-05T10:00:09.000000Z"},
            {"type": "orchestrator_update", "timestamp": "2026-12-05T09:00:00.000000Z"},
            {"type": "dev_server_status", "status": "running", "url": None},  # no time
        ]
    )
    assert summary.last_activity == "2026-12-05T10:00:09.000000Z"
    assert summary.dev_status == "running"
    assert summarise([]).last_activity is None


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([status("running"), alert("x", "error")], "error"),
        ([status("crashed"), progress(1, 4, needs=1)], "needs_input"),
        ([status("running"), alert("n", "warning", kind="needs_input")], "needs_input"),
        ([status("crashed")], "crashed"),
        ([status("running"), alert("s", "warning", kind="agent_silent")], "warning"),
        ([status("paused")], "running"),
        ([status("stopped"), alert("f", "info", kind="run_finished")], "idle"),
        ([], "idle"),
    ],
)
def test_attention_puts_what_needs_the_user_first(events: list[Msg], expected: str) -> None:
    assert summarise(events).attention == expected


def test_an_entry_carries_its_rank_and_the_registry_facts() -> None:
    made = entry(
        "demo",
        summarise([agent(0, "Spark"), status("crashed")]),
        path="/p/demo",
        exists=True,
        loaded=True,
    )
    assert made["name"] == "demo"
    assert made["path"] == "/p/demo"
    assert made["loaded"] is True
    assert made["agent_status"] == "crashed"
    assert made["agents"] == []
    assert made["attention"] == "crashed"
    assert made["rank"] == ATTENTION.index("crashed")


def test_a_project_never_seen_is_an_idle_entry_without_status() -> None:
    made = entry("cold", None, path="/p/cold", exists=False, loaded=False)
    assert made["loaded"] is False
    assert made["agent_status"] is None
    assert made["progress"] is None
    assert made["agents"] == [] and made["alerts"] == []
    assert made["attention"] == "idle"
    assert made == entry("cold", RunSummary(), path="/p/cold", exists=False, loaded=False)


def test_the_order_is_attention_then_name() -> None:
    def made(name: str, *events: Msg) -> dict[str, Any]:
        return entry(name, summarise(events), path=None, exists=True, loaded=True)

    projects = [
        made("a-idle"),
        made("b-running", status("running")),
        made("c-crashed", status("crashed")),
        made("d-input", status("running"), progress(1, 4, needs=2)),
        made("e-error", status("running"), alert("x", "error")),
        made("f-running", status("running")),
    ]
    ordered = [p["name"] for p in sorted(projects, key=order_key)]
    assert ordered == ["e-error", "d-input", "c-crashed", "b-running", "f-running", "a-idle"]
    assert order_key({"name": "z"}) == (len(project_summary.ATTENTION), "z")
