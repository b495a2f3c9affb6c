"""Wire vocabulary: timestamps (PROTOCOL.md 1, revision 2) and the one encoder."""

from __future__ import annotations

import base64
import enum
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ws.core.errors import BadClientMessage, ExpectedHello
from trio_ws.core.messages import Event
from trio_ws.core.pipeline import AgentPipeline, DevPipeline
from trio_ws.core.protocol import (
    MAX_SCREENSHOT_BYTES,
    decode_client_message,
    decode_producer_hello,
    encode,
    iso_timestamp,
    screenshot_of,
)

FORMAT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
SAME_MILLISECOND = 1_795_626_245.123_4  # .1234: one more microsecond stays in .123


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_lines_fed_in_one_millisecond_get_different_timestamps() -> None:
    clock = Clock(SAME_MILLISECOND)
    pipeline = AgentPipeline(clock)
    [first] = pipeline.feed_line("one")
    clock.now += 1e-6
    [second] = pipeline.feed_line("two")
    assert first["timestamp"] != second["timestamp"]
    assert first["timestamp"][:23] == second["timestamp"][:23]  # the same millisecond
    assert FORMAT.fullmatch(first["timestamp"]) and FORMAT.fullmatch(second["timestamp"])


def test_a_timestamp_is_utc_with_six_fraction_digits() -> None:
    assert iso_timestamp(1_795_626_245.123456) == "2026-11-25T17:04:05.123456Z"
    assert iso_timestamp(0.0) == "1970-01-01T00:00:00.000000Z"


@settings(max_examples=2000)
@given(
    st.one_of(
        st.floats(0, 4_102_444_800),  # up to 2100
        st.integers(0, 4_102_444_800).map(lambda s: s + 0.9999995),  # rounds into the next second
        st.integers(0, 4_102_444_800 * 10**6).map(lambda us: (us + 0.5) / 1e6),  # half a µs
    )
)
def test_a_timestamp_is_the_text_datetime_gives(unix_seconds: float) -> None:
    """The cached seconds part and the rounding never drift from datetime's."""
    expected = datetime.fromtimestamp(unix_seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert iso_timestamp(unix_seconds) == expected


def test_a_timestamp_in_a_new_second_gets_that_seconds_text() -> None:
    """Alternating seconds (a cache of one entry) never serve a stale prefix."""
    for _ in range(3):
        assert iso_timestamp(100.25) == "1970-01-01T00:01:40.250000Z"
        assert iso_timestamp(7_200.5) == "1970-01-01T02:00:00.500000Z"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.text(), JSON, max_size=6))
def test_encode_is_compact_unescaped_json(message: dict[str, object]) -> None:
    assert encode(message) == json.dumps(message, separators=(",", ":"), ensure_ascii=False)


REFERENCE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
"""The encoding the wire always had; ``encode`` must give its bytes or its error."""


class Colour(enum.Enum):
    RED = "red"


class Count(enum.IntEnum):
    ONE = 1


class Word(enum.StrEnum):
    HELLO = "hello"


@dataclass
class Point:
    x: int


ODD_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**64 + 2)  # orjson's 64-bit edge
    | st.integers().map(lambda n: n * 2**70)  # beyond 64 bits
    | st.floats()  # NaN, infinities, -0.0, 1e-07
    | st.text(st.characters(codec=None))  # lone surrogates, control characters, U+2028
    | st.sampled_from([Colour.RED, Count.ONE, Word.HELLO, Point(1), {1, 2}, (1, "a"), b"x"])
    | st.sampled_from([datetime(2026, 1, 1, tzinfo=UTC)])
)
ODD_JSON = st.recursive(
    ODD_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text() | st.integers() | st.booleans() | st.none(), inner, max_size=4)
    ),
    max_leaves=12,
)


def reference_or_error(message: object) -> str | type[BaseException]:
    try:
        return REFERENCE.encode(message)
    except (TypeError, ValueError) as exc:  # the type is the result compared
        return type(exc)


@settings(max_examples=1000)
@given(st.dictionaries(st.text(), ODD_JSON, max_size=6))
def test_encode_gives_the_reference_text_or_its_error_for_anything(
    message: dict[str, object],
) -> None:
    """Floats, huge ints, lone surrogates, non-string keys, enums, dataclasses: the
    same text as ``json`` gives, or the same error, never a different text."""
    expected = reference_or_error(message)
    if isinstance(expected, str):
        assert encode(message) == expected
    else:
        try:
            encode(message)
        except expected:
            pass
        else:
            raise AssertionError(f"encode accepted what json refuses ({expected.__name__})")


@given(st.lists(st.text(st.characters(codec=None)), max_size=8))
def test_every_event_the_pipelines_emit_encodes_to_the_reference_text(lines: list[str]) -> None:
    agent, dev = AgentPipeline(), DevPipeline()
    events: list[Event] = [*agent.set_status("running"), *dev.set_status("running")]
    for line in [*lines, "Started coding agent for feature #3", "[Feature #3] Reading x"]:
        events += [*agent.feed_line(line), *dev.feed_line(line)]
    update = agent.orchestrator.feed("INITIALIZATION COMPLETE")
    assert update is not None
    events.append(update)
    for event in events:
        assert encode(event) == REFERENCE.encode(event)


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (b'{"type":"ping"}', "binary frames are not accepted"),
        ("{not json", "message is not valid JSON"),
        ("[1, 2]", "message is not a JSON object"),
        ('"ping"', "message is not a JSON object"),
    ],
)
def test_a_client_frame_that_is_no_json_object_is_a_bad_client_message(
    frame: str | bytes, problem: str
) -> None:
    with pytest.raises(BadClientMessage, match=f"^{re.escape(problem)}$"):
        decode_client_message(frame)


def test_a_client_frame_holding_an_object_is_that_object_whatever_its_type() -> None:
    assert decode_client_message('{"type":"control","action":"stop"}') == {
        "type": "control",
        "action": "stop",
    }
    assert decode_client_message('{"type":"unheard-of","x":1}') == {"type": "unheard-of", "x": 1}


def test_what_only_the_fast_decoder_refuses_is_still_read_as_before() -> None:
    # orjson reads client frames; json takes what orjson refuses, as it always did.
    assert decode_client_message('{"lines":["\\ud800 half a pair"]}') == {
        "lines": ["\ud800 half a pair"]
    }
    assert math.isnan(decode_client_message('{"at":NaN}')["at"])
    # An integer beyond 64 bits reads as a float: refused wherever an integer is due
    # (a pseq that large could never be stored).
    assert not isinstance(decode_client_message(f'{{"first":{2**70}}}')["first"], int)


def test_a_producer_hello_is_its_id_and_stream_and_nothing_else() -> None:
    frame = '{"type":"hello","producer":"run-1","stream":"dev","extra":true}'
    assert decode_producer_hello(frame) == {"type": "hello", "producer": "run-1", "stream": "dev"}
    assert decode_producer_hello(frame.encode())["stream"] == "dev"


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        b"\xff",
        "[]",
        '{"type":"lines","first":1,"lines":[]}',
        '{"type":"hello","stream":"agent"}',
        '{"type":"hello","producer":"","stream":"agent"}',
        '{"type":"hello","producer":"' + "p" * 201 + '","stream":"agent"}',
        '{"type":"hello","producer":7,"stream":"agent"}',
        '{"type":"hello","producer":"run-1","stream":"both"}',
    ],
)
def test_a_first_producer_frame_that_is_no_hello_is_refused_with_expected_hello(
    frame: str | bytes,
) -> None:
    with pytest.raises(ExpectedHello):
        decode_producer_hello(frame)


# -- screenshots -------------------------------------------------------------------

PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
SCREENSHOT = {
    "type": "screenshot",
    "sessionName": "coding-5",
    "featureId": 5,
    "imageData": PNG_B64,
    "timestamp": "2026-12-05T18:00:00.123456",
}


def test_a_screenshot_is_its_five_fields_and_nothing_else() -> None:
    assert screenshot_of({**SCREENSHOT, "extra": 1}) == SCREENSHOT
    assert screenshot_of({**SCREENSHOT, "featureId": None})["featureId"] is None


@pytest.mark.parametrize(
    "change",
    [
        {"sessionName": ""},
        {"sessionName": "coding 5"},
        {"sessionName": "x" * 101},
        {"featureId": -1},
        {"featureId": True},
        {"featureId": "5"},
        {"timestamp": "yesterday"},
        {"timestamp": None},
        {"imageData": ""},
        {"imageData": "data:image/png;base64," + PNG_B64},
        {"imageData": "not base64!"},
        {"imageData": base64.b64encode(b"GIF89a....").decode()},
        {"imageData": 12},
    ],
)
def test_a_malformed_screenshot_is_a_bad_client_message(change: dict[str, object]) -> None:
    with pytest.raises(BadClientMessage):
        screenshot_of({**SCREENSHOT, **change})


def test_a_screenshot_over_its_cap_is_refused_before_it_is_decoded() -> None:
    image = PNG_B64 + "A" * (MAX_SCREENSHOT_BYTES - len(PNG_B64) + 4)
    with pytest.raises(BadClientMessage, match="over the limit"):
        screenshot_of({**SCREENSHOT, "imageData": image})
