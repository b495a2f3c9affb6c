"""The agent pipeline on both AutoForge versions' output: leonvanzyl/autocoder 69d9313
(old) and AutoForgeAI/autoforge 427c228 (0.1.22, newest).

What 0.1.22 changed for the pipeline: batches of up to 15 features (test_trackers
pins the rules), the 17-line auth banner (test_pipeline), and ``--auto-improve``
runs, which this module covers: no orchestrator, no ``[Feature #N]`` prefixes,
one agent's unprefixed narrative, a fresh ``running`` -> ``stopped`` run every
10 minutes. Then the real-format 0.1.22 transcripts of ``tests/corpus/``, fed
through one pipeline each, in the style of test_pipeline's AutoForge story.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest
from plain import Msg
from test_pipeline import BANNER, MISSING, FakeClock, logged, matches, running_agent, types

from trio_ws.core.pipeline import AgentPipeline
from trio_ws.core.trackers import AgentTracker, OrchestratorTracker

DATA = Path(__file__).parent.parent / "corpus"
START = "[AUTO-IMPROVE] Starting single-session improvement run..."
ENTRY = "[ENTRY] autonomous_agent_demo.py starting..."
RUN_LINES = (DATA / "autoforge-0.1.22-run.txt").read_text(encoding="utf-8").splitlines()
AUTO_IMPROVE_LINES = (
    (DATA / "autoforge-0.1.22-auto-improve.txt").read_text(encoding="utf-8").splitlines()
)
AUTH_LINES = (DATA / "autoforge-0.1.22-auth.txt").read_text(encoding="utf-8").splitlines()
BATCH = list(range(13, 28))
BATCH_NAME = "Features " + ", ".join(f"#{i}" for i in BATCH)


def auto_improve_run() -> AgentPipeline:
    pipeline = running_agent()
    pipeline.feed_line("[ENTRY] autonomous_agent_demo.py starting...")
    pipeline.feed_line(START)
    return pipeline


# -- auto-improve runs: the one agent's narrative moves nothing ---------------------


def test_the_auto_improve_line_starts_an_auto_improve_run() -> None:
    pipeline = running_agent()
    assert types(pipeline.feed_line(START)) == ["log"]
    assert pipeline.auto_improve


def test_a_normal_run_is_not_auto_improve() -> None:
    pipeline = running_agent()
    pipeline.feed_line("[ENTRY] autonomous_agent_demo.py starting...")
    assert not pipeline.auto_improve


@pytest.mark.parametrize(
    "line",
    [
        f"[Feature #3] {START}",  # a child agent's narrative, under the orchestrator
        f"The log said {START}",
    ],
)
def test_only_a_top_level_auto_improve_line_counts(line: str) -> None:
    pipeline = running_agent()
    pipeline.feed_line(line)
    assert not pipeline.auto_improve


@pytest.mark.parametrize(
    "line",
    [
        "All features complete, committing the improvement.",
        "Started coding agent for feature #3",
        "Feature #3 completed",
        "Running initializer agent again is not needed",
        "INITIALIZATION COMPLETE",
    ],
)
def test_auto_improve_narrative_moves_no_tracker(line: str) -> None:
    pipeline = auto_improve_run()
    events = pipeline.feed_line(line)
    assert (types(events), logged(events)) == (["log"], [line])
    assert pipeline.agents.active_count == 0
    assert pipeline.orchestrator.state()["state"] == "idle"


def test_an_auto_improve_feature_tag_carries_no_feature() -> None:
    events = auto_improve_run().feed_line("[Feature #3] Looking at the cart")
    assert types(events) == ["log"]
    assert "featureId" not in events[0]


@pytest.mark.parametrize(
    "line", ["All agents drained - paused.", "Resuming from graceful pause..."]
)
def test_auto_improve_narrative_sets_no_status(line: str) -> None:
    pipeline = auto_improve_run()
    assert types(pipeline.feed_line(line)) == ["log"]
    assert pipeline.status == "running"


def test_an_auto_improve_run_still_shows_the_banner() -> None:
    events = auto_improve_run().feed_line("Invalid API key · Please run /login")
    assert logged(events) == [*BANNER, "Invalid API key · Please run /login"]


def test_an_auto_improve_run_still_redacts() -> None:
    events = auto_improve_run().feed_line("   Input: {'command': 'export API_TOKEN=abc123'}")
    assert logged(events) == ["   Input: {'command': 'export API_TOKEN=[REDACTED]'}"]


@pytest.mark.parametrize("pause", ["paused", "pausing", "paused_graceful"])
def test_a_pause_continues_the_auto_improve_run(pause: str) -> None:
    pipeline = auto_improve_run()
    pipeline.set_status(pause)
    pipeline.set_status("running")
    assert pipeline.auto_improve


# -- one run after another: each starts clean -----------------------------------------


def cycle(pipeline: AgentPipeline, lines: list[str], end: str = "stopped") -> list[Msg]:
    """``running``, the lines, then ``end``: every event of that run."""
    events = pipeline.set_status("running")
    for line in lines:
        events += pipeline.feed_line(line)
    return events + pipeline.set_status(end)


@pytest.mark.parametrize("end", ["stopped", "crashed"])
def test_a_run_after_an_auto_improve_run_is_a_normal_run(end: str) -> None:
    pipeline = AgentPipeline(FakeClock())
    cycle(pipeline, [START], end)
    pipeline.set_status("running")
    assert not pipeline.auto_improve
    events = pipeline.feed_line("Started coding agent for feature #1")
    assert types(events) == ["log", "agent_update", "orchestrator_update"]


def test_a_second_auto_improve_run_starts_with_no_agent_of_the_first_run() -> None:
    pipeline = AgentPipeline(FakeClock())
    cycle(pipeline, ["Started coding agent for features #1, #2", "[Feature #9] Reading app.tsx"])
    cycle(pipeline, [START, "Reading the spec"], end="running")  # the next run, still going
    assert pipeline.agents.snapshot() == []
    assert pipeline.orchestrator.state()["state"] == "idle"
    assert pipeline.orchestrator.state()["codingAgents"] == 0


def test_the_banner_shows_again_in_the_next_auto_improve_run() -> None:
    pipeline = AgentPipeline(FakeClock())
    first = cycle(pipeline, [START, "Error: not logged in"], end="crashed")
    second = cycle(pipeline, [START, "Error: not logged in"], end="crashed")
    assert logged(first) == logged(second) == [START, *BANNER, "Error: not logged in"]


def test_the_next_run_does_not_check_the_previous_runs_lines() -> None:
    pipeline = AgentPipeline(FakeClock())
    cycle(pipeline, [START, "Error: you are not"], end="stopped")
    second = cycle(pipeline, [START, "logged in. Bye."], end="crashed")
    assert logged(second) == [START, "logged in. Bye."]


def test_a_run_that_ended_inside_a_private_key_does_not_hide_the_next_one() -> None:
    pipeline = AgentPipeline(FakeClock())
    cycle(pipeline, ["-----BEGIN RSA PRIVATE KEY-----", "MIIEpAIBAAKCAQEA7bq98pLqXwZ"], "crashed")
    second = cycle(pipeline, ["[ENTRY] autonomous_agent_demo.py starting...", START])
    assert logged(second) == ["[ENTRY] autonomous_agent_demo.py starting...", START]


# -- the 0.1.22 transcripts of tests/corpus/ ----------------------------------------------


@dataclass(frozen=True)
class Step:
    line: str | None  # None for a status change
    events: list[Msg]
    active_agents: int


def play(runs: list[list[str]]) -> tuple[Step, ...]:
    """One pipeline: for each run, ``running``, its lines, then ``stopped``."""
    pipeline = AgentPipeline(FakeClock())
    steps: list[Step] = []
    for lines in runs:
        steps.append(Step(None, pipeline.set_status("running"), pipeline.agents.active_count))
        for line in lines:
            steps.append(Step(line, pipeline.feed_line(line), pipeline.agents.active_count))
        steps.append(Step(None, pipeline.set_status("stopped"), pipeline.agents.active_count))
    return tuple(steps)


def sessions(lines: list[str]) -> list[list[str]]:
    """The transcript cut before each top-level ``[ENTRY]`` line: one process each."""
    cuts = [i for i, line in enumerate(lines) if line == ENTRY] + [len(lines)]
    return [lines[a:b] for a, b in itertools.pairwise(cuts)]


@functools.cache
def run_story() -> tuple[Step, ...]:
    return play([RUN_LINES])


@functools.cache
def auto_improve_story() -> tuple[Step, ...]:
    return play(sessions(AUTO_IMPROVE_LINES))


@functools.cache
def auth_story() -> tuple[Step, ...]:
    return play([AUTH_LINES])


def events_of(steps: tuple[Step, ...], event_type: str) -> list[Msg]:
    return [event for step in steps for event in step.events if event["type"] == event_type]


def updates_for(steps: tuple[Step, ...], line: str) -> list[Msg]:
    """The agent_update of every step that fed ``line``, in order."""
    return [
        event
        for step in steps
        if step.line == line
        for event in step.events
        if event["type"] == "agent_update"
    ]


# autoforge-0.1.22-run.txt: a batch of 15, a single feature given up on, a testing agent


def test_run_logs_every_line_once_in_order() -> None:
    assert [event["line"] for event in events_of(run_story(), "log")] == RUN_LINES


def test_run_attributes_every_feature_line_to_an_agent() -> None:
    feature_logs = [event for event in events_of(run_story(), "log") if "featureId" in event]
    assert feature_logs
    assert all(event.get("agentIndex") is not None for event in feature_logs)


def test_run_batch_of_fifteen_is_spark_with_every_id() -> None:
    (update,) = updates_for(run_story(), f"Started coding agent for {BATCH_NAME.lower()}")
    assert matches(
        update,
        {
            "agentIndex": 0,
            "agentName": "Spark",
            "featureId": 13,
            "featureIds": BATCH,
            "featureName": BATCH_NAME,
            "thought": "Starting batch work...",
        },
    )


def test_run_testing_agent_in_the_bracket_format_is_octo() -> None:
    (update,) = updates_for(run_story(), "Started testing agent for features [5,12] (PID 48213)")
    assert matches(
        update,
        {"agentIndex": 2, "agentName": "Octo", "agentType": "testing", "featureIds": [5, 12]},
    )


def test_run_testing_agents_lines_are_its_own() -> None:
    testing_logs = [e for e in events_of(run_story(), "log") if e.get("featureId") == 5]
    assert testing_logs
    assert {event["agentIndex"] for event in testing_logs} == {2}


def test_run_testing_completion_is_octos() -> None:
    (update,) = updates_for(run_story(), "Feature #5 testing completed")
    assert matches(update, {"agentIndex": 2, "state": "success", "synthetic": MISSING})
    assert update["thought"] == "Batch completed successfully!"


def test_run_a_feature_given_up_on_is_retried_by_new_agents_that_fail() -> None:
    first = updates_for(run_story(), "Feature #28 completed")
    failures = updates_for(run_story(), "Feature #28 failed")
    assert [(u["agentIndex"], u["state"]) for u in first + failures] == [
        (1, "success"),
        (3, "error"),
        (4, "error"),
        (5, "error"),
    ]


def test_run_will_not_retry_is_no_completion() -> None:
    line = "Feature #28 has failed 3 times, will not retry"
    (step,) = (step for step in run_story() if step.line == line)
    assert types(step.events) == ["log"]
    assert step.active_agents == 2  # the batch, and the third retry until its failed line


def test_run_batch_completion_is_sparks() -> None:
    (update,) = updates_for(run_story(), f"{BATCH_NAME} completed")
    assert matches(
        update, {"agentIndex": 0, "state": "success", "thought": "Batch completed successfully!"}
    )


def test_run_has_no_synthetic_completion() -> None:
    assert not any(update.get("synthetic") for update in events_of(run_story(), "agent_update"))


def test_run_orchestrator_events() -> None:
    assert [event["eventType"] for event in events_of(run_story(), "orchestrator_update")] == [
        "coding_spawn",
        "coding_spawn",
        "testing_spawn",
        "testing_complete",
        "coding_complete",
        *["coding_spawn", "coding_complete"] * 3,
        "coding_complete",
        "all_complete",
    ]


def test_run_orchestrator_counts_end_at_zero_with_a_concurrency_of_two() -> None:
    updates = events_of(run_story(), "orchestrator_update")
    assert max(update["codingAgents"] for update in updates) == 2
    assert all(update["codingAgents"] >= 0 <= update["testingAgents"] for update in updates)
    assert (updates[-1]["codingAgents"], updates[-1]["testingAgents"]) == (0, 0)
    assert {update["maxConcurrency"] for update in updates} == {2}


def test_run_ends_with_no_agent() -> None:
    assert run_story()[-2].active_agents == 0  # before the stop, which forgets them anyway


# autoforge-0.1.22-auto-improve.txt: two sessions, each its own running -> stopped run


def test_auto_improve_transcript_is_two_sessions() -> None:
    assert [lines[1] for lines in sessions(AUTO_IMPROVE_LINES)] == [START, START]


def test_auto_improve_sessions_are_only_logs_and_statuses() -> None:
    assert {event["type"] for step in auto_improve_story() for event in step.events} == {
        "log",
        "agent_status",
    }


def test_auto_improve_sessions_log_every_line_once_in_order() -> None:
    logs = [event["line"] for event in events_of(auto_improve_story(), "log")]
    assert logs == AUTO_IMPROVE_LINES


def test_auto_improve_sessions_are_two_runs() -> None:
    statuses = [event["status"] for event in events_of(auto_improve_story(), "agent_status")]
    assert statuses == ["running", "stopped", "running", "stopped"]


def test_auto_improve_logs_carry_no_feature() -> None:
    assert not any("featureId" in event for event in events_of(auto_improve_story(), "log"))


def test_auto_improve_narrative_would_move_the_trackers_as_orchestrator_output() -> None:
    """Guards the tests above: the transcript holds lines the trackers would act on
    (the agent's "All features complete, ..." and "Feature #17 completed")."""
    agents, orchestrator = AgentTracker(), OrchestratorTracker()
    hits = [
        line
        for line in AUTO_IMPROVE_LINES
        if agents.feed(line) is not None or orchestrator.feed(line) is not None
    ]
    assert "Feature #17 completed" in hits
    assert any(line.startswith("All features complete") for line in hits)


def test_auto_improve_upper_case_all_complete_is_in_the_transcript() -> None:
    assert "  ALL FEATURES COMPLETE!" in AUTO_IMPROVE_LINES


# autoforge-0.1.22-auth.txt: a batch agent whose CLI has no valid key


def test_auth_banner_shows_once_before_the_first_auth_error() -> None:
    logs = [event["line"] for event in events_of(auth_story(), "log")]
    first = logs.index("[Feature #3] Invalid API key · Please run /login")
    assert logs[first - len(BANNER) : first] == BANNER
    assert logs[: first - len(BANNER)] + logs[first:] == AUTH_LINES


def test_auth_banner_reaches_subscribers_with_its_api_key_placeholder() -> None:
    logs = [event["line"] for event in events_of(auth_story(), "log")]
    assert "  export ANTHROPIC_API_KEY=your-key-here" in logs


def test_auth_banner_is_not_attributed_to_an_agent() -> None:
    banner_logs = [event for event in events_of(auth_story(), "log") if event["line"] == BANNER[1]]
    assert [("featureId" in e, "agentIndex" in e) for e in banner_logs] == [(False, False)]


def test_auth_error_line_is_still_the_batch_agents() -> None:
    line = "[Feature #3] Invalid API key · Please run /login"
    (step, _) = (step for step in auth_story() if step.line == line)
    assert matches(step.events[len(BANNER)], {"line": line, "featureId": 3, "agentIndex": 0})


def test_auth_agents_still_come_and_go() -> None:
    spawns = updates_for(auth_story(), "Started coding agent for features #3, #4")
    (done,) = updates_for(auth_story(), "Features #3, #4 completed")
    assert [update["agentIndex"] for update in spawns] == [0, 1]
    assert (done["agentIndex"], done["state"]) == (0, "success")
