"""The producer side (PROTOCOL.md 4): feed a project's lines and statuses to the server.

Three layers, each usable alone:

- `LineSplitter` and `Outbox` are pure: bytes in, lines out; items in,
  wire messages out. The outbox numbers every item (``pseq``), keeps it until
  the server acks it, and replays what comes after ``welcome.acked`` on
  reconnect, which is all the client side of "at least once" needs. A
  ``pseq`` never changes: a server that lost its history (PROTOCOL.md 4.2)
  gets the unacked items under their own numbers, then the current status.
- `Producer` is the connection: connect, ``hello``, ``welcome``, resend,
  send batches, take acks and controls, and reconnect with jittered
  exponential backoff while the server is away. A 4xxx close or an HTTP
  4xx answer (401, 403, ...; not 408/429) is a refusal: it stops for good
  and says why.
- `run_command` and `publish_stream` are what ``trio-ws run`` and
  ``trio-ws publish`` do: supervise a child (or read stdin), publish, apply
  controls, report statuses, and flush before exit.

Bounded memory: the outbox holds at most ``capacity`` items; when the server
is away for long, new lines are dropped, counted, and reported in one line
as soon as there is room. Statuses are never dropped.

Bounded messages (PROTOCOL.md 4.1): a line is cut at `LINE_CAP` characters
and a ``lines`` message holds at most `MESSAGE_CAP` bytes of JSON, so no input
can make a message the server must refuse. Should a server still close with
1009 (message too big), the refused batch is split on the next connection,
and an item refused on its own is replaced by a line saying so: a producer
never resends the same refused message forever.
"""

from __future__ import annotations

import codecs
import json
import os
import secrets
import select
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn
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
from trio_ws.core import defaults, protocol
from trio_ws.core.protocol import Message, Stream
from trio_ws.data.progress import Progress, ProgressError, ProgressReader
from trio_ws.runtime.backoff import Backoff
from trio_ws.runtime.signals import exit_now, on_stop_signals

Report = Callable[[str], None]
"""Where a producer tells its user what happened (stderr in the CLI)."""

DEFAULT_CAPACITY: Final = defaults.CAPACITY
"""Unacked items an outbox holds before it drops new lines."""
BATCH_LINES: Final = 256
BACKOFF_FIRST: Final = 0.1
BACKOFF_MAX: Final = 5.0
CONNECT_TIMEOUT: Final = 5.0
CLOSE_TIMEOUT: Final = 2.0
CONNECT_WAIT: Final = 3.0
"""How long `run`/`publish` wait for the first welcome before starting anyway."""
FLUSH_WITHIN: Final = defaults.FLUSH_WITHIN
KILL_AFTER: Final = defaults.KILL_AFTER
DRAIN_AFTER_EXIT: Final = 2.0
"""How long output is still read after the child exited (grandchildren may hold the pipe)."""
PAUSE_FILE: Final = Path(".autoforge") / ".pause_drain"
READ_SIZE: Final = 65536
ECHO_BUFFER: Final = 1024 * 1024
"""Bytes of a child's output waiting to be printed locally; more are dropped (and counted)."""
LINE_CAP: Final = 64 * 1024
"""Longest line (in characters) a producer sends, truncation mark included."""
MESSAGE_CAP: Final = 1024 * 1024
"""Largest ``lines`` message (bytes of JSON) a producer sends."""
TOO_BIG: Final = 1009
"""The close code of a server that refused a message as too big."""
FAILURE: Final = 1
PROGRESS_INTERVAL: Final = defaults.POLL_INTERVAL
"""Seconds between reads of the features database by ``trio-ws run``."""
"""Exit status when the server refused us or items were not delivered (publish)."""


def dropped_line(count: int) -> str:
    """The line that reports ``count`` lines lost to a full outbox."""
    return f"[trio-ws] {count} lines dropped: producer buffer full"


def truncated(line: str, dropped: int = 0) -> str:
    """``line`` (of which ``dropped`` more characters were already cut off) within
    `LINE_CAP`, marked the way the server marks its own cut (LINES.md 1.1)."""
    total = len(line) + dropped
    if total <= LINE_CAP:
        return line
    # `total` has at least as many digits as the count dropped, so the result fits.
    keep = LINE_CAP - len(_cut_mark(total))
    return line[:keep] + _cut_mark(total - keep)


def _cut_mark(dropped: int) -> str:
    return f" … [truncated {dropped} chars]"


def refused_line(pseq: int, what: str) -> str:
    """The line that takes the place of an item the server refused on its own."""
    return f"[trio-ws] item {pseq} ({what}) refused by the server as too big; skipped"


def stderr_report(text: str) -> None:
    print(f"trio-ws: {text}", file=sys.stderr, flush=True)


# -- pure parts ----------------------------------------------------------------


class LineSplitter:
    """Turns byte chunks into lines: split on ``\\n`` only, keep everything else.

    ``\\r`` and trailing spaces stay (the server sanitises); invalid UTF-8 is
    replaced, never fatal, even when a character is split across chunks. A
    line longer than `LINE_CAP` is cut (`truncated`) while it arrives, so an
    endless line costs no more memory than a long one.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self._cut = 0
        """Characters of the partial line already dropped."""

    def feed(self, data: bytes) -> list[str]:
        """The lines that ``data`` completes, in order."""
        *complete, rest = self._decoder.decode(data).split("\n")
        lines: list[str] = []
        for piece in complete:
            lines.append(truncated(self._partial + piece, self._cut))
            self._partial, self._cut = "", 0
        self._keep(rest)
        return lines

    def close(self) -> list[str]:
        """At EOF: the final line that had no newline, if any."""
        self._keep(self._decoder.decode(b"", final=True))
        text, cut = self._partial, self._cut
        self._partial, self._cut = "", 0
        return [truncated(text, cut)] if text or cut else []

    def _keep(self, piece: str) -> None:
        text = self._partial + piece
        self._partial = text[:LINE_CAP]
        self._cut += len(text) - len(self._partial)


@dataclass(frozen=True, slots=True)
class Item:
    """One numbered thing to deliver: a line, a status (with an optional exit code), or
    the project's progress (read from its features database here)."""

    pseq: int
    line: str | None = None
    status: str | None = None
    exit_code: int | None = None
    progress: Progress | None = None


class Outbox:
    """Unacked items in ``pseq`` order, split into sent and not yet sent.

    ``take`` turns the unsent items into wire messages (consecutive lines in
    batches of at most ``batch_lines`` and ``message_cap`` bytes of JSON);
    ``ack`` forgets what the server has applied; ``restart`` (after a
    reconnect's ``welcome``) forgets what it had applied and makes everything
    else unsent again; ``too_big`` deals with a message the server refused.
    The last status added is kept as the current one, for a server that forgot it.
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, batch_lines: int = BATCH_LINES) -> None:
        if capacity < 1 or batch_lines < 1:
            raise ValueError("capacity and batch_lines must be at least 1")
        self.capacity = capacity
        self.batch_lines = batch_lines
        self.acked = 0
        self.dropped = 0
        """Lines dropped and not yet reported by a `dropped_line`."""
        self.dropped_total = 0
        self.message_cap = MESSAGE_CAP
        self._next_pseq = 1
        self._status: Item | None = None
        """The last status added: what the producer currently is."""
        self._progress: Item | None = None
        """The last progress added: how far the project currently is."""
        self._sent: deque[Item] = deque()
        self._unsent: deque[Item] = deque()
        self._messages: deque[tuple[int, int, int]] = deque()
        """(first pseq, items, bytes) of each message sent and not wholly acked."""

    @property
    def pending(self) -> int:
        """Items not acked yet (sent or not)."""
        return len(self._sent) + len(self._unsent)

    @property
    def unsent(self) -> int:
        return len(self._unsent)

    @property
    def last_pseq(self) -> int:
        return self._next_pseq - 1

    def add_line(self, line: str) -> bool:
        """Queue a line; False (and counted) when the outbox is full."""
        self._report_drops(force=False)
        if self.pending >= self.capacity:
            self.dropped += 1
            self.dropped_total += 1
            return False
        self._append(Item(self._next_pseq, line=line))
        return True

    def add_status(self, status: str, exit_code: int | None = None) -> int:
        """Queue a status, whatever the fill; returns its pseq.

        Pending drops are reported first, so the report precedes the status.
        """
        self._report_drops(force=True)
        item = Item(self._next_pseq, status=status, exit_code=exit_code)
        self._append(item)
        self._status = item
        return item.pseq

    def add_progress(self, progress: Progress) -> int:
        """Queue the project's progress, whatever the fill (it is state, like a status,
        and comes at most once per read that changed it); returns its pseq."""
        self._report_drops(force=True)
        item = Item(self._next_pseq, progress=progress)
        self._append(item)
        self._progress = item
        return item.pseq

    def ack(self, pseq: int) -> None:
        """The server has applied every item up to ``pseq``."""
        if pseq <= self.acked:
            return
        self.acked = min(pseq, self.last_pseq)
        for queue in (self._sent, self._unsent):
            while queue and queue[0].pseq <= pseq:
                queue.popleft()
        while self._messages and sum(self._messages[0][:2]) - 1 <= pseq:
            self._messages.popleft()
        self._report_drops(force=False)

    def restart(self, acked: int) -> None:
        """A new connection's ``welcome``: resend everything after ``acked``.

        A server that acks less than it acked before has lost its history
        (PROTOCOL.md 4.2). Nothing is renumbered: it takes the first ``pseq`` it
        gets as our start, so every unacked item goes again under its own
        number, followed by the current status (and progress) as new items, so that a
        server that forgot the run learns what it is (one still unacked goes anyway).
        """
        self._unsent.extendleft(reversed(self._sent))
        self._sent.clear()
        self._messages.clear()
        if acked >= self.acked:
            self.ack(acked)
            return
        status, progress = self._status, self._progress
        if status is not None and status.pseq <= self.acked and status.status is not None:
            self.add_status(status.status, status.exit_code)
        if progress is not None and progress.pseq <= self.acked and progress.progress is not None:
            self.add_progress(progress.progress)

    def too_big(self, acked: int) -> str | None:
        """The server closed with 1009 and has now welcomed us with ``acked``.

        The refused message is the one that starts after ``acked``. One of
        several items: later messages get half its size, so it is split. A
        single item: it is replaced, under the same ``pseq``, by a line saying
        so, and what it was is returned (to report). Call before `restart`.
        """
        refused = next((m for m in self._messages if m[0] == acked + 1), None)
        if refused is None or refused[1] > 1:
            size = refused[2] if refused is not None else self.message_cap
            self.message_cap = max(1, min(self.message_cap, size) // 2)
            return None
        for index, item in enumerate(self._sent):
            if item.pseq == acked + 1:
                if item.line is not None:
                    what = f"a line of {len(item.line)} chars"
                elif item.progress is not None:
                    what = "progress"
                else:
                    what = f"status {item.status}"
                self._sent[index] = Item(item.pseq, line=refused_line(item.pseq, what))
                return what
        return None

    def take(self) -> list[Message]:
        """Every unsent item as wire messages, in order; they count as sent from now on."""
        messages: list[Message] = []
        batch: list[str] = []
        first = size = 0

        def close_batch() -> None:
            nonlocal batch
            messages.append(_lines_message(first, batch))
            self._messages.append((first, len(batch), size))
            batch = []

        while self._unsent:
            item = self._unsent.popleft()
            self._sent.append(item)
            if item.line is None:
                if batch:
                    close_batch()
                message = (
                    _status_message(item) if item.progress is None else _progress_message(item)
                )
                messages.append(message)
                self._messages.append((item.pseq, 1, _json_size(message)))
                continue
            cost = _json_size(item.line)
            if batch and (size + 1 + cost > self.message_cap or len(batch) == self.batch_lines):
                close_batch()
            if batch:
                size += 1 + cost  # a comma and the line
            else:
                first, size = item.pseq, _json_size(_lines_message(item.pseq, [])) + cost
            batch.append(item.line)
        if batch:
            close_batch()
        return messages

    def _append(self, item: Item) -> None:
        self._unsent.append(item)
        self._next_pseq += 1

    def _report_drops(self, *, force: bool) -> None:
        if self.dropped and (force or self.pending < self.capacity):
            self._append(Item(self._next_pseq, line=dropped_line(self.dropped)))
            self.dropped = 0


def _json_size(value: object) -> int:
    """Bytes ``value`` takes on the wire, encoded as `protocol.encode` does."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _lines_message(first: int, lines: list[str]) -> Message:
    return {"type": "lines", "first": first, "lines": lines}


def _status_message(item: Item) -> Message:
    message: Message = {"type": "status", "pseq": item.pseq, "status": item.status}
    if item.exit_code is not None:
        message["exit_code"] = item.exit_code
    return message


def _progress_message(item: Item) -> Message:
    assert item.progress is not None
    progress = item.progress
    return {
        "type": "progress",
        "pseq": item.pseq,
        "passing": progress.passing,
        "in_progress": progress.in_progress,
        "total": progress.total,
        "needs_human_input": progress.needs_human_input,
    }


def publish_url(server: str, project: str) -> str:
    """The publish endpoint of ``project`` on ``server`` (http(s) or ws(s), any path prefix)."""
    return websocket_base(server) + f"/ws/projects/{quote(project, safe='')}/publish"


def new_producer_id(kind: str) -> str:
    """A random id for one invocation, kept across its reconnects."""
    return f"{kind}-{os.getpid()}-{secrets.token_hex(6)}"


def exit_status(returncode: int) -> int:
    """A shell-style exit status: a death by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


# -- the connection --------------------------------------------------------------


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
        self.connections = 0
        """Welcomes received so far; more than one means it reconnected."""
        self.connected = False
        self.refused: ProducerRefused | None = None
        self.ready = trio.Event()
        self.finished = trio.Event()
        self._headers = [bearer_header(token)]
        self._down = False
        self._too_big = False
        """The last connection ended with a 1009 close: deal with it at the next welcome."""
        self._welcomed = trio.Event()
        self._closing = trio.Event()
        self._attempt = trio.CancelScope()
        self._wake = trio.Event()
        self._acked = trio.Event()

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

    # -- lifecycle -----------------------------------------------------------------

    async def flush(self, within: float) -> int:
        """Wait until every item is acked or ``within`` seconds pass; the items left."""
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
                    if not self._closing.is_set() and not self._down:
                        self._down = True
                        self.report(f"no connection to {self.url} ({reason}); retrying")
                    self.ready.set()
                if self.connections > welcomed_before:
                    backoff.reset()
                self._turn = (self._turn + 1) % len(self.urls)
                with trio.move_on_after(backoff.next()):
                    await self._closing.wait()
                self._attempt = trio.CancelScope()
        finally:
            self.connected = False
            self.ready.set()
            self._acked.set()
            self.finished.set()

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
                ws = await connect_websocket_url(nursery, self.url, extra_headers=self._headers)
            try:
                await self._converse(ws)
            finally:
                self.connected = False
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
        self._welcomed.set()
        self._welcomed = trio.Event()
        if self._down:
            self._down = False
            self.report(f"connected to {self.url} again; resending {self.outbox.pending} items")
        self.ready.set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive, ws)
            nursery.start_soon(self._send, ws)
            await self._closing.wait()
            nursery.cancel_scope.cancel()

    async def _first_message(self, ws: WebSocketConnection) -> Message:
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
            while not self.outbox.unsent:
                self._wake = trio.Event()
                await self._wake.wait()
            for message in self.outbox.take():
                await ws.send_message(protocol.encode(message))


class _ServerError(Exception):
    """The ``error`` message a server sent just before a do-not-retry close."""


def _decode(raw: str | bytes) -> Message:
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


# -- trio-ws run: supervise a child and publish its output -------------------------


@dataclass(frozen=True)
class RunOptions:
    """What ``trio-ws run`` was asked to do."""

    command: Sequence[str]
    url: str | Sequence[str]
    """The server's publish URL, or several (tried in turn: see `Producer`)."""
    token: str
    cwd: Path
    project_dir: Path
    """Where ``.autoforge/.pause_drain`` goes (the registered directory, else ``cwd``)."""
    stream: Stream = "agent"
    quiet: bool = False
    capacity: int = DEFAULT_CAPACITY
    kill_after: float = KILL_AFTER
    flush_within: float = FLUSH_WITHIN
    connect_wait: float = CONNECT_WAIT
    lifeline: int | None = None
    """A pipe's read end whose writer is the process that started us: at its EOF
    that process is gone, and the command is stopped (``trio-ws demo`` uses it)."""
    progress: bool = True
    """Read the features database under ``cwd`` and send the project's progress
    (agent stream only): then the server need not see the project's directory."""
    progress_interval: float = PROGRESS_INTERVAL


@dataclass(frozen=True)
class Outcome:
    """How a run or publish ended: the exit status to use and what is left to say."""

    exit_code: int
    undelivered: int = 0
    refused: str | None = None


class Echo:
    """A child's output printed locally (``trio-ws run`` without ``--quiet``).

    Worker threads write it, so a stdout that stalls (a pipe nobody reads, a
    pager) never stalls publishing, acks or signal handling. At most
    `ECHO_BUFFER` bytes wait; what comes on top is dropped, said once when it
    starts and counted. Each write is at most ``PIPE_BUF`` bytes, which a pipe
    takes whole or not at all, so what is counted as not printed is exact. A
    write that fails (``| head`` has exited) ends the printing for good;
    publishing goes on either way.
    """

    def __init__(self, fd: int, report: Report, limit: int = ECHO_BUFFER) -> None:
        self.fd = fd
        self.report = report
        self.limit = limit
        self.dropped = 0
        self.failed = False
        self._waiting = bytearray()
        self._wake = trio.Event()
        self._written = trio.Event()

    def write(self, chunk: bytes) -> None:
        """Queue ``chunk`` for printing; never blocks."""
        if self.failed:
            return
        if len(self._waiting) + len(chunk) > self.limit:
            if not self.dropped:
                self.report("stdout is not keeping up: not printing some output here")
            self.dropped += len(chunk)
            return
        self._waiting += chunk
        self._wake.set()

    async def run(self) -> None:
        """Print what is queued until cancelled (a write stuck in its thread is abandoned)."""
        while True:
            while not self._waiting:
                self._wake = trio.Event()
                await self._wake.wait()
            piece = bytes(self._waiting[: select.PIPE_BUF])
            try:
                written = await trio.to_thread.run_sync(
                    os.write, self.fd, piece, abandon_on_cancel=True
                )
            except OSError as exc:  # e.g. `trio-ws run … | head`: keep publishing
                self.failed = True
                self._waiting.clear()
                self._written.set()
                self.report(f"stopped printing the output here: {exc.strerror or exc}")
                return
            del self._waiting[:written]
            self._written.set()
            self._written = trio.Event()

    async def drain(self, deadline: float) -> int:
        """Wait until ``deadline`` (trio time) at most for the queue to be printed; the
        bytes that never were (dropped or still waiting), 0 once printing failed (said)."""
        with trio.move_on_at(deadline):
            while self._waiting and not self.failed:
                await self._written.wait()
        return 0 if self.failed else self.dropped + len(self._waiting)


async def run_command(options: RunOptions, *, report: Report = stderr_report) -> Outcome:
    """Run ``options.command`` under supervision until it exits; see `Supervisor`."""
    echo = None if options.quiet else Echo(sys.stdout.fileno(), report)
    return await Supervisor(options, report, echo).run()


class ProgressReport:
    """The project's progress, read from its features database on this machine (under
    ``project_dir``, the layouts of DATA.md) every ``interval`` seconds in a worker
    thread, and sent as a ``progress`` item whenever it changed (PROTOCOL.md 4.1).

    A failing read is said once on stderr (until a read succeeds again) and sends
    nothing: the server keeps the last figures rather than zeros. Nor is anything
    sent while there is no database here (a ``--cwd`` that is not the project): the
    server, which may see the project's directory, then keeps polling it.
    """

    def __init__(
        self, producer: Producer, project_dir: Path, interval: float, report: Report
    ) -> None:
        self.producer = producer
        self.interval = interval
        self.report = report
        self.reader = ProgressReader(project_dir)
        self.sent: Progress | None = None
        self.failing = False

    async def run(self) -> None:
        """Read and send until cancelled."""
        while True:
            await self.read()
            await trio.sleep(self.interval)

    async def read(self) -> None:
        """One read; a change is sent, a failure said once per streak."""
        try:
            progress = await trio.to_thread.run_sync(self.reader.read)
        except ProgressError as exc:
            if not self.failing:
                self.failing = True
                self.report(f"cannot report progress: {exc}")
            return
        if self.failing:
            self.failing = False
            self.report("progress reads recovered")
        if self.reader.path is not None and progress != self.sent:
            self.sent = progress
            self.producer.send_progress(progress)


class Supervisor:
    """One child process in its own process group, its output and its controls.

    The child runs without a shell, in a new session (so signals reach its
    whole group and a terminal's Ctrl-C reaches only us), with stdout and
    stderr merged into one pipe and stdin from /dev/null. SIGINT/SIGTERM, or a
    ``stop`` control, sends SIGTERM (and SIGCONT, in case it is paused) to the
    group, then SIGKILL after ``kill_after`` seconds; a second signal kills at once.
    """

    def __init__(self, options: RunOptions, report: Report, echo: Echo | None) -> None:
        self.options = options
        self.report = report
        self.echo = echo
        self.producer = Producer(
            options.url,
            options.token,
            options.stream,
            producer_id=new_producer_id("run"),
            outbox=Outbox(options.capacity),
            on_control=self.apply if options.stream == "agent" else None,
            report=report,
        )
        self.process: trio.Process | None = None
        self.state = "running"
        self.stop_requested = False
        self.pause_file = options.project_dir / PAUSE_FILE
        self.wrote_pause_file = False
        self.progress = (
            ProgressReport(self.producer, options.cwd, options.progress_interval, report)
            if options.progress and options.stream == "agent"
            else None
        )
        self._splitter = LineSplitter()
        self._output_done = trio.Event()
        self._nursery: trio.Nursery | None = None

    async def run(self) -> Outcome:
        signals = on_stop_signals(self._on_signal, self._on_signal_again)
        async with signals, trio.open_nursery() as outer:
            outer.start_soon(self.producer.run)
            if self.echo is not None:
                outer.start_soon(self.echo.run)
            try:
                return await self._supervise()
            finally:
                with trio.CancelScope(shield=True):
                    await self.producer.close()
                outer.cancel_scope.cancel()  # the echo: what it has not printed is lost

    async def _supervise(self) -> Outcome:
        options = self.options
        with trio.move_on_after(options.connect_wait):
            await self.producer.ready.wait()
        if self.producer.refused is not None:
            return Outcome(FAILURE, refused=str(self.producer.refused))
        try:
            process = await trio.lowlevel.open_process(
                list(options.command),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=options.cwd,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        except OSError as exc:
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            self.report(f"cannot start {options.command[0]!r}: {exc.strerror or exc}")
            self.producer.send_line(
                f"[trio-ws] cannot start {options.command[0]}: {exc.strerror or exc}"
            )
            self.producer.send_status("crashed", code)
            return Outcome(code, await self.producer.flush(options.flush_within))
        self.process = process
        self.producer.send_status("running")
        assert process.stdout is not None
        try:
            async with trio.open_nursery() as helpers:
                self._nursery = helpers
                if self.stop_requested:  # a signal came while we waited for the server
                    self._terminate()
                helpers.start_soon(self._pump, process.stdout)
                helpers.start_soon(self._watch_refusal)
                if self.progress is not None:
                    helpers.start_soon(self.progress.run)
                if options.lifeline is not None:
                    helpers.start_soon(self._watch_lifeline, options.lifeline)
                returncode = await process.wait()
                with trio.move_on_after(DRAIN_AFTER_EXIT):
                    await self._output_done.wait()
                helpers.cancel_scope.cancel()
        finally:
            self._nursery = None
            if process.returncode is None:  # leaving abnormally: never orphan the group
                self._signal_group(signal.SIGKILL)
        for line in self._splitter.close():
            self.producer.send_line(line)
        if self.progress is not None:
            await self.progress.read()  # where the run left the project
            self.progress.reader.close()
        code = exit_status(returncode)
        status = "stopped" if code == 0 or self.stop_requested else "crashed"
        self.producer.send_status(status, code)
        self._remove_pause_file()
        deadline = trio.current_time() + options.flush_within
        undelivered = await self.producer.flush(options.flush_within)
        if self.echo is not None:
            unprinted = await self.echo.drain(deadline)
            if unprinted:
                self.report(
                    f"{unprinted} bytes of output were not printed here: stdout was stalled"
                )
        refused = self.producer.refused
        return Outcome(code, undelivered, str(refused) if refused is not None else None)

    # -- tasks ------------------------------------------------------------------------

    async def _pump(self, stdout: trio.abc.ReceiveStream) -> None:
        while chunk := bytes(await stdout.receive_some(READ_SIZE)):
            if self.echo is not None:
                self.echo.write(chunk)
            for line in self._splitter.feed(chunk):
                self.producer.send_line(line)
        self._output_done.set()

    def _on_signal(self, signum: int) -> None:
        """The first SIGINT/SIGTERM: stop the command as ``stop`` does (unless that
        already happened: then this is a second request)."""
        if self.stop_requested:
            self._on_signal_again(signum)
            return
        self.report(f"signal {signum}: stopping the command")
        self.request_stop()

    def _on_signal_again(self, signum: int) -> None:
        """Kill the group while it runs; once it is gone (or before it started),
        stop delivering what is left and exit now."""
        if self.process is not None and self.process.returncode is None:
            self.report(f"signal {signum} again: killing the process group now")
            self._signal_group(signal.SIGKILL)
        else:
            self.report(f"signal {signum} again: exiting now")
            exit_now(signum)

    async def _watch_refusal(self) -> None:
        await self.producer.finished.wait()
        if self.producer.refused is not None:
            self.report(f"{self.producer.refused}; stopping the command")
            self.request_stop()

    async def _watch_lifeline(self, fd: int) -> None:
        async with trio.lowlevel.FdStream(fd) as lifeline:
            while await lifeline.receive_some():
                pass  # nothing is ever written: only its end matters
        self.report("the process that started us is gone; stopping the command")
        self.request_stop()

    async def _escalate(self) -> None:
        await trio.sleep(self.options.kill_after)
        if self.process is not None and self.process.returncode is None:
            self.report(f"still running {self.options.kill_after:g} s after SIGTERM: SIGKILL")
            self._signal_group(signal.SIGKILL)

    # -- actions ----------------------------------------------------------------------

    def request_stop(self) -> None:
        """SIGTERM the child's group now and SIGKILL it after ``kill_after`` seconds."""
        if self.stop_requested:
            return
        self.stop_requested = True
        self._terminate()

    def _terminate(self) -> None:
        """Carry out a requested stop; before the child started (or after it was
        reaped) there is nothing to signal: `_supervise` calls this again at its start."""
        if self._nursery is None:
            return
        self._signal_group(signal.SIGTERM)
        self._signal_group(signal.SIGCONT)
        self._nursery.start_soon(self._escalate)

    def apply(self, action: str) -> None:
        """Carry out a control from the server; one that does not fit the state is logged."""
        process = self.process
        if process is None or process.returncode is not None or self.stop_requested:
            self.report(f"ignored control {action!r}: the command is not running")
            return
        if action == "stop":
            self.report("stop requested through the server")
            self.request_stop()
            return
        wanted = {
            "pause": "running",
            "resume": "paused",
            "graceful_pause": "running",
            "graceful_resume": "pausing",
        }.get(action)
        if wanted is None or self.state != wanted:
            self.report(f"ignored control {action!r} while {self.state}")
            return
        if action == "pause":
            self._signal_group(signal.SIGSTOP)
            self._set_state("paused")
        elif action == "resume":
            self._signal_group(signal.SIGCONT)
            self._set_state("running")
        elif action == "graceful_pause":
            try:
                self.pause_file.parent.mkdir(parents=True, exist_ok=True)
                self.pause_file.write_text(f"{process.pid}\n")
            except OSError as exc:
                self.report(f"cannot write {self.pause_file}: {exc.strerror or exc}")
                return
            self.wrote_pause_file = True
            self._set_state("pausing")
        else:
            if not self._remove_pause_file():
                return
            self._set_state("running")

    def _set_state(self, state: str) -> None:
        self.state = state
        self.producer.send_status(state)

    def _remove_pause_file(self) -> bool:
        """Delete the pause file we wrote; False (reported) when that failed."""
        if not self.wrote_pause_file:
            return True
        try:
            self.pause_file.unlink(missing_ok=True)
        except OSError as exc:
            self.report(f"cannot remove {self.pause_file}: {exc.strerror or exc}")
            return False
        self.wrote_pause_file = False
        return True

    def _signal_group(self, signum: int) -> None:
        if self.process is None:
            return
        with suppress(ProcessLookupError):  # the whole group is gone already
            os.killpg(self.process.pid, signum)


# -- trio-ws publish: stdin lines to the server --------------------------------------


async def read_stdin() -> bytes:
    """One chunk of stdin (b"" at EOF), read in a thread so the terminal stays blocking."""
    return await trio.to_thread.run_sync(os.read, 0, READ_SIZE, abandon_on_cancel=True)


async def publish_stream(
    url: str | Sequence[str],
    token: str,
    stream: Stream,
    read: Callable[[], Awaitable[bytes]] = read_stdin,
    *,
    report: Report = stderr_report,
    capacity: int = DEFAULT_CAPACITY,
    flush_within: float = FLUSH_WITHIN,
    connect_wait: float = CONNECT_WAIT,
) -> Outcome:
    """Publish every line ``read`` yields until EOF (or SIGINT/SIGTERM): ``running``
    first, ``stopped`` last; exit 0 only when everything was delivered."""
    producer = Producer(
        url,
        token,
        stream,
        producer_id=new_producer_id("publish"),
        outbox=Outbox(capacity),
        report=report,
    )
    splitter = LineSplitter()
    reading_scope = trio.CancelScope()

    def end_input(signum: int) -> None:
        report(f"signal {signum}: ending the input here")
        reading_scope.cancel()

    def exit_early(signum: int) -> NoReturn:
        report(f"signal {signum} again: exiting now")
        exit_now(signum)

    async with on_stop_signals(end_input, exit_early), trio.open_nursery() as outer:
        outer.start_soon(producer.run)
        try:
            with trio.move_on_after(connect_wait):
                await producer.ready.wait()
            if producer.refused is not None:
                return Outcome(FAILURE, refused=str(producer.refused))
            producer.send_status("running")
            with reading_scope:
                async with trio.open_nursery() as reading:

                    async def read_all() -> None:
                        while chunk := await read():
                            for line in splitter.feed(chunk):
                                producer.send_line(line)
                        reading.cancel_scope.cancel()

                    async def stop_on_refusal() -> None:
                        await producer.finished.wait()
                        reading.cancel_scope.cancel()

                    reading.start_soon(read_all)
                    reading.start_soon(stop_on_refusal)
            for line in splitter.close():
                producer.send_line(line)
            producer.send_status("stopped")
            undelivered = await producer.flush(flush_within)
            refused = producer.refused
            if refused is not None:
                return Outcome(FAILURE, undelivered, str(refused))
            return Outcome(0 if undelivered == 0 else FAILURE, undelivered)
        finally:
            with trio.CancelScope(shield=True):
                await producer.close()
