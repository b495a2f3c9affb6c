"""`kill -9` of a real `trio-ws serve` mid-run, restarted on the same port and home
(STATE.md 2, 3; PROTOCOL.md 5): watchers resume, every event arrives exactly once,
the history holds every line once, the trackers and the dev URL carry on.

Everything is a real process: the server, `trio-ws run` feeding a transcript,
`trio-ws publish --dev` holding the dev URL; the journal is a real SQLite file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from serving import http_json, http_request
from test_cli_run import TRANSCRIPT, child, transcript_lines
from test_runs_api import dechunk
from trio_websocket import ConnectionClosed, WebSocketConnection, connect_websocket_url

from trio_ws.core.pipeline import AgentPipeline, sanitize
from trio_ws.core.protocol import EXIT_LINE
from trio_ws.data.registry import Registry
from trio_ws.journal.sqlite import journal_path

TRIO_WS = str(Path(sys.executable).parent / "trio-ws")
RESTART_TIMEOUT = 60

DEV_URL_LINE = "  VITE ready: Local: http://localhost:5173/"

Message = dict[str, Any]
CONNECTION = ("hello", "resumed", "resync")
"""Messages that carry a seq but are not events."""


async def start_server(
    home: Path, port: int, log: Path, *options: str, command: Sequence[str] = (TRIO_WS,)
) -> tuple[trio.Process, int]:
    """`trio-ws serve` (sqlite journal, the default) on ``port`` (0: any); its port.
    ``command`` runs the CLI (a test may run it through a wrapper)."""
    with log.open("ab") as err:
        process = await trio.lowlevel.open_process(
            [
                *command,
                "serve",
                "--home",
                str(home),
                "--port",
                str(port),
                "--token",
                "t0k3n-x",
                *options,
            ],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert process.stdout is not None
    printed = b""
    while b"\n" not in printed:
        chunk = await process.stdout.receive_some(4096)
        assert chunk, f"serve exited; see {log}"
        printed += chunk
    return process, int(printed.split(b"127.0.0.1:")[1].split(b"/")[0])


async def start_producer(
    home: Path, port: int, *args: str, stdin: bool = False, stderr: Path | None = None
) -> trio.Process:
    """`trio-ws publish`/`run` on ``demo``; what it says on stderr goes to ``stderr`` if given."""
    env = {key: value for key, value in os.environ.items() if key != "TRIO_WS_TOKEN"}
    with contextlib.ExitStack() as files:
        err = files.enter_context(stderr.open("ab")) if stderr is not None else subprocess.DEVNULL
        return await trio.lowlevel.open_process(
            [
                *(TRIO_WS, args[0], "demo", "--server", f"http://127.0.0.1:{port}"),
                *("--token", "t0k3n-x", "--home", str(home), *args[1:]),
            ],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )


@dataclass
class Watcher:
    """A subscriber that records every message of each of its connections."""

    lives: list[list[Message]] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    @property
    def events(self) -> list[Message]:
        return [
            m for life in self.lives for m in life if "seq" in m and m["type"] not in CONNECTION
        ]

    async def watch(self, port: int, query: dict[str, Any] | None = None) -> None:
        """Record one connection's messages until the server goes away."""
        params = "&".join(f"{key}={value}" for key, value in (query or {}).items())
        url = f"ws://127.0.0.1:{port}/ws/projects/demo?{params}"
        life: list[Message] = []
        self.lives.append(life)
        async with trio.open_nursery() as nursery:
            ws: WebSocketConnection = await connect_websocket_url(nursery, url)
            try:
                while True:
                    life.append(json.loads(await ws.get_message()))
                    self.changed.set()
                    self.changed = trio.Event()
            except ConnectionClosed:
                return

    def resume_query(self) -> dict[str, Any]:
        return {"since": self.last_seq(-1), "epoch": self.lives[-1][0]["epoch"]}

    def last_seq(self, life: int) -> int:
        seqs = [m["seq"] for m in self.lives[life] if "seq" in m and m["type"] not in CONNECTION]
        return seqs[-1] if seqs else int(self.lives[life][0]["seq"])

    async def until(self, predicate: Any) -> None:
        while not self.lives or not any(predicate(m) for m in self.lives[-1]):
            await self.changed.wait()


def logs(events: list[Message]) -> list[str]:
    return [m["line"] for m in events if m["type"] == "log"]


@pytest.mark.parametrize("kill_after", [1, 37, 120, 190])
async def test_kill_9_mid_run_then_restart_resumes_every_watcher_exactly_once(
    nursery: trio.Nursery,
    registry: Registry,
    home: Path,
    project_dir: Path,
    tmp_path: Path,
    kill_after: int,
) -> None:
    """The server is SIGKILLed once the watchers saw ``kill_after`` lines of a run that
    keeps printing (so the kill falls between, or in the middle of, commits)."""
    server_log = tmp_path / "serve.log"
    lines = [*transcript_lines(TRANSCRIPT), f"{EXIT_LINE} 0"]
    expected = [sanitize(line) for line in lines]
    with trio.fail_after(RESTART_TIMEOUT):
        server, port = await start_server(home, 0, server_log)
        watchers = [Watcher(), Watcher()]
        async with trio.open_nursery() as first_life:
            for watcher in watchers:
                first_life.start_soon(watcher.watch, port)
                await watcher.until(lambda m: m["type"] == "hello")
            dev = await start_producer(home, port, "publish", "--dev", stdin=True)
            assert dev.stdin is not None
            await dev.stdin.send_all(f"{DEV_URL_LINE}\n".encode())
            await watchers[0].until(
                lambda m: m["type"] == "dev_server_status" and m["url"] is not None
            )
            run = await start_producer(
                home, port, "run", "--quiet", "--", *child(str(TRANSCRIPT), "--pause", "0.003")
            )
            await watchers[0].until(
                lambda m: m["type"] == "log" and m["line"] == expected[kill_after - 1]
            )
            server.kill()  # SIGKILL: no flush, no clean-stop flag
            await server.wait()
        epoch = watchers[0].lives[0][0]["epoch"]
        server, _ = await start_server(home, port, server_log)
        async with trio.open_nursery() as second_life:
            for watcher in watchers:
                second_life.start_soon(watcher.watch, port, watcher.resume_query())
            for watcher in watchers:
                await watcher.until(
                    lambda m: m["type"] == "agent_status" and m["status"] == "stopped"
                )
            assert await run.wait() == 0
            fresh = Watcher()
            second_life.start_soon(fresh.watch, port, {"since": 0, "epoch": epoch})
            await fresh.until(lambda m: m["type"] == "agent_status" and m["status"] == "stopped")
            snapshot = Watcher()
            second_life.start_soon(snapshot.watch, port)
            await snapshot.until(lambda m: m["type"] == "dev_server_status")
            runs = await http_json(port, "GET", "/api/projects/demo/runs")
            server.kill()
        await server.wait()
        dev.kill()
        await dev.wait()
        # A third life after another kill -9, with a live history of 10 events: the
        # closed run is still listed, and its events come from the archive.
        server, _ = await start_server(home, port, server_log, "--history", "10")
        runs_again = await http_json(port, "GET", "/api/projects/demo/runs")
        run_id = runs[1]["runs"][0]["id"]
        export = await http_request(port, "GET", f"/api/projects/demo/runs/{run_id}/export")
        server.kill()
        await server.wait()
    for watcher in [*watchers, fresh]:
        assert [life[0]["epoch"] for life in watcher.lives] == [epoch] * len(watcher.lives)
        events = watcher.events
        assert [m["seq"] for m in events] == list(range(1, len(events) + 1))
        assert logs(events) == expected
    for watcher in watchers:
        assert watcher.lives[1][1] == {
            "type": "resumed",
            "since": watcher.last_seq(0),
            "seq": watcher.lives[1][0]["seq"],
        }
    # The trackers carried on: the same agents with the same indices and names as
    # one uninterrupted pipeline gives for these lines.
    pipeline = AgentPipeline()
    reference = pipeline.set_status("running") + pipeline.feed_lines(lines)
    names = {(m["agentIndex"], m["agentName"]) for m in fresh.events if m["type"] == "agent_update"}
    assert names == {
        (m["agentIndex"], m["agentName"]) for m in reference if m["type"] == "agent_update"
    }
    assert names  # the transcript has agents
    dev_status = [m for m in snapshot.lives[0] if m["type"] == "dev_server_status"]
    assert dev_status[0]["url"] == "http://localhost:5173/"
    # The run went on across the kill: one run, from its running to its stop.
    statuses = [m for m in fresh.events if m["type"] == "agent_status"]
    assert runs[0] == 200 and len(runs[1]["runs"]) == 1
    recorded = runs[1]["runs"][0]
    assert (recorded["first_seq"], recorded["last_seq"]) == (
        statuses[0]["seq"],
        statuses[-1]["seq"],
    )
    assert (recorded["ended"], recorded["exit_code"]) == ("stopped", 0)
    assert recorded["log_lines"] == len(expected)
    assert runs_again == runs
    assert export[0] == 200
    exported = [json.loads(line) for line in dechunk(export[2]).decode().splitlines()]
    assert exported == [m for m in fresh.events if m["seq"] >= recorded["first_seq"]]


async def test_sigterm_commits_and_records_a_clean_stop(
    nursery: trio.Nursery, registry: Registry, home: Path, project_dir: Path, tmp_path: Path
) -> None:
    """A signalled server closes its journals clean, so an OS reboot before the next
    start does not cost the history (STATE.md 3.3); kill -9 leaves them unclean."""
    states = []
    with trio.fail_after(RESTART_TIMEOUT):
        for stop in (signal.SIGTERM, signal.SIGKILL):
            server, port = await start_server(home, 0, tmp_path / "serve.log")
            watcher = Watcher()
            async with trio.open_nursery() as life:
                life.start_soon(watcher.watch, port)
                await watcher.until(lambda m: m["type"] == "hello")
                server.send_signal(stop)
                await server.wait()
            conn = sqlite3.connect(journal_path(home, "demo"))
            states.append(conn.execute("SELECT value FROM meta WHERE key = 'clean'").fetchone())
            conn.close()
    assert states == [("1",), ("0",)]
