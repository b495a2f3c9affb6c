"""`run_export`: a recorded run's NDJSON streamed from a real server, and the one-line
failures (unknown run, nobody listening)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from services import free_port
from serving import NETWORK_TIMEOUT
from test_run_replay import recorded_run
from watching import target_of

from trio_ws.clients.run_export import export
from trio_ws.clients.run_replay import read_events
from trio_ws.clients.watch_session import WatchError, WatchTarget
from trio_ws.net.server import Server


async def test_an_export_is_the_runs_events_in_seq_order(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        run_id = await recorded_run(nursery, server, project_dir)
        pieces: list[bytes] = []
        written = await export(target_of(server), run_id, pieces.append)
        events = []
        after = None
        while True:
            page = await read_events(target_of(server), run_id, after=after, limit=1000)
            events += page.events
            if page.next_after is None:
                break
            after = page.next_after
    body = b"".join(pieces)
    assert written == len(body) and body.endswith(b"\n")
    assert [json.loads(line) for line in body.splitlines()] == events
    assert len(events) > 200


async def test_an_unknown_run_is_refused_with_the_servers_detail(
    server: Server, project_dir: Path
) -> None:
    pieces: list[bytes] = []
    with trio.fail_after(NETWORK_TIMEOUT), pytest.raises(WatchError) as refused:
        await export(target_of(server), "nope-1", pieces.append)
    assert str(refused.value).startswith("export of demo run nope-1: HTTP 404: ")
    assert "nope-1" in str(refused.value).removeprefix("export of demo run nope-1") and not pieces


async def test_a_server_nobody_runs_is_a_watch_error() -> None:
    target = WatchTarget.from_server(f"http://127.0.0.1:{free_port()}", "demo")
    with trio.fail_after(NETWORK_TIMEOUT), pytest.raises(WatchError, match="GET http://127"):
        await export(target, "e-1", lambda data: None)
