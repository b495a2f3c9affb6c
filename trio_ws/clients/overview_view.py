"""What `trio-ws watch` (with no project) knows of every project: the ``/ws/overview``
messages applied to plain state, pure.

The first ``overview`` message replaces the list; each ``overview_update`` replaces
the summaries it carries and drops the ones it names removed. The order is the
server's rule (`core.project_summary.order_key`: what needs the user first).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trio_ws.core.project_summary import order_key
from trio_ws.core.protocol import JsonObject, MessageFields


@dataclass
class OverviewView:
    """Every listed project's latest summary, and how the connection goes."""

    projects: dict[str, JsonObject] = field(default_factory=dict)
    connection: str = "connecting"
    detail: str = ""
    registry_error: str | None = None
    lists: int = 0
    """Full lists received (one per connection)."""

    def apply(self, message: MessageFields) -> None:
        kind = message.get("type")
        if kind == "overview":
            self.projects = {}
            self._put(message.get("projects"))
            error = message.get("registry_error")
            self.registry_error = error if isinstance(error, str) else None
            self.lists += 1
            self.set_connection("live")
        elif kind == "overview_update":
            self._put(message.get("projects"))
            removed = message.get("removed")
            for name in removed if isinstance(removed, list) else ():
                self.projects.pop(str(name), None)

    def _put(self, summaries: object) -> None:
        for summary in summaries if isinstance(summaries, list) else ():
            if isinstance(summary, dict) and isinstance(summary.get("name"), str):
                self.projects[summary["name"]] = summary

    def set_connection(self, state: str, detail: str = "") -> None:
        self.connection = state
        self.detail = detail

    def ordered(self) -> list[JsonObject]:
        """The projects, what needs the user first, then by name."""
        return sorted(self.projects.values(), key=order_key)

    @property
    def needing(self) -> int:
        """Projects that need the user now (an error, input wanted, a crash)."""
        return sum(1 for project in self.projects.values() if project.get("rank", 9) <= 2)
