"""The access log: one line per HTTP request or websocket session, said in one place.

`server._dispatch` opens an `Exchange` when a request head has been read and calls
`log_access` when the request (or the websocket session it became) is over. The
line (logger ``trio_ws.net.access``, level info) carries ``method``, ``path``
(never the query string, which may carry the token), ``status`` (the HTTP status
`httpio` sent, or a websocket's close code), ``duration_ms``, ``client``,
``websocket`` and, when the path names one, ``project``, as fields for
``--log-format json``. Never per event: a session is one line when it ends.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote

import trio

from trio_ws.core.security import redact
from trio_ws.net.connection import WebSocket
from trio_ws.net.httpio import RequestHead

access_log = logging.getLogger("trio_ws.net.access")
_NAMES_PROJECT: Final = re.compile(r"/(?:ws/projects|api/projects|projects)/(?P<name>[^/]+)")


@dataclass
class Exchange:
    """One request from its head on: when it started, and the websocket it became."""

    head: RequestHead
    client: str
    started: float = field(default_factory=trio.current_time)
    ws: WebSocket | None = None

    @property
    def status(self) -> int | None:
        """The websocket's close code, else the HTTP status sent (None: none was)."""
        if self.ws is not None:
            return self.ws.closed.code if self.ws.closed is not None else None
        return self.head.connection.status


def log_access(exchange: Exchange, token: str) -> None:
    """Say the exchange's access line (``token`` is redacted should the path hold it)."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    head = exchange.head
    seconds = trio.current_time() - exchange.started
    path = redact(head.path, (token,))
    status = exchange.status
    fields: dict[str, object] = {
        "method": head.method,
        "path": path,
        "status": status,
        "duration_ms": round(seconds * 1000, 1),
        "client": exchange.client,
        "websocket": exchange.ws is not None,
    }
    project = _project_named(head.path)
    if project is not None:
        fields["project"] = project
    access_log.info(
        "%s %s %s %.1f ms %s",
        head.method,
        path,
        "-" if status is None else status,
        seconds * 1000,
        exchange.client,
        extra=fields,
    )


def _project_named(path: str) -> str | None:
    """The project a path names (``/ws/projects/NAME``, ``/api/projects/NAME/...``,
    ``/projects/NAME``), percent-decoded; None for any other path, or a name that is
    not UTF-8 (which no project has)."""
    named = _NAMES_PROJECT.match(path)
    if named is None:
        return None
    try:
        return unquote(named["name"], errors="strict")
    except UnicodeDecodeError:
        return None
