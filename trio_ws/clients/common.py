"""What every trio-ws client shares: where the server is, how a token is sent and
which answers mean "do not retry".

`trio-ws run`/`publish` (producers) and `trio-ws watch` (a subscriber) both
take a server given as ``http(s)://`` or ``ws(s)://``; one definition keeps
them agreeing. Both reconnect with `trio_ws.runtime.backoff.Backoff`.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit, urlunsplit

from trio_ws.core import defaults

DEFAULT_SERVER: Final = defaults.SERVER_URL
_WEBSOCKET_SCHEMES: Final = {"http": "ws", "ws": "ws", "https": "wss", "wss": "wss"}


def websocket_base(server: str) -> str:
    """``ws(s)://HOST[:PORT][/prefix]`` for a server URL in http(s) or ws(s) form."""
    parts = urlsplit(server.strip())
    scheme = _WEBSOCKET_SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise ValueError(f"server URL {server!r} must look like http://HOST:PORT or ws://HOST:PORT")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def http_base(server: str) -> str:
    """``http(s)://HOST[:PORT][/prefix]`` for a server URL in http(s) or ws(s) form: where
    its pages and REST API are (`websocket_base`'s twin)."""
    scheme, rest = websocket_base(server).split(":", 1)
    return f"{'https' if scheme == 'wss' else 'http'}:{rest}"


RETRIED_STATUSES: Final = frozenset({408, 429})
"""HTTP 4xx answers that mean "not now" (timeout, too many requests), not "never"."""


def refuses_for_good(*, status: int | None = None, close_code: int | None = None) -> bool:
    """Whether a server's answer means "do not retry", for every client alike: an HTTP
    4xx refusal of the upgrade other than `RETRIED_STATUSES`, or a 4xxx close
    (PROTOCOL.md). 5xx, 1xxx closes (1013 try again later among them) are retried."""
    if status is not None and 400 <= status < 500 and status not in RETRIED_STATUSES:
        return True
    return close_code is not None and 4000 <= close_code <= 4999


def bearer_header(token: str) -> tuple[bytes, bytes]:
    """The header a client sends its token in (never in a URL a log might keep)."""
    return (b"Authorization", f"Bearer {token}".encode())
