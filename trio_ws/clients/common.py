"""What every trio-ws client shares: where the server is, and how to wait between tries.

`trio-ws run`/`publish` (producers) and `trio-ws watch` (a subscriber) both
take a server given as ``http(s)://`` or ``ws(s)://`` and both reconnect
with jittered exponential backoff; one definition keeps them agreeing.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass
class Backoff:
    """Jittered exponential delays: ``initial`` doubling up to ``maximum``, each
    drawn from the upper half of its step so reconnecting clients spread out."""

    initial: float = 0.2
    maximum: float = 5.0
    jitter: Callable[[], float] = random.random
    """Returns a number in [0, 1); injected so tests can pin the delays."""
    _step: int = 0

    def next(self) -> float:
        ceiling = min(self.maximum, self.initial * 2.0**self._step)
        if ceiling < self.maximum:
            self._step += 1
        return ceiling / 2 + ceiling / 2 * self.jitter()

    def reset(self) -> None:
        self._step = 0
