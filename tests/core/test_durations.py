"""`core.durations`: one reader of ``90s``/``10m``/``1h`` for options, file and registry."""

from __future__ import annotations

import pytest

from trio_ws.core.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        ("90s", 90.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("1.5m", 90.0),
        ("45", 45.0),
        (" 2M ", 120.0),
        (30, 30.0),
        (2.5, 2.5),
    ],
)
def test_durations_read_as_seconds(given: str | float, seconds: float) -> None:
    assert parse_duration(given) == seconds


@pytest.mark.parametrize("given", ["", "10x", "m", "-1m", "0", 0, -3, True, "1e3s", float("inf")])
def test_anything_else_is_refused_saying_what_was_given(given: str | float) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(given)


@pytest.mark.parametrize(
    ("seconds", "text"), [(3600.0, "1h"), (600.0, "10m"), (90.0, "90s"), (1.5, "1.5s")]
)
def test_format_reads_back_as_the_same_seconds(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds
