"""The runs API's bodies: ``GET /api/projects/{name}/runs`` (newest first, paged with
``limit`` and ``before``) and ``.../runs/{id}``, from the hub's run recorder. Pure:
the query and the recorder in, a status and a body out; `server` routes the request
and decides access as for the rest of ``/api/projects/{name}/...``.

Only the runs the journal's state keeps (`runs.KEEP` closed ones and the open one)
are served so far.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from trio_ws.state.runs import RunRecorder

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500

Body = dict[str, Any]


def run_listing(project: str, recorder: RunRecorder, query: Mapping[str, str]) -> tuple[int, Body]:
    """One page of runs, newest first: ``limit`` of them (1-500, default 50), starting
    after the run ``before`` names; ``next_before`` is the id to ask with for the next
    page (None on the last). A bad parameter is a 400 naming it."""
    raw_limit = query.get("limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
            return 400, {"detail": f"limit must be an integer from 1 to {MAX_LIMIT}"}
        limit = int(raw_limit)
    runs = list(recorder.newest_first())
    before = query.get("before")
    if before is not None:
        ids = [run.id for run in runs]
        if before not in ids:
            return 400, {"detail": f"before: no run {before!r} is held"}
        runs = runs[ids.index(before) + 1 :]
    page = runs[:limit]
    more = len(runs) > limit
    return 200, {
        "project": project,
        "runs": [run.to_json() for run in page],
        "next_before": page[-1].id if more else None,
    }


def run_detail(recorder: RunRecorder, run_id: str) -> tuple[int, Body]:
    """One run's summary; 404 when no run has that id (or it is no longer held)."""
    run = recorder.get(run_id)
    if run is None:
        return 404, {"detail": f"Run {run_id!r} not found"}
    return 200, run.to_json()
