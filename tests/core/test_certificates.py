"""A certificate's dates and their verdict (`trio_ws.core.certificates`), on real
certificates from trustme."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tls_certs import make_tls_files

from trio_ws.core.certificates import CertificateError, Validity, date_problem, validity

NOW = datetime(2027, 6, 1, 12, 0, tzinfo=UTC)


def test_the_dates_are_read_from_a_real_certificate(tmp_path: Path) -> None:
    ends = datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC)
    files = make_tls_files(tmp_path, not_after=ends)
    dates = validity(files.certfile.read_bytes())
    assert dates.not_after == ends
    assert dates.not_after_text == "2031-02-03T04:05:06Z"
    assert dates.not_before < datetime.now(UTC)


def test_text_that_is_no_certificate_is_an_error() -> None:
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        validity(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


@pytest.mark.parametrize(
    ("ends", "problem"),
    [
        (NOW - timedelta(seconds=1), "expired on 2027-06-01T11:59:59Z"),
        (NOW + timedelta(days=3, hours=1), "expires in 3 days, on 2027-06-04T13:00:00Z"),
        (NOW + timedelta(days=13, hours=23), "expires in 13 days"),
        (NOW + timedelta(days=14), None),
        (NOW + timedelta(days=400), None),
    ],
)
def test_date_problems(ends: datetime, problem: str | None) -> None:
    found = date_problem(Validity(NOW - timedelta(days=30), ends), NOW)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem)


def test_a_certificate_not_yet_valid_is_a_problem() -> None:
    dates = Validity(NOW + timedelta(hours=1), NOW + timedelta(days=90))
    assert date_problem(dates, NOW) == "not valid before 2027-06-01T13:00:00Z"
