"""RunView: the pure state model, one message type at a time, then sequencing,
resync and resume."""

from __future__ import annotations

import pytest
from plain import Msg

from trio_ws.clients.run_view import RunView, SequenceGap, parse_timestamp
from trio_ws.clients.watch_render import (
    log_tail,
)
from trio_ws.core import protocol
from trio_ws.core.errors import ProjectNotFound

TS = "2026-11-25T17:04:05.123Z"
TS_UNIX = 1795626245.123

AGENT_LINES = [
    "Max concurrency: 3 coding agents",
    "Started coding agent for feature #3",
    "[Feature #3] [Tool: Read] src/app.py",
    "Started testing agent for features [5] (PID 4242)",
    "[Feature #5] Running tests for the login form",
    "[DEBUG] Spawning loop: 4 ready, 1 slots",
]


# -- message builders -----------------------------------------------------------


def hello(seq: int, epoch: str = "e1", project: str = "demo") -> Msg:
    return {
        "type": "hello",
        "protocol": 1,
        "project": project,
        "epoch": epoch,
        "seq": seq,
        "server": "trio-ws/0.1.0",
    }


def log(seq: int, line: str = "a line") -> Msg:
    return protocol.log(line, TS, None, None) | {"seq": seq}


def dev_log(seq: int, line: str = "dev line") -> Msg:
    return protocol.dev_log(line, TS) | {"seq": seq}


def status(seq: int | None, value: str) -> Msg:
    message = protocol.agent_status(value)
    return message if seq is None else message | {"seq": seq}


def agent_update(
    seq: int,
    index: int,
    state: str = "working",
    thought: str | None = "Writing tests",
    name: str = "Spark",
    features: tuple[int, ...] = (3,),
) -> Msg:
    return {
        "type": "agent_update",
        "agentIndex": index,
        "agentName": name,
        "agentType": "coding",
        "featureId": features[0],
        "featureIds": list(features),
        "featureName": f"Feature #{features[0]}",
        "state": state,
        "thought": thought,
        "timestamp": TS,
        "seq": seq,
    }


def orchestrator(seq: int, state: str = "monitoring", coding: int = 2, message: str = "m") -> Msg:
    return {
        "type": "orchestrator_update",
        "eventType": "capacity_check",
        "state": state,
        "message": message,
        "timestamp": TS,
        "codingAgents": coding,
        "testingAgents": 1,
        "maxConcurrency": 3,
        "readyCount": 4,
        "blockedCount": 2,
        "seq": seq,
    }


def progress(seq: int, passing: int = 3, total: int = 10, at: str | None = None) -> Msg:
    message = {
        "type": "progress",
        "passing": passing,
        "in_progress": 2,
        "total": total,
        "percentage": round(passing / total * 100, 1),
        "needs_human_input": 1,
        "seq": seq,
    }
    return message if at is None else message | {"timestamp": at}


def view_of(*messages: Msg, log_limit: int = 1000) -> RunView:
    view = RunView(log_limit=log_limit)
    for message in messages:
        view.apply(message)
    return view


# -- RunView: one message type at a time --------------------------------------------


def test_hello_sets_project_epoch_and_snapshot_point() -> None:
    view = view_of(hello(7, epoch="abc", project="todo"))
    assert (view.project, view.epoch, view.seq, view.server) == ("todo", "abc", 7, "trio-ws/0.1.0")


def test_snapshot_is_complete_at_the_pong() -> None:
    view = view_of(hello(7, epoch="abc"), log(3))
    assert view.resume_point is None
    view.apply({"type": "pong"})
    assert view.resume_point == (7, "abc")


def test_snapshot_is_complete_at_the_first_live_event() -> None:
    view = view_of(hello(7, epoch="abc"), log(3), log(8))
    assert view.resume_point == (8, "abc")


def test_hello_after_an_unfinished_snapshot_starts_over() -> None:
    view = view_of(hello(7), status(1, "running"), log(3, "half a snapshot"), hello(9))
    assert (view.seq, list(view.logs), view.agent_status) == (9, [], "stopped")


def test_no_resume_point_before_hello() -> None:
    assert RunView().resume_point is None


def test_agent_status_is_applied() -> None:
    assert view_of(hello(1), status(1, "running")).agent_status == "running"


@pytest.mark.parametrize("final", ["stopped", "crashed"])
def test_stopped_or_crashed_clears_agents(final: str) -> None:
    view = view_of(hello(0), agent_update(1, 0), agent_update(2, 1, name="Fizz"), status(3, final))
    assert view.agents == {}
    assert view.agent_status == final


def test_paused_keeps_agents() -> None:
    view = view_of(hello(0), agent_update(1, 0), status(2, "paused"))
    assert list(view.agents) == [0]


def test_dev_server_status_sets_status_and_url() -> None:
    message = protocol.dev_server_status("running", "http://localhost:3000") | {"seq": 1}
    view = view_of(hello(0), message)
    assert (view.dev_status, view.dev_url) == ("running", "http://localhost:3000")


def test_progress_counts_are_kept() -> None:
    counts = view_of(hello(0), progress(1, passing=4, total=8)).progress
    assert counts is not None
    assert (counts.passing, counts.in_progress, counts.total) == (4, 2, 8)
    assert (counts.percentage, counts.needs_human_input) == (50.0, 1)


def test_log_and_dev_log_go_to_their_streams() -> None:
    view = view_of(hello(0), log(1, "agent says"), dev_log(2, "vite ready"))
    assert [(e.stream, e.line, e.seq) for e in view.logs] == [("agent", "agent says", 1)]
    assert [(e.stream, e.line, e.seq) for e in view.dev_logs] == [("dev", "vite ready", 2)]


def test_agent_update_adds_a_card() -> None:
    view = view_of(hello(0), agent_update(1, 2, state="thinking", name="Octo", features=(4, 5)))
    card = view.agents[2]
    assert (card.name, card.type, card.feature_ids, card.state) == (
        "Octo",
        "coding",
        (4, 5),
        "thinking",
    )
    assert card.thought == "Writing tests"
    assert card.updated == pytest.approx(TS_UNIX)


def test_agent_update_replaces_the_card() -> None:
    view = view_of(hello(0), agent_update(1, 0), agent_update(2, 0, "testing", "npm test"))
    assert (view.agents[0].state, view.agents[0].thought) == ("testing", "npm test")
    assert len(view.agents) == 1


@pytest.mark.parametrize("final", ["success", "error"])
def test_completion_removes_the_agent(final: str) -> None:
    view = view_of(hello(0), agent_update(1, 0), agent_update(2, 1), agent_update(3, 0, final))
    assert list(view.agents) == [1]


def test_synthetic_completion_removes_nothing() -> None:
    synthetic = agent_update(2, -1, "success", name="Unknown") | {"synthetic": True}
    view = view_of(hello(0), agent_update(1, 0), synthetic)
    assert list(view.agents) == [0]


def test_orchestrator_update_keeps_the_last() -> None:
    view = view_of(hello(0), orchestrator(1, "spawning", 1), orchestrator(2, "monitoring", 2, "x"))
    card = view.orchestrator
    assert card is not None
    assert (card.state, card.coding, card.testing, card.max_concurrency) == ("monitoring", 2, 1, 3)
    assert (card.ready, card.blocked, card.message) == (4, 2, "x")


def test_warnings_are_kept_newest_last_and_bounded() -> None:
    warnings = [protocol.warning("progress", f"w{i}") for i in range(8)]
    view = view_of(hello(0), *warnings)
    assert [content for _, content in view.warnings] == ["w3", "w4", "w5", "w6", "w7"]


def test_error_is_recorded() -> None:
    view = view_of(ProjectNotFound().message())
    assert view.error == "Project not found in registry"


def test_unknown_message_types_are_ignored() -> None:
    view = view_of(hello(3), {"type": "pong"}, {"type": "future_thing", "seq": 99})
    assert view.seq == 3


def test_malformed_known_message_raises_value_error() -> None:
    view = view_of(hello(0))
    with pytest.raises(ValueError, match="agent_update"):
        view.apply({"type": "agent_update", "seq": 1})


# -- RunView: sequencing, resync, resume -------------------------------------------------


def test_live_events_advance_seq() -> None:
    assert view_of(hello(4), log(5), log(6)).seq == 6


def test_snapshot_messages_keep_old_seqs_and_are_applied() -> None:
    view = view_of(hello(9), status(2, "running"), progress(5), log(3), log(7), log(10))
    assert view.seq == 10
    assert [entry.seq for entry in view.logs] == [3, 7, 10]
    assert view.agent_status == "running"


def test_a_snapshot_begun_without_hello_takes_old_seqs_then_the_next_event() -> None:
    """A recorded run's /state: no websocket, so no hello; the replay says where it is."""
    view = view_of(log(1), log(2))  # what it held before is forgotten
    view.begin_snapshot("e7", 9)
    for message in (status(2, "running"), progress(5), agent_update(8, 0), log(9)):
        view.apply(message)
    assert (view.epoch, view.seq, view.synced) == ("e7", 9, False)
    assert [entry.seq for entry in view.logs] == [9] and list(view.agents) == [0]
    view.apply(log(10))
    assert (view.seq, view.synced) == (10, True)
    with pytest.raises(SequenceGap):
        view.apply(log(12))


def test_an_event_of_a_type_it_does_not_show_still_moves_the_seq() -> None:
    alert = {"type": "alert", "seq": 6, "state": "raised", "kind": "auth"}
    view = view_of(hello(4), log(5), alert, log(7))  # no SequenceGap at 7
    assert view.seq == 7 and [entry.seq for entry in view.logs] == [5, 7]


def test_gap_raises_without_applying() -> None:
    view = view_of(hello(4), log(5))
    with pytest.raises(SequenceGap) as gap:
        view.apply(log(7, "skipped ahead"))
    assert (gap.value.expected, gap.value.got) == (6, 7)
    assert (view.seq, len(view.logs)) == (5, 1)


def test_duplicate_live_event_is_ignored() -> None:
    view = view_of(hello(4), log(5), log(6), log(6))
    assert [entry.seq for entry in view.logs] == [5, 6]
    assert view.duplicates == 1


def test_resync_resets_state_to_the_hello_seq() -> None:
    before = (hello(0), status(1, "running"), agent_update(2, 0), log(3), orchestrator(4))
    view = view_of(*before, hello(50), {"type": "resync", "reason": "gap_evicted"})
    assert (view.seq, view.agents, list(view.logs)) == (50, {}, [])
    assert (view.agent_status, view.orchestrator, view.progress) == ("stopped", None, None)
    assert view.resyncs == 1


def test_resync_then_snapshot_rebuilds_the_view() -> None:
    view = view_of(hello(0), log(1, "old"), hello(20), {"type": "resync", "reason": "x"})
    for message in (status(15, "running"), agent_update(12, 1, name="Fizz"), log(19, "new")):
        view.apply(message)
    view.apply(log(21, "live"))
    assert [entry.line for entry in view.logs] == ["new", "live"]
    assert (list(view.agents), view.agent_status, view.seq) == ([1], "running", 21)


def test_mid_stream_resync_continues_after_its_snapshot_point() -> None:
    view = view_of(hello(0), log(1, "old"), log(2, "old"))
    resync = {"type": "resync", "reason": "gap_evicted", "epoch": "e1", "seq": 50}
    for message in (resync, status(40, "running"), log(49, "new"), log(50, "new"), log(51)):
        view.apply(message)  # no SequenceGap: live events go on from the resync's seq
    assert [entry.seq for entry in view.logs] == [49, 50, 51]
    assert (view.seq, view.resyncs, view.agent_status) == (51, 1, "running")
    assert view.resume_point == (51, "e1")


def test_hello_with_a_new_epoch_resets_the_view() -> None:
    view = view_of(hello(0, epoch="a"), log(1), agent_update(2, 0), hello(5, epoch="b"))
    assert (view.epoch, view.seq, view.agents, list(view.logs)) == ("b", 5, {}, [])


def test_resume_in_the_same_epoch_keeps_state_and_continues() -> None:
    view = view_of(hello(0), log(1), agent_update(2, 0))
    view.apply(hello(4))
    view.apply({"type": "resumed", "since": 2, "seq": 4})
    view.apply(log(3))
    view.apply(log(4))
    assert [entry.seq for entry in view.logs] == [1, 3, 4]
    assert (list(view.agents), view.seq, view.resumes) == ([0], 4, 1)


def test_resumed_from_another_seq_is_a_gap() -> None:
    view = view_of(hello(0), log(1), hello(4))
    with pytest.raises(SequenceGap):
        view.apply({"type": "resumed", "since": 3, "seq": 4})


def test_log_tail_is_bounded_per_stream() -> None:
    view = view_of(hello(0), *[log(seq, f"line {seq}") for seq in range(1, 11)], log_limit=4)
    assert [entry.line for entry in view.logs] == ["line 7", "line 8", "line 9", "line 10"]


def test_log_tail_interleaves_both_streams_in_event_order() -> None:
    view = view_of(hello(5), log(1, "a1"), log(4, "a4"), dev_log(2, "d2"), dev_log(5, "d5"))
    assert [entry.line for entry in log_tail(view, 3)] == ["d2", "a4", "d5"]


def test_log_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="log_limit"):
        RunView(log_limit=0)


def at(second: int) -> str:
    """A protocol timestamp ``second`` seconds after 17:04:00."""
    return f"2026-11-25T17:04:{second:02d}.000000Z"


def test_progress_events_become_points_once_each() -> None:
    view = view_of(hello(2), progress(1, passing=1, at=at(1)), progress(3, passing=2, at=at(3)))
    view.apply(progress(1, passing=1, at=at(1)))  # replayed by a snapshot: the same point
    assert [(p.seq, p.passing) for p in sorted(view.points.values(), key=lambda p: p.seq)] == [
        (1, 1),
        (3, 2),
    ]
    assert view.points[3].time == TS_UNIX - 5.123 + 3


def test_history_adds_earlier_points_of_the_same_epoch_only() -> None:
    view = view_of(hello(5), progress(6, passing=4, at=at(6)))
    earlier = {"seq": 2, "timestamp": at(2), "passing": 1, "total": 10}
    view.apply_history({"epoch": "other", "points": [earlier], "statuses": []})
    assert (sorted(view.points), view.history_epoch) == ([6], None)
    view.apply_history({"epoch": "e1", "points": [earlier], "statuses": []})
    assert (sorted(view.points), view.history_epoch) == ([2, 6], "e1")


def test_a_new_epoch_drops_the_points() -> None:
    view = view_of(hello(2), progress(1, at=at(1)))
    view.apply(hello(0, epoch="e2"))
    assert (view.points, view.history_epoch) == ({}, None)


def alert(seq: int, state: str = "raised", kind: str = "needs_input") -> Msg:
    return {
        "type": "alert",
        "id": f"{kind}:-:2",
        "kind": kind,
        "severity": "warning",
        "state": state,
        "project": "demo",
        "agent": "Spark",
        "feature": 3,
        "message": "a feature needs a human",
        "timestamp": TS,
        "seq": seq,
    }


def test_an_alert_stands_until_resolved_and_only_live_ones_ring() -> None:
    view = view_of(hello(2), alert(2))  # a standing one, from the snapshot
    assert view.alerts == {
        "needs_input:-:2": ("needs_input", "warning", "a feature needs a human (Spark 3)")
    }
    assert view.alerts_raised == 0
    view.apply(alert(3, "resolved"))
    assert view.alerts == {}
    view.apply(alert(4, kind="run_stalled"))
    assert (list(view.alerts), view.alerts_raised) == (["run_stalled:-:2"], 1)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2026-12-05T21:06:04.239103Z", 1796504764.239103),
        ("2026-12-05T21:06:04.123Z", 1796504764.123),
        ("2026-12-05T21:06:04.1Z", 1796504764.1),
        ("2026-12-05T21:06:04Z", None),
        ("2026-12-05 21:06:04.123Z", None),
        ("2026-12-05T21:06:04.123+00:00", None),
        ("2026-12-05T21:06:04.12xZ", None),
        ("", None),
        (None, None),
        (1796504764, None),
    ],
)
def test_a_timestamp_is_read_only_in_the_protocols_shape(
    value: object, seconds: float | None
) -> None:
    assert parse_timestamp(value) == seconds
