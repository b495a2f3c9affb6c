"""`trio-ws run --screenshots` as a real subprocess against a real server, with a stand-in
``playwright-cli`` first on PATH: it records its argv and cwd and writes a tiny PNG to
``--filename``, as the real one writes the page's picture."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from serving import NETWORK_TIMEOUT, TOKEN, connect, receive_until
from test_cli_run import TRIO_WS, Run, collect
from trio_websocket import WebSocketConnection

from trio_ws.net.server import Server

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
"""A 1x1 PNG."""
INTERVAL = "0.1"
QUIET = 0.6
"""Seconds a check that nothing is captured waits (several rounds of `INTERVAL`)."""

STAND_IN = """\
#!{python}
import json, os, sys
with open({record!r}, "a") as record:
    record.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd()}}) + "\\n")
filename = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--filename="))
with open(filename, "wb") as picture:
    picture.write({png!r})
"""

CHILD = """\
import os, sys, time
print("Started coding agent for feature #7", flush=True)
print("Started coding agent for feature #5", flush=True)
print("[Feature #5]    Input: {'command': 'playwright-cli open http://localhost:3000'}", flush=True)
deadline = time.monotonic() + 30
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.02)
print("Feature #5 completed", flush=True)
"""


@pytest.fixture
def stand_in(tmp_path: Path) -> Path:
    """A directory holding the stand-in ``playwright-cli``; its record is ``record.jsonl``."""
    directory = tmp_path / "bin"
    directory.mkdir()
    script = directory / "playwright-cli"
    script.write_text(
        STAND_IN.format(python=sys.executable, record=str(directory / "record.jsonl"), png=PNG)
    )
    script.chmod(0o755)
    return directory


def first_on_path(directory: Path) -> str:
    return f"{directory}{os.pathsep}{os.environ.get('PATH', '')}"


def captures(stand_in: Path) -> list[dict[str, Any]]:
    record = stand_in / "record.jsonl"
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


async def start_run(
    nursery: trio.Nursery, server: Server, home: Path, path: str, release: Path, *options: str
) -> Run:
    """``trio-ws run demo [OPTIONS] -- CHILD`` with ``path`` as its PATH."""
    env = {key: value for key, value in os.environ.items() if key != "TRIO_WS_TOKEN"}
    env["PATH"] = path
    process = await trio.lowlevel.open_process(
        [
            TRIO_WS,
            "run",
            "demo",
            "--server",
            f"http://127.0.0.1:{server.port}",
            "--token",
            TOKEN,
            "--home",
            str(home),
            "--quiet",
            *options,
            "--",
            sys.executable,
            "-c",
            CHILD,
            str(release),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    run = Run(process)
    assert process.stdout is not None and process.stderr is not None
    nursery.start_soon(collect, process.stdout, run.stdout, run.closed[0])
    nursery.start_soon(collect, process.stderr, run.stderr, run.closed[1])
    return run


async def opened(nursery: trio.Nursery, server: Server) -> tuple[WebSocketConnection, int]:
    """A plain subscriber, once the run's browser opened; and feature #5's agentIndex."""
    ws = await connect(nursery, server)
    seen = await receive_until(
        ws, lambda m: m["type"] == "log" and "playwright-cli open" in m["line"]
    )
    index = next(
        m["agentIndex"] for m in seen if m["type"] == "agent_update" and m["featureId"] == 5
    )
    return ws, index


async def ask(ws: WebSocketConnection, kind: str) -> None:
    """Send a browser_view request; its pong says the server has read it."""
    await ws.send_message(json.dumps({"type": kind}))
    await ws.send_message('{"type":"ping"}')
    await receive_until(ws, lambda m: m["type"] == "pong")


async def test_run_screenshots_captures_opened_sessions_only_while_watched(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path, stand_in: Path
) -> None:
    release = project_dir / "release"
    with trio.fail_after(NETWORK_TIMEOUT * 2):
        run = await start_run(
            nursery,
            server,
            home,
            first_on_path(stand_in),
            release,
            "--screenshots",
            "--screenshot-interval",
            INTERVAL,
        )
        watcher, index = await opened(nursery, server)
        await trio.sleep(QUIET)
        assert captures(stand_in) == []  # nobody watches yet
        await watcher.send_message('{"type":"browser_view_subscribe"}')
        got = (await receive_until(watcher, lambda m: m["type"] == "browser_screenshot"))[-1]
        await ask(watcher, "browser_view_unsubscribe")
        await trio.sleep(QUIET)  # a capture in flight when the producer was told ends
        taken = len(captures(stand_in))
        await trio.sleep(QUIET)
        assert len(captures(stand_in)) == taken
        release.touch()
        assert await run.wait() == 0
    assert (got["sessionName"], got["agentIndex"], got["featureId"]) == ("coding-5", index, 5)
    assert index == 1  # feature #7's agent started first: the index is looked up, not 0
    assert base64.b64decode(got["imageData"]) == PNG
    view = project_dir / ".playwright-cli" / "_view_coding-5.png"
    for capture in captures(stand_in):
        assert capture == {
            "argv": ["-s", "coding-5", "screenshot", f"--filename={view}"],
            "cwd": str(project_dir),
        }
    assert not view.exists()  # read, then deleted


async def test_run_without_screenshots_captures_nothing(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path, stand_in: Path
) -> None:
    release = project_dir / "release"
    with trio.fail_after(NETWORK_TIMEOUT * 2):
        run = await start_run(nursery, server, home, first_on_path(stand_in), release)
        watcher, _ = await opened(nursery, server)
        await ask(watcher, "browser_view_subscribe")
        await trio.sleep(QUIET)
        release.touch()
        assert await run.wait() == 0
    assert captures(stand_in) == []


async def test_run_screenshots_without_playwright_cli_says_so_once_and_runs(
    nursery: trio.Nursery, server: Server, home: Path, project_dir: Path, tmp_path: Path
) -> None:
    release = project_dir / "release"
    release.touch()
    empty = tmp_path / "empty"
    empty.mkdir()
    with trio.fail_after(NETWORK_TIMEOUT * 2):
        run = await start_run(
            nursery,
            server,
            home,
            str(empty),
            release,
            "--screenshots",
            "--screenshot-interval",
            "0.1",
        )
        assert await run.wait() == 0
    said = run.stderr.decode()
    assert said.count("no playwright-cli on PATH") == 1, said
