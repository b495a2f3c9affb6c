"""The subscriber state machine: each named transition, closing wins, bad edges raise."""

from __future__ import annotations

from typing import Any

import pytest

from trio_ws.state.history import Outgoing
from trio_ws.state.subscriber import (
    BEHIND,
    CATCHING_UP,
    CLOSED,
    CLOSING,
    JOINING,
    LIVE,
    InvalidTransition,
    Subscriber,
    SubscriberState,
    Transition,
    next_state,
)


def fields(state: SubscriberState, capacity: int) -> dict[str, Any]:
    """Every field a subscriber is made with: the hub's own at a fresh start."""
    return {
        "id": 1,
        "backlog": 0,
        "sent_seq": 0,
        "handed_seq": 0,
        "state": state,
        "initial": [],
        "capacity": capacity,
        "warned": 0,
    }


def make(state: SubscriberState = JOINING, capacity: int = 2) -> Subscriber:
    return Subscriber._create(**fields(state, capacity))


def item(seq: int) -> Outgoing:
    return Outgoing.of({"type": "log", "line": f"l{seq}", "seq": seq}, seq)


def test_a_fresh_subscriber_goes_live_once_its_initial_messages_are_out() -> None:
    subscriber = make(JOINING)
    subscriber.joined(lambda fan_out: True)
    assert subscriber.state is LIVE
    assert subscriber.direct is not None
    assert subscriber.takes_live


def test_a_resuming_subscriber_stays_catching_up_after_joining() -> None:
    subscriber = make(CATCHING_UP)
    subscriber.joined(None)
    assert subscriber.state is CATCHING_UP
    assert not subscriber.takes_live


def test_overflow_catch_up_and_caught_up_bring_it_back_live() -> None:
    subscriber = make(LIVE)
    subscriber.overflowed()
    assert subscriber.state is BEHIND and subscriber.is_behind
    subscriber.catch_up()
    assert subscriber.state.value == "catching_up" and subscriber.is_behind
    subscriber.caught_up()
    assert subscriber.state.value == "live"


def test_caught_up_hands_the_fan_out_what_follows_its_catch_up() -> None:
    """What it was handed before falling behind is stale: the fan-out must hand it what
    follows the head its send task reached, no more and no less."""
    subscriber = make(LIVE)
    subscriber.handed_seq = 4
    subscriber.overflowed()
    subscriber.catch_up()
    subscriber.sent_seq = 9  # the send task wrote the history up to the head
    subscriber.caught_up()
    assert subscriber.handed_seq == 9


def test_must_resync_sets_its_point_and_wakes_its_send_task() -> None:
    woken: list[int] = []
    subscriber = make(LIVE)
    subscriber.wake = lambda: woken.append(1)
    subscriber.must_resync([item(7)], 7)
    assert subscriber.state is BEHIND
    assert subscriber.sent_seq == 7
    assert subscriber.resync is not None
    assert woken == [1]


@pytest.mark.parametrize("transition", list(Transition))
@pytest.mark.parametrize("ending", [CLOSING, CLOSED])
def test_an_ending_subscriber_ignores_every_transition_but_leave(
    transition: Transition, ending: SubscriberState
) -> None:
    expected = CLOSED if transition is Transition.LEAVE else ending
    assert next_state(ending, transition) is expected


@pytest.mark.parametrize(
    ("state", "transition"),
    [
        (LIVE, Transition.CAUGHT_UP),
        (JOINING, Transition.CATCH_UP),
        (LIVE, Transition.CATCH_UP),
        (CATCHING_UP, Transition.OVERFLOWED),
        (BEHIND, Transition.CAUGHT_UP),
    ],
)
def test_an_edge_the_table_lacks_is_a_bug(state: SubscriberState, transition: Transition) -> None:
    with pytest.raises(InvalidTransition, match=transition.value):
        next_state(state, transition)


def test_a_closing_subscriber_is_never_offered_to_nor_woken() -> None:
    woken: list[int] = []
    subscriber = make(LIVE)
    subscriber.wake = lambda: woken.append(1)
    subscriber.close()
    assert not subscriber.offer(item(1))
    assert subscriber.queue == [] and woken == []
    assert subscriber.wake is None and subscriber.direct is None


def test_a_closing_subscriber_is_not_resynced() -> None:
    subscriber = make(LIVE)
    subscriber.close()
    subscriber.must_resync([item(3)], 3)
    assert subscriber.state is CLOSING and subscriber.resync is None


def test_a_full_queue_refuses_without_waking_again() -> None:
    woken: list[int] = []
    subscriber = make(LIVE, capacity=2)
    subscriber.wake = lambda: woken.append(1)
    assert subscriber.offer(item(1)) and subscriber.offer(item(2))
    assert not subscriber.offer(item(3))
    assert woken == [1]  # only the first message queued wakes its send task


def test_fail_ends_its_connection_once_and_closes_it() -> None:
    aborted: list[int] = []
    subscriber = make(LIVE)
    subscriber.abort = lambda: aborted.append(1)
    subscriber.fail()
    subscriber.fail()
    assert aborted == [1]
    assert subscriber.state is CLOSING


def test_leave_from_any_state_is_closed() -> None:
    for state in SubscriberState:
        subscriber = make(state)
        subscriber.leave()
        assert subscriber.state is CLOSED


def test_a_subscriber_is_made_only_by_its_hub() -> None:
    with pytest.raises(TypeError, match="no public constructor"):
        Subscriber(**fields(LIVE, 1))
