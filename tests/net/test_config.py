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


def test_a_projects_alerts_are_the_registrys_over_the_files_over_the_servers(
    tmp_path: Path,
) -> None:
    from trio_ws.core.alerts import AlertSettings
    from trio_ws.core.project_settings import ProjectSettings
    from trio_ws.data.registry import Registry

    registry = Registry(tmp_path / "registry.db")
    for name in ("both", "filed", "plain"):
        (tmp_path / name).mkdir()
        registry.add(name, tmp_path / name)
    registry.set_setting("both", "alert-silent", "1m")
    made = ServerConfig(
        registry_path=registry.path,
        token="t",
        alerts=AlertSettings(silent=600, stalled=1800),
        project_settings={
            "both": ProjectSettings(alert_silent=120, alert_stalled=300),
            "filed": ProjectSettings(alerts=False),
        },
    )
    assert made.alerts_of("both") == AlertSettings(silent=60, stalled=300)
    assert made.alerts_of("filed") is None
    assert made.alerts_of("plain") == AlertSettings(silent=600, stalled=1800)
    assert made.alerts_of("elsewhere") == AlertSettings(silent=600, stalled=1800)


def test_without_a_registry_file_the_files_and_servers_settings_decide() -> None:
    from trio_ws.core.project_settings import ProjectSettings

    made = config(project_settings={"todo": ProjectSettings(alerts=True)})
    assert made.alerts_of("todo") is not None
    assert made.alerts_of("other") is None


def test_a_projects_retention_is_the_registrys_over_the_files_over_the_servers(
    tmp_path: Path,
) -> None:
    from trio_ws.core.project_settings import ProjectSettings
    from trio_ws.data.registry import Registry
    from trio_ws.journal.interface import DEFAULT_ARCHIVE_BYTES, ArchiveLimits

    registry = Registry(tmp_path / "registry.db")
    for name in ("both", "filed", "plain"):
        (tmp_path / name).mkdir()
        registry.add(name, tmp_path / name)
    registry.set_setting("both", "keep-runs", "2")
    filed = {
        "both": ProjectSettings(keep_runs=7, archive_bytes=5000),
        "filed": ProjectSettings(keep_runs=1),
    }
    made = ServerConfig(
        registry_path=registry.path, token="t", keep_runs=10, project_settings=filed
    )
    assert made.archive_of("both") == ArchiveLimits(5000, keep_runs=2)
    assert made.archive_of("filed") == ArchiveLimits(DEFAULT_ARCHIVE_BYTES["sqlite"], 1)
    assert made.archive_of("plain") is None  # the journals' own: `archive`
    assert made.archive == ArchiveLimits(DEFAULT_ARCHIVE_BYTES["sqlite"], keep_runs=10)
    on_memory = ServerConfig(
        registry_path=registry.path,
        token="t",
        journal="memory",
        archive_bytes=8000,
        project_settings=filed,
    )
    assert on_memory.archive_of("filed") == ArchiveLimits(8000, keep_runs=1)
    registry.set_setting("plain", "archive-bytes", 123)
    assert on_memory.archive_of("plain") == ArchiveLimits(123, keep_runs=None)


HOOK = webhook_target("https://example.org/hook")


def test_notify_targets_with_alerts_off_serve_the_projects_that_turn_them_on() -> None:
    """``--alerts off`` with ``--notify``: a project's own settings may turn alerts on
    (registry or file), and its alerts are delivered; the others raise none."""
    from trio_ws.core.project_settings import ProjectSettings

    made = config(notify=(HOOK,), project_settings={"todo": ProjectSettings(alerts=True)})
    assert made.notify == (HOOK,)
    assert made.alerts_of("todo") is not None and made.alerts_of("other") is None


def test_a_notify_target_named_twice_is_refused() -> None:
    twice = (HOOK, webhook_target("https://example.org/hook"))
    with pytest.raises(ValueError, match="a target is named twice"):
        config(alerts=AlertSettings(), notify=twice)
    config(alerts=AlertSettings(), notify=(HOOK, command_target("https://example.org/hook")))


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_the_notify_timeout_must_be_positive(timeout: float) -> None:
    with pytest.raises(ValueError, match="--notify-timeout must be positive"):
        config(notify_timeout=timeout)
