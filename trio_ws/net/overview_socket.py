"""``/ws/overview``: every project at a glance, live (the overview page, ``watch``
with no project).

First ``{"type":"overview","projects":[...],"registry_error":...}`` with every
listed project's summary (`core.project_summary.entry`), then
``{"type":"overview_update","projects":[...],"removed":[...]}`` whenever summaries
changed: at most one per project per `state.overview.COALESCE` seconds, and for a
slow client only the latest of each (its `OverviewWatcher` keeps one per project).
The client may send ``ping`` (answered ``pong``); anything else is ignored, a flood
closes the connection 1008. A client silent for the subscriber idle time is pinged
by the server's probe (`net.liveness`, as project subscribers are) and reset
when it does not answer: a vanished client is found though nothing changes.

A send is never cancelled partway: the send loop is cancelled only once the
receive loop ended, that is once a close frame was sent or the connection is gone.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Final

import trio

from trio_ws.core import protocol
from trio_ws.core.errors import BadClientMessage
from trio_ws.net.connection import ConnectionClosed, PeerStalled, WebSocket
from trio_ws.net.liveness import IdleProbe, Probed
from trio_ws.state.overview import Overview, OverviewWatcher

log = logging.getLogger("trio_ws.net.overview")

FLOOD_MESSAGES: Final = 100
FLOOD_WINDOW: Final = 10.0
PONG: Final = protocol.encode({"type": "pong"})


def list_message(kind: str, texts: list[str], removed: list[str], error: str | None) -> str:
    """An ``overview`` or ``overview_update`` message around summaries already encoded
    once for every watcher (joined here, not encoded again)."""
    head = protocol.encode({"type": kind})[:-1]
    tail = protocol.encode(
        {"removed": removed} if kind == "overview_update" else {"registry_error": error}
    )[1:]
    return f'{head},"projects":[{",".join(texts)}],{tail}'


class OverviewSession(Probed):
    """One overview client; closable by the manager at shutdown."""

    def __init__(self, ws: WebSocket, overview: Overview, peer: str) -> None:
        self.ws = ws
        self.overview = overview
        self.peer = peer
        self._nursery: trio.Nursery | None = None
        self._liveness = IdleProbe(ws, self._silent)

    def probe_if_idle(self, now: float, idle: float, pong_within: float) -> None:
        """Ping the client if it sent nothing for ``idle`` seconds (`IdleProbe`)."""
        self._liveness.probe_if_idle(self._nursery, now, idle, pong_within)

    def _silent(self, pong_within: float) -> None:
        log.info(
            "overview client %s answered no ping for %g s; dropped",
            self.peer,
            pong_within,
            extra={"client": self.peer},
        )
        self.overview.watchers_dropped += 1

    async def close(self, code: int, reason: str) -> None:
        await self.ws.aclose(code, reason)

    async def run(self) -> None:
        """Until the connection ends."""
        overview = self.overview
        watcher = overview.watch()  # first: no change between the list and it is lost
        try:
            texts = overview.first_list(watcher)
            first_count = len(texts)
            first = list_message("overview", texts, [], overview.registry_error)
            try:
                await self.ws.send_message(first)
            except PeerStalled:
                overview.watchers_dropped += 1
                return
            except ConnectionClosed:
                return
            overview.summaries_sent += first_count
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._send_loop, watcher)
                try:
                    await self._receive_loop()
                finally:
                    self._nursery = None  # no probe starts in a closing nursery
                    nursery.cancel_scope.cancel()
        finally:
            overview.unwatch(watcher)

    async def _send_loop(self, watcher: OverviewWatcher) -> None:
        try:
            while True:
                await watcher.wake.wait()
                texts, removed = watcher.take()
                await self.ws.send_message(list_message("overview_update", texts, removed, None))
                self.overview.summaries_sent += len(texts)
        except PeerStalled as exc:  # reset: the receive loop ends too
            log.info("overview client %s: %s; cut", self.peer, exc, extra={"client": self.peer})
            self.overview.watchers_dropped += 1
        except ConnectionClosed as exc:
            log.debug("overview client %s: %s", self.peer, exc)

    async def _receive_loop(self) -> None:
        arrivals: deque[float] = deque(maxlen=FLOOD_MESSAGES)
        while True:
            try:
                message = await self.ws.get_message()
            except ConnectionClosed:
                return
            now = trio.current_time()
            if len(arrivals) == FLOOD_MESSAGES and now - arrivals[0] < FLOOD_WINDOW:
                log.warning("overview client %s flooded; closed 1008", self.peer)
                await self.ws.aclose(1008, "too many messages")
                return
            arrivals.append(now)
            self._liveness.heard(now)
            try:
                payload = protocol.decode_client_message(message)
            except BadClientMessage:
                continue
            if payload.get("type") == "ping":
                try:
                    await self.ws.send_message(PONG)
                except ConnectionClosed:
                    return
