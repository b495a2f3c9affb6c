"""The TypedDicts of core/messages against what the trackers and pipelines really emit.

TypedDicts are not checked at runtime, so these tests are what keeps them true:
every event a corpus transcript produces has exactly the keys, and values of the
types, its ``type`` tag's TypedDict declares.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pytest
from plain import EVENT_KINDS

from trio_ws.core import messages
from trio_ws.core.messages import Event
from trio_ws.core.pipeline import AgentPipeline, DevPipeline
from trio_ws.core.trackers import AgentTracker

DATA = Path(__file__).parent.parent / "corpus"
RUN_LINES = (DATA / "autoforge-run.txt").read_text(encoding="utf-8").splitlines()
EDGE_LINES = (DATA / "edge-cases.txt").read_text(encoding="utf-8").splitlines()


def fits(value: object, hint: Any) -> bool:
    """Whether a JSON value fits a TypedDict field's type."""
    origin = get_origin(hint)
    if origin is Literal:
        return value in get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, arm) for arm in get_args(hint))
    if origin is list:
        (item,) = get_args(hint)
        return type(value) is list and all(fits(v, item) for v in value)
    if hint is float:
        return type(value) in (int, float)
    if hint is type(None):
        return value is None
    return type(value) is hint


def problems(event: dict[str, Any]) -> list[str]:
    """What about ``event`` its TypedDict does not allow; empty when it fits."""
    kind = EVENT_KINDS[event["type"]]
    hints = get_type_hints(kind)
    found = [f"missing {key}" for key in kind.__required_keys__ - event.keys()]
    found += [f"unknown {key}" for key in event.keys() - hints.keys()]
    found += [
        f"{key}={value!r} is not {hints[key]}"
        for key, value in event.items()
        if key in hints and not fits(value, hints[key])
    ]
    return found


def test_every_event_type_has_its_own_tag() -> None:
    assert len(EVENT_KINDS) == len(get_args(Event))
    assert set(EVENT_KINDS) == {
        "progress",
        "agent_status",
        "log",
        "agent_update",
        "orchestrator_update",
        "dev_log",
        "dev_server_status",
        "alert",
    }


@pytest.mark.parametrize(
    "name",
    [
        "autoforge-run.txt",
        "autoforge-0.1.22-run.txt",
        "autoforge-0.1.22-auth.txt",
        "edge-cases.txt",
    ],
)
def test_every_agent_event_of_a_corpus_transcript_fits_its_typed_dict(name: str) -> None:
    pipeline = AgentPipeline()
    events = pipeline.set_status("running")
    for line in (DATA / name).read_text(encoding="utf-8").splitlines():
        events += pipeline.feed_line(line)
    events += pipeline.set_status("crashed")
    assert {event["type"] for event in events} >= {"log", "agent_update", "orchestrator_update"}
    assert [(event, problems(dict(event))) for event in events if problems(dict(event))] == []


def test_every_dev_event_of_a_corpus_transcript_fits_its_typed_dict() -> None:
    pipeline = DevPipeline()
    events = pipeline.set_status("running")
    for line in [*RUN_LINES, *EDGE_LINES, "ready on http://localhost:5173/"]:
        events += pipeline.feed_line(line)
    assert {event["type"] for event in events} == {"dev_log", "dev_server_status"}
    assert [(event, problems(dict(event))) for event in events if problems(dict(event))] == []


def test_a_tracker_snapshot_and_a_synthetic_completion_fit_their_typed_dict() -> None:
    tracker = AgentTracker()
    for line in RUN_LINES:
        tracker.feed(line)
    synthetic = tracker.feed("Feature #99999 completed")
    assert synthetic is not None and synthetic.get("synthetic") is True
    for event in [*tracker.snapshot(), synthetic]:
        assert problems(dict(event)) == []


def test_a_message_missing_a_field_or_with_a_stray_one_does_not_fit() -> None:
    """Guards the checker above: it would pass anything if it checked nothing."""
    event = dict(messages.DevLogEvent(type="dev_log", line="x", timestamp="t"))
    del event["timestamp"]
    event["stray"] = 1
    event["line"] = 3
    assert sorted(problems(event)) == [
        "line=3 is not <class 'str'>",
        "missing timestamp",
        "unknown stray",
    ]


def test_every_message_type_names_its_tag_required_and_seq_optional_on_events() -> None:
    """The keys are what ``__required_keys__``/``__optional_keys__`` say at runtime (a
    ``from __future__ import annotations`` in messages.py would make every key required
    on Python 3.11), the tag is a required ``Literal`` and only events may carry ``seq``
    as an optional key."""
    for kind in get_args(messages.Message):
        hints = get_type_hints(kind)
        assert hints.keys() == kind.__required_keys__ | kind.__optional_keys__, kind
        assert "type" in kind.__required_keys__ and get_origin(hints["type"]) is Literal, kind
    for kind in get_args(Event):
        assert "seq" in kind.__optional_keys__, kind
