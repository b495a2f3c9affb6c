"""The fan-out fast path: frame encoding, batched writes, and a guard against bypassing it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import rawws
import trio
import trio.testing
from rawws import RawClient
from serving import NETWORK_TIMEOUT, connect, receive, receive_until
from trio_websocket import WebSocketConnection
from wsproto.frame_protocol import FrameProtocol

from trio_ws.core import protocol
from trio_ws.net import frames
from trio_ws.net.frames import fan_out_frames, frames_of, text_header
from trio_ws.net.server import Server
from trio_ws.net.subscribe import SubscriberSession
from trio_ws.state.fanout import FanOut
from trio_ws.state.history import FLUSH, Outgoing


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 200_000])
def test_text_frame_matches_wsproto(size: int) -> None:
    payload = ("x" * size).encode()
    reference = FrameProtocol(client=False, extensions=[]).send_data(payload.decode(), fin=True)
    assert text_header(size) + payload == reference
    assert frames_of([Outgoing.of({"type": "log", "line": "x" * size})]) == (
        FrameProtocol(client=False, extensions=[]).send_data(
            protocol.encode({"type": "log", "line": "x" * size}), fin=True
        )
    )


def counting(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    """Wrap ``module.name`` so each call is counted; returns the (one-element) counter."""
    calls = [0]
    original: Callable[..., Any] = getattr(module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


async def synced(nursery: trio.Nursery, server: Server) -> WebSocketConnection:
    ws = await connect(nursery, server)
    await ws.send_message('{"type":"ping"}')
    await receive_until(ws, lambda m: m["type"] == "pong")
    return ws


async def test_each_event_is_encoded_once_whatever_the_subscriber_count(
    nursery: trio.Nursery, server: Server, project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The regression guard: one JSON encoding and one frame header per event, not per
    delivery."""
    with trio.fail_after(NETWORK_TIMEOUT):
        hub = (await server.manager.open("demo", project_dir)).hub
        watchers = [await synced(nursery, server) for _ in range(5)]
        json_calls = counting(monkeypatch, protocol, "encode")
        frame_calls = counting(monkeypatch, frames, "text_header")
        hub.feed_lines([f"plain line {i}" for i in range(20)])
        for ws in watchers:
            await receive_until(ws, lambda m: m.get("line") == "plain line 19")
    assert json_calls[0] == 20
    assert frame_calls[0] == 20


async def test_a_commit_is_joined_into_frames_once_for_every_direct_subscriber(
    nursery: trio.Nursery, server: Server, project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fan-out hands every subscriber the same `FanOut`: its frames are joined by the
    first subscriber's write and reused by the others."""
    with trio.fail_after(NETWORK_TIMEOUT):
        hub = (await server.manager.open("demo", project_dir)).hub
        watchers = [await synced(nursery, server) for _ in range(5)]
        await trio.testing.wait_all_tasks_blocked()
        joins = counting(monkeypatch, frames, "frames_of")
        before = hub.stats.direct_writes
        hub.feed_lines([f"joined line {i}" for i in range(20)])  # one commit
        await hub.wait_committed(hub.seq)
        direct = hub.stats.direct_writes - before
        for ws in watchers:
            await receive_until(ws, lambda m: m.get("line") == "joined line 19")
    assert (direct, joins[0]) == (5, 1)


async def test_queued_events_leave_in_one_write(
    nursery: trio.Nursery, server: Server, project_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        hub = (await server.manager.open("demo", project_dir)).hub
        ws = await synced(nursery, server)
        [session] = server.manager._sessions
        assert isinstance(session, SubscriberSession)
        before = session.ws.data_writes
        hub.feed_lines([f"plain line {i}" for i in range(100)])  # no checkpoint in between
        seen = await receive_until(ws, lambda m: m.get("line") == "plain line 99")
    assert [m["line"] for m in seen if m["type"] == "log"] == [
        f"plain line {i}" for i in range(100)
    ]
    assert session.ws.data_writes - before == 1  # by either path: direct or the send task


async def test_websocket_pings_and_close_stay_correct_amid_batched_frames(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    """Pongs and the close frame share the connection's one write path with our batches."""
    with trio.fail_after(NETWORK_TIMEOUT):
        hub = (await server.manager.open("demo", project_dir)).hub
        ws = await synced(nursery, server)
        received: list[dict[str, Any]] = []

        async def read_all() -> None:
            while len(received) < 3000:
                received.append(await receive(ws))

        async with trio.open_nursery() as inner:
            inner.start_soon(read_all)
            for round_ in range(30):
                hub.feed_lines([f"r{round_} line {i} " + "y" * 300 for i in range(100)])
                await ws.ping(f"p{round_}".encode())  # answered by the server's reader task
        seqs = [m["seq"] for m in received if m["type"] == "log"]
        assert seqs == sorted(seqs) and len(seqs) == 3000
        await server.shutdown(1001)
    assert ws.closed is not None and ws.closed.code == 1001


async def test_writes_the_kernel_takes_whole_cost_no_wait(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    """The fast path: small batches to a reading peer never take the awaited route."""
    with trio.fail_after(NETWORK_TIMEOUT):
        hub = (await server.manager.open("demo", project_dir)).hub
        ws = await synced(nursery, server)
        [session] = server.manager._sessions
        assert isinstance(session, SubscriberSession)
        writer = session.ws
        before = writer.immediate
        for round_ in range(10):
            hub.feed_lines([f"round {round_}"])
            await receive_until(ws, lambda m, r=round_: m.get("line") == f"round {r}")
    assert writer.immediate - before == 10


async def test_a_peer_that_stops_reading_stalls_the_writer_not_the_server(
    nursery: trio.Nursery, registry: Any, project_dir: Path
) -> None:
    """What the kernel won't take is awaited under the stall timeout, then given up."""
    from serving import make_config

    from trio_ws.net.server import serve

    with trio.fail_after(NETWORK_TIMEOUT):
        server = await nursery.start(serve, make_config(registry, stall_timeout=0.3))
        hub = (await server.manager.open("demo", project_dir)).hub
        stalled = await trio.open_tcp_stream("127.0.0.1", server.port)
        await stalled.send_all(
            b"GET /ws/projects/demo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        greeting = b""
        while b'"type":"hello"' not in greeting:  # subscribed; from now on it never reads
            greeting += await stalled.receive_some(4096)
        while hub.stats.aborted == 0:
            hub.feed_lines(["z" * 4000] * 50)
            await trio.sleep(0.01)
        # Its session ends once its reader sees the reset; a counter has no event to wait on.
        while hub.subscriber_count:  # noqa: ASYNC110
            await trio.sleep(0.01)


def test_frame_payload_is_the_encoded_json() -> None:
    message = {"type": "log", "line": "héllo ✓", "timestamp": "t", "seq": 1}
    frame = frames_of([Outgoing.of(message)])
    assert json.loads(frame[2:].decode()) == message


# -- the direct path: the fan-out writes to a socket that takes the bytes now ----------------


async def test_a_reading_subscriber_is_written_by_the_fan_out_with_no_send_task(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    """Each commit goes straight to the socket, one write per subscriber; an idle (or
    reading) subscriber holds no send task."""
    with trio.fail_after(NETWORK_TIMEOUT):
        hub = (await server.manager.open("demo", project_dir)).hub
        watchers = [await synced(nursery, server) for _ in range(3)]
        await trio.testing.wait_all_tasks_blocked()
        idle_tasks = hub.stats.send_tasks
        before = hub.stats.direct_writes
        for round_ in range(5):
            hub.feed_lines([f"direct {round_}"])
            for ws in watchers:
                await receive_until(ws, lambda m, r=round_: m.get("line") == f"direct {r}")
    assert idle_tasks == 0
    assert hub.stats.direct_writes - before == 5 * 3


async def test_what_the_kernel_does_not_take_follows_in_order_with_pongs_between_frames(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    """A direct write the socket takes only part of: the rest is written first by the
    send task, then what was queued meanwhile, and a pong lands between frames."""
    lines = 40
    with trio.fail_after(NETWORK_TIMEOUT):
        hub = (await server.manager.open("demo", project_dir)).hub
        client = await RawClient.connect(server.port, "/ws/projects/demo?backlog=0", rcvbuf=4096)
        await client.message("hello")
        await client.send(rawws.text({"type": "ping"}))
        await client.message("pong")  # subscribed, initial messages out, not reading now
        start = hub.head + 1
        before = hub.stats.direct_writes
        hub.feed_lines(["x" * 30_000 + f" {i}" for i in range(lines)])  # ~1.2 MB, one commit
        await hub.wait_committed(start + lines - 1)
        partly = hub.stats.direct_writes - before
        await trio.testing.wait_all_tasks_blocked()
        writing_the_rest = hub.stats.send_tasks  # woken for the rest, blocked on the socket
        hub.feed_lines(["after the rest"])  # queued behind what the kernel did not take
        await client.send(rawws.client_frame(rawws.OP_PING, b"between"))
        seqs: list[int] = []
        pong = False
        while len(seqs) < lines + 1:
            frame = await client.frame()
            assert frame is not None
            opcode, payload = frame
            if opcode == rawws.OP_PONG:
                pong = payload == b"between"
            elif opcode == rawws.OP_TEXT:
                seqs.append(json.loads(payload)["seq"])
    assert (partly, writing_the_rest) == (1, 1)
    assert seqs == list(range(start, start + lines + 1))
    assert pong


def test_a_flush_wake_up_writes_no_frame() -> None:
    item = Outgoing.of({"type": "log", "line": "x", "seq": 1}, 1)
    assert frames_of([FLUSH, item, FLUSH]) == text_header(len(item.data)) + item.data


def test_a_fan_out_is_joined_once_and_the_next_one_afresh() -> None:
    one = FanOut([Outgoing.of({"type": "log", "line": "a", "seq": 1}, 1)])
    two = FanOut([Outgoing.of({"type": "log", "line": "b", "seq": 2}, 2)])
    first = fan_out_frames(one)
    assert fan_out_frames(one) is first
    assert fan_out_frames(two) == frames_of(two.items) != first
