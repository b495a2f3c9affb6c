"""Keeping secrets out, and strangers off: redaction, Origin checks, tokens.

``redact`` replaces every secret in a line with ``[REDACTED]`` before the line
reaches an event, a tracker or a log (LINES.md 1, step 4). Where a secret has
a name (``password: …``, ``Bearer …``, ``ANTHROPIC_API_KEY=…``) the name stays
visible and only the value goes, so the line stays readable.

It runs on every line, so it is one pass of one alternation regex, behind a
pre-check (a few substring tests on the lowered line) that lets most lines
skip the regex entirely. Every alternative starts at a word boundary (the URL
one at its ``://``) and runs its secret on to a delimiter, so a secret hardly
ever begins inside another match and leaves its tail behind; the pass is
repeated until nothing changes (``redact`` is idempotent). Every alternative
runs in time linear in the line.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

REDACTED: Final = "[REDACTED]"

_NAME_ENDS: Final = (
    r"password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key(?:[_-]?id)?"
    r"|private[_-]?key|secret[_-]?key|client[_-]?secret|credentials?"
)
"""A value is secret when its name is or ends with one of these (LINES.md 1.4)."""

_VALUE: Final = (
    r"""(?:"(?P<{0}d>(?:[^"\\]|\\.)*)"?|'(?P<{0}s>(?:[^'\\]|\\.)*)'?"""
    r"""|(?P<{0}u>(?:(?:bearer|basic|token|digest)\s+)*[^\s"']+))"""
)
"""A quoted value up to its closing quote, or an unquoted one up to a space or quote.
An unquoted value that is itself a name (``--token Authorization: Basic xyz``) or an
auth scheme (``--token Bearer xyz``) takes what it introduces along: a match that
swallowed the introducer would otherwise leave the credential behind it."""

# Each alternative names its secret with a group listed in _SECRET_GROUPS; the
# rest of the match (a name, a scheme, a host) stays.
_SECRET_RE: Final = re.compile(
    "|".join(
        (
            # keys by shape, each running on to the end of its word
            r"(?<![\w-])(?P<key>(?:"
            r"sk-[\w-]{20,}|[sr]k_(?:live|test)_[0-9a-z]{10,}|AIza[\w-]{35}"
            r"|glpat-[\w-]{20,}|gh[pousr]_[0-9a-z]{36,}|github_pat_\w{20,}"
            r"|npm_[0-9a-z]{36}|hf_[0-9a-z]{30,}|xox[abprs]-[0-9a-z-]{10,}|AKIA[0-9a-z]{16}"
            r"|eyJ[\w-]{4,}\.eyJ[\w-]{4,}\.[\w.-]*"
            # a PEM body (DER starts "MII") printed without its BEGIN line
            r"|MII[0-9a-z+/]{60,}=*"
            r")[\w-]*)",
            # PEM private key on one line; with no END the block goes on (see redact_line)
            r"-----BEGIN[a-z ]{0,40}PRIVATE KEY-----(?P<pem>(?s:.*?))"
            r"(?:(?P<pemend>-----END[a-z ]{0,40}PRIVATE KEY-----)|\Z)",
            # Authorization: [scheme] value, and a bare Bearer value
            r"\bauthorization[\"']?\s*[=:]\s*[\"']?(?:(?:bearer|basic|token|digest)\s+)?"
            r"(?P<auth>[^\s\"']+)",
            r"\bbearer\s+(?P<bearer>[^\s\"']+)",
            # scheme://user:secret@host: the password may hold ':' and '@' (up to
            # the last '@' before the path) but not '/'
            r"://[^\s:/@]*:(?P<url>[^\s/]+)@",
            # NAME=value, NAME: value, "NAME": "value", 'NAME': 'value', --NAME value
            rf"(?<![\w.-])(?P<flag>--)?[\w.-]*?(?:{_NAME_ENDS})"
            r"(?(flag)(?:\s*=\s*|\s+(?!-))|[\"']?\s*[=:]\s*)" + _VALUE.format("v"),
        )
    ),
    re.IGNORECASE | re.ASCII,
)

_TRIGGERS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("-", ("sk-", "glpat-")),
    ("k_", ("k_live_", "k_test_")),
    ("gh", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")),
    ("_", ("_pat_", "npm_", "hf_")),
    (
        "",
        (
            "aiza",
            "xox",
            "eyj",
            "mii",
            "auth",
            "bearer",
            "://",
            "passw",
            "pwd",
            "secret",
            "credential",
        ),
    ),
    ("k", ("akia", "key", "token")),  # "key" also stands for "private key"
)
"""Every match holds one of these (lowered), each listed after a gate it holds
too: a line without the gate skips the group (about half the substring tests
on a common line), a line with none of them skips the regex. Key shapes come
first, as they did in the flat list: on a line of many keys the first test hits."""

_MAX_PASSES: Final = 8
"""Two passes reach the fixed point in practice; past this, fail closed."""


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret replaced by ``[REDACTED]``; ``redact(redact(x)) == redact(x)``.

    ``secrets`` are literal strings to hide wherever they appear (the server's token).
    """
    return redact_line(text, False, secrets)[0]


def redact_line(line: str, in_private_key: bool, secrets: Iterable[str] = ()) -> tuple[str, bool]:
    """One line of a stream, and whether the next line is inside a PEM private key.

    A key opens at a line that ends with its BEGIN marker; every line after it
    is redacted whole up to its END line (LINES.md 1.4). A line that cannot be
    part of a PEM key (not base64, a ``Name: value`` header or blank, after an
    optional ``[Feature #N]`` tag) also ends it, so a key whose END never comes
    (``head key.pem``) does not hide the rest of the run.
    """
    head = ""
    if in_private_key:
        end = _PEM_END.search(line)
        if end is not None:
            head = REDACTED if line[: end.start()].strip() else line[: end.start()]
            line = line[end.start() :]
        elif _PEM_BODY.fullmatch(line) is not None:
            return (REDACTED if line.strip() else line), True
    for secret in secrets:
        if secret:
            line = line.replace(secret, REDACTED)
    if not _triggered(line.lower()):  # the common line: no secret can be in it
        return head + line, False
    opened = False
    for _ in range(_MAX_PASSES):
        redacted, opened = _redact_once(line)
        if redacted == line:
            return head + line, opened
        line = redacted
    # Each changing pass replaces text outside ``[REDACTED]``, so this should be
    # unreachable; if it is not, leak nothing.
    return REDACTED, opened


_PEM_END: Final = re.compile(r"-----END[a-z ]{0,40}PRIVATE KEY-----", re.IGNORECASE | re.ASCII)
_PEM_BODY: Final = re.compile(
    r"\s*(?:\[[^\]]{0,40}\]\s*)?(?:[A-Za-z0-9+/=]+|[A-Za-z-]{1,40}:.*)?\s*", re.ASCII
)
"""A line that may be part of a PEM key: base64, a header or blank, maybe tagged."""


def _redact_once(text: str) -> tuple[str, bool]:
    """One pass of the combined regex; also whether a PEM key opened and did not close."""
    opened = False
    spans: list[tuple[int, int]] = []
    pos = 0
    while (match := _SECRET_RE.search(text, pos)) is not None:
        # Each alternative's secret group is the last group it closes.
        name = match.lastgroup
        assert name is not None  # every alternative has a secret group
        if name == "pemend":
            name = "pem"
        elif name == "pem":
            opened = not match["pem"].strip()
        start, end = match.span(name)
        if start < end and not match[name].isspace():
            if spans and start <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(spans[-1][1], end))
            else:
                spans.append((start, end))
        # Search on from where the secret starts (its opening quote included), not
        # from the match's end: a value that is itself a name, a scheme or a JSON key
        # (``--token "password": "x"``) introduces a secret that overlaps this match.
        # Starts inside a word fail at once, so this stays linear in the line.
        resume = start - 1 if start > 0 and text[start - 1] in "\"'" else start
        pos = max(resume, match.start() + 1)
    if not spans:
        return text, opened
    pieces: list[str] = []
    done = 0
    for start, end in spans:
        pieces += (text[done:start], REDACTED)
        done = end
    pieces.append(text[done:])
    return "".join(pieces), opened


def _triggered(lowered: str) -> bool:
    """Whether ``lowered`` holds a trigger, i.e. may hold a secret the regex finds."""
    for gate, triggers in _TRIGGERS:  # loops, not any(): no generator on every line
        if gate in lowered:
            for trigger in triggers:
                if trigger in lowered:
                    return True
    return False


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
    served; elsewhere the token protects. A missing Host is served: RFC 9112
    3.2 requires it of HTTP/1.1 only (h11 answers that with 400 before we see
    it), an HTTP/1.0 request may omit it, and a request that names no host
    is no rebinding page (a browser always sends one).
    """
    if not on_loopback or host_header is None:
        return None
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


def origin_trusted(origin: str | None, trusted: frozenset[str]) -> bool:
    """Is ``origin`` one of ``serve --trust-origin``'s, whose pages may control without
    the token? Only an exact (case-insensitive) match; no Origin is never trusted."""
    return origin is not None and _listed(origin, trusted)


def origin_shape_problem(origin: str) -> str | None:
    """Why ``origin`` is no ``scheme://host[:port]`` a browser would send, or None."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{origin!r} is not an origin like http://host:port"
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        return f"{origin!r} is not an origin: only scheme, host and port"
    return None


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
