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


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::"])
def test_plain_http_off_loopback_is_refused_unless_insecure_remote(host: str) -> None:
    with pytest.raises(ValueError, match=f"--host {host} is not loopback.*--insecure-remote"):
        config(host=host)
    made = config(host=host, insecure_remote=True)
    assert made.subscribers_need_token  # the token stays required off loopback


def test_tls_off_loopback_is_served_and_needs_the_token(tmp_path: Path) -> None:
    made = config(host="0.0.0.0", certfile=tmp_path / "c.pem", keyfile=tmp_path / "k.pem")
    assert made.subscribers_need_token


def test_a_certificate_needs_its_key() -> None:
    with pytest.raises(ValueError, match="--certfile and --keyfile go together"):
        config(certfile=Path("cert.pem"))
    with pytest.raises(ValueError, match="--certfile and --keyfile go together"):
        config(keyfile=Path("key.pem"))
