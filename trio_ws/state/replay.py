"""A run's live view at any moment, rebuilt from its journalled events, pure (no I/O).

`Replay` is fed committed event texts in seq order and answers what a subscriber
joining right after the last one fed would have been sent as its snapshot: the same
`Snapshot` the hub keeps (status, progress, orchestrator updates, active agents'
cards, standing alerts) plus the log tails. Its state is what a checkpoint stores,
so a seek replays from the nearest checkpoint instead of from the run's start.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any, Final

from trio_ws.core.protocol import JsonObject
from trio_ws.state.history import Outgoing
from trio_ws.state.snapshot import Snapshot

LOG_TAIL: Final = 100
"""Log (and dev log) events a replayed snapshot ends with: the dashboard's backlog."""


class Replay:
    """The snapshot after the newest event fed (``seq``, ``timestamp``)."""

    def __init__(self) -> None:
        self.seq = 0
        self.timestamp: str | None = None
        self.snapshot = Snapshot()
        self.logs: deque[Outgoing] = deque(maxlen=LOG_TAIL)
        self.dev_logs: deque[Outgoing] = deque(maxlen=LOG_TAIL)

    def feed(self, seq: int, text: str) -> None:
        """One committed event (``seq`` is its journal seq)."""
        message, item = Outgoing.event(text)
        self.seq = seq
        stamp = message.get("timestamp")
        if isinstance(stamp, str):
            self.timestamp = stamp
        if item.type == "log":
            self.logs.append(item)
        elif item.type == "dev_log":
            self.dev_logs.append(item)
        else:
            self.snapshot.remember(message, item)

    def messages(self) -> list[Outgoing]:
        """The snapshot in the live snapshot's order (a backlog of LOG_TAIL)."""
        state = self.snapshot
        items = [item for item in (state.agent_status, state.dev_status) if item is not None]
        if state.progress is not None:
            items.append(state.progress)
        items.extend(state.orchestrator)
        items.extend(state.agents[index] for index in sorted(state.agents))
        items.extend(state.alerts.values())
        items.extend(self.logs)
        items.extend(self.dev_logs)
        return items

    # -- checkpoints ----------------------------------------------------------------

    def to_state(self) -> JsonObject:
        return {
            "seq": self.seq,
            "timestamp": self.timestamp,
            "snapshot": self.snapshot.to_state(),
            "logs": [item.text for item in self.logs],
            "dev_logs": [item.text for item in self.dev_logs],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Replay:
        """The replay `to_state` wrote; KeyError/TypeError/ValueError if it is not one."""
        replay = cls()
        seq = state["seq"]
        if not isinstance(seq, int):
            raise TypeError(f"checkpoint seq {seq!r} is no integer")
        replay.seq = seq
        stamp = state["timestamp"]
        replay.timestamp = None if stamp is None else str(stamp)
        replay.snapshot = Snapshot.from_state(dict(state["snapshot"]))
        replay.logs.extend(Outgoing.event(str(text))[1] for text in state["logs"])
        replay.dev_logs.extend(Outgoing.event(str(text))[1] for text in state["dev_logs"])
        return replay
