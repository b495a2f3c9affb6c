"""History: held events bounded by count and by encoded bytes, found by seq."""

from __future__ import annotations

import pytest

from trio_ws.state.history import History, Outgoing


def event(seq: int, line: str = "x") -> Outgoing:
    return Outgoing.of({"type": "log", "line": line, "seq": seq}, seq)


def test_an_outgoing_is_encoded_once_as_text_and_utf8() -> None:
    item = event(1, "é")
    assert item.data == item.text.encode() and '"é"' in item.text


def test_the_oldest_go_beyond_the_count_and_evicted_through_says_which() -> None:
    history = History(3, 10_000)
    for seq in range(1, 6):
        history.append(event(seq))
    assert [item.seq for item in history.tail(10)] == [3, 4, 5]
    assert (history.oldest_seq, history.evicted_through) == (3, 2)


def test_the_oldest_go_beyond_the_bytes_and_bytes_counts_what_is_held() -> None:
    size = len(event(1, "y" * 100).data)
    history = History(100, size * 2)
    for seq in range(1, 5):
        history.append(event(seq, "y" * 100))
    assert len(history) == 2 and history.bytes == size * 2


def test_after_finds_by_seq_across_a_hole() -> None:
    history = History(10, 10_000)
    for seq in (1, 2, 5, 6):
        history.append(event(seq))
    assert [item.seq for item in history.after(2, 10)] == [5, 6]
    assert [item.seq for item in history.after(3, 1)] == [5]


def test_of_types_keeps_order() -> None:
    history = History(10, 10_000)
    history.append(event(1))
    history.append(Outgoing.of({"type": "progress", "seq": 2}, 2))
    history.append(event(3))
    assert [item.seq for item in history.of_types(frozenset({"log"}))] == [1, 3]


@pytest.mark.parametrize(("events", "size"), [(0, 10), (10, 0)])
def test_bounds_below_one_are_refused(events: int, size: int) -> None:
    with pytest.raises(ValueError, match="at least"):
        History(events, size)


def test_a_journalled_text_that_is_not_an_event_is_refused() -> None:
    with pytest.raises(ValueError, match="not an event"):
        Outgoing.event("[1, 2]")
