"""ServerConfig: what `serve` is given, checked before anything listens."""

from __future__ import annotations

from pathlib import Path

import pytest

from trio_ws.net.config import ServerConfig


def config(**settings: object) -> ServerConfig:
    return ServerConfig(registry_path=Path("/nonexistent/registry.json"), token="t", **settings)  # type: ignore[arg-type]


def test_a_trusted_origin_is_listed_for_watching_and_control() -> None:
    made = config(trust_origins=frozenset({"http://localhost:5173"}))
    assert made.listed_origins == {"http://localhost:5173"}


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::"])
def test_trusting_an_origin_needs_a_loopback_server(host: str) -> None:
    with pytest.raises(ValueError, match="needs a loopback --host"):
        config(host=host, trust_origins=frozenset({"http://localhost:5173"}))


@pytest.mark.parametrize(
    "origin", ["localhost:5173", "http://localhost:5173/ui", "ftp://host", "http://u@host:1"]
)
def test_a_trusted_origin_must_be_an_origin(origin: str) -> None:
    with pytest.raises(ValueError, match="--trust-origin"):
        config(trust_origins=frozenset({origin}))
