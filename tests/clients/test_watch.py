"""`trio-ws watch`: the pure `RunView`, its rendering, and the client against a real server.

The view is driven with plain function calls. Network tests run the real
server on 127.0.0.1 port 0 and either call the client's async functions
in-process or run `trio-ws watch` as a real subprocess.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from features_db import Row, create_db, db_path, insert, rows
from serving import NETWORK_TIMEOUT, make_config
from test_run_view import AGENT_LINES, hello, progress, view_of
from test_watch_render import busy_view, rendered

from trio_ws.clients.run_view import ProgressPoint, RunView
from trio_ws.clients.watch import (
    WatchError,
    WatchRefused,
    WatchTarget,
    fetch_snapshot,
    follow,
    keep_extras,
)
from trio_ws.clients.watch_render import (
    sparkline,
)
from trio_ws.core import protocol
from trio_ws.data.progress import count_passing_tests
from trio_ws.data.registry import Registry
from trio_ws.net.server import Server, serve
from trio_ws.net.subscribe import SubscriberSession
from trio_ws.runtime.backoff import Backoff
from trio_ws.state.hub import ProjectHub

Msg = protocol.Message
TRIO_WS = str(Path(sys.executable).parent / "trio-ws")
TS_UNIX = 1795626245.123
FAST = Backoff(initial=0.01, maximum=0.05)


# -- the client against a real server --------------------------------------------------


def target_of(server: Server, project: str = "demo") -> WatchTarget:
    return WatchTarget.from_server(f"http://127.0.0.1:{server.port}", project)


async def populate(server: Server, project_dir: Path) -> ProjectHub:
    """Give ``demo`` a running agent stream, two agents, orchestrator events and progress."""
    create_db(db_path(project_dir), rows(passing=3, in_progress=2, needs_human_input=1, pending=4))
    hub = (await server.manager.open("demo", project_dir)).hub
    hub.set_status("running")
    hub.feed_lines(AGENT_LINES)
    hub.publish_progress(count_passing_tests(project_dir))  # what the poll loop will read too
    return hub


def same_state(left: RunView, right: RunView) -> None:
    """Two views agree on everything the run's history decides."""
    assert (left.epoch, left.seq) == (right.epoch, right.seq)
    assert (left.agent_status, left.dev_status, left.dev_url) == (
        right.agent_status,
        right.dev_status,
        right.dev_url,
    )
    assert (left.progress, left.orchestrator) == (right.progress, right.orchestrator)
    assert left.agents == right.agents
    assert list(left.logs) == list(right.logs)
    assert list(left.dev_logs) == list(right.dev_logs)


async def settle(hub: ProjectHub, seen: Collector) -> None:
    """Wait until the client holds a complete snapshot: a live event has reached it."""
    await seen.until(lambda m: m.get("line") == AGENT_LINES[-1])  # the snapshot's last line
    hub.feed_lines(["after the snapshot"])
    await seen.until(lambda m: m.get("line") == "after the snapshot")


class Collector:
    """Messages a client passed on, readable by the test as they arrive."""

    def __init__(self) -> None:
        self.seen: list[Msg] = []
        self._send, self._receive = trio.open_memory_channel[Msg](10_000)

    def __call__(self, message: Msg) -> None:
        self.seen.append(message)
        self._send.send_nowait(message)

    async def until(self, predicate: Callable[[Msg], bool]) -> Msg:
        async for message in self._receive:
            if predicate(message):
                return message
        raise AssertionError("channel closed")


async def test_fetch_snapshot_builds_the_servers_state(server: Server, project_dir: Path) -> None:
    hub = await populate(server, project_dir)
    with trio.fail_after(NETWORK_TIMEOUT):
        view = await fetch_snapshot(target_of(server))
    assert (view.epoch, view.seq, view.agent_status) == (hub.epoch, hub.seq, "running")
    assert [card.name for card in view.agents.values()] == ["Spark", "Fizz"]
    assert view.progress is not None and (view.progress.passing, view.progress.total) == (3, 10)
    assert [entry.line for entry in view.logs] == AGENT_LINES
    assert view.connection == "snapshot"


async def test_fetch_snapshot_of_an_unknown_project_is_refused(
    server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT), pytest.raises(WatchRefused) as refused:
        await fetch_snapshot(target_of(server, "nope"))
    assert refused.value.code == 4004
    assert "Project not found in registry" in str(refused.value)


async def test_fetch_snapshot_of_an_unreachable_server_fails_clearly() -> None:
    port = free_port()
    target = WatchTarget.from_server(f"http://127.0.0.1:{port}", "demo")
    with trio.fail_after(NETWORK_TIMEOUT), pytest.raises(WatchError) as failed:
        await fetch_snapshot(target)
    assert str(failed.value).startswith(f"cannot connect to ws://127.0.0.1:{port}/ws/projects/demo")


async def test_follow_resumes_after_the_server_drops_it(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    hub = await populate(server, project_dir)
    view = RunView()
    seen = Collector()
    with trio.fail_after(NETWORK_TIMEOUT):
        nursery.start_soon(lambda: follow(target_of(server), view, seen, backoff=FAST))
        await settle(hub, seen)
        await server.manager.close_all(1012, "restarting")
        hub.feed_lines(["Feature #3 completed", "[Feature #5] [Tool: Bash] npm test"])
        hub.feed_lines(["VITE ready at http://localhost:5173"], stream="dev")
        resumed = await seen.until(lambda m: m["type"] == "resumed")
        await seen.until(lambda m: m.get("seq") == hub.seq)
        fresh = await fetch_snapshot(target_of(server))
    assert [m["type"] for m in seen.seen].count("hello") == 2
    assert (view.resumes, view.resyncs, view.duplicates) == (1, 0, 0)
    assert view.connection == "live"
    after = seen.seen[seen.seen.index(resumed) + 1 :]
    assert [m["seq"] for m in after] == list(range(resumed["since"] + 1, hub.seq + 1))
    same_state(view, fresh)
    assert [card.name for card in view.agents.values()] == ["Fizz"]
    assert view.dev_url == "http://localhost:5173"


async def test_follow_resyncs_when_a_new_server_has_a_new_epoch(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        first: Server = await nursery.start(serve, make_config(registry))
        old = await populate(first, project_dir)
        view = RunView()
        seen = Collector()
        target = target_of(first)
        nursery.start_soon(lambda: follow(target, view, seen, backoff=FAST))
        await settle(old, seen)
        await first.shutdown(1001)
        second: Server = await nursery.start(serve, make_config(registry, port=first.port))
        hub = (await second.manager.open("demo", project_dir)).hub
        hub.feed_lines(["Started coding agent for feature #9"])
        resync = await seen.until(lambda m: m["type"] == "resync")
        await seen.until(lambda m: m["type"] == "agent_update")
        fresh = await fetch_snapshot(target)
        second._cancel.cancel()
    assert resync["reason"] == "epoch_changed"
    assert (view.epoch, view.resyncs) == (hub.epoch, 1)
    assert view.epoch != old.epoch
    same_state(view, fresh)
    assert [(card.name, card.feature_ids) for card in view.agents.values()] == [("Spark", (9,))]


async def test_follow_does_not_retry_a_4004(server: Server, project_dir: Path) -> None:
    view = RunView()
    drops: list[str] = []
    with trio.fail_after(NETWORK_TIMEOUT), pytest.raises(WatchRefused) as refused:
        await follow(target_of(server, "nope"), view, backoff=FAST, on_drop=drops.append)
    assert refused.value.code == 4004
    assert drops == []
    assert (view.connection, view.error) == ("closed", "Project not found in registry")


async def test_follow_keeps_retrying_an_unreachable_server() -> None:
    view = RunView()
    drops: list[str] = []
    target = WatchTarget.from_server(f"http://127.0.0.1:{free_port()}", "demo")
    with trio.fail_after(NETWORK_TIMEOUT):
        async with trio.open_nursery() as nursery:

            def dropped(reason: str) -> None:
                drops.append(reason)
                if len(drops) == 3:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(lambda: follow(target, view, backoff=FAST, on_drop=dropped))
    assert len(drops) == 3
    assert all(reason.startswith("cannot connect to ws://127.0.0.1:") for reason in drops)
    assert view.connection == "reconnecting"


async def test_follow_drops_a_server_that_stops_answering_pings() -> None:
    drops: list[str] = []
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, silent_websocket_server, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        target = WatchTarget.from_server(f"http://127.0.0.1:{port}", "demo")

        def dropped(reason: str) -> None:
            drops.append(reason)
            nursery.cancel_scope.cancel()

        with trio.fail_after(NETWORK_TIMEOUT):
            await follow(target, RunView(), backoff=FAST, heartbeat=0.05, on_drop=dropped)
    assert drops == ["no answer to a ping in 0.05 s"]


async def silent_websocket_server(stream: trio.SocketStream) -> None:
    """Accepts the upgrade, then never answers anything; hangs up on the client's close."""
    request = b""
    while b"\r\n\r\n" not in request:
        request += await stream.receive_some(4096)
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    await stream.send_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    while data := await stream.receive_some(4096):
        if data[0] & 0x0F == 0x8:  # a close frame: the client gave up on us
            break
    await stream.aclose()


def free_port() -> int:
    """A port nothing listens on (bound and released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- `trio-ws watch` as a real subprocess -------------------------------------------------


def cli_env(home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "TRIO_WS_TOKEN"}
    env["TRIO_WS_HOME"] = str(home)
    env["COLUMNS"] = "120"
    return env


async def run_watch(home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [TRIO_WS, "watch", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=cli_env(home),
    )


async def test_cli_once_prints_agents_and_progress(
    server: Server, project_dir: Path, home: Path
) -> None:
    await populate(server, project_dir)
    with trio.fail_after(NETWORK_TIMEOUT):
        done = await run_watch(
            home, "demo", "--once", "--server", f"http://127.0.0.1:{server.port}"
        )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr
    for fact in ("demo", "agents: running", "Spark", "Fizz", "30.0%", "passing 3/10", "ready 4"):
        assert fact in out
    assert "[Feature #5] Running tests for the login form" in out


async def test_cli_json_once_prints_the_snapshot_as_json_lines(
    server: Server, project_dir: Path, home: Path
) -> None:
    hub = await populate(server, project_dir)
    with trio.fail_after(NETWORK_TIMEOUT):
        done = await run_watch(
            home, "demo", "--once", "--json", "--server", f"http://127.0.0.1:{server.port}"
        )
    assert done.returncode == 0, done.stderr
    messages = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert messages[0] == hello(hub.seq, epoch=hub.epoch) | {"server": protocol.SERVER_NAME}
    types = [m["type"] for m in messages[1:]]
    assert types[:3] == ["agent_status", "dev_server_status", "progress"]
    assert types.count("agent_update") == 2
    assert types.count("log") == len(AGENT_LINES)
    assert "pong" not in types


async def test_cli_once_unknown_project_exits_1_with_the_error(
    server: Server, project_dir: Path, home: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        done = await run_watch(
            home, "nope", "--once", "--server", f"http://127.0.0.1:{server.port}"
        )
    assert done.returncode == 1
    assert done.stderr.decode() == "trio-ws: error: Project not found in registry (close 4004)\n"
    assert done.stdout == b""


async def test_cli_live_unknown_project_exits_1_without_retrying(
    server: Server, project_dir: Path, home: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        done = await run_watch(home, "nope", "--server", f"http://127.0.0.1:{server.port}")
    assert done.returncode == 1
    assert "Project not found in registry (close 4004)" in done.stderr.decode()


async def test_cli_once_unreachable_server_exits_1_with_one_line(home: Path) -> None:
    port = free_port()
    with trio.fail_after(NETWORK_TIMEOUT):
        done = await run_watch(home, "demo", "--once", "--server", f"http://127.0.0.1:{port}")
    assert done.returncode == 1
    err = done.stderr.decode()
    assert err.startswith(
        f"trio-ws: error: cannot connect to ws://127.0.0.1:{port}/ws/projects/demo"
    )
    assert err.count("\n") == 1


async def test_cli_sends_the_token_from_the_home_file(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, home: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server: Server = await nursery.start(serve, make_config(registry, require_token=True))
        url = f"http://127.0.0.1:{server.port}"
        refused = await run_watch(home, "demo", "--once", "--server", url)
        (home / "token").write_text(server.config.token + "\n")
        allowed = await run_watch(home, "demo", "--once", "--server", url)
        server._cancel.cancel()
    assert refused.returncode == 1
    assert "Unauthorized (close 4001)" in refused.stderr.decode()
    assert allowed.returncode == 0, allowed.stderr


async def start_watch(home: Path, *args: str) -> trio.Process:
    return await trio.lowlevel.open_process(
        [TRIO_WS, "watch", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(home),
    )


async def wait_for_subscribers(server: Server, count: int) -> None:
    """Until the server counts ``count`` subscribers (the client is another process,
    and the server offers no event for this)."""
    while server.manager.subscriber_count != count:  # noqa: ASYNC110
        await trio.sleep(0.01)


async def test_cli_live_exits_0_on_ctrl_c(server: Server, project_dir: Path, home: Path) -> None:
    await populate(server, project_dir)
    process = await start_watch(home, "demo", "--server", f"http://127.0.0.1:{server.port}")
    try:
        with trio.fail_after(NETWORK_TIMEOUT):
            await wait_for_subscribers(server, 1)
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
            assert process.stdout is not None
            out = await read_all(process.stdout)
            await wait_for_subscribers(server, 0)
    finally:
        if process.returncode is None:
            process.kill()
    assert out.decode().startswith("demo  ")  # Live printed its last frame on the way out


async def test_cli_json_live_prints_a_line_per_message_as_it_arrives(
    server: Server, project_dir: Path, home: Path
) -> None:
    hub = await populate(server, project_dir)
    process = await start_watch(
        home, "demo", "--json", "--server", f"http://127.0.0.1:{server.port}"
    )
    try:
        with trio.fail_after(NETWORK_TIMEOUT):
            assert process.stdout is not None
            lines = LineReader(process.stdout)
            first = json.loads(await lines.next())
            await wait_for_subscribers(server, 1)
            hub.feed_lines(["a live line"])
            while (message := json.loads(await lines.next())).get("line") != "a live line":
                pass
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
    assert first["type"] == "hello"
    assert message["seq"] == hub.seq


class LineReader:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def next(self) -> str:
        while b"\n" not in self._buffer:
            chunk = await self._stream.receive_some(65536)
            assert chunk, "stream ended"
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def test_cli_json_live_ends_quietly_when_its_reader_goes_away(
    server: Server, project_dir: Path, home: Path
) -> None:
    hub = await populate(server, project_dir)
    process = await start_watch(
        home, "demo", "--json", "--server", f"http://127.0.0.1:{server.port}"
    )
    try:
        with trio.fail_after(NETWORK_TIMEOUT):
            assert process.stdout is not None and process.stderr is not None
            assert json.loads(await LineReader(process.stdout).next())["type"] == "hello"
            await wait_for_subscribers(server, 1)
            await process.stdout.aclose()  # like `| head -1`
            hub.feed_lines(["written into a closed pipe"])
            assert await process.wait() == 0
            assert await read_all(process.stderr) == b""
    finally:
        if process.returncode is None:
            process.kill()


async def test_cli_json_live_continues_after_falling_behind_past_the_history(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, home: Path
) -> None:
    """A burst larger than the queue and the history: the server resyncs the client in
    the middle of the stream, and `trio-ws watch` carries on from the resync's seq,
    on the same connection."""
    with trio.fail_after(NETWORK_TIMEOUT):
        server: Server = await nursery.start(serve, make_config(registry, history=20, queue_size=8))
    hub = await populate(server, project_dir)
    process = await start_watch(
        home, "demo", "--json", "--backlog", "2", "--server", f"http://127.0.0.1:{server.port}"
    )
    try:
        with trio.fail_after(NETWORK_TIMEOUT):
            assert process.stdout is not None and process.stderr is not None
            lines = LineReader(process.stdout)
            seen = [json.loads(await lines.next())]
            await wait_for_subscribers(server, 1)
            hub.feed_lines(["before the burst"])
            while seen[-1].get("line") != "before the burst":
                seen.append(json.loads(await lines.next()))
            # The queued path, as for a socket that takes nothing now (else the fan-out
            # writes the whole commit to the socket at once and nothing queues).
            [session] = server.manager._sessions
            assert isinstance(session, SubscriberSession)
            session.subscriber.direct = None
            # One producer message's worth of lines: the publisher never waits, so the
            # subscriber's queue overflows and the history moves on past what it was sent.
            hub.feed_lines([f"burst line {i}" for i in range(100)])
            head = hub.seq
            while seen[-1]["type"] != "resync":
                seen.append(json.loads(await lines.next()))
            resync = seen[-1]
            hub.feed_lines(["after the burst"])
            while seen[-1].get("line") != "after the burst":
                seen.append(json.loads(await lines.next()))
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 0
            errors = await read_all(process.stderr)
    finally:
        if process.returncode is None:
            process.kill()
    assert hub.stats.fell_behind == 1
    assert resync == {"type": "resync", "reason": "gap_evicted", "epoch": hub.epoch, "seq": head}
    assert [m["type"] for m in seen].count("hello") == 1  # never reconnected
    assert errors == b""  # no "reconnecting" note
    start = seen.index(resync)
    before = [m["seq"] for m in seen[:start] if m.get("line", "").startswith("burst line")]
    assert before == list(range(before[0], before[0] + len(before)))  # no gap before it
    assert before[-1] < head - 20  # it really fell out of the history
    snapshot_logs = [m["line"] for m in seen[start:-1] if m["type"] == "log"]
    assert snapshot_logs == ["burst line 98", "burst line 99"]
    assert seen[-1]["seq"] == head + 1


# -- the features board and passing over time --------------------------------------------


def at(second: int) -> str:
    """A protocol timestamp ``second`` seconds after 17:04:00."""
    return f"2026-11-25T17:04:{second:02d}.000000Z"


def test_progress_events_become_points_once_each() -> None:
    view = view_of(hello(2), progress(1, passing=1, at=at(1)), progress(3, passing=2, at=at(3)))
    view.apply(progress(1, passing=1, at=at(1)))  # replayed by a snapshot: the same point
    assert [(p.seq, p.passing) for p in sorted(view.points.values(), key=lambda p: p.seq)] == [
        (1, 1),
        (3, 2),
    ]
    assert view.points[3].time == TS_UNIX - 5.123 + 3


def test_history_adds_earlier_points_of_the_same_epoch_only() -> None:
    view = view_of(hello(5), progress(6, passing=4, at=at(6)))
    earlier = {"seq": 2, "timestamp": at(2), "passing": 1, "total": 10}
    view.apply_history({"epoch": "other", "points": [earlier], "statuses": []})
    assert (sorted(view.points), view.history_epoch) == ([6], None)
    view.apply_history({"epoch": "e1", "points": [earlier], "statuses": []})
    assert (sorted(view.points), view.history_epoch) == ([2, 6], "e1")


def test_a_new_epoch_drops_the_points() -> None:
    view = view_of(hello(2), progress(1, at=at(1)))
    view.apply(hello(0, epoch="e2"))
    assert (view.points, view.history_epoch) == ({}, None)


def test_sparkline_shows_passing_over_time_scaled_to_the_total() -> None:
    points = [
        ProgressPoint(1, 0.0, 0, 8),
        ProgressPoint(2, 5.0, 4, 8),
        ProgressPoint(3, 10.0, 8, 8),
    ]
    assert sparkline(points, width=4) == " ▄▄█"
    assert sparkline(points[:1], width=4) == " "
    assert sparkline([], width=4) == ""


FEATURE_ROWS = [
    {"id": 1, "category": "functional", "name": "Add a todo", "passes": True},
    {"id": 3, "category": "functional", "name": "Delete a todo", "in_progress": True},
    {"id": 5, "category": "style", "name": "Dark mode", "in_progress": True},
    {"id": 6, "category": "style", "name": "Empty state hint", "needs_human_input": True},
    {"id": 7, "category": "style", "name": "Strike through done"},
]


def features_body() -> dict[str, Any]:
    flags = {"passes": False, "in_progress": False, "needs_human_input": False}
    return {"project": "todo-app", "features": [flags | row for row in FEATURE_ROWS]}


def words_per_line(lines: list[str]) -> list[str]:
    """Each line with its runs of spaces made one: column widths vary with the content."""
    return [" ".join(line.split()) for line in lines]


def test_render_counts_features_per_category() -> None:
    view = busy_view()
    view.apply_features(200, features_body())
    lines = rendered(view).splitlines()
    header = next(line for line in lines if "needs input" in line and "pending" in line)
    assert header.split() == ["features", "done", "in", "progress", "pending", "needs", "input"]
    counts = {line.split()[0]: line.split()[1:] for line in lines if line.split()[:1]}
    assert counts["functional"] == ["1", "1", "0", "0"]
    assert counts["style"] == ["0", "1", "2", "1"]
    assert counts["all"] == ["1", "2", "2", "1"]


def test_render_lists_in_progress_features_with_their_agents() -> None:
    view = busy_view()  # Spark works on #3, Fizz on #5 and #6
    view.apply_features(200, features_body())
    lines = rendered(view).splitlines()
    assert any(
        line.split() == ["#3", "Delete", "a", "todo", "functional", "<-", "Spark"] for line in lines
    )
    assert any(line.split() == ["#5", "Dark", "mode", "style", "<-", "Fizz"] for line in lines)
    assert not any("Empty state hint" in line and "<-" in line for line in lines)


def test_render_shows_the_features_error_detail_not_counts() -> None:
    view = busy_view()
    view.apply_features(200, features_body())
    view.apply_features(404, {"detail": "no features database yet in /p"})
    text = rendered(view)
    assert "features: HTTP 404: no features database yet in /p" in text
    assert "functional" not in text


def test_render_shows_the_sparkline_and_the_latest_count() -> None:
    view = view_of(hello(3), *(progress(n, passing=n * 4, total=12, at=at(n)) for n in (1, 2, 3)))
    line = next(line for line in rendered(view).splitlines() if "passing over time" in line)
    assert "12/12 now, since 17:04:01 UTC (3 events)" in line
    assert line.split()[3][-1] == "█"


# -- `trio-ws watch --once` with the features and the history, as a real subprocess ----------

LONG_NAME = "a-project-whose-name-is-long-enough-to-widen-things"[:50]


async def test_cli_once_shows_the_features_and_the_sparkline(
    server: Server, project_dir: Path, home: Path
) -> None:
    database = create_db(
        db_path(project_dir),
        [
            Row(passes=True, category="functional", name="Add a todo"),
            Row(passes=True, category="style", name="Strike through done"),
            Row(in_progress=True, category="functional", name="Delete a todo"),
            Row(needs_human_input=True, category="style", name="Empty state hint"),
            Row(in_progress=True, category="style", name="Dark mode"),
        ],
    )
    hub = (await server.manager.open("demo", project_dir)).hub
    hub.set_status("running")
    hub.feed_lines(AGENT_LINES)  # Spark on #3, Fizz (testing) on #5
    hub.publish_progress(count_passing_tests(project_dir))
    insert(database, [Row(passes=True, category="style", name="Counter")])
    hub.publish_progress(count_passing_tests(project_dir))
    await hub.commit()  # what the journal has committed is what a subscriber is shown
    with trio.fail_after(NETWORK_TIMEOUT):
        done = await run_watch(
            home, "demo", "--once", "--server", f"http://127.0.0.1:{server.port}"
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    counts = {line.split()[0]: line.split()[1:] for line in lines if line.split()[:1]}
    assert counts["functional"] == ["1", "1", "0", "0"]
    assert counts["style"] == ["2", "1", "1", "1"]
    assert any(
        line.split() == ["#3", "Delete", "a", "todo", "functional", "<-", "Spark"] for line in lines
    )
    assert any(line.split() == ["#5", "Dark", "mode", "style", "<-", "Fizz"] for line in lines)
    history = next(line for line in lines if line.startswith("passing over time "))
    points = [p for p in hub.held(frozenset({"progress"}))]
    assert "3/6 now" in history and f"({len(points)} events)" in history
    assert set(history.split()[3]) <= set(" ▁▂▃▄▅▆▇█") and history.split()[3][-1] != " "


async def test_cli_once_is_not_cut_to_80_columns_when_stdout_is_a_pipe(
    server: Server, registry: Registry, tmp_path: Path, home: Path
) -> None:
    directory = tmp_path / "long"
    directory.mkdir()
    registry.add(LONG_NAME, directory)
    hub = (await server.manager.open(LONG_NAME, directory)).hub
    hub.set_status("running")
    hub.set_status("running", "dev")
    hub.feed_lines(["  ➜  Local:   http://localhost:5173/"], "dev")
    long_line = "[Feature #3] " + "a long log line " * 8
    hub.feed_lines([long_line])
    await hub.commit()
    env = {key: value for key, value in cli_env(home).items() if key != "COLUMNS"}
    with trio.fail_after(NETWORK_TIMEOUT):
        done = await trio.run_process(
            [TRIO_WS, "watch", LONG_NAME, "--once", "--server", f"http://127.0.0.1:{server.port}"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    header = (
        f"{LONG_NAME}  snapshot  agents: running  dev server: running http://localhost:5173/"
        f"  seq {hub.seq}"
    )
    assert header in out.splitlines()[0]
    assert long_line.rstrip() in out


def mark_passing(path: Path, feature: int) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("UPDATE features SET passes = 1, in_progress = 0 WHERE id = ?", (feature,))


async def test_live_extras_read_the_board_again_when_progress_changes(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    database = create_db(db_path(project_dir), rows(in_progress=1, pending=2))
    target = target_of(server)
    view = RunView(project="demo")
    nursery.start_soon(partial(follow, target, view, backoff=FAST))
    nursery.start_soon(partial(keep_extras, target, view))
    with trio.fail_after(NETWORK_TIMEOUT):
        while view.features is None or view.history_epoch is None:  # noqa: ASYNC110
            await trio.sleep(0.01)
        assert [feature.passes for feature in view.features] == [False, False, False]
        await trio.to_thread.run_sync(mark_passing, database, 1)
        while not view.features[0].passes:  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert [feature.in_progress for feature in view.features] == [False, False, False]
    assert sorted(point.passing for point in view.points.values()) == [0, 1]


async def test_follow_retries_an_http_429_as_run_does(nursery: trio.Nursery) -> None:
    """The refusal rule is `trio-ws run`'s: 429 (and 408) mean "not now", so a busy
    server behind a rate limiter is retried, not given up on for good."""
    answered = 0

    async def too_many(stream: trio.SocketStream) -> None:
        nonlocal answered
        async with stream:
            await stream.receive_some(65536)
            answered += 1
            await stream.send_all(
                b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 4\r\n"
                b"connection: close\r\n\r\nbusy"
            )

    listeners = await nursery.start(partial(trio.serve_tcp, too_many, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    target = WatchTarget.from_server(f"http://127.0.0.1:{port}", "demo")
    drops: list[str] = []
    with trio.fail_after(NETWORK_TIMEOUT):
        async with trio.open_nursery() as inner:

            def dropped(reason: str) -> None:
                drops.append(reason)
                if len(drops) == 3:
                    inner.cancel_scope.cancel()

            inner.start_soon(lambda: follow(target, RunView(), backoff=FAST, on_drop=dropped))
    assert answered == 3
    assert all("HTTP 429" in reason for reason in drops)
