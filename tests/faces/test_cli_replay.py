"""`trio-ws replay` and `trio-ws export` as real subprocesses against a real server on
127.0.0.1 port 0, replaying a run a real agent producer recorded."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import trio
from services import free_port
from serving import NETWORK_TIMEOUT, http_request
from test_run_replay import recorded_run
from test_watch import TRIO_WS, cli_env

from trio_ws.net.server import Server


async def cli(home: Path, port: int, *args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [TRIO_WS, *args, "--server", f"http://127.0.0.1:{port}"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=cli_env(home),
    )


async def test_replay_json_prints_the_snapshot_then_every_event_to_the_end(
    nursery: trio.Nursery, server: Server, project_dir: Path, home: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        run_id = await recorded_run(nursery, server, project_dir)
        done = await cli(home, server.port, "replay", "demo", run_id, "--json", "--speed", "max")
    assert done.returncode == 0, done.stderr
    messages = [json.loads(line) for line in done.stdout.splitlines()]
    first_seq = int(run_id.rsplit("-", 1)[1])
    assert messages[0] == {**messages[0], "type": "agent_status", "status": "running"}
    events = [m["seq"] for m in messages if m["seq"] > first_seq]
    assert events == list(range(first_seq + 1, events[-1] + 1))
    assert messages[-1]["type"] == "agent_status" and messages[-1]["status"] == "stopped"


async def test_replay_from_a_moment_starts_there(
    nursery: trio.Nursery, server: Server, project_dir: Path, home: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        run_id = await recorded_run(nursery, server, project_dir)
        first_seq = int(run_id.rsplit("-", 1)[1])
        at = str(first_seq + 100)
        done = await cli(home, server.port, "replay", "demo", run_id, "--json", "--at", at)
    assert done.returncode == 0, done.stderr
    seqs = [json.loads(line)["seq"] for line in done.stdout.splitlines()]
    later = [seq for seq in seqs if seq > first_seq + 100]
    assert max(seqs[: len(seqs) - len(later)]) <= first_seq + 100  # the snapshot
    assert later[0] == first_seq + 101


async def test_replay_draws_the_watch_view_to_the_end_of_the_run(
    nursery: trio.Nursery, server: Server, project_dir: Path, home: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        run_id = await recorded_run(nursery, server, project_dir)
        done = await cli(home, server.port, "replay", "demo", run_id, "--speed", "max")
    assert done.returncode == 0, done.stderr
    screen = done.stdout.decode()
    assert "replay (end of run " in screen
    assert "agents: stopped" in screen and "passing over time" in screen


async def test_replay_of_an_unknown_run_is_one_line_and_exit_1(
    server: Server, project_dir: Path, home: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        done = await cli(home, server.port, "replay", "demo", "nope-1")
    assert done.returncode == 1
    assert done.stderr.decode().startswith("trio-ws: error: run nope-1 of demo: HTTP 404")
    assert done.stderr.count(b"\n") == 1


async def test_replay_refuses_a_speed_not_above_zero(home: Path) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        done = await cli(home, free_port(), "replay", "demo", "e-1", "--speed", "0")
    assert done.returncode == 2 and b"--speed '0'" in done.stderr


async def test_replay_refuses_an_at_it_cannot_read_as_a_usage_error(
    nursery: trio.Nursery, server: Server, project_dir: Path, home: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        run_id = await recorded_run(nursery, server, project_dir)
        done = await cli(home, server.port, "replay", "demo", run_id, "--at", "yesterday")
    assert (done.returncode, done.stdout) == (2, b"")
    assert done.stderr.decode().startswith("trio-ws: error: --at 'yesterday': give a seq")


async def test_export_writes_the_runs_ndjson_as_the_server_serves_it(
    nursery: trio.Nursery, server: Server, project_dir: Path, home: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        run_id = await recorded_run(nursery, server, project_dir)
        done = await cli(home, server.port, "export", "demo", run_id)
        status, _, served = await http_request(
            server, "GET", f"/api/projects/demo/runs/{run_id}/export"
        )
    assert done.returncode == 0, done.stderr
    assert status == 200 and done.stdout and done.stdout == _unchunked(served)


async def test_export_of_an_unknown_run_is_one_line_and_exit_1(
    server: Server, project_dir: Path, home: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        done = await cli(home, server.port, "export", "demo", "nope-1")
    assert (done.returncode, done.stdout) == (1, b"")
    assert done.stderr.decode().startswith("trio-ws: error: export of demo run nope-1: HTTP 404")
    assert done.stderr.count(b"\n") == 1


async def test_export_from_a_server_nobody_runs_is_one_line_and_exit_1(home: Path) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        done = await cli(home, free_port(), "export", "demo", "e-1")
    assert (done.returncode, done.stdout) == (1, b"")
    assert done.stderr.decode().startswith("trio-ws: error: GET http://127.0.0.1:")
    assert done.stderr.count(b"\n") == 1


def _unchunked(body: bytes) -> bytes:
    """A chunked HTTP body's data."""
    data = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        length = int(size, 16)
        if length == 0:
            return data
        data += rest[:length]
        body = rest[length + 2 :]
    return data
