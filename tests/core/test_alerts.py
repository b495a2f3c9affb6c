"""The alert rules, pure: events and a plain clock in, alert edges out."""

from __future__ import annotations

import math
from typing import Any

from trio_ws.core import alerts
from trio_ws.core.alerts import AlertRules, AlertSettings
from trio_ws.core.pipeline import AgentPipeline
from trio_ws.core.protocol import EXIT_LINE, LOST_LINE

Msg = dict[str, Any]


class Feeder:
    """Numbers events as the hub does and feeds them at a time the test sets."""

    def __init__(self, settings: AlertSettings | None = None) -> None:
        self.rules = AlertRules("demo", settings, wall=lambda: 1_700_000_000.0)
        self.seq = 0
        self.now = 0.0

    def feed(self, **event: Any) -> list[Msg]:
        self.seq += 1
        event["seq"] = self.seq
        return [dict(alert) for alert in self.rules.feed(event, self.now)]

    def status(self, status: str) -> list[Msg]:
        return self.feed(type="agent_status", status=status)

    def progress(self, passing: int, total: int, needs: int = 0, in_progress: int = 0) -> list[Msg]:
        return self.feed(
            type="progress",
            passing=passing,
            in_progress=in_progress,
            total=total,
            needs_human_input=needs,
        )

    def agent(self, index: int, state: str = "working", feature: int = 7) -> list[Msg]:
        return self.feed(
            type="agent_update",
            agentIndex=index,
            agentName=["Spark", "Fizz"][index],
            featureId=feature,
            state=state,
        )

    def log(self, line: str, index: int | None = None) -> list[Msg]:
        if index is None:
            return self.feed(type="log", line=line, timestamp="t")
        return self.feed(type="log", line=line, timestamp="t", agentIndex=index)

    def at(self, now: float) -> list[Msg]:
        self.now = now
        return [dict(alert) for alert in self.rules.due(now).alerts]


def edges(alerts_: list[Msg]) -> list[tuple[str, str]]:
    return [(alert["kind"], alert["state"]) for alert in alerts_]


def test_a_run_stopped_at_full_progress_is_finished_until_the_next_run() -> None:
    f = Feeder()
    f.status("running")
    f.progress(3, 3)
    (raised,) = f.status("stopped")
    assert raised["kind"] == "run_finished" and raised["severity"] == "info"
    assert raised["state"] == "raised" and raised["project"] == "demo"
    assert raised["agent"] is None and raised["feature"] is None
    (resolved,) = f.status("running")
    assert resolved["state"] == "resolved" and resolved["id"] == raised["id"]


def test_a_run_stopped_short_of_full_progress_or_with_no_features_is_not_finished() -> None:
    f = Feeder()
    f.status("running")
    f.progress(2, 3)
    assert f.status("stopped") == []
    f.status("running")
    f.progress(0, 0)
    assert f.status("stopped") == []


def test_a_crash_is_an_error_naming_the_exit_code_when_known() -> None:
    f = Feeder()
    f.status("running")
    f.log(f"{EXIT_LINE} 3")
    (raised,) = f.status("crashed")
    assert (raised["kind"], raised["severity"]) == ("run_crashed", "error")
    assert "exit code 3" in raised["message"]
    assert edges(f.status("running")) == [("run_crashed", "resolved")]


def test_needs_human_input_is_raised_once_while_it_stands_and_resolved_at_zero() -> None:
    f = Feeder()
    (raised,) = f.progress(1, 5, needs=1)
    assert (raised["kind"], raised["severity"]) == ("needs_input", "warning")
    assert f.progress(1, 5, needs=2) == []  # still standing: no second raise
    (resolved,) = f.progress(2, 5, needs=0)
    assert resolved["id"] == raised["id"] and resolved["state"] == "resolved"
    assert f.progress(2, 5, needs=0) == []


def test_an_agent_silent_past_the_threshold_is_raised_once_and_resolved_when_it_speaks() -> None:
    f = Feeder(AlertSettings(silent=60))
    f.status("running")
    f.agent(0)
    assert f.rules.due(0).next_at == 60
    assert f.at(59) == []
    (raised,) = f.at(60)
    assert (raised["kind"], raised["agent"], raised["feature"]) == ("agent_silent", "Spark", 7)
    assert f.at(600) == []  # never twice while standing
    f.now = 601
    (resolved,) = f.log("[Feature #7] Reading app.py", index=0)
    assert resolved["id"] == raised["id"] and resolved["state"] == "resolved"
    assert f.rules.due(601).next_at == 661  # timed again from its last line


def test_a_silent_agent_that_leaves_is_resolved() -> None:
    f = Feeder(AlertSettings(silent=60))
    f.status("running")
    f.agent(0)
    f.at(60)
    assert edges(f.agent(0, state="success")) == [("agent_silent", "resolved")]
    assert f.rules.due(61).next_at == f.rules.settings.stalled  # only the run's timer is left


def test_a_line_of_another_agent_does_not_keep_an_agent_from_being_silent() -> None:
    f = Feeder(AlertSettings(silent=60))
    f.status("running")
    f.agent(0)
    f.agent(1)
    f.now = 50
    f.log("[Feature #8] Writing x", index=1)
    f.log("an orchestrator line")
    assert [a["agent"] for a in f.at(60)] == ["Spark"]


def test_a_run_that_ends_resolves_its_silent_agents_and_stalls() -> None:
    f = Feeder(AlertSettings(silent=60, stalled=100))
    f.status("running")
    f.agent(0)
    assert edges(f.at(100)) == [("agent_silent", "raised"), ("run_stalled", "raised")]
    assert sorted(edges(f.status("stopped"))) == [
        ("agent_silent", "resolved"),
        ("run_stalled", "resolved"),
    ]
    assert f.rules.due(10_000).next_at == math.inf


def test_a_running_run_without_progress_change_stalls_and_a_change_resolves_it() -> None:
    f = Feeder(AlertSettings(stalled=100))
    f.progress(1, 5)
    f.status("running")
    assert f.at(99) == []
    (raised,) = f.at(100)
    assert (raised["kind"], raised["severity"]) == ("run_stalled", "warning")
    assert f.progress(1, 5) == []  # the same counts are no change
    (resolved,) = f.progress(2, 5)
    assert resolved["id"] == raised["id"] and resolved["state"] == "resolved"
    assert f.rules.due(100).next_at == 200


def test_a_paused_run_does_not_stall() -> None:
    f = Feeder(AlertSettings(stalled=100))
    f.status("running")
    f.status("paused")
    assert f.at(1000) == []


def test_the_auth_banner_raises_an_error_until_the_next_run() -> None:
    pipeline = AgentPipeline(clock=lambda: 0.0)
    f = Feeder()
    f.status("running")
    raised = []
    for event in pipeline.feed_line("Error: not logged in"):
        raised += f.feed(**event)
    assert edges(raised) == [("auth", "raised")]
    assert raised[0]["severity"] == "error"
    f.status("crashed")
    assert ("auth", "resolved") in edges(f.status("running"))


def test_a_lost_producer_is_an_error_and_its_crash_no_second_one() -> None:
    f = Feeder()
    f.status("running")
    (raised,) = f.log(LOST_LINE)
    assert (raised["kind"], raised["severity"]) == ("producer_lost", "error")
    assert f.status("crashed") == []
    assert edges(f.status("running")) == [("producer_lost", "resolved")]


def test_ids_name_kind_subject_and_the_raising_seq() -> None:
    f = Feeder(AlertSettings(silent=60))
    f.status("running")
    f.agent(1)
    (raised,) = f.at(60)
    assert raised["id"] == "agent_silent:1:2"
    assert alerts.key_of(raised["id"]) == "agent_silent:1"


def test_restored_standing_alerts_are_not_raised_again_and_resolve() -> None:
    first = Feeder()
    (raised,) = first.progress(1, 5, needs=1)
    again = Feeder()
    again.rules.restore([raised])
    assert again.progress(1, 5, needs=3) == []
    (resolved,) = again.progress(1, 5, needs=0)
    assert resolved["id"] == raised["id"]


def test_seeding_learns_agents_and_the_run_without_raising() -> None:
    f = Feeder(AlertSettings(silent=60))
    snapshot: list[Msg] = [
        {"type": "agent_status", "status": "stopped", "seq": 1},
        {"type": "progress", "passing": 1, "in_progress": 0, "total": 1, "needs_human_input": 2},
    ]
    f.rules.seed(snapshot, 0)
    assert f.rules.standing == []
    f.rules.seed(
        [
            {"type": "agent_status", "status": "running", "seq": 3},
            {"type": "agent_update", "agentIndex": 0, "agentName": "Spark", "state": "working"},
        ],
        10,
    )
    assert edges(f.at(70)) == [("agent_silent", "raised")]


def test_thresholds_must_be_positive() -> None:
    for silent, stalled in ((0, 1), (1, -1)):
        try:
            AlertSettings(silent, stalled)
        except ValueError:
            continue
        raise AssertionError("accepted")
