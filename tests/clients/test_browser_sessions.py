"""Which playwright-cli sessions a run's lines make worth a screenshot (AutoForge's rules)."""

from __future__ import annotations

from trio_ws.clients.browser_sessions import BrowserSessions

OPEN_5 = "[Feature #5]    Input: {'command': 'playwright-cli open http://localhost:3000'}"


def fed(*lines: str) -> BrowserSessions:
    sessions = BrowserSessions()
    for line in lines:
        sessions.feed(line)
    return sessions


def test_a_started_agent_has_no_session_until_its_browser_opens() -> None:
    sessions = fed("Started coding agent for feature #5")
    assert sessions.sessions == {}
    sessions.feed(OPEN_5)
    assert sessions.sessions == {"coding-5": 5}


def test_only_open_and_goto_of_playwright_cli_register() -> None:
    sessions = fed(
        "Started coding agent for feature #5",
        "[Feature #5] Input: {'command': 'playwright-cli snapshot'}",
        "[Feature #5] Input: {'command': 'open http://localhost:3000'}",
        "playwright-cli open http://localhost:3000",
    )
    assert sessions.sessions == {}
    sessions.feed("[Feature #5] Input: {'command': 'playwright-cli goto\thttp://x'}")
    assert sessions.sessions == {"coding-5": 5}


def test_a_line_of_an_agent_never_seen_starting_registers_nothing() -> None:
    assert fed(OPEN_5).sessions == {}


def test_a_batch_is_named_after_its_first_feature_and_any_member_opens_it() -> None:
    sessions = fed(
        "Started coding agent for features #5, #8",
        "[Feature #8] Input: {'command': 'playwright-cli open http://localhost:3000'}",
    )
    assert sessions.sessions == {"coding-5": 5}


def test_testing_agents_are_numbered_from_zero_in_spawn_order() -> None:
    sessions = fed(
        "Started testing agent for features [3] (PID 10)",
        "Started testing agent for features [4,6] (PID 11)",
        "[Feature #6] Input: {'command': 'playwright-cli open http://localhost:3000'}",
    )
    assert sessions.sessions == {"testing-1": 4}


def test_a_coding_session_ends_when_its_feature_completes_or_fails() -> None:
    for outcome in ("completed", "failed"):
        sessions = fed("Started coding agent for feature #5", OPEN_5, f"Feature #5 {outcome}")
        assert sessions.sessions == {}


def test_the_end_of_the_run_ends_every_session_and_restarts_the_testing_count() -> None:
    sessions = fed("Started testing agent for features [5] (PID 1)", OPEN_5)
    assert sessions.sessions == {"testing-0": 5}
    sessions.stop()
    assert sessions.sessions == {}
    sessions.feed("Started testing agent for features [5] (PID 2)")
    sessions.feed(OPEN_5)
    assert sessions.sessions == {"testing-0": 5}


def test_a_dropped_session_comes_back_with_its_next_open_line() -> None:
    sessions = fed("Started coding agent for feature #5", OPEN_5)
    sessions.drop("coding-5")
    assert sessions.sessions == {}
    sessions.feed(OPEN_5)
    assert sessions.sessions == {"coding-5": 5}
