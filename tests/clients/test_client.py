"""Shared client pieces: server URL mapping."""

from __future__ import annotations

import pytest

from trio_ws.clients.common import websocket_base


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
