"""The run recorder (pure): runs cut at ``running`` and ``stopped``/``crashed``, pauses
within them, interruptions, the figures each summary keeps, its JSON round trip."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ws.core.protocol import AGENT_STATUSES, EXIT_LINE, LOST_LINE
from trio_ws.state.runs import MAX_AGENTS, RunRecorder, RunSummary

Message = dict[str, Any]


class Feed:
    """Events numbered from 1, each at a distinct time, into a recorder."""

    def __init__(self, recorder: RunRecorder | None = None) -> None:
        self.recorder = recorder or RunRecorder("e1")
        self.seq = 0

    def __call__(self, kind: str, **fields: Any) -> Message:
        self.seq += 1
        message = {"type": kind, "seq": self.seq, "timestamp": f"t{self.seq:04d}", **fields}
        self.recorder.feed(message)
        return message

    def status(self, status: str) -> Message:
        return self("agent_status", status=status)

    def progress(self, passing: int, total: int) -> Message:
        return self(
            "progress",
            passing=passing,
            in_progress=0,
            total=total,
            percentage=round(passing / total * 100, 1),
            needs_human_input=0,
        )


def update(index: int, state: str = "working", feature: int = 1) -> Message:
    return {
        "agentIndex": index,
        "agentName": f"Agent{index}",
        "agentType": "coding",
        "featureId": feature,
        "featureIds": [feature],
        "state": state,
    }


def newest_first(recorder: RunRecorder) -> list[RunSummary]:
    """The open run, then those closed and not yet taken by a commit, newest first."""
    return ([] if recorder.open is None else [recorder.open]) + recorder.finished[::-1]


def only(recorder: RunRecorder) -> RunSummary:
    runs = list(newest_first(recorder))
    assert len(runs) == 1
    return runs[0]


def test_a_run_goes_from_running_to_stopped() -> None:
    feed = Feed()
    feed.status("running")
    feed("log", line="work")
    feed.status("stopped")
    run = only(feed.recorder)
    assert (run.id, run.first_seq, run.last_seq, run.ended) == ("e1-1", 1, 3, "stopped")
    assert (run.started_at, run.ended_at) == ("t0001", "t0003")


def test_pauses_and_resumes_stay_within_one_run() -> None:
    feed = Feed()
    for status in ("running", "pausing", "paused_graceful", "running", "paused", "running"):
        feed.status(status)
    feed.status("crashed")
    run = only(feed.recorder)
    assert (run.first_seq, run.last_seq, run.ended) == (1, 7, "crashed")


def test_a_run_is_open_until_it_ends() -> None:
    feed = Feed()
    feed.status("running")
    feed("log", line="work")
    run = only(feed.recorder)
    assert (run.ended, run.ended_at, run.last_seq, run.last_at) == (None, None, 2, "t0002")


def test_a_running_after_a_running_interrupts_the_open_run() -> None:
    feed = Feed()
    feed.status("running")
    feed("log", line="last words")
    feed.status("running")  # a new producer after the old one died unseen
    new, old = newest_first(feed.recorder)
    assert (old.ended, old.last_seq, old.ended_at) == ("interrupted", 2, "t0002")
    assert (new.ended, new.first_seq) == (None, 3)


def test_a_crash_after_the_producer_was_lost_is_an_interruption() -> None:
    feed = Feed()
    feed.status("running")
    feed("log", line=LOST_LINE)
    feed.status("crashed")
    assert only(feed.recorder).ended == "interrupted"


def test_the_exit_code_is_read_from_the_exit_line() -> None:
    feed = Feed()
    feed.status("running")
    feed("log", line=f"{EXIT_LINE} 3")
    feed.status("crashed")
    run = only(feed.recorder)
    assert (run.exit_code, run.ended) == (3, "crashed")


def test_a_run_without_an_exit_line_has_no_exit_code() -> None:
    feed = Feed()
    feed.status("running")
    feed.status("stopped")
    assert only(feed.recorder).exit_code is None


def test_events_between_runs_belong_to_none() -> None:
    feed = Feed()
    feed("log", line="before")
    feed.status("stopped")  # a final status with no run open ends nothing
    feed.status("running")
    assert only(feed.recorder).first_seq == 3


def test_progress_at_start_is_the_last_seen_before_and_at_end_the_last_within() -> None:
    feed = Feed()
    feed.progress(1, 10)
    feed.status("running")
    feed.progress(4, 10)
    feed.status("stopped")
    feed.progress(5, 10)  # after the run: not its end
    run = only(feed.recorder)
    assert run.progress_start is not None and run.progress_end is not None
    assert (run.progress_start["passing"], run.progress_end["passing"]) == (1, 4)


def test_agents_seen_keep_every_feature_id_they_had() -> None:
    feed = Feed()
    feed.status("running")
    feed("agent_update", **update(1, feature=3))
    feed("agent_update", **update(1, feature=4))
    feed("agent_update", **update(2, state="error", feature=5))
    run = only(feed.recorder)
    assert run.to_json()["agents"] == [
        {"agentIndex": 1, "agentName": "Agent1", "agentType": "coding", "featureIds": [3, 4]},
        {"agentIndex": 2, "agentName": "Agent2", "agentType": "coding", "featureIds": [5]},
    ]
    assert (run.agent_count, run.error_lines) == (2, 1)


def test_agents_beyond_the_limit_are_counted_not_listed() -> None:
    feed = Feed()
    feed.status("running")
    for index in range(MAX_AGENTS + 5):
        feed("agent_update", **update(index))
    run = only(feed.recorder)
    assert (len(run.agents), run.agent_count) == (MAX_AGENTS, MAX_AGENTS + 5)


def test_log_lines_are_counted() -> None:
    feed = Feed()
    feed.status("running")
    for _ in range(3):
        feed("log", line="work")
    feed("dev_log", line="vite")  # the dev server's output is no agent log line
    assert only(feed.recorder).log_lines == 3


def test_a_summary_survives_json_unchanged() -> None:
    feed = Feed()
    feed.progress(1, 2)
    feed.status("running")
    feed("agent_update", **update(1))
    feed("log", line=f"{EXIT_LINE} 0")
    feed.status("stopped")
    run = only(feed.recorder)
    text = json.dumps(run.to_json())
    assert RunSummary.from_json(json.loads(text)).to_json() == run.to_json()


def test_the_recorder_continues_from_its_state_which_holds_only_the_open_run() -> None:
    feed = Feed()
    feed.status("running")
    feed.status("stopped")
    feed.status("running")
    state = json.loads(json.dumps(feed.recorder.to_state()))
    assert "closed" not in state and state["open"]["first_seq"] == 3
    again = Feed(RunRecorder.from_state(state, "e1"))
    again.seq = feed.seq
    again.status("stopped")
    assert [run.to_json() for run in again.recorder.take_finished()] == [
        {
            **state["open"],
            "last_seq": 4,
            "ended": "stopped",
            "status": "stopped",
            "ended_at": "t0004",
            "last_at": "t0004",
        }
    ]
    assert again.recorder.finished == [] and again.recorder.open is None


def test_closed_runs_a_journal_older_than_the_archive_listed_are_stored_next() -> None:
    feed = Feed()
    feed.status("running")
    feed.status("stopped")
    closed = [run.text() for run in feed.recorder.take_finished()]
    old_state = {**feed.recorder.to_state(), "closed": closed}
    again = RunRecorder.from_state(old_state, "e1")
    assert [run.text() for run in again.take_finished()] == closed


def test_alerts_raised_in_a_run_are_counted() -> None:
    feed = Feed()
    feed.status("running")
    feed("alert", state="raised", id="a1")
    feed("alert", state="resolved", id="a1")
    feed("alert", state="raised", id="a2")
    assert only(feed.recorder).alerts == 2


def test_a_copy_records_without_changing_the_original() -> None:
    feed = Feed()
    feed.status("running")
    feed("agent_update", **update(1, feature=1))
    copy = feed.recorder.copy()
    copy.feed({"type": "agent_update", "seq": 3, **update(1, feature=2)})
    assert only(feed.recorder).agents[1]["featureIds"] == [1]
    assert (only(feed.recorder).last_seq, only(copy).last_seq) == (2, 3)


EVENT_KINDS = ("log", "agent_update", "orchestrator_update", "progress", "dev_log")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(sorted(AGENT_STATUSES)).map(lambda s: ("agent_status", s)),
            st.sampled_from(EVENT_KINDS).map(lambda k: (k, "")),
            st.just(("log", LOST_LINE)),
        ),
        max_size=60,
    )
)
def test_runs_never_overlap_hold_their_events_and_have_unique_ids(
    steps: list[tuple[str, str]],
) -> None:
    recorder = RunRecorder("e1")
    feed = Feed(recorder)
    status = "stopped"
    for kind, value in steps:
        if kind == "agent_status":
            if value == status:
                continue  # the hub publishes a status only when it changes
            status = value
            feed.status(value)
        elif kind == "agent_update":
            feed(kind, **update(1))
        elif kind == "progress":
            feed.progress(1, 2)
        else:
            feed(kind, line=value)
    runs = sorted(newest_first(recorder), key=lambda run: run.first_seq)
    assert len({run.id for run in runs}) == len(runs)
    for run, after in itertools.pairwise(runs):
        assert run.first_seq <= run.last_seq < after.first_seq
        assert run.ended is not None
    for run in runs:
        inside = [
            (kind, value)
            for seq, (kind, value) in enumerate(_published(steps), start=1)
            if run.first_seq <= seq <= run.last_seq
        ]
        assert run.log_lines == sum(1 for kind, _ in inside if kind == "log")
    assert [run for run in runs if run.ended is None] == [recorder.open] * (
        recorder.open is not None
    )


def _published(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The steps that became events (a repeated status is none), in seq order."""
    status = "stopped"
    events = []
    for kind, value in steps:
        if kind == "agent_status":
            if value == status:
                continue
            status = value
        events.append((kind, value))
    return events
