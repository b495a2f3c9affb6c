"""What ``trio-ws doctor`` decides, apart from how it looks: each check's verdict from
what was found, one line each, and the exit status.

Pure: `trio_ws.faces.doctor` does the looking (files, sockets, Redis) and hands
the findings here, so every verdict is tested without a broken machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from trio_ws.core.certificates import Validity, date_problem

Status = Literal["ok", "warn", "fail"]
MARKS: Final[Mapping[Status, str]] = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}


@dataclass(frozen=True)
class Check:
    """One verdict: what was checked, how it stands, and what to do when it is wrong."""

    name: str
    status: Status
    detail: str
    fix: str | None = None

    def line(self) -> str:
        """``FAIL journal demo: ... -> what to do``: the one line doctor prints."""
        text = f"{MARKS[self.status]} {self.name}: {self.detail}"
        return f"{text} -> {self.fix}" if self.fix and self.status != "ok" else text

    def as_json(self) -> dict[str, Any]:
        return {"check": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def exit_status(checks: Sequence[Check]) -> int:
    """1 when something is wrong (a failed check), else 0; warnings do not fail."""
    return 1 if any(check.status == "fail" for check in checks) else 0


@dataclass(frozen=True)
class PortFinding:
    """What was found at ``host:port``: free, or taken, and by whom."""

    host: str
    port: int
    free: bool
    trio_ws_answer: bool = False
    """A trio-ws server answered ``/healthz`` there (ours, already running)."""
    error: str | None = None
    """The OS's word when the port could not be bound for another reason than use."""


def port_check(found: PortFinding) -> Check:
    where = f"{found.host}:{found.port}"
    if found.error is not None:
        return Check(
            "port", "fail", f"cannot listen on {where}: {found.error}", "pick another --host/--port"
        )
    if found.free and found.port == 0:
        return Check("port", "ok", f"{found.host}: port 0, serve takes any free one")
    if found.free:
        return Check("port", "ok", f"{where} is free")
    if found.trio_ws_answer:
        return Check("port", "ok", f"{where}: a trio-ws server is serving there")
    return Check(
        "port",
        "fail",
        f"{where} is taken by a program that is not trio-ws",
        f"stop it (`ss -ltnp 'sport = :{found.port}'` names it) or serve on another --port",
    )


@dataclass(frozen=True)
class BrokerSettings:
    """The Redis settings that decide whether a history survives there."""

    maxmemory_policy: str
    appendonly: str
    save: str


def broker_checks(url: str, settings: BrokerSettings) -> list[Check]:
    """Eviction would drop journal entries under memory pressure (gaps no client can
    repair); with no persistence a Redis restart loses every history."""
    checks: list[Check] = []
    policy = settings.maxmemory_policy
    if policy == "noeviction":
        checks.append(Check("broker eviction", "ok", "maxmemory-policy noeviction"))
    else:
        checks.append(
            Check(
                "broker eviction",
                "fail",
                f"maxmemory-policy is {policy}: Redis may evict journal entries",
                f"`redis-cli -u {url} CONFIG SET maxmemory-policy noeviction` (and in redis.conf)",
            )
        )
    appendonly = settings.appendonly == "yes"
    snapshots = bool(settings.save.strip())
    if appendonly or snapshots:
        how = "appendonly yes" if appendonly else f"save {settings.save.strip()}"
        checks.append(Check("broker persistence", "ok", how))
    else:
        checks.append(
            Check(
                "broker persistence",
                "warn",
                "no appendonly and no save: a Redis restart loses every history",
                "set appendonly yes in redis.conf",
            )
        )
    return checks


def certificate_check(dates: Validity, now: datetime) -> Check:
    """Expired or not yet valid fails; ending within `EXPIRY_WARNING` warns."""
    problem = date_problem(dates, now)
    if problem is None:
        return Check("certificate", "ok", f"valid until {dates.not_after_text}")
    within = dates.not_before <= now < dates.not_after
    return Check(
        "certificate",
        "warn" if within else "fail",
        problem,
        "renew it (certbot renew, or your CA), then restart serve",
    )
