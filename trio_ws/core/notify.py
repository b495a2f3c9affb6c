"""Where alerts are sent (``serve --notify URL``, ``--notify-command CMD``) and what is
sent there: the target a URL or command names, its preset (Slack, Discord, ntfy or
the alert's JSON as is), the request body and headers, the HMAC signature, and what
an answer means (delivered, try again, never).

Pure (sans-IO): `net/alert_sender.py` sends what `webhook_request` builds and reports an
`Outcome`; `state/delivery.py` orders and journals the deliveries. Nothing here logs,
and a target's `label` is what a log may say of it: a webhook URL's path and query
are its credential (Slack and Discord put the token there), so a label keeps only
the scheme and host and a short hash that tells two targets apart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import urlsplit

TargetKind = Literal["json", "slack", "discord", "ntfy", "command"]

CURSOR_GROUP: Final = "notify"
"""The journal's key group of delivery cursors: ``notify:<hash>``, beside producers'."""
SIGNATURE_HEADER: Final = "X-Trio-WS-Signature"
"""``sha256=<hex>``: HMAC-SHA256 with ``--notify-secret`` over ``<timestamp>.<body>``."""
TIMESTAMP_HEADER: Final = "X-Trio-WS-Timestamp"
"""UNIX seconds of the attempt, inside the signed text: a receiver refuses a replay by
refusing an old timestamp."""
DELIVERY_HEADER: Final = "X-Trio-WS-Delivery"
"""``<project>:<epoch>:<seq>``: the same on every attempt of one alert, so a receiver
can drop the duplicate an at-least-once retry may bring."""
RETRY_AFTER_MAX: Final = 300.0
"""The longest a ``Retry-After`` answer makes the next try wait, in seconds."""
SIGNATURE_TOLERANCE: Final = 300.0
"""Seconds `verify_signature` accepts a timestamp away from now, by default."""
NTFY_PREFIX: Final = "ntfy+"
"""``ntfy+https://host/topic``: a self-hosted ntfy server, which no host name tells."""
_NTFY_PRIORITY: Final = {"error": "high", "warning": "default", "info": "low"}
_NTFY_TAGS: Final = {"error": "rotating_light", "warning": "warning", "info": "information_source"}
MAX_URL: Final = 2048


@dataclass(frozen=True)
class NotifyTarget:
    """One place alerts go: a webhook (``kind`` its preset) or a command."""

    kind: TargetKind
    address: str = field(repr=False)
    """The URL to POST to (without a ``ntfy+`` mark) or the command line: a secret."""
    argv: tuple[str, ...] = field(default=(), repr=False)
    """The command's arguments (kind ``command``)."""
    key: str = ""
    """The journal's key of its delivery cursor (``notify:<hash>``)."""
    label: str = ""
    """What a log may say of it: no path, query or arguments."""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def webhook_target(url: str) -> NotifyTarget:
    """The target ``url`` names, its preset told by its host (or a ``ntfy+`` mark);
    ValueError saying what is wrong with it (the message never quotes its path)."""
    given = url.strip()
    if len(given) > MAX_URL:
        raise ValueError(f"--notify: a URL of at most {MAX_URL} characters")
    ntfy_marked = given.lower().startswith(NTFY_PREFIX)
    address = given[len(NTFY_PREFIX) :] if ntfy_marked else given
    try:
        parts = urlsplit(address)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError:
        raise ValueError("--notify: not a URL (http://HOST/PATH or https://HOST/PATH)") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(
            "--notify: an http:// or https:// URL with a host (ntfy+https://HOST/TOPIC "
            "for a self-hosted ntfy)"
        )
    path = parts.path.rstrip("/")
    kind: TargetKind
    if ntfy_marked or host == "ntfy.sh":
        if not path:
            raise ValueError("--notify: an ntfy URL names its topic: https://ntfy.sh/TOPIC")
        kind = "ntfy"
    elif host == "hooks.slack.com":
        kind = "slack"
    elif host in ("discord.com", "discordapp.com") and path.startswith("/api/webhooks/"):
        kind = "discord"
    else:
        kind = "json"
    key = f"{CURSOR_GROUP}:{_digest('url:' + address)}"
    shown_port = "" if parts.port is None else f":{parts.port}"
    label = f"{kind} webhook {parts.scheme}://{host}{shown_port}/… ({key})"
    return NotifyTarget(kind, address, key=key, label=label)


def command_target(command: str) -> NotifyTarget:
    """The target ``--notify-command CMD`` names (split as a shell would, but run with
    no shell); ValueError when it names no program or is not well quoted."""
    try:
        argv = tuple(shlex.split(command))
    except ValueError as exc:
        raise ValueError(f"--notify-command: {exc}") from None
    if not argv:
        raise ValueError("--notify-command: a command to run (its program and arguments)")
    key = f"{CURSOR_GROUP}:{_digest('command:' + shlex.join(argv))}"
    program = argv[0].rsplit("/", 1)[-1]
    return NotifyTarget("command", command, argv, key=key, label=f"command {program} ({key})")


def alert_text(alert: Mapping[str, object]) -> str:
    """One line for a human: ``[demo] warning: coder-1 has said nothing for 12 min``,
    ``[demo] resolved: ...``."""
    project = alert.get("project", "?")
    state = "resolved" if alert.get("state") == "resolved" else alert.get("severity", "alert")
    return f"[{project}] {state}: {alert.get('message', '')}"


@dataclass(frozen=True)
class NotifyRequest:
    """An HTTP POST to make: where, its headers, its exact body."""

    url: str = field(repr=False)
    headers: dict[str, str]
    body: bytes


def webhook_body(target: NotifyTarget, event_text: str) -> tuple[bytes, dict[str, str]]:
    """The body for ``target``'s preset and its own headers, from the alert event's
    journalled JSON text (sent as is to a plain JSON target)."""
    if target.kind == "json":
        return event_text.encode(), {"Content-Type": "application/json"}
    alert = json.loads(event_text)
    text = alert_text(alert)
    if target.kind == "slack":
        return _json({"text": text}), {"Content-Type": "application/json"}
    if target.kind == "discord":
        return _json({"content": text}), {"Content-Type": "application/json"}
    if target.kind == "ntfy":
        resolved = alert.get("state") == "resolved"
        severity = str(alert.get("severity", "info"))
        headers = {
            "Content-Type": "text/plain; charset=utf-8",
            "Title": _header_safe(f"trio-ws {alert.get('project', '')}: {alert.get('kind', '')}"),
            "Priority": "low" if resolved else _NTFY_PRIORITY.get(severity, "default"),
            "Tags": "white_check_mark" if resolved else _NTFY_TAGS.get(severity, "bell"),
        }
        return text.encode(), headers
    raise ValueError(f"a {target.kind} target takes no HTTP body")


def webhook_request(
    target: NotifyTarget,
    event_text: str,
    *,
    delivery: str,
    now: float,
    secret: str | None = None,
) -> NotifyRequest:
    """The POST that delivers one alert to ``target`` at ``now`` (UNIX seconds):
    the preset's body, ``delivery`` (see DELIVERY_HEADER), and with a ``secret`` the
    timestamp and signature headers."""
    body, headers = webhook_body(target, event_text)
    headers["User-Agent"] = "trio-ws-notify"
    headers[DELIVERY_HEADER] = _header_safe(delivery)
    if secret:
        timestamp = str(int(now))
        headers[TIMESTAMP_HEADER] = timestamp
        headers[SIGNATURE_HEADER] = signature(secret, timestamp, body)
    return NotifyRequest(target.address, headers, body)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 keyed with ``secret`` over ``<timestamp>.<body>``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes,
    header: str,
    now: float,
    tolerance: float = SIGNATURE_TOLERANCE,
) -> bool:
    """What a receiver checks: the signature matches (compared in constant time) and
    the timestamp is within ``tolerance`` seconds of ``now`` (a replay is refused)."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs(now - sent) > tolerance:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), header)


OutcomeKind = Literal["delivered", "retry", "permanent"]


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: delivered, worth another try (``retry``), or refused
    for good (``permanent``: the alert is given up); ``detail`` says why, for a log."""

    kind: OutcomeKind
    detail: str = ""
    after: float = 0.0
    """The least wait before the next try the target asked for (``Retry-After``)."""

    @classmethod
    def delivered(cls, detail: str = "") -> Outcome:
        return cls("delivered", detail)

    @classmethod
    def retry(cls, detail: str, after: float = 0.0) -> Outcome:
        return cls("retry", detail, after)

    @classmethod
    def permanent(cls, detail: str) -> Outcome:
        return cls("permanent", detail)


def http_outcome(status: int, retry_after: str | None = None) -> Outcome:
    """A webhook's answer: 2xx delivered; 408, 429 and 5xx worth another try, not
    before the seconds a ``Retry-After`` header asks (Slack and Discord send one with
    a 429; at most RETRY_AFTER_MAX); any other 4xx refused for good (a wrong URL, a
    revoked token: retrying changes nothing), and so is a redirect (not followed:
    the URL to give is the new one)."""
    if 200 <= status < 300:
        return Outcome.delivered(f"HTTP {status}")
    if status in (408, 429) or status >= 500:
        after = _seconds(retry_after)
        shown = f", Retry-After {after:g} s" if after else ""
        return Outcome.retry(f"HTTP {status}{shown}", after)
    if 300 <= status < 400:
        return Outcome.permanent(f"HTTP {status}: redirects are not followed")
    return Outcome.permanent(f"HTTP {status}")


def _seconds(retry_after: str | None) -> float:
    """A ``Retry-After`` of delay-seconds, bounded; 0 for none, an HTTP date or nonsense
    (the backoff's own delay then stands)."""
    if retry_after is None:
        return 0.0
    try:
        seconds = float(retry_after.strip())
    except ValueError:
        return 0.0
    if not seconds > 0:  # negative, zero, nan
        return 0.0
    return min(seconds, RETRY_AFTER_MAX)


def _json(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _header_safe(text: str) -> str:
    """``text`` fit for an HTTP header value: printable ASCII, one line, bounded."""
    kept = "".join(char if " " <= char <= "~" else "?" for char in text)
    return kept[:200]
