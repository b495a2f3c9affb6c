"""The producer endpoint, ``/ws/projects/{name}/publish`` (PROTOCOL.md 4).

Producers deliver at least once; the project takes each item exactly once:
every item carries a per-producer ``pseq``, and the stream's
`trio_ws.state.ledger.ProducerLedger` (kept across reconnects) decides what is
new, what is a resend (skipped, never applied twice) and what leaves a gap.
This module parses the messages and applies what the ledger admits. One
producer per stream at a time: a different id on a live stream is closed 4009;
the same id reconnecting replaces its stale connection. A producer that
vanishes without a final status gets a grace period from its `Project`, after
which its stream is marked ``crashed``.

All messages to a producer go through one writer task fed by a small
channel; the `WebSocket` underneath serialises them with its pings and
close frame. A producer that answers no ping for the ping timeout (20 s) is
dropped, so a half-open connection never holds its stream.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final, TypeGuard

import trio

from trio_ws.core import defaults, protocol
from trio_ws.core.errors import BadClientMessage, ExpectedHello, JournalUnavailable, StreamTaken
from trio_ws.core.messages import ProducerReply
from trio_ws.core.protocol import EXIT_LINE, Stream
from trio_ws.data.progress import Progress
from trio_ws.journal.interface import JournalError
from trio_ws.net.connection import ConnectionClosed, WebSocket
from trio_ws.net.refusals import refuse
from trio_ws.state.hub import ProducerTimes, ProjectHub
from trio_ws.state.project import FINAL_STATUSES, ProducerSlot, Project

if TYPE_CHECKING:
    from trio_ws.state.manager import ConnectionManager

log = logging.getLogger("trio_ws.net.publish")

MAX_PRODUCER_MESSAGE: Final = max(16 * 1024 * 1024, protocol.MAX_SCREENSHOT_BYTES + 64 * 1024)
"""The inbound frame limit of a producer: room for a ``screenshot`` at its own cap
(`protocol.MAX_SCREENSHOT_BYTES`) and its other fields; a lines message keeps its
own limits (`MAX_LINES_PER_MESSAGE`, and each line cut at ``LINE_CAP``)."""
MAX_FEATURES: Final = 10_000
"""Most rows a producer's ``features`` message may carry."""
MAX_LINES_PER_MESSAGE: Final = 10_000
ACK_INTERVAL: Final = 0.1
OUTBOX_SIZE: Final = 64
PRODUCER_PING_TIMEOUT: Final = defaults.PRODUCER_PING_TIMEOUT
"""A producer that answers no websocket ping for this long is dropped (PROTOCOL.md 4.2)."""
HELLO_TIMEOUT: Final = 10.0
MAX_PRODUCER_TIME: Final = 2**40
"""The latest producer time (``at``, ``sent``) taken, about the year 36,800: clock
differences of such times stay finite floats, and an event's date a real date."""


class PublishSession:
    """One connected producer."""

    def __init__(
        self,
        ws: WebSocket,
        hub: ProjectHub,
        slot: ProducerSlot,
        producer_id: str,
        peer: str,
        ping_timeout: float = PRODUCER_PING_TIMEOUT,
        staged_limit: int = defaults.STAGED_LIMIT,
    ) -> None:
        self.ws = ws
        self._ping_timeout = ping_timeout
        self._staged_limit = staged_limit
        self.hub = hub
        self.slot = slot
        self.producer_id = producer_id
        self.peer = peer
        self._outbox_send, self._outbox = trio.open_memory_channel[str](OUTBOX_SIZE)
        self._acked_sent = -1
        self._cancel = trio.CancelScope()

    @property
    def committed(self) -> int:
        """What acks may say: the highest pseq whose events the journal holds."""
        return self.slot.ledger.committed_of(self.producer_id)

    @property
    def current(self) -> bool:
        """False once a newer connection of the same producer took the slot over."""
        return self.slot.session is self

    async def run(self) -> None:
        self._queue({"type": "welcome", "acked": self.committed})
        self._acked_sent = self.committed
        if self.slot.stream == "agent" and self.hub.screenshots.watching:
            # Only when true: every connection starts not watching, so a false here
            # would say nothing new, and older producers read the first messages in order.
            self.send_screenshots(True)
        with self._cancel:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                nursery.start_soon(self._ack_ticker)
                nursery.start_soon(self._keepalive)
                await self._receive_loop()
                nursery.cancel_scope.cancel()

    def send_control(self, action: str) -> bool:
        """Queue a control message; False when the producer is not taking messages."""
        return self._queue({"type": "control", "action": action})

    def send_screenshots(self, watching: bool) -> bool:
        """Tell the producer whether to take screenshots; False when it takes no messages."""
        return self._queue({"type": "screenshots", "watching": watching})

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code`` (1001 at shutdown), bounded by the close timeout."""
        await self.ws.aclose(code, reason)
        self._cancel.cancel()

    # -- tasks -------------------------------------------------------------------

    async def _writer(self) -> None:
        async for text in self._outbox:
            try:
                await self.ws.send_message(text)
            except ConnectionClosed:
                self._cancel.cancel()
                return

    async def _keepalive(self) -> None:
        """Ping every half ping timeout; a producer whose pong does not come within the
        ping timeout is dropped (its connection reset) and the grace period begins."""
        count = 0
        while True:
            await trio.sleep(self._ping_timeout / 2)
            count += 1
            answered = await self.ws.answers_ping(str(count).encode(), self._ping_timeout)
            if answered is None:
                return
            if not answered:
                log.warning(
                    "project %s: producer %s answered no ping for %g s; dropped",
                    self.slot.project,
                    self.peer,
                    self._ping_timeout,
                    extra={"client": self.peer},
                )
                self._cancel.cancel()
                return

    async def _ack_ticker(self) -> None:
        while True:
            await trio.sleep(ACK_INTERVAL)
            committed = self.committed  # ack means durable (STATE.md 3.2)
            if committed > self._acked_sent and self._queue({"type": "ack", "pseq": committed}):
                self._acked_sent = committed

    async def _receive_loop(self) -> None:
        while True:
            if self.hub.pending >= self._staged_limit:
                # Back-pressure: read nothing more until commits took half of it back.
                await self.hub.wait_staged_at_most(self._staged_limit // 2)
            try:
                message = await self.ws.get_message()
            except ConnectionClosed:
                return
            if not self.current:
                return
            problem = self._apply(message)
            if problem is not None:
                log.warning(
                    "project %s: producer %s sent a bad message: %s",
                    self.slot.project,
                    self.peer,
                    problem,
                    extra={"client": self.peer},
                )
                self._queue(protocol.warning("protocol", problem))

    # -- applying items ------------------------------------------------------------

    def _apply(self, message: str | bytes) -> str | None:
        """Apply one producer message to the hub; returns what was wrong with it, if anything."""
        try:
            payload = protocol.decode_client_message(message)
        except BadClientMessage as bad:
            return str(bad)
        kind = payload.get("type")
        if kind == "lines":
            return self._apply_lines(payload)
        if kind == "status":
            return self._apply_status(payload)
        if kind == "progress":
            return self._apply_progress(payload)
        if kind == "features":
            return self._apply_features(payload)
        if kind == "screenshot":
            return self._apply_screenshot(payload)
        return None  # unknown types are ignored, as on the subscribe side

    def _apply_features(self, payload: dict[str, Any]) -> str | None:
        """The features board the producer read on its machine (no pseq: the latest
        wins, and the producer sends it again after each welcome)."""
        if self.slot.stream != "agent":
            return "features come from the agent stream's producer"
        rows = payload.get("features")
        if not isinstance(rows, list) or len(rows) > MAX_FEATURES:
            return f"features needs a 'features' list of at most {MAX_FEATURES} rows"
        if not all(
            isinstance(row, dict) and _is_int(row.get("id")) and isinstance(row.get("name"), str)
            for row in rows
        ):
            return "every feature must be an object with an integer 'id' and a string 'name'"
        self.hub.set_features(rows)
        return None

    def _apply_lines(self, payload: dict[str, Any]) -> str | None:
        first, lines = payload.get("first"), payload.get("lines")
        if not _is_pseq(first) or not isinstance(lines, list):
            return "lines needs an integer 'first' >= 1 and a 'lines' list"
        if len(lines) > MAX_LINES_PER_MESSAGE:
            return f"at most {MAX_LINES_PER_MESSAGE} lines per message"
        if not all(isinstance(line, str) for line in lines):
            return "every line must be a string"
        skip = self.slot.ledger.lines_to_skip(self.producer_id, first, len(lines))
        if isinstance(skip, str):
            return skip
        if skip == len(lines):
            return None  # all already applied: a resend
        fresh = lines[skip:]
        times = self._times(payload.get("at"), payload.get("sent"), len(lines))
        if times is not None:
            times = ProducerTimes(times.times[skip:], times.offset)
        self.hub.feed_lines(fresh, self.slot.stream, times)
        self.slot.ledger.applied_through(self.producer_id, first + len(lines) - 1)
        return None

    def _admit_item(self, kind: str, pseq: object) -> str | None:
        """Whether a single item (a status or progress) comes next: None to apply it,
        "" for a resend already applied (skip silently), else what is wrong."""
        if not _is_pseq(pseq):
            return f"{kind} needs an integer 'pseq' >= 1"
        new = self.slot.ledger.item_is_new(self.producer_id, pseq)
        if isinstance(new, str):
            return new
        return None if new else ""

    def _apply_status(self, payload: dict[str, Any]) -> str | None:
        pseq, status = payload.get("pseq"), payload.get("status")
        refusal = self._admit_item("status", pseq)
        if refusal is not None or not _is_pseq(pseq):
            return refusal or None  # "": a resend, skipped silently; _is_pseq narrows the type
        allowed = protocol.AGENT_STATUSES if self.slot.stream == "agent" else protocol.DEV_STATUSES
        self.slot.ledger.applied_through(self.producer_id, pseq)
        if not isinstance(status, str) or status not in allowed:  # a list is unhashable
            return f"unknown {self.slot.stream} status {status!r} (item {pseq} skipped)"
        exit_code = payload.get("exit_code")
        times = None
        if "at" in payload:  # one item's time, checked as a lines message's are
            times = self._times([payload["at"]], payload.get("sent"), 1)
        if status in FINAL_STATUSES and _is_int(exit_code):
            self.hub.feed_lines([f"{EXIT_LINE} {exit_code}"], self.slot.stream, times)
        self.hub.set_status(status, self.slot.stream, times)
        return None

    def _times(self, at: object, sent: object, count: int) -> ProducerTimes | None:
        """When the producer read its ``count`` items (``at``, and ``sent`` to correct
        for its clock), or None: then they are dated on arrival. A malformed pair is
        said back once per message and the items are still applied."""
        if at is None and sent is None:
            return None
        now = self.hub.wall_time()
        if (
            isinstance(at, list)
            and len(at) == count
            and all(_is_time(when) for when in at)
            and _is_time(sent)
            and all(when - sent + now >= 0 for when in at)
        ):
            return ProducerTimes(at, now - sent)
        self._queue(
            protocol.warning(
                "protocol",
                f"'at' must list {count} times and 'sent' be a time (UNIX seconds, 0 to"
                f" {MAX_PRODUCER_TIME}, none before 1970 on this server's clock);"
                " dated on arrival instead",
            )
        )
        return None

    def _apply_progress(self, payload: dict[str, Any]) -> str | None:
        """A ``progress`` item (PROTOCOL.md 4.1): four counts, integers >= 0, none of
        ``passing``, ``in_progress``, ``needs_human_input`` above ``total``. Only the
        agent stream's producer reads the project; a bad item is skipped, said back."""
        pseq = payload.get("pseq")
        refusal = self._admit_item("progress", pseq)
        if refusal is not None or not _is_pseq(pseq):
            return refusal or None  # "": a resend, skipped silently; _is_pseq narrows the type
        self.slot.ledger.applied_through(self.producer_id, pseq)
        if self.slot.stream != "agent":
            return f"progress comes from the agent stream only (item {pseq} skipped)"
        problem = _progress_problem(payload)
        if problem is not None:
            return f"{problem} (item {pseq} skipped)"
        self.slot.progress_from = self.producer_id
        self.hub.publish_progress(
            Progress(
                passing=payload["passing"],
                in_progress=payload["in_progress"],
                total=payload["total"],
                needs_human_input=payload["needs_human_input"],
            )
        )
        return None

    def _apply_screenshot(self, payload: dict[str, Any]) -> str | None:
        """A ``screenshot`` (no pseq: nothing to skip or ack) to its watchers, or what
        is wrong with it; the agent stream's only, as the agents' browsers are."""
        if self.slot.stream != "agent":
            return "screenshots come from the agent stream only; dropped"
        try:
            shot = protocol.screenshot_of(payload)
        except BadClientMessage as bad:
            return str(bad)
        if not self.hub.publish_screenshot(shot):
            log.debug(
                "project %s: screenshot of %s names no active agent; dropped",
                self.slot.project,
                shot["sessionName"],
            )
        return None

    def _queue(self, message: ProducerReply) -> bool:
        try:
            self._outbox_send.send_nowait(protocol.encode(message))
        except (trio.WouldBlock, trio.ClosedResourceError):
            return False
        return True


def _is_time(value: object) -> TypeGuard[float]:
    """A JSON number that is a UNIX time from 0 to `MAX_PRODUCER_TIME` (not a bool, not
    NaN): compared, never converted, so an integer too big for a float is refused here
    instead of failing the connection in the arithmetic after."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and 0 <= value <= MAX_PRODUCER_TIME
    )


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_pseq(value: object) -> TypeGuard[int]:
    return _is_int(value) and value >= 1


PROGRESS_COUNTS: Final = ("passing", "in_progress", "total", "needs_human_input")


def _progress_problem(payload: dict[str, Any]) -> str | None:
    """What is wrong with a ``progress`` item's counts, if anything."""
    for name in PROGRESS_COUNTS:
        value = payload.get(name)
        if not _is_int(value) or value < 0:
            return f"progress needs an integer {name!r} >= 0, got {value!r}"
    total = payload["total"]
    for name in ("passing", "in_progress", "needs_human_input"):
        if payload[name] > total:
            return f"progress {name!r} ({payload[name]}) exceeds 'total' ({total})"
    return None


async def serve_producer(
    ws: WebSocket,
    project: Project,
    sessions: ConnectionManager,
    peer: str,
    *,
    ping_timeout: float = PRODUCER_PING_TIMEOUT,
    staged_limit: int = defaults.STAGED_LIMIT,
) -> None:
    """Run one accepted producer connection from its ``hello``; owns its slot while live.

    The project takes the session over (and starts its stream's grace period when
    it ends); the session is registered with the manager so that shutdown closes
    it (1001).
    """
    hello = await _read_hello(ws)
    if hello is None:
        return
    producer_id, stream = hello
    slot = project.slots[stream]
    if slot.session is None:
        try:
            # It may come from another node (--broker): continue its pseqs and trackers.
            await project.producer_arrives(stream, producer_id)
        except JournalError as exc:
            log.error("project %s: cannot take the producer over: %s", project.name, exc)
            await refuse(ws, JournalUnavailable())
            return
    previous = slot.session
    if previous is not None and previous.producer_id != producer_id:
        await refuse(ws, StreamTaken())
        return
    session = PublishSession(ws, project.hub, slot, producer_id, peer, ping_timeout, staged_limit)
    project.producer_back(slot, session)
    sessions.add_session(session)
    try:
        await session.run()
    finally:
        sessions.remove_session(session)
        project.producer_left(slot, session)


async def _read_hello(ws: WebSocket) -> tuple[str, Stream] | None:
    try:
        with trio.fail_after(HELLO_TIMEOUT):
            message = await ws.get_message()
    except (ConnectionClosed, trio.TooSlowError):
        return None
    try:
        hello = protocol.decode_producer_hello(message)
    except ExpectedHello as refused:
        await refuse(ws, refused)
        return None
    return hello["producer"], hello["stream"]
