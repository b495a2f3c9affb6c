"""`read_request_head` and responses over in-memory streams.

Each test writes real HTTP bytes into one end of `trio.testing.memory_stream_pair`
and reads them with the server's code from the other, so chunking and EOF
behave as they do on a socket (a receive returns at most what was asked for).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import h11
import pytest
import trio
import trio.testing

from trio_ws.net.httpio import (
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    BadRequest,
    RequestHead,
    discard_body,
    read_request_head,
    send_json,
    send_response,
)

Send = Callable[[trio.abc.Stream, h11.Connection], Awaitable[None]]


def request(target: str = "/", *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1:8888", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def head_of_size(size: int) -> bytes:
    """A complete request head of exactly ``size`` bytes, padded in one header."""
    bare = len(request("/", "X-Pad: "))
    assert size >= bare
    return request("/", "X-Pad: " + "a" * (size - bare))


async def parse(data: bytes, max_bytes: int = MAX_HEAD_BYTES) -> RequestHead | None:
    """The head read from a stream that holds ``data`` and then EOF."""
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(data)
    await client.send_eof()
    return await read_request_head(server, max_bytes)


async def parse_ok(data: bytes) -> RequestHead:
    head = await parse(data)
    assert head is not None
    return head


async def response_to(send: Send) -> tuple[h11.Response, bytes]:
    """Run ``send(stream, connection)`` after a GET and read the response with an h11 client."""
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(request("/"))
    head = await read_request_head(server)
    assert head is not None
    await send(server, head.connection)
    await server.aclose()
    reader = h11.Connection(h11.CLIENT)
    reader.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    response: h11.Response | None = None
    body = b""
    while True:
        event = reader.next_event()
        if event is h11.NEED_DATA:
            reader.receive_data(bytes(await client.receive_some(4096)))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
        else:
            raise AssertionError(f"unexpected {event!r} before the end of the response")
    assert response is not None
    return response, body


# -- read_request_head: what it parses ------------------------------------------


async def test_method_target_and_path_are_parsed() -> None:
    head = await parse_ok(request("/ws/projects/demo?since=4&epoch=ab", method="GET"))
    assert (head.method, head.target, head.path) == (
        "GET",
        "/ws/projects/demo?since=4&epoch=ab",
        "/ws/projects/demo",
    )


async def test_a_released_head_holds_no_headers_query_or_connection_of_its_own() -> None:
    """What a websocket open for hours keeps of its request once the upgrade is done."""
    first = await parse_ok(request("/ws/projects/demo?backlog=5"))
    second = await parse_ok(request("/ws/projects/other?backlog=9"))
    connection = first.connection
    first.release()
    second.release()
    assert (first.headers, first.query) == ({}, {})
    assert first.connection is not connection
    assert first.connection is second.connection  # one shared stand-in, never used
    assert first.path == "/ws/projects/demo"


async def test_query_values_are_decoded_and_the_last_repeat_wins() -> None:
    head = await parse_ok(request("/x?token=a%2Bb&backlog=1&backlog=7"))
    assert head.query == {"token": "a+b", "backlog": "7"}


async def test_path_keeps_its_percent_encoding() -> None:
    """The server decodes the project name itself, after matching the path."""
    head = await parse_ok(request("/ws/projects/demo%0A"))
    assert head.path == "/ws/projects/demo%0A"


async def test_header_names_are_lowercased_and_lookup_ignores_case() -> None:
    head = await parse_ok(request("/", "X-Custom-Thing: Value One", "Origin: http://a.test"))
    assert head.headers["x-custom-thing"] == "Value One"
    assert head.header("X-CUSTOM-THING") == "Value One"
    assert head.header("origin") == "http://a.test"
    assert head.header("absent") is None


@pytest.mark.parametrize(
    ("cookie", "name", "expected"),
    [
        ("trio_ws_token=abc", "trio_ws_token", "abc"),
        ("theme=dark; trio_ws_token=abc; lang=en", "trio_ws_token", "abc"),
        ("theme=dark;trio_ws_token=abc", "trio_ws_token", "abc"),
        ("trio_ws_token=a=b=c", "trio_ws_token", "a=b=c"),
        ("xtrio_ws_token=abc", "trio_ws_token", None),
        ("theme=dark", "trio_ws_token", None),
        ("trio_ws_token=", "trio_ws_token", ""),
    ],
)
async def test_cookie_returns_the_named_value(cookie: str, name: str, expected: str | None) -> None:
    head = await parse_ok(request("/", f"Cookie: {cookie}"))
    assert head.cookie(name) == expected


async def test_cookie_without_a_cookie_header_is_none() -> None:
    head = await parse_ok(request("/"))
    assert head.cookie("trio_ws_token") is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (("Upgrade: websocket", "Connection: Upgrade"), True),
        (("Upgrade: WebSocket", "Connection: Upgrade"), True),
        (("Upgrade: h2c", "Connection: Upgrade"), False),
        ((), False),
    ],
)
async def test_is_websocket_follows_the_upgrade_header(
    headers: tuple[str, ...], expected: bool
) -> None:
    head = await parse_ok(request("/ws/projects/demo", *headers))
    assert head.is_websocket is expected


async def test_bytes_after_the_head_are_kept_for_the_websocket() -> None:
    """Bytes pipelined after the head (an early websocket frame) belong to the websocket."""
    data = request("/ws/projects/demo", "Upgrade: websocket") + b"\x81\x02hi"
    head = await parse_ok(data)
    assert head.connection.trailing_data == (b"\x81\x02hi", False)


async def test_a_head_sent_one_byte_at_a_time_is_assembled() -> None:
    data = request("/healthz", "Accept: */*")
    client, server = trio.testing.memory_stream_pair()
    heads: list[RequestHead | None] = []

    async def reader() -> None:
        heads.append(await read_request_head(server))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for byte in data:
            await client.send_all(bytes([byte]))
            await trio.testing.wait_all_tasks_blocked()
    assert len(heads) == 1 and heads[0] is not None
    assert heads[0].path == "/healthz"


# -- read_request_head: EOF, garbage, size ----------------------------------------


async def test_immediate_eof_is_none() -> None:
    assert await parse(b"") is None


async def test_eof_in_the_middle_of_a_head_is_a_bad_request() -> None:
    with pytest.raises(BadRequest) as caught:
        await parse(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS ClientHello
        b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["garbage", "tls", "header-without-colon", "two-hosts", "control-char-in-target"],
)
async def test_malformed_heads_are_bad_requests(data: bytes) -> None:
    with pytest.raises(BadRequest) as caught:
        await parse(data)
    assert caught.value.status == 400


async def test_a_bad_request_can_still_be_answered() -> None:
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(b"GARBAGE\r\n\r\n")
    with pytest.raises(BadRequest) as caught:
        await read_request_head(server)
    await send_response(server, caught.value.connection, 400, b"bad\n")
    answer = await client.receive_some(4096)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert answer.endswith(b"\r\n\r\nbad\n")


async def test_a_head_of_exactly_the_limit_is_read() -> None:
    head = await parse(head_of_size(MAX_HEAD_BYTES))
    assert head is not None


@pytest.mark.parametrize(
    "size",
    [MAX_HEAD_BYTES + 1, MAX_HEAD_BYTES + 2000, MAX_HEAD_BYTES + 4095, 4 * MAX_HEAD_BYTES],
)
async def test_a_head_over_the_limit_is_431(size: int) -> None:
    """Also when the last receive completes the head: the cap is on the head, not the buffer."""
    with pytest.raises(BadRequest) as caught:
        await parse(head_of_size(size))
    assert caught.value.status == 431


async def test_many_small_headers_over_the_limit_are_431() -> None:
    headers = [f"X-Header-{i}: {'v' * 90}" for i in range(200)]
    with pytest.raises(BadRequest) as caught:
        await parse(request("/", *headers))
    assert caught.value.status == 431


async def test_a_smaller_limit_is_honoured() -> None:
    with pytest.raises(BadRequest) as caught:
        await parse(head_of_size(200), max_bytes=199)
    assert caught.value.status == 431


# -- responses ------------------------------------------------------------------


async def test_send_response_sends_status_headers_and_body() -> None:
    async def send(stream: trio.abc.Stream, connection: h11.Connection) -> None:
        await send_response(
            stream, connection, 426, b"upgrade\n", extra_headers=[("upgrade", "websocket")]
        )

    response, body = await response_to(send)
    headers = {name.decode(): value.decode() for name, value in response.headers}
    assert (response.status_code, response.reason, body) == (426, b"Upgrade Required", b"upgrade\n")
    assert headers["upgrade"] == "websocket"
    assert headers["connection"] == "close"
    assert headers["content-length"] == "8"
    assert headers["content-type"] == "text/plain; charset=utf-8"


async def test_send_json_sends_compact_json() -> None:
    async def send(stream: trio.abc.Stream, connection: h11.Connection) -> None:
        await send_json(stream, connection, 503, {"error": "registry gone", "n": [1, 2]})

    response, body = await response_to(send)
    headers = {name.decode(): value.decode() for name, value in response.headers}
    assert response.status_code == 503
    assert headers["content-type"] == "application/json"
    assert body == b'{"error":"registry gone","n":[1,2]}'
    assert json.loads(body) == {"error": "registry gone", "n": [1, 2]}


async def test_a_response_to_head_has_headers_but_no_body() -> None:
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(request("/healthz", method="HEAD"))
    head = await read_request_head(server)
    assert head is not None
    await send_response(server, head.connection, 405, b"only GET is served\n")
    await server.aclose()
    answer = b""
    while chunk := await client.receive_some(4096):
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert answer.endswith(b"\r\n\r\n")


# -- request bodies ---------------------------------------------------------------


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"


async def discard(data: bytes, max_bytes: int = MAX_BODY_BYTES) -> int:
    """The size `discard_body` reports for the body that follows a POST head in ``data``."""
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(data)
    await client.send_eof()
    head = await read_request_head(server)
    assert head is not None and head.method == "POST"
    return await discard_body(server, head.connection, max_bytes)


async def test_a_body_is_read_to_its_end_whether_sized_or_chunked() -> None:
    sized = request("/", "Content-Length: 2", method="POST") + b"{}"
    chunks = request("/", "Transfer-Encoding: chunked", method="POST")
    assert await discard(sized) == 2
    assert await discard(chunks + chunked(b"ab", b"cde")) == 5
    assert await discard(request("/", method="POST")) == 0


async def test_a_chunked_body_over_the_cap_is_413_while_it_is_read() -> None:
    chunks = request("/", "Transfer-Encoding: chunked", method="POST")
    with pytest.raises(BadRequest) as caught:
        await discard(chunks + chunked(b"a" * 60, b"b" * 60), max_bytes=100)
    assert caught.value.status == 413


async def test_a_body_cut_short_is_a_bad_request() -> None:
    with pytest.raises(BadRequest) as caught:
        await discard(request("/", "Content-Length: 10", method="POST") + b"{}")
    assert caught.value.status == 400
