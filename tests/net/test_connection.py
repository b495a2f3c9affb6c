"""trio-ws's own server-side websocket, through real sockets with hand-built frames:
the handshake, bytes that follow it, protocol errors, and bounded writes."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
from pathlib import Path

import pytest
import trio
from rawws import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    TCP_CLOSE,
    RawClient,
    client_frame,
    open_socket,
    tcp_state,
    text,
)
from serving import NETWORK_TIMEOUT, make_config

from trio_ws.data.registry import Registry
from trio_ws.net.server import Server, serve

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="needs Linux TCP_INFO")

STALL = 1.0
LINES = 250


async def subscribed(server: Server, **options: object) -> RawClient:
    """A raw subscriber of ``demo`` that has read its ``hello``."""
    client = await RawClient.connect(server.port, "/ws/projects/demo", **options)  # type: ignore[arg-type]
    assert client.status == 101
    await client.message("hello")
    return client


async def start(nursery: trio.Nursery, registry: Registry, **overrides: object) -> Server:
    server: Server = await nursery.start(serve, make_config(registry, **overrides))
    return server


# -- handshake --------------------------------------------------------------------


async def test_a_frame_in_the_same_write_as_the_upgrade_is_answered(
    server: Server, project_dir: Path
) -> None:
    """Bytes that follow the upgrade request belong to the websocket (issue 9 item 13)."""
    with trio.fail_after(NETWORK_TIMEOUT):
        client = await RawClient.connect(
            server.port, "/ws/projects/demo", first=client_frame(OP_PING, b"early")
        )
        assert client.status == 101
        assert await client.until(OP_PONG) == b"early"


async def test_a_message_in_the_same_write_as_the_upgrade_is_answered(
    server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        client = await RawClient.connect(
            server.port, "/ws/projects/demo", first=text({"type": "ping"})
        )
        assert (await client.message("pong")) == {"type": "pong"}


async def test_offered_compression_is_not_negotiated(server: Server, project_dir: Path) -> None:
    """Pre-encoded frames are only valid without extensions: an offer is ignored."""
    with trio.fail_after(NETWORK_TIMEOUT):
        client = await RawClient.connect(
            server.port,
            "/ws/projects/demo",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
        )
        assert client.status == 101
        assert b"sec-websocket-extensions" not in client.head.lower()
        hello = await client.message("hello")
    assert hello["protocol"] == 1


@pytest.mark.parametrize(
    ("header", "status"),
    [("Sec-WebSocket-Version: 8", 426), ("Connection: keep-alive", 400)],
)
async def test_a_bad_upgrade_is_refused_before_the_websocket(
    server: Server, project_dir: Path, header: str, status: int
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        stream = await open_socket(server.port)
        request = (
            "GET /ws/projects/demo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{header}\r\n"
        )
        if "Version" in header:
            request += "Connection: Upgrade\r\n"
        else:
            request += "Sec-WebSocket-Version: 13\r\n"
        await stream.send_all((request + "\r\n").encode())
        answer = b""
        while chunk := await stream.receive_some(4096):
            answer += chunk
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())


# -- protocol errors get their close frame (issue 9 item 9) -----------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(OP_TEXT, b'{"type":"\xff"}'), 1007),
        (client_frame(OP_TEXT, b"{}", rsv=0b100), 1002),
        (client_frame(OP_TEXT, b"{}", masked=False), 1002),
        (client_frame(OP_PING, b"x" * 126), 1002),
        (client_frame(0x3, b"x"), 1002),
        (client_frame(0xB, b"x"), 1002),
        (client_frame(OP_PING, b"x", fin=False), 1002),
        (client_frame(OP_TEXT, b"a", fin=False) + client_frame(OP_TEXT, b"b"), 1002),
        (client_frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xff\xfe"), 1007),
        (client_frame(OP_CLOSE, b"\x03"), 1002),
        *[
            (client_frame(OP_CLOSE, struct.pack("!H", bad)), 1002)
            for bad in (0, 999, 1004, 1005, 1006, 1016, 2999, 5000, 65535)
        ],
    ],
    ids=[
        "invalid-utf8",
        "rsv1-bit",
        "unmasked",
        "control-over-125",
        "reserved-opcode",
        "reserved-control-opcode",
        "fragmented-ping",
        "new-message-mid-fragment",
        "close-reason-invalid-utf8",
        "close-payload-of-one-byte",
        *(f"close-code-{bad}" for bad in (0, 999, 1004, 1005, 1006, 1016, 2999, 5000, 65535)),
    ],
)
async def test_a_protocol_error_is_closed_with_its_code(
    server: Server, project_dir: Path, frame: bytes, code: int
) -> None:
    """Failing the connection (RFC 6455 7.1.7): the close frame, then the server closes
    TCP at once (7.1.1), without waiting for a reply nothing could parse any more."""
    with trio.fail_after(NETWORK_TIMEOUT):
        client = await subscribed(server)
        await client.send(frame)
        assert await client.close_code() == code
        with trio.fail_after(0.1):
            assert await client.frame() is None


async def test_a_message_over_the_limit_is_closed_1009(server: Server, project_dir: Path) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        client = await subscribed(server)
        await client.send(client_frame(OP_BINARY, b"x" * (64 * 1024 + 1)))
        assert await client.close_code() == 1009


async def test_the_peers_close_is_echoed_and_ends_the_connection(
    server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        client = await subscribed(server)
        await client.send(client_frame(OP_CLOSE, struct.pack("!H", 4321) + b"bye"))
        assert await client.close_code() == 4321
        assert await client.frame() is None


# -- every write is bounded (issue 9 item 4) --------------------------------------


async def wait_all_reset(clients: list[trio.SocketStream]) -> None:
    """Until the server has reset every one of these connections."""
    # The kernel offers no event for it; polling is bounded by the caller's fail_after.
    while any(tcp_state(stream) != TCP_CLOSE for stream in clients):  # noqa: ASYNC110
        await trio.sleep(0.05)


async def test_http_clients_that_read_nothing_are_cut(
    nursery: trio.Nursery, registry: Registry
) -> None:
    server = await start(nursery, registry, stall_timeout=STALL)
    with trio.fail_after(NETWORK_TIMEOUT):
        clients = [await open_socket(server.port, rcvbuf=1024) for _ in range(20)]
        for stream in clients:
            await stream.send_all(b"GET /static/style.css HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await wait_all_reset(clients)


async def test_subscribers_that_flood_pings_and_read_nothing_are_cut_and_unregistered(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    """Pongs go through the bounded write path: a peer that takes none is cut."""
    server = await start(nursery, registry, stall_timeout=STALL)
    hub = (await server.manager.open("demo", project_dir)).hub
    flood = b"".join(client_frame(OP_PING, b"%08d" % i) for i in range(20_000))

    async def ping_and_never_read(client: RawClient) -> None:
        # The server resetting the connection is what this test waits for.
        with contextlib.suppress(trio.BrokenResourceError):
            await client.send(flood)

    with trio.fail_after(NETWORK_TIMEOUT):
        clients = [await subscribed(server, rcvbuf=1024) for _ in range(5)]
        assert hub.subscriber_count == 5
        async with trio.open_nursery() as flooding:
            for client in clients:
                flooding.start_soon(ping_and_never_read, client)
            while hub.subscriber_count:  # noqa: ASYNC110 (server state: no event to wait on)
                await trio.sleep(0.05)
        await wait_all_reset([client.stream for client in clients])


async def test_a_slow_reader_that_keeps_reading_is_not_cut(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    """The bound is 'no progress for the stall timeout', not 'the whole batch within it'."""
    server = await start(nursery, registry, stall_timeout=STALL)
    hub = (await server.manager.open("demo", project_dir)).hub
    with trio.fail_after(NETWORK_TIMEOUT * 2):
        client = await subscribed(server, rcvbuf=64 * 1024)
        hub.feed_lines([f"line {i} " + "y" * 3000 for i in range(LINES)])  # one batch
        started = trio.current_time()
        seen = bytearray(client.buffer)
        while len(lines := _log_lines(seen)) < LINES:
            await trio.sleep(0.3)
            seen += await client.stream.receive_some(64 * 1024)
        elapsed = trio.current_time() - started
    assert elapsed > 2 * STALL  # the batch really took longer than the bound to deliver
    assert hub.stats.aborted == 0
    assert hub.subscriber_count == 1
    assert lines == [f"line {i} " + "y" * 3000 for i in range(LINES)]


def _log_lines(data: bytes | bytearray) -> list[str]:
    return [json.loads(m)["line"] for m in _texts(data) if b'"type":"log"' in m]


def _texts(data: bytes | bytearray) -> list[bytes]:
    """The payloads of the whole unmasked text frames at the start of ``data``."""
    payloads, offset = [], 0
    while offset + 2 <= len(data):
        size, start = data[offset + 1] & 0x7F, offset + 2
        if size >= 126:
            width = 2 if size == 126 else 8
            start += width
            if start > len(data):
                break
            size = int.from_bytes(data[offset + 2 : start], "big")
        if start + size > len(data):
            break
        if data[offset] & 0x0F == OP_TEXT:
            payloads.append(bytes(data[start : start + size]))
        offset = start + size
    return payloads


@pytest.mark.parametrize("after", [1, 4000], ids=["one-message-after", "many-messages-after"])
async def test_a_failed_connection_ends_with_eof_even_with_input_unread(
    server: Server, project_dir: Path, after: int
) -> None:
    """What the peer sent after the bad frame is never read; closing the socket with it
    unread would reset the connection, which can cost the peer the close frame."""
    with trio.fail_after(NETWORK_TIMEOUT):
        client = await subscribed(server)
        await client.send(client_frame(0x3, b"{}") + text({"type": "ping"}) * after)
        assert await client.close_code() == 1002
        with trio.fail_after(0.1):
            assert await client.frame() is None  # EOF, not ECONNRESET
