"""`trio-ws watch` with no project: the overview, as a real subprocess and in-process,
against a real server on 127.0.0.1 port 0."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio
from rich.console import Console
from serving import NETWORK_TIMEOUT, TOKEN, make_config

from trio_ws.clients.overview_view import OverviewView
from trio_ws.clients.watch_overview import OverviewTarget, render_overview, watch_overview_live
from trio_ws.core.alerts import AlertSettings
from trio_ws.core.project_summary import entry, summarise
from trio_ws.data.registry import Registry
from trio_ws.net.server import Server, serve

TRIO_WS = str(Path(sys.executable).parent / "trio-ws")


async def run_watch(home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {key: value for key, value in os.environ.items() if key != "TRIO_WS_TOKEN"}
    env.update(TRIO_WS_HOME=str(home), COLUMNS="120")
    return await trio.run_process(
        [TRIO_WS, "watch", *args], capture_stdout=True, capture_stderr=True, check=False, env=env
    )


def add(registry: Registry, tmp_path: Path, name: str) -> None:
    (tmp_path / name).mkdir()
    registry.add(name, tmp_path / name)


async def test_once_prints_every_project_what_needs_you_first(
    server: Server, registry: Registry, tmp_path: Path, home: Path
) -> None:
    for name in ("alpha", "beta"):
        add(registry, tmp_path, name)
    hub = (await server.manager.open("beta", tmp_path / "beta")).hub
    hub.set_status("crashed")
    await hub.wait_committed(hub.seq)
    with trio.fail_after(NETWORK_TIMEOUT):
        done = await run_watch(home, "--once", "--server", f"http://127.0.0.1:{server.port}")
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert "2 projects" in out and "1 need you" in out
    assert out.index("beta") < out.index("alpha")  # the crashed one first
    assert "not open" in out  # alpha: nobody opened it


async def test_json_once_prints_the_first_list(
    server: Server, registry: Registry, tmp_path: Path, home: Path
) -> None:
    add(registry, tmp_path, "alpha")
    with trio.fail_after(NETWORK_TIMEOUT):
        done = await run_watch(
            home, "--once", "--json", "--server", f"http://127.0.0.1:{server.port}"
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 1
    first = json.loads(lines[0])
    assert first["type"] == "overview"
    assert [p["name"] for p in first["projects"]] == ["alpha"]


async def test_a_server_that_wants_the_token_is_given_it_or_refuses(
    nursery: trio.Nursery, registry: Registry, tmp_path: Path, home: Path
) -> None:
    add(registry, tmp_path, "alpha")
    server: Server = await nursery.start(serve, make_config(registry, require_token=True))
    url = f"http://127.0.0.1:{server.port}"
    with trio.fail_after(NETWORK_TIMEOUT):
        refused = await run_watch(home, "--once", "--server", url)
        allowed = await run_watch(home, "--once", "--server", url, "--token", TOKEN)
    assert refused.returncode == 1
    assert "Unauthorized" in refused.stderr.decode()
    assert allowed.returncode == 0, allowed.stderr
    assert "alpha" in allowed.stdout.decode()


def test_the_table_shows_alerts_under_their_project() -> None:
    alert = {
        "type": "alert",
        "id": "run_crashed:run:4",
        "kind": "run_crashed",
        "severity": "error",
        "state": "raised",
        "message": "the run crashed (exit code 3)",
        "agent": None,
        "feature": None,
        "timestamp": "2026-12-05T10:00:00.000000Z",
    }
    view = OverviewView()
    crashed = entry(
        "beta",
        summarise([{"type": "agent_status", "status": "crashed"}, alert]),
        path=None,
        exists=True,
        loaded=True,
    )
    idle = entry("alpha", None, path=None, exists=True, loaded=False)
    view.apply({"type": "overview", "projects": [idle, crashed], "registry_error": None})
    screen = io.StringIO()
    Console(file=screen, width=120).print(render_overview(view, 1_800_000_000.0))
    out = screen.getvalue()
    assert out.index("beta") < out.index("run_crashed: the run crashed") < out.index("alpha")


@pytest.mark.parametrize("bell", [True, False], ids=["bell", "no-bell"])
async def test_live_rings_when_a_project_comes_to_need_you(
    nursery: trio.Nursery,
    registry: Registry,
    tmp_path: Path,
    bell: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")  # rich rings no bell on a dumb terminal
    add(registry, tmp_path, "alpha")
    server: Server = await nursery.start(serve, make_config(registry, alerts=AlertSettings()))
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, height=40)
    target = OverviewTarget.from_server(f"http://127.0.0.1:{server.port}")
    with trio.fail_after(NETWORK_TIMEOUT):
        async with trio.open_nursery() as inner:
            inner.start_soon(partial(watch_overview_live, target, console, bell=bell))
            while server.manager.overview.watcher_count == 0:  # noqa: ASYNC110
                await trio.sleep(0.02)
            await trio.sleep(0.6)  # the first list is drawn: no bell for it
            assert "\x07" not in screen.getvalue()
            hub = (await server.manager.open("alpha", tmp_path / "alpha")).hub
            hub.set_status("running")
            hub.set_status("crashed")
            while "run_crashed" not in screen.getvalue():  # noqa: ASYNC110
                await trio.sleep(0.05)
            await trio.sleep(0.6)  # a refresh after it
            inner.cancel_scope.cancel()
    assert ("\x07" in screen.getvalue()) is bell
