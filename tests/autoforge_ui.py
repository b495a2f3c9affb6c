"""The AutoForge UI's websocket reducer, as far as rows and cards go, for tests.

A port of ``useProjectWebSocket`` (ui/src/hooks/useWebSocket.ts at AutoForgeAI/autoforge
427c228): it keeps its state across reconnects, files every ``agent_update`` with a
thought as an activity row (newest first, 20 kept) whose React key is
``featureId-timestamp-thought[:20]`` (ActivityFeed.tsx), keeps a card per
``agentIndex``, and clears cards and rows on ``stopped`` or ``crashed``. React warns
about two rows with one key, and shows one of them twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_ACTIVITY = 20


@dataclass
class AutoForgeUI:
    cards: dict[int, dict[str, Any]] = field(default_factory=dict)
    activity: list[dict[str, Any]] = field(default_factory=list)
    repeated_keys: list[str] = field(default_factory=list)
    """Every key that was already in the feed when a row with it was filed."""

    def apply(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "agent_status" and message["status"] in ("stopped", "crashed"):
            self.cards.clear()
            self.activity.clear()
        elif kind == "agent_update":
            self._agent_update(message)

    def _agent_update(self, message: dict[str, Any]) -> None:
        index = message["agentIndex"]
        if message["state"] in ("success", "error"):
            self.cards.pop(index, None)
        else:
            self.cards[index] = message
        thought = message.get("thought")
        if thought:
            row = {"featureId": message["featureId"], "timestamp": message["timestamp"]}
            row["thought"] = thought
            key = self.key(row)
            if key in {self.key(kept) for kept in self.activity}:
                self.repeated_keys.append(key)
            self.activity = [row, *self.activity[: MAX_ACTIVITY - 1]]

    @staticmethod
    def key(row: dict[str, Any]) -> str:
        return f"{row['featureId']}-{row['timestamp']}-{row['thought'][:20]}"
