"""The producer's connection (PROTOCOL.md 4): connect, ``hello``, ``welcome``, resend
what the outbox holds, send batches, take acks and controls, and reconnect with
jittered exponential backoff while the server is away. A refusal
(`trio_ws.clients.common.refuses_for_good`: a 4xxx close, an HTTP 4xx other than
408/429) stops it for good and says why.
"""

from __future__ import annotations

import json
import os
import secrets
import ssl
from collections.abc import Callable, Iterator, Sequence
from typing import Final
from urllib.parse import quote

import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    connect_websocket_url,
)

from trio_ws.clients.common import bearer_header, refuses_for_good, websocket_base
from trio_ws.clients.outbox import (
    Outbox,
    Report,
    stderr_report,
)
from trio_ws.clients.tls import TlsFailure, check_tls, for_url
from trio_ws.core import protocol
from trio_ws.core.messages import ScreenshotMessage
from trio_ws.core.protocol import JsonObject, Stream
from trio_ws.data.progress import Progress
from trio_ws.runtime.backoff import Backoff
from trio_ws.runtime.streak import FailureStreak

BACKOFF_FIRST: Final = 0.1
BACKOFF_MAX: Final = 5.0
FLUSH_RETRY: Final = 0.5
"""Seconds at most between two tries once `flush` began: a producer at its end has a
bounded life left, and the server it waits for (restarting, say) may be back any
moment; a backoff grown over a long outage would sleep through its return."""
CONNECT_TIMEOUT: Final = 5.0
CLOSE_TIMEOUT: Final = 2.0
TOO_BIG: Final = 1009
"""The close code of a server that refused a message as too big."""


def publish_url(server: str, project: str) -> str:
    """The publish endpoint of ``project`` on ``server`` (http(s) or ws(s), any path prefix)."""
    return websocket_base(server) + f"/ws/projects/{quote(project, safe='')}/publish"


def new_producer_id(kind: str) -> str:
    """A random id for one invocation, kept across its reconnects."""
    return f"{kind}-{os.getpid()}-{secrets.token_hex(6)}"


class ProducerRefused(Exception):
    """The server said do not retry (a 4xxx close, or HTTP 4xx other than 408/429)."""


class _Retry(Exception):
    """This connection failed in a way worth retrying; the message says how."""


_RETRYABLE: Final = (
    OSError,
    HandshakeError,
    ConnectionClosed,
    trio.TooSlowError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    TlsFailure,
    _Retry,
)


class Producer:
    """One producer identity on one stream of one project, across reconnects.

    Call `send_line`/`send_status` at any time (they never block), run `run`
    in a nursery, and finish with `flush` then `close`. ``ready`` is set once
    the first attempt is decided: welcomed (``connected``), refused
    (``refused`` says why) or failed (it keeps retrying).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        token: str,
        stream: Stream,
        *,
        producer_id: str | None = None,
        outbox: Outbox | None = None,
        on_control: Callable[[str], None] | None = None,
        report: Report = stderr_report,
        backoff_first: float = BACKOFF_FIRST,
        backoff_max: float = BACKOFF_MAX,
        connect_timeout: float = CONNECT_TIMEOUT,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.urls = (url,) if isinstance(url, str) else tuple(url)
        """The servers to try, in turn: a failed attempt or a lost connection moves on
        to the next one (nodes of one cluster, PROTOCOL.md 4.2)."""
        if not self.urls:
            raise ValueError("a producer needs at least one server URL")
        self._turn = 0
        self.stream = stream
        self.producer_id = producer_id or new_producer_id(stream)
        self.outbox = outbox if outbox is not None else Outbox()
        self.on_control = on_control
        self.report = report
        self.backoff_first = backoff_first
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.tls = tls
        """What ``wss://`` servers' certificates are checked against (None: the system's)."""
        self.connections = 0
        """Welcomes received so far; more than one means it reconnected."""
        self.connected = False
        self.refused: ProducerRefused | None = None
        self.ready = trio.Event()
        self.finished = trio.Event()
        self._headers = [bearer_header(token)]
        self._outage = FailureStreak()
        """Connection trouble is said at its start and at the next welcome, once each."""
        self._too_big = False
        """The last connection ended with a 1009 close: deal with it at the next welcome."""
        self._welcomed = trio.Event()
        self._closing = trio.Event()
        self._hurry = trio.Event()
        """Ends the wait before the next try: set by `close` and by `flush`."""
        self._flushing = False
        self._attempt = trio.CancelScope()
        self._wake = trio.Event()
        self._acked = trio.Event()
        self._features: list[JsonObject] | None = None
        self._features_unsent = False
        self.watching = False
        """The server says some subscriber wants screenshots (this connection's word:
        every connection starts not watching)."""
        self._screenshot: str | None = None
        """The latest screenshot waiting for the sender (one slot: the latest wins)."""

    @property
    def url(self) -> str:
        """The server this producer is connected to, or tries next."""
        return self.urls[self._turn]

    # -- feeding (synchronous, never blocks) -------------------------------------

    def send_line(self, line: str) -> bool:
        """Queue one raw line; False when it was dropped because the outbox is full."""
        kept = self.outbox.add_line(line)
        self._wake.set()
        return kept

    def send_status(self, status: str, exit_code: int | None = None) -> None:
        self.outbox.add_status(status, exit_code)
        self._wake.set()

    def send_progress(self, progress: Progress) -> None:
        self.outbox.add_progress(progress)
        self._wake.set()

    def send_features(self, rows: list[JsonObject]) -> None:
        """The features board as read here; sent now and again after every welcome
        (a server on another machine has no other way to show it). Not an item: the
        latest wins, so nothing older is kept or resent."""
        self._features = rows
        self._features_unsent = True
        self._wake.set()

    def send_screenshot(self, message: ScreenshotMessage) -> bool:
        """Hand a screenshot to this connection's sender, replacing one it has not sent
        yet; False (dropped) when not connected. Not an outbox item: it is never kept
        for a resend (see `ScreenshotMessage`), and the sender writes it whole, never
        cancelled mid-write but with the connection."""
        if not self.connected:
            return False
        self._screenshot = protocol.encode(message)
        self._wake.set()
        return True

    # -- lifecycle -----------------------------------------------------------------

    async def flush(self, within: float) -> int:
        """Wait until every item is acked or ``within`` seconds pass; the items left.
        A connection down meanwhile is tried again at once, then every FLUSH_RETRY."""
        self._flushing = True
        self._hurry.set()
        with trio.move_on_after(within):
            while self.outbox.pending and not self.finished.is_set():
                self._acked = trio.Event()
                await self._acked.wait()
        return self.outbox.pending

    async def wait_connections(self, count: int) -> None:
        """Return once ``count`` welcomes have been received in total."""
        while self.connections < count:
            await self._welcomed.wait()

    async def close(self) -> None:
        """Stop reconnecting and close the connection normally (1000); returns when `run` did."""
        self._closing.set()
        self._hurry.set()
        if not self.connected:  # connecting or waiting for a welcome: give up on it now
            self._attempt.cancel()
        await self.finished.wait()

    async def run(self) -> None:
        """Connect and deliver until `close` or a refusal; never raises for network trouble."""
        backoff = Backoff(self.backoff_first, self.backoff_max)
        try:
            while not self._closing.is_set():
                welcomed_before = self.connections
                try:
                    with self._attempt:
                        await self._connection()
                except Exception as exc:
                    reason = self._failure(exc)
                    if reason is None:
                        raise
                    if self.refused is not None:
                        return
                    if not self._closing.is_set() and self._outage.failed():
                        self.report(f"no connection to {self.url} ({reason}); retrying")
                    self.ready.set()
                if self.connections > welcomed_before:
                    backoff.reset()
                self._turn = (self._turn + 1) % len(self.urls)
                await self._pause(backoff.next())
                self._attempt = trio.CancelScope()
        finally:
            self.connected = False
            self.ready.set()
            self._acked.set()
            self.finished.set()

    async def _pause(self, delay: float) -> None:
        """Wait ``delay`` seconds before the next try, or less: `close` ends the wait, and
        once `flush` began no wait is longer than FLUSH_RETRY."""
        if self._flushing:
            delay = min(delay, FLUSH_RETRY)
        with trio.move_on_after(delay):
            await self._hurry.wait()
        if not self._closing.is_set():
            self._hurry = trio.Event()  # a flush's hurry ends one wait, not every one

    def _failure(self, exc: BaseException) -> str | None:
        """Why ``exc`` ended a connection; sets ``refused`` for a do-not-retry answer.

        None when ``exc`` holds something that is not a network failure (a bug).
        """
        leaves = list(_leaves(exc))
        if any(_close_code(leaf) == TOO_BIG for leaf in leaves):
            self._too_big = True  # until the next welcome, whatever fails in between
        for leaf in leaves:
            refusal = _refusal(leaf)
            if refusal is not None:
                self.refused = ProducerRefused(f"server refused the producer: {refusal}")
                return refusal
        if all(isinstance(leaf, _RETRYABLE) for leaf in leaves):
            return "; ".join(sorted({_describe(leaf) for leaf in leaves}))
        return None

    async def _connection(self) -> None:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(self.connect_timeout):
                await check_tls(self.url, self.tls)
                ws = await connect_websocket_url(
                    nursery,
                    self.url,
                    ssl_context=for_url(self.url, self.tls),
                    extra_headers=self._headers,
                )
            try:
                await self._converse(ws)
            finally:
                self.connected = False
                self.watching = False
                self._screenshot = None
                with trio.move_on_after(CLOSE_TIMEOUT) as cleanup:
                    cleanup.shield = True
                    await ws.aclose()
                nursery.cancel_scope.cancel()

    async def _converse(self, ws: WebSocketConnection) -> None:
        hello = {"type": "hello", "producer": self.producer_id, "stream": self.stream}
        await ws.send_message(protocol.encode(hello))
        with trio.fail_after(self.connect_timeout):
            welcome = await self._first_message(ws)
        acked = welcome.get("acked")
        if not isinstance(acked, int) or isinstance(acked, bool) or acked < 0:
            raise _Retry(f"welcome without a valid 'acked': {welcome!r}")
        if acked > self.outbox.last_pseq:
            self.report(
                f"server had applied up to item {acked}, beyond the {self.outbox.last_pseq} sent"
            )
        if self._too_big:
            self._too_big = False
            what = self.outbox.too_big(acked)
            if what is not None:
                self.report(f"the server refused item {acked + 1} ({what}) as too big; skipped")
        self.outbox.restart(acked)
        self._acked.set()
        self.connections += 1
        self.connected = True
        self._features_unsent = self._features is not None
        self._welcomed.set()
        self._welcomed = trio.Event()
        if self._outage.succeeded():
            self.report(f"connected to {self.url} again; resending {self.outbox.pending} items")
        self.ready.set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive, ws)
            nursery.start_soon(self._send, ws)
            await self._closing.wait()
            nursery.cancel_scope.cancel()

    async def _first_message(self, ws: WebSocketConnection) -> JsonObject:
        """The ``welcome``; an ``error`` first is kept so the close that follows can cite it."""
        message = _decode(await ws.get_message())
        if message.get("type") == "error":
            content = message.get("content")
            try:
                await ws.get_message()
            except ConnectionClosed as exc:
                raise ConnectionClosed(exc.reason) from _ServerError(str(content))
            raise _Retry(f"server error: {content}")
        if message.get("type") != "welcome":
            raise _Retry(f"expected welcome, got {message.get('type')!r}")
        return message

    async def _receive(self, ws: WebSocketConnection) -> None:
        while True:
            message = _decode(await ws.get_message())
            kind = message.get("type")
            if kind == "ack" and isinstance(message.get("pseq"), int):
                self.outbox.ack(message["pseq"])
                self._acked.set()
            elif kind == "control":
                action = message.get("action")
                if action not in protocol.CONTROL_ACTIONS:
                    self.report(f"ignored unknown control action {action!r}")
                elif self.on_control is None:
                    self.report(f"ignored control {action!r}: this producer takes none")
                else:
                    self.on_control(str(action))
            elif kind == "screenshots":
                self.watching = message.get("watching") is True
            elif kind in ("warning", "error"):
                self.report(f"server says: {message.get('content')}")

    async def _send(self, ws: WebSocketConnection) -> None:
        """Write what is unsent the moment the writer is idle; what arrives while a
        write is outstanding waits for it and goes in the next batch.

        No timer: a line from a quiet child leaves at once, and a burst still
        travels in few messages, because the socket's own pace (a full send
        buffer, a busy server) is what lets the next batch grow.
        """
        while True:
            while not self.outbox.unsent and not self._features_unsent and self._screenshot is None:
                self._wake = trio.Event()
                await self._wake.wait()
            screenshot, self._screenshot = self._screenshot, None
            if screenshot is not None:
                await ws.send_message(screenshot)
            for message in self.outbox.take():
                await ws.send_message(protocol.encode(message))
            if self._features_unsent and self._features is not None:
                self._features_unsent = False
                await ws.send_message(
                    protocol.encode({"type": "features", "features": self._features})
                )


class _ServerError(Exception):
    """The ``error`` message a server sent just before a do-not-retry close."""


def _decode(raw: str | bytes) -> JsonObject:
    if isinstance(raw, bytes):
        raise _Retry("server sent a binary frame")
    try:
        message = json.loads(raw)
    except ValueError:
        raise _Retry(f"server sent text that is not JSON: {raw[:80]!r}") from None
    if not isinstance(message, dict):
        raise _Retry(f"server sent JSON that is not an object: {raw[:80]!r}")
    return message


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _refusal(exc: BaseException) -> str | None:
    if isinstance(exc, TlsFailure):
        return str(exc) if exc.for_good else None
    if isinstance(exc, ConnectionRejected):
        status = exc.status_code
        if refuses_for_good(status=status):
            body = (exc.body or b"").decode("utf-8", "replace").strip()
            return f"HTTP {status}" + (f" ({body})" if body else "")
        return None
    if isinstance(exc, ConnectionClosed) and exc.reason is not None:
        code = exc.reason.code
        if refuses_for_good(close_code=code):
            said = exc.__cause__ if isinstance(exc.__cause__, _ServerError) else None
            text = str(said) if said is not None else exc.reason.reason
            return f"close {code}" + (f" ({text})" if text else "")
    return None


def _close_code(exc: BaseException) -> int | None:
    if isinstance(exc, ConnectionClosed) and exc.reason is not None:
        return exc.reason.code
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionClosed) and exc.reason is not None:
        return f"closed {exc.reason.code}" + (f" {exc.reason.reason}" if exc.reason.reason else "")
    if isinstance(exc, ConnectionRejected):
        return f"HTTP {exc.status_code}"
    if isinstance(exc, HandshakeError) and exc.__cause__ is not None:
        return _describe(exc.__cause__)
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__
