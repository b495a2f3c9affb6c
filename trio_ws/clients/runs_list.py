"""`trio-ws runs`: a project's recorded runs, read over HTTP (``/api/projects/NAME/runs``)
and turned into a table's rows. Only the protocol: the summaries are the API's JSON,
never the server's types, so it works against any trio-ws node."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from trio_ws.clients.watch_api import get_json
from trio_ws.clients.watch_render import format_age
from trio_ws.clients.watch_session import WatchError, WatchTarget

COLUMNS: Final = ("run", "started", "took", "ended", "exit", "progress", "logs", "errors")

Summary = dict[str, Any]


async def read_runs(target: WatchTarget, limit: int) -> list[Summary]:
    """The newest ``limit`` runs, newest first; `WatchError` saying what failed."""
    status, body = await get_json(target, f"runs?limit={limit}")
    if status != 200:
        detail = body.get("detail") if isinstance(body, dict) else body
        raise WatchError(f"runs of {target.project}: HTTP {status}: {detail}")
    if not isinstance(body, dict) or not isinstance(body.get("runs"), list):
        raise WatchError(f"runs of {target.project}: the answer holds no runs")
    runs: list[Summary] = body["runs"]
    return runs


def row(run: Summary) -> tuple[str, ...]:
    """One run as the table's cells: when, how long, how it ended, final progress."""
    started = _time(run.get("started_at"))
    end = _time(run.get("ended_at") or run.get("last_at"))
    took = "" if started is None or end is None else format_age((end - started).total_seconds())
    progress = run.get("progress_end")
    shown = "" if not isinstance(progress, dict) else _progress(progress)
    exit_code = run.get("exit_code")
    return (
        str(run.get("id", "")),
        "" if started is None else started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        took,
        str(run.get("ended") or "live"),
        "" if exit_code is None else str(exit_code),
        shown,
        str(run.get("log_lines", "")),
        str(run.get("error_lines", "")),
    )


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _progress(progress: dict[str, Any]) -> str:
    return f"{progress.get('passing')}/{progress.get('total')} ({progress.get('percentage')}%)"
