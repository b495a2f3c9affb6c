"""Wire vocabulary: timestamps (PROTOCOL.md 1, revision 2) and the one encoder."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_ws.pipeline import AgentPipeline
from trio_ws.protocol import encode, iso_timestamp

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
