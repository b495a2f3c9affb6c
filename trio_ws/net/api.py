"""The REST answers' bodies: ``/healthz``, ``/api/projects`` and a project's features
board. Built here from the manager and the data layer; `server` routes the request,
decides access (`access`) and sends what these return. AutoForge's agent API
(status, progress history, control) is `control`'s.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Final

import trio

from trio_ws.data.features import NoFeaturesDatabase, read_features
from trio_ws.data.progress import (
    CorruptDatabase,
    DatabaseLocked,
    MissingTable,
    ProgressError,
    UnsupportedSchema,
)
from trio_ws.data.registry import Project, Registry
from trio_ws.journal.interface import Journal, JournalError
from trio_ws.state.hub import ProjectHub
from trio_ws.state.manager import ConnectionManager

log = logging.getLogger("trio_ws.net.server")


def health(manager: ConnectionManager, started_at: float) -> dict[str, Any]:
    """``/healthz``: what the server holds now, and each project's journal."""
    return {
        "status": "ok",
        "projects": len(manager.hubs),
        "subscribers": manager.subscriber_count,
        "producers": manager.producer_count,
        "uptime_s": round(time.monotonic() - started_at, 3),
        "journal": manager.journals.name,
        "journals": {
            name: journal_health(hub.journal, hub.pending)
            for name, hub in sorted(manager.hubs.items())
            if hub.journal is not None
        },
    }


def journal_health(journal: Journal, pending: int) -> dict[str, Any]:
    """One project's journal for /healthz (STATE.md: what it holds, how commits go)."""
    stats = journal.stats()
    recent = sorted(stats.commit_seconds)
    return {
        "backend": stats.backend,
        "head": stats.head,
        "oldest_seq": stats.oldest,
        "events_held": stats.events_held,
        "bytes_held": stats.bytes_held,
        "pending": pending,
        "commits": stats.commits,
        "commit_p50_ms": round(recent[len(recent) // 2] * 1000, 3) if recent else None,
        "commit_max_ms": round(recent[-1] * 1000, 3) if recent else None,
        "write_errors": stats.write_errors,
        "archive": None
        if stats.archive is None
        else {
            "oldest_seq": stats.archive.oldest,
            "events": stats.archive.events,
            "bytes": stats.archive.bytes,
            "runs": stats.archive.runs,
            "oldest_run_seq": stats.archive.oldest_run,
        },
    }


def project_listing(
    manager: ConnectionManager, projects: list[tuple[Project, bool]]
) -> list[dict[str, Any]]:
    """``/api/projects``: each registered project, whether its directory exists here,
    and what its hub says now (a project nobody watches reads as stopped)."""
    listing = []
    for project, exists in projects:
        hub = manager.get_hub(project.name)
        listing.append(
            {
                "name": project.name,
                "path": project.path.as_posix(),
                "exists": exists,
                "subscribers": hub.subscriber_count if hub else 0,
                "agent_status": hub.agent.status if hub else "stopped",
                "dev_server_status": hub.dev.status if hub else "stopped",
            }
        )
    return listing


FEATURE_ERRORS: Final[tuple[tuple[type[ProgressError], int], ...]] = (
    (NoFeaturesDatabase, 404),
    (DatabaseLocked, 503),
    (CorruptDatabase, 500),
    (MissingTable, 500),
    (UnsupportedSchema, 500),
    (ProgressError, 500),
)
"""Status per features read failure; the first match wins (subclasses first)."""


async def features(
    name: str, directory: Path, lock_timeout: float, limiter: trio.CapacityLimiter
) -> tuple[int, dict[str, Any]]:
    """The board's rows, read off the event loop under the progress readers' limiter."""
    try:
        found = await trio.to_thread.run_sync(
            lambda: read_features(directory, lock_timeout=lock_timeout),
            limiter=limiter,
        )
    except ProgressError as exc:
        status = next(code for kind, code in FEATURE_ERRORS if isinstance(exc, kind))
        if status >= 500:
            log.warning("project %s: features read failed: %s", name, exc)
        return status, {"detail": str(exc)}
    if found.malformed:
        log.info(
            "project %s: %d features have malformed dependencies in %s (read as [] or filtered)",
            name,
            found.malformed,
            found.path,
        )
    return 200, {"project": name, "features": [feature.to_json() for feature in found.features]}


async def producer_features(name: str, hub: ProjectHub) -> tuple[int, dict[str, Any]]:
    """The board as the project's agent producer last sent it: for a node that has no
    directory for the project (several nodes), where the database lives on the
    producer's machine. 404 until a producer has sent one; 503 when the shared
    journal cannot be read."""
    try:
        rows = await hub.producer_features()
    except JournalError as exc:
        return 503, {"detail": f"journal unavailable: {exc}"}
    if rows is None:
        detail = (
            f"project {name}'s directory is on another machine, and its producer "
            "(trio-ws run there) has sent no features yet"
        )
        return 404, {"detail": detail}
    return 200, {"project": name, "features": rows}


def list_with_existence(registry: Registry) -> list[tuple[Project, bool]]:
    """The registered projects, each with whether its directory exists here (blocking)."""
    return [(project, project.path.is_dir()) for project in registry.list()]
