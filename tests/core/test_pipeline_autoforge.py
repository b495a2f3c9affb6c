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

import pytest
from plain import Msg
from test_pipeline import BANNER, FakeClock, logged, running_agent, types

from trio_ws.core.pipeline import AgentPipeline

START = "[AUTO-IMPROVE] Starting single-session improvement run..."


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
