"""`trio-ws runs` as a real subprocess against a real server on 127.0.0.1 port 0, fed
by a real agent producer."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import trio
from serving import NETWORK_TIMEOUT
from test_subscribe import Producer
from test_watch import TRIO_WS, cli_env

from trio_ws.net.server import Server

EXIT_LINE = "[trio-ws] process exited with code"


async def run_runs(home: Path, server: Server, *args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [TRIO_WS, "runs", *args, "--server", f"http://127.0.0.1:{server.port}"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=cli_env(home),
    )


async def two_runs(nursery: trio.Nursery, server: Server) -> None:
    """A run that exited with code 3, then one still going."""
    producer = await Producer.connect(nursery, server)
    await producer.status("running")
    await producer.lines(["work", f"{EXIT_LINE} 3"])
    await producer.status("crashed")
    await producer.status("running")


async def test_runs_prints_a_table_newest_first(
    nursery: trio.Nursery, server: Server, project_dir: Path, home: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        await two_runs(nursery, server)
        done = await run_runs(home, server, "demo")
    assert done.returncode == 0, done.stderr
    header, live, crashed = done.stdout.decode().splitlines()
    assert header.split() == [
        "run",
        "started",
        "took",
        "ended",
        "exit",
        "progress",
        "logs",
        "errors",
    ]
    assert "live" in live.split() and live.split()[0].endswith("-5")
    assert {"crashed", "3"} <= set(crashed.split()) and crashed.split()[0].endswith("-1")


async def test_runs_json_prints_the_summaries(
    nursery: trio.Nursery, server: Server, project_dir: Path, home: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        await two_runs(nursery, server)
        done = await run_runs(home, server, "demo", "--json", "--limit", "1")
    assert done.returncode == 0, done.stderr
    runs = json.loads(done.stdout)
    assert [(run["first_seq"], run["ended"]) for run in runs] == [(5, None)]


async def test_runs_of_a_project_with_none_says_so(
    server: Server, project_dir: Path, home: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        done = await run_runs(home, server, "demo")
    assert (done.returncode, done.stdout.decode()) == (0, "no runs recorded for demo\n")


async def test_runs_of_an_unknown_project_is_a_refusal(
    server: Server, project_dir: Path, home: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        done = await run_runs(home, server, "nobody")
    assert done.returncode == 1
    assert done.stderr.decode().startswith("trio-ws: error: runs of nobody: HTTP 404")
