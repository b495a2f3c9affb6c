"""What a late joiner is sent besides the log tails: the latest status, progress,
orchestrator updates, each active agent's latest update and the standing alerts, kept
up to date in O(1) per event and stored with every commit so a restart continues it."""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from trio_ws.core.protocol import MessageFields
from trio_ws.data.progress import Progress
from trio_ws.journal.interface import JsonObject
from trio_ws.state.history import Outgoing

ORCHESTRATOR_RECENT: Final = 5
"""Orchestrator updates a snapshot keeps (a client asking for a backlog gets them all)."""


@dataclass
class Snapshot:
    """What a fresh sync is made of besides the log tails, as already-encoded events."""

    agent_status: Outgoing | None = None
    dev_status: Outgoing | None = None
    progress: Outgoing | None = None
    orchestrator: deque[Outgoing] = field(default_factory=lambda: deque(maxlen=ORCHESTRATOR_RECENT))
    agents: dict[int, Outgoing] = field(default_factory=dict)
    alerts: dict[str, Outgoing] = field(default_factory=dict)
    """The raised alerts not yet resolved, by id, oldest first."""
    _cards: dict[int, Outgoing] = field(default_factory=dict, repr=False, compare=False)
    """Each agent's latest update without its thought, made once per update (`cards`)."""

    def copy(self) -> Snapshot:
        return Snapshot(
            self.agent_status,
            self.dev_status,
            self.progress,
            deque(self.orchestrator, maxlen=ORCHESTRATOR_RECENT),
            dict(self.agents),
            dict(self.alerts),
        )

    def glance(self) -> list[Outgoing]:
        """What the overview sums a project up from: its statuses, progress, active
        agents and standing alerts."""
        singles = [self.agent_status, self.dev_status, self.progress]
        return [
            *(item for item in singles if item is not None),
            *self.agents.values(),
            *self.alerts.values(),
        ]

    def cards(self) -> list[Outgoing]:
        """Each active agent's latest update with ``thought`` null, in index order, same
        seq: the cards for a client that appends what it gets (backlog 0, the AutoForge
        UI). That UI files every update with a thought as an activity row keyed by
        feature, timestamp and thought, and keeps its rows across reconnects, so the
        full update again would be a second row with the same key."""
        cards = []
        for index in sorted(self.agents):
            item = self.agents[index]
            card = self._cards.get(index)
            if card is None or card.seq != item.seq:
                update = json.loads(item.text)
                update["thought"] = None
                card = self._cards[index] = Outgoing.of(update, item.seq)
            cards.append(card)
        for index in self._cards.keys() - self.agents.keys():
            del self._cards[index]
        return cards

    def remember(self, message: MessageFields, item: Outgoing) -> None:
        """Keep what a snapshot needs of one event; O(1)."""
        kind = item.type
        if kind == "agent_update":
            index = message["agentIndex"]
            if index < 0:
                return
            if message["state"] in ("success", "error"):
                self.agents.pop(index, None)
            else:
                self.agents[index] = item
        elif kind == "orchestrator_update":
            self.orchestrator.append(item)
        elif kind == "agent_status":
            self.agent_status = item
            if message["status"] in ("stopped", "crashed"):
                self.agents.clear()
        elif kind == "dev_server_status":
            self.dev_status = item
        elif kind == "progress":
            self.progress = item
        elif kind == "alert":
            if message["state"] == "raised":
                self.alerts[message["id"]] = item
            else:
                self.alerts.pop(message["id"], None)

    def to_state(self) -> JsonObject:
        """The snapshot as event texts, for the journal."""
        return {
            "agent_status": None if self.agent_status is None else self.agent_status.text,
            "dev_server_status": None if self.dev_status is None else self.dev_status.text,
            "progress": None if self.progress is None else self.progress.text,
            "orchestrator": [item.text for item in self.orchestrator],
            "agents": [self.agents[index].text for index in sorted(self.agents)],
            "alerts": [item.text for item in self.alerts.values()],
        }

    @classmethod
    def from_state(cls, state: JsonObject) -> Snapshot:
        """The snapshot `to_state` wrote; ValueError/KeyError/TypeError if it is not one."""
        snapshot = cls()
        singles = [state["agent_status"], state["dev_server_status"], state["progress"]]
        alerts = list(state.get("alerts", []))  # none in a journal older than alerts
        for text in singles + list(state["orchestrator"]) + list(state["agents"]) + alerts:
            if text is not None:
                snapshot.remember(*Outgoing.event(str(text)))
        return snapshot


def progress_of(item: Outgoing) -> Progress:
    """The counts of a ``progress`` event."""
    message = json.loads(item.text)
    return Progress(
        message["passing"], message["in_progress"], message["total"], message["needs_human_input"]
    )
