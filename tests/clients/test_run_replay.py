"""`run_replay`: a recorded run played through a `RunView`, against a real server fed
by a real agent producer (the AutoForge corpus), and its pure parts (pacing, --at)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import trio
from features_db import create_db, db_path, rows
from rich.console import Console
from serving import NETWORK_TIMEOUT
from test_subscribe import RUN, Producer, hub_of
from watching import target_of

from trio_ws.clients.run_replay import (
    Pacer,
    open_replay,
    play,
    read_events,
    read_progress,
    read_state,
    replay_live,
    start_moment,
)
from trio_ws.clients.watch_session import WatchError, WatchTarget, fetch_snapshot
from trio_ws.data.progress import Progress
from trio_ws.net.server import Server


async def recorded_run(nursery: trio.Nursery, server: Server, project_dir: Path) -> str:
    """A finished run of the AutoForge corpus, its progress moving twice; its id."""
    create_db(db_path(project_dir), rows(passing=1, pending=3))
    producer = await Producer.connect(nursery, server)
    await producer.status("running")
    hub = hub_of(server)
    for start in range(0, len(RUN), 50):
        await producer.lines(RUN[start : start + 50])
        if start in (50, 150):
            hub.publish_progress(Progress(2 + start // 100, 0, 4, 0))
    await producer.status("stopped")
    status, body = await _runs(server)
    assert status == 200 and body["runs"][0]["ended"] == "stopped", body
    run_id: str = body["runs"][0]["id"]
    return run_id


async def _runs(server: Server) -> tuple[int, Any]:
    from trio_ws.clients.watch_api import get_json

    return await get_json(target_of(server), "runs")


async def test_replaying_a_whole_run_ends_where_a_live_watcher_stands(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        run_id = await recorded_run(nursery, server, project_dir)
        seen: list[dict[str, Any]] = []
        replay = await open_replay(target_of(server), run_id, speed=math.inf)
        await play(replay, seen.append)
        live = await fetch_snapshot(target_of(server))
    view = replay.view
    assert view.connection == "replay" and "end of run" in (view.connection_detail or "")
    assert view.seq == replay.summary["last_seq"]  # the watcher's join read progress since
    assert view.agent_status == live.agent_status == "stopped"
    assert view.orchestrator == live.orchestrator and view.agents == live.agents == {}
    tail = [entry.line for entry in live.logs]
    assert [entry.line for entry in view.logs][-len(tail) :] == tail
    first = replay.summary["first_seq"]
    assert [event["seq"] for event in seen] == list(range(first + 1, first + 1 + len(seen)))
    assert seen[-1]["seq"] == view.seq


async def test_a_replay_from_a_moment_holds_that_moments_agents(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        run_id = await recorded_run(nursery, server, project_dir)
        page = await read_events(target_of(server), run_id, limit=1000, q="completed")
        moment = page.events[0]["seq"] - 1  # right before the first completion
        replay = await open_replay(target_of(server), run_id, at=str(moment))
    assert replay.view.seq == moment
    assert {card.name for card in replay.view.agents.values()} >= {"Spark"}
    assert replay.view.agent_status == "running"
    assert replay.now is not None


async def test_replay_waits_by_the_events_timestamps_divided_by_the_speed(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        run_id = await recorded_run(nursery, server, project_dir)
        waits: list[float] = []

        async def sleep(seconds: float) -> None:
            waits.append(seconds)

        replay = await open_replay(target_of(server), run_id, speed=10)
        started = replay.now
        await play(replay, sleep=sleep)
    assert started is not None and replay.now is not None
    assert sum(waits) == pytest.approx((replay.now - started) / 10)


async def test_the_chart_gets_the_runs_progress_up_to_the_moment(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        run_id = await recorded_run(nursery, server, project_dir)
        replay = await open_replay(target_of(server), run_id, speed=math.inf)
        await play(replay)
        progress = await read_events(target_of(server), run_id, limit=1000, type="progress")
        await read_progress(replay)
    assert replay.view.history_error is None and progress.events
    assert sorted(replay.view.points) == [event["seq"] for event in progress.events]


async def test_an_unknown_run_is_a_watch_error_naming_the_404(
    server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT), pytest.raises(WatchError, match="HTTP 404"):
        await open_replay(target_of(server), "nope-1")


async def test_a_state_clamps_a_seq_past_the_run_to_its_last_event(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        run_id = await recorded_run(nursery, server, project_dir)
        moment = await read_state(target_of(server), run_id, seq=10**9)
        replay = await open_replay(target_of(server), run_id)
    assert moment.seq == replay.summary["last_seq"]


# -- pure parts --------------------------------------------------------------------------

SUMMARY = {"first_seq": 7, "started_at": "2026-12-05T10:00:00.000Z"}


@pytest.mark.parametrize(
    ("text", "query"),
    [
        (None, {"seq": 7}),
        ("42", {"seq": 42}),
        ("+90s", {"at": "2026-12-05T10:01:30.000Z"}),
        ("+1h30m", {"at": "2026-12-05T11:30:00.000Z"}),
        ("+5m", {"at": "2026-12-05T10:05:00.000Z"}),
        ("2026-12-05T10:03:00Z", {"at": "2026-12-05T10:03:00.000Z"}),
        ("2026-12-05T11:03:00+01:00", {"at": "2026-12-05T10:03:00.000Z"}),
    ],
)
def test_at_reads_a_seq_a_time_or_an_offset(text: str | None, query: dict[str, Any]) -> None:
    assert start_moment(SUMMARY, text) == query


@pytest.mark.parametrize("text", ["yesterday", "+", "+5x", "12:00"])
def test_an_unreadable_at_names_what_it_accepts(text: str) -> None:
    with pytest.raises(ValueError, match="--at"):
        start_moment(SUMMARY, text)


def test_an_offset_needs_the_runs_start() -> None:
    with pytest.raises(ValueError, match="no start time"):
        start_moment({"first_seq": 1, "started_at": None}, "+5m")


def test_the_pacer_waits_the_gap_over_the_speed_and_never_backwards() -> None:
    pacer = Pacer(10)
    stamps = ["2026-12-05T10:00:00.000Z", "2026-12-05T10:00:05.000Z", "2026-12-05T10:00:04.000Z"]
    waits = [pacer.wait({"timestamp": stamp}) for stamp in stamps]
    assert waits == [0.0, 0.5, 0.0]
    assert pacer.wait({"type": "log"}) == 0.0  # no timestamp: no wait
    assert pacer.wait({"timestamp": "2026-12-05T10:00:06.000Z"}) == pytest.approx(0.1)


def test_the_pacer_at_max_speed_never_waits() -> None:
    pacer = Pacer(math.inf)
    assert pacer.wait({"timestamp": "2026-12-05T10:00:00.000Z"}) == 0.0
    assert pacer.wait({"timestamp": "2026-12-05T11:00:00.000Z"}) == 0.0


@pytest.mark.parametrize("speed", [0, -1, math.nan])
def test_a_speed_not_above_zero_is_refused(speed: float) -> None:
    with pytest.raises(ValueError, match="speed"):
        Pacer(speed)


# -- against a scripted server: failures mid-replay ---------------------------------------


async def scripted(nursery: trio.Nursery, answers: dict[str, tuple[int, Any]]) -> WatchTarget:
    """A server on 127.0.0.1 answering each GET with the JSON of the first ``answers``
    entry its path starts with; the target watching its ``demo``."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            request = await stream.receive_some(65536)
            path = request.split(b" ", 2)[1].decode()
            status, body = next(
                answer for prefix, answer in answers.items() if path.startswith(prefix)
            )
            data = json.dumps(body).encode()
            head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            await stream.send_all(head + data)

    await nursery.start(trio.serve_listeners, handle, listeners)
    port = listeners[0].socket.getsockname()[1]
    return WatchTarget.from_server(f"http://127.0.0.1:{port}", "demo")


RUN_PATH = "/api/projects/demo/runs/e1-1"
SCRIPTED_SUMMARY = {"id": "e1-1", "epoch": "e1", "first_seq": 1, "started_at": None}
SCRIPTED_STATE = {
    "seq": 1,
    "timestamp": None,
    "messages": [{"type": "agent_status", "status": "running", "seq": 1}],
}


async def test_a_failure_mid_replay_reaches_the_screens_caller_as_one_watch_error(
    nursery: trio.Nursery,
) -> None:
    target = await scripted(
        nursery,
        {
            f"{RUN_PATH}/state": (200, SCRIPTED_STATE),
            f"{RUN_PATH}/events": (500, {"detail": "journal unavailable"}),
            RUN_PATH: (200, SCRIPTED_SUMMARY),
        },
    )
    console = Console(file=io.StringIO(), width=100)
    with trio.fail_after(NETWORK_TIMEOUT):
        replay = await open_replay(target, "e1-1", speed=math.inf)
        with pytest.raises(WatchError, match="HTTP 500: journal unavailable"):
            await replay_live(replay, console)


async def test_events_that_skip_a_seq_stop_the_replay_saying_so(nursery: trio.Nursery) -> None:
    skipping = {"events": [{"type": "log", "line": "x", "seq": 3}], "next_after": None}
    target = await scripted(
        nursery,
        {
            f"{RUN_PATH}/state": (200, SCRIPTED_STATE),
            f"{RUN_PATH}/events": (200, skipping),
            RUN_PATH: (200, SCRIPTED_SUMMARY),
        },
    )
    with trio.fail_after(NETWORK_TIMEOUT):
        replay = await open_replay(target, "e1-1", speed=math.inf)
        with pytest.raises(WatchError, match="expected event seq 2, got 3"):
            await play(replay)


async def test_a_replay_of_the_run_still_going_follows_it_to_its_end(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    producer = await Producer.connect(nursery, server)
    with trio.fail_after(NETWORK_TIMEOUT):
        await producer.status("running")
        await producer.lines(RUN[:20])
        _, body = await _runs(server)
        run_id = body["runs"][0]["id"]
        replay = await open_replay(target_of(server), run_id, speed=math.inf)
        caught_up = trio.Event()

        async def replaying() -> None:
            await play(replay, follow_every=0.05)

        async def watch_for_caught_up() -> None:
            while "caught up" not in (replay.view.connection_detail or ""):  # noqa: ASYNC110
                await trio.sleep(0.01)
            caught_up.set()

        async with trio.open_nursery() as inner:
            inner.start_soon(replaying)
            inner.start_soon(watch_for_caught_up)
            await caught_up.wait()
            await producer.lines(RUN[20:30])
            await producer.status("stopped")
    assert replay.view.agent_status == "stopped"
    assert "end of run" in (replay.view.connection_detail or "")
    assert [entry.line for entry in replay.view.logs][-10:] == RUN[20:30]
