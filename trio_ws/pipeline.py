"""From a project's raw output lines and statuses to events (LINES.md 1, 4, 5).

One ``AgentPipeline`` and one ``DevPipeline`` per project. Both are sans-IO:
a raw line or a status in, the list of events it causes out, in wire order,
time only from the injected clock. The hub adds ``seq`` and fans them out.

Only ``sanitize``d text (stripped, redacted, capped) reaches an event or a
tracker; the raw line is read for the status literals, the auth banner and
the dev URL, and kept (last 20 lines) for the crash-time auth check only.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from typing import Final

from trio_ws.protocol import (
    AGENT_STATUSES,
    Clock,
    Message,
    agent_status,
    dev_log,
    dev_server_status,
    iso_timestamp,
    log,
    wall_clock,
)
from trio_ws.security import redact
from trio_ws.trackers import AgentTracker, OrchestratorTracker

LINE_CAP: Final = 16 * 1024
"""Longest line (in characters) an event carries, truncation suffix included."""

_FEATURE_LINE: Final = "[Feature #"
_FEATURE_ID: Final = re.compile(r"\[Feature #([0-9]{1,15})\]")
"""Same bound as the trackers: a longer number is not an id the orchestrator prints."""

_STATUS_LITERALS: Final = (
    ("All agents drained - paused.", "paused_graceful"),
    ("Resuming from graceful pause...", "running"),
)

_AUTH_ERROR: Final = re.compile(
    "|".join(
        (
            r"not\s+logged\s+in",
            r"not\s+authenticated",
            r"authentication\s+(?:failed|required|error)",
            r"login\s+required",
            r"please\s+(?:run\s+)?['\"]?claude\s+login",
            r"unauthorized",
            r"invalid\s+(?:token|credential|api.?key)",
            r"expired\s+(?:token|session|credential)",
            r"could\s+not\s+authenticate",
            r"sign\s+in\s+(?:to|required)",
        )
    ),
    re.IGNORECASE,
)

_RULE: Final = "=" * 80
AUTH_BANNER: Final[tuple[str, ...]] = (
    _RULE,
    "  AUTHENTICATION ERROR DETECTED",
    _RULE,
    "",
    "Claude CLI requires authentication to work.",
    "",
    "To fix this, run:",
    "  claude login",
    "",
    "This will open a browser window to sign in.",
    "After logging in, try starting the agent again.",
    _RULE,
)
"""The twelve ``log`` lines shown once per run when the CLI is not logged in."""

_CRASH_WINDOW: Final = 20
_RUN_OVER: Final = frozenset({"stopped", "crashed"})

_DEV_URLS: Final = tuple(
    re.compile(pattern, re.ASCII)
    for pattern in (
        r"https?://(?:localhost|127\.0\.0\.1):\d+(?:/[^\s]*)?",
        r"https?://\[::1\]:\d+(?:/[^\s]*)?",
        r"https?://0\.0\.0\.0:\d+(?:/[^\s]*)?",
    )
)


_SURROGATE: Final = re.compile("[\ud800-\udfff]")
"""A lone surrogate (``"\\ud800"`` in JSON) cannot be encoded as UTF-8 (LINES.md 1.1)."""


def sanitize(raw: str) -> str:
    """Replace lone surrogates with U+FFFD, strip trailing whitespace, redact, then cap,
    so every line can be encoded and a cut can never expose part of a secret."""
    if not raw.isascii():
        raw = _SURROGATE.sub("\ufffd", raw)
    line = redact(raw.rstrip())
    if len(line) <= LINE_CAP:
        return line
    # len(line) has at least as many digits as the count dropped, so the total fits.
    keep = LINE_CAP - len(_truncated(len(line)))
    return line[:keep] + _truncated(len(line) - keep)


def _truncated(dropped: int) -> str:
    return f" … [truncated {dropped} chars]"


class AgentPipeline:
    """The agent stream of one project: lines and statuses to events (LINES.md 1, 5).

    A run is one life of the agent process: it starts at construction and
    whenever the status becomes ``running`` after ``stopped`` or ``crashed``
    (a resume from a pause continues the same run). The auth banner shows at
    most once per run.
    """

    def __init__(self, clock: Clock = wall_clock) -> None:
        self._clock = clock
        self._line_time: float | None = None
        self._status = "stopped"
        self.agents = AgentTracker(self._tracker_clock)
        self.orchestrator = OrchestratorTracker(self._tracker_clock)
        self._banner_shown = False
        self._recent: deque[str] = deque(maxlen=_CRASH_WINDOW)

    @property
    def status(self) -> str:
        return self._status

    def feed_line(self, raw: str) -> list[Message]:
        """Events for one raw line, in wire order (LINES.md 1, step 7), sharing one timestamp."""
        self._line_time = self._clock()
        try:
            return self._feed(raw.rstrip(), iso_timestamp(self._line_time))
        finally:
            self._line_time = None

    def _feed(self, line: str, timestamp: str) -> list[Message]:
        events: list[Message] = []
        if not line.startswith(_FEATURE_LINE):
            found = sorted(
                (line.find(literal), status)
                for literal, status in _STATUS_LITERALS
                if literal in line
            )
            for _, status in found:
                events += self._change(status)
        self._recent.append(line)
        if not self._banner_shown and _AUTH_ERROR.search(line):
            events += self._banner(timestamp)
        clean = sanitize(line)
        agent_update = self.agents.feed(clean)
        orchestrator_update = self.orchestrator.feed(clean)
        feature_id = _feature_id(clean)
        agent_index = None if feature_id is None else self.agents.owner_of(feature_id)
        events.append(log(clean, timestamp, feature_id, agent_index))
        if agent_update is not None:
            events.append(agent_update)
        if orchestrator_update is not None:
            events.append(orchestrator_update)
        return events

    def feed_lines(self, raws: Iterable[str]) -> list[Message]:
        """``feed_line`` for each line in turn (a producer's batch)."""
        return [event for raw in raws for event in self.feed_line(raw)]

    def set_status(self, status: str) -> list[Message]:
        """Events for a status from the producer; none when it does not change.

        ``crashed`` in a run that showed no banner yet checks the last 20 raw
        lines together once more (the banner then comes first); ``stopped``
        and ``crashed`` make both trackers forget the run.
        """
        if status not in AGENT_STATUSES:
            raise ValueError(f"unknown agent status {status!r}")
        if status == self._status:
            return []
        events: list[Message] = []
        if (
            status == "crashed"
            and not self._banner_shown
            and _AUTH_ERROR.search("\n".join(self._recent))
        ):
            events += self._banner(iso_timestamp(self._clock()))
        events += self._change(status)
        if status in _RUN_OVER:
            self.agents.reset()
            self.orchestrator.reset()
        return events

    def _tracker_clock(self) -> float:
        """The current line's time while one is fed (one clock read per line), else now."""
        return self._clock() if self._line_time is None else self._line_time

    def _change(self, status: str) -> list[Message]:
        if status == self._status:
            return []
        if status == "running" and self._status in _RUN_OVER:
            self._banner_shown = False
            self._recent.clear()
        self._status = status
        return [agent_status(status)]

    def _banner(self, timestamp: str) -> list[Message]:
        self._banner_shown = True
        return [log(line, timestamp, None, None) for line in AUTH_BANNER]


class DevPipeline:
    """The dev-server stream of one project: lines to ``dev_log``, plus its URL (LINES.md 4)."""

    def __init__(self, clock: Clock = wall_clock) -> None:
        self._clock = clock
        self._status = "stopped"
        self._url: str | None = None

    @property
    def status(self) -> str:
        return self._status

    @property
    def url(self) -> str | None:
        """Where the dev server listens in this run, once a line has said so."""
        return self._url

    def feed_line(self, raw: str) -> list[Message]:
        """The ``dev_log`` for one raw line, then a ``dev_server_status`` if it reveals the URL."""
        line = raw.rstrip()
        events = [dev_log(sanitize(line), iso_timestamp(self._clock()))]
        if self._url is None and (url := _dev_url(line)) is not None:
            self._url = url
            events.append(dev_server_status(self._status, url))
        return events

    def feed_lines(self, raws: Iterable[str]) -> list[Message]:
        """``feed_line`` for each line in turn (a producer's batch)."""
        return [event for raw in raws for event in self.feed_line(raw)]

    def set_status(self, status: str) -> list[Message]:
        """A ``dev_server_status`` when the status changes; every change forgets the URL."""
        event = dev_server_status(status, None)  # raises ValueError on an unknown status
        if status == self._status:
            return []
        self._status = status
        self._url = None
        return [event]


def _feature_id(line: str) -> int | None:
    match = _FEATURE_ID.match(line)
    return None if match is None else int(match[1])


def _dev_url(line: str) -> str | None:
    """The first loopback or wildcard URL in ``line`` by pattern order, sanitised."""
    for pattern in _DEV_URLS:
        if (match := pattern.search(line)) is not None:
            return sanitize(match[0].rstrip("),."))
    return None
