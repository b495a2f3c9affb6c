"""`trio-ws export`: a recorded run's events as NDJSON, streamed from the runs API's
``/export`` to a writer as the bytes arrive (an export can be larger than memory).
Only the protocol; a refusal (404, 400) or a broken connection is a `WatchError`
saying which, never a silently short file."""

from __future__ import annotations

import json
from collections.abc import Callable

from trio_ws.clients.run_replay import run_view
from trio_ws.clients.watch_api import stream_get
from trio_ws.clients.watch_session import WatchError, WatchTarget


async def export(target: WatchTarget, run_id: str, write: Callable[[bytes], None]) -> int:
    """Write the run's NDJSON to ``write`` piece by piece; returns the bytes written."""
    written = 0

    def take(data: bytes) -> None:
        nonlocal written
        write(data)
        written += len(data)

    status, refused = await stream_get(target, f"{run_view(run_id)}/export", take)
    if status != 200:
        raise WatchError(
            f"export of {target.project} run {run_id}: HTTP {status}: {_detail(refused)}"
        )
    return written


def _detail(body: bytes) -> str:
    """The server's ``detail`` of a refusal, else the start of its body."""
    try:
        decoded = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(decoded, dict) and "detail" in decoded:
        return str(decoded["detail"])
    return str(decoded)[:200]
