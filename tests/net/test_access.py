"""Who may read, control and produce, decided from real parsed request heads."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_ws.net.access import (
    TOKEN_COOKIE,
    bearer_token,
    carries_token,
    may_control_without_token,
    producer_refusal,
    project_api_refusal,
)
from trio_ws.net.httpio import RequestHead, read_request_head

TOKEN = "s3cret-token"


async def head(target: str = "/", **headers: str) -> RequestHead:
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1:8888"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    client, server = trio.testing.memory_stream_pair()
    await client.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
    await client.send_eof()
    parsed = await read_request_head(server)
    assert parsed is not None
    return parsed


@pytest.mark.parametrize(
    ("value", "token"),
    [
        (f"Bearer {TOKEN}", TOKEN),
        (f"bearer   {TOKEN} ", TOKEN),
        (f"Basic {TOKEN}", None),
        ("Bearer", ""),
    ],
)
async def test_the_bearer_header_is_read_in_one_place(value: str, token: str | None) -> None:
    assert bearer_token(await head(Authorization=value)) == token


async def test_a_reader_may_offer_the_token_in_the_header_the_cookie_or_the_url() -> None:
    assert carries_token(await head(Authorization=f"Bearer {TOKEN}"), TOKEN)
    assert carries_token(await head(Cookie=f"a=1; {TOKEN_COOKIE}={TOKEN}"), TOKEN)
    assert carries_token(await head(f"/?token={TOKEN}"), TOKEN)
    assert not carries_token(await head(f"/?token={TOKEN}x"), TOKEN)
    assert not carries_token(await head(), TOKEN)


async def test_a_producer_needs_the_bearer_token_and_no_origin() -> None:
    good = await head(Authorization=f"Bearer {TOKEN}")
    assert producer_refusal(good, TOKEN) is None
    from_url = await head(f"/?token={TOKEN}")
    assert producer_refusal(from_url, TOKEN) == (
        401,
        "producer needs Authorization: Bearer <token>",
    )
    browser = await head(Authorization=f"Bearer {TOKEN}", Origin="http://127.0.0.1:8888")
    assert producer_refusal(browser, TOKEN) == (403, "producers must not send an Origin header")


async def refusal(request: RequestHead, *, control: bool, readers: bool = False) -> object:
    return project_api_refusal(
        request,
        token=TOKEN,
        allow_origins=frozenset(),
        readers_need_token=readers,
        control_action=control,
    )


async def test_reads_need_the_token_only_when_readers_do() -> None:
    assert await refusal(await head(), control=False) is None
    assert await refusal(await head(), control=False, readers=True) == (401, "Unauthorized")


async def test_control_takes_the_token_from_the_header_or_cookie_never_the_url() -> None:
    own = {"Origin": "http://127.0.0.1:8888"}
    assert await refusal(await head(**own, Authorization=f"Bearer {TOKEN}"), control=True) is None
    assert await refusal(await head(**own, Cookie=f"{TOKEN_COOKIE}={TOKEN}"), control=True) is None
    refused = await refusal(await head(f"/?token={TOKEN}", **own), control=True)
    assert refused == (
        401,
        "control needs the server token (Authorization: Bearer, or the dashboard)",
    )


async def test_control_from_another_origin_is_refused_even_with_the_token() -> None:
    request = await head(Origin="http://evil.test", Authorization=f"Bearer {TOKEN}")
    assert await refusal(request, control=True) == (
        403,
        "control is accepted only from the server's own origin or an allowed one",
    )


TRUSTED = frozenset({"http://localhost:5173"})


async def trusted_refusal(request: RequestHead) -> object:
    return project_api_refusal(
        request,
        token=TOKEN,
        allow_origins=frozenset(),
        trust_origins=TRUSTED,
        readers_need_token=False,
        control_action=True,
    )


@pytest.mark.parametrize("origin", ["http://localhost:5173", "HTTP://LOCALHOST:5173/"])
async def test_a_page_from_a_trusted_origin_controls_without_the_token(origin: str) -> None:
    assert await trusted_refusal(await head(Origin=origin)) is None
    assert may_control_without_token(await head(Origin=origin), TRUSTED)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Origin": "http://localhost:5174"}, 403),  # another port is another site
        ({"Origin": "https://localhost:5173"}, 403),
        ({}, 401),  # no Origin: a script, which has the token or nothing
        ({"Origin": "http://127.0.0.1:8888"}, 401),  # the dashboard keeps the token rule
    ],
)
async def test_trust_is_for_that_origin_only(headers: dict[str, str], expected: int) -> None:
    refused = await trusted_refusal(await head(**headers))
    assert isinstance(refused, tuple) and refused[0] == expected
    assert not may_control_without_token(await head(**headers), TRUSTED)
