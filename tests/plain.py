"""What the tests call a message: compared as a plain dict, whether a tracker made it
(a TypedDict of `trio_ws.core.messages`) or it was decoded off the wire."""

from __future__ import annotations

from typing import Any

Msg = Any
