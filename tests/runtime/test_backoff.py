"""Delays between tries: jittered for clients, exact for a node's own retries."""

from __future__ import annotations

import pytest

from trio_ws.runtime.backoff import Backoff


def test_backoff_doubles_up_to_the_maximum_within_jitter() -> None:
    top = Backoff(initial=0.2, maximum=1.0, jitter=lambda: 0.999999)
    bottom = Backoff(initial=0.2, maximum=1.0, jitter=lambda: 0.0)
    assert [round(top.next(), 3) for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert [round(bottom.next(), 3) for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]


def test_backoff_reset_starts_over() -> None:
    delays = Backoff(initial=0.2, maximum=5.0, jitter=lambda: 0.0)
    for _ in range(4):
        delays.next()
    delays.reset()
    assert delays.next() == pytest.approx(0.1)


def test_without_jitter_each_delay_is_the_whole_step() -> None:
    """What the hub's commit retry and the broker follower use."""
    delays = Backoff(initial=0.05, maximum=2.0, jitter=None)
    assert [delays.next() for _ in range(8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
