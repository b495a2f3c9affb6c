"""`trio-ws demo` as a real subprocess: a whole simulated run, watched over a socket."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import pytest
import trio
from serving import receive, receive_until
from trio_websocket import connect_websocket_url

from trio_ws.faces.demo import DemoLinks, DemoOptions, run_demo

TRIO_WS = str(Path(sys.executable).parent / "trio-ws")
DASHBOARD = re.compile(r"dashboard: (http://127\.0\.0\.1:(\d+)/projects/demo\?token=(\S+))")
HOME = re.compile(r"home:\s+(\S+)")
DEMO_TIMEOUT = 90


@asynccontextmanager
async def demo(
    *extra: str, stderr: int | IO[bytes] = subprocess.DEVNULL
) -> AsyncIterator[tuple[trio.Process, int, str, Path]]:
    """Start the demo; yield the process, its port, its token and its home."""
    process = await trio.lowlevel.open_process(
        [TRIO_WS, "demo", "--port", "0", "--seed", "2", *extra],
        stdout=subprocess.PIPE,
        stderr=stderr,
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


async def whole_history(
    nursery: trio.Nursery, port: int, token: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every event since the start of the run, by resuming from seq 0, until it ends,
    and apart from them the connection messages that came between (PROTOCOL 3.3: a
    `warning` carries no seq; a loaded machine can make the demo's producer reconnect)."""
    base = f"ws://127.0.0.1:{port}/ws/projects/demo?token={token}"
    first = await connect_websocket_url(nursery, base)
    epoch = (await receive(first))["epoch"]
    await first.aclose()
    ws = await connect_websocket_url(nursery, f"{base}&since=0&epoch={epoch}")
    assert (await receive(ws))["type"] == "hello"
    assert (await receive(ws))["type"] == "resumed"
    events: list[dict[str, Any]] = []
    connection: list[dict[str, Any]] = []
    stopped = complete = False
    # The run reports `stopped` as it exits; the poll loop may see its last
    # database write a moment later, so read until both have arrived.
    while not (stopped and complete):
        event = await receive(ws)
        if "seq" not in event:
            connection.append(event)
            continue
        events.append(event)
        stopped = stopped or event.get("status") == "stopped"
        complete = complete or event.get("percentage") == 100.0
    return events, connection


async def test_demo_runs_a_whole_realistic_run_to_100_percent(nursery: trio.Nursery) -> None:
    with trio.fail_after(DEMO_TIMEOUT):
        async with demo("--speed", "8") as (process, port, token, home):
            events, connection = await whole_history(nursery, port, token)
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
    assert all(m["type"] == "warning" for m in connection), connection


async def test_ctrl_c_stops_the_demo_without_its_childrens_signal_notices(
    tmp_path: Path,
) -> None:
    """The demo stops its children with SIGTERM on Ctrl-C; they say nothing of the
    signal it sent them ("signal 15: stopping the command" came twice, glued)."""
    with (tmp_path / "stderr").open("w+b") as stderr:
        with trio.fail_after(DEMO_TIMEOUT):
            async with (
                demo(stderr=stderr) as (process, port, token, _),
                trio.open_nursery() as nursery,
            ):
                url = f"ws://127.0.0.1:{port}/ws/projects/demo?token={token}"
                ws = await connect_websocket_url(nursery, url)
                await receive_until(ws, lambda m: m.get("status") == "running")  # children run
                process.send_signal(signal.SIGINT)
                assert await process.wait() == 0
                nursery.cancel_scope.cancel()
        stderr.seek(0)
        said = stderr.read().decode()
    assert "stopping the command" not in said and "signal 15" not in said, said


async def test_demo_stops_by_itself_after_its_duration_and_keeps_a_given_home(
    tmp_path: Path,
) -> None:
    home = tmp_path / "demo-home"
    with trio.fail_after(DEMO_TIMEOUT):
        async with demo("--home", str(home), "--duration", "5", "--speed", "1") as (
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


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid``, found through /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (state := proc_stat(int(entry.name))) is not None:
            children.setdefault(state[1], []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and alive(child):
                found.add(child)
                todo.append(child)
    return found


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid``, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    state = proc_stat(pid)
    return state is not None and state[0] != "Z"


async def gone(pid: int) -> None:
    """Return once ``pid`` has exited (a pidfd turns readable then; it need not be our child)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


async def test_kill_9_of_the_demo_takes_every_child_and_grandchild_with_it() -> None:
    """Two `trio-ws run` children, each with an orchestrator below it in a session of
    its own: after the demo is SIGKILLed (no cleanup of its own runs), all are gone."""
    found: set[int] = set()
    try:
        with trio.fail_after(DEMO_TIMEOUT):
            async with demo("--speed", "1") as (process, *_):
                while len(found) < 4:  # 2 producers, each with its orchestrator
                    found = descendants(process.pid)
                    await trio.sleep(0.05)
                assert len(found) == 4
                process.kill()
                assert await process.wait() == -signal.SIGKILL
            with trio.move_on_after(10):
                async with trio.open_nursery() as waiting:
                    for pid in found:
                        waiting.start_soon(gone, pid)
        assert [pid for pid in found if alive(pid)] == []
    finally:
        for pid in found:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


async def test_a_demo_that_fails_takes_its_children_with_it(tmp_path: Path) -> None:
    """The demo in this process, ended by a failure around it (its tasks are
    cancelled, nothing stops the children by hand): they all stop by themselves."""
    before = descendants(os.getpid())
    found: set[int] = set()
    links: list[DemoLinks] = []
    options = DemoOptions(home=tmp_path / "home", port=0, speed=1.0, seed=2)
    try:
        with trio.fail_after(DEMO_TIMEOUT):
            with pytest.raises(ExceptionGroup) as failure:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(run_demo, options, links.append)
                    while len(found) < 4:  # 2 producers, each with its orchestrator
                        found = descendants(os.getpid()) - before
                        await trio.sleep(0.05)
                    raise RuntimeError("something failed")
            assert failure.group_contains(RuntimeError, match="something failed")
            with trio.move_on_after(10):
                async with trio.open_nursery() as waiting:
                    for pid in found:
                        waiting.start_soon(gone, pid)
        assert len(links) == 1 and len(found) == 4
        assert [pid for pid in found if alive(pid)] == []
    finally:
        for pid in found:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
