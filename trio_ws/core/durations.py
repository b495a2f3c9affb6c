"""Durations as people write them: ``90s``, ``10m``, ``1h`` or plain seconds.

One reader for every place a duration is given (a command-line option, the config
file, a project's settings in the registry), so ``10m`` means the same everywhere.
"""

from __future__ import annotations

import re
from typing import Final

_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)(s|m|h)")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600}


def parse_duration(value: str | float) -> float:
    """``value`` as positive seconds; ValueError saying what is wrong otherwise. A number
    (or a string without a unit) is seconds."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration like 90s, 10m or 1h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        match = _DURATION.fullmatch(text if text[-1:].isalpha() else f"{text}s")
        if match is None:
            raise ValueError(f"{value!r} is not a duration like 90s, 10m or 1h")
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{value!r} is not a positive duration")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest of ``1h``, ``10m``, ``90s`` that reads back as ``seconds``."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
