"""Keeping secrets out, and strangers off: redaction, Origin checks, tokens.

``redact`` replaces every secret in a line with ``[REDACTED]`` before the line
reaches an event, a tracker or a log (LINES.md 1, step 5). Where a pattern has
a key name (``password: …``, ``Bearer …``, ``ANTHROPIC_API_KEY=…``) the name
stays visible and only the value goes, so the line stays readable.

How: every pattern is searched in the whole line and the union of all their
secret spans is replaced, so a secret can never hide inside another pattern's
match (``Bearer secret:xyz`` loses both values). That is repeated until
nothing changes, which makes ``redact`` idempotent. Every pattern runs in
time linear in the line, since lines are redacted before they are capped and
can be long.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

REDACTED: Final = "[REDACTED]"

_I: Final = re.IGNORECASE

# A match's secret is its ``secret`` group when it has one, else all of it.
# Each pattern either finds its secrets by consuming them (so a failing start
# costs O(1)) or scans a run that a later start cannot scan again.
_PATTERNS: Final[tuple[re.Pattern[str], ...]] = tuple(
    re.compile(pattern, _I)
    for pattern in (
        r"sk-[A-Za-z0-9_-]{20,}",
        r"ANTHROPIC_API_KEY=(?P<secret>\S+)",
        r"api[_-]?key\s*[=:]\s*(?P<secret>\S+)",
        r"token\s*[=:]\s*(?P<secret>\S+)",
        r"password\s*[=:]\s*(?P<secret>\S+)",
        r"secret\s*[=:]\s*(?P<secret>\S+)",
        r"gh[pousr]_[A-Za-z0-9]{36,}",
        r"github_pat_[A-Za-z0-9_]{20,}",
        r"Bearer\s+(?P<secret>[A-Za-z0-9._~+/=-]+)",
        r"AKIA[0-9A-Z]{16}",
        r"AWS_(?:ACCESS_KEY_ID|SECRET_ACCESS_KEY|SESSION_TOKEN)\s*=\s*(?P<secret>\S+)",
        r"xox[abprs]-[A-Za-z0-9-]{10,}",
        # scheme://user:secret@host; the scheme and host stay. The password
        # may hold ':' and '@' (up to the last '@' before the path) but not '/',
        # so ``http://localhost:5173/@vite/client`` is left alone.
        r"://[^\s:/@]*:(?P<secret>[^\s/]+)@",
    )
)

# ``aws[_-]?(access[_-]?key|secret)\S*\s*[=:]\s*\S+`` (LINES.md) as a plain
# finditer is quadratic on a long run of failing prefixes
# (``aws_secretaws_secret…``), so it has its own scanner (``_aws_spans``).
_AWS_PREFIX: Final = re.compile(r"aws[_-]?(?:access[_-]?key|secret)", _I)
_AWS_FULL: Final = re.compile(r"aws[_-]?(?:access[_-]?key|secret)\S*\s*[=:]\s*\S+", _I)
_AWS_NAME: Final = re.compile(r"aws[_-]?(?:access[_-]?key|secret)[A-Za-z0-9_-]*\s*[=:]\s*", _I)
_NON_SPACE_RUN: Final = re.compile(r"\S*")

_MAX_PASSES: Final = 8
"""Two passes reach the fixed point in practice; past this, fail closed."""


def redact(text: str) -> str:
    """``text`` with every secret replaced by ``[REDACTED]``; ``redact(redact(x)) == redact(x)``."""
    for _ in range(_MAX_PASSES):
        redacted = _redact_once(text)
        if redacted == text:
            return text
        text = redacted
    # Each changing pass replaces text outside ``[REDACTED]`` (spans never start
    # inside one), so this should be unreachable; if it is not, leak nothing.
    return REDACTED


def _redact_once(text: str) -> str:
    spans = sorted(_secret_spans(text))
    if not spans:
        return text
    pieces: list[str] = []
    done = 0  # text[:done] is already in pieces
    start, end = spans[0]
    for next_start, next_end in spans[1:]:
        if next_start <= end:  # overlapping or touching: one secret
            end = max(end, next_end)
            continue
        pieces += (text[done:start], REDACTED)
        done = end
        start, end = next_start, next_end
    pieces += (text[done:start], REDACTED, text[end:])
    return "".join(pieces)


def _secret_spans(text: str) -> Iterator[tuple[int, int]]:
    for pattern in _PATTERNS:
        group = "secret" if "secret" in pattern.groupindex else 0
        for match in pattern.finditer(text):
            yield match.span(group)
    yield from _aws_spans(text)


def _aws_spans(text: str) -> Iterator[tuple[int, int]]:
    """Secrets of the ``aws…=`` pattern, exactly as ``finditer`` finds them, in linear time.

    When the pattern fails at a prefix, it fails at every later prefix in the
    same non-space run too (their continuations are a subset), so the scan
    skips that run. The visible name is the identifier and its separator.
    """
    position = 0
    while (prefix := _AWS_PREFIX.search(text, position)) is not None:
        match = _AWS_FULL.match(text, prefix.start())
        if match is None:
            run = _NON_SPACE_RUN.match(text, prefix.end())
            assert run is not None  # \S* always matches
            position = run.end()
            continue
        name = _AWS_NAME.match(text, match.start(), match.end())
        secret_start = prefix.end()
        if name is not None and name.end() < match.end():
            secret_start = name.end()
        yield secret_start, match.end()
        position = match.end()


# -- access: Origin and tokens (PROTOCOL.md 2, 6) ------------------------------

LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})
TOKEN_ENV: Final = "TRIO_WS_TOKEN"
TOKEN_FILE: Final = "token"


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and any loopback address (127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_port(netloc: str, default_port: int) -> tuple[str, int] | None:
    """Split ``host[:port]`` (IPv6 in brackets); None when the port is not a number."""
    try:
        parts = urlsplit(f"//{netloc}")
        port = parts.port
    except ValueError:
        return None
    if parts.hostname is None:
        return None
    return parts.hostname.lower(), port if port is not None else default_port


def host_refusal(
    host_header: str | None, on_loopback: bool, allowed: frozenset[str] = frozenset()
) -> int | None:
    """The Host rule against DNS rebinding (PROTOCOL.md 1): None to serve, else the status.

    Only on loopback: a page on ``rebind.evil.example`` whose name resolves to
    127.0.0.1 reaches us with its own name in Host, so on loopback only loopback
    names (any port) and ``--allow-host`` entries (a name, or name:port) are
    served; elsewhere the token protects. A missing Host is 400, as RFC 9112
    3.2 requires for HTTP/1.1 (h11 already answers that) and as we answer an
    HTTP/1.0 request without one: no browser sends such a request.
    """
    if not on_loopback:
        return None
    if host_header is None:
        return 400
    if any(char in host_header for char in "@/?#\\"):  # not a plain host[:port]
        return 403
    parsed = _host_port(host_header.strip(), 0)
    if parsed is None:
        return 403
    name, port = parsed
    if is_loopback_host(name):
        return None
    for entry in allowed:
        listed = _host_port(entry.strip(), 0)
        if listed is not None and listed[0] == name and listed[1] in (0, port):
            return None
    return 403


def origin_allowed(
    origin: str | None,
    host_header: str | None,
    on_loopback: bool,
    allowed: frozenset[str] = frozenset(),
) -> bool:
    """The handshake's Origin rule: absent, same host, loopback on loopback, or listed."""
    if origin is None:
        return True
    if _listed(origin, allowed):
        return True
    origin_host = _origin_host_port(origin)
    if origin_host is None:
        return False
    if on_loopback and is_loopback_host(origin_host[0]):
        return True
    return _same_host(origin_host, origin, host_header)


def control_origin_allowed(
    origin: str | None, host_header: str | None, allowed: frozenset[str] = frozenset()
) -> bool:
    """May a connection with this Origin send ``control`` (PROTOCOL.md 3.4)?

    Only the server's own origin (the Origin names the host and port the browser
    addressed, i.e. the Host header, with the scheme's default port) or a listed
    one. Not any loopback origin: cookies ignore ports, so a page on
    ``localhost:3000`` carries the dashboard's cookie; it may watch, not steer.
    No Origin means no browser; the token rule still applies.
    """
    if origin is None or _listed(origin, allowed):
        return True
    origin_host = _origin_host_port(origin)
    return origin_host is not None and _same_host(origin_host, origin, host_header)


def _listed(origin: str, allowed: frozenset[str]) -> bool:
    normalized = origin.strip().rstrip("/").lower()
    return normalized in {entry.rstrip("/").lower() for entry in allowed}


def _origin_scheme_port(origin: str) -> int:
    return 443 if origin.strip().lower().startswith("https:") else 80


def _origin_host_port(origin: str) -> tuple[str, int] | None:
    """An http(s) Origin's host and port (default port filled in); None for anything else."""
    try:
        parts = urlsplit(origin.strip().rstrip("/").lower())
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return _host_port(parts.netloc, _origin_scheme_port(origin))


def _same_host(origin_host: tuple[str, int], origin: str, host_header: str | None) -> bool:
    if host_header is None:
        return False
    return _host_port(host_header.strip(), _origin_scheme_port(origin)) == origin_host


def token_matches(offered: str | None, expected: str) -> bool:
    """Constant-time token comparison; an empty or missing token never matches."""
    if not offered or not expected:
        return False
    return hmac.compare_digest(offered.encode(), expected.encode())


def load_token(home: Path, explicit: str | None = None, *, create: bool = False) -> str:
    """The server token: ``explicit``, else $TRIO_WS_TOKEN, else ``<home>/token``.

    With ``create`` a missing token file is made (mode 0600, a fresh random
    token); without it a missing file is an error, so a client never guesses.
    """
    if explicit:
        return explicit
    from_env = os.environ.get(TOKEN_ENV)
    if from_env:
        return from_env
    path = home / TOKEN_FILE
    try:
        return _read_token(path)
    except FileNotFoundError:
        if not create:
            raise TokenError(
                f"no token at {path}; start `trio-ws serve` once or pass --token"
            ) from None
    home.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_token(path)  # another process created it first
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    return token


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except PermissionError:
        raise TokenError(f"cannot read token file {path}: permission denied") from None
    if not token:
        raise TokenError(f"token file {path} is empty")
    return token


class TokenError(Exception):
    """The token could not be found or read; the message says where."""
