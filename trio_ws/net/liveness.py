"""Finding the listening clients that vanished (project subscribers, overview clients).

A dashboard that mostly listens sends nothing for long, and one gone without a FIN
(a laptop shut, a network dropped) would be held for ever on a project where
nothing happens. So one server task, `probe_idle_sessions`, pings every such
client that sent nothing for the idle time, one ping out at a time, from the
client's own session nursery (an idle client holds no task of its own); a client
that answers no pong in time has its connection reset, and its session ends.
The walk looks about once a second and lets other tasks run after every
PROBE_CHUNK sessions, so 15,000 dashboards that connected together are pinged
in slices as each falls due, not in one burst that holds every fan-out.
Producers are not probed here: they have their own ping timeout (`net.publish`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Final

import trio

from trio_ws.core import defaults
from trio_ws.net.connection import WebSocket

PING_PAYLOAD = b"alive?"
PROBE_CHUNK: Final = 512
"""Sessions the walk looks at before it lets other tasks run."""
PROBE_EVERY: Final = 1.0
"""Longest time between two walks (a quarter of the idle time when that is shorter)."""


class IdleProbe:
    """When one client was last heard, and the ping that checks a silent one."""

    __slots__ = ("_heard", "_on_silent", "_probing", "_ws")

    def __init__(self, ws: WebSocket, on_silent: Callable[[float], None]) -> None:
        """``on_silent(pong_within)`` says and counts a client dropped for not answering."""
        self._ws = ws
        self._on_silent = on_silent
        self._heard = trio.current_time()
        self._probing = False

    def heard(self, now: float) -> None:
        """The client sent a message at ``now``: it is no longer idle."""
        self._heard = now

    def probe_if_idle(
        self, nursery: trio.Nursery | None, now: float, idle: float, pong_within: float
    ) -> None:
        """Ping the client in ``nursery`` (its session's; None once that is closing) if
        it sent nothing for ``idle`` seconds and no ping is out; one that answers none
        within ``pong_within`` seconds is reset (its receive loop then ends)."""
        if self._probing or nursery is None or now - self._heard < idle:
            return
        self._probing = True
        nursery.start_soon(self._probe, pong_within)

    async def _probe(self, pong_within: float) -> None:
        try:
            answered = await self._ws.answers_ping(PING_PAYLOAD, pong_within)
            if answered is None:
                return  # the session ends by itself
            if not answered:
                self._on_silent(pong_within)
                return
            self._heard = trio.current_time()
        finally:
            self._probing = False


class Probed(abc.ABC):
    """A session whose client `probe_idle_sessions` checks (subclassed by the endpoints:
    a nominal check costs 0.5 µs a session, a runtime-checkable protocol's 5 to 27)."""

    __slots__ = ()

    @abc.abstractmethod
    def probe_if_idle(self, now: float, idle: float, pong_within: float) -> None:
        """Ping the client if it sent nothing for ``idle`` seconds (`IdleProbe`)."""


async def probe_idle_sessions(
    live_sessions: Callable[[], Sequence[object]],
    idle: float = defaults.SUBSCRIBER_IDLE,
    pong_within: float = defaults.SUBSCRIBER_PONG_TIMEOUT,
) -> None:
    """The server's one liveness task: every quarter of ``idle`` (at most PROBE_EVERY),
    ask every probed session of ``live_sessions()`` (a copy, walked while they come
    and go) to ping its client if that sent nothing for ``idle``
    seconds, PROBE_CHUNK sessions per scheduler pass."""
    while True:
        await trio.sleep(min(idle / 4, PROBE_EVERY))
        sessions = live_sessions()
        for start in range(0, len(sessions), PROBE_CHUNK):
            if start:
                await trio.lowlevel.checkpoint()
            now = trio.current_time()
            for session in sessions[start : start + PROBE_CHUNK]:
                if isinstance(session, Probed):
                    session.probe_if_idle(now, idle, pong_within)
