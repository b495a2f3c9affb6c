"""The line pipelines (LINES.md 1, 4, 5): raw lines and statuses in, wire events out."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from plain import Msg
from test_security import leaked_secrets, secretish_text

from trio_ws.core.messages import AgentUpdateEvent, DevServerStatusEvent, Event
from trio_ws.core.pipeline import LINE_CAP, AgentPipeline, DevPipeline, sanitize
from trio_ws.core.protocol import AGENT_STATUSES, DEV_STATUSES, iso_timestamp

DATA = Path(__file__).parent.parent / "corpus"
EDGE_LINES = (DATA / "edge-cases.txt").read_text(encoding="utf-8").splitlines()
RUN_LINES = (DATA / "autoforge-run.txt").read_text(encoding="utf-8").splitlines()

BASE = 1_700_000_000.0


class FakeClock:
    """Advances one second per read, so every read is visible in the timestamps."""

    def __init__(self) -> None:
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return BASE + self.reads


def at(read: int) -> str:
    """The timestamp of the clock's ``read``-th reading."""
    return iso_timestamp(BASE + read)


def running_agent() -> AgentPipeline:
    pipeline = AgentPipeline(FakeClock())
    pipeline.set_status("running")
    return pipeline


def running_dev() -> DevPipeline:
    pipeline = DevPipeline(FakeClock())
    pipeline.set_status("running")
    return pipeline


def types(events: list[Msg]) -> list[str]:
    return [event["type"] for event in events]


def logged(events: list[Msg]) -> list[str]:
    return [event["line"] for event in events if event["type"] == "log"]


def line_of(event: Event) -> str:
    """The line of a ``log`` or ``dev_log`` event; fails on any other."""
    assert event["type"] == "log" or event["type"] == "dev_log", event
    return event["line"]


def agent_update_of(event: Event) -> AgentUpdateEvent:
    assert event["type"] == "agent_update", event
    return event


def dev_status_of(event: Event) -> DevServerStatusEvent:
    assert event["type"] == "dev_server_status", event
    return event


BANNER = [
    "=" * 80,
    "  AUTHENTICATION ERROR DETECTED",
    "=" * 80,
    "",
    "Claude CLI requires authentication to work.",
    "",
    "Option 1 (Recommended): Set an API key",
    "  export ANTHROPIC_API_KEY=your-key-here",
    "  Get a key at: https://console.anthropic.com/",
    "",
    "Option 2: Use subscription login",
    "  claude login",
    "",
    "  Note: Anthropic's policy may not permit using",
    "  subscription auth with third-party agents.",
    "  API key authentication is recommended.",
    "=" * 80,
]
"""AutoForge 0.1.22's AUTH_ERROR_HELP_SERVER, line for line (17 lines)."""
MISSING = object()
"""In an expected event: the key must not be there."""


def matches(event: Msg, expected: dict[str, Any]) -> bool:
    return all(
        key not in event if value is MISSING else event.get(key, MISSING) == value
        for key, value in expected.items()
    )


def assert_events(events: list[Msg], expected: list[dict[str, Any]]) -> None:
    assert len(events) == len(expected), events
    for event, want in zip(events, expected, strict=True):
        assert matches(event, want), (event, want)


# -- sanitize -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("abc \t", "abc"),
        ("abc\r", "abc"),
        ("abc\r\n", "abc"),
        ("  indented  ", "  indented"),
        ("", ""),
        (" \r", ""),
    ],
)
def test_sanitize_strips_trailing_whitespace_only(raw: str, clean: str) -> None:
    assert sanitize(raw) == clean


def test_sanitize_redacts() -> None:
    assert sanitize("password=hunter2  ") == "password=[REDACTED]"


def test_a_line_at_the_cap_is_kept_whole() -> None:
    line = "x" * LINE_CAP
    assert sanitize(line) == line


@pytest.mark.parametrize("length", [LINE_CAP + 1, LINE_CAP + 100, 10 * LINE_CAP, 200_000])
def test_a_long_line_keeps_its_head_and_counts_what_was_dropped(length: int) -> None:
    line = "".join(chr(ord("a") + i % 26) for i in range(length))
    capped = sanitize(line)
    assert len(capped) <= LINE_CAP
    head, marker, rest = capped.partition(" … [truncated ")
    assert marker
    assert rest.endswith(" chars]")
    dropped = int(rest.removesuffix(" chars]"))
    assert line.startswith(head)
    assert len(head) + dropped == length


@pytest.mark.parametrize("offset", [-40, -30, -25, -20, -10, -3, 0, 5])
def test_a_secret_at_the_cap_leaves_no_fragment(offset: int) -> None:
    secret = "sk-ant-" + "Q" * 60
    line = "x" * (LINE_CAP + offset) + " " + secret + " " + "y" * 1000
    capped = sanitize(line)
    assert len(capped) <= LINE_CAP
    assert "sk-" not in capped
    assert "Q" not in capped


def test_a_long_line_is_cut_at_the_start_of_the_word_it_would_split() -> None:
    line = "word " * 5000
    capped = sanitize(line)
    head, marker, rest = capped.partition(" … [truncated ")
    assert marker
    assert head.endswith("word ")
    assert len(head) + int(rest.removesuffix(" chars]")) == len(line)


def test_a_ten_megabyte_line_costs_what_its_capped_head_costs() -> None:
    # Redaction work in every word: before the cap came first this took seconds.
    line = "password=hunter2 " * 620_000
    pipeline = running_agent()
    start = time.perf_counter()
    events = pipeline.feed_line(line)
    assert time.perf_counter() - start < 0.5
    assert len(line_of(events[0])) <= LINE_CAP
    assert "hunter2" not in line_of(events[0])


def test_a_ten_megabyte_dev_line_is_capped() -> None:
    line = line_of(running_dev().feed_line("x" * 10_000_000)[0])
    head, _, rest = line.partition(" … [truncated ")
    assert len(line) <= LINE_CAP
    assert len(head) + int(rest.removesuffix(" chars]")) == 10_000_000


def test_a_line_that_redaction_makes_longer_still_fits_the_cap() -> None:
    line = "pwd=a " * (LINE_CAP // 6)
    capped = sanitize(line)
    assert len(capped) <= LINE_CAP
    assert "pwd=a" not in capped
    assert capped.endswith(" chars]")


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("bad \ud800 x", "bad \ufffd x"),
        ("\udfff", "\ufffd"),
        ("pair \ud83d\ude00 ok", "pair \U0001f600 ok"),
        ("é \udc80", "é \ufffd"),
    ],
)
def test_lone_surrogates_become_replacement_characters(raw: str, clean: str) -> None:
    line = line_of(running_agent().feed_line(raw)[0])
    assert line == clean
    line.encode("utf-8")


def test_a_dev_line_with_a_lone_surrogate_can_be_encoded() -> None:
    assert line_of(running_dev().feed_line("bad \ud800 x")[0]) == "bad \ufffd x"


def test_a_cut_through_a_surrogate_pair_leaves_a_replacement_character() -> None:
    # 16459 characters: the marker takes 26, so the cut falls between the two halves.
    line = "x" * (LINE_CAP - 27) + "\ud83d\ude00" + "y" * 100
    capped = sanitize(line)
    capped.encode("utf-8")
    assert capped.startswith("x" * (LINE_CAP - 27) + "\ufffd … [truncated ")


def test_an_empty_line_is_a_real_log_line() -> None:
    events = running_agent().feed_line("\r")
    assert_events(events, [{"type": "log", "line": "", "timestamp": at(1)}])


# -- status literals ----------------------------------------------------------


def test_drain_literal_sets_paused_graceful() -> None:
    pipeline = running_agent()
    events = pipeline.feed_line("All agents drained - paused.")
    assert events[0] == {"type": "agent_status", "status": "paused_graceful", "timestamp": at(1)}
    assert pipeline.status == "paused_graceful"


def test_resume_literal_sets_running() -> None:
    pipeline = running_agent()
    pipeline.feed_line("All agents drained - paused.")
    events = pipeline.feed_line("Resuming from graceful pause...")
    assert events[0] == {"type": "agent_status", "status": "running", "timestamp": at(2)}
    assert pipeline.status == "running"


def test_a_status_literal_anywhere_in_the_line_counts() -> None:
    pipeline = running_agent()
    events = pipeline.feed_line("12:00:01 All agents drained - paused. (3 agents)")
    assert events[0] == {"type": "agent_status", "status": "paused_graceful", "timestamp": at(1)}


def test_a_status_literal_without_a_change_emits_no_status() -> None:
    pipeline = running_agent()
    events = pipeline.feed_line("Resuming from graceful pause...")
    assert "agent_status" not in types(events)


def test_a_repeated_drain_literal_emits_one_status() -> None:
    pipeline = running_agent()
    first = pipeline.feed_line("All agents drained - paused.")
    second = pipeline.feed_line("All agents drained - paused.")
    assert types(first).count("agent_status") == 1
    assert "agent_status" not in types(second)


def test_status_literals_in_agent_narrative_are_ignored() -> None:
    pipeline = running_agent()
    events = pipeline.feed_line("[Feature #2] All agents drained - paused.")
    assert "agent_status" not in types(events)
    assert pipeline.status == "running"


# -- set_status -----------------------------------------------------------------


def test_a_new_pipeline_is_stopped() -> None:
    assert AgentPipeline(FakeClock()).status == "stopped"


@pytest.mark.parametrize("status", sorted(AGENT_STATUSES - {"stopped"}))
def test_set_status_emits_a_real_change(status: str) -> None:
    pipeline = AgentPipeline(FakeClock())
    assert pipeline.set_status(status) == [{"type": "agent_status", "status": status}]
    assert pipeline.status == status


def test_set_status_without_a_change_emits_nothing() -> None:
    pipeline = running_agent()
    assert pipeline.set_status("running") == []


def test_set_status_refuses_an_unknown_status() -> None:
    pipeline = running_agent()
    with pytest.raises(ValueError, match="'exploded'"):
        pipeline.set_status("exploded")
    assert pipeline.status == "running"


@pytest.mark.parametrize("status", ["stopped", "crashed"])
def test_the_end_of_a_run_resets_both_trackers(status: str) -> None:
    pipeline = running_agent()
    pipeline.feed_line("Started coding agent for features #1, #2")
    pipeline.feed_line("[Feature #7] Reading the spec")
    assert pipeline.set_status(status) == [{"type": "agent_status", "status": status}]
    assert pipeline.agents.active_count == 0
    assert pipeline.orchestrator.state()["state"] == "idle"
    assert pipeline.orchestrator.state()["codingAgents"] == 0


@pytest.mark.parametrize("status", ["paused", "pausing", "paused_graceful"])
def test_a_pause_keeps_the_agents(status: str) -> None:
    pipeline = running_agent()
    pipeline.feed_line("Started coding agent for feature #1")
    pipeline.set_status(status)
    assert pipeline.agents.active_count == 1


def test_agent_indices_keep_counting_after_a_stop() -> None:
    pipeline = running_agent()
    pipeline.feed_line("Started coding agent for feature #1")
    pipeline.set_status("stopped")
    pipeline.set_status("running")
    events = pipeline.feed_line("Started coding agent for feature #1")
    assert_events(events[1:2], [{"type": "agent_update", "agentIndex": 1, "agentName": "Fizz"}])


# -- auth banner ------------------------------------------------------------------


def test_the_banner_is_the_seventeen_lines_before_the_line() -> None:
    events = running_agent().feed_line("Error: not logged in")
    assert len(BANNER) == 17
    assert logged(events) == [*BANNER, "Error: not logged in"]
    assert all(
        event == {"type": "log", "line": line, "timestamp": at(1)}
        for event, line in zip(events[:17], BANNER, strict=True)
    )


@pytest.mark.parametrize(
    "line",
    [
        "Error: Not Logged In",
        "client not authenticated",
        "Authentication failed for user",
        "authentication required",
        "AUTHENTICATION ERROR",
        "Login required to continue",
        "Please run 'claude login' first",
        "please claude login",
        '{"error": "unauthorized"}',
        "invalid api key supplied",
        "invalid api_key",
        "Invalid credential",
        "expired token",
        "Expired session, sign in again",
        "could not authenticate",
        "Sign in to continue",
        "sign in required",
    ],
)
def test_each_auth_pattern_shows_the_banner(line: str) -> None:
    assert logged(running_agent().feed_line(line)) == [*BANNER, line]


@pytest.mark.parametrize(
    "line", ["logged in as alice", "authenticated", "sign in page", "token expired later"]
)
def test_lines_that_only_look_like_auth_errors_show_no_banner(line: str) -> None:
    assert logged(running_agent().feed_line(line)) == [line]


def test_the_banner_matches_the_raw_line_before_redaction() -> None:
    # Redaction hides "unauthorized" here; the raw line still shows the banner.
    events = running_agent().feed_line("secret: unauthorized")
    assert logged(events) == [*BANNER, "secret: [REDACTED]"]


def test_the_banners_api_key_placeholder_is_not_redacted() -> None:
    events = running_agent().feed_line("Error: not logged in")
    assert "  export ANTHROPIC_API_KEY=your-key-here" in logged(events)


def test_the_banner_is_not_touched_by_the_servers_secrets() -> None:
    pipeline = AgentPipeline(FakeClock(), secrets=("your-key-here",))
    assert logged(pipeline.feed_line("not logged in"))[:-1] == BANNER


def test_a_secret_in_the_line_that_shows_the_banner_is_still_redacted() -> None:
    line = "Invalid API key: ANTHROPIC_API_KEY=sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123"
    events = running_agent().feed_line(line)
    assert logged(events) == [*BANNER, "Invalid API key: ANTHROPIC_API_KEY=[REDACTED]"]


def test_the_banner_shows_once_per_run() -> None:
    pipeline = running_agent()
    pipeline.feed_line("not logged in")
    assert logged(pipeline.feed_line("not logged in")) == ["not logged in"]


def test_the_banner_shows_again_in_a_new_run() -> None:
    pipeline = running_agent()
    pipeline.feed_line("not logged in")
    pipeline.set_status("stopped")
    pipeline.set_status("running")
    assert logged(pipeline.feed_line("not logged in")) == [*BANNER, "not logged in"]


@pytest.mark.parametrize("pause", ["paused", "pausing", "paused_graceful"])
def test_a_resume_continues_the_run(pause: str) -> None:
    pipeline = running_agent()
    pipeline.feed_line("not logged in")
    pipeline.set_status(pause)
    pipeline.set_status("running")
    assert logged(pipeline.feed_line("not logged in")) == ["not logged in"]


def test_lines_before_any_status_are_a_run() -> None:
    pipeline = AgentPipeline(FakeClock())
    assert logged(pipeline.feed_line("not logged in")) == [*BANNER, "not logged in"]


def test_the_edge_case_unauthorized_line_shows_the_banner() -> None:
    line = "[Feature #7] HTTP 401 Unauthorized returned for /api/me as expected"
    assert logged(running_agent().feed_line(line)) == [*BANNER, line]


def test_a_crash_checks_the_recent_lines_together() -> None:
    pipeline = running_agent()
    for line in ("Error: you are not", "logged in. Bye."):
        assert logged(pipeline.feed_line(line)) == [line]
    events = pipeline.set_status("crashed")
    assert logged(events) == BANNER
    assert events[-1] == {"type": "agent_status", "status": "crashed"}
    assert len(events) == len(BANNER) + 1
    assert events[0]["timestamp"] == at(3)


def test_a_crash_after_the_banner_does_not_repeat_it() -> None:
    pipeline = running_agent()
    pipeline.feed_line("not logged in")
    assert pipeline.set_status("crashed") == [{"type": "agent_status", "status": "crashed"}]


def test_a_crash_without_an_auth_error_has_no_banner() -> None:
    pipeline = running_agent()
    pipeline.feed_line("Traceback (most recent call last):")
    assert pipeline.set_status("crashed") == [{"type": "agent_status", "status": "crashed"}]


def test_the_crash_check_sees_only_the_last_twenty_lines() -> None:
    pipeline = running_agent()
    pipeline.feed_line("you are not")
    pipeline.feed_line("logged in")
    for n in range(19):
        pipeline.feed_line(f"line {n}")
    assert pipeline.set_status("crashed") == [{"type": "agent_status", "status": "crashed"}]


def test_the_crash_check_sees_the_twentieth_line() -> None:
    pipeline = running_agent()
    pipeline.feed_line("you are not")
    pipeline.feed_line("logged in")
    for n in range(18):
        pipeline.feed_line(f"line {n}")
    assert logged(pipeline.set_status("crashed")) == BANNER


def test_a_stop_does_not_check_the_recent_lines() -> None:
    pipeline = running_agent()
    pipeline.feed_line("you are not")
    pipeline.feed_line("logged in")
    assert pipeline.set_status("stopped") == [{"type": "agent_status", "status": "stopped"}]


def test_a_new_run_forgets_the_previous_runs_lines() -> None:
    pipeline = running_agent()
    pipeline.feed_line("you are not")
    pipeline.feed_line("logged in")
    pipeline.set_status("stopped")
    pipeline.set_status("running")
    assert pipeline.set_status("crashed") == [{"type": "agent_status", "status": "crashed"}]


# -- log events and their order ----------------------------------------------------


def test_a_feature_line_carries_its_feature_and_agent() -> None:
    pipeline = running_agent()
    pipeline.feed_line("Started coding agent for features #4, #5")
    events = pipeline.feed_line("[Feature #5] Writing the reducer")
    assert events[0] == {
        "type": "log",
        "line": "[Feature #5] Writing the reducer",
        "timestamp": at(2),
        "featureId": 5,
        "agentIndex": 0,
    }


def test_the_first_line_of_an_implicit_agent_is_attributed() -> None:
    pipeline = running_agent()
    pipeline.feed_line("Started coding agent for feature #1")
    events = pipeline.feed_line("[Feature #9] hello")
    assert_events(
        events,
        [
            {"type": "log", "featureId": 9, "agentIndex": 1},
            {"type": "agent_update", "agentIndex": 1, "featureIds": [9], "state": "working"},
        ],
    )


def test_an_orchestrator_line_naming_a_feature_carries_no_feature() -> None:
    pipeline = running_agent()
    pipeline.feed_line("Started coding agent for feature #4")
    events = pipeline.feed_line("Feature #4 completed")
    assert events[0] == {"type": "log", "line": "Feature #4 completed", "timestamp": at(2)}


def test_a_feature_number_too_long_to_be_an_id_is_not_one() -> None:
    events = running_agent().feed_line("[Feature #1234567890123456] hi")
    assert events == [{"type": "log", "line": "[Feature #1234567890123456] hi", "timestamp": at(1)}]


def test_a_spawn_line_is_log_then_agent_then_orchestrator() -> None:
    events = running_agent().feed_line("Started coding agent for feature #1")
    assert types(events) == ["log", "agent_update", "orchestrator_update"]


def test_a_line_orders_status_banner_log_then_updates() -> None:
    events = running_agent().feed_line("All agents drained - paused. Unauthorized.")
    assert types(events) == [
        "agent_status",
        *["log"] * len(BANNER),
        "log",
        "orchestrator_update",
    ]
    assert line_of(events[len(BANNER) + 1]) == "All agents drained - paused. Unauthorized."


def test_the_events_of_a_line_share_one_clock_reading() -> None:
    clock = FakeClock()
    pipeline = AgentPipeline(clock)
    events = pipeline.feed_line("Started coding agent for feature #1")
    assert clock.reads == 1
    assert {event["timestamp"] for event in events} == {at(1)}


def test_a_tracker_snapshot_between_lines_reads_the_clock() -> None:
    clock = FakeClock()
    pipeline = AgentPipeline(clock)
    pipeline.feed_line("Started coding agent for feature #1")
    assert pipeline.agents.snapshot()[0]["timestamp"] == at(2)


def test_trackers_see_the_redacted_line() -> None:
    pipeline = running_agent()
    events = pipeline.feed_line("[Feature #3] Reading password=hunter2 now")
    assert agent_update_of(events[1])["thought"] == "password=[REDACTED] now"


KEY_LINES = [
    "-----BEGIN RSA PRIVATE KEY-----",
    "MIIEpAIBAAKCAQEA7bq98pLqXwZ",
    "[Feature #3] kqhkiG9w0BAQEFAASC",
    "-----END RSA PRIVATE KEY-----",
    "after the key",
]
KEY_LOGS = [
    "-----BEGIN RSA PRIVATE KEY-----",
    "[REDACTED]",
    "[REDACTED]",
    "-----END RSA PRIVATE KEY-----",
    "after the key",
]


def test_the_agent_stream_redacts_a_private_key_block_whole() -> None:
    pipeline = running_agent()
    inside = []
    lines = []
    for line in KEY_LINES:
        lines += logged(pipeline.feed_line(line))
        inside.append(pipeline.in_private_key)
    assert lines == KEY_LOGS
    assert inside == [True, True, True, False, False]


def test_the_dev_stream_redacts_a_private_key_block_whole() -> None:
    pipeline = running_dev()
    lines = [line_of(event) for line in KEY_LINES for event in pipeline.feed_line(line)]
    assert lines == KEY_LOGS


def test_the_key_block_state_can_be_restored() -> None:
    pipeline = running_agent()
    pipeline.in_private_key = True
    assert logged(pipeline.feed_line("MIIEpAIBAAKCAQEA7bq98pLqXwZ")) == ["[REDACTED]"]


def test_an_extra_secret_is_redacted_on_the_agent_stream() -> None:
    pipeline = AgentPipeline(FakeClock(), secrets=("srv-TOKEN-123",))
    assert logged(pipeline.feed_line("debug: srv-TOKEN-123")) == ["debug: [REDACTED]"]


def test_an_extra_secret_is_redacted_on_the_dev_stream_and_its_url() -> None:
    pipeline = DevPipeline(FakeClock(), secrets=("srv-TOKEN-123",))
    pipeline.set_status("running")
    events = pipeline.feed_line("at http://localhost:5173/?t=srv-TOKEN-123")
    assert line_of(events[0]) == "at http://localhost:5173/?t=[REDACTED]"
    assert pipeline.url == "http://localhost:5173/?t=[REDACTED]"


# -- the edge cases, one by one ------------------------------------------------------


def log_of(line: str, **fields: Any) -> dict[str, Any]:
    return {"type": "log", "line": line, "timestamp": at(1), **fields}


def implicit(feature_id: int, state: str = "working", thought: str | None = None) -> dict[str, Any]:
    """The update creating an implicit coding agent (index 0) for ``[N]``."""
    return {
        "type": "agent_update",
        "agentIndex": 0,
        "agentName": "Spark",
        "agentType": "coding",
        "featureId": feature_id,
        "featureIds": [feature_id],
        "featureName": f"Feature #{feature_id}",
        "state": state,
        "thought": thought,
        "synthetic": MISSING,
    }


def orchestrator(event_type: str, **fields: Any) -> dict[str, Any]:
    return {"type": "orchestrator_update", "eventType": event_type, **fields}


def narrative(line: str, feature_id: int) -> list[dict[str, Any]]:
    """Agent narrative: a log and an implicit agent, nothing else."""
    return [log_of(line, featureId=feature_id, agentIndex=0), implicit(feature_id)]


@dataclass(frozen=True)
class Edge:
    stream: str  # "agent" or "dev"
    events: list[dict[str, Any]]
    secret: str | None = None  # must appear in no event


EDGE_CASES: dict[str, Edge] = {
    # Interleaved prints: the line belongs to the feature it starts with.
    "[Feature #3] Now reading the router[Feature #5] [Tool: Bash]": Edge(
        "agent",
        [
            log_of(
                "[Feature #3] Now reading the router[Feature #5] [Tool: Bash]",
                featureId=3,
                agentIndex=0,
            ),
            implicit(3, "testing", "Now reading the router[Feature #5] [Tool: Bash]"),
        ],
    ),
    # "unauthorized" is an auth pattern: per spec the banner fires.
    "[Feature #7] HTTP 401 Unauthorized returned for /api/me as expected": Edge(
        "agent",
        [
            *(log_of(line) for line in BANNER),
            *narrative("[Feature #7] HTTP 401 Unauthorized returned for /api/me as expected", 7),
        ],
    ),
    "[Feature #7] export ANTHROPIC_API_KEY=sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789": Edge(
        "agent",
        narrative("[Feature #7] export ANTHROPIC_API_KEY=[REDACTED]", 7),
        secret="AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    ),
    '[Feature #7] curl -H "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc"'
    " http://localhost:3000": Edge(
        "agent",
        narrative(
            '[Feature #7] curl -H "Authorization: Bearer [REDACTED]" http://localhost:3000', 7
        ),
        secret="eyJhbGciOiJIUzI1NiJ9",
    ),
    "[Feature #7] DATABASE_URL=postgres://app:hunter2@db.local:5432/app": Edge(
        "agent",
        narrative("[Feature #7] DATABASE_URL=postgres://app:[REDACTED]@db.local:5432/app", 7),
        secret="hunter2",
    ),
    # "password" contains "PASS" (activity rule 10, case-insensitive).
    "[Feature #7] password: hunter2": Edge(
        "agent",
        [
            log_of("[Feature #7] password: [REDACTED]", featureId=7, agentIndex=0),
            implicit(7, "testing", "password: [REDACTED]"),
        ],
        secret="hunter2",
    ),
    "[Feature #7] AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY": Edge(
        "agent",
        narrative("[Feature #7] AWS_SECRET_ACCESS_KEY=[REDACTED]", 7),
        secret="wJalrXUtnFEMI",
    ),
    # Narrative that looks like orchestrator output moves neither the
    # orchestrator nor the status, and completes no agent.
    "[Feature #2] All features complete, great work!": Edge(
        "agent", narrative("[Feature #2] All features complete, great work!", 2)
    ),
    "[Feature #2] Feature #2 completed successfully": Edge(
        "agent",
        [
            log_of("[Feature #2] Feature #2 completed successfully", featureId=2, agentIndex=0),
            implicit(2, "testing", "Feature #2 completed successfully"),
        ],
    ),
    "[Feature #2] Running initializer agent... just kidding": Edge(
        "agent", narrative("[Feature #2] Running initializer agent... just kidding", 2)
    ),
    "[Feature #2] All agents drained - paused.": Edge(
        "agent", narrative("[Feature #2] All agents drained - paused.", 2)
    ),
    "[Feature #2] Claude Code Limit Reached. Agent will auto-continue in 3540s"
    " (February 12, 2026 at 05:00 PM UTC)...": Edge(
        "agent",
        narrative(
            "[Feature #2] Claude Code Limit Reached. Agent will auto-continue in 3540s"
            " (February 12, 2026 at 05:00 PM UTC)...",
            2,
        ),
    ),
    "[Feature #2] Rate limit hit. Backoff wait: 15 seconds (attempt #1)...": Edge(
        "agent",
        narrative("[Feature #2] Rate limit hit. Backoff wait: 15 seconds (attempt #1)...", 2),
    ),
    # An empty activity line still makes (and is attributed to) an agent.
    "[Feature #9]": Edge("agent", narrative("[Feature #9]", 9)),
    "[DEBUG] Spawning loop: 4 ready, 2 slots available, max_concurrency=3": Edge(
        "agent",
        [
            log_of(
                "[DEBUG] Spawning loop: 4 ready, 2 slots available, max_concurrency=3",
                featureId=MISSING,
                agentIndex=MISSING,
            ),
            orchestrator(
                "capacity_check",
                state="scheduling",
                readyCount=4,
                maxConcurrency=3,
                message="4 features ready, 2 slots available",
            ),
        ],
    ),
    "[DEBUG] Starting feature 1/2: #5 - User can add a todo": Edge(
        "agent",
        [
            log_of("[DEBUG] Starting feature 1/2: #5 - User can add a todo", featureId=MISSING),
            orchestrator(
                "feature_start",
                state="spawning",
                featureId=5,
                featureName="User can add a todo",
                message="Preparing Feature #5: User can add a todo",
            ),
        ],
    ),
    "[DEBUG] Failed to start feature #9: At max total agents (10/10)": Edge(
        "agent",
        [
            log_of("[DEBUG] Failed to start feature #9: At max total agents (10/10)"),
            orchestrator("at_capacity", state="monitoring"),
        ],
    ),
    # The legacy testing-agent format.
    "Started testing agent for feature #3 (PID 48213)": Edge(
        "agent",
        [
            log_of("Started testing agent for feature #3 (PID 48213)", featureId=MISSING),
            {
                "type": "agent_update",
                "agentIndex": 0,
                "agentType": "testing",
                "featureIds": [3],
                "featureName": "Feature #3",
                "state": "thinking",
                "thought": "Starting work...",
            },
            orchestrator("testing_spawn", state="spawning", testingAgents=1, featureId=3),
        ],
    ),
    "Started testing agent for features [7] (PID 50111)": Edge(
        "agent",
        [
            log_of("Started testing agent for features [7] (PID 50111)"),
            {
                "type": "agent_update",
                "agentIndex": 0,
                "agentType": "testing",
                "featureIds": [7],
                "state": "thinking",
                "thought": "Starting work...",
            },
            orchestrator("testing_spawn", testingAgents=1, featureId=7),
        ],
    ),
    "Feature #4 has failed 3 times, will not retry": Edge(
        "agent", [log_of("Feature #4 has failed 3 times, will not retry")]
    ),
    # A completion for an agent nobody tracks: synthetic, and no negative count.
    "Feature #4 failed": Edge(
        "agent",
        [
            log_of("Feature #4 failed"),
            {
                "type": "agent_update",
                "agentIndex": -1,
                "agentName": "Unknown",
                "agentType": "coding",
                "featureIds": [4],
                "state": "error",
                "thought": "Failed to complete",
                "synthetic": True,
            },
            orchestrator("coding_complete", state="monitoring", codingAgents=0, featureId=4),
        ],
    ),
    "  ➜  Local:   http://localhost:5173/": Edge(
        "dev",
        [
            {"type": "dev_log", "line": "  ➜  Local:   http://localhost:5173/", "timestamp": at(1)},
            {"type": "dev_server_status", "status": "running", "url": "http://localhost:5173/"},
        ],
    ),
    "Serving HTTP on 0.0.0.0 port 8000 (http://0.0.0.0:8000/) ...": Edge(
        "dev",
        [
            {
                "type": "dev_log",
                "line": "Serving HTTP on 0.0.0.0 port 8000 (http://0.0.0.0:8000/) ...",
            },
            {"type": "dev_server_status", "status": "running", "url": "http://0.0.0.0:8000/"},
        ],
    ),
    # Not loopback, not the wildcard: not the dev server's URL.
    "  ➜  Network: http://192.168.1.20:5173/": Edge(
        "dev", [{"type": "dev_log", "line": "  ➜  Network: http://192.168.1.20:5173/"}]
    ),
}


def test_the_edge_case_table_covers_the_file() -> None:
    assert sorted(EDGE_CASES) == sorted(EDGE_LINES)


@pytest.mark.parametrize("line", EDGE_LINES)
def test_edge_case(line: str) -> None:
    edge = EDGE_CASES[line]
    pipeline = running_agent() if edge.stream == "agent" else running_dev()
    events = pipeline.feed_line(line)
    assert_events(events, edge.events)
    assert pipeline.status == "running"
    if edge.secret is not None:
        assert all(edge.secret not in str(event) for event in events)


# -- the dev-server stream --------------------------------------------------------------


def test_a_dev_line_is_a_sanitized_dev_log() -> None:
    events = running_dev().feed_line("DB password=hunter2 \r")
    assert events == [{"type": "dev_log", "line": "DB password=[REDACTED]", "timestamp": at(1)}]


def test_a_new_dev_pipeline_is_stopped_without_url() -> None:
    pipeline = DevPipeline(FakeClock())
    assert (pipeline.status, pipeline.url) == ("stopped", None)


@pytest.mark.parametrize(
    ("line", "url"),
    [
        ("ready on http://127.0.0.1:3000", "http://127.0.0.1:3000"),
        ("ready on https://[::1]:8443/app", "https://[::1]:8443/app"),
        ("see http://localhost:3000/docs.", "http://localhost:3000/docs"),
        ("at http://localhost:3000, http://localhost:3001", "http://localhost:3000"),
        ("(http://localhost:3000/)).", "http://localhost:3000/"),
    ],
)
def test_the_dev_url_is_found_and_trimmed(line: str, url: str) -> None:
    pipeline = running_dev()
    assert pipeline.feed_line(line)[1:] == [
        {"type": "dev_server_status", "status": "running", "url": url}
    ]
    assert pipeline.url == url


def test_the_dev_url_patterns_are_tried_in_order() -> None:
    pipeline = running_dev()
    pipeline.feed_line("http://0.0.0.0:8000/ and http://localhost:8000/")
    assert pipeline.url == "http://localhost:8000/"


@pytest.mark.parametrize(
    "line", ["http://localhost/", "http://example.com:80/", "http://10.0.0.1:5173"]
)
def test_other_urls_are_not_the_dev_url(line: str) -> None:
    assert types(running_dev().feed_line(line)) == ["dev_log"]


def test_only_the_first_dev_url_of_a_run_is_published() -> None:
    pipeline = running_dev()
    pipeline.feed_line("http://localhost:5173/")
    assert types(pipeline.feed_line("http://localhost:5174/")) == ["dev_log"]
    assert pipeline.url == "http://localhost:5173/"


def test_a_dev_status_change_forgets_the_url() -> None:
    pipeline = running_dev()
    pipeline.feed_line("http://localhost:5173/")
    assert pipeline.set_status("crashed") == [
        {"type": "dev_server_status", "status": "crashed", "url": None}
    ]
    assert pipeline.url is None


def test_a_restarted_dev_server_publishes_its_new_url() -> None:
    pipeline = running_dev()
    pipeline.feed_line("http://localhost:5173/")
    pipeline.set_status("stopped")
    pipeline.set_status("running")
    assert dev_status_of(pipeline.feed_line("http://localhost:5174/")[1])["url"] == (
        "http://localhost:5174/"
    )


def test_a_dev_status_without_a_change_emits_nothing() -> None:
    pipeline = running_dev()
    pipeline.feed_line("http://localhost:5173/")
    assert pipeline.set_status("running") == []
    assert pipeline.url == "http://localhost:5173/"


def test_the_dev_url_carries_the_current_status() -> None:
    pipeline = DevPipeline(FakeClock())
    assert dev_status_of(pipeline.feed_line("http://localhost:5173/")[1])["status"] == "stopped"


@pytest.mark.parametrize("status", ["paused", "exploded"])
def test_an_unknown_dev_status_is_refused(status: str) -> None:
    pipeline = running_dev()
    with pytest.raises(ValueError, match=status):
        pipeline.set_status(status)
    assert pipeline.status == "running"


def test_a_dev_url_is_redacted_before_it_is_published() -> None:
    pipeline = running_dev()
    pipeline.feed_line("http://localhost:5173/?token=abc123")
    assert pipeline.url == "http://localhost:5173/?token=[REDACTED]"


# -- the whole AutoForge transcript -------------------------------------------------------


@dataclass(frozen=True)
class Step:
    line: str | None  # None for a status change
    events: list[Msg]
    active_agents: int


@functools.cache
def story() -> tuple[Step, ...]:
    """``running``, every line of autoforge-run.txt, ``stopped``: what each step did."""
    pipeline = AgentPipeline(FakeClock())
    steps = [Step(None, pipeline.set_status("running"), pipeline.agents.active_count)]
    for line in RUN_LINES:
        steps.append(Step(line, pipeline.feed_line(line), pipeline.agents.active_count))
    steps.append(Step(None, pipeline.set_status("stopped"), pipeline.agents.active_count))
    return tuple(steps)


def story_events(event_type: str) -> list[Msg]:
    return [event for step in story() for event in step.events if event["type"] == event_type]


def steps_for(line: str) -> list[Step]:
    return [step for step in story() if step.line == line]


def update_of(step: Step) -> Msg:
    (update,) = (event for event in step.events if event["type"] == "agent_update")
    return update


def test_story_logs_every_line_once_in_order() -> None:
    assert [event["line"] for event in story_events("log")] == RUN_LINES


def test_story_attributes_every_feature_line_to_an_agent() -> None:
    feature_logs = [event for event in story_events("log") if "featureId" in event]
    assert feature_logs
    assert all(event.get("agentIndex") is not None for event in feature_logs)


def test_story_first_batch_is_spark() -> None:
    (step,) = steps_for("Started coding agent for features #1, #2, #3")
    assert matches(
        update_of(step),
        {
            "agentIndex": 0,
            "agentName": "Spark",
            "agentType": "coding",
            "featureId": 1,
            "featureIds": [1, 2, 3],
            "featureName": "Features #1, #2, #3",
            "state": "thinking",
            "thought": "Starting batch work...",
        },
    )


def test_story_second_batch_is_fizz() -> None:
    first, _ = steps_for("Started coding agent for features #4, #5")
    assert matches(
        update_of(first),
        {"agentIndex": 1, "agentName": "Fizz", "agentType": "coding", "featureIds": [4, 5]},
    )


def test_story_testing_agent_is_octo() -> None:
    (step,) = steps_for("Started testing agent for features [1,2,3] (PID 48213)")
    assert matches(
        update_of(step),
        {"agentIndex": 2, "agentName": "Octo", "agentType": "testing", "featureIds": [1, 2, 3]},
    )


def test_story_testing_agents_bash_line_is_testing() -> None:
    *_, step = steps_for("[Feature #1] [Tool: Bash]")
    assert step.events[0]["agentIndex"] == 2
    assert matches(update_of(step), {"agentIndex": 2, "state": "testing"})


def test_story_testing_completion_is_the_real_agent() -> None:
    (step,) = steps_for("Feature #1 testing completed")
    assert matches(
        update_of(step),
        {"agentIndex": 2, "agentName": "Octo", "state": "success", "synthetic": MISSING},
    )


def test_story_retried_batch_is_a_new_agent() -> None:
    _, spawn = steps_for("Started coding agent for features #4, #5")
    _, failure = steps_for("Features #4, #5 failed")
    assert matches(update_of(spawn), {"agentIndex": 3, "agentName": "Hoot"})
    assert matches(
        update_of(failure),
        {"agentIndex": 3, "state": "error", "thought": "Batch failed to complete"},
    )


def test_story_single_feature_agent() -> None:
    (spawn,) = steps_for("Started coding agent for feature #6")
    (done,) = steps_for("Feature #6 completed")
    assert matches(
        update_of(spawn),
        {"agentIndex": 4, "agentName": "Buzz", "featureIds": [6], "thought": "Starting work..."},
    )
    assert matches(update_of(done), {"agentIndex": 4, "state": "success"})


def test_story_has_no_synthetic_completion() -> None:
    assert not any(update.get("synthetic") for update in story_events("agent_update"))


def test_story_agents_come_and_go() -> None:
    changes = []
    active = 0
    for step in story():
        if step.active_agents != active:
            active = step.active_agents
            changes.append((step.line, active))
    assert changes == [
        ("Started coding agent for features #1, #2, #3", 1),
        ("Started coding agent for features #4, #5", 2),
        ("Features #1, #2, #3 completed", 1),
        ("Features #4, #5 failed", 0),
        ("Started testing agent for features [1,2,3] (PID 48213)", 1),
        ("Started coding agent for features #4, #5", 2),
        ("Feature #1 testing completed", 1),
        ("Features #4, #5 failed", 0),
        ("Started coding agent for feature #6", 1),
        ("Feature #6 completed", 0),
    ]
    assert story()[-1].active_agents == 0


def test_story_orchestrator_events() -> None:
    assert [event["eventType"] for event in story_events("orchestrator_update")] == [
        "init_start",
        "init_complete",
        "coding_spawn",
        "coding_spawn",
        "coding_complete",
        "coding_complete",
        "testing_spawn",
        "coding_spawn",
        "testing_complete",
        "coding_complete",
        "coding_spawn",
        "coding_complete",
        "drain_start",
        "drain_complete",
        "drain_resume",
        "all_complete",
    ]


def test_story_orchestrator_counts_never_go_negative_and_end_at_zero() -> None:
    updates = story_events("orchestrator_update")
    assert max(update["codingAgents"] for update in updates) == 2
    assert all(update["codingAgents"] >= 0 for update in updates)
    assert all(update["testingAgents"] >= 0 for update in updates)
    assert (updates[-1]["codingAgents"], updates[-1]["testingAgents"]) == (0, 0)


def test_story_max_concurrency_is_two() -> None:
    assert {update["maxConcurrency"] for update in story_events("orchestrator_update")} == {2}


def test_story_agent_updates_are_far_fewer_than_logs() -> None:
    assert len(story_events("agent_update")) * 3 < len(story_events("log"))


def test_story_statuses() -> None:
    assert [event["status"] for event in story_events("agent_status")] == [
        "running",
        "paused_graceful",
        "running",
        "stopped",
    ]


def test_story_drain_line_sets_the_status_first() -> None:
    (step,) = steps_for("All agents drained - paused.")
    assert types(step.events) == ["agent_status", "log", "orchestrator_update"]


def test_story_leaks_no_secret() -> None:
    assert [leak for step in story() for leak in leaked_secrets(str(step.events))] == []


# -- properties ------------------------------------------------------------------------------

corpus_line = st.sampled_from(RUN_LINES + EDGE_LINES)
any_line = st.one_of(st.text(max_size=80), secretish_text, corpus_line)


@dataclass(frozen=True)
class Status:
    status: str


def transcript(statuses: frozenset[str]) -> st.SearchStrategy[list[str | Status]]:
    item = st.one_of(any_line, any_line, st.sampled_from(sorted(statuses)).map(Status))
    return st.lists(item, max_size=40)


def play(pipeline: AgentPipeline | DevPipeline, items: list[str | Status]) -> list[Msg]:
    events: list[Msg] = []
    for item in items:
        if isinstance(item, Status):
            events += pipeline.set_status(item.status)
        else:
            events += pipeline.feed_line(item)
    return events


def strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return []


def assert_sanitized(line: str, raw: str, in_private_key: bool) -> None:
    """``line`` is ``raw`` sanitized; inside a private key it may be gone or end the key."""
    if in_private_key and (line in ("[REDACTED]", "") or "PRIVATE KEY-----" in line):
        return
    assert line == sanitize(raw)


@settings(max_examples=150)
@given(transcript(AGENT_STATUSES))
def test_agent_pipeline_takes_any_text(items: list[str | Status]) -> None:
    pipeline = AgentPipeline(FakeClock())
    for item in items:
        if isinstance(item, Status):
            pipeline.set_status(item.status)
            continue
        inside = pipeline.in_private_key
        events = pipeline.feed_line(item)
        lines = logged(events)
        assert len(lines) in (1, len(BANNER) + 1)
        assert_sanitized(lines[-1], item, inside)


@settings(max_examples=150)
@given(transcript(DEV_STATUSES))
def test_dev_pipeline_takes_any_text(items: list[str | Status]) -> None:
    pipeline = DevPipeline(FakeClock())
    for item in items:
        if isinstance(item, Status):
            pipeline.set_status(item.status)
            continue
        inside = pipeline.in_private_key
        events = pipeline.feed_line(item)
        assert_sanitized(line_of(events[0]), item, inside)
        assert types(events) in (["dev_log"], ["dev_log", "dev_server_status"])


@settings(max_examples=150)
@given(transcript(AGENT_STATUSES))
def test_agent_events_leak_no_secret(items: list[str | Status]) -> None:
    # The banner's "export ANTHROPIC_API_KEY=your-key-here" is our placeholder, no secret.
    events = [e for e in play(AgentPipeline(FakeClock()), items) if e.get("line") not in BANNER]
    assert [leak for text in strings(events) for leak in leaked_secrets(text)] == []


@settings(max_examples=150)
@given(transcript(DEV_STATUSES))
def test_dev_events_leak_no_secret(items: list[str | Status]) -> None:
    events = play(DevPipeline(FakeClock()), items)
    assert [leak for text in strings(events) for leak in leaked_secrets(text)] == []


@settings(max_examples=100)
@given(transcript(AGENT_STATUSES), st.data())
def test_agent_events_do_not_depend_on_batching(
    items: list[str | Status], data: st.DataObject
) -> None:
    one_by_one = play(AgentPipeline(FakeClock()), items)
    batched = AgentPipeline(FakeClock())
    events: list[Msg] = []
    position = 0
    while position < len(items):
        if isinstance(status := items[position], Status):
            events += batched.set_status(status.status)
            position += 1
            continue
        size = data.draw(st.integers(min_value=1, max_value=8))
        batch: list[str] = []
        while position < len(items) and len(batch) < size:
            if isinstance(line := items[position], Status):
                break
            batch.append(line)
            position += 1
        events += batched.feed_lines(batch)
    assert events == one_by_one


@given(st.lists(any_line, max_size=30), st.data())
def test_dev_events_do_not_depend_on_batching(lines: list[str], data: st.DataObject) -> None:
    single = DevPipeline(FakeClock())
    one_by_one = [event for line in lines for event in single.feed_line(line)]
    batched = DevPipeline(FakeClock())
    events: list[Msg] = []
    position = 0
    while position < len(lines):
        size = data.draw(st.integers(min_value=1, max_value=8))
        events += batched.feed_lines(lines[position : position + size])
        position += size
    assert events == one_by_one
