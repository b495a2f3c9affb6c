"""`trio-ws watch`: a terminal dashboard for one project (the subscribe side of PROTOCOL.md 3).

Three layers, so most of it is testable with plain function calls:

- `RunView` is pure state. It applies subscribe-protocol messages one at a
  time and remembers where it stands (``epoch``, ``seq``), so a reconnect can
  resume exactly where it left off. It never does I/O.
- `render` turns a `RunView` into rich renderables; it reads nothing else.
- `follow` and `fetch_snapshot` are the network: they connect, feed every
  message to the view (and to an optional callback), and reconnect with
  jittered exponential backoff, resuming with ``since``/``epoch``.
  `read_features` and `read_history` fetch the features board and the
  progress history over HTTP (`keep_extras` keeps both current while live).

Text that came from the server (log lines, thoughts, names) is never
interpreted as rich markup and has control characters made visible, so a
log line can neither restyle nor take over the terminal.
"""

from __future__ import annotations

import heapq
import json
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final, Literal, NoReturn
from urllib.parse import quote, urlsplit

import h11
import trio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from trio_ws.clients.common import bearer_header, refuses_for_good, websocket_base
from trio_ws.core import defaults, protocol
from trio_ws.core.protocol import Message
from trio_ws.runtime.backoff import Backoff

LOG_LIMIT: Final = 1000
"""Log lines (per stream) a view keeps; the server's backlog is at most 1000 too."""
WARNING_LIMIT: Final = 5
ONCE_LOG_LINES: Final = 20
CONNECT_TIMEOUT: Final = 10.0
SNAPSHOT_TIMEOUT: Final = 30.0
HEARTBEAT: Final = 15.0
"""Seconds between websocket pings; a peer that doesn't answer within this is dropped."""
REFRESH: Final = 0.25
CLOSE_TIMEOUT: Final = 2.0
HTTP_TIMEOUT: Final = 10.0
"""Seconds for one API read (connect, request and the whole answer)."""
MAX_API_BODY: Final = 16 * 1024 * 1024
FEATURES_INTERVAL: Final = 1.0
"""Least seconds between two reads of the features board while live."""
HISTORY_RETRY: Final = 5.0
"""Seconds before the progress history is asked for again after a failed read."""
ONCE_WIDTH: Final = 200
"""Columns of ``--once`` output when stdout is not a terminal (rich would cut at 80)."""
SPARK_WIDTH: Final = 40
SPARK_BLOCKS: Final = " ▁▂▃▄▅▆▇█"
IN_PROGRESS_SHOWN: Final = 12
"""In-progress features listed by name; more are summed up in one line."""

ConnectionState = Literal["connecting", "live", "reconnecting", "closed", "snapshot"]
LogStream = Literal["agent", "dev"]
OnMessage = Callable[[Message], None]


class SequenceGap(Exception):
    """A live event skipped a ``seq``: the view can no longer trust what it holds."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"expected event seq {expected}, got {got}")
        self.expected = expected
        self.got = got


# -- the pure state model -----------------------------------------------------


@dataclass(frozen=True)
class AgentCard:
    """One active agent as its last ``agent_update`` described it."""

    index: int
    name: str
    type: str
    feature_ids: tuple[int, ...]
    feature_name: str | None
    state: str
    thought: str | None
    updated: float | None
    """UNIX seconds of the update's ``timestamp``; None when it was unreadable."""


@dataclass(frozen=True)
class OrchestratorCard:
    """The orchestrator as its last ``orchestrator_update`` described it."""

    event_type: str
    state: str
    message: str
    coding: int
    testing: int
    max_concurrency: int
    ready: int
    blocked: int
    updated: float | None


@dataclass(frozen=True)
class ProgressCounts:
    passing: int
    in_progress: int
    total: int
    percentage: float
    needs_human_input: int


@dataclass(frozen=True)
class ProgressPoint:
    """One ``progress`` event on the time line (from the history or live)."""

    seq: int
    time: float
    passing: int
    total: int


@dataclass(frozen=True)
class FeatureRow:
    """One row of the features board (``GET /api/projects/NAME/features``)."""

    id: int
    category: str
    name: str
    passes: bool
    in_progress: bool
    needs_human_input: bool


@dataclass(frozen=True)
class LogEntry:
    stream: LogStream
    line: str
    timestamp: str
    seq: int | None


@dataclass
class RunView:
    """Everything the dashboard shows, built only from received messages.

    ``seq`` is the last event applied (the snapshot point during a fresh
    sync), ``epoch`` the history it belongs to. A fresh snapshot has no end
    marker of its own, so it counts as complete only at the first live event
    or at a ``pong`` (the client pings right after ``hello``; the server
    answers after the whole snapshot). Until then `resume_point` is None and a
    reconnect starts over with a fresh sync, so a connection lost mid-snapshot
    never leaves the view half-built.

    Contract with the connection: it asks to resume from `resume_point`
    whenever there is one; the server then resumes or says ``resync``.
    """

    project: str = ""
    log_limit: int = LOG_LIMIT
    epoch: str | None = None
    seq: int | None = None
    server: str | None = None
    connection: ConnectionState = "connecting"
    connection_detail: str | None = None
    agent_status: str = "stopped"
    dev_status: str = "stopped"
    dev_url: str | None = None
    progress: ProgressCounts | None = None
    agents: dict[int, AgentCard] = field(default_factory=dict)
    orchestrator: OrchestratorCard | None = None
    logs: deque[LogEntry] = field(init=False)
    dev_logs: deque[LogEntry] = field(init=False)
    warnings: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=WARNING_LIMIT))
    error: str | None = None
    points: dict[int, ProgressPoint] = field(default_factory=dict)
    """Progress events by seq: the history and live ones overlap without doubling."""
    history_epoch: str | None = None
    """The epoch whose history is merged into ``points``; None until it is."""
    history_error: str | None = None
    features: list[FeatureRow] | None = None
    features_error: str | None = None
    resyncs: int = 0
    resumes: int = 0
    duplicates: int = 0
    _snapshot_point: int | None = None
    _hello_seq: int | None = None

    def __post_init__(self) -> None:
        if self.log_limit < 1:
            raise ValueError("log_limit must be at least 1")
        self.logs = deque(maxlen=self.log_limit)
        self.dev_logs = deque(maxlen=self.log_limit)

    @property
    def synced(self) -> bool:
        """True once the view holds a complete snapshot (or resumed) of an epoch."""
        return self.epoch is not None and self.seq is not None and self._snapshot_point is None

    @property
    def resume_point(self) -> tuple[int, str] | None:
        """``(since, epoch)`` for the next connection; None when it must sync afresh."""
        if not self.synced:
            return None
        assert self.seq is not None and self.epoch is not None
        return self.seq, self.epoch

    def set_connection(self, state: ConnectionState, detail: str | None = None) -> None:
        self.connection = state
        self.connection_detail = detail

    def apply(self, message: Message) -> None:
        """Apply one received message; unknown types are ignored (forward compatible).

        Raises `SequenceGap` (without applying) when a live event skips a seq.
        Raises ValueError when a known message lacks a field it must have.
        """
        kind = message.get("type")
        try:
            if kind in _CONNECTION_HANDLERS:
                _CONNECTION_HANDLERS[kind](self, message)
            elif kind in _EVENT_HANDLERS and self._admit(message.get("seq")):
                _EVENT_HANDLERS[kind](self, message)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed {kind} message: {exc!r} in {message!r}") from None

    # -- sequencing ------------------------------------------------------------

    def _admit(self, seq: object) -> bool:
        """Whether an event is new: a snapshot replay, the next live event, or seq-less."""
        if not isinstance(seq, int) or self.seq is None:
            if isinstance(seq, int):
                self.seq = seq
            return True
        if self._snapshot_point is not None and seq <= self._snapshot_point:
            return True  # snapshot messages keep the seq they were first sent with
        if seq <= self.seq:
            self.duplicates += 1
            return False
        if seq != self.seq + 1:
            raise SequenceGap(self.seq + 1, seq)
        self._snapshot_point = None
        self.seq = seq
        return True

    def _reset(self, snapshot_point: int | None) -> None:
        """Forget the run's state before a fresh snapshot (keeps connection and warnings)."""
        self.agent_status = "stopped"
        self.dev_status = "stopped"
        self.dev_url = None
        self.progress = None
        self.agents.clear()
        self.orchestrator = None
        self.logs.clear()
        self.dev_logs.clear()
        self.error = None
        self.points.clear()
        self.history_epoch = None
        self.seq = snapshot_point
        self._snapshot_point = snapshot_point

    # -- connection messages ---------------------------------------------------

    def _hello(self, message: Message) -> None:
        epoch = str(message["epoch"])
        head = int(message["seq"])
        self.project = str(message.get("project", self.project))
        self.server = message.get("server")
        self._hello_seq = head
        if epoch != self.epoch or not self.synced:
            self._reset(head)  # a fresh sync follows
        self.epoch = epoch

    def _resumed(self, message: Message) -> None:
        since = int(message["since"])
        self.resumes += 1
        if self.seq is not None and since != self.seq:
            raise SequenceGap(self.seq + 1, since + 1)
        self._snapshot_point = None

    def _resync(self, message: Message) -> None:
        """A fresh snapshot follows; live events continue after its point, which the
        resync names (PROTOCOL 3.1; a server before revision 2 used hello's)."""
        self.resyncs += 1
        point = message.get("seq", self._hello_seq)
        self._reset(None if point is None else int(point))

    def _pong(self, message: Message) -> None:
        self._snapshot_point = None  # everything sent before the pong has arrived

    def _warning(self, message: Message) -> None:
        self.warnings.append((str(message.get("source", "")), str(message["content"])))

    def _error(self, message: Message) -> None:
        self.error = str(message["content"])

    # -- events ------------------------------------------------------------------

    def _agent_status(self, message: Message) -> None:
        self.agent_status = str(message["status"])
        if self.agent_status in ("stopped", "crashed"):
            self.agents.clear()

    def _dev_server_status(self, message: Message) -> None:
        self.dev_status = str(message["status"])
        self.dev_url = message.get("url")

    def _progress(self, message: Message) -> None:
        self.progress = ProgressCounts(
            passing=int(message["passing"]),
            in_progress=int(message["in_progress"]),
            total=int(message["total"]),
            percentage=float(message["percentage"]),
            needs_human_input=int(message.get("needs_human_input", 0)),
        )
        self._add_point(message)

    def _add_point(self, message: Message) -> None:
        seq = message.get("seq")
        moment = parse_timestamp(message.get("timestamp"))
        if isinstance(seq, int) and moment is not None:
            self.points[seq] = ProgressPoint(
                seq, moment, int(message["passing"]), int(message["total"])
            )

    # -- what the HTTP API answered ----------------------------------------------------

    def apply_history(self, body: object) -> None:
        """Merge a ``progress-history`` answer; one of another epoch is left out.

        Raises ValueError when the body is not the documented shape."""
        if not isinstance(body, dict) or not isinstance(body.get("points"), list):
            raise ValueError(f"progress history without points: {str(body)[:80]!r}")
        if body.get("epoch") != self.epoch:
            return
        try:
            for point in body["points"]:
                self._add_point(point)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed progress history point: {exc!r}") from None
        self.history_epoch = self.epoch
        self.history_error = None

    def apply_features(self, status: int, body: object) -> None:
        """Take a ``features`` answer: the rows on 200, else the server's detail as the
        error (the rows are dropped: a board that cannot be read is not shown stale)."""
        if status != 200:
            detail = body.get("detail") if isinstance(body, dict) else None
            shown = str(detail) if detail is not None else repr(body)
            self.features_error = f"HTTP {status}: {shown}"
            self.features = None
            return
        rows = body.get("features") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            raise ValueError(f"features answer without a feature list: {str(body)[:80]!r}")
        try:
            self.features = [
                FeatureRow(
                    id=int(row["id"]),
                    category=str(row["category"]),
                    name=str(row["name"]),
                    passes=bool(row["passes"]),
                    in_progress=bool(row["in_progress"]),
                    needs_human_input=bool(row["needs_human_input"]),
                )
                for row in rows
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed feature row: {exc!r}") from None
        self.features_error = None

    def _log(self, message: Message) -> None:
        self.logs.append(
            LogEntry("agent", str(message["line"]), str(message["timestamp"]), message.get("seq"))
        )

    def _dev_log(self, message: Message) -> None:
        self.dev_logs.append(
            LogEntry("dev", str(message["line"]), str(message["timestamp"]), message.get("seq"))
        )

    def _agent_update(self, message: Message) -> None:
        index = int(message["agentIndex"])
        state = str(message["state"])
        if state in ("success", "error"):
            self.agents.pop(index, None)
            return
        if index < 0:
            return  # synthetic updates describe agents nobody tracks
        self.agents[index] = AgentCard(
            index=index,
            name=str(message["agentName"]),
            type=str(message["agentType"]),
            feature_ids=tuple(int(i) for i in message.get("featureIds") or ()),
            feature_name=message.get("featureName"),
            state=state,
            thought=message.get("thought"),
            updated=parse_timestamp(message.get("timestamp")),
        )

    def _orchestrator_update(self, message: Message) -> None:
        self.orchestrator = OrchestratorCard(
            event_type=str(message["eventType"]),
            state=str(message["state"]),
            message=str(message["message"]),
            coding=int(message["codingAgents"]),
            testing=int(message["testingAgents"]),
            max_concurrency=int(message["maxConcurrency"]),
            ready=int(message["readyCount"]),
            blocked=int(message["blockedCount"]),
            updated=parse_timestamp(message.get("timestamp")),
        )


_Handler = Callable[[RunView, Message], None]

_CONNECTION_HANDLERS: Final[dict[str, _Handler]] = {
    "hello": RunView._hello,
    "resumed": RunView._resumed,
    "resync": RunView._resync,
    "pong": RunView._pong,
    "warning": RunView._warning,
    "error": RunView._error,
}
_EVENT_HANDLERS: Final[dict[str, _Handler]] = {
    "agent_status": RunView._agent_status,
    "dev_server_status": RunView._dev_server_status,
    "progress": RunView._progress,
    "log": RunView._log,
    "dev_log": RunView._dev_log,
    "agent_update": RunView._agent_update,
    "orchestrator_update": RunView._orchestrator_update,
}


def parse_timestamp(value: object) -> float | None:
    """UNIX seconds of a protocol timestamp (``2026-11-25T17:04:05.123Z``); None if unreadable."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return moment.timestamp()


# -- rendering ------------------------------------------------------------------

_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONNECTION_STYLE: Final = {
    "live": "green",
    "connecting": "yellow",
    "reconnecting": "yellow",
    "closed": "red",
    "snapshot": "cyan",
}
_STATUS_STYLE: Final = {
    "running": "green",
    "stopped": "dim",
    "crashed": "bold red",
    "paused": "yellow",
    "pausing": "yellow",
    "paused_graceful": "yellow",
}
_STATE_STYLE: Final = {
    "thinking": "cyan",
    "working": "green",
    "testing": "blue",
    "struggling": "red",
}


def printable(text: str) -> str:
    """``text`` with ANSI sequences dropped and other control characters shown as ``?``."""
    return _CONTROL.sub(lambda m: "" if m.group().startswith("\x1b[") else "?", text)


def _text(value: object, style: str = "") -> Text:
    """Server-supplied text as a rich `Text`: never parsed as markup."""
    return Text(printable(str(value)), style=style, no_wrap=False)


def format_age(seconds: float | None) -> str:
    """``4s``, ``2m05s``, ``1h02m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def render_header(view: RunView) -> Table:
    grid = Table.grid(padding=(0, 2))
    row: list[RenderableType] = [_text(view.project or "?", "bold")]
    connection = Text(view.connection, style=_CONNECTION_STYLE.get(view.connection, ""))
    if view.connection_detail:
        connection.append(f" ({printable(view.connection_detail)})", style="dim")
    row.append(connection)
    agents = Text("agents: ")
    agents.append(printable(view.agent_status), style=_STATUS_STYLE.get(view.agent_status, ""))
    row.append(agents)
    dev = Text("dev server: ")
    dev.append(printable(view.dev_status), style=_STATUS_STYLE.get(view.dev_status, ""))
    if view.dev_url:
        dev.append(f" {printable(view.dev_url)}", style="underline")
    row.append(dev)
    row.append(Text(f"seq {view.seq if view.seq is not None else '-'}", style="dim"))
    for _ in row:
        grid.add_column(no_wrap=True)
    grid.add_row(*row)
    return grid


def render_progress(view: RunView) -> RenderableType:
    counts = view.progress
    if counts is None:
        return Text("progress: no data yet", style="dim")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(width=30)
    grid.add_column()
    bar = ProgressBar(total=max(counts.total, 1), completed=counts.passing, width=30)
    summary = Text(
        f"{counts.percentage:.1f}%  passing {counts.passing}/{counts.total}  "
        f"in progress {counts.in_progress}  needs input {counts.needs_human_input}"
    )
    grid.add_row(bar, summary)
    return grid


def sparkline(points: Iterable[ProgressPoint], width: int = SPARK_WIDTH) -> str:
    """Passing over time in block characters: the run's span cut into ``width`` equal
    slices, each showing the count at its end (a count holds until the next event),
    scaled to the largest total (a full block is every feature passing)."""
    ordered = sorted(points, key=lambda point: point.seq)
    if not ordered:
        return ""
    start, end = ordered[0].time, ordered[-1].time
    top = max(max(point.total, point.passing) for point in ordered) or 1
    slices = min(width, len(ordered)) if end <= start else width
    span = (end - start) / slices if end > start else 0.0
    blocks = []
    index = 0
    for number in range(slices):
        limit = start + span * (number + 1)
        if end <= start:
            index = round((number + 1) * len(ordered) / slices) - 1
        else:
            while index + 1 < len(ordered) and ordered[index + 1].time <= limit:
                index += 1
        level = ordered[index].passing / top
        blocks.append(SPARK_BLOCKS[min(len(SPARK_BLOCKS) - 1, round(level * 8))])
    return "".join(blocks)


def render_history(view: RunView) -> Text:
    line = Text("passing over time ")
    if view.history_error:
        line.append(printable(view.history_error), style="red")
        return line
    if not view.points:
        line.append("no progress events yet", style="dim")
        return line
    line.append(sparkline(view.points.values()), style="green")
    first = min(view.points.values(), key=lambda point: point.seq)
    last = max(view.points.values(), key=lambda point: point.seq)
    since = datetime.fromtimestamp(first.time, UTC).strftime("%H:%M:%S")
    events = len(view.points)
    line.append(
        f"  {last.passing}/{last.total} now, since {since} UTC"
        f" ({events} event{'' if events == 1 else 's'})",
        style="dim",
    )
    return line


def render_features(view: RunView) -> RenderableType:
    if view.features_error is not None:
        return _text(f"features: {view.features_error}", "red")
    if view.features is None:
        return Text("features: not read yet", style="dim")
    if not view.features:
        return Text("features: the database holds none yet", style="dim")
    counts: dict[str, list[int]] = {}
    for feature in view.features:
        row = counts.setdefault(feature.category, [0, 0, 0, 0])
        row[0 if feature.passes else 1 if feature.in_progress else 2] += 1
        row[3] += feature.needs_human_input
    table = Table(box=None, header_style="bold", pad_edge=False, expand=False)
    table.add_column("features", no_wrap=True, overflow="ellipsis")
    for column in ("done", "in progress", "pending", "needs input"):
        table.add_column(column, justify="right", no_wrap=True)
    for category in sorted(counts):
        table.add_row(_text(category), *(Text(str(n)) for n in counts[category]))
    totals = [sum(row[i] for row in counts.values()) for i in range(4)]
    table.add_row(Text("all", style="bold"), *(Text(str(n), style="bold") for n in totals))
    working = [feature for feature in view.features if feature.in_progress and not feature.passes]
    if not working:
        return Group(table, Text("no feature in progress", style="dim"))
    agents: dict[int, list[str]] = {}
    for index in sorted(view.agents):
        card = view.agents[index]
        for feature_id in card.feature_ids:
            agents.setdefault(feature_id, []).append(card.name)
    lines = Text("in progress:", style="bold")
    for feature in working[:IN_PROGRESS_SHOWN]:
        lines.append(f"\n  #{feature.id} ", style="dim")
        lines.append(printable(feature.name))
        lines.append(f"  {printable(feature.category)}", style="dim")
        names = agents.get(feature.id)
        if names:
            lines.append(f"  <- {printable(', '.join(names))}", style="cyan")
    if len(working) > IN_PROGRESS_SHOWN:
        lines.append(f"\n  and {len(working) - IN_PROGRESS_SHOWN} more", style="dim")
    return Group(table, lines)


def render_agents(view: RunView, now: float) -> RenderableType:
    if not view.agents:
        return Text("no active agents", style="dim")
    table = Table(box=None, header_style="bold", pad_edge=False, expand=False)
    for column in ("agent", "type", "features", "state", "thought", "age"):
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    for index in sorted(view.agents):
        card = view.agents[index]
        features = ", ".join(f"#{i}" for i in card.feature_ids) or (card.feature_name or "-")
        table.add_row(
            _text(card.name, "bold"),
            _text(card.type),
            _text(features),
            _text(card.state, _STATE_STYLE.get(card.state, "")),
            _text(card.thought if card.thought is not None else "", "italic"),
            Text(format_age(None if card.updated is None else now - card.updated)),
        )
    return table


def render_orchestrator(view: RunView) -> Text:
    card = view.orchestrator
    if card is None:
        return Text("orchestrator: no events yet", style="dim")
    line = Text("orchestrator: ")
    line.append(printable(card.state), style="bold")
    line.append(
        f"  coding {card.coding} testing {card.testing} max {card.max_concurrency}"
        f"  ready {card.ready} blocked {card.blocked}  "
    )
    line.append(printable(card.message), style="italic")
    return line


def log_tail(view: RunView, count: int) -> list[LogEntry]:
    """The last ``count`` lines of both streams, interleaved in event order."""
    if count <= 0:
        return []
    agent = list(view.logs)[-count:]
    dev = list(view.dev_logs)[-count:]
    merged = list(heapq.merge(agent, dev, key=lambda entry: entry.seq or 0))
    return merged[-count:]


def render_logs(view: RunView, count: int) -> RenderableType:
    lines = Text(no_wrap=True, overflow="ellipsis")
    for number, entry in enumerate(log_tail(view, count)):
        if number:
            lines.append("\n")
        clock = entry.timestamp[11:19] if len(entry.timestamp) >= 19 else entry.timestamp
        lines.append(f"{printable(clock)} ", style="dim")
        if entry.stream == "dev":
            lines.append("dev ", style="magenta")
        lines.append(printable(entry.line))
    return Panel(lines, title="log", title_align="left", border_style="dim")


def render(view: RunView, now: float, log_lines: int = ONCE_LOG_LINES) -> Group:
    """The whole dashboard for ``view`` at time ``now`` (UNIX seconds)."""
    parts: list[RenderableType] = [render_header(view)]
    parts.extend(_problems(view))
    parts += [
        render_progress(view),
        render_history(view),
        render_agents(view, now),
        render_features(view),
        render_orchestrator(view),
        render_logs(view, log_lines),
    ]
    return Group(*parts)


def _problems(view: RunView) -> Iterable[Text]:
    if view.error:
        yield _text(f"error: {view.error}", "bold red")
    if view.warnings:
        source, content = view.warnings[-1]
        yield _text(f"warning ({source}): {content}", "yellow")


def fitting_log_lines(view: RunView, console: Console, now: float) -> int:
    """How many log lines fit under everything else on ``console``'s screen."""
    rest = render(view, now, log_lines=0)
    used = len(console.render_lines(rest, console.options, pad=False))
    return max(1, console.size.height - used - 1)


# -- the network ------------------------------------------------------------------


class WatchError(Exception):
    """Watching cannot go on; the message says why (and never includes the token)."""


class WatchRefused(WatchError):
    """The server said not to retry: a 4xxx close or an HTTP 4xx refusal of the upgrade."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class OutputClosed(WatchError):
    """Raised by an ``on_message`` callback whose reader went away (e.g. ``| head``)."""


class _Dropped(Exception):
    """The connection ended in a way worth retrying."""


@dataclass(frozen=True)
class WatchTarget:
    """Where to watch: the websocket base URL, the project, the optional token."""

    base: str
    project: str
    token: str | None = None
    backlog: int = defaults.CLIENT_BACKLOG

    @classmethod
    def from_server(
        cls,
        server: str,
        project: str,
        token: str | None = None,
        backlog: int = defaults.CLIENT_BACKLOG,
    ) -> WatchTarget:
        """Map an ``http(s)://`` (or ``ws(s)://``) server URL to its subscribe endpoint."""
        base = websocket_base(server)
        if not protocol.is_valid_project_name(project):
            raise ValueError(f"invalid project name {project!r}")
        return cls(base, project, token, backlog)

    @property
    def display_url(self) -> str:
        """The endpoint without its query: safe to print."""
        return f"{self.base}/ws/projects/{self.project}"

    def api_url(self, view: str) -> str:
        """``http(s)://.../api/projects/NAME/{view}``: the project's HTTP API."""
        scheme, rest = self.base.split(":", 1)
        return f"{'https' if scheme == 'wss' else 'http'}:{rest}/api/projects/{self.project}/{view}"

    def url(self, resume: tuple[int, str] | None = None) -> str:
        query = [f"backlog={self.backlog}"]
        if resume is not None:
            query += [f"since={resume[0]}", f"epoch={quote(resume[1], safe='')}"]
        if self.token:
            query.append(f"token={quote(self.token, safe='')}")
        return f"{self.display_url}?{'&'.join(query)}"


def decode(text: str | bytes) -> Message:
    """One received frame as a message; the server only sends JSON objects."""
    if isinstance(text, bytes):
        raise ValueError("server sent a binary frame")
    payload = json.loads(text)
    if not isinstance(payload, dict):
        raise ValueError(f"server sent JSON that is not an object: {text[:80]!r}")
    return payload


def _refusal(exc: ConnectionClosed, view: RunView) -> WatchRefused | None:
    reason = exc.reason
    if reason is None or not refuses_for_good(close_code=reason.code):
        return None
    content = view.error or reason.reason or "refused"
    return WatchRefused(f"{content} (close {reason.code})", reason.code)


def _close_text(exc: ConnectionClosed) -> str:
    reason = exc.reason
    if reason is None:
        return "connection closed"
    text = f"closed {reason.code}"
    return f"{text}: {reason.reason}" if reason.reason else text


def _handshake_failure(exc: HandshakeError, target: WatchTarget) -> WatchError:
    """A failed connect: fatal for a do-not-retry refusal (`refuses_for_good`, the same
    rule as `trio-ws run`'s), otherwise worth a retry."""
    if isinstance(exc, ConnectionRejected):
        status = exc.status_code
        body = (exc.body or b"").decode("utf-8", "replace").strip()
        message = f"{target.display_url} refused the websocket: HTTP {status}"
        message += f" {body}" if body else ""
        if refuses_for_good(status=status):
            return WatchRefused(message, status)
        return WatchError(message)
    cause = exc.__cause__
    detail = str(cause) if cause is not None else (type(exc).__name__)
    return WatchError(f"cannot connect to {target.display_url}: {detail}")


async def _read(ws: WebSocketConnection, view: RunView, on_message: OnMessage | None) -> Message:
    """The next message, applied to ``view``; passed on unless it is the pong we asked for."""
    message = decode(await ws.get_message())
    if on_message is not None and message.get("type") != "pong":
        on_message(message)
    view.apply(message)
    return message


PING: Final = protocol.encode({"type": "ping"})


async def fetch_snapshot(
    target: WatchTarget,
    on_message: OnMessage | None = None,
    *,
    within: float = SNAPSHOT_TIMEOUT,
) -> RunView:
    """Connect once, read the fresh-sync snapshot and return the view it builds.

    A ping sent right after ``hello`` marks the snapshot's end: the server
    sends the whole snapshot before anything queued for this subscriber, so
    its pong comes after it. The pong itself is not passed to ``on_message``.
    """
    view = RunView(project=target.project)
    try:
        with trio.fail_after(within):
            async with open_websocket_url(
                target.url(), connect_timeout=CONNECT_TIMEOUT, disconnect_timeout=CLOSE_TIMEOUT
            ) as ws:
                first = await _read(ws, view, on_message)
                while first.get("type") == "error":  # a refusal: its close follows
                    first = await _read(ws, view, on_message)
                if first.get("type") != "hello":
                    raise WatchError(f"expected hello first, got {first.get('type')!r}")
                await ws.send_message(PING)
                while (await _read(ws, view, on_message)).get("type") != "pong":
                    pass
    except ConnectionClosed as exc:
        refused = _refusal(exc, view)
        if refused is not None:
            raise refused from None
        raise WatchError(
            f"{target.display_url} {_close_text(exc)} before the snapshot was complete"
        ) from None
    except HandshakeError as exc:
        raise _handshake_failure(exc, target) from None
    except trio.TooSlowError:
        raise WatchError(f"{target.display_url}: no complete snapshot in {within:g} s") from None
    except ValueError as exc:
        raise WatchError(f"protocol error from {target.display_url}: {exc}") from None
    view.set_connection("snapshot")
    return view


async def get_json(
    target: WatchTarget, view: str, *, within: float = HTTP_TIMEOUT
) -> tuple[int, Any]:
    """GET the project's ``view`` (the token, if any, as a Bearer header) and decode the
    JSON answer; raises `WatchError` saying what failed (never with the token)."""
    url = target.api_url(view)
    parts = urlsplit(url)
    host = parts.hostname or ""
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    headers = [(b"host", parts.netloc.encode()), (b"accept", b"application/json")]
    headers.append((b"connection", b"close"))
    if target.token:
        headers.append(bearer_header(target.token))
    try:
        with trio.fail_after(within):
            if secure:
                stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(host, port)
            else:
                stream = await trio.open_tcp_stream(host, port)
            async with stream:
                status, body = await _exchange(stream, parts.path, headers)
    except trio.TooSlowError:
        raise WatchError(f"GET {url}: no answer in {within:g} s") from None
    except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
        raise WatchError(f"GET {url}: {exc}") from None
    try:
        return status, json.loads(body)
    except ValueError:
        raise WatchError(f"GET {url}: HTTP {status} answer is not JSON: {body[:80]!r}") from None


async def _exchange(
    stream: trio.abc.Stream, path: str, headers: list[tuple[bytes, bytes]]
) -> tuple[int, bytes]:
    """One HTTP/1.1 GET over ``stream``: the status and the whole body."""
    connection = h11.Connection(h11.CLIENT)
    await stream.send_all(connection.send(h11.Request(method="GET", target=path, headers=headers)))
    await stream.send_all(connection.send(h11.EndOfMessage()) or b"")
    status = 0
    body = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            connection.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_API_BODY:
                raise OSError(f"answer over {MAX_API_BODY} bytes")
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return status, bytes(body)


async def read_features(target: WatchTarget, view: RunView) -> None:
    """Read the features board into ``view``; a failure becomes its ``features_error``."""
    try:
        status, body = await get_json(target, "features")
        view.apply_features(status, body)
    except (WatchError, ValueError) as exc:
        view.features = None
        view.features_error = str(exc)


async def read_history(target: WatchTarget, view: RunView) -> None:
    """Merge the progress history into ``view``; a failure becomes its ``history_error``."""
    try:
        status, body = await get_json(target, "progress-history")
        if status != 200:
            detail = body.get("detail") if isinstance(body, dict) else body
            raise WatchError(f"progress history: HTTP {status}: {detail}")
        view.apply_history(body)
    except (WatchError, ValueError) as exc:
        view.history_error = str(exc)


async def keep_extras(
    target: WatchTarget, view: RunView, *, clock: Callable[[], float] = time.monotonic
) -> NoReturn:
    """Keep the view's features board and progress history current while live: the
    board is read again when the progress counts change (at most every
    `FEATURES_INTERVAL`), the history once per synced epoch (after a resync too)."""
    features_read = False
    read_for: ProgressCounts | None = None
    history_tried = -HISTORY_RETRY
    while True:
        if not features_read or view.progress != read_for:
            features_read = True
            read_for = view.progress
            await read_features(target, view)
            await trio.sleep(FEATURES_INTERVAL)
            continue
        if (
            view.synced
            and view.history_epoch != view.epoch
            and clock() - history_tried >= HISTORY_RETRY
        ):
            history_tried = clock()
            await read_history(target, view)
        await trio.sleep(REFRESH)


async def once(target: WatchTarget) -> RunView:
    """The snapshot, the features board and the progress history, read once."""
    view = await fetch_snapshot(target)
    await read_features(target, view)
    await read_history(target, view)
    return view


def once_console() -> Console:
    """The console for ``--once``: the terminal's width, or when stdout is no terminal
    (a file, a pipe) `ONCE_WIDTH` columns unless ``COLUMNS`` says otherwise."""
    console = Console(highlight=False)
    if console.is_terminal or os.environ.get("COLUMNS"):
        return console
    return Console(highlight=False, width=ONCE_WIDTH)


async def follow(
    target: WatchTarget,
    view: RunView,
    on_message: OnMessage | None = None,
    *,
    backoff: Backoff | None = None,
    heartbeat: float = HEARTBEAT,
    on_drop: Callable[[str], None] | None = None,
) -> NoReturn:
    """Watch ``target`` forever, keeping ``view`` current across reconnects.

    Every reconnect asks to resume from ``view.resume_point``. Every close and
    network failure is retried after a ``backoff`` delay, except the
    do-not-retry ones, which raise `WatchRefused`; a message that breaks the
    protocol raises `WatchError`. ``on_drop`` is told why each connection ended.
    """
    delays = backoff or Backoff()
    view.set_connection("connecting")
    while True:
        try:
            await _session(target, view, on_message, delays, heartbeat)
        except _Dropped as exc:
            reason = str(exc)
        view.set_connection("reconnecting", reason)
        if on_drop is not None:
            on_drop(reason)
        await trio.sleep(delays.next())


async def _session(
    target: WatchTarget,
    view: RunView,
    on_message: OnMessage | None,
    delays: Backoff,
    heartbeat: float,
) -> NoReturn:
    """One connection, read until it ends: raises `_Dropped`, `WatchRefused` or `WatchError`."""
    ended: BaseException | None = None
    try:
        async with open_websocket_url(
            target.url(view.resume_point),
            connect_timeout=CONNECT_TIMEOUT,
            disconnect_timeout=CLOSE_TIMEOUT,
        ) as ws:
            async with trio.open_nursery() as nursery:
                silent = trio.Event()
                nursery.start_soon(_keep_alive, ws, heartbeat, silent, nursery.cancel_scope)
                # Kept out of the nursery, so the exception is not wrapped in a group.
                try:
                    while True:
                        message = await _read(ws, view, on_message)
                        if message.get("type") == "hello":
                            await ws.send_message(PING)  # its pong marks the snapshot's end
                            delays.reset()
                            view.set_connection("live")
                except (ConnectionClosed, SequenceGap, ValueError, WatchError) as exc:
                    ended = exc
                nursery.cancel_scope.cancel()
            if silent.is_set():
                ended = _Dropped(f"no answer to a ping in {heartbeat:g} s")
    except HandshakeError as exc:
        if ended is None:  # the connect failed, not the close after a failure
            failure = _handshake_failure(exc, target)
            if isinstance(failure, WatchRefused):
                view.set_connection("closed", str(failure))
                raise failure from None
            raise _Dropped(str(failure)) from None
    if isinstance(ended, ConnectionClosed):
        refused = _refusal(ended, view)
        if refused is not None:
            view.set_connection("closed", str(refused))
            raise refused
        raise _Dropped(_close_text(ended))
    if isinstance(ended, WatchError):
        raise ended
    if isinstance(ended, ValueError):
        raise WatchError(f"protocol error from {target.display_url}: {ended}")
    if isinstance(ended, SequenceGap):
        raise _Dropped(f"{ended}; resuming")
    if isinstance(ended, _Dropped):
        raise ended
    raise _Dropped("connection closed")


async def _keep_alive(
    ws: WebSocketConnection, interval: float, silent: trio.Event, scope: trio.CancelScope
) -> None:
    """Ping every ``interval``; a peer that doesn't answer within it is gone."""
    while True:
        await trio.sleep(interval)
        with trio.move_on_after(interval) as waited:
            try:
                await ws.ping()
            except ConnectionClosed:
                return  # the reader sees the close too
        if waited.cancelled_caught:
            silent.set()
            scope.cancel()
            return


# -- the command's modes ------------------------------------------------------------


async def watch_live(
    target: WatchTarget,
    console: Console,
    *,
    log_lines: int | None = None,
    backoff: Backoff | None = None,
    clock: Callable[[], float] = time.time,
) -> NoReturn:
    """The live dashboard until cancelled; raises `WatchRefused` on a do-not-retry close.

    The screen is redrawn every `REFRESH` seconds from the trio task that owns
    the view (never from rich's refresh thread, which would read it mid-update).
    """
    view = RunView(project=target.project)

    def current() -> RenderableType:
        now = clock()
        lines = log_lines if log_lines is not None else fitting_log_lines(view, console, now)
        return render(view, now, lines)

    async def refresh(live: Live) -> None:
        while True:
            live.update(current(), refresh=True)
            await trio.sleep(REFRESH)

    failure: WatchError | None = None
    with Live(current(), console=console, auto_refresh=False) as live:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(refresh, live)
            nursery.start_soon(partial(keep_extras, target, view))
            try:
                await follow(target, view, backoff=backoff)
            except WatchError as exc:
                failure = exc
            finally:
                nursery.cancel_scope.cancel()
                live.update(current())
    assert failure is not None  # follow() only ends by raising
    raise failure


async def watch_json(
    target: WatchTarget,
    write: Callable[[str], None],
    *,
    backoff: Backoff | None = None,
    on_drop: Callable[[str], None] | None = None,
) -> NoReturn:
    """Every received message as one compact JSON line, across reconnects."""
    view = RunView(project=target.project)
    await follow(
        target,
        view,
        lambda message: write(protocol.encode(message)),
        backoff=backoff,
        on_drop=on_drop,
    )
