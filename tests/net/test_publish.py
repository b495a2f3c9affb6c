"""The producer endpoint over real sockets: auth, exactly-once, 4009, ping timeout.

Its project's grace period and control routing are tests/test_project.py's."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from plain import Msg
from rawws import RawClient, text
from serving import TOKEN, connect, http_get, make_config, receive, receive_until, ws_url
from trio_websocket import ConnectionClosed, WebSocketConnection, connect_websocket_url

from trio_ws.clients.run_view import parse_timestamp
from trio_ws.core.protocol import MAX_SCREENSHOT_BYTES
from trio_ws.data.registry import Registry
from trio_ws.net.server import Server, serve

TIMEOUT = 10


async def producer(
    nursery: trio.Nursery,
    server: Server,
    producer_id: str = "p1",
    stream: str = "agent",
    project: str = "demo",
    token: str = TOKEN,
) -> tuple[WebSocketConnection, int]:
    """Connect a producer and say hello; returns the connection and welcome.acked."""
    ws = await connect_websocket_url(
        nursery,
        ws_url(server, f"/ws/projects/{project}/publish"),
        extra_headers=[(b"authorization", f"Bearer {token}".encode())],
    )
    await ws.send_message(json.dumps({"type": "hello", "producer": producer_id, "stream": stream}))
    welcome = await receive(ws)
    assert welcome["type"] == "welcome"
    return ws, welcome["acked"]


async def send(ws: WebSocketConnection, message: dict[str, Any]) -> None:
    await ws.send_message(json.dumps(message))


async def wait_acked(ws: WebSocketConnection, pseq: int) -> None:
    await receive_until(ws, lambda m: m["type"] == "ack" and m["pseq"] >= pseq)


def logs(messages: list[dict[str, Any]]) -> list[str]:
    return [m["line"] for m in messages if m["type"] == "log"]


async def snapshot_logs(nursery: trio.Nursery, server: Server) -> list[str]:
    """The log lines a fresh subscriber is given (the held backlog, up to 1000).

    The snapshot is sent before anything queued for the subscriber, so a
    pong marks its end.
    """
    ws = await connect(nursery, server, backlog=1000)
    await send(ws, {"type": "ping"})
    seen = await receive_until(ws, lambda m: m["type"] == "pong")
    await ws.aclose()
    return logs(seen)


UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version": "13",
}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": f"Basic {TOKEN}"}, 401),
        ({"Authorization": f"Bearer {TOKEN}", "Origin": "http://127.0.0.1"}, 403),
    ],
)
async def test_producer_handshake_refusals(
    server: Server, project_dir: Path, headers: dict[str, str], status: int
) -> None:
    with trio.fail_after(TIMEOUT):
        got, _, _ = await http_get(server, "/ws/projects/demo/publish", {**UPGRADE, **headers})
    assert got == status


async def test_lines_and_status_reach_subscribers_in_order(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        watcher = await connect(nursery, server)
        await receive_until(watcher, lambda m: m["type"] == "dev_server_status")
        ws, acked = await producer(nursery, server)
        assert acked == 0
        await send(ws, {"type": "status", "pseq": 1, "status": "running"})
        await send(ws, {"type": "lines", "first": 2, "lines": ["one", "two", ""]})
        await send(ws, {"type": "status", "pseq": 5, "status": "stopped", "exit_code": 0})
        await wait_acked(ws, 5)
        seen = await receive_until(
            watcher, lambda m: m["type"] == "agent_status" and m["status"] == "stopped"
        )
    statuses = [m["status"] for m in seen if m["type"] == "agent_status"]
    assert statuses == ["running", "stopped"]
    assert logs(seen) == ["one", "two", "", "[trio-ws] process exited with code 0"]
    seqs = [m["seq"] for m in seen if "seq" in m]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def seconds(timestamp: str) -> float:
    parsed = parse_timestamp(timestamp)
    assert parsed is not None, timestamp
    return parsed


async def test_lines_keep_the_time_they_were_read_by_the_producers_clock(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    """Held through an outage, lines keep their own time, not the delivery's (issue 24
    item 2); ``sent`` corrects for a producer clock an hour behind; a time from the
    future is now, and the log never goes back in time."""
    skew = -3600.0
    with trio.fail_after(TIMEOUT):
        watcher = await connect(nursery, server)
        await receive_until(watcher, lambda m: m["type"] == "dev_server_status")
        ws, _ = await producer(nursery, server)
        now = time.time() + skew  # the producer's clock
        await send(
            ws, {"type": "status", "pseq": 1, "status": "running", "at": now - 90, "sent": now}
        )
        at = [now - 60, now - 30, now + 500, now - 45]
        message = {"type": "lines", "first": 2, "lines": ["a", "b", "future", "back"]}
        await send(ws, message | {"at": at, "sent": now})
        await wait_acked(ws, 5)
        seen = await receive_until(watcher, lambda m: m.get("line") == "back")
        received = time.time()
    running = next(m for m in seen if m.get("status") == "running")
    dated = {m["line"]: seconds(m["timestamp"]) for m in seen if m["type"] == "log"}
    assert abs(seconds(running["timestamp"]) - (received - 90)) < 5
    assert abs(dated["a"] - (received - 60)) < 5 and abs(dated["b"] - (received - 30)) < 5
    assert dated["b"] < dated["future"] <= received
    assert dated["back"] == dated["future"]  # not before the line logged before it


async def test_malformed_times_are_said_and_the_lines_still_applied(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        watcher = await connect(nursery, server)
        await receive_until(watcher, lambda m: m["type"] == "dev_server_status")
        ws, _ = await producer(nursery, server)
        await send(ws, {"type": "lines", "first": 1, "lines": ["x"], "at": ["soon"], "sent": 1.0})
        warning = await receive_until(ws, lambda m: m["type"] == "warning")
        await wait_acked(ws, 1)
        await receive_until(watcher, lambda m: m.get("line") == "x")
    assert "dated on arrival instead" in warning[-1]["content"]


async def test_resent_batches_are_not_applied_twice(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        ws, _ = await producer(nursery, server)
        await send(ws, {"type": "lines", "first": 1, "lines": ["a", "b"]})
        await wait_acked(ws, 2)
        await ws.aclose()
        again, acked = await producer(nursery, server)
        assert acked == 2
        # A producer that lost the ack resends from its oldest unacked item.
        await send(again, {"type": "lines", "first": 1, "lines": ["a", "b", "c"]})
        await send(again, {"type": "lines", "first": 3, "lines": ["c", "d"]})
        await wait_acked(again, 4)
        assert await snapshot_logs(nursery, server) == ["a", "b", "c", "d"]


async def test_pseq_gap_is_refused_with_a_warning(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        ws, _ = await producer(nursery, server)
        await send(ws, {"type": "lines", "first": 1, "lines": ["first"]})
        await send(ws, {"type": "lines", "first": 5, "lines": ["too far"]})
        warning = await receive_until(ws, lambda m: m["type"] == "warning")
        assert "pseq gap: expected 2, got 5" in warning[-1]["content"]
        await send(ws, {"type": "lines", "first": 2, "lines": ["second"]})
        await wait_acked(ws, 2)
        assert await snapshot_logs(nursery, server) == ["first", "second"]


async def test_unknown_producer_starts_at_its_oldest_unacked_item(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    """After a server restart the producer resends from where the old server acked."""
    with trio.fail_after(TIMEOUT):
        ws, acked = await producer(nursery, server, producer_id="survivor")
        assert acked == 0
        await send(ws, {"type": "lines", "first": 166, "lines": ["line 166", "line 167"]})
        await wait_acked(ws, 167)
        assert await snapshot_logs(nursery, server) == ["line 166", "line 167"]


async def test_malformed_producer_messages_get_warnings_and_lose_nothing(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        ws, _ = await producer(nursery, server)
        await ws.send_message("not json")
        assert (await receive(ws))["content"] == "message is not valid JSON"
        await send(ws, {"type": "lines", "first": 1, "lines": ["ok", 7]})
        assert (await receive(ws))["content"] == "every line must be a string"
        await send(ws, {"type": "status", "pseq": 1, "status": "exploded"})
        assert "unknown agent status 'exploded'" in (await receive(ws))["content"]
        await send(ws, {"type": "lines", "first": 2, "lines": ["still here"]})
        await wait_acked(ws, 2)
        assert await snapshot_logs(nursery, server) == ["still here"]


async def test_second_producer_on_a_live_stream_gets_4009(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        await producer(nursery, server, producer_id="first")
        intruder = await connect_websocket_url(
            nursery,
            ws_url(server, "/ws/projects/demo/publish"),
            extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())],
        )
        await send(intruder, {"type": "hello", "producer": "second", "stream": "agent"})
        assert await receive(intruder) == {
            "type": "error",
            "content": "stream already has a producer",
        }
        with pytest.raises(ConnectionClosed) as closed:
            await intruder.get_message()
        assert closed.value.reason is not None and closed.value.reason.code == 4009
        # The dev stream is a different slot.
        await producer(nursery, server, producer_id="second", stream="dev")
        assert server.manager.producer_count == 2


async def test_same_producer_reconnecting_replaces_its_stale_connection(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        old, _ = await producer(nursery, server, producer_id="same")
        await send(old, {"type": "lines", "first": 1, "lines": ["x"]})
        await wait_acked(old, 1)
        _, acked = await producer(nursery, server, producer_id="same")
        assert acked == 1
        with pytest.raises(ConnectionClosed):
            while True:
                await old.get_message()
        assert server.manager.producer_count == 1


async def test_a_producer_that_answers_no_ping_is_dropped_and_frees_its_stream(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    """A half-open producer does not hold its stream (PROTOCOL.md 4.2, issue 9 item 16):
    dropped after the ping timeout, then the grace period applies as for any loss."""
    config = make_config(registry, producer_ping_timeout=0.5, producer_grace=0.3)
    with trio.fail_after(TIMEOUT):
        server: Server = await nursery.start(serve, config)
        watcher = await connect(nursery, server)
        silent = await RawClient.connect(
            server.port, "/ws/projects/demo/publish", f"Authorization: Bearer {TOKEN}"
        )
        await silent.send(text({"type": "hello", "producer": "half-open", "stream": "agent"}))
        await silent.message("welcome")
        await silent.send(text({"type": "status", "pseq": 1, "status": "running"}))
        # From here on it reads nothing and answers no ping, like a vanished host.
        seen = await receive_until(
            watcher, lambda m: m["type"] == "agent_status" and m["status"] == "crashed"
        )
        _, acked = await producer(nursery, server, producer_id="replacement")
    assert [m["status"] for m in seen if m["type"] == "agent_status"][-2:] == [
        "running",
        "crashed",
    ]
    assert [m["source"] for m in seen if m["type"] == "warning"] == ["producer"]
    assert logs(seen)[-1] == "[trio-ws] producer lost"
    assert acked == 0


async def test_secrets_published_raw_never_leave_unredacted(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    secrets = [
        "export ANTHROPIC_API_KEY=sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
        "DATABASE_URL=postgres://app:hunter2@db.local:5432/app",
    ]
    with trio.fail_after(TIMEOUT):
        watcher = await connect(nursery, server)
        await receive_until(watcher, lambda m: m["type"] == "dev_server_status")
        ws, _ = await producer(nursery, server)
        await send(ws, {"type": "lines", "first": 1, "lines": secrets})
        await send(ws, {"type": "lines", "first": 3, "lines": ["done"]})
        raw: list[str] = []
        while not raw or '"done"' not in raw[-1]:
            message = await watcher.get_message()
            assert isinstance(message, str)
            raw.append(message)
    wire = "".join(raw)
    assert "hunter2" not in wire and "AbCdEfGhIjKlMnOp" not in wire
    assert "[REDACTED]" in wire


async def subscriber_with_token(nursery: trio.Nursery, server: Server) -> WebSocketConnection:
    ws = await connect(nursery, server, token=TOKEN)
    await receive_until(ws, lambda m: m["type"] == "dev_server_status")
    return ws


async def control(ws: WebSocketConnection, action: str) -> None:
    await send(ws, {"type": "control", "action": action})


async def test_control_without_token_never_reaches_the_producer(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        ws, _ = await producer(nursery, server)
        await send(ws, {"type": "status", "pseq": 1, "status": "running"})
        await wait_acked(ws, 1)
        anonymous = await connect(nursery, server)
        await control(anonymous, "stop")
        reply = await receive_until(anonymous, lambda m: m["type"] == "warning")
        assert reply[-1]["content"] == "control needs the server token"
        await send(ws, {"type": "lines", "first": 2, "lines": ["x"]})
        after = await receive_until(ws, lambda m: m["type"] == "ack" and m["pseq"] >= 2)
        assert all(m["type"] != "control" for m in after)


async def publish_once(nursery: trio.Nursery, server: Server, producer_id: str, count: int) -> int:
    """Connect as ``producer_id``, send ``count`` lines after what was applied, close;
    returns the welcome's ``acked``. A normal close comes after the lines are applied."""
    ws, acked = await producer(nursery, server, producer_id)
    if count:
        await send(ws, {"type": "lines", "first": acked + 1, "lines": ["x"] * count})
    await ws.aclose()
    return acked


async def test_applied_pseqs_are_kept_for_the_most_recently_used_producer_ids_only(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    """Every run of `trio-ws run` is a new producer id: the server remembers the last
    1024 it used, not every one it ever saw, and a recent one still resumes right."""
    with trio.fail_after(60):
        assert await publish_once(nursery, server, "oldest", 3) == 0
        slot = server.manager.projects["demo"].slots["agent"]
        assert await publish_once(nursery, server, "kept", 5) == 0
        for index in range(600):
            await publish_once(nursery, server, f"run-{index}", 1)
        assert await publish_once(nursery, server, "kept", 0) == 5  # used again: recent now
        for index in range(600, 1100):
            await publish_once(nursery, server, f"run-{index}", 1)
        assert len(slot.ledger.applied) == 1024
        assert await publish_once(nursery, server, "kept", 0) == 5
        assert await publish_once(nursery, server, "run-1099", 0) == 1
        assert await publish_once(nursery, server, "oldest", 0) == 0  # forgotten
    assert len(server.manager.projects["demo"].slots["agent"].ledger.applied) == 1024


async def test_progress_items_reach_subscribers_once_and_resends_are_skipped(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    """A progress item is one pseq item: published as a ``progress`` event, not again
    when a reconnecting producer resends it."""
    item = {"type": "progress", "passing": 3, "in_progress": 1, "total": 8, "needs_human_input": 2}
    with trio.fail_after(TIMEOUT):
        watcher = await connect(nursery, server)
        await receive_until(watcher, lambda m: m["type"] == "dev_server_status")
        ws, _ = await producer(nursery, server)
        await send(ws, {"type": "lines", "first": 1, "lines": ["before"]})
        await send(ws, {**item, "pseq": 2})
        await wait_acked(ws, 2)
        await ws.aclose()
        again, acked = await producer(nursery, server)
        assert acked == 2
        await send(again, {**item, "pseq": 2, "passing": 5})  # a resend: skipped
        await send(again, {"type": "lines", "first": 3, "lines": ["after"]})
        seen = await receive_until(watcher, lambda m: m.get("line") == "after")
    # Between the two connections the server may poll its own (empty) directory.
    ours = [m for m in seen if m["type"] == "progress" and m["total"] == 8]
    assert [(m["passing"], m["in_progress"], m["needs_human_input"]) for m in ours] == [(3, 1, 2)]
    assert ours[0]["percentage"] == 37.5


@pytest.mark.parametrize(
    ("counts", "problem"),
    [
        ({"passing": -1}, "needs an integer 'passing' >= 0, got -1"),
        ({"total": "8"}, "needs an integer 'total' >= 0, got '8'"),
        ({"in_progress": True}, "needs an integer 'in_progress' >= 0, got True"),
        ({"needs_human_input": None}, "needs an integer 'needs_human_input' >= 0, got None"),
        ({"passing": 9}, "'passing' (9) exceeds 'total' (8)"),
        ({"in_progress": 9}, "'in_progress' (9) exceeds 'total' (8)"),
        ({"needs_human_input": 9}, "'needs_human_input' (9) exceeds 'total' (8)"),
    ],
)
async def test_a_bad_progress_item_is_skipped_with_a_warning_and_nothing_lost(
    nursery: trio.Nursery, server: Server, project_dir: Path, counts: dict[str, Any], problem: str
) -> None:
    item = {"type": "progress", "passing": 3, "in_progress": 1, "total": 8, "needs_human_input": 0}
    with trio.fail_after(TIMEOUT):
        ws, _ = await producer(nursery, server)
        await send(ws, {**item, **counts, "pseq": 1})
        warning = await receive(ws)
        await send(ws, {"type": "lines", "first": 2, "lines": ["still here"]})
        await wait_acked(ws, 2)
        hub = server.manager.get_hub("demo")
        assert hub is not None and hub.progress is None  # no subscriber yet: no poll either
        assert await snapshot_logs(nursery, server) == ["still here"]
    assert warning["type"] == "warning"
    assert warning["content"] == f"progress {problem} (item 1 skipped)"


async def test_progress_on_the_dev_stream_is_skipped_with_a_warning(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    item = {"type": "progress", "passing": 1, "in_progress": 0, "total": 1, "needs_human_input": 0}
    with trio.fail_after(TIMEOUT):
        ws, _ = await producer(nursery, server, stream="dev")
        await send(ws, {**item, "pseq": 1})
        warning = await receive(ws)
    assert warning["content"] == "progress comes from the agent stream only (item 1 skipped)"
    hub = server.manager.get_hub("demo")
    assert hub is not None and hub.progress is None


async def test_messages_that_arrived_together_are_one_commit_and_one_write(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    """A producer's burst that the server received in one read is taken in whole before
    anything else runs: one commit and one write per subscriber (issue 11 item 2)."""
    with trio.fail_after(TIMEOUT):
        watcher = await connect(nursery, server)
        await receive_until(watcher, lambda m: m["type"] == "dev_server_status")
        raw = await RawClient.connect(
            server.port, "/ws/projects/demo/publish", f"Authorization: Bearer {TOKEN}"
        )
        await raw.send(text({"type": "hello", "producer": "burst", "stream": "agent"}))
        await raw.message("welcome")
        hub = server.manager.projects["demo"].hub
        assert hub.journal is not None
        commits = hub.journal.stats().commits
        writes = hub.stats.direct_writes
        burst = [{"type": "lines", "first": n, "lines": [f"line {n}"]} for n in range(1, 6)]
        await raw.send(b"".join(text(message) for message in burst))
        seen = await receive_until(watcher, lambda m: m.get("line") == "line 5")
    assert logs(seen) == [f"line {n}" for n in range(1, 6)]
    assert hub.journal.stats().commits == commits + 1
    assert hub.stats.direct_writes == writes + 1


# -- screenshots (issue 19 item 3) ---------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def screenshot(image: bytes = b"tiny", session: str = "coding-5", feature: int = 5) -> Msg:
    return {
        "type": "screenshot",
        "sessionName": session,
        "featureId": feature,
        "imageData": base64.b64encode(PNG_SIGNATURE + image).decode(),
        "timestamp": "2026-12-05T18:00:00.000001Z",
    }


async def running_agent(nursery: trio.Nursery, server: Server) -> WebSocketConnection:
    """An agent producer whose run has coding agent 0 on feature #5."""
    ws, _ = await producer(nursery, server)
    await send(ws, {"type": "status", "pseq": 1, "status": "running"})
    await send(ws, {"type": "lines", "first": 2, "lines": ["Started coding agent for feature #5"]})
    await wait_acked(ws, 2)
    return ws


async def browser_watcher(nursery: trio.Nursery, server: Server) -> WebSocketConnection:
    """A subscriber that asked for screenshots (its pong says the server has read it),
    taking messages as big as a screenshot at its cap."""
    ws = await connect_websocket_url(
        nursery, ws_url(server, "/ws/projects/demo"), max_message_size=2 * MAX_SCREENSHOT_BYTES
    )
    await send(ws, {"type": "browser_view_subscribe"})
    await send(ws, {"type": "ping"})
    await receive_until(ws, lambda m: m["type"] == "pong")
    return ws


def watching(ws_messages: list[Msg]) -> list[bool]:
    return [m["watching"] for m in ws_messages if m["type"] == "screenshots"]


async def test_the_producer_is_told_when_watchers_go_from_none_to_some_and_back(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        ws = await running_agent(nursery, server)
        first = await browser_watcher(nursery, server)
        told = await receive_until(ws, lambda m: m["type"] == "screenshots")
        second = await browser_watcher(nursery, server)
        await send(first, {"type": "browser_view_unsubscribe"})
        await second.aclose()  # leaving counts as unsubscribe
        told += await receive_until(ws, lambda m: m["type"] == "screenshots")
    assert watching(told) == [True, False]


async def test_a_producer_welcomed_while_someone_watches_is_told_at_once(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        await browser_watcher(nursery, server)
        ws, _ = await producer(nursery, server)
        assert await receive(ws) == {"type": "screenshots", "watching": True}


async def test_a_screenshot_reaches_only_the_subscribers_that_asked(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        ws = await running_agent(nursery, server)
        plain = await connect(nursery, server)
        watcher = await browser_watcher(nursery, server)
        await send(ws, screenshot())
        got = (await receive_until(watcher, lambda m: m["type"] == "browser_screenshot"))[-1]
        await send(plain, {"type": "ping"})
        seen = await receive_until(plain, lambda m: m["type"] == "pong")
    assert {key: got[key] for key in ("sessionName", "agentIndex", "agentType", "featureId")} == {
        "sessionName": "coding-5",
        "agentIndex": 0,
        "agentType": "coding",
        "featureId": 5,
    }
    assert got["featureName"] == "Feature #5" and "seq" not in got
    assert [m for m in seen if m["type"] == "browser_screenshot"] == []


async def test_a_late_browser_view_subscribe_gets_the_latest_screenshot_at_once(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(TIMEOUT):
        ws = await running_agent(nursery, server)
        await send(ws, screenshot(b"old"))
        await send(ws, screenshot(b"new"))
        await send(ws, {"type": "lines", "first": 3, "lines": ["after"]})
        await wait_acked(ws, 3)  # the screenshots before it were read
        late = await connect(nursery, server)
        await send(late, {"type": "browser_view_subscribe"})
        got = await receive_until(late, lambda m: m["type"] == "browser_screenshot")
    assert base64.b64decode(got[-1]["imageData"]) == PNG_SIGNATURE + b"new"


async def test_a_screenshot_at_its_cap_is_relayed(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    image = b"\0" * (MAX_SCREENSHOT_BYTES // 4 * 3 - len(PNG_SIGNATURE))
    message = screenshot(image)
    assert len(message["imageData"]) == MAX_SCREENSHOT_BYTES
    with trio.fail_after(TIMEOUT):
        ws = await running_agent(nursery, server)
        watcher = await browser_watcher(nursery, server)
        await send(ws, message)
        got = await receive_until(watcher, lambda m: m["type"] == "browser_screenshot")
    assert got[-1]["imageData"] == message["imageData"]


async def test_an_oversized_screenshot_is_warned_not_relayed_and_the_connection_stays(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    image = b"\0" * (MAX_SCREENSHOT_BYTES // 4 * 3)
    with trio.fail_after(TIMEOUT):
        ws = await running_agent(nursery, server)
        watcher = await browser_watcher(nursery, server)
        await send(ws, screenshot(image))
        warning = await receive_until(ws, lambda m: m["type"] == "warning")
        await send(ws, screenshot(b"small"))
        await send(ws, {"type": "lines", "first": 3, "lines": ["still here"]})
        await wait_acked(ws, 3)
        got = await receive_until(watcher, lambda m: m["type"] == "browser_screenshot")
    assert warning[-1]["source"] == "protocol"
    assert "over the limit" in warning[-1]["content"]
    assert base64.b64decode(got[-1]["imageData"]) == PNG_SIGNATURE + b"small"
    hub = server.manager.get_hub("demo")
    assert hub is not None and hub.screenshots.relayed == 1


BIG = 10**400  # a JSON integer no float can hold


@pytest.mark.parametrize(
    ("at", "sent"),
    [
        ([], 0.0),
        ([0.0, 0.0, 0.0], 0.0),
        ([BIG, BIG], 0.0),
        ([0.0, 0.0], BIG),
        ([-1.0, 0.0], 0.0),  # before 1970
        ([-1e308, 0.0], 1e308),  # corrected, -inf
        ([0.0, 0.0], 2**40),  # corrected, before 1970
    ],
    ids=["fewer", "more", "big-at", "big-sent", "negative", "corrected-inf", "corrected-1969"],
)
async def test_times_that_miscount_or_overflow_are_said_and_the_lines_still_applied(
    nursery: trio.Nursery, server: Server, project_dir: Path, at: list[float], sent: float
) -> None:
    """A bad ``at``/``sent`` pair is a warning and the lines dated on arrival; an int
    too big for a float, or times whose clock correction leaves no real date, closed the
    connection with 1011 (internal error) before."""
    with trio.fail_after(TIMEOUT):
        ws, _ = await producer(nursery, server)
        await send(ws, {"type": "lines", "first": 1, "lines": ["a", "b"], "at": at, "sent": sent})
        warning = await receive_until(ws, lambda m: m["type"] == "warning")
        await send(ws, {"type": "status", "pseq": 3, "status": "running", "at": BIG, "sent": 0})
        await receive_until(ws, lambda m: m["type"] == "warning")
        await send(ws, {"type": "lines", "first": 4, "lines": ["c"]})
        await wait_acked(ws, 4)
        assert await snapshot_logs(nursery, server) == ["a", "b", "c"]
    assert "'at' must list 2 times and 'sent' be a time" in warning[-1]["content"]
