"""Shared client pieces: server URL mapping and reconnect backoff."""

from __future__ import annotations

import pytest

from trio_ws.clients.common import Backoff, websocket_base


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


def test_backoff_doubles_up_to_the_maximum_within_jitter() -> None:
    top = Backoff(initial=0.2, maximum=1.0, jitter=lambda: 0.999999)
    bottom = Backoff(initial=0.2, maximum=1.0, jitter=lambda: 0.0)
    assert [round(top.next(), 3) for _ in range(5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert [round(bottom.next(), 3) for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]


def test_backoff_reset_starts_over() -> None:
    delays = Backoff(initial=0.2, maximum=5.0, jitter=lambda: 0.0)
    for _ in range(4):
        delays.next()
    delays.reset()
    assert delays.next() == pytest.approx(0.1)
