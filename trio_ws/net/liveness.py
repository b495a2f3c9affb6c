"""Finding the listening clients that vanished (project subscribers, overview clients).

A dashboard that mostly listens sends nothing for long, and one gone without a FIN
(a laptop shut, a network dropped) would be held for ever on a project where
nothing happens. So one server task, `probe_idle_sessions`, pings every such
client that sent nothing for the idle time, one ping out at a time, from the
client's own session nursery (an idle client holds no task of its own); a client
that answers no pong in time has its connection reset, and its session ends.
Producers are not probed here: they have their own ping timeout (`net.publish`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import trio

from trio_ws.core import defaults
from trio_ws.net.connection import WebSocket
from trio_ws.state.manager import ConnectionManager

PING_PAYLOAD = b"alive?"


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


@runtime_checkable
class Probed(Protocol):
    """A session whose client `probe_idle_sessions` checks."""

    def probe_if_idle(self, now: float, idle: float, pong_within: float) -> None: ...


async def probe_idle_sessions(
    manager: ConnectionManager,
    idle: float = defaults.SUBSCRIBER_IDLE,
    pong_within: float = defaults.SUBSCRIBER_PONG_TIMEOUT,
) -> None:
    """The server's one liveness task: every quarter of ``idle``, ask every probed
    session to ping its client if that sent nothing for ``idle`` seconds."""
    while True:
        await trio.sleep(idle / 4)
        now = trio.current_time()
        for session in manager.live_sessions():
            if isinstance(session, Probed):
                session.probe_if_idle(now, idle, pong_within)
