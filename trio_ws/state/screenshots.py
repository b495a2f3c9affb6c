"""The latest browser screenshot of each agent session, and who watches them.

Screenshots are ephemeral: one per session at most (the latest wins), never in
the history and never journalled, so none can outlive its run or fill a log's
limits. They are dropped when the agent status becomes stopped or crashed, and a
session's when its agent completes or fails. Only subscribers that sent
``browser_view_subscribe`` get them, each through its own bounded queue: one whose
queue is full, or holds `MAX_QUEUED` pictures already, misses that one (never
blocking anyone, never falling behind for it: the next one comes 2 s later), and
none takes the room replies use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from trio_ws.core.messages import AgentType, BrowserScreenshotMessage, ScreenshotMessage
from trio_ws.core.protocol import MessageFields
from trio_ws.core.trackers import AgentTracker
from trio_ws.state.history import Outgoing
from trio_ws.state.subscriber import Subscriber

RUN_OVER: Final = frozenset({"stopped", "crashed"})
AGENT_DONE: Final = frozenset({"success", "error"})
MAX_QUEUED: Final = 8
"""Most screenshots one subscriber may have queued: its queue bounds messages, not
bytes, and a picture may be megabytes, so a slow reader misses the rest."""


def browser_screenshot(
    shot: ScreenshotMessage, agents: AgentTracker
) -> BrowserScreenshotMessage | None:
    """What subscribers are sent of a producer's screenshot: named after the agent whose
    features include its ``featureId`` (of the type its session's name says, as the
    orchestrator names them: ``coding-<feature>``, ``testing-<n>``), so ``agentIndex``
    is that agent's card. None when no active agent has it: its agent is gone (a
    capture that raced its completion must not bring back the picture the completion
    dropped) or was never seen, and the UI could put it on no card."""
    feature_id = shot["featureId"]
    if feature_id is None:
        return None
    card = agents.agent_of(feature_id, _agent_type(shot["sessionName"]))
    if card is None:
        return None
    return {
        "type": "browser_screenshot",
        "sessionName": shot["sessionName"],
        "agentIndex": card["agentIndex"],
        "agentType": card["agentType"],
        "featureId": feature_id,
        "featureName": card["featureName"],
        "imageData": shot["imageData"],
        "timestamp": shot["timestamp"],
    }


def _agent_type(session: str) -> AgentType | None:
    if session.startswith("coding-"):
        return "coding"
    if session.startswith("testing-"):
        return "testing"
    return None


@dataclass(slots=True)
class _Held:
    agent_index: int
    item: Outgoing


class Screenshots:
    """One project's latest screenshot per session and the subscribers that want them."""

    def __init__(self) -> None:
        self._latest: dict[str, _Held] = {}
        self.watchers: set[Subscriber] = set()
        self.relayed = 0
        """Screenshots queued for a watcher."""
        self.dropped = 0
        """Screenshots a watcher's full queue had no room for."""

    def __len__(self) -> int:
        return len(self._latest)

    @property
    def watching(self) -> bool:
        """Does any subscriber want screenshots (the producer takes them only then)?"""
        return bool(self.watchers)

    def sessions(self) -> list[str]:
        return sorted(self._latest)

    def watch(self, subscriber: Subscriber, failed: Callable[[Subscriber], None]) -> bool:
        """``subscriber`` wants screenshots: it is handed the latest of every session at
        once. True when it is the first watcher (the producer must be told)."""
        if subscriber in self.watchers or not subscriber.is_open:
            return False
        self.watchers.add(subscriber)
        for held in list(self._latest.values()):
            self._offer(subscriber, held.item, failed)
        return len(self.watchers) == 1

    def unwatch(self, subscriber: Subscriber) -> bool:
        """``subscriber`` wants no more (or left); True when it was the last watcher."""
        if subscriber not in self.watchers:
            return False
        self.watchers.discard(subscriber)
        return not self.watchers

    def put(self, message: BrowserScreenshotMessage, failed: Callable[[Subscriber], None]) -> None:
        """Keep ``message`` as its session's latest and queue it for every watcher."""
        item = Outgoing.of(message)
        self._latest[message["sessionName"]] = _Held(message["agentIndex"], item)
        for subscriber in list(self.watchers):
            self._offer(subscriber, item, failed)

    def after(self, event: MessageFields) -> None:
        """Forget what ``event`` ends: every screenshot when the run stopped or crashed,
        an agent's when it completed or failed."""
        kind = event["type"]
        if kind == "agent_status" and event["status"] in RUN_OVER:
            self._latest.clear()
        elif kind == "agent_update" and event["state"] in AGENT_DONE:
            index = event["agentIndex"]
            for session in [s for s, held in self._latest.items() if held.agent_index == index]:
                del self._latest[session]

    def _offer(
        self, subscriber: Subscriber, item: Outgoing, failed: Callable[[Subscriber], None]
    ) -> None:
        queued = sum(1 for waiting in subscriber.queue if waiting.type == "browser_screenshot")
        if queued >= MAX_QUEUED:
            self.dropped += 1
            return
        try:
            offered = subscriber.offer(item)
        except Exception:  # noqa: BLE001 (logged with its traceback by failed)
            failed(subscriber)
            return
        if offered:
            self.relayed += 1
        else:
            self.dropped += 1
