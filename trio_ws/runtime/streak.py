"""Say a failure once per streak, and its end once.

A poll, a commit or a lease renewal that keeps failing every second must not
fill the log (or the subscribers' warnings) with the same line; the first
failure of a streak is said, and the first success after it is said too, so a
reader of the log sees when trouble began and when it ended.
"""

from __future__ import annotations


class FailureStreak:
    """Whether the outcome at hand begins or ends a streak of failures."""

    __slots__ = ("_failing",)

    def __init__(self) -> None:
        self._failing = False

    @property
    def failing(self) -> bool:
        """True from a streak's first failure until the next success."""
        return self._failing

    def failed(self) -> bool:
        """Record a failure; True when it begins a streak (say it now)."""
        began = not self._failing
        self._failing = True
        return began

    def succeeded(self) -> bool:
        """Record a success; True when it ends a streak (say it recovered)."""
        ended = self._failing
        self._failing = False
        return ended
