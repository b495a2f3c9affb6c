"""Shared client pieces: server URL mapping, the token header, the refusal rule."""

from __future__ import annotations

import pytest

from trio_ws.clients.common import bearer_header, http_base, refuses_for_good, websocket_base


@pytest.mark.parametrize(
    ("server", "base"),
    [
        ("http://127.0.0.1:8888", "ws://127.0.0.1:8888"),
        ("https://example.test/", "wss://example.test"),
        ("ws://h:1/prefix/", "ws://h:1/prefix"),
        ("WSS://h", "wss://h"),
        ("  http://[::1]:9/ ", "ws://[::1]:9"),
    ],
)
def test_websocket_base_maps_schemes(server: str, base: str) -> None:
    assert websocket_base(server) == base


@pytest.mark.parametrize("server", ["ftp://h", "127.0.0.1:8888", "http://", "http://:80"])
def test_websocket_base_rejects_what_is_not_a_server_url(server: str) -> None:
    with pytest.raises(ValueError, match="server URL"):
        websocket_base(server)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 451, 499])
def test_an_http_4xx_refusal_is_for_good(status: int) -> None:
    assert refuses_for_good(status=status)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 301])
def test_not_now_and_server_errors_are_retried(status: int) -> None:
    assert not refuses_for_good(status=status)


@pytest.mark.parametrize(("code", "for_good"), [(4004, True), (4000, True), (4999, True)])
def test_a_4xxx_close_is_for_good(code: int, for_good: bool) -> None:
    assert refuses_for_good(close_code=code) is for_good


@pytest.mark.parametrize("code", [1000, 1001, 1011, 1012, 1013, 3000, 5000, None])
def test_other_closes_are_retried(code: int | None) -> None:
    assert not refuses_for_good(close_code=code)


def test_the_token_goes_in_a_bearer_header() -> None:
    assert bearer_header("s3cret") == (b"Authorization", b"Bearer s3cret")


@pytest.mark.parametrize(
    ("server", "base"),
    [
        ("http://127.0.0.1:8888/", "http://127.0.0.1:8888"),
        ("ws://host:1/prefix", "http://host:1/prefix"),
        ("wss://host", "https://host"),
        ("https://host:443", "https://host:443"),
    ],
)
def test_http_base_is_where_pages_and_api_are(server: str, base: str) -> None:
    assert http_base(server) == base


def test_http_base_refuses_what_is_no_server_url() -> None:
    with pytest.raises(ValueError, match="must look like"):
        http_base("ftp://host")
