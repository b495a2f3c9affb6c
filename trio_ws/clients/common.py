"""What every trio-ws client shares: where the server is.

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
