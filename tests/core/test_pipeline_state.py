"""AgentPipeline and DevPipeline across a restart: ``to_state`` / ``from_state`` (STATE.md 2).

Kept apart from test_pipeline.py, which another change rewrites this round.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from plain import Msg

from trio_ws.core.pipeline import AgentPipeline, DevPipeline
from trio_ws.core.protocol import AGENT_STATUSES, DEV_STATUSES

DATA = Path(__file__).parent.parent / "corpus"
CORPUS = [
    line
    for name in ("autoforge-run.txt", "edge-cases.txt")
    for line in (DATA / name).read_text(encoding="utf-8").splitlines()
]
AUTH_LINES = ["Error: not logged in", "please run claude", "login", "Unauthorized request"]
"""Banner triggers, including one split across lines (only the crash-window check sees it)."""
DEV_LINES = [
    "ready in 300 ms",
    "  ➜  Local:   http://localhost:5173/",
    "Listening on http://127.0.0.1:8000/app).",
    "server at http://[::1]:3000",
]


def clock() -> float:
    return 1_700_000_000.0


Item = tuple[str, str]
"""("line", raw) or ("status", status)."""


def items(lines: list[str], statuses: frozenset[str]) -> st.SearchStrategy[list[Item]]:
    one = st.one_of(
        st.sampled_from(lines).map(lambda line: ("line", line)),
        st.sampled_from(sorted(statuses)).map(lambda status: ("status", status)),
    )
    return st.lists(one, min_size=1, max_size=100)


def apply(pipeline: AgentPipeline | DevPipeline, item: Item) -> list[Msg]:
    kind, value = item
    return pipeline.feed_line(value) if kind == "line" else pipeline.set_status(value)


def stored(state: dict[str, Any]) -> dict[str, Any]:
    """The state as the journal gives it back: through JSON text."""
    loaded: dict[str, Any] = json.loads(json.dumps(state))
    return loaded


@settings(max_examples=150, deadline=None)
@given(items([*CORPUS, *AUTH_LINES], AGENT_STATUSES), st.integers(min_value=0, max_value=100))
def test_a_restored_agent_pipeline_continues_like_its_twin(items: list[Item], cut: int) -> None:
    twin, pipeline = AgentPipeline(clock), AgentPipeline(clock)
    for number, item in enumerate(items):
        if number == min(cut, len(items) - 1):
            pipeline = AgentPipeline.from_state(stored(pipeline.to_state()), clock)
            assert pipeline.status == twin.status
        assert apply(pipeline, item) == apply(twin, item)
    assert pipeline.to_state() == twin.to_state()


@settings(max_examples=100, deadline=None)
@given(items([*CORPUS[:20], *DEV_LINES], DEV_STATUSES), st.integers(min_value=0, max_value=100))
def test_a_restored_dev_pipeline_continues_like_its_twin(items: list[Item], cut: int) -> None:
    twin, pipeline = DevPipeline(clock), DevPipeline(clock)
    for number, item in enumerate(items):
        if number == min(cut, len(items) - 1):
            pipeline = DevPipeline.from_state(stored(pipeline.to_state()), clock)
            assert (pipeline.status, pipeline.url) == (twin.status, twin.url)
        assert apply(pipeline, item) == apply(twin, item)


def test_a_restored_pipeline_shows_the_banner_once_per_run() -> None:
    pipeline = AgentPipeline(clock)
    pipeline.set_status("running")
    shown = pipeline.feed_line("Error: not logged in")
    assert len(shown) > 1
    restored = AgentPipeline.from_state(stored(pipeline.to_state()), clock)
    assert len(restored.feed_line("Error: not logged in")) == 1  # the log line only


def test_a_restored_pipeline_stays_in_its_auto_improve_run() -> None:
    pipeline = AgentPipeline(clock)
    pipeline.set_status("running")
    pipeline.feed_line("[AUTO-IMPROVE] Starting single-session improvement run...")
    restored = AgentPipeline.from_state(stored(pipeline.to_state()), clock)
    assert restored.auto_improve
    assert len(restored.feed_line("Started coding agent for feature #1")) == 1  # logged only


def test_a_state_from_before_auto_improve_runs_restores_a_normal_run() -> None:
    state = AgentPipeline(clock).to_state()
    del state["auto_improve"]
    assert not AgentPipeline.from_state(stored(state), clock).auto_improve


@pytest.mark.parametrize(
    "change",
    [
        {"status": "dancing"},
        {"banner_shown": 1},
        {"auto_improve": "yes"},
        {"recent": [1, 2]},
        {"agents": None},
    ],
)
def test_an_agent_pipeline_state_that_does_not_fit_is_refused(change: dict[str, Any]) -> None:
    state = AgentPipeline(clock).to_state() | change
    with pytest.raises(ValueError, match="state"):
        AgentPipeline.from_state(state, clock)


def test_a_dev_pipeline_state_with_a_bad_url_is_refused() -> None:
    with pytest.raises(ValueError, match="'url' is not str"):
        DevPipeline.from_state({"status": "running", "url": 5}, clock)


@pytest.mark.parametrize("pipeline_type", [AgentPipeline, DevPipeline])
def test_a_restored_pipeline_stays_inside_a_private_key_block(
    pipeline_type: type[AgentPipeline] | type[DevPipeline],
) -> None:
    pipeline = pipeline_type(clock)
    pipeline.feed_line("-----BEGIN RSA PRIVATE KEY-----")
    restored = pipeline_type.from_state(stored(pipeline.to_state()), clock)
    events = restored.feed_line("MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun")
    assert "MIIEow" not in json.dumps(events)


def test_the_journalled_crash_window_holds_no_secret() -> None:
    pipeline = AgentPipeline(clock, secrets=("server-token-123456",))
    pipeline.set_status("running")
    pipeline.feed_line("export DB_PASSWORD=hunter2 and server-token-123456")
    assert "hunter2" not in json.dumps(pipeline.to_state())
    assert "server-token-123456" not in json.dumps(pipeline.to_state())
