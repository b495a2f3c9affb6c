"""A server certificate's dates, and what they mean for whoever keeps the server up.

Pure: the PEM text comes in, dates and a verdict come out. ``serve`` shows the
certificate's end on ``/healthz`` and ``trio-ws doctor`` warns before it comes,
because an expired certificate breaks every dashboard and client at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from cryptography import x509

EXPIRY_WARNING: Final = timedelta(days=14)
"""A certificate ending sooner than this is worth renewing now."""


class CertificateError(ValueError):
    """The text is not a PEM certificate."""


@dataclass(frozen=True)
class Validity:
    """When a certificate starts and stops being valid (UTC)."""

    not_before: datetime
    not_after: datetime

    @property
    def not_after_text(self) -> str:
        """``2027-03-01T12:00:00Z``: the form /healthz and doctor show."""
        return self.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")


def validity(pem: bytes) -> Validity:
    """The dates of the first certificate in ``pem`` (the leaf of a chain file)."""
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise CertificateError(f"not a PEM certificate: {exc}") from None
    return Validity(certificate.not_valid_before_utc, certificate.not_valid_after_utc)


def date_problem(dates: Validity, now: datetime, warning: timedelta = EXPIRY_WARNING) -> str | None:
    """What is wrong with ``dates`` at ``now`` (aware, UTC), or None when nothing is."""
    if now >= dates.not_after:
        return f"expired on {dates.not_after_text}"
    if now < dates.not_before:
        return f"not valid before {dates.not_before.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    left = dates.not_after - now
    if left < warning:
        return f"expires in {left.days} days, on {dates.not_after_text}"
    return None
