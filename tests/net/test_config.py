"""ServerConfig: what `serve` is given, checked before anything listens."""

from __future__ import annotations

from pathlib import Path

import pytest

from trio_ws.core.alerts import AlertSettings
from trio_ws.core.notify import command_target, webhook_target
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


HOOK = webhook_target("https://example.org/hook")


def test_notify_targets_need_alerts_on() -> None:
    assert config(alerts=AlertSettings(), notify=(HOOK,)).notify == (HOOK,)
    with pytest.raises(ValueError, match="not with --alerts off"):
        config(notify=(HOOK,))


def test_a_notify_target_named_twice_is_refused() -> None:
    twice = (HOOK, webhook_target("https://example.org/hook"))
    with pytest.raises(ValueError, match="a target is named twice"):
        config(alerts=AlertSettings(), notify=twice)
    config(alerts=AlertSettings(), notify=(HOOK, command_target("https://example.org/hook")))


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_the_notify_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ValueError, match="--notify-timeout must be positive"):
        config(notify_timeout=timeout)
