"""The producer's pure parts: bytes in, lines out (`LineSplitter`); items in, wire
messages out (`Outbox`).

The outbox numbers every item (``pseq``), keeps it until the server acks it, and
replays what comes after ``welcome.acked`` on reconnect, which is all the client
side of "at least once" needs (PROTOCOL.md 4). A ``pseq`` never changes: a server
that lost its history (PROTOCOL.md 4.2) gets the unacked items under their own
numbers, then the current status.

Bounded memory: the outbox holds at most ``capacity`` items; when the server is
away for long, new lines are dropped, counted, and reported in one line as soon
as there is room. Statuses are never dropped.

Bounded messages (PROTOCOL.md 4.1): a line is cut at `LINE_CAP` characters and a
``lines`` message holds at most `MESSAGE_CAP` bytes of JSON, so no input can make
a message the server must refuse. Should a server still close with 1009, the
refused batch is split on the next connection, and an item refused on its own is
replaced by a line saying so (`refused_line`).
"""

from __future__ import annotations

import codecs
import json
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from trio_ws.core import defaults
from trio_ws.core.messages import (
    LinesMessage,
    ProducerMessage,
    ProducerProgress,
    StatusMessage,
)
from trio_ws.data.progress import Progress

Report = Callable[[str], None]
"""Where a producer tells its user what happened (stderr in the CLI)."""

DEFAULT_CAPACITY: Final = defaults.CAPACITY
"""Unacked items an outbox holds before it drops new lines."""
BATCH_LINES: Final = 256
LINE_CAP: Final = 64 * 1024
"""Longest line (in characters) a producer sends, truncation mark included."""
MESSAGE_CAP: Final = 1024 * 1024
"""Largest ``lines`` message (bytes of JSON) a producer sends."""


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
    """One line on stderr in one write: processes sharing a terminal (the demo's
    children) must not glue their lines together, as print's two writes can."""
    sys.stderr.write(f"trio-ws: {text}\n")
    sys.stderr.flush()


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
    at: float = 0.0
    """When it was read here (UNIX seconds): the time its events carry, not the time
    a server that was away received it."""


class Outbox:
    """Unacked items in ``pseq`` order, split into sent and not yet sent.

    ``take`` turns the unsent items into wire messages (consecutive lines in
    batches of at most ``batch_lines`` and ``message_cap`` bytes of JSON);
    ``ack`` forgets what the server has applied; ``restart`` (after a
    reconnect's ``welcome``) forgets what it had applied and makes everything
    else unsent again; ``too_big`` deals with a message the server refused.
    The last status added is kept as the current one, for a server that forgot it.
    """

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        batch_lines: int = BATCH_LINES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if capacity < 1 or batch_lines < 1:
            raise ValueError("capacity and batch_lines must be at least 1")
        self._clock = clock
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
        self._append(Item(self._next_pseq, line=line, at=self._now()))
        return True

    def add_status(self, status: str, exit_code: int | None = None) -> int:
        """Queue a status, whatever the fill; returns its pseq.

        Pending drops are reported first, so the report precedes the status.
        """
        self._report_drops(force=True)
        item = Item(self._next_pseq, status=status, exit_code=exit_code, at=self._now())
        self._append(item)
        self._status = item
        return item.pseq

    def add_progress(self, progress: Progress) -> int:
        """Queue the project's progress, whatever the fill (it is state, like a status,
        and comes at most once per read that changed it); returns its pseq."""
        self._report_drops(force=True)
        item = Item(self._next_pseq, progress=progress, at=self._now())
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
                self._sent[index] = Item(item.pseq, line=refused_line(item.pseq, what), at=item.at)
                return what
        return None

    def take(self) -> list[ProducerMessage]:
        """Every unsent item as wire messages, in order; they count as sent from now on."""
        messages: list[ProducerMessage] = []
        batch: list[str] = []
        times: list[float] = []
        first = size = 0
        sent = self._now()

        def close_batch() -> None:
            nonlocal batch, times
            messages.append(lines_message(first, batch, times, sent))
            self._messages.append((first, len(batch), size))
            batch, times = [], []

        while self._unsent:
            item = self._unsent.popleft()
            self._sent.append(item)
            if item.line is None:
                if batch:
                    close_batch()
                message: ProducerMessage = (
                    status_message(item, sent) if item.progress is None else progress_message(item)
                )
                messages.append(message)
                self._messages.append((item.pseq, 1, _json_size(message)))
                continue
            cost = _json_size(item.line) + 1 + _json_size(item.at)  # the line, its time
            if batch and (size + 2 + cost > self.message_cap or len(batch) == self.batch_lines):
                close_batch()
            if batch:
                size += 2 + cost  # a comma before the line and one before its time
            else:
                first = item.pseq
                size = _json_size(lines_message(item.pseq, [], [], sent)) + cost
            batch.append(item.line)
            times.append(item.at)
        if batch:
            close_batch()
        return messages

    def _now(self) -> float:
        """This machine's time, to the millisecond (what goes on the wire)."""
        return round(self._clock(), 3)

    def _append(self, item: Item) -> None:
        self._unsent.append(item)
        self._next_pseq += 1

    def _report_drops(self, *, force: bool) -> None:
        if self.dropped and (force or self.pending < self.capacity):
            self._append(Item(self._next_pseq, line=dropped_line(self.dropped), at=self._now()))
            self.dropped = 0


def _json_size(value: object) -> int:
    """Bytes ``value`` takes on the wire, encoded as `protocol.encode` does."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def lines_message(first: int, lines: list[str], at: list[float], sent: float) -> LinesMessage:
    return {"type": "lines", "first": first, "lines": lines, "at": at, "sent": sent}


def status_message(item: Item, sent: float) -> StatusMessage:
    assert item.status is not None
    message: StatusMessage = {
        "type": "status",
        "pseq": item.pseq,
        "status": item.status,
        "at": item.at,
        "sent": sent,
    }
    if item.exit_code is not None:
        message["exit_code"] = item.exit_code
    return message


def progress_message(item: Item) -> ProducerProgress:
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
