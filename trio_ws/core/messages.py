"""The shape of every message of ``../shared/spec/PROTOCOL.md``, one TypedDict each.

TypedDicts, not classes: at runtime a message stays the plain dict that goes
straight to JSON (``protocol.encode``), so typing them changes no byte on the
wire. Each has a ``Literal`` ``type`` tag; optional keys are ``NotRequired``.
``seq`` is optional on every event because the hub adds it when it numbers one.
Pure and dependency-free: the core layer's vocabulary for every other layer.

No ``from __future__ import annotations`` here: Python 3.11 reads ``NotRequired``
only from evaluated annotations, and ``__required_keys__`` must be true at runtime
(``tests/core/test_messages.py`` checks emitted messages against it).
"""

from typing import Literal, NotRequired, TypedDict

Stream = Literal["agent", "dev"]
"""A project's two producer streams: the orchestrator's output and its dev server's."""

AgentType = Literal["coding", "testing"]
"""The two kinds of agent the orchestrator runs (an ``agent_update``'s ``agentType``)."""

ResyncReason = Literal["epoch_changed", "gap_evicted", "invalid_since"]
"""Why a subscriber is given a fresh snapshot instead of a resume (PROTOCOL.md 3.1)."""


# -- events, server to subscriber (PROTOCOL.md 3.2); the hub adds ``seq`` ------


class ProgressEvent(TypedDict):
    """The four counts of a features database and their percentage."""

    type: Literal["progress"]
    passing: int
    in_progress: int
    total: int
    percentage: float
    """``round(passing / total * 100, 1)``; the int ``0`` when there are no features."""
    needs_human_input: int
    timestamp: NotRequired[str]
    """Additive: places the figures on a progress chart."""
    seq: NotRequired[int]


class AgentStatusEvent(TypedDict):
    type: Literal["agent_status"]
    status: str
    """One of ``protocol.AGENT_STATUSES``."""
    timestamp: NotRequired[str]
    """Additive (revision 2): dates the change for a progress chart."""
    seq: NotRequired[int]


class LogEvent(TypedDict):
    type: Literal["log"]
    line: str
    timestamp: str
    featureId: NotRequired[int]
    """The N of a line starting ``[Feature #N]``."""
    agentIndex: NotRequired[int]
    """The agent that line belongs to."""
    seq: NotRequired[int]


class AgentUpdateEvent(TypedDict):
    """One agent's card in the UI (LINES.md 2)."""

    type: Literal["agent_update"]
    agentIndex: int
    agentName: str
    agentType: AgentType
    featureId: int
    featureIds: list[int]
    featureName: str
    state: str
    """One of ``protocol.AGENT_STATES``."""
    thought: str | None
    timestamp: str
    synthetic: NotRequired[Literal[True]]
    """The completion of an agent nobody tracked."""
    seq: NotRequired[int]


class OrchestratorUpdateEvent(TypedDict):
    """What the orchestrator is doing and how many agents it runs (LINES.md 3)."""

    type: Literal["orchestrator_update"]
    eventType: str
    state: str
    message: str
    timestamp: str
    codingAgents: int
    testingAgents: int
    maxConcurrency: int
    readyCount: int
    blockedCount: int
    featureId: NotRequired[int]
    featureName: NotRequired[str]
    seq: NotRequired[int]


class DevLogEvent(TypedDict):
    type: Literal["dev_log"]
    line: str
    timestamp: str
    seq: NotRequired[int]


class DevServerStatusEvent(TypedDict):
    type: Literal["dev_server_status"]
    status: str
    """One of ``protocol.DEV_STATUSES``."""
    url: str | None
    seq: NotRequired[int]


AlertSeverity = Literal["info", "warning", "error"]
"""How bad an alert is: a finished run is news, a crash is trouble."""

AlertState = Literal["raised", "resolved"]
"""An alert's edge: each ``id`` is raised once and resolved at most once."""


class AlertEvent(TypedDict):
    """Something about a run a human should know (``core/alerts.py`` raises them).

    An event like any other (numbered, journalled, held), so a dashboard that missed
    one is caught up with it; the standing ones are part of a late joiner's snapshot.
    Clients that know no ``alert`` (the AutoForge UI) ignore its type."""

    type: Literal["alert"]
    id: str
    """Stable: the same for its ``raised`` and its ``resolved``."""
    kind: str
    """One of ``alerts.KINDS``."""
    severity: AlertSeverity
    state: AlertState
    project: str
    agent: str | None
    """The agent's ``agentName`` when the alert is about one agent."""
    feature: int | None
    """The agent's primary ``featureId`` when the alert is about one agent."""
    message: str
    timestamp: str
    seq: NotRequired[int]


Event = (
    ProgressEvent
    | AgentStatusEvent
    | LogEvent
    | AgentUpdateEvent
    | OrchestratorUpdateEvent
    | DevLogEvent
    | DevServerStatusEvent
    | AlertEvent
)
"""A message that belongs to a project's history: it carries ``seq`` once published."""

AgentEvent = AgentStatusEvent | LogEvent | AgentUpdateEvent | OrchestratorUpdateEvent
"""What the agent stream's pipeline makes of a line or a status."""

DevEvent = DevLogEvent | DevServerStatusEvent
"""What the dev stream's pipeline makes of a line or a status."""


# -- connection messages (PROTOCOL.md 3.3): never carry ``seq`` as an event does --


class HelloMessage(TypedDict):
    """The first message to every subscriber; ``seq`` here is the head, not its own."""

    type: Literal["hello"]
    protocol: int
    project: str
    epoch: str
    seq: int
    server: str


class ResumedMessage(TypedDict):
    type: Literal["resumed"]
    since: int
    seq: int


class ResyncMessage(TypedDict):
    """A fresh snapshot follows; ``seq`` is its snapshot point."""

    type: Literal["resync"]
    reason: ResyncReason
    epoch: str
    seq: int


class PongMessage(TypedDict):
    type: Literal["pong"]


class WarningMessage(TypedDict):
    """A problem the client should see that does not end the connection."""

    type: Literal["warning"]
    source: str
    content: str


class ErrorMessage(TypedDict):
    """Sent only just before a 4xxx close (or a refused producer's close)."""

    type: Literal["error"]
    content: str


class BrowserScreenshotMessage(TypedDict):
    """The latest picture of one agent's browser, exactly as AutoForge's UI reads it.

    No ``seq``: it is no event of the history (never held, never journalled) and
    goes only to subscribers that sent ``browser_view_subscribe``. The UI keys
    its pictures by ``sessionName`` and puts one on the agent card of the same
    ``agentIndex`` (that agent's ``agent_update.agentIndex``).
    """

    type: Literal["browser_screenshot"]
    sessionName: str
    agentIndex: int
    agentType: AgentType
    featureId: int
    featureName: str
    imageData: str
    """Base64 PNG, no ``data:`` prefix."""
    timestamp: str


ConnectionMessage = (
    HelloMessage
    | ResumedMessage
    | ResyncMessage
    | PongMessage
    | WarningMessage
    | ErrorMessage
    | BrowserScreenshotMessage
)
"""A message to one connection that is no part of the project's history."""


# -- subscriber to server (PROTOCOL.md 3.4) ------------------------------------


class PingMessage(TypedDict):
    type: Literal["ping"]


class ControlMessage(TypedDict):
    """A control request from a subscriber, and the same request forwarded to the
    agent producer (PROTOCOL.md 4.2)."""

    type: Literal["control"]
    action: str
    """One of ``protocol.CONTROL_ACTIONS``."""


class BrowserViewRequest(TypedDict):
    """Start (subscribe) or stop (unsubscribe) the ``browser_screenshot`` messages;
    leaving counts as unsubscribe."""

    type: Literal["browser_view_subscribe", "browser_view_unsubscribe"]


SubscriberRequest = PingMessage | ControlMessage | BrowserViewRequest
"""What a subscriber may send that the server acts on (anything else is ignored)."""


# -- producer to server (PROTOCOL.md 4.1) --------------------------------------


class ProducerHello(TypedDict):
    type: Literal["hello"]
    producer: str
    """Stable across the producer's reconnects."""
    stream: Stream


class LinesMessage(TypedDict):
    type: Literal["lines"]
    first: int
    """The ``pseq`` of the first line."""
    lines: list[str]
    at: NotRequired[list[float]]
    """Additive: when the producer read each line (its UNIX seconds), so lines held
    through an outage keep their own time; with ``sent`` the server corrects for the
    producer's clock."""
    sent: NotRequired[float]
    """Additive: the producer's clock when it sent the message."""


class StatusMessage(TypedDict):
    type: Literal["status"]
    pseq: int
    status: str
    exit_code: NotRequired[int]
    at: NotRequired[float]
    """Additive: when the producer saw the status (as ``lines``' ``at``)."""
    sent: NotRequired[float]


class ProducerProgress(TypedDict):
    """A producer's read of the features database; the server derives ``percentage``."""

    type: Literal["progress"]
    pseq: int
    passing: int
    in_progress: int
    total: int
    needs_human_input: int


class ScreenshotMessage(TypedDict):
    """A picture of one agent's browser (``playwright-cli`` session ``sessionName``).

    Not a pseq item, on purpose: a pseq item is kept by the producer until it is
    acked and sent again after a reconnect, but a screenshot is ephemeral, the
    latest wins, and a stale one sent again is worse than the next one 2 s later.
    So it carries no pseq, is never acked, and one lost in a drop is simply gone.
    """

    type: Literal["screenshot"]
    sessionName: str
    featureId: int | None
    """The primary feature of the agent whose browser it is, if the producer knows it."""
    imageData: str
    """Base64 PNG, no ``data:`` prefix; at most ``protocol.MAX_SCREENSHOT_BYTES``."""
    timestamp: str


ProducerMessage = (
    ProducerHello | LinesMessage | StatusMessage | ProducerProgress | ScreenshotMessage
)
"""What a producer sends."""


# -- server to producer (PROTOCOL.md 4.2) --------------------------------------


class WelcomeMessage(TypedDict):
    type: Literal["welcome"]
    acked: int
    """Highest pseq already applied for this producer id, 0 if none."""


class AckMessage(TypedDict):
    type: Literal["ack"]
    pseq: int


class ScreenshotsMessage(TypedDict):
    """Whether any subscriber of the project wants screenshots: sent right after
    ``welcome`` when one does (a connection starts not watching), and whenever that
    count goes 0 to 1 or 1 to 0. A producer takes screenshots only while ``watching``
    is true (each costs a browser a capture)."""

    type: Literal["screenshots"]
    watching: bool


ProducerReply = (
    WelcomeMessage
    | AckMessage
    | ControlMessage
    | WarningMessage
    | ErrorMessage
    | ScreenshotsMessage
)
"""What the server sends a producer."""


Message = Event | ConnectionMessage | SubscriberRequest | ProducerMessage | ProducerReply
"""Any one message of the protocol, either direction."""


# -- AutoForge's agent-control API bodies (PROTOCOL.md 1) ------------------------


class ControlReply(TypedDict):
    """The answer to ``POST /api/projects/{name}/agent/{action}``."""

    success: bool
    status: str
    """The agent status after the action."""
    message: str


class AgentStatusReply(TypedDict):
    """The answer to ``GET /api/projects/{name}/agent/status`` (AutoForge's ``AgentStatus``)."""

    status: str
    pid: int | None
    started_at: str | None
    yolo_mode: bool
    model: str | None
    parallel_mode: bool
    max_concurrency: int | None
    testing_agent_ratio: int
