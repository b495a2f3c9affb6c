"""From a project's raw output lines and statuses to events (LINES.md 1, 4, 5).

One ``AgentPipeline`` and one ``DevPipeline`` per project. Both are sans-IO:
a raw line or a status in, the list of events it causes out, in wire order,
time only from the injected clock. The hub adds ``seq`` and fans them out.

Every raw line is ``cap``ped first, so no later step (redaction included)
ever sees more than 16 KiB of it: a 10 MB line costs what a 16 KiB one does.
Only redacted text reaches an event or a tracker; the capped line is read for
the status literals, the auth banner and the dev URL, and kept (last 20 lines)
for the crash-time auth check only.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Final

from trio_ws.core.messages import AgentEvent, AgentStatusEvent, DevEvent, LogEvent
from trio_ws.core.protocol import (
    AGENT_STATUSES,
    Clock,
    agent_status,
    dev_log,
    dev_server_status,
    iso_timestamp,
    log,
    wall_clock,
)
from trio_ws.core.security import redact, redact_line
from trio_ws.core.trackers import AgentTracker, OrchestratorTracker, TrackerState, fold, state_value

LINE_CAP: Final = 16 * 1024
"""Longest line (in characters) an event carries, truncation suffix included."""

_FEATURE_LINE: Final = "[Feature #"
_FEATURE_ID: Final = re.compile(r"\[Feature #([0-9]{1,15})\]")
"""Same bound as the trackers: a longer number is not an id the orchestrator prints."""

_DRAINED: Final = "All agents drained - paused."
_RESUMING: Final = "Resuming from graceful pause..."
_STATUS_LITERALS: Final = ((_DRAINED, "paused_graceful"), (_RESUMING, "running"))

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
_AUTH_NEEDLES: Final = (
    ("", ("invalid", "expired", "sign")),
    ("log", ("logged", "login")),
    ("auth", ("authenticat", "unauthorized")),
)
"""Every ``_AUTH_ERROR`` hit holds one of these in its ``fold``, each listed after a
gate it holds too: most lines skip the search after five substring tests."""

_RULE: Final = "=" * 80
AUTH_BANNER: Final[tuple[str, ...]] = (
    _RULE,
    "  AUTHENTICATION ERROR DETECTED",
    _RULE,
    "",
    "Claude CLI requires authentication to work.",
    "",
    "Option 1 (Recommended): Set an API key",
    "  export ANTHROPIC_API_KEY=your-key-here",
    "  Get a key at: https://console.anthropic.com/",
    "",
    "Option 2: Use subscription login",
    "  claude login",
    "",
    "  Note: Anthropic's policy may not permit using",
    "  subscription auth with third-party agents.",
    "  API key authentication is recommended.",
    _RULE,
)
"""The ``log`` lines shown once per run when the CLI is not logged in: AutoForge
0.1.22's ``AUTH_ERROR_HELP_SERVER`` (17 lines). Beyond LINES.md 1.3, whose 12 lines
are 69d9313's: that text only says ``claude login``, which the newer one no longer
recommends. The banner is our text, not the agent's, so it never passes through
redaction (its ``export ANTHROPIC_API_KEY=your-key-here`` would be ``[REDACTED]``)."""

_AUTO_IMPROVE: Final = "[AUTO-IMPROVE] "
"""How an AutoForge 0.1.22 ``--auto-improve`` run starts (autonomous_agent_demo.py prints
``[AUTO-IMPROVE] Starting single-session improvement run...`` before the agent runs)."""

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


_CUT_WINDOW: Final = 1024
"""How far a cut backs off to the start of the word it would split."""

_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_NON_SPACE: Final = re.compile(r"\S*")


def cap(raw: str) -> tuple[str, int]:
    """The part of ``raw`` any later step may look at, and how many characters were cut.

    LINES.md 1.1: the head of a line longer than ``LINE_CAP`` (room left for
    the truncation marker), lone surrogates as U+FFFD so it can be encoded,
    trailing whitespace stripped. The cut backs off to the start of the word
    it would split (within ``_CUT_WINDOW``), so half a secret, too short to
    be recognised, never survives at the end of the head.
    """
    dropped = 0
    if len(raw) > LINE_CAP:
        head = raw[: _cut(raw, LINE_CAP - len(_truncated(len(raw))))]
        dropped = len(raw) - len(head)
        raw = head
    if not raw.isascii() and _SURROGATE.search(raw) is not None:
        # UTF-16 round trip: a valid pair becomes its character, a lone half U+FFFD.
        raw = raw.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return (raw if dropped else raw.rstrip()), dropped


def finish(clean: str, dropped: int) -> str:
    """The redacted head with its truncation marker, within ``LINE_CAP`` even when
    redaction made it longer (then the count includes what was cut of the redacted text)."""
    if len(clean) + (len(_truncated(dropped)) if dropped else 0) <= LINE_CAP:
        return clean + _truncated(dropped) if dropped else clean
    keep = _cut(clean, LINE_CAP - len(_truncated(dropped + len(clean))))
    return clean[:keep] + _truncated(dropped + len(clean) - keep)


def sanitize(raw: str, secrets: Iterable[str] = ()) -> str:
    """A raw line as an event carries it, outside any private key block: capped, then redacted."""
    head, dropped = cap(raw)
    return finish(redact(head, secrets), dropped)


def _cut(text: str, keep: int) -> int:
    """Where to cut ``text`` to keep at most ``keep`` characters: before a split word if near."""
    if text[keep].isspace():
        return keep
    window = text[max(0, keep - _CUT_WINDOW) : keep]
    word = _NON_SPACE.match(window[::-1])  # the split word's head, read backwards
    assert word is not None  # \S* always matches
    return keep if word.end() == len(window) else keep - word.end()


def _truncated(dropped: int) -> str:
    return f" … [truncated {dropped} chars]"


class AgentPipeline:
    """The agent stream of one project: lines and statuses to events (LINES.md 1, 5).

    A run is one life of the agent process: it starts at construction and
    whenever the status becomes ``running`` after ``stopped`` or ``crashed``
    (a resume from a pause continues the same run). The auth banner shows at
    most once per run.

    Beyond LINES.md: a run whose top-level output says ``[AUTO-IMPROVE] ``
    (AutoForge 0.1.22's ``--auto-improve``, restarted by its server every
    10 minutes) has no orchestrator. Every later line of it is the one agent's
    own unprefixed narrative, so from there on lines are only logged (with the
    auth banner and redaction as always): no status literal, no tracker, no
    ``featureId``. Otherwise an agent saying "All features complete" would
    end a run nobody orchestrates, or "Feature #3 completed" would complete
    a card nobody started.
    """

    def __init__(self, clock: Clock = wall_clock, secrets: Iterable[str] = ()) -> None:
        self._clock = clock
        self._secrets = tuple(secret for secret in secrets if secret)
        self.in_private_key = False
        """Inside a PEM private key: lines are redacted whole until its END line."""
        self._line_time: float | None = None
        self._status = "stopped"
        self.agents = AgentTracker(self._tracker_clock)
        self.orchestrator = OrchestratorTracker(self._tracker_clock)
        self._banner_shown = False
        self._recent: deque[str] = deque(maxlen=_CRASH_WINDOW)
        self._auto_improve = False

    @property
    def status(self) -> str:
        return self._status

    def feed_line(self, raw: str, at: float | None = None) -> list[AgentEvent]:
        """Events for one raw line, in wire order (LINES.md 1, step 6), sharing one timestamp:
        ``at`` (UNIX seconds: when the producer read it) or else the clock's now."""
        self._line_time = self._clock() if at is None else at
        try:
            return self._feed(*cap(raw), iso_timestamp(self._line_time))
        finally:
            self._line_time = None

    @property
    def auto_improve(self) -> bool:
        """Whether this run is an auto-improve session (its lines are only logged)."""
        return self._auto_improve

    def _feed(self, line: str, dropped: int, timestamp: str) -> list[AgentEvent]:
        events: list[AgentEvent] = []
        if line.startswith(_AUTO_IMPROVE):
            self._auto_improve = True
        if (
            (_DRAINED in line or _RESUMING in line)
            and not line.startswith(_FEATURE_LINE)
            and not self._auto_improve
        ):
            found = sorted(
                (line.find(literal), status)
                for literal, status in _STATUS_LITERALS
                if literal in line
            )
            for _, status in found:
                events += self._change(status)
        if not self._banner_shown and _auth_error(line):
            events += self._banner(timestamp)
        redacted, self.in_private_key = redact_line(line, self.in_private_key, self._secrets)
        # The crash window keeps redacted lines: it is journalled, and no auth
        # pattern needs a secret's value to match.
        self._recent.append(redacted)
        # Most lines are short and whole: they need no marker and no cut.
        clean = finish(redacted, dropped) if dropped or len(redacted) > LINE_CAP else redacted
        if self._auto_improve:
            events.append(log(clean, timestamp, None, None))
            return events
        agent_update = self.agents.feed(clean)
        orchestrator_update = self.orchestrator.feed(clean)
        feature_id = _feature_id(clean) if clean.startswith(_FEATURE_LINE) else None
        agent_index = None if feature_id is None else self.agents.owner_of(feature_id)
        events.append(log(clean, timestamp, feature_id, agent_index))
        if agent_update is not None:
            events.append(agent_update)
        if orchestrator_update is not None:
            events.append(orchestrator_update)
        return events

    def feed_lines(self, raws: Iterable[str]) -> list[AgentEvent]:
        """``feed_line`` for each line in turn (a producer's batch)."""
        return [event for raw in raws for event in self.feed_line(raw)]

    def set_status(self, status: str) -> list[AgentEvent]:
        """Events for a status from the producer; none when it does not change.

        ``crashed`` in a run that showed no banner yet checks the last 20 raw
        lines together once more (the banner then comes first); ``stopped``
        and ``crashed`` make both trackers forget the run.
        """
        if status not in AGENT_STATUSES:
            raise ValueError(f"unknown agent status {status!r}")
        if status == self._status:
            return []
        events: list[AgentEvent] = []
        if status == "crashed" and not self._banner_shown and _auth_error("\n".join(self._recent)):
            events += self._banner(iso_timestamp(self._clock()))
        events += self._change(status)
        if status in _RUN_OVER:
            self.agents.reset()
            self.orchestrator.reset()
        return events

    def _tracker_clock(self) -> float:
        """The current line's time while one is fed (one clock read per line), else now."""
        return self._clock() if self._line_time is None else self._line_time

    def _change(self, status: str) -> list[AgentStatusEvent]:
        if status == self._status:
            return []
        if status == "running" and self._status in _RUN_OVER:
            self._banner_shown = False
            self._recent.clear()
            self._auto_improve = False
        self._status = status
        # A status read off a line is dated with it; the hub dates a producer's status.
        line_time = self._line_time
        return [agent_status(status, None if line_time is None else iso_timestamp(line_time))]

    def _banner(self, timestamp: str) -> list[LogEvent]:
        self._banner_shown = True
        return [log(line, timestamp, None, None) for line in AUTH_BANNER]

    # -- restart: state out, state in ----------------------------------------

    def to_state(self) -> TrackerState:
        """Status, banner flag, key-block flag, auto-improve flag, the (redacted) crash
        window and both trackers, JSON-able."""
        return {
            "status": self._status,
            "banner_shown": self._banner_shown,
            "auto_improve": self._auto_improve,
            "in_private_key": self.in_private_key,
            "recent": list(self._recent),
            "agents": self.agents.to_state(),
            "orchestrator": self.orchestrator.to_state(),
        }

    @classmethod
    def from_state(
        cls, state: Mapping[str, object], clock: Clock = wall_clock, secrets: Iterable[str] = ()
    ) -> AgentPipeline:
        """A pipeline that continues exactly where the one that made ``state`` stood."""
        pipeline = cls(clock, secrets)
        status = state_value(state, "status", str)
        if status not in AGENT_STATUSES:
            raise ValueError(f"pipeline state: unknown agent status {status!r}")
        pipeline._status = status
        pipeline._banner_shown = state_value(state, "banner_shown", bool)
        pipeline.in_private_key = bool(state.get("in_private_key", False))
        # A state journalled before auto-improve runs were known has no flag: not one.
        if "auto_improve" in state:
            pipeline._auto_improve = state_value(state, "auto_improve", bool)
        recent = state_value(state, "recent", list)
        if not all(isinstance(line, str) for line in recent):
            raise ValueError("pipeline state: recent lines are not all strings")
        pipeline._recent.extend(recent)
        pipeline.agents = AgentTracker.from_state(
            state_value(state, "agents", dict), pipeline._tracker_clock
        )
        pipeline.orchestrator = OrchestratorTracker.from_state(
            state_value(state, "orchestrator", dict), pipeline._tracker_clock
        )
        return pipeline


class DevPipeline:
    """The dev-server stream of one project: lines to ``dev_log``, plus its URL (LINES.md 4)."""

    def __init__(self, clock: Clock = wall_clock, secrets: Iterable[str] = ()) -> None:
        self._clock = clock
        self._secrets = tuple(secret for secret in secrets if secret)
        self.in_private_key = False
        """Inside a PEM private key: lines are redacted whole until its END line."""
        self._status = "stopped"
        self._url: str | None = None

    @property
    def status(self) -> str:
        return self._status

    @property
    def url(self) -> str | None:
        """Where the dev server listens in this run, once a line has said so."""
        return self._url

    def feed_line(self, raw: str, at: float | None = None) -> list[DevEvent]:
        """The ``dev_log`` for one raw line (dated ``at``, else now), then a
        ``dev_server_status`` if it reveals the URL."""
        line, dropped = cap(raw)
        redacted, self.in_private_key = redact_line(line, self.in_private_key, self._secrets)
        when = self._clock() if at is None else at
        events: list[DevEvent] = [dev_log(finish(redacted, dropped), iso_timestamp(when))]
        if self._url is None and (url := _dev_url(line, self._secrets)) is not None:
            self._url = url
            events.append(dev_server_status(self._status, url))
        return events

    def feed_lines(self, raws: Iterable[str]) -> list[DevEvent]:
        """``feed_line`` for each line in turn (a producer's batch)."""
        return [event for raw in raws for event in self.feed_line(raw)]

    def set_status(self, status: str) -> list[DevEvent]:
        """A ``dev_server_status`` when the status changes; every change forgets the URL."""
        event = dev_server_status(status, None)  # raises ValueError on an unknown status
        if status == self._status:
            return []
        self._status = status
        self._url = None
        return [event]

    # -- restart: state out, state in ----------------------------------------

    def to_state(self) -> TrackerState:
        """Status, URL and key-block flag, JSON-able."""
        return {"status": self._status, "url": self._url, "in_private_key": self.in_private_key}

    @classmethod
    def from_state(
        cls, state: Mapping[str, object], clock: Clock = wall_clock, secrets: Iterable[str] = ()
    ) -> DevPipeline:
        """A pipeline that continues exactly where the one that made ``state`` stood."""
        pipeline = cls(clock, secrets)
        pipeline.in_private_key = bool(state.get("in_private_key", False))
        status = state_value(state, "status", str)
        dev_server_status(status, None)  # raises ValueError on an unknown status
        pipeline._status = status
        url = state.get("url")
        pipeline._url = None if url is None else state_value(state, "url", str)
        return pipeline


def _auth_error(text: str) -> bool:
    """Whether ``text`` says the CLI is not logged in (LINES.md 1, step 3)."""
    folded = fold(text)
    for gate, needles in _AUTH_NEEDLES:
        if gate in folded:
            for needle in needles:
                if needle in folded:
                    return _AUTH_ERROR.search(text) is not None
    return False


def _feature_id(line: str) -> int | None:
    """The id of a ``[Feature #N]`` line (the caller has checked that prefix)."""
    match = _FEATURE_ID.match(line)
    return None if match is None else int(match[1])


def _dev_url(line: str, secrets: Iterable[str]) -> str | None:
    """The first loopback or wildcard URL in ``line`` by pattern order, redacted."""
    if "://" not in line:  # in every pattern: most lines need no search
        return None
    for pattern in _DEV_URLS:
        if (match := pattern.search(line)) is not None:
            return redact(match[0].rstrip("),."), secrets)
    return None
