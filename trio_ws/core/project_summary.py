"""The overview: one summary per project, folded from its events, and the order that
puts what needs the user first.

Pure: `RunSummary.feed` folds committed events (a snapshot's, or any run of them in
seq order) into what a glance at a project needs: its status, progress, active
agents, standing alerts and last activity. `entry` turns one into the wire's
summary object with its `attention` and `rank`, so the page and `watch` sort
projects the same way without a copy of the rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

from trio_ws.core.alerts import NEEDS_INPUT
from trio_ws.core.protocol import JsonObject, MessageFields

Attention = Literal["error", "needs_input", "crashed", "warning", "running", "idle"]
ATTENTION: Final[tuple[Attention, ...]] = (
    "error",
    "needs_input",
    "crashed",
    "warning",
    "running",
    "idle",
)
"""How much a project needs the user, most first: a raised error alert, a feature
waiting for a human, a crashed run, another raised alert (a silent agent, a stalled
run), a run going on, then everything else (stopped, never seen, not open here)."""

_ENDED: Final = frozenset({"stopped", "crashed"})
_AGENT_DONE: Final = frozenset({"success", "error"})
_ALERT_FIELDS: Final = ("id", "kind", "severity", "message", "agent", "feature", "timestamp")
_PROGRESS_FIELDS: Final = ("passing", "in_progress", "total", "needs_human_input", "percentage")


@dataclass
class RunSummary:
    """A project's state at a glance, from its events (`feed`)."""

    agent_status: str | None = None
    """None: no status event seen (a project that never ran)."""
    dev_status: str | None = None
    progress: JsonObject | None = None
    """The latest ``progress`` event's counts and percentage."""
    agents: dict[int, JsonObject] = field(default_factory=dict)
    """Each active agent by index: name, type, feature, state."""
    alerts: dict[str, JsonObject] = field(default_factory=dict)
    """The raised, not yet resolved alerts by id, oldest first."""
    last_activity: str | None = None
    """The newest event timestamp seen (ISO 8601 UTC: they order as text)."""

    def feed(self, event: MessageFields) -> None:
        """Take one committed event into the summary; unknown types only date it."""
        kind = event.get("type")
        if kind == "agent_status":
            self.agent_status = str(event["status"])
            if self.agent_status in _ENDED:
                self.agents.clear()
        elif kind == "dev_server_status":
            self.dev_status = str(event["status"])
        elif kind == "progress":
            self.progress = {key: event[key] for key in _PROGRESS_FIELDS}
        elif kind == "agent_update":
            self._on_agent(event)
        elif kind == "alert":
            if event["state"] == "raised":
                self.alerts[str(event["id"])] = {key: event.get(key) for key in _ALERT_FIELDS}
            else:
                self.alerts.pop(str(event["id"]), None)
        stamp = event.get("timestamp")
        if isinstance(stamp, str) and (self.last_activity is None or stamp > self.last_activity):
            self.last_activity = stamp

    def _on_agent(self, event: MessageFields) -> None:
        index = event["agentIndex"]
        if not isinstance(index, int) or index < 0:
            return  # a completion nobody tracked: no card
        if event["state"] in _AGENT_DONE:
            self.agents.pop(index, None)
            return
        self.agents[index] = {
            "index": index,
            "name": event["agentName"],
            "type": event.get("agentType"),
            "feature": event.get("featureId"),
            "state": event["state"],
        }

    @property
    def attention(self) -> Attention:
        severities = {alert["severity"] for alert in self.alerts.values()}
        if "error" in severities:
            return "error"
        needs = 0 if self.progress is None else self.progress["needs_human_input"]
        if needs or any(alert["kind"] == NEEDS_INPUT for alert in self.alerts.values()):
            return "needs_input"
        if self.agent_status == "crashed":
            return "crashed"
        if "warning" in severities:
            return "warning"
        if self.agent_status is not None and self.agent_status not in _ENDED:
            return "running"
        return "idle"


def summarise(events: Iterable[MessageFields]) -> RunSummary:
    """The summary ``events`` (in seq order) leave."""
    summary = RunSummary()
    for event in events:
        summary.feed(event)
    return summary


def entry(
    name: str, summary: RunSummary | None, *, path: str | None, exists: bool, loaded: bool
) -> JsonObject:
    """One project's object on ``/ws/overview``. ``summary`` None: nothing known of it
    (not open on this server since it started); ``loaded`` False: what it was when
    it was last open (or nothing)."""
    known = summary or RunSummary()
    attention = known.attention
    return {
        "name": name,
        "path": path,
        "exists": exists,
        "loaded": loaded,
        "agent_status": known.agent_status,
        "dev_server_status": known.dev_status,
        "progress": known.progress,
        "agents": [known.agents[index] for index in sorted(known.agents)],
        "alerts": list(known.alerts.values()),
        "last_activity": known.last_activity,
        "attention": attention,
        "rank": ATTENTION.index(attention),
    }


def order_key(project: JsonObject) -> tuple[int, str]:
    """Sort the overview's projects by: what needs the user first, then by name (a
    stable order: a busy project does not jump about as its lines arrive)."""
    rank = project.get("rank")
    return (rank if isinstance(rank, int) else len(ATTENTION), str(project.get("name", "")))
