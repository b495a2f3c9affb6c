"""Alerts delivered by a real server on 127.0.0.1 (issue 21, ``--notify`` and
``--notify-command``): to a real webhook receiver (normal, signed, slow, failing,
hanging, refusing), to ntfy's preset, and to commands (a script that writes its
stdin to a file, one that fails, one that hangs)."""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from serving import NETWORK_TIMEOUT, connect, make_config, receive_until
from test_alerts_server import crash, is_alert, producer, start
from webhook_receiver import HANG, Answer, WebhookReceiver

from trio_ws.core.alerts import AlertSettings
from trio_ws.core.notify import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    NotifyTarget,
    command_target,
    verify_signature,
    webhook_target,
)
from trio_ws.data.registry import Registry
from trio_ws.net.server import Server
from trio_ws.state.delivery import COMMAND_ATTEMPTS

Msg = dict[str, Any]
FAST_RETRY = (0.05, 0.2)


@pytest.fixture(autouse=True)
def notify_logs(caplog: pytest.LogCaptureFixture) -> Any:
    """Every logger at DEBUG, as `serve --log-level debug` has them: the libraries' too."""
    with caplog.at_level(logging.DEBUG):
        yield


async def receiving(nursery: trio.Nursery, receiver: WebhookReceiver) -> WebhookReceiver:
    await nursery.start(receiver.serve)
    return receiver


async def notifying(
    nursery: trio.Nursery, registry: Registry, *targets: NotifyTarget, **overrides: Any
) -> Server:
    settings: dict[str, Any] = {"notify_timeout": 2.0, "notify_retry": FAST_RETRY}
    settings.update(overrides)
    config = make_config(registry, alerts=AlertSettings(), notify=targets, **settings)
    return await start(nursery, config)


async def crash_and_rerun(nursery: trio.Nursery, server: Server) -> tuple[Msg, Msg]:
    """A run crashes (``run_crashed`` raised) and runs again (resolved): both alerts,
    as a watcher saw them."""
    watcher = await connect(nursery, server)
    ws = await producer(nursery, server)
    await crash(ws)
    raised = (await receive_until(watcher, is_alert("raised")))[-1]
    await ws.send_message(json.dumps({"type": "status", "pseq": 4, "status": "running"}))
    resolved = (await receive_until(watcher, is_alert("resolved")))[-1]
    return raised, resolved


def alerts_in(receiver: WebhookReceiver) -> list[Msg]:
    return [json.loads(request.body) for request in receiver.delivered]


def logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


async def test_each_alert_is_posted_as_its_event_json_signed_in_order(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        receiver = await receiving(nursery, WebhookReceiver())
        server = await notifying(
            nursery, registry, webhook_target(receiver.url()), notify_secret="s3cret"
        )
        raised, resolved = await crash_and_rerun(nursery, server)
        requests = await receiver.wait_for(2)
    assert alerts_in(receiver) == [raised, resolved]  # the event as is, seq included
    for request in requests:
        assert (request.method, request.path) == ("POST", "/hook")
        assert request.headers["content-type"] == "application/json"
        timestamp = request.headers[TIMESTAMP_HEADER.lower()]
        header = request.headers[SIGNATURE_HEADER.lower()]
        assert verify_signature("s3cret", timestamp, request.body, header, now=time.time())
        assert not verify_signature("s3cret", timestamp, request.body + b" ", header, time.time())
        assert not verify_signature("other", timestamp, request.body, header, time.time())
    assert [r.headers[DELIVERY_HEADER.lower()] for r in requests] == [
        f"demo:{server.manager.get_hub('demo').epoch}:{alert['seq']}"  # type: ignore[union-attr]
        for alert in (raised, resolved)
    ]


async def test_without_a_secret_nothing_is_signed(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        receiver = await receiving(nursery, WebhookReceiver())
        server = await notifying(nursery, registry, webhook_target(receiver.url()))
        await crash_and_rerun(nursery, server)
        (first, _) = await receiver.wait_for(2)
    assert SIGNATURE_HEADER.lower() not in first.headers
    assert TIMESTAMP_HEADER.lower() not in first.headers


async def test_a_slow_receiver_within_the_timeout_gets_each_alert_once(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        receiver = await receiving(nursery, WebhookReceiver(default=Answer(200, 0.5)))
        server = await notifying(nursery, registry, webhook_target(receiver.url()))
        raised, resolved = await crash_and_rerun(nursery, server)
        await receiver.wait_for(2)
        await trio.sleep(0.3)  # no retry is on its way
    assert len(receiver.received) == 2
    assert alerts_in(receiver) == [raised, resolved]


async def test_a_failing_receiver_gets_the_alert_once_delivered_and_the_next_after_it(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """500 twice, then 200: the raised alert is tried three times and delivered once, and
    the resolved one is not tried before it was."""
    receiver = WebhookReceiver(answers=deque([Answer(500), Answer(500)]))
    with trio.fail_after(NETWORK_TIMEOUT):
        await receiving(nursery, receiver)
        server = await notifying(nursery, registry, webhook_target(receiver.url("/t0ken-path")))
        raised, resolved = await crash_and_rerun(nursery, server)
        await receiver.wait_for(2)
    statuses = [(json.loads(r.body)["state"], r.status) for r in receiver.received]
    assert statuses == [("raised", 500), ("raised", 500), ("raised", 200), ("resolved", 200)]
    assert alerts_in(receiver) == [raised, resolved]
    assert len({r.headers[DELIVERY_HEADER.lower()] for r in receiver.received[:3]}) == 1
    text = logged(caplog)
    assert "try 2 failed (HTTP 500)" in text and "delivered at try 3" in text
    assert "t0ken-path" not in text  # a webhook's path is its credential


async def test_a_hanging_receiver_is_given_up_on_at_the_timeout_and_tried_again(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = WebhookReceiver(answers=deque([HANG]))
    with trio.fail_after(NETWORK_TIMEOUT):
        await receiving(nursery, receiver)
        server = await notifying(
            nursery, registry, webhook_target(receiver.url()), notify_timeout=0.5
        )
        started = trio.current_time()
        raised, resolved = await crash_and_rerun(nursery, server)
        await receiver.wait_for(2)
        took = trio.current_time() - started
    assert [r.status for r in receiver.received] == [None, 200, 200]
    assert alerts_in(receiver) == [raised, resolved]
    assert "no answer within 0.5 s" in logged(caplog)
    assert took >= 0.5


async def test_a_refusing_receiver_loses_that_alert_only_and_says_so(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 404 is not retried (a wrong URL stays wrong): logged, and the next alert goes."""
    receiver = WebhookReceiver(answers=deque([Answer(404)]))
    with trio.fail_after(NETWORK_TIMEOUT):
        await receiving(nursery, receiver)
        server = await notifying(nursery, registry, webhook_target(receiver.url("/s3cret-hook")))
        _, resolved = await crash_and_rerun(nursery, server)
        await receiver.wait_for(1)
        await trio.sleep(0.3)
    assert [r.status for r in receiver.received] == [404, 200]
    assert alerts_in(receiver) == [resolved]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("refused alert seq" in line and "HTTP 404" in line for line in errors)
    assert "s3cret-hook" not in logged(caplog)


@pytest.mark.parametrize("status", [408, 429, 503])
async def test_408_429_and_5xx_are_retried(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, status: int
) -> None:
    receiver = WebhookReceiver(answers=deque([Answer(status)]))
    with trio.fail_after(NETWORK_TIMEOUT):
        await receiving(nursery, receiver)
        server = await notifying(nursery, registry, webhook_target(receiver.url()))
        raised, resolved = await crash_and_rerun(nursery, server)
        await receiver.wait_for(2)
    assert [r.status for r in receiver.received] == [status, 200, 200]
    assert alerts_in(receiver) == [raised, resolved]


async def test_a_retry_after_answer_is_waited_for(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    """Slack and Discord answer a 429 with Retry-After: the next try waits that long,
    not the backoff's 50 ms."""
    receiver = WebhookReceiver(answers=deque([Answer(429, headers=(("Retry-After", "1"),))]))
    with trio.fail_after(NETWORK_TIMEOUT):
        await receiving(nursery, receiver)
        server = await notifying(nursery, registry, webhook_target(receiver.url()))
        await crash_and_rerun(nursery, server)
        await receiver.wait_for(2)
    first, second, _ = receiver.received
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 1.0


async def test_a_receiver_that_is_down_gets_the_alerts_once_it_is_up(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    receiver = WebhookReceiver()
    with trio.fail_after(NETWORK_TIMEOUT):
        async with trio.open_nursery() as briefly:  # a port, then nobody on it
            port = await briefly.start(receiver.serve)
            briefly.cancel_scope.cancel()
        server = await notifying(nursery, registry, webhook_target(receiver.url()))
        raised, resolved = await crash_and_rerun(nursery, server)
        await trio.sleep(0.3)  # a few refused connections
        receiver.port = port
        await receiving(nursery, receiver)
        await receiver.wait_for(2)
    assert alerts_in(receiver) == [raised, resolved]


async def test_an_ntfy_topic_gets_the_message_and_its_headers(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        receiver = await receiving(nursery, WebhookReceiver())
        url = "ntfy+" + receiver.url("/alerts-topic")
        server = await notifying(nursery, registry, webhook_target(url))
        await crash_and_rerun(nursery, server)
        raised, resolved = await receiver.wait_for(2)
    assert raised.path == "/alerts-topic"
    assert raised.body == b"[demo] error: the run crashed (exit code 3)"
    assert (raised.headers["title"], raised.headers["priority"], raised.headers["tags"]) == (
        "trio-ws demo: run_crashed",
        "high",
        "rotating_light",
    )
    assert resolved.body == b"[demo] resolved: the run crashed (exit code 3)"
    assert (resolved.headers["priority"], resolved.headers["tags"]) == ("low", "white_check_mark")


async def wait_until(condition: Callable[[], bool]) -> None:
    """A file or a log line: nothing to wait on but time."""
    while not condition():  # noqa: ASYNC110
        await trio.sleep(0.02)


def writer_command(path: Path) -> str:
    """A command that appends its stdin to ``path``."""
    script = f"import sys; open({str(path)!r}, 'ab').write(sys.stdin.buffer.read())"
    return shlex.join([sys.executable, "-c", script])


async def test_a_command_gets_each_alert_json_on_stdin_in_order(
    nursery: trio.Nursery, registry: Registry, project_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "alerts.jsonl"
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await notifying(nursery, registry, command_target(writer_command(out)))
        raised, resolved = await crash_and_rerun(nursery, server)
        await wait_until(lambda: out.exists() and out.read_text().count("\n") >= 2)
    assert [json.loads(line) for line in out.read_text().splitlines()] == [raised, resolved]


async def test_a_failing_command_is_retried_then_given_up_with_its_exit_code(
    nursery: trio.Nursery,
    registry: Registry,
    project_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tries = tmp_path / "tries"
    script = f"import sys; open({str(tries)!r}, 'a').write('x'); sys.exit(3)"
    command = command_target(shlex.join([sys.executable, "-c", script]))
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await notifying(nursery, registry, command)
        raised, _ = await crash_and_rerun(nursery, server)
        await wait_until(lambda: logged(caplog).count("given up after") == 2)  # both alerts
    given_up = f"alert seq {raised['seq']} given up after {COMMAND_ATTEMPTS} tries"
    assert f"{given_up} (last: exit code 3)" in logged(caplog)
    assert tries.read_text() == "x" * 2 * COMMAND_ATTEMPTS


async def test_a_hanging_command_is_killed_at_the_bound(
    nursery: trio.Nursery,
    registry: Registry,
    project_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A command that never ends (nor does the child it started) is killed, its whole
    process group, at --notify-timeout, and each try counts."""
    started = tmp_path / "started"
    script = f"sleep 60 & echo $! >> {shlex.quote(str(started))}; wait"
    command = command_target(shlex.join(["sh", "-c", script]))
    with trio.fail_after(NETWORK_TIMEOUT):
        server = await notifying(nursery, registry, command, notify_timeout=0.3)
        begun = trio.current_time()
        await crash_and_rerun(nursery, server)
        await wait_until(lambda: logged(caplog).count("given up after") == 2)  # both alerts
        took = trio.current_time() - begun
    assert "killed after 0.3 s" in logged(caplog)
    sleepers = [int(pid) for pid in started.read_text().split()]
    assert len(sleepers) == 2 * COMMAND_ATTEMPTS
    assert all(gone(pid) for pid in sleepers)  # the command's children died with it
    assert took < 2 * COMMAND_ATTEMPTS * 0.3 + 3


def gone(pid: int) -> bool:
    """No such process, or only its zombie (killed, not yet reaped by init)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status
