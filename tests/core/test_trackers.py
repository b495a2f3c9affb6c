"""AgentTracker and OrchestratorTracker against the tables of LINES.md 2 and 3."""

from __future__ import annotations

import json
import re
import string
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from plain import Msg

from trio_ws.core import trackers
from trio_ws.core.protocol import AGENT_STATES, iso_timestamp
from trio_ws.core.trackers import MASCOTS, AgentTracker, OrchestratorTracker, fold

DATA = Path(__file__).parent.parent / "corpus"
CORPUS_LINES = [
    line.rstrip()
    for name in ("autoforge-run.txt", "edge-cases.txt")
    for line in (DATA / name).read_text(encoding="utf-8").splitlines()
]
NARRATIVE_LINES = [line for line in CORPUS_LINES if line.startswith("[Feature #2] ")]

AGENT_KEYS = {
    "type",
    "agentIndex",
    "agentName",
    "agentType",
    "featureId",
    "featureIds",
    "featureName",
    "state",
    "thought",
    "timestamp",
}
ORCHESTRATOR_KEYS = {
    "type",
    "eventType",
    "state",
    "message",
    "timestamp",
    "codingAgents",
    "testingAgents",
    "maxConcurrency",
    "readyCount",
    "blockedCount",
}
COUNTERS = ("codingAgents", "testingAgents", "maxConcurrency", "readyCount", "blockedCount")


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_764_090_245.123

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def agents(clock: FakeClock) -> AgentTracker:
    return AgentTracker(clock)


@pytest.fixture
def orch(clock: FakeClock) -> OrchestratorTracker:
    return OrchestratorTracker(clock)


def feed(tracker: AgentTracker | OrchestratorTracker, line: str) -> Msg:
    """Feed a line that must produce a message."""
    message = tracker.feed(line)
    assert message is not None, f"no message for {line!r}"
    return message


def card(message: Msg) -> dict[str, Any]:
    """The agent_update fields that describe the agent, without type and timestamp."""
    return {k: v for k, v in message.items() if k not in {"type", "timestamp"}}


# -- MASCOTS --------------------------------------------------------------------


def test_mascots_are_the_twenty_spec_names_in_order() -> None:
    spec = (
        "Spark, Fizz, Octo, Hoot, Buzz, Pixel, Byte, Nova, Chip, Bolt, "
        "Dash, Zap, Gizmo, Turbo, Blip, Neon, Widget, Zippy, Quirk, Flux"
    )
    assert spec.split(", ") == list(MASCOTS)


def test_mascot_names_wrap_after_twenty_agents(agents: AgentTracker) -> None:
    names = [feed(agents, f"Started coding agent for feature #{i}")["agentName"] for i in range(21)]
    assert names[:20] == list(MASCOTS)
    assert names[20] == "Spark"


# -- agent rules 1-3: spawns -------------------------------------------------------


def test_rule1_batch_coding_spawn(agents: AgentTracker, clock: FakeClock) -> None:
    message = feed(agents, "Started coding agent for features #1, #2, #3")
    assert message == {
        "type": "agent_update",
        "agentIndex": 0,
        "agentName": "Spark",
        "agentType": "coding",
        "featureId": 1,
        "featureIds": [1, 2, 3],
        "featureName": "Features #1, #2, #3",
        "state": "thinking",
        "thought": "Starting batch work...",
        "timestamp": iso_timestamp(clock.now),
    }


def test_rule2_single_coding_spawn(agents: AgentTracker) -> None:
    message = feed(agents, "Started coding agent for feature #6")
    assert card(message) == {
        "agentIndex": 0,
        "agentName": "Spark",
        "agentType": "coding",
        "featureId": 6,
        "featureIds": [6],
        "featureName": "Feature #6",
        "state": "thinking",
        "thought": "Starting work...",
    }


@pytest.mark.parametrize(
    "line",
    [
        "Started testing agent for features [7] (PID 50111)",
        "Started testing agent for feature #7 (PID 48213)",
    ],
    ids=["current-format", "older-format"],
)
def test_rule3_testing_spawn(agents: AgentTracker, line: str) -> None:
    message = feed(agents, line)
    assert card(message) == {
        "agentIndex": 0,
        "agentName": "Spark",
        "agentType": "testing",
        "featureId": 7,
        "featureIds": [7],
        "featureName": "Feature #7",
        "state": "thinking",
        "thought": "Starting work...",
    }


def test_rule3_testing_spawn_for_several_features_is_a_batch(agents: AgentTracker) -> None:
    message = feed(agents, "Started testing agent for features [1,2,3] (PID 48213)")
    assert (message["agentType"], message["featureIds"], message["featureName"]) == (
        "testing",
        [1, 2, 3],
        "Features #1, #2, #3",
    )
    assert message["thought"] == "Starting batch work..."


# -- agent rules 4-7: completions -------------------------------------------------


def test_rule4_completes_the_testing_agent_not_the_coding_one(agents: AgentTracker) -> None:
    feed(agents, "Started coding agent for feature #1")
    feed(agents, "Started testing agent for features [1] (PID 9)")
    message = feed(agents, "Feature #1 testing completed")
    assert (message["agentIndex"], message["agentType"]) == (1, "testing")
    assert (message["state"], message["thought"]) == ("success", "Completed successfully!")
    assert agents.owner_of(1) == 0
    assert agents.active_count == 1


def test_rule4_testing_failure_of_a_batch(agents: AgentTracker) -> None:
    feed(agents, "Started testing agent for features [1,2,3] (PID 9)")
    message = feed(agents, "Feature #2 testing failed")
    assert (message["agentIndex"], message["state"]) == (0, "error")
    assert message["thought"] == "Batch failed to complete"


def test_rule5_completes_the_coding_batch(agents: AgentTracker) -> None:
    feed(agents, "Started coding agent for features #1, #2, #3")
    message = feed(agents, "Features #1, #2, #3 completed")
    assert (message["agentIndex"], message["featureIds"]) == (0, [1, 2, 3])
    assert (message["state"], message["thought"]) == ("success", "Batch completed successfully!")
    assert agents.active_count == 0


def test_rule5_prefers_the_agent_whose_primary_is_the_first_id(agents: AgentTracker) -> None:
    feed(agents, "Started coding agent for features #2, #3")
    feed(agents, "Started coding agent for features #1, #2")
    message = feed(agents, "Features #2, #3 failed")
    assert (message["agentIndex"], message["state"]) == (0, "error")
    assert message["thought"] == "Batch failed to complete"
    assert agents.owner_of(1) == 1


def test_rule5_falls_back_to_an_agent_owning_the_first_id(agents: AgentTracker) -> None:
    feed(agents, "Started coding agent for features #1, #2")
    message = feed(agents, "Features #2, #5 completed")
    assert (message["agentIndex"], message["state"]) == (0, "success")


def test_rule6_giving_up_changes_nothing(agents: AgentTracker) -> None:
    feed(agents, "Started coding agent for feature #4")
    before = agents.snapshot()
    assert agents.feed("Feature #4 has failed 3 times, will not retry") is None
    assert agents.snapshot() == before


def test_rule7_completes_the_coding_agent_not_the_testing_one(agents: AgentTracker) -> None:
    feed(agents, "Started testing agent for features [6] (PID 9)")
    feed(agents, "Started coding agent for feature #6")
    message = feed(agents, "Feature #6 completed")
    assert (message["agentIndex"], message["agentType"]) == (1, "coding")
    assert (message["state"], message["thought"]) == ("success", "Completed successfully!")
    assert agents.owner_of(6) == 0


def test_rule7_is_anchored_at_the_line_end(agents: AgentTracker) -> None:
    feed(agents, "Started coding agent for feature #6")
    assert agents.feed("Feature #6 completed successfully") is None
    assert agents.active_count == 1


def test_rule7_failure_of_a_batch_member(agents: AgentTracker) -> None:
    feed(agents, "Started coding agent for features #4, #5")
    message = feed(agents, "Feature #5 failed")
    assert (message["agentIndex"], message["state"]) == (0, "error")
    assert message["thought"] == "Batch failed to complete"


@pytest.mark.parametrize(
    ("line", "agent_type", "feature_ids", "feature_name", "state", "thought"),
    [
        ("Feature #3 testing completed", "testing", [3], "Feature #3", "success",
         "Completed successfully!"),
        ("Features #4, #5 failed", "coding", [4, 5], "Features #4, #5", "error",
         "Batch failed to complete"),
        ("Feature #4 failed", "coding", [4], "Feature #4", "error", "Failed to complete"),
    ],
    ids=["rule4", "rule5", "rule7"],
)  # fmt: skip
def test_completion_of_an_untracked_agent_is_synthetic(
    agents: AgentTracker,
    line: str,
    agent_type: str,
    feature_ids: list[int],
    feature_name: str,
    state: str,
    thought: str,
) -> None:
    assert card(feed(agents, line)) == {
        "agentIndex": -1,
        "agentName": "Unknown",
        "agentType": agent_type,
        "featureId": feature_ids[0],
        "featureIds": feature_ids,
        "featureName": feature_name,
        "state": state,
        "thought": thought,
        "synthetic": True,
    }


def test_synthetic_completion_does_not_create_an_agent(agents: AgentTracker) -> None:
    feed(agents, "Feature #4 failed")
    assert agents.active_count == 0
    assert feed(agents, "Started coding agent for feature #4")["agentIndex"] == 0


# -- AutoForge 0.1.22: batches of up to 15 features (69d9313 had at most 3) --------

FIFTEEN = list(range(1, 16))
FIFTEEN_HASHED = ", ".join(f"#{i}" for i in FIFTEEN)
"""``#1, #2, ..., #15``: a full 0.1.22 coding batch as the orchestrator prints it."""
TESTING_FIFTEEN = [5, 12, 18, 21, 22, 30, 31, 40, 41, 42, 50, 61, 77, 80, 99]


def test_a_coding_batch_of_fifteen_is_one_agent_with_every_id(agents: AgentTracker) -> None:
    message = feed(agents, f"Started coding agent for features {FIFTEEN_HASHED}")
    assert (message["agentIndex"], message["featureId"], message["featureIds"]) == (0, 1, FIFTEEN)
    assert message["featureName"] == f"Features {FIFTEEN_HASHED}"
    assert message["thought"] == "Starting batch work..."


def test_a_testing_batch_of_fifteen_in_the_bracket_format(agents: AgentTracker) -> None:
    ids = ",".join(map(str, TESTING_FIFTEEN))
    message = feed(agents, f"Started testing agent for features [{ids}] (PID 123)")
    assert (message["agentType"], message["featureIds"]) == ("testing", TESTING_FIFTEEN)


def test_the_fifteenth_member_of_a_batch_is_owned_by_the_batch_agent(
    agents: AgentTracker,
) -> None:
    feed(agents, f"Started coding agent for features {FIFTEEN_HASHED}")
    message = feed(agents, "[Feature #15] Reading the cart reducer")
    assert (message["agentIndex"], message["featureIds"]) == (0, FIFTEEN)
    assert agents.active_count == 1


def test_a_batch_of_fifteen_completes_as_one(agents: AgentTracker) -> None:
    feed(agents, f"Started coding agent for features {FIFTEEN_HASHED}")
    message = feed(agents, f"Features {FIFTEEN_HASHED} completed")
    assert (message["agentIndex"], message["featureIds"], message["state"]) == (
        0,
        FIFTEEN,
        "success",
    )
    assert agents.active_count == 0


def test_a_testing_batch_completes_by_its_primary_id(agents: AgentTracker) -> None:
    ids = ",".join(map(str, TESTING_FIFTEEN))
    feed(agents, f"Started testing agent for features [{ids}] (PID 123)")
    message = feed(agents, "Feature #5 testing failed")
    assert (message["agentIndex"], message["state"]) == (0, "error")
    assert message["thought"] == "Batch failed to complete"
    assert agents.active_count == 0


def test_giving_up_on_every_member_of_a_batch_keeps_the_agent(agents: AgentTracker) -> None:
    feed(agents, f"Started coding agent for features {FIFTEEN_HASHED}")
    for i in FIFTEEN:
        assert agents.feed(f"Feature #{i} has failed 3 times, will not retry") is None
    assert agents.active_count == 1
    assert feed(agents, f"Features {FIFTEEN_HASHED} failed")["agentIndex"] == 0


def test_a_batch_of_fifteen_counts_as_one_coding_agent(orch: OrchestratorTracker) -> None:
    spawn = feed(orch, f"Started coding agent for features {FIFTEEN_HASHED}")
    done = feed(orch, f"Features {FIFTEEN_HASHED} completed")
    assert (spawn["codingAgents"], spawn["featureId"]) == (1, 1)
    assert (done["eventType"], done["codingAgents"], done["featureId"]) == (
        "coding_complete",
        0,
        1,
    )


def test_a_testing_batch_counts_as_one_testing_agent(orch: OrchestratorTracker) -> None:
    spawn = feed(orch, "Started testing agent for features [5,12,18] (PID 123)")
    done = feed(orch, "Feature #5 testing completed")
    assert (spawn["testingAgents"], spawn["featureId"]) == (1, 5)
    assert (done["eventType"], done["testingAgents"]) == ("testing_complete", 0)


def test_giving_up_is_not_a_completion_for_the_orchestrator(orch: OrchestratorTracker) -> None:
    feed(orch, "Started coding agent for features #4, #5")
    assert orch.feed("Feature #4 has failed 3 times, will not retry") is None
    assert orch.state()["codingAgents"] == 1


@pytest.mark.parametrize(
    "line",
    [
        "  ALL FEATURES COMPLETE!",
        "  ALL FEATURES ALREADY COMPLETE!",
        "  \N{PARTY POPPER} PROJECT COMPLETE - ALL FEATURES PASSING!",
    ],
)
def test_an_agents_upper_case_completion_banner_is_not_all_complete(
    orch: OrchestratorTracker, line: str
) -> None:
    """0.1.22's agent prints these (auto-improve runs print them unprefixed); only the
    orchestrator's ``All features complete!`` ends the run."""
    assert orch.feed(line) is None
    assert orch.state()["state"] == "idle"


# -- agent rule 8: activity --------------------------------------------------------


def test_rule8_activity_goes_to_the_owning_batch_agent(agents: AgentTracker) -> None:
    feed(agents, "Started coding agent for features #1, #2, #3")
    message = feed(agents, "[Feature #3] [Tool: Edit]")
    assert (message["agentIndex"], message["featureIds"]) == (0, [1, 2, 3])
    assert (message["state"], message["thought"]) == ("working", "[Tool: Edit]")
    assert agents.active_count == 1


def test_rule8_unowned_feature_creates_an_implicit_coding_agent(agents: AgentTracker) -> None:
    message = feed(agents, "[Feature #9] Reading the router")
    assert card(message) == {
        "agentIndex": 0,
        "agentName": "Spark",
        "agentType": "coding",
        "featureId": 9,
        "featureIds": [9],
        "featureName": "Feature #9",
        "state": "thinking",
        "thought": "the router",
    }
    assert agents.owner_of(9) == 0


def test_rule8_first_activity_of_an_implicit_agent_emits_even_without_thought(
    agents: AgentTracker,
) -> None:
    message = feed(agents, "[Feature #9]")
    assert (message["state"], message["thought"]) == ("working", None)


def test_rule8_activity_prefers_the_coding_owner(agents: AgentTracker) -> None:
    feed(agents, "Started testing agent for features [5] (PID 9)")
    feed(agents, "Started coding agent for feature #5")
    assert feed(agents, "[Feature #5] Writing tests")["agentIndex"] == 1


def test_rule8_activity_goes_to_a_testing_owner(agents: AgentTracker) -> None:
    feed(agents, "Started testing agent for features [1,2,3] (PID 9)")
    message = feed(agents, "[Feature #2] [Tool: Bash]")
    assert (message["agentIndex"], message["agentType"], message["state"]) == (
        0,
        "testing",
        "testing",
    )


def test_line_matching_no_rule_is_ignored(agents: AgentTracker) -> None:
    assert agents.feed("Progress: 0/24 tests passing (0.0%)") is None
    assert agents.active_count == 0


ACTIVITY_ROWS = [
    ("[Tool: Read]", "thinking", "[Tool: Read]"),
    ("[Tool: NotebookEdit]", "working", "[Tool: NotebookEdit]"),
    ("[Tool: Bash]", "testing", "[Tool: Bash]"),
    ("[Tool:Grep]", "thinking", "[Tool:Grep]"),
    ("[Tool: mcp__features__claim]", "working", "mcp__features__claim"),
    ("Looking at the current App component", "thinking", "the current App component"),
    ("Implementing the todo store", "working", "the todo store"),
    ("Verifying the add button", "testing", "the add button"),
    ("Unable to open the database", "struggling", "open the database"),
    ("12 tests passed", "testing", "12 tests passed"),
    ("build FAILED", "struggling", "build FAILED"),
]


@pytest.mark.parametrize(
    ("content", "state", "thought"), ACTIVITY_ROWS, ids=[f"row{i}" for i in range(1, 12)]
)
def test_activity_table_row(agents: AgentTracker, content: str, state: str, thought: str) -> None:
    message = feed(agents, f"[Feature #1] {content}")
    assert (message["state"], message["thought"]) == (state, thought)


def test_activity_without_a_hit_is_working_without_thought(agents: AgentTracker) -> None:
    feed(agents, "Started coding agent for feature #1")
    message = feed(agents, "[Feature #1] Model: claude-opus-4-6")
    assert (message["state"], message["thought"]) == ("working", "Starting work...")


def test_activity_first_hit_decides(agents: AgentTracker) -> None:
    message = feed(agents, "[Feature #1] [Tool: Read] after Error loading")
    assert message["state"] == "thinking"


def test_activity_patterns_ignore_case(agents: AgentTracker) -> None:
    message = feed(agents, "[Feature #1] I'll begin by reading the spec")
    assert (message["state"], message["thought"]) == ("thinking", "the spec")


def test_activity_content_thought_is_the_first_100_chars(agents: AgentTracker) -> None:
    content = "[Tool: Bash] " + "x" * 300
    assert feed(agents, f"[Feature #1] {content}")["thought"] == content[:100]


def test_activity_group_thought_is_capped_at_200_chars(agents: AgentTracker) -> None:
    message = feed(agents, "[Feature #1] Reading " + "y" * 300)
    assert message["thought"] == "y" * 200


# -- no storm ------------------------------------------------------------------------


def test_repeated_identical_activity_emits_once(agents: AgentTracker) -> None:
    feed(agents, "Started coding agent for feature #1")
    results = [agents.feed("[Feature #1] [Tool: Bash]") for _ in range(5)]
    assert results[0] is not None
    assert results[1:] == [None] * 4


def test_same_state_with_new_thought_emits(agents: AgentTracker) -> None:
    feed(agents, "[Feature #1] Reading the router")
    message = feed(agents, "[Feature #1] Reading the store")
    assert (message["state"], message["thought"]) == ("thinking", "the store")


def test_same_state_without_thought_does_not_emit(agents: AgentTracker) -> None:
    feed(agents, "[Feature #1] Model: x")
    assert agents.feed("[Feature #1] Agent type: coding") is None


def test_state_change_without_thought_carries_the_last_thought(agents: AgentTracker) -> None:
    feed(agents, "[Feature #1] Reading the router")
    message = feed(agents, "[Feature #1]    Input: {'pattern': 'src/**'}")
    assert (message["state"], message["thought"]) == ("working", "the router")


# -- owner_of, indices, reset, snapshot ------------------------------------------------


def test_owner_of_prefers_coding_over_testing(agents: AgentTracker) -> None:
    feed(agents, "Started coding agent for features #1, #2")
    feed(agents, "Started testing agent for features [2,3] (PID 9)")
    assert (agents.owner_of(2), agents.owner_of(3), agents.owner_of(4)) == (0, 1, None)


def test_agent_of_finds_an_agent_of_the_asked_type_or_else_the_owner(
    agents: AgentTracker,
) -> None:
    feed(agents, "Started coding agent for features #1, #2")
    feed(agents, "Started testing agent for features [2,3] (PID 9)")
    testing = agents.agent_of(2, "testing")
    assert testing is not None
    assert (testing["agentIndex"], testing["agentType"]) == (1, "testing")
    assert agents.agent_of(3, "coding") is None
    batch = agents.agent_of(2)
    assert batch is not None and batch["featureName"] == "Features #1, #2"
    assert agents.agent_of(4) is None


def test_owner_of_prefers_the_newest_of_two_coding_owners(agents: AgentTracker) -> None:
    """A completion line that never came leaves a stale agent; the live one is the newer."""
    feed(agents, "Started coding agent for feature #3")
    feed(agents, "Started coding agent for features #3, #4")
    assert agents.owner_of(3) == 1
    assert feed(agents, "[Feature #3] Reading the router")["agentIndex"] == 1


def test_indices_are_not_reused_after_completion(agents: AgentTracker) -> None:
    feed(agents, "Started coding agent for feature #1")
    feed(agents, "Feature #1 completed")
    assert feed(agents, "Started coding agent for feature #1")["agentIndex"] == 1


def test_reset_forgets_agents_but_keeps_counting(agents: AgentTracker) -> None:
    feed(agents, "Started coding agent for feature #1")
    feed(agents, "[Feature #2] hello")
    agents.reset()
    assert (agents.active_count, agents.owner_of(1), agents.snapshot()) == (0, None, [])
    assert feed(agents, "Started coding agent for feature #1")["agentIndex"] == 2


def test_snapshot_has_current_states_in_index_order(agents: AgentTracker, clock: FakeClock) -> None:
    feed(agents, "Started coding agent for features #1, #2")
    feed(agents, "Started testing agent for features [3] (PID 9)")
    last = feed(agents, "[Feature #2] Reading the router")
    clock.now += 60
    snapshot = agents.snapshot()
    assert [m["agentIndex"] for m in snapshot] == [0, 1]
    assert card(snapshot[0]) == card(last)
    assert (snapshot[1]["state"], snapshot[1]["thought"]) == ("thinking", "Starting work...")
    assert {m["timestamp"] for m in snapshot} == {iso_timestamp(clock.now)}


def test_snapshot_drops_completed_agents(agents: AgentTracker) -> None:
    feed(agents, "Started coding agent for feature #1")
    feed(agents, "Started coding agent for feature #2")
    feed(agents, "Feature #1 completed")
    assert [m["featureId"] for m in agents.snapshot()] == [2]


def test_update_timestamps_come_from_the_clock(agents: AgentTracker, clock: FakeClock) -> None:
    clock.now = 0.5
    assert feed(agents, "[Feature #1] x")["timestamp"] == "1970-01-01T00:00:00.500000Z"


# -- orchestrator ------------------------------------------------------------------


ORCHESTRATOR_ROWS = [
    (
        "Running initializer agent...",
        "init_start",
        "initializing",
        "Initializing project features...",
    ),
    (
        "  INITIALIZATION COMPLETE - Starting feature loop",
        "init_complete",
        "scheduling",
        "Initialization complete, preparing to schedule features",
    ),
    (
        "[DEBUG] Spawning loop: 4 ready, 2 slots available",
        "capacity_check",
        "scheduling",
        "4 features ready, 2 slots available",
    ),
    (
        "[DEBUG] Failed to start feature #9: At max total agents (10/10)",
        "at_capacity",
        "monitoring",
        "At maximum capacity, monitoring active agents",
    ),
    (
        "[DEBUG] Starting feature 1/2: #5 - User can add a todo",
        "feature_start",
        "spawning",
        "Preparing Feature #5: User can add a todo",
    ),
    (
        "Started coding agent for features #4, #5",
        "coding_spawn",
        "spawning",
        "Spawned coding agent for Feature #4",
    ),
    (
        "Started testing agent for features [7] (PID 50111)",
        "testing_spawn",
        "spawning",
        "Spawned testing agent for Feature #7",
    ),
    (
        "Feature #1 testing completed",
        "testing_complete",
        "monitoring",
        "Testing agent finished Feature #1",
    ),
    ("Features #4, #5 failed", "coding_complete", "monitoring", "Coding agent finished Feature #4"),
    ("All features complete!", "all_complete", "complete", "All features complete!"),
    (
        "Graceful pause requested - draining running agents...",
        "drain_start",
        "draining",
        "Draining active agents...",
    ),
    ("All agents drained - paused.", "drain_complete", "paused", "All agents drained. Paused."),
    (
        "Resuming from graceful pause...",
        "drain_resume",
        "scheduling",
        "Resuming feature scheduling",
    ),
]


@pytest.mark.parametrize(
    ("line", "event_type", "state", "message"),
    ORCHESTRATOR_ROWS,
    ids=[row[1] for row in ORCHESTRATOR_ROWS],
)
def test_orchestrator_row(
    orch: OrchestratorTracker, clock: FakeClock, line: str, event_type: str, state: str,
    message: str,
) -> None:  # fmt: skip
    update = feed(orch, line)
    assert set(update) - {"featureId", "featureName"} == ORCHESTRATOR_KEYS
    assert (update["type"], update["eventType"], update["state"], update["message"]) == (
        "orchestrator_update",
        event_type,
        state,
        message,
    )
    assert update["timestamp"] == iso_timestamp(clock.now)


def test_orchestrator_starts_idle_with_default_concurrency(orch: OrchestratorTracker) -> None:
    assert orch.state() == {
        "state": "idle",
        "codingAgents": 0,
        "testingAgents": 0,
        "maxConcurrency": 3,
        "readyCount": 0,
        "blockedCount": 0,
    }


def test_orchestrator_matching_is_case_sensitive(orch: OrchestratorTracker) -> None:
    assert orch.feed("No features found - running initializer agent first...") is None
    assert orch.state()["state"] == "idle"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("[DEBUG] Spawning loop: 4 ready, 2 slots available", ("scheduling", 4)),
        ("[DEBUG] Spawning loop: 0 ready, 2 slots available", ("monitoring", 0)),
    ],
    ids=["ready", "nothing-ready"],
)
def test_capacity_check_sets_ready_count(
    orch: OrchestratorTracker, line: str, expected: tuple[str, int]
) -> None:
    update = feed(orch, line)
    assert (update["state"], update["readyCount"]) == expected
    assert (orch.state()["state"], orch.state()["readyCount"]) == expected


def test_feature_start_carries_feature_id_and_name(orch: OrchestratorTracker) -> None:
    update = feed(orch, "[DEBUG] Starting feature 1/2: #5 - User can add a todo")
    assert (update["featureId"], update["featureName"]) == (5, "User can add a todo")


@pytest.mark.parametrize(
    ("line", "counter", "feature_id"),
    [
        ("Started coding agent for feature #6", "codingAgents", 6),
        ("Started coding agent for features #1, #2, #3", "codingAgents", 1),
        ("Started testing agent for features [7] (PID 50111)", "testingAgents", 7),
        ("Started testing agent for feature #3 (PID 48213)", "testingAgents", 3),
    ],
)
def test_spawn_increments_its_counter(
    orch: OrchestratorTracker, line: str, counter: str, feature_id: int
) -> None:
    first = feed(orch, line)
    second = feed(orch, line)
    assert (first[counter], second[counter], second["featureId"]) == (1, 2, feature_id)
    assert "featureName" not in second


@pytest.mark.parametrize(
    ("spawn", "done", "counter"),
    [
        ("Started testing agent for features [1] (PID 9)", "Feature #1 testing failed",
         "testingAgents"),
        ("Started coding agent for feature #6", "Feature #6 completed", "codingAgents"),
        ("Started coding agent for features #4, #5", "Features #4, #5 completed",
         "codingAgents"),
    ],
    ids=["testing", "coding-single", "coding-batch"],
)  # fmt: skip
def test_completion_decrements_its_counter(
    orch: OrchestratorTracker, spawn: str, done: str, counter: str
) -> None:
    feed(orch, spawn)
    feed(orch, spawn)
    assert feed(orch, done)[counter] == 1


def test_completion_is_anchored_at_the_line_start(orch: OrchestratorTracker) -> None:
    assert orch.feed("Note: Feature #6 completed") is None


@pytest.mark.parametrize(
    "line", ["Feature #4 failed", "Features #4, #5 completed", "Feature #1 testing completed"]
)
def test_counters_never_go_below_zero(orch: OrchestratorTracker, line: str) -> None:
    update = feed(orch, line)
    assert (update["codingAgents"], update["testingAgents"]) == (0, 0)


def test_blocked_features_sets_count_without_event(orch: OrchestratorTracker) -> None:
    assert orch.feed("[DEBUG] 5 blocked by dependencies") is None
    assert orch.state()["blockedCount"] == 5
    assert feed(orch, "Running initializer agent")["blockedCount"] == 5


def test_blocked_features_stops_the_chain(orch: OrchestratorTracker) -> None:
    assert orch.feed("2 blocked by dependencies, All features complete") is None
    assert orch.state()["state"] == "idle"


@pytest.mark.parametrize("done", ["All features complete!", "All agents drained - paused."])
def test_completion_of_everything_zeroes_agent_counts(orch: OrchestratorTracker, done: str) -> None:
    feed(orch, "Started coding agent for feature #1")
    feed(orch, "Started testing agent for features [2] (PID 9)")
    update = feed(orch, done)
    assert (update["codingAgents"], update["testingAgents"]) == (0, 0)


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("Max concurrency: 2 coding agents", 2),
        ("[ORCHESTRATOR] run_parallel_orchestrator called with max_concurrency=5", 5),
    ],
    ids=["settings-banner", "call-trace"],
)
def test_max_concurrency_side_rule_sets_value_without_event(
    orch: OrchestratorTracker, line: str, value: int
) -> None:
    assert orch.feed(line) is None
    assert orch.state()["maxConcurrency"] == value


def test_max_concurrency_side_rule_applies_before_the_chain(orch: OrchestratorTracker) -> None:
    update = feed(orch, "[DEBUG] Spawning loop: 4 ready, 2 slots available, max_concurrency=7")
    assert (update["eventType"], update["maxConcurrency"]) == ("capacity_check", 7)


def test_every_event_carries_the_counters_after_the_change(orch: OrchestratorTracker) -> None:
    orch.feed("Max concurrency: 2 coding agents")
    orch.feed("1 blocked by dependencies")
    feed(orch, "[DEBUG] Spawning loop: 3 ready, 2 slots available")
    update = feed(orch, "Started coding agent for feature #1")
    assert [update[key] for key in COUNTERS] == [1, 0, 2, 3, 1]
    assert {key: update[key] for key in COUNTERS} == {
        key: value for key, value in orch.state().items() if key in COUNTERS
    }


def test_reset_keeps_max_concurrency(orch: OrchestratorTracker) -> None:
    orch.feed("Max concurrency: 2 coding agents")
    feed(orch, "Started coding agent for feature #1")
    orch.feed("4 blocked by dependencies")
    feed(orch, "[DEBUG] Spawning loop: 3 ready, 2 slots available")
    orch.reset()
    assert orch.state() == {
        "state": "idle",
        "codingAgents": 0,
        "testingAgents": 0,
        "maxConcurrency": 2,
        "readyCount": 0,
        "blockedCount": 0,
    }


@pytest.mark.parametrize("line", NARRATIVE_LINES)
def test_agent_narrative_never_moves_the_orchestrator(line: str) -> None:
    tracker = OrchestratorTracker(FakeClock())
    assert tracker.feed(line) is None
    assert tracker.state() == OrchestratorTracker(FakeClock()).state()


@pytest.mark.parametrize(
    "content",
    [
        "All features complete, great work!",
        "Running initializer agent... just kidding",
        "All agents drained - paused.",
    ],
)
def test_narrative_lookalike_would_move_the_orchestrator_unprefixed(content: str) -> None:
    """Guards the test above: the corpus has lines that only the prefix rule stops."""
    assert f"[Feature #2] {content}" in NARRATIVE_LINES
    assert OrchestratorTracker(FakeClock()).feed(content) is not None


def test_feature_prefixed_max_concurrency_is_ignored(orch: OrchestratorTracker) -> None:
    assert orch.feed("[Feature #1] max_concurrency=9") is None
    assert orch.state()["maxConcurrency"] == 3


@pytest.mark.parametrize(
    "line",
    [
        "Started coding agent for feature #" + "9" * 5000,
        "[Feature #" + "1" * 5000 + "] Reading",
        "Features #1, #" + "2" * 5000 + " completed",
    ],
    ids=["spawn", "activity", "batch-done"],
)
def test_agent_line_with_absurdly_long_id_is_ignored(agents: AgentTracker, line: str) -> None:
    assert agents.feed(line) is None
    assert agents.active_count == 0


@pytest.mark.parametrize(
    "line",
    [
        "Started coding agent for feature #" + "9" * 5000,
        "[DEBUG] Spawning loop: " + "4" * 5000 + " ready, 2 slots available",
        "max_concurrency=" + "7" * 5000,
        "9" * 5000 + " blocked by dependencies",
    ],
    ids=["spawn", "capacity", "max-concurrency", "blocked"],
)
def test_orchestrator_line_with_absurdly_long_number_is_ignored(
    orch: OrchestratorTracker, line: str
) -> None:
    before = orch.state()
    assert orch.feed(line) is None
    assert orch.state() == before


# -- property ----------------------------------------------------------------------

_ids = st.lists(st.integers(0, 30), min_size=1, max_size=4)
_TEMPLATES = st.one_of(
    _ids.map(lambda ids: "Started coding agent for features " + ", ".join(f"#{i}" for i in ids)),
    _ids.map(lambda ids: f"Started coding agent for feature #{ids[0]}"),
    _ids.map(lambda ids: f"Started testing agent for features [{','.join(map(str, ids))}] (PID 1)"),
    _ids.map(lambda ids: f"Started testing agent for feature #{ids[0]} (PID 1)"),
    _ids.map(lambda ids: f"Feature #{ids[0]} testing completed"),
    _ids.map(lambda ids: "Features " + ", ".join(f"#{i}" for i in ids) + " failed"),
    _ids.map(lambda ids: f"Feature #{ids[0]} completed"),
    st.tuples(_ids, st.sampled_from([c for c, _, _ in ACTIVITY_ROWS])).map(
        lambda pair: f"[Feature #{pair[0][0]}] {pair[1]}"
    ),
)
_LINE = st.one_of(st.text(max_size=80), st.sampled_from(CORPUS_LINES), _TEMPLATES)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(_LINE, st.none()), max_size=40))
def test_arbitrary_lines_keep_the_trackers_sound(lines: list[str | None]) -> None:
    """None stands for a reset (stopped/crashed) between lines."""
    clock = FakeClock()
    agents, orch = AgentTracker(clock), OrchestratorTracker(clock)
    updates: list[Msg] = []
    for line in lines:
        if line is None:
            agents.reset()
            orch.reset()
            continue
        if (update := agents.feed(line)) is not None:
            updates.append(update)
        if (event := orch.feed(line)) is not None:
            assert set(event) - ORCHESTRATOR_KEYS <= {"featureId", "featureName"}
            assert set(event) >= ORCHESTRATOR_KEYS
            counts = (event["codingAgents"], event["testingAgents"], event["maxConcurrency"])
            assert min(*counts, event["readyCount"], event["blockedCount"]) >= 0
        assert all(value >= 0 for value in orch.state().values() if isinstance(value, int))
        assert agents.active_count == len(agents.snapshot())
    for update in updates + agents.snapshot():
        synthetic = update.get("synthetic", False)
        assert set(update) == AGENT_KEYS | ({"synthetic"} if synthetic else set())
        assert update["agentName"] in (*MASCOTS, "Unknown")
        assert update["state"] in AGENT_STATES
        assert (update["agentIndex"] == -1) == synthetic


# -- restart: to_state / from_state (STATE.md 2) ------------------------------

RESET = "<reset>"


def _restart_pool() -> list[str]:
    """Corpus lines plus every orchestrator table line and counter setters, so each
    piece of tracker state changes often in a short random run."""
    return [
        *CORPUS_LINES,
        *(row[0] for row in ORCHESTRATOR_ROWS),
        "4 blocked by dependencies",
        "Max concurrency: 7 coding agents",
        "[DEBUG] Spawning loop: 5 ready, 2 slots",
        RESET,
    ]


def _restored_twins_agree(lines: list[str], cut: int) -> None:
    """Feed ``lines`` to a tracker pair; at ``cut`` one of them is stored as JSON and
    restored into fresh objects. Both must give identical updates from then on."""
    clock = lambda: 1_700_000_000.0  # noqa: E731
    twin_agents, twin_orch = AgentTracker(clock), OrchestratorTracker(clock)
    agents, orch = AgentTracker(clock), OrchestratorTracker(clock)
    for number, line in enumerate(lines):
        if number == cut:
            stored = json.loads(json.dumps({"a": agents.to_state(), "o": orch.to_state()}))
            agents = AgentTracker.from_state(stored["a"], clock)
            orch = OrchestratorTracker.from_state(stored["o"], clock)
            assert agents.snapshot() == twin_agents.snapshot()
            assert orch.state() == twin_orch.state()
        if line == RESET:
            for tracker in (agents, orch, twin_agents, twin_orch):
                tracker.reset()
            continue
        assert agents.feed(line) == twin_agents.feed(line)
        assert orch.feed(line) == twin_orch.feed(line)
    assert agents.to_state() == twin_agents.to_state()
    assert orch.to_state() == twin_orch.to_state()


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.sampled_from(_restart_pool()), min_size=1, max_size=120),
    st.integers(min_value=0, max_value=120),
)
def test_restored_trackers_continue_like_their_unrestored_twins(lines: list[str], cut: int) -> None:
    _restored_twins_agree(lines, min(cut, len(lines) - 1))


def test_a_restored_tracker_keeps_names_and_the_next_index() -> None:
    tracker = AgentTracker()
    for feature in range(1, 24):  # past the 20 mascots
        tracker.feed(f"Started coding agent for feature #{feature}")
    tracker.feed("Feature #5 completed")
    restored = AgentTracker.from_state(json.loads(json.dumps(tracker.to_state())))
    assert [m["agentName"] for m in restored.snapshot()] == [
        m["agentName"] for m in tracker.snapshot()
    ]
    spawned = restored.feed("Started testing agent for feature #99")
    assert spawned is not None
    assert (spawned["agentIndex"], spawned["agentName"]) == (23, MASCOTS[3])


@pytest.mark.parametrize(
    "state",
    [
        {"agents": [], "next_index": "3"},
        {"agents": [{"index": 0}], "next_index": 1},
        {
            "agents": [
                {"index": 0, "name": "Spark", "type": "robot", "features": [1], "state": "x"}
            ],
            "next_index": 1,
        },
        {"agents": [], "next_index": True},
    ],
)
def test_a_tracker_state_that_does_not_fit_is_refused(state: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="tracker state"):
        AgentTracker.from_state(state)


def test_an_orchestrator_state_that_does_not_fit_is_refused() -> None:
    state = OrchestratorTracker().to_state()
    del state["ready"]
    with pytest.raises(ValueError, match="'ready' is not int"):
        OrchestratorTracker.from_state(state)


# -- fold: the needle test before a case-insensitive pattern ------------------------


def test_fold_maps_every_case_twin_of_a_needle_character_to_it() -> None:
    """A case-insensitive (Unicode) pattern can only hit text whose fold holds its
    lowered literal: every character that an ASCII letter, ``[``, ``]``, ``:`` or a
    space matches folds to it, whatever surrounds it (İ lowers to two characters)."""
    needle_char = re.compile(r"[a-z\[\]: ]", re.IGNORECASE)
    twins = [chr(c) for c in range(sys.maxunicode + 1) if needle_char.fullmatch(chr(c))]
    for char in twins:
        [plain] = [
            p for p in string.ascii_lowercase + "[]: " if re.fullmatch(re.escape(p), char, re.I)
        ]
        assert fold(f"é{char}x") == f"é{plain}x", hex(ord(char))
    assert len(twins) == 52 + 4 + 4  # ASCII letters, İ ı ſ K, and the punctuation itself


def test_the_one_search_pre_filter_finds_every_orchestrator_needle() -> None:
    """``_ANY_NEEDLE`` is written by hand for speed: it must still let every needle through."""
    needles = [needle for needle, _ in trackers._MAX_CONCURRENCY]
    needles += [needle for _, needle, _, _ in trackers._CHAIN]
    assert [n for n in needles if trackers._ANY_NEEDLE.search(n) is None] == []
