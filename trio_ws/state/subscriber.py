"""Where one watcher stands in its project's fan-out: a small state machine (h11 style).

A subscriber's life, and which of them the fan-out writes to:

```
  subscribe ──> JOINING ──joined──> LIVE <──caught_up── CATCHING_UP
  (resume) ──────────────────────────│──────────────────────> ^
                  │                overflowed                 │
                  └──overflowed──> BEHIND ──catch_up──────────┘
  any open state ──resync──> BEHIND            (a resync is pending)
  any open state ──close───> CLOSING           (its connection is ending)
  any state ──────leave───> CLOSED             (out of the hub)
```

- JOINING: its initial messages (hello, snapshot) are not written yet; events
  are queued behind them.
- LIVE: every commit is written to it (directly, or queued for its send task).
- BEHIND: its queue overflowed (or a resync is pending); the fan-out skips it
  until its send task has drained the queue.
- CATCHING_UP: its send task brings it to the head from the history (or the
  journal), then resyncs it if that no longer reaches back. A resume starts here.
- CLOSING: its connection is ending; offers and wakes are no-ops from now on,
  so nothing a dying session holds (a closed nursery, a dead socket) can be
  reached by a fan-out.
- CLOSED: unsubscribed.

Closing wins over everything: a transition that arrives for a closing or closed
subscriber (a send task finishing a catch-up, a resync) changes nothing. Any
other transition not in the table is a bug and raises `InvalidTransition`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from trio_ws.runtime.constructors import NoPublicConstructor

if TYPE_CHECKING:
    from trio_ws.state.fanout import Direct
    from trio_ws.state.history import Outgoing


class SubscriberState(enum.Enum):
    JOINING = "joining"
    CATCHING_UP = "catching_up"
    LIVE = "live"
    BEHIND = "behind"
    CLOSING = "closing"
    CLOSED = "closed"


JOINING: Final = SubscriberState.JOINING
CATCHING_UP: Final = SubscriberState.CATCHING_UP
LIVE: Final = SubscriberState.LIVE
BEHIND: Final = SubscriberState.BEHIND
CLOSING: Final = SubscriberState.CLOSING
CLOSED: Final = SubscriberState.CLOSED

OPEN_STATES: Final = (JOINING, CATCHING_UP, LIVE, BEHIND)
ENDING_STATES: Final = (CLOSING, CLOSED)


class Transition(enum.Enum):
    JOINED = "joined"
    """Its initial messages were written."""
    OVERFLOWED = "overflowed"
    """Its queue was full when a commit (or a warning) was offered."""
    CATCH_UP = "catch_up"
    """Its send task drained the queue and starts reading the history."""
    CAUGHT_UP = "caught_up"
    """Its send task reached the head; the fan-out takes over again."""
    RESYNC = "resync"
    """The history it stands in started again (or could not be delivered): a resync
    and a fresh snapshot are pending."""
    CLOSE = "close"
    """Its connection is ending."""
    LEAVE = "leave"
    """It left the hub."""


TRANSITIONS: Final[dict[tuple[SubscriberState, Transition], SubscriberState]] = {
    (JOINING, Transition.JOINED): LIVE,
    (CATCHING_UP, Transition.JOINED): CATCHING_UP,
    (BEHIND, Transition.JOINED): BEHIND,
    (JOINING, Transition.OVERFLOWED): BEHIND,
    (LIVE, Transition.OVERFLOWED): BEHIND,
    (BEHIND, Transition.CATCH_UP): CATCHING_UP,
    (CATCHING_UP, Transition.CAUGHT_UP): LIVE,
    **{(state, Transition.RESYNC): BEHIND for state in OPEN_STATES},
    **{(state, Transition.CLOSE): CLOSING for state in (*OPEN_STATES, CLOSING)},
    **{(state, Transition.LEAVE): CLOSED for state in SubscriberState},
}
"""Every allowed transition; for a closing or closed subscriber, any other is a no-op."""


class InvalidTransition(RuntimeError):
    """A transition the table does not allow from the subscriber's state: a bug."""

    def __init__(self, state: SubscriberState, transition: Transition) -> None:
        super().__init__(f"subscriber cannot go {transition.value!r} while {state.value!r}")
        self.state = state
        self.transition = transition


def next_state(state: SubscriberState, transition: Transition) -> SubscriberState:
    """The state after ``transition``; unchanged for an ending subscriber; else
    InvalidTransition when the table has no such edge."""
    new = TRANSITIONS.get((state, transition))
    if new is not None:
        return new
    if state is CLOSING or state is CLOSED:
        return state
    raise InvalidTransition(state, transition)


@dataclass(eq=False, slots=True)
class Subscriber(metaclass=NoPublicConstructor):
    """One watcher of a project: its state, its queue, the last seq it was given.
    Made only by `ProjectHub.subscribe`, which fixes what it is sent first and joins
    it to the fan-out in the same step: a subscriber outside a hub is half-made.

    Lean on purpose (thousands sit idle): its queue is a plain list (an empty deque
    costs ten times more) bounded by ``capacity``, and no task waits on it; ``wake``
    starts one when a message is queued and none is writing (see `ProjectHub.drain`).
    """

    id: int
    backlog: int
    sent_seq: int
    handed_seq: int
    """The last event the fan-out handed it (written or queued): it is handed only what
    follows. Its sent_seq where the fan-out takes over (joining, catching up)."""
    state: SubscriberState
    initial: list[Outgoing]
    capacity: int
    warned: int
    """Serial of the newest standing warning this subscriber was handed."""
    delivered: int = 0
    queue: list[Outgoing] = field(default_factory=list)
    queued: int = 0
    """Messages queued that its send task has not written yet (in the queue or in hand)."""
    direct: Direct | None = None
    """The connection's direct write, once the initial messages are out."""
    wake: Callable[[], None] | None = None
    """Called when a message is queued while none was: starts (or wakes) its send task."""
    abort: Callable[[], None] | None = None
    """Ends its connection at once; used when delivering to it failed unexpectedly."""
    resync: list[Outgoing] | None = None
    """``resync`` and its snapshot, fixed when the history started again under this
    subscriber: sent before anything else, then it catches up from their point."""

    # -- where it stands ---------------------------------------------------------

    @property
    def takes_live(self) -> bool:
        """Does the fan-out hand it commits (written or queued)?"""
        state = self.state
        return state is LIVE or state is JOINING

    @property
    def is_behind(self) -> bool:
        """Is its send task (not the fan-out) to bring it to the head?"""
        state = self.state
        return state is BEHIND or state is CATCHING_UP

    @property
    def is_open(self) -> bool:
        state = self.state
        return state is not CLOSING and state is not CLOSED

    # -- transitions -------------------------------------------------------------

    def _go(self, transition: Transition) -> None:
        self.state = next_state(self.state, transition)

    def joined(self, direct: Direct | None) -> None:
        """Its initial messages are written: from now on the fan-out may write to it
        through ``direct`` (unless it is ending)."""
        self._go(Transition.JOINED)
        if self.is_open:
            self.direct = direct

    def overflowed(self) -> None:
        self._go(Transition.OVERFLOWED)

    def catch_up(self) -> None:
        self._go(Transition.CATCH_UP)

    def caught_up(self) -> None:
        """Its send task reached the head (``sent_seq``): the fan-out hands it what follows."""
        self._go(Transition.CAUGHT_UP)
        self.handed_seq = self.sent_seq

    def must_resync(self, messages: list[Outgoing], sent_seq: int) -> None:
        """Replace whatever it was owed by ``messages`` (a resync and its snapshot),
        continuing after ``sent_seq``, and wake its send task to write them."""
        if not self.is_open:
            return
        self._go(Transition.RESYNC)
        self.resync = messages
        self.sent_seq = sent_seq
        if self.wake is not None:
            self.wake()

    def close(self) -> None:
        """Its connection is ending: nothing more is queued, its send task is not woken."""
        self._go(Transition.CLOSE)
        self.direct = None
        self.wake = None
        self.abort = None

    def leave(self) -> None:
        """Out of the hub."""
        self._go(Transition.LEAVE)
        self.direct = None
        self.wake = None
        self.abort = None

    def fail(self) -> None:
        """Delivering to it raised: end its connection (its client reconnects and
        resumes), and never offer to it again."""
        abort = self.abort
        self.close()
        if abort is not None:
            abort()

    # -- its queue ---------------------------------------------------------------

    def offer(self, item: Outgoing, *, room: int = 0) -> bool:
        """Queue a message for this subscriber only; False if its queue is full (past
        ``capacity`` + ``room``) or it is ending (then nothing happens at all)."""
        state = self.state
        if state is CLOSING or state is CLOSED or len(self.queue) >= self.capacity + room:
            return False
        self.queue.append(item)
        self.queued += 1
        if self.queued == 1 and self.wake is not None:
            self.wake()
        return True
