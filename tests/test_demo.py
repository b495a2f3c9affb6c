"""`trio-ws demo` as a real subprocess: a whole simulated run, watched over a socket."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from serving import receive
from trio_websocket import connect_websocket_url

TRIO_WS = str(Path(sys.executable).parent / "trio-ws")
DASHBOARD = re.compile(r"dashboard: (http://127\.0\.0\.1:(\d+)/projects/demo\?token=(\S+))")
HOME = re.compile(r"home:\s+(\S+)")
DEMO_TIMEOUT = 90


@asynccontextmanager
async def demo(*extra: str) -> AsyncIterator[tuple[trio.Process, int, str, Path]]:
    """Start the demo; yield the process, its port, its token and its home."""
    process = await trio.lowlevel.open_process(
        [TRIO_WS, "demo", "--port", "0", "--seed", "2", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        printed = ""
        while "Ctrl-C" not in printed:
            chunk = await process.stdout.receive_some(4096)
            assert chunk, f"demo exited early: {printed!r}"
            printed += chunk.decode()
        link = DASHBOARD.search(printed)
        home = HOME.search(printed)
        assert link and home, printed
        yield process, int(link.group(2)), link.group(3), Path(home.group(1))
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def whole_history(nursery: trio.Nursery, port: int, token: str) -> list[dict[str, Any]]:
    """Every event since the start of the run, by resuming from seq 0, until it ends."""
    base = f"ws://127.0.0.1:{port}/ws/projects/demo?token={token}"
    first = await connect_websocket_url(nursery, base)
    epoch = (await receive(first))["epoch"]
    await first.aclose()
    ws = await connect_websocket_url(nursery, f"{base}&since=0&epoch={epoch}")
    assert (await receive(ws))["type"] == "hello"
    assert (await receive(ws))["type"] == "resumed"
    events: list[dict[str, Any]] = []
    stopped = complete = False
    # The run reports `stopped` as it exits; the poll loop may see its last
    # database write a moment later, so read until both have arrived.
    while not (stopped and complete):
        event = await receive(ws)
        events.append(event)
        stopped = stopped or event.get("status") == "stopped"
        complete = complete or event.get("percentage") == 100.0
    return events


async def test_demo_runs_a_whole_realistic_run_to_100_percent(nursery: trio.Nursery) -> None:
    with trio.fail_after(DEMO_TIMEOUT):
        async with demo("--speed", "8") as (process, port, token, home):
            events = await whole_history(nursery, port, token)
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
    assert not home.exists(), "a temporary home is removed when the demo stops"
    progress = [e for e in events if e["type"] == "progress"]
    assert progress[-1]["percentage"] == 100.0 and progress[-1]["total"] == 24
    assert len(progress) > 5, "progress climbs step by step"
    statuses = [e["status"] for e in events if e["type"] == "agent_status"]
    assert statuses == ["running", "paused_graceful", "running", "stopped"]
    agents = {e["agentName"] for e in events if e["type"] == "agent_update"}
    assert {"Spark", "Fizz", "Octo"} <= agents
    types = {e["agentType"] for e in events if e["type"] == "agent_update"}
    assert types == {"coding", "testing"}
    lines = [e["line"] for e in events if e["type"] == "log"]
    assert lines[-1] == "[trio-ws] process exited with code 0"
    dev = [e for e in events if e["type"] == "dev_server_status"]
    assert dev[-1] == {
        "type": "dev_server_status",
        "status": "running",
        "url": "http://localhost:5173/",
        "seq": dev[-1]["seq"],
    }
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_demo_stops_by_itself_after_its_duration_and_keeps_a_given_home(
    tmp_path: Path,
) -> None:
    home = tmp_path / "demo-home"
    with trio.fail_after(DEMO_TIMEOUT):
        async with demo("--home", str(home), "--duration", "2", "--speed", "1") as (
            process,
            _,
            _,
            shown,
        ):
            assert shown == home
            assert await process.wait() == 0
    assert (home / "registry.db").exists() and (home / "token").exists()
    assert (home / "projects" / "todo-app" / ".autoforge" / "features.db").exists()
    # The same home again: the project is reused, not refused as a duplicate.
    with trio.fail_after(DEMO_TIMEOUT):
        async with demo("--home", str(home), "--duration", "1") as (process, *_):
            assert await process.wait() == 0
