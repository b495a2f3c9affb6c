"""The two pure line trackers of ``LINES.md`` sections 2 and 3.

``AgentTracker`` turns orchestrator and ``[Feature #N]`` lines into
``agent_update`` messages (one card per agent in the UI);
``OrchestratorTracker`` turns orchestrator lines into ``orchestrator_update``
messages. Both are sans-IO: a line in, at most one message out, time only
from the injected clock, so they are tested with plain calls.

Numbers are ASCII digits (the orchestrator prints nothing else); a number of
more than 15 digits is not an id or count the orchestrator prints (and
``int`` refuses very long ones), so a rule hit carrying one is ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, TypedDict, TypeVar, cast

from trio_ws.core.messages import AgentType, AgentUpdateEvent, OrchestratorUpdateEvent
from trio_ws.core.protocol import Clock, iso_timestamp, wall_clock

MASCOTS: Final[tuple[str, ...]] = (
    "Spark",
    "Fizz",
    "Octo",
    "Hoot",
    "Buzz",
    "Pixel",
    "Byte",
    "Nova",
    "Chip",
    "Bolt",
    "Dash",
    "Zap",
    "Gizmo",
    "Turbo",
    "Blip",
    "Neon",
    "Widget",
    "Zippy",
    "Quirk",
    "Flux",
)
"""Agent names the UI can draw, in order; agent ``i`` is ``MASCOTS[i % 20]``."""

UNKNOWN_AGENT: Final = "Unknown"
"""Name of a synthetic completion (an agent nobody tracked)."""

_MAX_DIGITS: Final = 15
_THOUGHT_CAP: Final = 200
_A: Final = re.ASCII

# -- AgentTracker rules (LINES.md 2), applied with re.match, first match wins --
_SPAWN_CODING_BATCH: Final = re.compile(
    r"Started coding agent for features (#\d+(?:,\s*#\d+)*)", _A
)
_SPAWN_CODING: Final = re.compile(r"Started coding agent for feature #(\d+)", _A)
_SPAWN_TESTING_BATCH: Final = re.compile(
    r"Started testing agent for features \[(\d+(?:,\d+)*)\] \(PID \d+\)", _A
)
_SPAWN_TESTING: Final = re.compile(r"Started testing agent for feature #(\d+)", _A)
_TESTING_DONE: Final = re.compile(r"Feature #(\d+) testing (completed|failed)", _A)
_BATCH_DONE: Final = re.compile(r"Features (#\d+(?:,\s*#\d+)*)\s+(completed|failed)", _A)
_GIVING_UP: Final = re.compile(r"Feature #(\d+) has failed \d+ times, will not retry", _A)
_CODING_DONE: Final = re.compile(r"Feature #(\d+) (completed|failed)$", _A)
_ACTIVITY: Final = re.compile(r"\[Feature #(\d+)\]\s*(.*)", _A)
_DIGITS: Final = re.compile(r"\d+", _A)
_AGENT_STARTS: Final = ("[Feature #", "Started ", "Feature")
"""Every rule above starts with one of these."""

# -- activity table: (pattern, state, thought source, needles); source "content"
# means content[:100], an int means that group of the match. The patterns are
# case-insensitive (Unicode), so a pattern can only hit a line whose ``fold``
# holds one of its needles: that cheap test skips the search of all the others.
_ACTIVITY_TABLE: Final[tuple[tuple[re.Pattern[str], str, str | int, tuple[str, ...]], ...]] = tuple(
    (re.compile(pattern, re.IGNORECASE), state, source, needles)
    for pattern, state, source, needles in (
        (r"\[Tool:\s*Read\]", "thinking", "content", ("read]",)),
        (r"\[Tool:\s*(?:Write|Edit|NotebookEdit)\]", "working", "content", ("[tool:",)),
        (r"\[Tool:\s*Bash\]", "testing", "content", ("bash]",)),
        (r"\[Tool:\s*(?:Glob|Grep)\]", "thinking", "content", ("[tool:",)),
        (r"\[Tool:\s*(\w+)\]", "working", 1, ("[tool:",)),
        (
            r"(?:Reading|Analyzing|Checking|Looking at|Examining)\s+(.+)",
            "thinking",
            1,
            ("reading", "analyzing", "checking", "looking at", "examining"),
        ),
        (
            r"(?:Creating|Writing|Adding|Implementing|Building)\s+(.+)",
            "working",
            1,
            ("creating", "writing", "adding", "implementing", "building"),
        ),
        (
            r"(?:Testing|Verifying|Running tests|Validating)\s+(.+)",
            "testing",
            1,
            ("testing", "verifying", "running tests", "validating"),
        ),
        (
            r"(?:Error|Failed|Cannot|Unable to|Exception)\s+(.+)",
            "struggling",
            1,
            ("error", "failed", "cannot", "unable to", "exception"),
        ),
        (r"(?:PASS|passed|success)", "testing", "content", ("pass", "success")),
        (r"(?:FAIL|failed|error)", "struggling", "content", ("fail", "error")),
    )
)

_CASE_FOLDS: Final = (("\u0130", "i"), ("\u0131", "i"), ("\u017f", "s"), ("\u212a", "k"))
"""The only non-ASCII characters a case-insensitive ASCII letter matches (İ ı ſ K)."""


def fold(text: str) -> str:
    """``text`` lowered so that every case-insensitive (Unicode) match of an ASCII
    pattern is a plain substring match of the lowered pattern: a needle test."""
    if not text.isascii():
        for char, letter in _CASE_FOLDS:  # before lower(): İ lowers to two characters
            if char in text:
                text = text.replace(char, letter)
    return text.lower()


# -- OrchestratorTracker (LINES.md 3): case-sensitive re.search ----------------
# Each pattern with a needle (a substring every hit holds) or a start (a prefix
# every hit has), tested first: most lines need no regex at all.
_MAX_CONCURRENCY: Final = (
    ("Max concurrency: ", re.compile(r"Max concurrency: (\d+) coding agents", _A)),
    ("max_concurrency=", re.compile(r"max_concurrency=(\d+)", _A)),
)
_CHAIN: Final[tuple[tuple[str, str, bool, re.Pattern[str]], ...]] = tuple(
    (event_type, needle, needle_starts, re.compile(pattern, _A))
    for event_type, needle, needle_starts, pattern in (
        ("init_start", "Running initializer agent", False, r"Running initializer agent"),
        ("init_complete", "INITIALIZATION COMPLETE", False, r"INITIALIZATION COMPLETE"),
        (
            "capacity_check",
            "[DEBUG] Spawning loop: ",
            False,
            r"\[DEBUG\] Spawning loop: (\d+) ready, (\d+) slots",
        ),
        (
            "at_capacity",
            "t max ",
            False,
            r"At max capacity|at max testing agents|At max total agents",
        ),
        ("feature_start", "Starting feature ", False, r"Starting feature \d+/\d+: #(\d+) - (.+)"),
        (
            "coding_spawn",
            "Started coding agent for feature",
            False,
            r"Started coding agent for features? #(\d+)",
        ),
        (
            "testing_spawn",
            "Started testing agent for feature",
            False,
            r"Started testing agent for features? \[?#?(\d+)",
        ),
        ("testing_complete", "Feature #", True, r"^Feature #(\d+) testing (completed|failed)"),
        (
            "coding_complete",
            "Feature",
            True,
            r"^Features? #(\d+)(?:,\s*#\d+)* (completed|failed)$",
        ),
        ("blocked_features", " blocked by dependencies", False, r"(\d+) blocked by dependencies"),
        ("all_complete", "All features complete", False, r"All features complete"),
        ("drain_start", "Graceful pause requested", False, r"Graceful pause requested"),
        ("drain_complete", "All agents drained", False, r"All agents drained"),
        ("drain_resume", "Resuming from graceful pause", False, r"Resuming from graceful pause"),
    )
)
_ANY_NEEDLE: Final = re.compile(
    r"Max concurrency: |max(?:_concurrency=| )|Running initializer agent|INITIALIZATION COMPLETE"
    r"|\[DEBUG\] Spawning loop: |Start(?:ing feature |ed (?:coding|testing) agent for feature)"
    r"|Feature|blocked by dependencies|All (?:features complete|agents drained)"
    r"|Graceful pause requested|Resuming from graceful pause"
)
"""One search for all needles (a start is also a substring; ``max `` and ``blocked``
stand for ``t max `` and `` blocked``, common prefixes are shared, which halves
the search on prose): a line without any, the most common line, is done with it."""
_FIXED: Final[dict[str, tuple[str, str]]] = {
    "init_start": ("initializing", "Initializing project features..."),
    "init_complete": ("scheduling", "Initialization complete, preparing to schedule features"),
    "at_capacity": ("monitoring", "At maximum capacity, monitoring active agents"),
    "all_complete": ("complete", "All features complete!"),
    "drain_start": ("draining", "Draining active agents..."),
    "drain_complete": ("paused", "All agents drained. Paused."),
    "drain_resume": ("scheduling", "Resuming feature scheduling"),
}
"""Chain events that carry no number: their new state and message."""

_COMPLETION: Final[dict[tuple[str, bool], tuple[str, str]]] = {
    ("completed", False): ("success", "Completed successfully!"),
    ("completed", True): ("success", "Batch completed successfully!"),
    ("failed", False): ("error", "Failed to complete"),
    ("failed", True): ("error", "Batch failed to complete"),
}
"""Final state and thought by (outcome word, agent has several features)."""


_T = TypeVar("_T")
TrackerState = dict[str, object]
"""A tracker's or pipeline's state as JSON-able values, for the journal to keep."""


def state_value(state: Mapping[str, object], key: str, kind: type[_T]) -> _T:
    """``state[key]`` if it is a ``kind`` (never a bool for int): a stored state that
    does not fit is refused with a message saying what, never half restored."""
    value = state.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"tracker state: {key!r} is not {kind.__name__}: {value!r}")
    return value


def _optional_str(state: Mapping[str, object], key: str) -> str | None:
    return None if state.get(key) is None else state_value(state, key, str)


def _number(digits: str) -> int | None:
    """The value of an ASCII digit string, or None when it is implausibly long."""
    return int(digits) if len(digits) <= _MAX_DIGITS else None


def _ids(text: str) -> list[int] | None:
    """Every feature id in ``text`` (``#1, #2`` or ``1,2``), None if one is out of range."""
    ids = [_number(digits) for digits in _DIGITS.findall(text)]
    return None if not ids or None in ids else [i for i in ids if i is not None]


def _feature_name(feature_ids: list[int]) -> str:
    if len(feature_ids) == 1:
        return f"Feature #{feature_ids[0]}"
    return "Features " + ", ".join(f"#{i}" for i in feature_ids)


def _classify(content: str) -> tuple[str, str | None]:
    """State and thought for one line of agent narrative (the activity table)."""
    folded = fold(content)
    for pattern, state, source, needles in _ACTIVITY_TABLE:
        for needle in needles:  # a loop, not any(): no generator per line and rule
            if needle in folded:
                break
        else:
            continue
        match = pattern.search(content)
        if match is not None:
            thought = content[:100] if source == "content" else match.group(source)
            return state, thought[:_THOUGHT_CAP]
    return "working", None


@dataclass
class _Agent:
    index: int
    name: str
    agent_type: AgentType
    feature_ids: list[int]
    state: str
    thought: str | None

    def message(self, timestamp: str, *, synthetic: bool = False) -> AgentUpdateEvent:
        message: AgentUpdateEvent = {
            "type": "agent_update",
            "agentIndex": self.index,
            "agentName": self.name,
            "agentType": self.agent_type,
            "featureId": self.feature_ids[0],
            "featureIds": list(self.feature_ids),
            "featureName": _feature_name(self.feature_ids),
            "state": self.state,
            "thought": self.thought,
            "timestamp": timestamp,
        }
        if synthetic:
            message["synthetic"] = True
        return message


class AgentTracker:
    """The active agents of one project, driven by its output lines (LINES.md 2)."""

    def __init__(self, clock: Clock = wall_clock) -> None:
        self._clock = clock
        self._agents: dict[int, _Agent] = {}
        self._next_index = 0

    @property
    def active_count(self) -> int:
        return len(self._agents)

    def feed(self, line: str) -> AgentUpdateEvent | None:
        """Apply the first matching rule to a sanitised line; the update it causes, if any.

        Every rule is anchored and starts with ``Started ``, ``Feature`` or
        ``[Feature #``, so one prefix test picks the few rules that can match,
        in their table order.
        """
        if not line.startswith(_AGENT_STARTS):  # the common line: one test
            return None
        if line.startswith("[Feature #"):
            if match := _ACTIVITY.match(line):
                return self._activity(_number(match[1]), match[2])
            return None
        if line.startswith("Started "):
            if match := _SPAWN_CODING_BATCH.match(line):
                return self._spawn("coding", _ids(match[1]))
            if match := _SPAWN_CODING.match(line):
                return self._spawn("coding", _ids(match[1]))
            if match := _SPAWN_TESTING_BATCH.match(line) or _SPAWN_TESTING.match(line):
                return self._spawn("testing", _ids(match[1]))
            return None
        if line.startswith("Feature"):
            if match := _TESTING_DONE.match(line):
                return self._complete("testing", _ids(match[1]), match[2], batch=False)
            if match := _BATCH_DONE.match(line):
                return self._complete("coding", _ids(match[1]), match[2], batch=True)
            if _GIVING_UP.match(line):
                return None
            if match := _CODING_DONE.match(line):
                return self._complete("coding", _ids(match[1]), match[2], batch=False)
        return None

    def owner_of(self, feature_id: int) -> int | None:
        """Index of the agent owning ``feature_id``: coding before testing, newest first."""
        agent = self._owner_any(feature_id)
        return None if agent is None else agent.index

    def agent_of(
        self, feature_id: int, agent_type: AgentType | None = None
    ) -> AgentUpdateEvent | None:
        """The current card of the agent whose features include ``feature_id``: the
        newest of ``agent_type``, or `owner_of`'s when no type is given."""
        if agent_type is None:
            agent = self._owner_any(feature_id)
        else:
            agent = self._owner(agent_type, feature_id)
        return None if agent is None else agent.message(self._now())

    def reset(self) -> None:
        """Forget every agent (run stopped or crashed); indices keep counting up."""
        self._agents.clear()

    def snapshot(self) -> list[AgentUpdateEvent]:
        """One update per active agent, current state and thought, by index."""
        timestamp = iso_timestamp(self._clock())
        return [self._agents[index].message(timestamp) for index in sorted(self._agents)]

    # -- rules ---------------------------------------------------------------

    def _spawn(
        self, agent_type: AgentType, feature_ids: list[int] | None
    ) -> AgentUpdateEvent | None:
        if feature_ids is None:
            return None
        batch = len(feature_ids) > 1
        agent = self._new_agent(
            agent_type,
            feature_ids,
            "thinking",
            "Starting batch work..." if batch else "Starting work...",
        )
        return agent.message(self._now())

    def _complete(
        self, agent_type: AgentType, feature_ids: list[int] | None, outcome: str, *, batch: bool
    ) -> AgentUpdateEvent | None:
        if feature_ids is None:
            return None
        first = feature_ids[0]
        agent = None
        if batch:
            agent = next(
                (a for a in self._newest_first(agent_type) if a.feature_ids[0] == first), None
            )
        agent = agent or self._owner(agent_type, first)
        if agent is None:  # nobody tracked it: still tell the UI how it ended
            state, thought = _COMPLETION[outcome, len(feature_ids) > 1]
            unknown = _Agent(-1, UNKNOWN_AGENT, agent_type, feature_ids, state, thought)
            return unknown.message(self._now(), synthetic=True)
        del self._agents[agent.index]
        agent.state, agent.thought = _COMPLETION[outcome, len(agent.feature_ids) > 1]
        return agent.message(self._now())

    def _activity(self, feature_id: int | None, content: str) -> AgentUpdateEvent | None:
        if feature_id is None:
            return None
        state, thought = _classify(content)
        agent = self._owner_any(feature_id)
        if agent is None:
            agent = self._new_agent("coding", [feature_id], state, thought)
            return agent.message(self._now())
        thought_is_new = thought is not None and thought != agent.thought
        if state == agent.state and not thought_is_new:
            return None
        agent.state = state
        if thought is not None:
            agent.thought = thought
        return agent.message(self._now())

    # -- helpers -------------------------------------------------------------

    def _new_agent(
        self, agent_type: AgentType, feature_ids: list[int], state: str, thought: str | None
    ) -> _Agent:
        index = self._next_index
        self._next_index += 1
        agent = _Agent(
            index, MASCOTS[index % len(MASCOTS)], agent_type, feature_ids, state, thought
        )
        self._agents[index] = agent
        return agent

    def _newest_first(self, agent_type: AgentType) -> list[_Agent]:
        return [a for a in reversed(self._agents.values()) if a.agent_type == agent_type]

    def _owner(self, agent_type: AgentType, feature_id: int) -> _Agent | None:
        for agent in reversed(self._agents.values()):
            if agent.agent_type == agent_type and feature_id in agent.feature_ids:
                return agent
        return None

    def _owner_any(self, feature_id: int) -> _Agent | None:
        """The owner of ``feature_id``: the newest coding agent, else the newest testing one."""
        testing = None
        for agent in reversed(self._agents.values()):
            if feature_id in agent.feature_ids:
                if agent.agent_type == "coding":
                    return agent
                testing = testing or agent
        return testing

    def _now(self) -> str:
        return iso_timestamp(self._clock())

    # -- restart: state out, state in ----------------------------------------

    def to_state(self) -> TrackerState:
        """The active agents (oldest first) and the next index, as JSON-able values."""
        agents = [
            {
                "index": a.index,
                "name": a.name,
                "type": a.agent_type,
                "features": list(a.feature_ids),
                "state": a.state,
                "thought": a.thought,
            }
            for a in self._agents.values()
        ]
        return {"agents": agents, "next_index": self._next_index}

    @classmethod
    def from_state(cls, state: Mapping[str, object], clock: Clock = wall_clock) -> AgentTracker:
        """A tracker that continues exactly where the one that made ``state`` stood."""
        tracker = cls(clock)
        tracker._next_index = state_value(state, "next_index", int)
        for item in state_value(state, "agents", list):
            if not isinstance(item, dict):
                raise ValueError(f"tracker state: agent is not an object: {item!r}")
            agent = cast(Mapping[str, object], item)
            agent_type = state_value(agent, "type", str)
            if agent_type not in ("coding", "testing"):
                raise ValueError(f"tracker state: unknown agent type {agent_type!r}")
            features = state_value(agent, "features", list)
            if not features or not all(type(f) is int for f in features):
                raise ValueError(f"tracker state: feature ids {features!r}")
            index = state_value(agent, "index", int)
            tracker._agents[index] = _Agent(
                index,
                state_value(agent, "name", str),
                cast(AgentType, agent_type),
                [int(f) for f in features],
                state_value(agent, "state", str),
                _optional_str(agent, "thought"),
            )
        return tracker


class OrchestratorState(TypedDict):
    """The orchestrator's state and counters, as an ``orchestrator_update`` names them."""

    state: str
    codingAgents: int
    testingAgents: int
    maxConcurrency: int
    readyCount: int
    blockedCount: int


class OrchestratorTracker:
    """What the orchestrator is doing and how many agents it runs (LINES.md 3)."""

    def __init__(self, clock: Clock = wall_clock) -> None:
        self._clock = clock
        self._state = "idle"
        self._coding = 0
        self._testing = 0
        self._max_concurrency = 3
        self._ready = 0
        self._blocked = 0

    def feed(self, line: str) -> OrchestratorUpdateEvent | None:
        """Apply one line; the ``orchestrator_update`` it causes, if any."""
        if line.startswith("[Feature #") or _ANY_NEEDLE.search(line) is None:
            return None
        for needle, pattern in _MAX_CONCURRENCY:
            if (
                needle in line
                and (match := pattern.search(line))
                and (value := _number(match[1])) is not None
            ):
                self._max_concurrency = value
                break
        for event_type, needle, needle_starts, pattern in _CHAIN:
            if (line.startswith(needle) if needle_starts else needle in line) and (
                match := pattern.search(line)
            ):
                return self._apply(event_type, match)
        return None

    def reset(self) -> None:
        """Back to idle with zero counters (run stopped or crashed); maxConcurrency stays."""
        self._state = "idle"
        self._coding = self._testing = self._ready = self._blocked = 0

    def state(self) -> OrchestratorState:
        """The current state and the five counters."""
        return {
            "state": self._state,
            "codingAgents": self._coding,
            "testingAgents": self._testing,
            "maxConcurrency": self._max_concurrency,
            "readyCount": self._ready,
            "blockedCount": self._blocked,
        }

    def _apply(self, event_type: str, match: re.Match[str]) -> OrchestratorUpdateEvent | None:
        """Change the state for one chain hit; None for blocked_features or a bad number."""
        if event_type in _FIXED:
            self._state, message = _FIXED[event_type]
            if event_type in {"all_complete", "drain_complete"}:
                self._coding = self._testing = 0
            return self._event(event_type, message)
        number = _number(match[1])
        if number is None:
            return None
        if event_type == "blocked_features":
            self._blocked = number
            return None
        if event_type == "capacity_check":
            self._ready = number
            self._state = "scheduling" if number > 0 else "monitoring"
            return self._event(event_type, f"{number} features ready, {match[2]} slots available")
        if event_type == "feature_start":
            self._state = "spawning"
            message = f"Preparing Feature #{number}: {match[2]}"
            return self._event(event_type, message, number, match[2])
        kind, _, phase = event_type.partition("_")  # coding/testing, spawn/complete
        if phase == "spawn":
            delta, self._state = 1, "spawning"
            message = f"Spawned {kind} agent for Feature #{number}"
        else:
            delta, self._state = -1, "monitoring"
            message = f"{kind.capitalize()} agent finished Feature #{number}"
        if kind == "coding":
            self._coding = max(0, self._coding + delta)
        else:
            self._testing = max(0, self._testing + delta)
        return self._event(event_type, message, number)

    def _event(
        self,
        event_type: str,
        message: str,
        feature_id: int | None = None,
        feature_name: str | None = None,
    ) -> OrchestratorUpdateEvent:
        event: OrchestratorUpdateEvent = {
            "type": "orchestrator_update",
            "eventType": event_type,
            "state": self._state,
            "message": message,
            "timestamp": iso_timestamp(self._clock()),
            "codingAgents": self._coding,
            "testingAgents": self._testing,
            "maxConcurrency": self._max_concurrency,
            "readyCount": self._ready,
            "blockedCount": self._blocked,
        }
        if feature_id is not None:
            event["featureId"] = feature_id
        if feature_name is not None:
            event["featureName"] = feature_name
        return event

    # -- restart: state out, state in ----------------------------------------

    def to_state(self) -> TrackerState:
        """The state and counters as JSON-able values."""
        return {
            "state": self._state,
            "coding": self._coding,
            "testing": self._testing,
            "max_concurrency": self._max_concurrency,
            "ready": self._ready,
            "blocked": self._blocked,
        }

    @classmethod
    def from_state(
        cls, state: Mapping[str, object], clock: Clock = wall_clock
    ) -> OrchestratorTracker:
        """A tracker that continues exactly where the one that made ``state`` stood."""
        tracker = cls(clock)
        tracker._state = state_value(state, "state", str)
        tracker._coding = state_value(state, "coding", int)
        tracker._testing = state_value(state, "testing", int)
        tracker._max_concurrency = state_value(state, "max_concurrency", int)
        tracker._ready = state_value(state, "ready", int)
        tracker._blocked = state_value(state, "blocked", int)
        return tracker
