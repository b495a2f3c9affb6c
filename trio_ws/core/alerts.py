"""Alert rules: what about a run a human should know, from its committed events.

Pure (sans-IO): `AlertRules.feed` takes each committed event and the time now, and
returns the ``alert`` events its edges make; `AlertRules.due` does the same for the
rules that fire on silence (an agent that says nothing, a run that makes no
progress) and says when to look again, so the shell sleeps until then and no
timer lives here. Every alert is an edge: raised once while it stands, resolved
once, under one stable ``id``. Only agent-stream and dev-stream events are read,
never our own ``alert`` events, so alerts cannot feed themselves.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from trio_ws.core.messages import AlertEvent, AlertSeverity, AlertState
from trio_ws.core.pipeline import AUTH_BANNER
from trio_ws.core.protocol import (
    EXIT_LINE,
    LOST_LINE,
    Clock,
    MessageFields,
    iso_timestamp,
    wall_clock,
)

SILENT_AFTER: Final = 600.0
"""Seconds an active agent may go without a log line before it counts as silent."""
STALLED_AFTER: Final = 1800.0
"""Seconds a running run may go without a progress change before it counts as stalled."""

RUN_FINISHED: Final = "run_finished"
RUN_CRASHED: Final = "run_crashed"
NEEDS_INPUT: Final = "needs_input"
AGENT_SILENT: Final = "agent_silent"
RUN_STALLED: Final = "run_stalled"
AUTH: Final = "auth"
PRODUCER_LOST: Final = "producer_lost"
KINDS: Final = (
    RUN_FINISHED,
    RUN_CRASHED,
    NEEDS_INPUT,
    AGENT_SILENT,
    RUN_STALLED,
    AUTH,
    PRODUCER_LOST,
)

AUTH_LINE: Final = AUTH_BANNER[1]
"""The banner's headline: the pipeline emits the banner once per run on an auth error."""

_ENDED: Final = frozenset({"stopped", "crashed"})
_ENDS_AGENT: Final = frozenset({"success", "error"})
_PER_RUN: Final = (RUN_FINISHED, RUN_CRASHED, AUTH)
"""Kinds that stand until the next run starts."""


@dataclass(frozen=True)
class AlertSettings:
    """The thresholds of the time-based rules, in seconds."""

    silent: float = SILENT_AFTER
    stalled: float = STALLED_AFTER

    def __post_init__(self) -> None:
        if not (self.silent > 0 and self.stalled > 0):
            raise ValueError("alert thresholds must be positive")


@dataclass
class _Agent:
    name: str
    feature: int | None
    spoke: float
    """When (the rules' ``now``) its last log line, or its arrival, was seen."""


@dataclass(frozen=True)
class Due:
    """What `AlertRules.due` found: the edges now, and when to look next (inf: no rule
    waits on time; a new event may change that)."""

    alerts: list[AlertEvent]
    next_at: float


class AlertRules:
    """The rules of one project. ``now`` (any monotonic clock: trio's) times silence;
    ``wall`` only stamps the alerts."""

    def __init__(
        self, project: str, settings: AlertSettings | None = None, wall: Clock = wall_clock
    ) -> None:
        self.project = project
        self.settings = settings or AlertSettings()
        self._wall = wall
        self._standing: dict[str, AlertEvent] = {}
        """The raised alerts not yet resolved, by key (kind and subject)."""
        self._status: str | None = None
        self._counts: tuple[int, int, int, int] | None = None
        self._agents: dict[int, _Agent] = {}
        self._stall_since: float | None = None
        """While the run is running: since when its progress has not changed."""
        self._exit_code: int | None = None
        self._seq = 0
        """The newest seq fed: names an alert that time, not an event, raised."""
        self._out: list[AlertEvent] = []
        """The edges of the call in progress."""
        self._quiet = False
        """While seeding: state is learnt, nothing is raised or resolved."""

    @property
    def standing(self) -> list[AlertEvent]:
        return list(self._standing.values())

    def restore(self, alerts: Iterable[MessageFields]) -> None:
        """Take back the standing alerts a journal kept, so none is raised twice."""
        for alert in alerts:
            if alert.get("state") == "raised":
                event = AlertEvent(  # a fresh dict of the fields: none shared with the caller
                    type="alert",
                    id=str(alert["id"]),
                    kind=str(alert["kind"]),
                    severity=alert["severity"],
                    state="raised",
                    project=self.project,
                    agent=alert.get("agent"),
                    feature=alert.get("feature"),
                    message=str(alert["message"]),
                    timestamp=str(alert["timestamp"]),
                )
                self._standing[key_of(event["id"])] = event

    def seed(self, events: Iterable[MessageFields], now: float) -> None:
        """Learn the state ``events`` (a snapshot) describe without raising or resolving
        anything: a restarted server times its agents and its run from ``now``."""
        self._quiet = True
        try:
            for event in events:
                self.feed(event, now)
        finally:
            self._quiet = False

    def feed(self, event: MessageFields, now: float) -> list[AlertEvent]:
        """The alerts one committed event raises or resolves."""
        seq = event.get("seq")
        if isinstance(seq, int):
            self._seq = seq
        kind = event.get("type")
        if kind == "agent_status":
            self._on_status(str(event["status"]), now)
        elif kind == "progress":
            self._on_progress(event, now)
        elif kind == "agent_update":
            self._on_agent(event, now)
        elif kind == "log":
            self._on_log(event, now)
        elif kind == "dev_log" and event["line"] == LOST_LINE:
            self._raise(PRODUCER_LOST, "dev", "error", "the dev server's producer was lost")
        elif kind == "dev_server_status" and event["status"] == "running":
            self._resolve(f"{PRODUCER_LOST}:dev")
        edges, self._out = self._out, []
        return edges

    def due(self, now: float) -> Due:
        """The time-based edges at ``now`` and when the next one can come."""
        next_at = math.inf
        silent = self.settings.silent
        for index, agent in self._agents.items():
            if f"{AGENT_SILENT}:{index}" in self._standing:
                continue
            if now >= agent.spoke + silent:
                self._raise(
                    AGENT_SILENT,
                    str(index),
                    "warning",
                    f"{agent.name} has said nothing for {_span(now - agent.spoke)}",
                    agent,
                )
            else:
                next_at = min(next_at, agent.spoke + silent)
        since = self._stall_since
        if since is not None and f"{RUN_STALLED}:run" not in self._standing:
            if now >= since + self.settings.stalled:
                self._raise(
                    RUN_STALLED,
                    "run",
                    "warning",
                    f"no progress for {_span(now - since)} while running",
                )
            else:
                next_at = min(next_at, since + self.settings.stalled)
        edges, self._out = self._out, []
        return Due(edges, next_at)

    # -- the rules -------------------------------------------------------------

    def _on_status(self, status: str, now: float) -> None:
        previous, self._status = self._status, status
        if status == previous:
            return
        if status == "running":
            if previous is None or previous in _ENDED:
                for kind in _PER_RUN:
                    self._resolve(f"{kind}:run")
                self._resolve(f"{PRODUCER_LOST}:agent")
                self._exit_code = None
            self._stall_since = now
        else:
            self._stall_since = None
            self._resolve(f"{RUN_STALLED}:run")
        if status in _ENDED:
            for index in list(self._agents):
                self._agent_left(index)
        if status == "stopped" and self._counts is not None:
            passing, _, total, _ = self._counts
            if 0 < total == passing:
                self._raise(
                    RUN_FINISHED, "run", "info", f"the run finished: {passing}/{total} passing"
                )
        elif status == "crashed" and f"{PRODUCER_LOST}:agent" not in self._standing:
            code = "" if self._exit_code is None else f" (exit code {self._exit_code})"
            self._raise(RUN_CRASHED, "run", "error", f"the run crashed{code}")

    def _on_progress(self, event: MessageFields, now: float) -> None:
        counts = (
            int(event["passing"]),
            int(event["in_progress"]),
            int(event["total"]),
            int(event["needs_human_input"]),
        )
        previous, self._counts = self._counts, counts
        if counts != previous and self._stall_since is not None:
            self._stall_since = now
            self._resolve(f"{RUN_STALLED}:run")
        needs = counts[3]
        if needs > 0:
            plural = "feature needs" if needs == 1 else "features need"
            self._raise(NEEDS_INPUT, "run", "warning", f"{needs} {plural} human input")
        else:
            self._resolve(f"{NEEDS_INPUT}:run")

    def _on_agent(self, event: MessageFields, now: float) -> None:
        index = int(event["agentIndex"])
        if index < 0:  # a completion nobody tracked: no agent to watch
            return
        if event["state"] in _ENDS_AGENT:
            self._agent_left(index)
            return
        feature = event.get("featureId")
        agent = self._agents.get(index)
        if agent is None:
            self._agents[index] = _Agent(str(event["agentName"]), feature, now)
        else:
            agent.name, agent.feature = str(event["agentName"]), feature

    def _on_log(self, event: MessageFields, now: float) -> None:
        line = str(event["line"])
        index = event.get("agentIndex")
        if isinstance(index, int) and index in self._agents:
            self._agents[index].spoke = now
            self._resolve(f"{AGENT_SILENT}:{index}")
        if line == AUTH_LINE:
            self._raise(AUTH, "run", "error", "the agent cannot authenticate: run claude login")
        elif line == LOST_LINE:
            self._raise(PRODUCER_LOST, "agent", "error", "the run's producer was lost")
        elif line.startswith(EXIT_LINE):
            code = line[len(EXIT_LINE) :].strip()
            self._exit_code = int(code) if code.lstrip("-").isdigit() else None

    def _agent_left(self, index: int) -> None:
        self._agents.pop(index, None)
        self._resolve(f"{AGENT_SILENT}:{index}")

    # -- edges -------------------------------------------------------------------

    def _raise(
        self,
        kind: str,
        subject: str,
        severity: AlertSeverity,
        message: str,
        agent: _Agent | None = None,
    ) -> None:
        key = f"{kind}:{subject}"
        if self._quiet or key in self._standing:
            return
        alert = self._alert(f"{key}:{self._seq}", kind, severity, "raised", message, agent)
        self._standing[key] = alert
        self._out.append(alert)

    def resolve_all(self) -> list[AlertEvent]:
        """Resolve every standing alert, as the rules are turned off: no client keeps
        one that nothing would ever resolve."""
        for key in list(self._standing):
            self._resolve(key)
        resolved, self._out = self._out, []
        return resolved

    def _resolve(self, key: str) -> None:
        if self._quiet:
            return
        raised = self._standing.pop(key, None)
        if raised is None:
            return
        resolved = AlertEvent(**raised)  # same id, kind, subject
        resolved["state"] = "resolved"
        resolved["timestamp"] = iso_timestamp(self._wall())
        self._out.append(resolved)

    def _alert(
        self,
        alert_id: str,
        kind: str,
        severity: AlertSeverity,
        state: AlertState,
        message: str,
        agent: _Agent | None,
    ) -> AlertEvent:
        return AlertEvent(
            type="alert",
            id=alert_id,
            kind=kind,
            severity=severity,
            state=state,
            project=self.project,
            agent=None if agent is None else agent.name,
            feature=None if agent is None else agent.feature,
            message=message,
            timestamp=iso_timestamp(self._wall()),
        )


def key_of(alert_id: str) -> str:
    """An alert id's kind and subject: ``agent_silent:3:120`` is ``agent_silent:3``."""
    return alert_id.rpartition(":")[0]


def _span(seconds: float) -> str:
    """``12 min``, ``45 s``, ``2 h``: how long, for a message."""
    if seconds >= 7200:
        return f"{seconds / 3600:.0f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"
