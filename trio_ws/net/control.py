"""AutoForge's agent REST API and the chart's data, as the hub knows them (PROTOCOL.md 1).

The AutoForge UI's Pause/Resume/Stop buttons (and scripts) call
``POST /api/projects/{name}/agent/{action}`` and ``GET .../agent/status``;
`act` sends an action through the same path as a websocket ``control``
message (`Project.control`, so the same refusals), then waits a
moment for the producer to report the new status, since AutoForge answers
with the status after the action. `agent_status` and `progress_history`
build their bodies from the hub's live state and held events. The HTTP
side (routes, token, origin, registry) is the server's.
"""

from __future__ import annotations

from typing import Any, Final

import trio

from trio_ws.state.hub import ProjectHub
from trio_ws.state.project import Project

REST_ACTIONS: Final = {
    "stop": "stop",
    "pause": "pause",
    "resume": "resume",
    "graceful-pause": "graceful_pause",
    "graceful-resume": "graceful_resume",
}
"""AutoForge's path segment -> the websocket ``control`` action (PROTOCOL.md 3.4)."""
SETTLE_TIMEOUT: Final = 2.0
"""How long a forwarded action waits for the producer to report a new status."""
RUN_OVER: Final = frozenset({"stopped", "crashed"})
CHART_TYPES: Final = frozenset({"progress", "agent_status"})
STATUS_TYPES: Final = frozenset({"agent_status", "orchestrator_update"})


async def act(
    project: Project, action: str, settle_timeout: float = SETTLE_TIMEOUT
) -> dict[str, Any]:
    """Forward ``action`` (a websocket action name) and answer as AutoForge does:
    ``{"success", "status", "message"}`` with the agent status after the action."""
    hub = project.hub
    before = hub.committed_agent_status
    refusal = await project.control(action)
    if refusal is not None:
        return {"success": False, "status": hub.committed_agent_status, "message": refusal}
    with trio.move_on_after(settle_timeout):
        while hub.committed_agent_status == before:
            await hub.agent_status_changed().wait()
    after = hub.committed_agent_status
    if after == before:
        message = (
            f"{action} sent to the producer; it reported no new status within {settle_timeout:g} s"
        )
    else:
        message = f"{action} sent to the producer; the agent is now {after}"
    return {"success": True, "status": after, "message": message}


def agent_status(hub: ProjectHub) -> dict[str, Any]:
    """AutoForge's ``AgentStatus`` body. What a producer does not tell us is null
    (``pid``, ``model``) or AutoForge's default (``yolo_mode``, ``testing_agent_ratio``);
    ``started_at`` is when the current run's first ``running`` was published (null
    once that event left the held history), ``max_concurrency`` the latest
    orchestrator update's."""
    status = hub.committed_agent_status
    started_at = None
    max_concurrency = None
    for event in reversed(hub.held(STATUS_TYPES)):
        if event["type"] == "orchestrator_update":
            if max_concurrency is None:
                max_concurrency = event.get("maxConcurrency")
            continue
        if event["status"] in RUN_OVER:
            break
        if event["status"] == "running":
            started_at = event.get("timestamp")
    return {
        "status": status,
        "pid": None,
        "started_at": None if status in RUN_OVER else started_at,
        "yolo_mode": False,
        "model": None,
        "parallel_mode": True,
        "max_concurrency": max_concurrency,
        "testing_agent_ratio": 1,
    }


def progress_history(hub: ProjectHub) -> dict[str, Any]:
    """The held ``progress`` events as chart points, and the run's status changes."""
    points = []
    statuses = []
    for event in hub.held(CHART_TYPES):
        if event["type"] == "progress":
            points.append(
                {
                    "seq": event["seq"],
                    "timestamp": event.get("timestamp"),
                    "passing": event["passing"],
                    "in_progress": event["in_progress"],
                    "total": event["total"],
                    "percentage": event["percentage"],
                    "needs_human_input": event["needs_human_input"],
                }
            )
        else:
            statuses.append(
                {
                    "seq": event["seq"],
                    "timestamp": event.get("timestamp"),
                    "status": event["status"],
                }
            )
    return {"project": hub.name, "epoch": hub.epoch, "points": points, "statuses": statuses}
