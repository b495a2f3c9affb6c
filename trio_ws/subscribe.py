"""`project_websocket`: one dashboard watching one project (PROTOCOL.md 2, 3).

A session is two tasks in one nursery: the hub's send task for this
subscriber, and a receive loop that always drains what the client sends
(pings, control, garbage) so the client can never wedge its own socket.
Only the send task writes events; closes go through trio-websocket's
stream lock, so a close frame never lands in the middle of another frame.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from trio_ws import protocol
from trio_ws.frames import FrameWriter, WriteStalled
from trio_ws.hub import Outgoing, ProjectHub, Subscriber
from trio_ws.manager import ConnectionManager

log = logging.getLogger("trio_ws.subscribe")

MAX_INBOUND_BYTES: Final = 64 * 1024
FLOOD_MESSAGES: Final = 100
FLOOD_WINDOW: Final = 10.0
STALL_TIMEOUT: Final = 30.0
CLOSE_TIMEOUT: Final = 2.0

ControlHandler = Callable[[str, str], Awaitable[str | None]]
"""(project, action) -> None when forwarded, else the refusal text."""


class SubscriberStalled(Exception):
    """The peer accepted no bytes for the stall timeout."""


@dataclass
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
DEFAULT_BACKLOG: Final = 100
MAX_BACKLOG: Final = 1000


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


class SubscriberSession:
    """A live subscriber connection; closable by the manager on shutdown."""

    def __init__(
        self,
        ws: WebSocketConnection,
        raw_stream: trio.SocketStream,
        hub: ProjectHub,
        subscriber: Subscriber,
        request: SubscribeRequest,
        control: ControlHandler | None,
        stall_timeout: float = STALL_TIMEOUT,
    ) -> None:
        self.ws = ws
        self._raw_stream = raw_stream
        self.hub = hub
        self.subscriber = subscriber
        self.request = request
        self._control = control
        self._stall_timeout = stall_timeout
        self._writer = FrameWriter(ws, raw_stream, stall_timeout)
        self._cancel = trio.CancelScope()
        self._closed = trio.Event()
        self.close_code: int | None = None

    async def run(self) -> None:
        with self._cancel:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._send_task)
                await self._receive_loop()
                nursery.cancel_scope.cancel()
        if self.close_code is not None:
            # Our close is in flight: keep the connection's reader alive until the
            # peer's close reply arrives (or close gives up), or it waits in vain.
            await self._closed.wait()

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code`` (e.g. 1001 at shutdown); abort if the peer won't take it.

        Bounded by ``CLOSE_TIMEOUT``; shielded so the session's own teardown
        cannot cut the close frame off before it is written.
        """
        self.close_code = code
        try:
            with trio.move_on_after(CLOSE_TIMEOUT) as scope:
                scope.shield = True
                await self.ws.aclose(code, reason)
            if scope.cancelled_caught:
                await trio.aclose_forcefully(self._raw_stream)
        finally:
            self._closed.set()
            self._cancel.cancel()

    async def _send(self, batch: list[Outgoing]) -> None:
        """Write a batch of pre-encoded frames with one ``send_all``; a peer that
        accepts none of it for the stall timeout is given up on."""
        try:
            await self._writer.write(b"".join(item.frame for item in batch))
        except WriteStalled:
            raise SubscriberStalled from None

    async def _send_task(self) -> None:
        try:
            await self.hub.deliver(self.subscriber, self._send)
        except ConnectionClosed as exc:
            log.debug(
                "project %s: subscriber %s closed: %s",
                self.request.project,
                self.request.peer,
                exc.reason,
            )
        except SubscriberStalled:
            log.warning(
                "project %s: subscriber %s accepted nothing for %.0f s; aborted",
                self.request.project,
                self.request.peer,
                self._stall_timeout,
            )
            self.hub.stats.aborted += 1
            await trio.aclose_forcefully(self._raw_stream)
        self._cancel.cancel()

    async def _receive_loop(self) -> None:
        arrivals: deque[float] | None = None  # most dashboards never send: allocate late
        while True:
            try:
                message = await self.ws.get_message()
            except ConnectionClosed:
                return
            if arrivals is None:
                arrivals = deque(maxlen=FLOOD_MESSAGES)
            now = trio.current_time()
            if len(arrivals) == FLOOD_MESSAGES and now - arrivals[0] < FLOOD_WINDOW:
                log.warning(
                    "project %s: subscriber %s sent over %d messages in %.0f s; closed 1008",
                    self.request.project,
                    self.request.peer,
                    FLOOD_MESSAGES,
                    FLOOD_WINDOW,
                )
                await self.close(1008, "too many messages")
                return
            arrivals.append(now)
            await self._handle(message)

    async def _handle(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._reply(protocol.warning("protocol", "binary frames are not accepted"))
            return
        try:
            payload = json.loads(message)
        except ValueError:
            self._reply(protocol.warning("protocol", "message is not valid JSON"))
            return
        if not isinstance(payload, dict):
            self._reply(protocol.warning("protocol", "message is not a JSON object"))
            return
        kind = payload.get("type")
        if kind == "ping":
            self._reply({"type": "pong"})
        elif kind == "control":
            await self._handle_control(payload.get("action"))

    async def _handle_control(self, action: object) -> None:
        if not isinstance(action, str) or action not in protocol.CONTROL_ACTIONS:
            refusal: str | None = f"unknown control action {action!r}"
        elif not self.request.origin_may_control:
            refusal = "control is accepted only from the server's own origin or an allowed one"
        elif not self.request.authorized:
            refusal = "control needs the server token"
        elif self._control is None:
            refusal = "no producer can act on this project"
        else:
            refusal = await self._control(self.request.project, action)
        if refusal is not None:
            self._reply(protocol.warning("control", refusal))

    def _reply(self, message: protocol.Message) -> None:
        """Queue a connection message for this subscriber; dropped if its queue is full."""
        self.subscriber.offer(Outgoing.of(message))


async def project_websocket(
    ws: WebSocketConnection,
    raw_stream: trio.SocketStream,
    manager: ConnectionManager,
    request: SubscribeRequest,
    control: ControlHandler | None = None,
    stall_timeout: float = STALL_TIMEOUT,
) -> None:
    """Serve one accepted subscriber of a registered, existing project until it leaves."""
    hub, subscriber = manager.subscribe(
        request.project, request.since, request.epoch, request.backlog
    )
    session = SubscriberSession(ws, raw_stream, hub, subscriber, request, control, stall_timeout)
    manager.add_session(session)
    try:
        await session.run()
    finally:
        manager.remove_session(session)
        manager.unsubscribe(request.project, subscriber)
