"""`trio-ws watch` as a real subprocess against a real server on 127.0.0.1 port 0:
the modes (``--once``, ``--json``, live), exits and the token.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio
from features_db import Row, create_db, db_path, insert
from rich.console import Console
from services import free_port
from serving import NETWORK_TIMEOUT, make_config
from test_run_view import AGENT_LINES, hello
from watching import populate

from trio_ws.clients.watch import watch_live
from trio_ws.clients.watch_session import WatchTarget
from trio_ws.core import protocol
from trio_ws.core.alerts import AlertSettings
from trio_ws.data.progress import Progress, count_passing_tests
from trio_ws.data.registry import Registry
from trio_ws.net.server import Server, serve
from trio_ws.net.subscribe import SubscriberSession

TRIO_WS = str(Path(sys.executable).parent / "trio-ws")
TS_UNIX = 1795626245.123

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


@pytest.mark.parametrize("bell", [True, False], ids=["bell", "no-bell"])
async def test_live_watch_rings_the_bell_at_a_new_alert(
    nursery: trio.Nursery,
    registry: Registry,
    project_dir: Path,
    bell: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")  # rich rings no bell on a dumb terminal
    config = make_config(registry, alerts=AlertSettings())
    server: Server = await nursery.start(serve, config)
    hub = await populate(server, project_dir)
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100, height=40)
    target = WatchTarget.from_server(f"http://127.0.0.1:{server.port}", "demo")
    with trio.fail_after(NETWORK_TIMEOUT):
        async with trio.open_nursery() as inner:
            inner.start_soon(partial(watch_live, target, console, log_lines=5, bell=bell))
            await wait_for_subscribers(server, 1)
            await trio.sleep(0.5)  # the snapshot is in
            # populate's database has a feature needing a human: its alert stands in the
            # snapshot (no bell for that); answered, then needed again, it is a new one.
            hub.publish_progress(Progress(passing=3, in_progress=2, total=10, needs_human_input=0))
            hub.publish_progress(Progress(passing=3, in_progress=2, total=10, needs_human_input=2))
            while screen.getvalue().count("alert needs_input") < 2:  # noqa: ASYNC110
                await trio.sleep(0.05)
            await trio.sleep(0.5)  # a refresh or two after it
            inner.cancel_scope.cancel()
    assert ("\x07" in screen.getvalue()) is bell
