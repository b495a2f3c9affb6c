"""`Producer` against the real server, and the small helpers of its connection."""

from __future__ import annotations

import json
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
import trio
from plain import Msg
from serving import NETWORK_TIMEOUT, TOKEN, connect, make_config, receive, receive_until, ws_url
from test_outbox import lines_of
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from trio_ws.clients.producer import Producer, publish_url
from trio_ws.clients.supervisor import exit_status
from trio_ws.data.registry import Registry
from trio_ws.net.server import Server, serve

# -- small helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "url"),
    [
        ("http://127.0.0.1:8888", "ws://127.0.0.1:8888/ws/projects/demo/publish"),
        ("https://example.test/", "wss://example.test/ws/projects/demo/publish"),
        ("ws://h:1/prefix/", "ws://h:1/prefix/ws/projects/demo/publish"),
        ("WSS://h", "wss://h/ws/projects/demo/publish"),
    ],
)
def test_publish_url_maps_schemes(server: str, url: str) -> None:
    assert publish_url(server, "demo") == url


@pytest.mark.parametrize("server", ["ftp://h", "127.0.0.1:8888", "http://"])
def test_publish_url_rejects_what_is_not_a_server_url(server: str) -> None:
    with pytest.raises(ValueError, match="server URL"):
        publish_url(server, "demo")


def test_exit_status_maps_signal_deaths_like_a_shell() -> None:
    assert [exit_status(0), exit_status(3), exit_status(-15)] == [0, 3, 143]


# -- Producer against the real server ---------------------------------------------------


def agent_logs(messages: list[dict[str, Any]]) -> list[str]:
    return [message["line"] for message in messages if message["type"] == "log"]


def quiet(_: str) -> None:
    """A report sink for tests where reports are not the subject."""


def producer_for(server: Server, **options: Any) -> Producer:
    url = ws_url(server, "/ws/projects/demo/publish")
    settings: dict[str, Any] = {"report": quiet, "backoff_first": 0.01, "backoff_max": 0.05}
    settings.update(options)
    return Producer(url, TOKEN, "agent", **settings)


def is_status(status: str) -> Any:
    return lambda message: message == {**message, "type": "agent_status", "status": status}


async def receive_run(ws: Any) -> list[dict[str, Any]]:
    """What a subscriber sees from a producer's ``running`` up to its ``stopped``
    (the snapshot's own ``stopped`` comes before and is skipped)."""
    await receive_until(ws, is_status("running"))
    return await receive_until(ws, is_status("stopped"))


async def test_producer_delivers_every_line_once_in_order(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    sent = [f"line {index}" for index in range(600)]  # more than two full batches
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await connect(nursery, server)
        assert (await receive(ws))["type"] == "hello"
        producer = producer_for(server)
        nursery.start_soon(producer.run)
        producer.send_status("running")
        for line in sent:
            producer.send_line(line)
        producer.send_status("stopped", 0)
        seen = await receive_run(ws)
        assert await producer.flush(NETWORK_TIMEOUT) == 0
        await producer.close()
    logs = agent_logs(seen)
    assert logs == [*sent, "[trio-ws] process exited with code 0"]
    assert [m["type"] for m in seen].count("agent_status") == 1


async def test_producer_resends_unacked_items_after_the_server_drops_it(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    """The server closes every producer connection (1011) twice mid-stream; lines still
    arrive once each, in order, and the producer did reconnect and resend."""
    with trio.fail_after(NETWORK_TIMEOUT):
        ws = await connect(nursery, server)
        assert (await receive(ws))["type"] == "hello"
        producer = producer_for(server)
        nursery.start_soon(producer.run)
        await producer.ready.wait()
        producer.send_status("running")
        sent: list[str] = []
        for round_ in range(3):
            for index in range(200):
                line = f"round {round_} line {index}"
                sent.append(line)
                producer.send_line(line)
            await trio.sleep(0.01)  # some of the round is on the wire, unacked
            if round_ < 2:
                drop_producer_connection(nursery, server)
                await producer.wait_connections(round_ + 2)
        producer.send_status("stopped", 0)
        seen = await receive_run(ws)
        assert await producer.flush(NETWORK_TIMEOUT) == 0
        await producer.close()
    assert agent_logs(seen) == [*sent, "[trio-ws] process exited with code 0"]
    assert producer.connections == 3


def item_count(messages: list[Msg]) -> int:
    return sum(len(m["lines"]) if m["type"] == "lines" else m["type"] == "status" for m in messages)


def pseqs(messages: list[Msg]) -> list[int]:
    found = [pseq for pseq, _ in lines_of(messages)]
    found += [m["pseq"] for m in messages if m["type"] == "status"]
    return sorted(found)


async def test_producer_resends_what_follows_welcome_acked_on_the_wire(
    nursery: trio.Nursery,
) -> None:
    """A scripted endpoint: the first connection takes five items and drops without an
    ack; the second says it had applied two. The same producer id comes back and
    resends exactly items 3 to 5."""
    connections: list[list[Msg]] = []

    async def endpoint(request: WebSocketRequest) -> None:
        ws = await request.accept()
        received: list[Msg] = [json.loads(await ws.get_message())]
        connections.append(received)
        acked = 0 if len(connections) == 1 else 2
        await ws.send_message(json.dumps({"type": "welcome", "acked": acked}))
        while item_count(received) < 5 - acked:
            received.append(json.loads(await ws.get_message()))
        if len(connections) == 1:
            await ws.aclose(1011, "scripted drop")
        else:
            await ws.send_message(json.dumps({"type": "ack", "pseq": 5}))
            with suppress(ConnectionClosed):
                await ws.get_message()  # until the producer closes

    with trio.fail_after(NETWORK_TIMEOUT):
        listener = await nursery.start(serve_websocket, endpoint, "127.0.0.1", 0, None)
        url = f"ws://127.0.0.1:{listener.port}/ws/projects/demo/publish"
        producer = Producer(url, TOKEN, "agent", report=quiet, backoff_first=0.01)
        for line in "abcd":
            producer.send_line(line)
        producer.send_status("stopped", 0)
        nursery.start_soon(producer.run)
        assert await producer.flush(NETWORK_TIMEOUT) == 0
        await producer.close()
    first, second = connections
    assert (
        first[0]
        == second[0]
        == {"type": "hello", "producer": producer.producer_id, "stream": "agent"}
    )
    assert pseqs(first[1:]) == [1, 2, 3, 4, 5]
    assert pseqs(second[1:]) == [3, 4, 5]
    assert list(lines_of(second[1:])) == [(3, "c"), (4, "d")]


def drop_producer_connection(nursery: trio.Nursery, server: Server) -> None:
    """Close the live agent producer connection of ``demo`` from the server side.

    In the background: the server's close can wait out its 2 s bound (see report)."""
    session = server.manager.projects["demo"].slots["agent"].session
    assert session is not None
    nursery.start_soon(session.close, 1011, "test drops the producer")


async def test_producer_refused_with_wrong_token_does_not_retry(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    url = ws_url(server, "/ws/projects/demo/publish")
    producer = Producer(url, "wrong-token", "agent", report=quiet, backoff_first=0.01)
    with trio.fail_after(NETWORK_TIMEOUT):
        await producer.run()
    assert producer.connections == 0
    assert producer.refused is not None
    assert "HTTP 401" in str(producer.refused)


async def test_producer_for_unknown_project_is_refused_with_4004(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    url = ws_url(server, "/ws/projects/nosuch/publish")
    producer = Producer(url, TOKEN, "agent", report=quiet, backoff_first=0.01)
    with trio.fail_after(NETWORK_TIMEOUT):
        await producer.run()
    assert "close 4004 (Project not found in registry)" in str(producer.refused)


async def test_second_producer_on_a_live_stream_is_refused_with_4009(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        first = producer_for(server)
        nursery.start_soon(first.run)
        await first.ready.wait()
        second = producer_for(server)
        await second.run()
        await first.close()
    assert first.refused is None
    assert "close 4009 (stream already has a producer)" in str(second.refused)


async def test_producer_retries_until_the_server_is_up(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    """Items queued while nothing listens are delivered once a server appears on that port."""
    reports: list[str] = []
    with trio.fail_after(NETWORK_TIMEOUT):
        async with trio.open_nursery() as probing:  # learn a free port, then free it
            probe: Server = await probing.start(serve, make_config(registry))
            port = probe.port
            probe._cancel.cancel()
        url = f"ws://127.0.0.1:{port}/ws/projects/demo/publish"
        producer = Producer(url, TOKEN, "agent", report=reports.append, backoff_first=0.01)
        producer.send_line("queued while away")
        producer.send_status("stopped", 0)
        nursery.start_soon(producer.run)
        await producer.ready.wait()
        assert not producer.connected
        server: Server = await nursery.start(serve, make_config(registry, port=port))
        # The producer may connect and commit before this subscriber joins: with a
        # backlog the line is in its snapshot then, else it comes live.
        ws = await connect(nursery, server, backlog=10)
        assert await producer.flush(NETWORK_TIMEOUT) == 0
        seen = await receive_until(ws, lambda m: m["type"] == "log")
        await producer.close()
    assert seen[-1]["line"] == "queued while away"
    assert reports[0].startswith(f"no connection to {url}")
    assert any(report.startswith(f"connected to {url} again") for report in reports)


async def test_a_flush_does_not_sleep_through_the_servers_return(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    """After a long outage the backoff has grown (30 s here); the server comes back and
    the producer flushes: it tries again at once and then every FLUSH_RETRY, so its
    items are delivered within the flush's window instead of after the wait."""
    with trio.fail_after(NETWORK_TIMEOUT):
        async with trio.open_nursery() as probing:  # learn a free port, then free it
            probe: Server = await probing.start(serve, make_config(registry))
            port = probe.port
            probe._cancel.cancel()
        url = f"ws://127.0.0.1:{port}/ws/projects/demo/publish"
        producer = Producer(url, TOKEN, "agent", report=quiet, backoff_first=30, backoff_max=30)
        producer.send_line("queued while away")
        producer.send_status("stopped", 0)
        nursery.start_soon(producer.run)
        await producer.ready.wait()  # the first try failed: a 30 s wait began
        await nursery.start(serve, make_config(registry, port=port))
        started = trio.current_time()
        left = await producer.flush(5.0)
        took = trio.current_time() - started
        await producer.close()
    assert left == 0
    assert took < 2.0, took


async def test_flush_reports_what_is_left_when_nothing_listens(
    registry: Registry, project_dir: Path
) -> None:
    url = "ws://127.0.0.1:9/ws/projects/demo/publish"  # discard port: nothing listens
    producer = Producer(url, TOKEN, "agent", report=quiet, backoff_first=0.01)
    producer.send_line("never delivered")
    producer.send_status("stopped", 0)
    with trio.fail_after(NETWORK_TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer.run)
            assert await producer.flush(0.2) == 2
            await producer.close()


async def test_close_gives_up_a_handshake_that_gets_no_answer(nursery: trio.Nursery) -> None:
    """A peer that accepts TCP and never answers the upgrade must not hold `close`
    for the connect timeout (set far beyond the test's bound here)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    accepted = trio.Event()

    async def silent(stream: trio.SocketStream) -> None:
        accepted.set()
        await trio.sleep_forever()

    nursery.start_soon(trio.serve_listeners, silent, listeners)
    url = f"ws://127.0.0.1:{port}/ws/projects/demo/publish"
    producer = Producer(url, TOKEN, "agent", report=quiet, connect_timeout=3600)
    with trio.fail_after(NETWORK_TIMEOUT):
        nursery.start_soon(producer.run)
        await accepted.wait()
        await producer.close()
    assert producer.connections == 0
    assert producer.refused is None


async def test_producer_continues_on_a_restarted_server_that_forgot_it(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    """Everything was acked by the first server; its successor on the same port
    (a lost history) welcomes with 0, learns that the run is running, then gets
    the new items, each once, under the producer's own numbers."""
    reports: list[str] = []
    with trio.fail_after(NETWORK_TIMEOUT):
        async with trio.open_nursery() as first_life:
            first: Server = await first_life.start(serve, make_config(registry))
            url = ws_url(first, "/ws/projects/demo/publish")
            producer = Producer(url, TOKEN, "agent", report=reports.append, backoff_first=0.01)
            nursery.start_soon(producer.run)
            producer.send_status("running")
            for index in range(20):
                producer.send_line(f"before {index}")
            assert await producer.flush(NETWORK_TIMEOUT) == 0
            await first.shutdown(1001)
        second: Server = await nursery.start(serve, make_config(registry, port=first.port))
        ws = await connect(nursery, second)
        assert (await receive(ws))["type"] == "hello"
        await producer.wait_connections(2)
        after = [f"after {index}" for index in range(5)]
        for line in after:
            producer.send_line(line)
        producer.send_status("crashed", 1)
        seen = await receive_until(ws, is_status("crashed"))
        assert await producer.flush(NETWORK_TIMEOUT) == 0
        await producer.close()
    events = [  # the run's events, not the snapshot
        (message["type"], message.get("status", message.get("line")))
        for message in seen
        if "seq" in message and message["type"] in ("agent_status", "log")
    ]
    assert events == [
        ("agent_status", "running"),
        *(("log", line) for line in after),
        ("log", "[trio-ws] process exited with code 1"),
        ("agent_status", "crashed"),
    ]
    assert producer.outbox.last_pseq == 21 + 1 + 5 + 1
    assert not any("no record" in report for report in reports)
