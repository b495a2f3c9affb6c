"""The doctor's verdicts (`trio_ws.core.checkup`): pure, from findings to lines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from trio_ws.core.certificates import Validity
from trio_ws.core.checkup import (
    BrokerSettings,
    Check,
    PortFinding,
    broker_checks,
    certificate_check,
    exit_status,
    port_check,
)

NOW = datetime(2027, 6, 1, tzinfo=UTC)


def test_a_line_says_what_to_do_only_when_something_is_wrong() -> None:
    assert (
        Check("home", "ok", "/h is writable", "never shown").line() == "ok   home: /h is writable"
    )
    wrong = Check("journal demo", "fail", "not a database", "move it aside")
    assert wrong.line() == "FAIL journal demo: not a database -> move it aside"
    assert wrong.as_json() == {
        "check": "journal demo",
        "status": "fail",
        "detail": "not a database",
        "fix": "move it aside",
    }


def test_only_a_failure_fails_the_exit_status() -> None:
    assert exit_status([Check("a", "ok", ""), Check("b", "warn", "")]) == 0
    assert exit_status([Check("a", "ok", ""), Check("b", "fail", "")]) == 1
    assert exit_status([]) == 0


@pytest.mark.parametrize(
    ("finding", "status", "words"),
    [
        (PortFinding("127.0.0.1", 8888, free=True), "ok", "is free"),
        (PortFinding("127.0.0.1", 8888, free=False, trio_ws_answer=True), "ok", "trio-ws server"),
        (PortFinding("127.0.0.1", 8888, free=False), "fail", "not trio-ws"),
        (PortFinding("10.9.9.9", 8888, free=False, error="cannot assign"), "fail", "cannot listen"),
    ],
)
def test_port_verdicts(finding: PortFinding, status: str, words: str) -> None:
    check = port_check(finding)
    assert check.status == status and words in check.detail
    if status == "fail":
        assert check.fix


def test_broker_settings_that_keep_histories_pass() -> None:
    checks = broker_checks("redis://r/0", BrokerSettings("noeviction", "yes", ""))
    assert [check.status for check in checks] == ["ok", "ok"]
    checks = broker_checks("redis://r/0", BrokerSettings("noeviction", "no", "3600 1"))
    assert [check.status for check in checks] == ["ok", "ok"]


def test_eviction_fails_and_no_persistence_warns() -> None:
    eviction, persistence = broker_checks("redis://r/0", BrokerSettings("allkeys-lru", "no", ""))
    assert eviction.status == "fail" and "allkeys-lru" in eviction.detail
    assert eviction.fix is not None and "noeviction" in eviction.fix
    assert persistence.status == "warn" and "appendonly" in (persistence.fix or "")


@pytest.mark.parametrize(
    ("not_before", "not_after", "status"),
    [
        (NOW - timedelta(days=90), NOW - timedelta(days=1), "fail"),
        (NOW + timedelta(days=1), NOW + timedelta(days=90), "fail"),
        (NOW - timedelta(days=80), NOW + timedelta(days=10), "warn"),
        (NOW - timedelta(days=10), NOW + timedelta(days=80), "ok"),
    ],
)
def test_certificate_verdicts(not_before: datetime, not_after: datetime, status: str) -> None:
    check = certificate_check(Validity(not_before, not_after), NOW)
    assert check.status == status
    assert (check.fix is not None) == (status != "ok")
