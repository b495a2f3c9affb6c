"""Per-project settings: the one table of what a project may set for itself.

A project's settings come from the registry (`trio-ws projects set`) and from the
config file's ``[projects.NAME]`` tables; each key set there wins over the server's
own option of the same name (``--alerts``, ``--alert-silent``, ``--keep-runs``, ...).
A new per-project setting is a row of `PROJECT_KEYS` and a field of
`ProjectSettings`: every reader and writer goes through this table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Final

from trio_ws.core.alerts import AlertSettings
from trio_ws.core.durations import format_duration, parse_duration

SettingValue = bool | int | float
"""A setting's value as kept: a switch, a count (bytes, runs) or seconds."""


class SettingError(ValueError):
    """A per-project key that is unknown or has a wrong value; says which and why."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"{key}: {detail}")
        self.key = key
        self.detail = detail


def _switch(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("on", "off"):
        return value == "on"
    raise ValueError(f"{value!r} is not on or off")


def _duration(value: object) -> float:
    if not isinstance(value, (str, int, float)):
        raise ValueError(f"{value!r} is not a duration like 90s, 10m or 1h")
    return parse_duration(value)


def _count(least: int) -> Callable[[object], int]:
    """A reader of whole numbers from ``least`` up: a TOML integer, or its digits as
    text (`trio-ws projects set`); never a boolean nor a fraction."""

    def read(value: object) -> int:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{value!r} is not a whole number")
        if value < least:
            raise ValueError(f"{value} is below {least}")
        return value

    return read


def _show_count(value: SettingValue) -> str:
    return str(int(value))


def _show_switch(value: SettingValue) -> str:
    return "on" if value else "off"


def _show_duration(value: SettingValue) -> str:
    return format_duration(float(value))


@dataclass(frozen=True)
class ProjectKey:
    """One per-project key: the `ProjectSettings` field it fills, how a value given as
    text or TOML is read, and how it is shown."""

    field: str
    read: Callable[[object], SettingValue]
    show: Callable[[SettingValue], str]
    help: str


PROJECT_KEYS: Final[Mapping[str, ProjectKey]] = {
    "alerts": ProjectKey("alerts", _switch, _show_switch, "on or off: this project's alerts"),
    "alert-silent": ProjectKey(
        "alert_silent",
        _duration,
        _show_duration,
        "an active agent without a log line for this long is silent (90s, 10m, 1h)",
    ),
    "alert-stalled": ProjectKey(
        "alert_stalled",
        _duration,
        _show_duration,
        "a running run without a progress change for this long is stalled",
    ),
    "archive-bytes": ProjectKey(
        "archive_bytes",
        _count(1),
        _show_count,
        "bytes of event text kept beyond the live history (the oldest whole runs go first)",
    ),
    "keep-runs": ProjectKey(
        "keep_runs", _count(0), _show_count, "closed runs kept, at most (the oldest go first)"
    ),
}
"""Every per-project key, named as in the config file and `trio-ws projects set`
(dashes, as the ``serve`` options they override)."""


def project_key(key: str) -> ProjectKey:
    """The row of ``key``; `SettingError` naming the known keys when there is none."""
    known = PROJECT_KEYS.get(key)
    if known is None:
        raise SettingError(key, f"unknown project setting (known: {', '.join(PROJECT_KEYS)})")
    return known


def read_setting(key: str, value: object) -> SettingValue:
    """The value of ``key`` as kept; `SettingError` for an unknown key or a bad value."""
    known = project_key(key)
    try:
        return known.read(value)
    except ValueError as exc:
        raise SettingError(key, str(exc)) from None


@dataclass(frozen=True)
class ProjectSettings:
    """What one project sets for itself; None: the server's option decides."""

    alerts: bool | None = None
    alert_silent: float | None = None
    alert_stalled: float | None = None
    archive_bytes: int | None = None
    keep_runs: int | None = None

    @classmethod
    def read(cls, values: Mapping[str, object]) -> ProjectSettings:
        """From ``{key: value}`` (config-file or registry keys); `SettingError` on the
        first unknown key or bad value."""
        kept = {PROJECT_KEYS[key].field: read_setting(key, value) for key, value in values.items()}
        return cls(**kept)  # type: ignore[arg-type]  # each field's reader gives its type

    def items(self) -> dict[str, SettingValue]:
        """The keys set, by config-file name."""
        return {
            key: value
            for key, known in PROJECT_KEYS.items()
            if (value := getattr(self, known.field)) is not None
        }

    def over(self, under: ProjectSettings) -> ProjectSettings:
        """These settings, with ``under``'s where these leave a key unset."""
        return replace(
            under,
            **{
                each.name: getattr(self, each.name)
                for each in fields(self)
                if getattr(self, each.name) is not None
            },
        )

    def alert_settings(self, server: AlertSettings | None) -> AlertSettings | None:
        """The alert rules' thresholds for this project: its own over the server's
        (``server`` None: alerts are off unless the project turns them on, then with
        its thresholds or the rules' defaults); None: no alerts."""
        on = self.alerts if self.alerts is not None else server is not None
        if not on:
            return None
        base = server or AlertSettings()
        return AlertSettings(
            silent=self.alert_silent if self.alert_silent is not None else base.silent,
            stalled=self.alert_stalled if self.alert_stalled is not None else base.stalled,
        )

    def retention(
        self, archive_bytes: int | None, keep_runs: int | None
    ) -> tuple[int | None, int | None]:
        """This project's journal keeps ``(archive_bytes, keep_runs)``: each its own
        over the server's (``--archive-bytes``, ``--keep-runs``); None: the backend's
        default bytes, any number of runs."""
        return (
            self.archive_bytes if self.archive_bytes is not None else archive_bytes,
            self.keep_runs if self.keep_runs is not None else keep_runs,
        )


def show_setting(key: str, value: SettingValue) -> str:
    """``value`` as it would be written (``10m``, ``off``)."""
    return PROJECT_KEYS[key].show(value)
