"""What the tests call a message: compared as a plain dict, whether a tracker made it
(a TypedDict of `trio_ws.core.messages`) or it was decoded off the wire."""

from __future__ import annotations

from typing import Any, get_args, get_type_hints

from trio_ws.core.messages import Event

Msg = Any

EVENT_KINDS: dict[str, Any] = {
    get_args(get_type_hints(kind)["type"])[0]: kind for kind in get_args(Event)
}
"""Each event TypedDict by its ``type`` tag: the types that carry a ``seq`` of their own."""
