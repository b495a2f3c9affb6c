"""`project_websocket`: one dashboard watching one project (PROTOCOL.md 2, 3).

A session is a receive loop that always drains what the client sends
(pings, control, garbage) so the client can never wedge its own socket, and,
only while something is queued for the subscriber, a send task in the same
nursery (`ProjectHub.drain`, started by the hub's wake-up): an idle
subscriber holds one task. Most events never need it: the fan-out writes
them straight to the socket when it takes them (`WebSocket.send_now`). Every
write, pongs and closes included, goes through the one `WebSocket` write
path, so a close frame never lands in the middle of another frame.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Final

import trio

from trio_ws.core import defaults, protocol
from trio_ws.core.errors import BadClientMessage
from trio_ws.core.messages import ConnectionMessage
from trio_ws.net import frames
from trio_ws.net.connection import ConnectionClosed, PeerStalled, WebSocket
from trio_ws.net.liveness import IdleProbe, Probed
from trio_ws.state.fanout import FanOut
from trio_ws.state.history import FLUSH, Outgoing
from trio_ws.state.manager import ConnectionManager
from trio_ws.state.project import Project
from trio_ws.state.subscriber import Subscriber

log = logging.getLogger("trio_ws.net.subscribe")
REPLY_ROOM: Final = 64
"""Replies (pongs, warnings) a subscriber may have queued past its queue's capacity."""

MAX_INBOUND_BYTES: Final = 64 * 1024
FLOOD_MESSAGES: Final = 100
FLOOD_WINDOW: Final = 10.0


@dataclass(slots=True)
class SubscribeRequest:
    """What the handshake established about a subscriber."""

    project: str
    since: int | None
    epoch: str | None
    backlog: int
    authorized: bool
    origin_may_control: bool
    """False for a browser page of another origin: it may watch, not steer (PROTOCOL.md 3.4)."""
    peer: str


MAX_SEQ_DIGITS: Final = 19
"""A ``since`` beyond 19 digits is beyond any head; ``int()`` would raise past 4,300."""
DEFAULT_BACKLOG: Final = defaults.BACKLOG
MAX_BACKLOG: Final = defaults.MAX_BACKLOG


def parse_since(raw: str | None) -> int | None:
    """The ``since`` query value; anything but a plausible seq is -1, which the hub
    calls invalid (``resync invalid_since``), whatever the client sent.

    Not ``int()`` alone: it also reads ``0_2``, `` 2`` and non-ASCII digits.
    """
    if raw is None:
        return None
    significant = raw.lstrip("0")
    if not (raw.isascii() and raw.isdigit()) or len(significant) > MAX_SEQ_DIGITS:
        return -1
    return int(significant or "0")


def parse_backlog(raw: str | None) -> int:
    """The ``backlog`` query value clamped to 0-1000 (so a huge number asks for all of
    it); the default when it is no plain number."""
    if raw is None or not (raw.isascii() and raw.isdigit()):
        return DEFAULT_BACKLOG
    significant = raw.lstrip("0")
    if len(significant) > len(str(MAX_BACKLOG)):
        return MAX_BACKLOG
    return min(int(significant or "0"), MAX_BACKLOG)


class SubscriberSession(Probed):
    """A live subscriber connection; closable by the manager on shutdown."""

    __slots__ = (
        "_liveness", "_nursery", "_sending", "project", "request", "subscriber", "ws",
    )  # fmt: skip

    def __init__(
        self, ws: WebSocket, project: Project, subscriber: Subscriber, request: SubscribeRequest
    ) -> None:
        self.ws = ws
        self.project = project
        self.subscriber = subscriber
        self.request = request
        self._nursery: trio.Nursery | None = None
        self._sending = False
        """A send task runs (or the connection failed: then none is started again)."""
        self._liveness = IdleProbe(ws, self._silent)

    async def run(self) -> None:
        """Until the connection ends. The receive loop ends only once a close frame
        was sent or the connection is gone, so cancelling a send task then never
        cuts a frame the peer could still read."""
        subscriber = self.subscriber
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            subscriber.wake = self._wake
            subscriber.abort = self.ws.abort
            try:
                self._wake()  # the initial messages
                # The receive loop, here rather than in a method of its own: an idle
                # subscriber's task holds each frame of its chain, 15,000 times over.
                arrivals: deque[float] | None = None  # most dashboards never send: allocate late
                while True:
                    try:
                        message = await self.ws.get_message()
                    except ConnectionClosed:
                        return
                    if arrivals is None:
                        arrivals = deque(maxlen=FLOOD_MESSAGES)
                    if self._flooded(arrivals):
                        await self.ws.aclose(1008, "too many messages")
                        return
                    await self._handle(message)
            finally:
                # Leave the hub while this nursery still takes tasks (no checkpoint
                # until it closes): from here on no fan-out offers to this subscriber
                # or wakes it, so none can meet a nursery closed to new arrivals.
                self._nursery = None
                self.project.unsubscribe(subscriber)
                nursery.cancel_scope.cancel()

    def _flooded(self, arrivals: deque[float]) -> bool:
        """A message came: note when; True (and say so) when it is over FLOOD_MESSAGES
        within FLOOD_WINDOW seconds."""
        now = trio.current_time()
        if len(arrivals) == FLOOD_MESSAGES and now - arrivals[0] < FLOOD_WINDOW:
            log.warning(
                "project %s: subscriber %s sent over %d messages in %.0f s; closed 1008",
                self.request.project,
                self.request.peer,
                FLOOD_MESSAGES,
                FLOOD_WINDOW,
                extra={"client": self.request.peer},
            )
            return True
        arrivals.append(now)
        self._liveness.heard(now)
        return False

    def _wake(self) -> None:
        """Something was queued: start a send task unless one runs (or it is leaving)."""
        if self._sending or self._nursery is None:
            return
        self._sending = True
        self._nursery.start_soon(self._send_task)

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code`` (e.g. 1001 at shutdown); bounded by the close timeout,
        after which the connection is reset. The receive loop then ends by itself."""
        await self.ws.aclose(code, reason)

    async def _send(self, batch: list[Outgoing]) -> None:
        """Write a batch of messages with one write."""
        await self.ws.send_frames(frames.frames_of(batch))

    def _direct(self, fan_out: FanOut) -> bool:
        """The fan-out's write without waiting (`WebSocket.send_now`); when the kernel
        took part of it, the send task is woken to write the rest."""
        data = frames.fan_out_frames(fan_out)
        taken = self.ws.send_now(data)
        if 0 < taken < len(data):
            self.subscriber.offer(FLUSH)  # nothing is queued (the fan-out checked): it fits
        return taken > 0

    async def _send_task(self) -> None:
        try:
            await self.project.hub.drain(self.subscriber, self._send, self._direct)
        except PeerStalled as exc:
            log.warning(
                "project %s: subscriber %s: %s; aborted",
                self.request.project,
                self.request.peer,
                exc.reason,
                extra={"client": self.request.peer},
            )
            self.project.hub.stats.aborted += 1
            self.subscriber.close()
        except ConnectionClosed as exc:
            log.debug(
                "project %s: subscriber %s closed: %s", self.request.project, self.request.peer, exc
            )
            self.subscriber.close()
        else:
            # Found nothing more to write, with no checkpoint since: the next message
            # queued starts a new task.
            self._sending = False

    def probe_if_idle(self, now: float, idle: float, pong_within: float) -> None:
        """Ping a client that sent nothing for ``idle`` seconds (`IdleProbe`): a
        dashboard that vanished without a FIN is found."""
        self._liveness.probe_if_idle(self._nursery, now, idle, pong_within)

    def _silent(self, pong_within: float) -> None:
        log.info(
            "project %s: subscriber %s answered no ping for %g s; dropped",
            self.request.project,
            self.request.peer,
            pong_within,
            extra={"client": self.request.peer},
        )
        self.project.hub.stats.aborted += 1

    async def _handle(self, message: str | bytes) -> None:
        try:
            payload = protocol.decode_client_message(message)
        except BadClientMessage as bad:
            self._reply(bad.warning())
            return
        kind = payload.get("type")
        if kind == "ping":
            self._reply({"type": "pong"})
        elif kind == "control":
            await self._handle_control(payload.get("action"))
        elif kind == "browser_view_subscribe":
            self.project.watch_screenshots(self.subscriber, True)
        elif kind == "browser_view_unsubscribe":
            self.project.watch_screenshots(self.subscriber, False)

    async def _handle_control(self, action: object) -> None:
        if not isinstance(action, str) or action not in protocol.CONTROL_ACTIONS:
            refusal: str | None = f"unknown control action {action!r}"
        elif not self.request.origin_may_control:
            refusal = "control is accepted only from the server's own origin or an allowed one"
        elif not self.request.authorized:
            refusal = "control needs the server token"
        else:
            refusal = await self.project.control(action)
        if refusal is not None:
            self._reply(protocol.warning("control", refusal))

    def _reply(self, message: ConnectionMessage) -> None:
        """Queue a reply for this subscriber, also when its queue is full of events: a
        client that hears no pong thinks the connection dead (the AutoForge UI drops
        it after 90 s without a frame). `REPLY_ROOM` bounds how far replies go past
        the queue; the inbound rate limit keeps a client from asking for more."""
        if not self.subscriber.offer(Outgoing.of(message), room=REPLY_ROOM):
            log.warning(
                "project %s: subscriber %s has %d replies unread; one dropped",
                self.request.project,
                self.request.peer,
                REPLY_ROOM,
                extra={"client": self.request.peer},
            )


async def project_websocket(
    ws: WebSocket, manager: ConnectionManager, project: Project, request: SubscribeRequest
) -> None:
    """Serve one accepted subscriber of an open project until it leaves.

    The subscription is undone whatever fails after it was made, the session's
    set-up included, so neither the subscriber nor its project's poll loop leaks.
    """
    subscriber = project.subscribe(request.since, request.epoch, request.backlog)
    try:
        session = SubscriberSession(ws, project, subscriber, request)
        manager.add_session(session)
        try:
            await session.run()
        finally:
            manager.remove_session(session)
    finally:
        project.unsubscribe(subscriber)
