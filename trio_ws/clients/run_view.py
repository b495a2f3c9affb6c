"""The pure state model of `trio-ws watch`: `RunView` applies subscribe-protocol
messages (PROTOCOL.md 3) one at a time and remembers where it stands (``epoch``,
``seq``), so a reconnect can resume exactly where it left off. It never does I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

from trio_ws.core.protocol import MessageFields

LOG_LIMIT: Final = 1000
"""Log lines (per stream) a view keeps; the server's backlog is at most 1000 too."""
WARNING_LIMIT: Final = 5
ConnectionState = Literal["connecting", "live", "reconnecting", "closed", "snapshot", "replay"]
LogStream = Literal["agent", "dev"]


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
    alerts: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    """Standing alerts by id: (kind, severity, message), oldest first."""
    alerts_raised: int = 0
    """Alerts raised while watching (live ones, not a snapshot's): what rings the bell."""
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

    def begin_snapshot(self, epoch: str, seq: int) -> None:
        """Start over from a snapshot taken right after event ``seq`` of ``epoch`` that was
        not read from a websocket (a recorded run's ``/state``): its messages follow, then
        the events after ``seq``, exactly as after a live ``hello``."""
        self.epoch = epoch
        self._reset(seq)

    def apply(self, message: MessageFields) -> None:
        """Apply one received message; unknown types are ignored (forward compatible).

        Raises `SequenceGap` (without applying) when a live event skips a seq.
        Raises ValueError when a known message lacks a field it must have.
        """
        kind = message.get("type")
        try:
            if kind in _CONNECTION_HANDLERS:
                _CONNECTION_HANDLERS[kind](self, message)
            elif kind in _EVENT_HANDLERS:
                if self._admit(message.get("seq")):
                    _EVENT_HANDLERS[kind](self, message)
            elif self.seq is not None and message.get("seq") == self.seq + 1:
                # The next event, of a type this view does not show (an ``alert``): its
                # seq still counts, or the event after it would look like a gap.
                self._admit(self.seq + 1)
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
        self.alerts.clear()
        self.points.clear()
        self.history_epoch = None
        self.seq = snapshot_point
        self._snapshot_point = snapshot_point

    # -- connection messages ---------------------------------------------------

    def _hello(self, message: MessageFields) -> None:
        epoch = str(message["epoch"])
        head = int(message["seq"])
        self.project = str(message.get("project", self.project))
        self.server = message.get("server")
        self._hello_seq = head
        if epoch != self.epoch or not self.synced:
            self._reset(head)  # a fresh sync follows
        self.epoch = epoch

    def _resumed(self, message: MessageFields) -> None:
        since = int(message["since"])
        self.resumes += 1
        if self.seq is not None and since != self.seq:
            raise SequenceGap(self.seq + 1, since + 1)
        self._snapshot_point = None

    def _resync(self, message: MessageFields) -> None:
        """A fresh snapshot follows; live events continue after its point, which the
        resync names (PROTOCOL 3.1; a server before revision 2 used hello's)."""
        self.resyncs += 1
        point = message.get("seq", self._hello_seq)
        self._reset(None if point is None else int(point))

    def _pong(self, message: MessageFields) -> None:
        self._snapshot_point = None  # everything sent before the pong has arrived

    def _warning(self, message: MessageFields) -> None:
        self.warnings.append((str(message.get("source", "")), str(message["content"])))

    def _error(self, message: MessageFields) -> None:
        self.error = str(message["content"])

    # -- events ------------------------------------------------------------------

    def _agent_status(self, message: MessageFields) -> None:
        self.agent_status = str(message["status"])
        if self.agent_status in ("stopped", "crashed"):
            self.agents.clear()

    def _dev_server_status(self, message: MessageFields) -> None:
        self.dev_status = str(message["status"])
        self.dev_url = message.get("url")

    def _progress(self, message: MessageFields) -> None:
        self.progress = ProgressCounts(
            passing=int(message["passing"]),
            in_progress=int(message["in_progress"]),
            total=int(message["total"]),
            percentage=float(message["percentage"]),
            needs_human_input=int(message.get("needs_human_input", 0)),
        )
        self._add_point(message)

    def _add_point(self, message: MessageFields) -> None:
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

    def _log(self, message: MessageFields) -> None:
        self.logs.append(
            LogEntry("agent", str(message["line"]), str(message["timestamp"]), message.get("seq"))
        )

    def _dev_log(self, message: MessageFields) -> None:
        self.dev_logs.append(
            LogEntry("dev", str(message["line"]), str(message["timestamp"]), message.get("seq"))
        )

    def _agent_update(self, message: MessageFields) -> None:
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

    def _orchestrator_update(self, message: MessageFields) -> None:
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

    def _alert(self, message: MessageFields) -> None:
        """A raised alert stands until it is resolved (the snapshot repeats standing
        ones); a raised one that is no snapshot's counts toward the bell."""
        key = str(message.get("id"))
        if message.get("state") == "resolved":
            self.alerts.pop(key, None)
            return
        where = [str(message[k]) for k in ("agent", "feature") if message.get(k) is not None]
        text = str(message.get("message", ""))
        self.alerts[key] = (
            str(message.get("kind", "alert")),
            str(message.get("severity", "warning")),
            f"{text} ({' '.join(where)})" if where else text,
        )
        if self._snapshot_point is None or int(message.get("seq", 0)) > self._snapshot_point:
            self.alerts_raised += 1


_Handler = Callable[[RunView, MessageFields], None]

_CONNECTION_HANDLERS: Final[dict[str, _Handler]] = {
    "hello": RunView._hello,
    "resumed": RunView._resumed,
    "resync": RunView._resync,
    "pong": RunView._pong,
    "warning": RunView._warning,
    "error": RunView._error,
}
_EVENT_HANDLERS: Final[dict[str, _Handler]] = {
    "alert": RunView._alert,
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
    # The shape checked by hand, the parsing by fromisoformat: strptime cost ~35 us per
    # event, most of a `replay --speed max`'s time.
    if not isinstance(value, str) or value[10:11] != "T" or value[19:20] != ".":
        return None
    if not value.endswith("Z"):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None
