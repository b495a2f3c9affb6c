"""`trio-ws serve` as a real subprocess: URL, signals, startup refusals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import trio
from services import free_port
from serving import NETWORK_TIMEOUT, SERVE_URL, TRIO_WS, first_line, receive
from serving import serve_subprocess as serving
from trio_websocket import ConnectionClosed, WebSocketConnection, connect_websocket_url
from webhook_receiver import WebhookReceiver

from trio_ws.data.registry import Registry
from trio_ws.faces.cli import DURATION


async def test_sigterm_closes_subscribers_with_1001_and_exits_0(
    nursery: trio.Nursery, served_home: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        async with serving(served_home) as (process, port, _):
            ws = await connect_websocket_url(nursery, f"ws://127.0.0.1:{port}/ws/projects/demo")
            assert (await receive(ws))["type"] == "hello"
            process.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await ws.get_message()
            reason = closed.value.reason
            assert reason is not None and reason.code == 1001
            assert await process.wait() == 0


async def test_second_signal_exits_at_once(served_home: Path) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        async with serving(served_home) as (process, port, _):
            # A peer that completes the upgrade and then never answers the close
            # handshake keeps the graceful shutdown waiting for its 2 s bound.
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(
                b"GET /ws/projects/demo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            received = b""
            while b'"type":"hello"' not in received:  # subscribed, not only upgraded
                received += await stream.receive_some(4096)
            assert received.startswith(b"HTTP/1.1 101 ")
            process.send_signal(signal.SIGINT)
            await trio.sleep(0.2)
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 128 + signal.SIGINT
            await stream.aclose()


async def test_require_token_prints_url_with_token(served_home: Path) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        async with serving(served_home, "--require-token", "--token", "s3cret-tok") as (
            process,
            _,
            url,
        ):
            assert url.endswith("/?token=s3cret-tok")
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0


async def test_token_file_is_created_private_and_the_link_carries_it(served_home: Path) -> None:
    """Loopback readers need no token, but the dashboard's buttons do: the printed
    link carries it (the dashboard keeps it in its cookie), as Jupyter's does."""
    with trio.fail_after(NETWORK_TIMEOUT):
        async with serving(served_home) as (process, _, url):
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    token_file = served_home / "token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32
    assert url.endswith(f"/?token={token}")


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "TRIO_WS_TOKEN"}
    return subprocess.run(
        [TRIO_WS, "serve", *args], capture_output=True, text=True, timeout=30, env=env
    )


def test_port_in_use_is_one_line_and_exit_1(served_home: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_serve("--home", str(served_home), "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"trio-ws: error: cannot listen on 127.0.0.1:{port}: address already in use; another "
        "server has it (Jupyter's is 8888 too): try --port 0"
    ]


async def test_without_port_a_taken_default_moves_to_the_next_free_one(
    served_home: Path, tmp_path: Path
) -> None:
    """The default 8888 is Jupyter's too: when --port is not given, the next free port
    is taken and said."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 8888))
    taken.listen()
    process = await trio.lowlevel.open_process(
        [TRIO_WS, "serve", "--home", str(served_home)],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "stderr").open("wb"),
    )
    try:
        with trio.fail_after(NETWORK_TIMEOUT):
            printed = await first_line(process)
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0
    finally:
        taken.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
    match = SERVE_URL.search(printed)
    assert match is not None and int(match.group(3)) > 8888, printed
    said = (tmp_path / "stderr").read_text()
    assert "trio-ws: port 8888 is in use; trying 8889" in said


def test_missing_named_registry_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    result = run_serve("--home", str(tmp_path), "--registry", str(missing), "--port", "0")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("trio-ws: error: no registry at ") and str(missing) in line


def test_corrupt_registry_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "registry.db").write_bytes(b"this is not sqlite" * 100)
    result = run_serve("--home", str(home), "--port", "0")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "registry.db" in line


def test_bad_option_is_usage_error(tmp_path: Path) -> None:
    result = run_serve("--home", str(tmp_path), "--port", "70000")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--host", "0.0.0.0"), "needs a loopback --host"),
        (("--host", "127.0.0.1", "--trust-origin", "localhost:5173"), "not an origin"),
    ],
)
def test_trust_origin_is_refused_off_loopback_and_for_no_origin(
    tmp_path: Path, args: tuple[str, ...], words: str
) -> None:
    trusted = ("--trust-origin", "http://localhost:5173")
    result = run_serve("--home", str(tmp_path), "--port", "0", *trusted, *args)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert words in line


async def lose_a_running_producer(
    nursery: trio.Nursery, port: int, token: str
) -> WebSocketConnection:
    """A producer reports running, then goes without a word; returns a watcher of it."""
    watcher = await connect_websocket_url(nursery, f"ws://127.0.0.1:{port}/ws/projects/demo")
    producer = await connect_websocket_url(
        nursery,
        f"ws://127.0.0.1:{port}/ws/projects/demo/publish",
        extra_headers=[(b"authorization", f"Bearer {token}".encode())],
    )
    await producer.send_message('{"type":"hello","producer":"p","stream":"agent"}')
    await producer.send_message('{"type":"status","pseq":1,"status":"running"}')
    while (await receive(watcher)).get("status") != "running":
        pass
    await producer.aclose()
    return watcher


async def test_producer_grace_option_marks_a_vanished_producer_crashed(
    nursery: trio.Nursery, served_home: Path
) -> None:
    token = "grace-test-token"
    with trio.fail_after(NETWORK_TIMEOUT):
        async with serving(served_home, "--producer-grace", "0.2", "--token", token) as (
            process,
            port,
            _,
        ):
            watcher = await lose_a_running_producer(nursery, port, token)
            while (await receive(watcher)).get("status") != "crashed":
                pass
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("10m", 600), ("1h", 3600), ("1.5h", 5400), ("45", 45)]
)
def test_alert_durations_read_seconds_minutes_and_hours(text: str, seconds: float) -> None:
    assert DURATION.convert(text, None, None) == seconds


@pytest.mark.parametrize(
    ("option", "value"), [("--alert-silent", "10x"), ("--alert-stalled", "0m"), ("--alerts", "y")]
)
def test_a_bad_alert_option_is_a_usage_error_naming_it(
    tmp_path: Path, option: str, value: str
) -> None:
    result = run_serve("--home", str(tmp_path), "--port", "0", option, value)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert option in line


async def test_alerts_are_on_by_default_and_a_lost_producer_raises_one(
    nursery: trio.Nursery, served_home: Path
) -> None:
    token = "alert-test-token"
    with trio.fail_after(NETWORK_TIMEOUT):
        async with serving(served_home, "--producer-grace", "0.2", "--token", token) as (
            process,
            port,
            _,
        ):
            watcher = await lose_a_running_producer(nursery, port, token)
            while (alert := await receive(watcher))["type"] != "alert":
                pass
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    assert (alert["kind"], alert["severity"], alert["state"]) == (
        "producer_lost",
        "error",
        "raised",
    )


async def test_allow_host_option_serves_that_host_and_refuses_others(served_home: Path) -> None:
    """DNS rebinding: on loopback only loopback names and --allow-host entries are served."""

    async def status(port: int, host: str) -> bytes:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(f"GET /api/projects HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            received = b""
            while chunk := await stream.receive_some(4096):
                received += chunk
        return received.split(b"\r\n", 1)[0]

    with trio.fail_after(NETWORK_TIMEOUT):
        async with serving(served_home, "--allow-host", "dash.example.test") as (process, port, _):
            listed = await status(port, f"dash.example.test:{port}")
            foreign = await status(port, f"rebind.evil.example:{port}")
            loopback = await status(port, f"localhost:{port}")
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    assert listed == b"HTTP/1.1 200 OK"
    assert foreign == b"HTTP/1.1 403 Forbidden"
    assert loopback == b"HTTP/1.1 200 OK"


async def closed_with(ws: WebSocketConnection) -> int | None:
    """The close code of a connection the server ends (its messages skipped)."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await ws.get_message()
    return None if closed.value.reason is None else closed.value.reason.code


async def test_max_projects_and_idle_close_options_bound_and_free_open_projects(
    nursery: trio.Nursery, served_home: Path, tmp_path: Path
) -> None:
    (tmp_path / "other").mkdir()
    Registry(served_home / "registry.db").add("other", tmp_path / "other")
    with trio.fail_after(NETWORK_TIMEOUT):
        async with serving(served_home, "--max-projects", "1", "--idle-close", "0.3") as (
            process,
            port,
            _,
        ):
            base = f"ws://127.0.0.1:{port}/ws/projects"
            demo = await connect_websocket_url(nursery, f"{base}/demo")
            assert (await receive(demo))["type"] == "hello"
            refused = await connect_websocket_url(nursery, f"{base}/other")
            assert "limit of 1 open projects" in (await receive(refused))["content"]
            assert await closed_with(refused) == 1013
            await demo.aclose()
            await trio.sleep(0.3)  # demo is closed once unused for 0.3 s (checked every 0.075)
            while True:
                other = await connect_websocket_url(nursery, f"{base}/other")
                if (await receive(other))["type"] == "hello":
                    break
                assert await closed_with(other) == 1013
                await trio.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--notify", "ftp://example.org/x", "--notify: an http:// or https:// URL"),
        ("--notify", "https://ntfy.sh/", "--notify: an ntfy URL names its topic"),
        ("--notify-command", "say 'unclosed", "--notify-command: No closing quotation"),
        ("--notify-timeout", "0s", "--notify-timeout"),
    ],
)
def test_a_bad_notify_option_is_a_usage_error_naming_it(
    tmp_path: Path, option: str, value: str, says: str
) -> None:
    result = run_serve("--home", str(tmp_path), "--port", "0", option, value)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert says in line


def test_notify_with_alerts_off_says_only_projects_turning_them_on_raise_any(
    tmp_path: Path,
) -> None:
    """Not refused (a project's own settings may turn alerts on), but said before the
    server starts (here it then stops at once: its port is taken)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_serve(
            "--home", str(tmp_path), "--port", port, "--alerts", "off", "--notify", "http://x/"
        )
    assert result.returncode == 1
    said = result.stderr.splitlines()
    assert said[0].startswith("trio-ws: --notify with --alerts off: only projects whose own")
    assert said[-1].startswith(f"trio-ws: error: cannot listen on 127.0.0.1:{port}")


async def test_an_alert_raised_before_a_kill_9_is_delivered_once_after_the_restart(
    nursery: trio.Nursery, served_home: Path
) -> None:
    """The receiver is down while the alert is raised; kill -9; the receiver comes up and
    the server again (no client comes back): the alert is delivered exactly once, and a
    kill -9 after that delivery does not send it again."""
    token = "notify-test-token"
    receiver = WebhookReceiver(port=free_port())
    options = ("--producer-grace", "0.2", "--token", token, "--notify-timeout", "1s")
    notify = ("--notify", receiver.url("/hook"))
    with trio.fail_after(3 * NETWORK_TIMEOUT):
        async with serving(served_home, *options, *notify) as (process, port, _):
            watcher = await lose_a_running_producer(nursery, port, token)
            while (raised := await receive(watcher))["type"] != "alert":
                pass
            await trio.sleep(0.3)  # tries fail: nobody listens
            process.kill()
            assert await process.wait() == -signal.SIGKILL
        await nursery.start(receiver.serve)
        # No client comes back: the server opens the project by itself for its alerts.
        async with serving(served_home, *options, *notify) as (process, port, _):
            (delivered,) = await receiver.wait_for(1)
            await trio.sleep(0.5)  # its cursor is committed; no second try comes
            process.kill()
            await process.wait()
        async with serving(served_home, *options, *notify) as (process, port, _):
            await trio.sleep(1.0)
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    assert json.loads(delivered.body) == raised
    assert len(receiver.received) == 1
