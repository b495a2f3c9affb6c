"""AutoForge's agent REST API and the progress chart's data, over real HTTP (PROTOCOL.md 1).

The control tests drive a real `trio-ws run` child through
``POST /api/projects/demo/agent/...`` exactly as the AutoForge UI's buttons
and a ``curl`` script do, and check what the child really did.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import trio
from features_db import create_db, db_path, insert, rows
from serving import NETWORK_TIMEOUT, TOKEN, connect, http_json, http_request, receive_until
from test_cli_run import (
    child,
    eventually,
    process_state,
    receive_log,
    start,
    subscribe,
)

from trio_ws.data.progress import Progress
from trio_ws.net.httpio import MAX_BODY_BYTES
from trio_ws.net.server import Server

BEARER = {"Authorization": f"Bearer {TOKEN}"}
AGENT = "/api/projects/demo/agent"


async def post(server: Server, action: str, **headers: str) -> tuple[int, Any]:
    return await http_json(server, "POST", f"{AGENT}/{action}", headers or BEARER)


async def agent_status(server: Server) -> dict[str, Any]:
    status, body = await http_json(server, "GET", f"{AGENT}/status")
    assert status == 200
    assert isinstance(body, dict)
    return body


async def test_pause_resume_and_stop_act_on_a_real_run_and_answer_the_new_status(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        run = await start(
            nursery, server, home, "run", "--quiet", "--", *child("--pid", "--ticks", "20")
        )
        pid = int((await receive_log(ws, "pid ")).split()[1])
        await receive_log(ws, "tick ")
        running = await agent_status(server)

        paused = await post(server, "pause")
        assert await eventually(lambda: process_state(pid) == "T")  # SIGSTOP really sent
        paused_status = await agent_status(server)
        resumed = await post(server, "resume")
        assert await eventually(lambda: process_state(pid) != "T")
        await receive_log(ws, "tick ")  # and it prints again
        stopped = await post(server, "stop")
        assert await run.wait() == 128 + signal.SIGTERM
        stopped_status = await agent_status(server)

    assert paused == (
        200,
        {"success": True, "status": "paused", "message": paused[1]["message"]},
    )
    assert resumed[0] == 200 and resumed[1]["success"] and resumed[1]["status"] == "running"
    assert stopped[0] == 200 and stopped[1]["success"] and stopped[1]["status"] == "stopped"
    started_at = running["started_at"]
    assert isinstance(started_at, str) and started_at.endswith("Z")
    assert running == {
        "status": "running",
        "pid": None,
        "started_at": started_at,
        "yolo_mode": False,
        "model": None,
        "parallel_mode": True,
        "max_concurrency": None,
        "testing_agent_ratio": 1,
    }
    assert (paused_status["status"], paused_status["started_at"]) == ("paused", started_at)
    assert (stopped_status["status"], stopped_status["started_at"]) == ("stopped", None)


async def test_graceful_pause_and_resume_use_autoforge_paths(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        run = await start(
            nursery, server, home, "run", "--quiet", "--", *child("--pid", "--hold", "20")
        )
        await receive_log(ws, "pid ")
        pausing = await post(server, "graceful-pause")
        resumed = await post(server, "graceful-resume")
        await post(server, "stop")
        await run.wait()
    assert (pausing[0], pausing[1]["success"], pausing[1]["status"]) == (200, True, "pausing")
    assert (resumed[0], resumed[1]["success"], resumed[1]["status"]) == (200, True, "running")


async def test_an_action_not_valid_now_is_refused_with_the_current_status(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        run = await start(
            nursery, server, home, "run", "--quiet", "--", *child("--pid", "--hold", "20")
        )
        await receive_log(ws, "pid ")
        refused = await post(server, "resume")
        await post(server, "stop")
        await run.wait()
    assert refused == (
        200,
        {
            "success": False,
            "status": "running",
            "message": "cannot resume while the agent is running",
        },
    )


async def test_without_a_producer_the_refusal_says_so(server: Server, project_dir: Path) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        answer = await post(server, "pause")
    assert answer == (
        200,
        {"success": False, "status": "stopped", "message": "no producer can act on this project"},
    )


async def test_control_without_the_token_is_401_and_reaches_no_producer(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await subscribe(nursery, server)
        run = await start(
            nursery, server, home, "run", "--quiet", "--", *child("--pid", "--hold", "20")
        )
        await receive_log(ws, "pid ")
        missing = await http_json(server, "POST", f"{AGENT}/stop")
        wrong = await post(server, "stop", Authorization="Bearer nope")
        in_query = await http_json(server, "POST", f"{AGENT}/stop?token={TOKEN}")
        by_cookie = await post(server, "stop", Cookie=f"trio_ws_token={TOKEN}")
        await run.wait()
    for refused in (missing, wrong, in_query):
        assert refused[0] == 401
        assert "token" in refused[1]["detail"]
    assert (by_cookie[0], by_cookie[1]["status"]) == (200, "stopped")


@pytest.mark.parametrize(
    "origin", ["http://localhost:3000", "http://evil.example", "null", "http://127.0.0.1:1"]
)
async def test_control_from_another_origin_is_403(
    server: Server, project_dir: Path, origin: str
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        answer = await post(server, "stop", Origin=origin, **BEARER)
    assert answer[0] == 403


async def test_control_from_the_servers_own_origin_is_served(
    server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        answer = await post(
            server,
            "pause",
            Origin=f"http://127.0.0.1:{server.port}",
            Cookie=f"trio_ws_token={TOKEN}",
        )
    assert answer[0] == 200 and answer[1]["message"] == "no producer can act on this project"


async def test_unknown_project_and_unknown_action(server: Server, project_dir: Path) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        unknown = await http_json(server, "POST", "/api/projects/nope/agent/pause", BEARER)
        status = await http_json(server, "GET", "/api/projects/nope/agent/status")
        action = await http_json(server, "POST", f"{AGENT}/explode", BEARER)
        wrong_method = await http_json(server, "GET", f"{AGENT}/pause")
    assert unknown == status == (404, {"detail": "Project 'nope' not found in registry"})
    assert action[0] == 404
    assert wrong_method == (405, {"detail": "Method Not Allowed"})


async def test_a_post_body_is_read_and_one_over_the_cap_is_413(
    server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        empty_json = await http_json(server, "POST", f"{AGENT}/pause", BEARER, b"{}")
        big_ok = await http_json(server, "POST", f"{AGENT}/pause", BEARER, b" " * MAX_BODY_BYTES)
        too_big = await http_request(
            server, "POST", f"{AGENT}/pause", BEARER, b" " * (MAX_BODY_BYTES + 1)
        )
    assert empty_json[0] == big_ok[0] == 200
    assert too_big[0] == 413


# -- progress history --------------------------------------------------------------


async def test_progress_history_lists_points_and_status_changes(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    path = create_db(db_path(project_dir), rows(passing=1, pending=3))
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await connect(nursery, server)  # a subscriber keeps the progress poll running
        await receive_until(ws, lambda m: m["type"] == "progress")
        hub = server.manager.get_hub("demo")
        assert hub is not None
        hub.set_status("running")
        insert(path, rows(passing=1, in_progress=1))
        await receive_until(ws, lambda m: m["type"] == "progress" and m["total"] == 6)
        hub.set_status("paused")
        status, body = await http_json(server, "GET", "/api/projects/demo/progress-history")
    assert status == 200
    for entry in body["points"] + body["statuses"]:
        assert entry["timestamp"].endswith("Z")
    stamps = {entry["seq"]: entry["timestamp"] for entry in body["points"] + body["statuses"]}
    assert sorted(stamps.values()) == [stamps[seq] for seq in sorted(stamps)]

    def strip(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in e.items() if k != "timestamp"} for e in entries]

    assert body["project"] == "demo" and body["epoch"] == hub.epoch
    assert strip(body["points"]) == [
        {"seq": 1, **point(Progress(passing=1, in_progress=0, total=4, needs_human_input=0))},
        {"seq": 3, **point(Progress(passing=2, in_progress=1, total=6, needs_human_input=0))},
    ]
    assert strip(body["statuses"]) == [
        {"seq": 2, "status": "running"},
        {"seq": 4, "status": "paused"},
    ]


def point(progress: Progress) -> dict[str, Any]:
    message: dict[str, Any] = dict(progress.to_message())
    del message["type"]
    return message


async def test_progress_history_of_a_quiet_project_is_empty_not_an_error(
    server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        status, body = await http_json(server, "GET", "/api/projects/demo/progress-history")
    assert status == 200
    assert (body["points"], body["statuses"]) == ([], [])


async def test_agent_status_reports_the_latest_max_concurrency(
    server: Server, project_dir: Path
) -> None:
    hub = (await server.manager.open("demo", project_dir)).hub
    hub.set_status("running")
    hub.feed_lines(["Max concurrency: 2 coding agents", "Running initializer agent..."])
    with trio.fail_after(NETWORK_TIMEOUT):
        body = await agent_status(server)
    assert body["max_concurrency"] == 2
