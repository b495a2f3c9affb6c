"""`core.project_settings`: the one table of per-project keys and how they combine with
the server's options."""

from __future__ import annotations

import pytest

from trio_ws.core.alerts import AlertSettings
from trio_ws.core.project_settings import (
    PROJECT_KEYS,
    ProjectSettings,
    SettingError,
    read_setting,
    show_setting,
)

SERVER = AlertSettings(silent=600, stalled=1800)


def test_every_key_fills_a_field_and_reads_back_as_it_shows() -> None:
    fields = set(ProjectSettings.__dataclass_fields__)
    for known in PROJECT_KEYS.values():
        assert known.field in fields
    assert ProjectSettings.read({"alerts": "off", "alert-silent": "1m"}) == ProjectSettings(
        alerts=False, alert_silent=60.0
    )
    settings = ProjectSettings(alerts=True, alert_silent=90.0, alert_stalled=3600.0)
    assert {key: show_setting(key, value) for key, value in settings.items().items()} == {
        "alerts": "on",
        "alert-silent": "90s",
        "alert-stalled": "1h",
    }
    assert (
        ProjectSettings.read(
            {key: show_setting(key, value) for key, value in settings.items().items()}
        )
        == settings
    )


@pytest.mark.parametrize(
    ("key", "value", "detail"),
    [
        ("alert_silent", "1m", "unknown project setting (known: alerts, alert-silent"),
        ("alerts", "maybe", "'maybe' is not on or off"),
        ("alerts", 1, "1 is not on or off"),
        ("alert-silent", "soon", "is not a duration"),
        ("alert-stalled", [1], "is not a duration"),
        ("keep-runs", "lots", "'lots' is not a whole number"),
        ("keep-runs", -1, "-1 is below 0"),
        ("keep-runs", True, "True is not a whole number"),
        ("archive-bytes", 0, "0 is below 1"),
        ("archive-bytes", 1.5, "1.5 is not a whole number"),
        ("archive-bytes", "1GiB", "'1GiB' is not a whole number"),
    ],
)
def test_an_unknown_key_or_bad_value_says_which_and_why(
    key: str, value: object, detail: str
) -> None:
    with pytest.raises(SettingError) as raised:
        read_setting(key, value)
    assert raised.value.key == key and detail in raised.value.detail


def test_a_projects_own_thresholds_win_and_the_rest_are_the_servers() -> None:
    assert ProjectSettings().alert_settings(SERVER) == SERVER
    assert ProjectSettings(alert_silent=60).alert_settings(SERVER) == AlertSettings(60, 1800)
    assert ProjectSettings(alerts=False, alert_silent=60).alert_settings(SERVER) is None
    assert ProjectSettings().alert_settings(None) is None
    # Alerts off on the server, on for this project: its thresholds, else the defaults.
    assert ProjectSettings(alerts=True, alert_stalled=60).alert_settings(None) == AlertSettings(
        stalled=60
    )


def test_over_keeps_the_upper_keys_and_fills_the_rest_from_below() -> None:
    upper = ProjectSettings(alert_silent=60)
    lower = ProjectSettings(alerts=False, alert_silent=120, alert_stalled=300)
    assert upper.over(lower) == ProjectSettings(alerts=False, alert_silent=60, alert_stalled=300)
    assert ProjectSettings().over(lower) == lower


def test_retention_reads_whole_numbers_as_toml_or_text_and_shows_them_plain() -> None:
    assert read_setting("keep-runs", "3") == 3 and read_setting("keep-runs", 0) == 0
    assert read_setting("archive-bytes", 1 << 30) == 1 << 30
    settings = ProjectSettings.read({"keep-runs": 5, "archive-bytes": "1048576"})
    assert settings == ProjectSettings(keep_runs=5, archive_bytes=1048576)
    assert {key: show_setting(key, value) for key, value in settings.items().items()} == {
        "archive-bytes": "1048576",
        "keep-runs": "5",
    }


def test_a_projects_own_retention_wins_key_by_key_over_the_servers() -> None:
    assert ProjectSettings().retention(None, None) == (None, None)
    assert ProjectSettings().retention(4096, 10) == (4096, 10)
    assert ProjectSettings(keep_runs=1).retention(4096, 10) == (4096, 1)
    assert ProjectSettings(keep_runs=0, archive_bytes=99).retention(None, 10) == (99, 0)
