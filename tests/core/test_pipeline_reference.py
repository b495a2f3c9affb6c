"""The fast pipeline against a slow reference written straight from LINES.md.

``AgentPipeline`` and the trackers skip most of their rules with prefix and
substring pre-checks; this module keeps the plain reading of LINES.md 1-3
(every rule tried in table order with ``re.match``/``re.search``) and checks,
on random mixes of corpus lines and lines built from every rule's trigger
words, that both emit exactly the same events with the same timestamps.
Capping and redaction are not re-implemented here (security and pipeline
tests own them): the reference calls the same ``cap``/``redact_line``/``finish``.
One rule goes beyond LINES.md, as the pipeline does: from an ``[AUTO-IMPROVE] ``
line to the end of its run (AutoForge 0.1.22's ``--auto-improve``), lines are only logged.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from plain import Msg

from trio_ws.core.pipeline import AUTH_BANNER, AgentPipeline, DevPipeline, cap, finish
from trio_ws.core.protocol import AGENT_STATUSES, encode
from trio_ws.core.security import redact_line
from trio_ws.core.trackers import MASCOTS

DATA = Path(__file__).parent.parent / "corpus"
TRANSCRIPTS = [path.read_text(encoding="utf-8").splitlines() for path in sorted(DATA.glob("*.txt"))]
CORPUS = [line for transcript in TRANSCRIPTS for line in transcript]

# -- the reference, from LINES.md ----------------------------------------------

A = re.ASCII  # the orchestrator prints ASCII digits; trackers read nothing else
AUTH = [  # LINES.md 1.3, case-insensitive re.search
    r"not\s+logged\s+in",
    r"not\s+authenticated",
    r"authentication\s+(failed|required|error)",
    r"login\s+required",
    r"please\s+(run\s+)?['\"]?claude\s+login",
    r"unauthorized",
    r"invalid\s+(token|credential|api.?key)",
    r"expired\s+(token|session|credential)",
    r"could\s+not\s+authenticate",
    r"sign\s+in\s+(to|required)",
]
STATUS_LITERALS = [
    ("All agents drained - paused.", "paused_graceful"),
    ("Resuming from graceful pause...", "running"),
]
AGENT_RULES = [  # LINES.md 2: re.match, first match wins
    (r"Started coding agent for features (#\d+(?:,\s*#\d+)*)", "spawn", "coding"),
    (r"Started coding agent for feature #(\d+)", "spawn", "coding"),
    (r"Started testing agent for features \[(\d+(?:,\d+)*)\] \(PID \d+\)", "spawn", "testing"),
    (r"Started testing agent for feature #(\d+)", "spawn", "testing"),
    (r"Feature #(\d+) testing (completed|failed)", "complete", "testing"),
    (r"Features (#\d+(?:,\s*#\d+)*)\s+(completed|failed)", "batch", "coding"),
    (r"Feature #(\d+) has failed \d+ times, will not retry", "none", "coding"),
    (r"Feature #(\d+) (completed|failed)$", "complete", "coding"),
    (r"\[Feature #(\d+)\]\s*(.*)", "activity", "coding"),
]
ACTIVITY = [  # LINES.md 2, activity table: re.search, case-insensitive
    (r"\[Tool:\s*Read\]", "thinking", "content"),
    (r"\[Tool:\s*(?:Write|Edit|NotebookEdit)\]", "working", "content"),
    (r"\[Tool:\s*Bash\]", "testing", "content"),
    (r"\[Tool:\s*(?:Glob|Grep)\]", "thinking", "content"),
    (r"\[Tool:\s*(\w+)\]", "working", 1),
    (r"(?:Reading|Analyzing|Checking|Looking at|Examining)\s+(.+)", "thinking", 1),
    (r"(?:Creating|Writing|Adding|Implementing|Building)\s+(.+)", "working", 1),
    (r"(?:Testing|Verifying|Running tests|Validating)\s+(.+)", "testing", 1),
    (r"(?:Error|Failed|Cannot|Unable to|Exception)\s+(.+)", "struggling", 1),
    (r"(?:PASS|passed|success)", "testing", "content"),
    (r"(?:FAIL|failed|error)", "struggling", "content"),
]
MAX_CONCURRENCY = [r"Max concurrency: (\d+) coding agents", r"max_concurrency=(\d+)"]
CHAIN = [  # LINES.md 3: re.search, first match wins
    ("init_start", r"Running initializer agent"),
    ("init_complete", r"INITIALIZATION COMPLETE"),
    ("capacity_check", r"\[DEBUG\] Spawning loop: (\d+) ready, (\d+) slots"),
    ("at_capacity", r"At max capacity|at max testing agents|At max total agents"),
    ("feature_start", r"Starting feature \d+/\d+: #(\d+) - (.+)"),
    ("coding_spawn", r"Started coding agent for features? #(\d+)"),
    ("testing_spawn", r"Started testing agent for features? \[?#?(\d+)"),
    ("testing_complete", r"^Feature #(\d+) testing (completed|failed)"),
    ("coding_complete", r"^Features? #(\d+)(?:,\s*#\d+)* (completed|failed)$"),
    ("blocked_features", r"(\d+) blocked by dependencies"),
    ("all_complete", r"All features complete"),
    ("drain_start", r"Graceful pause requested"),
    ("drain_complete", r"All agents drained"),
    ("drain_resume", r"Resuming from graceful pause"),
]
FIXED = {
    "init_start": ("initializing", "Initializing project features..."),
    "init_complete": ("scheduling", "Initialization complete, preparing to schedule features"),
    "at_capacity": ("monitoring", "At maximum capacity, monitoring active agents"),
    "all_complete": ("complete", "All features complete!"),
    "drain_start": ("draining", "Draining active agents..."),
    "drain_complete": ("paused", "All agents drained. Paused."),
    "drain_resume": ("scheduling", "Resuming feature scheduling"),
}
TOO_LONG = 15  # digits: longer is no id or count the orchestrator prints; the hit is ignored


def timestamp(unix_seconds: float) -> str:
    """PROTOCOL.md 1 (revision 2), the slow way."""
    return datetime.fromtimestamp(unix_seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ids(text: str) -> list[int] | None:
    digits = re.findall(r"\d+", text, A)
    return None if any(len(d) > TOO_LONG for d in digits) else [int(d) for d in digits]


class Reference:
    """AgentPipeline as LINES.md 1-3 reads, one rule after the other."""

    def __init__(self) -> None:
        self.status = "stopped"
        self.banner_shown = False
        self.recent: deque[str] = deque(maxlen=20)
        self.in_key = False
        self.auto_improve = False  # beyond LINES.md: a 0.1.22 --auto-improve run
        self.agents: list[dict[str, Any]] = []  # oldest first
        self.next_index = 0
        self.orch = self.idle(3)

    @staticmethod
    def idle(max_concurrency: int) -> dict[str, Any]:
        return {"state": "idle", "coding": 0, "testing": 0, "max": max_concurrency}

    def feed_line(self, raw: str, now: float) -> list[Msg]:
        ts = timestamp(now)
        line, dropped = cap(raw)
        events: list[Msg] = []
        if line.startswith("[AUTO-IMPROVE] "):
            self.auto_improve = True
        if not line.startswith("[Feature #") and not self.auto_improve:
            hits = sorted((line.find(lit), s) for lit, s in STATUS_LITERALS if lit in line)
            for _, status in hits:
                events += self.change(status, ts)
        if not self.banner_shown and any(re.search(p, line, re.I) for p in AUTH):
            events += self.banner(ts)
        redacted, self.in_key = redact_line(line, self.in_key)
        self.recent.append(redacted)
        clean = finish(redacted, dropped)
        if self.auto_improve:  # the rest of the run is the one agent's narrative: logged only
            return [*events, {"type": "log", "line": clean, "timestamp": ts}]
        agent_update = self.agent_rules(clean, ts)
        orchestrator_update = self.orchestrator_rules(clean, ts)
        event: Msg = {"type": "log", "line": clean, "timestamp": ts}
        if match := re.match(r"\[Feature #(\d{1,15})\]", clean, A):
            event["featureId"] = int(match[1])
            if (owner := self.owner(int(match[1]))) is not None:
                event["agentIndex"] = owner["index"]
        events.append(event)
        return events + [u for u in (agent_update, orchestrator_update) if u is not None]

    def set_status(self, status: str, now: float) -> list[Msg]:
        if status == self.status:
            return []
        events: list[Msg] = []
        joined = "\n".join(self.recent)
        if (
            status == "crashed"
            and not self.banner_shown
            and any(re.search(p, joined, re.I) for p in AUTH)
        ):
            events += self.banner(timestamp(now))
        events += self.change(status)
        if status in ("stopped", "crashed"):
            self.agents = []
            self.orch = self.idle(self.orch["max"])
        return events

    def change(self, status: str, ts: str | None = None) -> list[Msg]:
        """A status read off a line carries the line's timestamp; a producer's does not
        (the hub dates it)."""
        if status == self.status:
            return []
        if status == "running" and self.status in ("stopped", "crashed"):
            self.banner_shown = False
            self.recent.clear()
            self.auto_improve = False
        self.status = status
        event: Msg = {"type": "agent_status", "status": status}
        if ts is not None:
            event["timestamp"] = ts
        return [event]

    def banner(self, ts: str) -> list[Msg]:
        self.banner_shown = True
        return [{"type": "log", "line": line, "timestamp": ts} for line in AUTH_BANNER]

    # -- LINES.md 2 --------------------------------------------------------------

    def agent_rules(self, line: str, ts: str) -> Msg | None:
        for pattern, effect, kind in AGENT_RULES:
            match = re.match(pattern, line, A)
            if match is None:
                continue
            if effect == "none":
                return None
            if effect == "activity":
                return self.activity(match[1], match[2], ts)
            feature_ids = ids(match[1])
            if feature_ids is None:
                return None
            if effect == "spawn":
                batch = len(feature_ids) > 1
                thought = "Starting batch work..." if batch else "Starting work..."
                return self.update(self.new_agent(kind, feature_ids, "thinking", thought), ts)
            return self.complete(kind, feature_ids, match[2], effect == "batch", ts)
        return None

    def complete(
        self, kind: str, feature_ids: list[int], outcome: str, batch: bool, ts: str
    ) -> Msg:
        agent = None
        newest = [a for a in reversed(self.agents) if a["type"] == kind]
        if batch:
            agent = next((a for a in newest if a["ids"][0] == feature_ids[0]), None)
        agent = agent or next((a for a in newest if feature_ids[0] in a["ids"]), None)
        several = len((agent or {"ids": feature_ids})["ids"]) > 1
        state = "success" if outcome == "completed" else "error"
        word = "Batch completed successfully!" if several else "Completed successfully!"
        if outcome == "failed":
            word = "Batch failed to complete" if several else "Failed to complete"
        if agent is None:
            unknown = {"index": -1, "name": "Unknown", "type": kind, "ids": feature_ids}
            return self.update(unknown | {"state": state, "thought": word}, ts) | {
                "synthetic": True
            }
        self.agents.remove(agent)
        agent["state"], agent["thought"] = state, word
        return self.update(agent, ts)

    def activity(self, digits: str, content: str, ts: str) -> Msg | None:
        if len(digits) > TOO_LONG:
            return None
        state, thought = "working", None
        for pattern, hit_state, source in ACTIVITY:
            if match := re.search(pattern, content, re.I):
                state = hit_state
                thought = (content[:100] if source == "content" else match[1])[:200]
                break
        agent = self.owner(int(digits))
        if agent is None:
            return self.update(self.new_agent("coding", [int(digits)], state, thought), ts)
        if state == agent["state"] and (thought is None or thought == agent["thought"]):
            return None
        agent["state"] = state
        if thought is not None:
            agent["thought"] = thought
        return self.update(agent, ts)

    def owner(self, feature_id: int) -> dict[str, Any] | None:
        for kind in ("coding", "testing"):
            for candidate in reversed(self.agents):
                agent: dict[str, Any] = candidate
                if agent["type"] == kind and feature_id in agent["ids"]:
                    return agent
        return None

    def new_agent(
        self, kind: str, feature_ids: list[int], state: str, thought: str | None
    ) -> dict[str, Any]:
        index, self.next_index = self.next_index, self.next_index + 1
        agent = {"index": index, "name": MASCOTS[index % 20], "type": kind, "ids": feature_ids}
        self.agents.append(agent | {"state": state, "thought": thought})
        return self.agents[-1]

    @staticmethod
    def update(agent: dict[str, Any], ts: str) -> Msg:
        ids_ = agent["ids"]
        name = (
            f"Feature #{ids_[0]}"
            if len(ids_) == 1
            else "Features " + ", ".join(f"#{i}" for i in ids_)
        )
        return {
            "type": "agent_update",
            "agentIndex": agent["index"],
            "agentName": agent["name"],
            "agentType": agent["type"],
            "featureId": ids_[0],
            "featureIds": list(ids_),
            "featureName": name,
            "state": agent["state"],
            "thought": agent["thought"],
            "timestamp": ts,
        }

    # -- LINES.md 3 --------------------------------------------------------------

    def orchestrator_rules(self, line: str, ts: str) -> Msg | None:
        if line.startswith("[Feature #"):
            return None
        orch = self.orch
        for pattern in MAX_CONCURRENCY:
            if (match := re.search(pattern, line, A)) and len(match[1]) <= TOO_LONG:
                orch["max"] = int(match[1])
                break
        for event_type, pattern in CHAIN:
            match = re.search(pattern, line, A)
            if match is None:
                continue
            extra: dict[str, Any] = {}
            if event_type in FIXED:
                orch["state"], message = FIXED[event_type]
                if event_type in ("all_complete", "drain_complete"):
                    orch["coding"] = orch["testing"] = 0
            elif len(match[1]) > TOO_LONG:
                return None
            elif event_type == "blocked_features":
                orch["blocked"] = int(match[1])
                return None
            elif event_type == "capacity_check":
                orch["ready"] = number = int(match[1])
                orch["state"] = "scheduling" if number > 0 else "monitoring"
                message = f"{number} features ready, {match[2]} slots available"
            elif event_type == "feature_start":
                orch["state"] = "spawning"
                message = f"Preparing Feature #{int(match[1])}: {match[2]}"
                extra = {"featureId": int(match[1]), "featureName": match[2]}
            else:
                kind, _, phase = event_type.partition("_")
                spawn = phase == "spawn"
                orch["state"] = "spawning" if spawn else "monitoring"
                orch[kind] = max(0, orch[kind] + (1 if spawn else -1))
                message = (
                    f"Spawned {kind} agent for Feature #{int(match[1])}"
                    if spawn
                    else f"{kind.capitalize()} agent finished Feature #{int(match[1])}"
                )
                extra = {"featureId": int(match[1])}
            return {
                "type": "orchestrator_update",
                "eventType": event_type,
                "state": orch["state"],
                "message": message,
                "timestamp": ts,
                "codingAgents": orch["coding"],
                "testingAgents": orch["testing"],
                "maxConcurrency": orch["max"],
                "readyCount": orch.get("ready", 0),
                "blockedCount": orch.get("blocked", 0),
                **extra,
            }
        return None


# -- lines near every rule's trigger words -------------------------------------

TOOLS = ["Read", "Write", "Edit", "NotebookEdit", "Bash", "Glob", "Grep", "mcp__features__x"]
TRIGGERS = [
    *(literal for literal, _ in STATUS_LITERALS),
    "Started coding agent for features #",
    "Started coding agent for feature #",
    "Started testing agent for features [",
    "Started testing agent for feature #",
    "] (PID 4)",
    "Feature #",
    "Features #",
    "Feature",
    " testing ",
    "completed",
    "failed",
    " has failed 3 times, will not retry",
    "[Feature #",
    "] ",
    "[Tool: ",
    "[tool:",
    *TOOLS,
    "Reading",
    "Analyzing",
    "Checking",
    "Looking at",
    "Examining",
    "Creating",
    "Writing",
    "Adding",
    "Implementing",
    "Building",
    "Testing",
    "Verifying",
    "Running tests",
    "Validating",
    "Error",
    "Failed",
    "Cannot",
    "Unable to",
    "Exception",
    "PASS",
    "passed",
    "success",
    "FAIL",
    "error",
    "Running initializer agent",
    "INITIALIZATION COMPLETE",
    "[DEBUG] Spawning loop: ",
    " ready, ",
    " slots",
    "At max capacity",
    "at max testing agents",
    "At max total agents",
    "Starting feature ",
    "/",
    ": #",
    " - ",
    " blocked by dependencies",
    "All features complete",
    "Graceful pause requested",
    "All agents drained",
    "Resuming from graceful pause",
    "Max concurrency: ",
    " coding agents",
    "max_concurrency=",
    "[AUTO-IMPROVE] ",
    "not logged in",
    "not\tauthenticated",
    "authentication failed",
    "authentication required",
    "login  required",
    "please run 'claude login",
    'please "claude login',
    "unauthorized",
    "invalid api-key",
    "invalid credential",
    "expired session",
    "could not authenticate",
    "sign in to",
    "sign in required",
    "password=hunter2",
    "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWx",
    "-----BEGIN RSA PRIVATE KEY-----",
    "-----END RSA PRIVATE KEY-----",
    "MIIEowIBAAKCAQEA",
    "…",
]
SEPARATORS = ["", " ", "  ", "\t", ", ", ",", "\u2003", "\n"]
NUMBERS = st.one_of(
    st.integers(0, 12).map(str),
    st.integers(10**14, 10**17).map(str),  # around the 15-digit bound
    st.just("\u0663"),  # an Arabic-Indic digit: not an ASCII digit
)
FOLDS = {"i": "\u0130\u0131", "s": "\u017f", "k": "\u212a"}


@st.composite
def spelled(draw: st.DrawFn, word: str) -> str:
    """``word`` as is, or in another case, or with a letter in a Unicode case twin."""
    how = draw(st.sampled_from(["as is", "as is", "upper", "lower", "swap", "fold"]))
    if how == "fold":
        letters = [i for i, c in enumerate(word) if c.lower() in FOLDS]
        if letters:
            i = draw(st.sampled_from(letters))
            return word[:i] + draw(st.sampled_from(FOLDS[word[i].lower()])) + word[i + 1 :]
        return word
    return {"as is": word, "upper": word.upper(), "lower": word.lower(), "swap": word.swapcase()}[
        how
    ]


PIECES = st.one_of(
    st.sampled_from(TRIGGERS).flatmap(spelled),
    st.sampled_from(TRIGGERS),
    NUMBERS,
    st.sampled_from(SEPARATORS),
    st.text(max_size=6),
)
GENERATED = st.lists(PIECES, max_size=14).map("".join)
LONG = st.tuples(GENERATED, st.integers(16 * 1024 - 40, 16 * 1024 + 40), GENERATED).map(
    lambda parts: parts[0] + "x" * parts[1] + parts[2]  # the 16 KiB cap cuts near a trigger
)
ACTIVITY_WORDS = [
    *(f"[Tool:{space}{tool}]" for tool in TOOLS for space in ("", " ", "\t")),
    *(word for pattern, _, _ in ACTIVITY[5:] for word in pattern[3:].split(")")[0].split("|")),
]
"""Every word of the activity table, and each tool tag."""
PHRASE = st.builds(
    lambda before, word, space, after: before + word + space + after,
    st.sampled_from(["", " ", "x", "a b "]),
    st.sampled_from(ACTIVITY_WORDS).flatmap(spelled),
    st.sampled_from([" ", "  ", "\t", "\u2003", "", ","]),
    st.text(max_size=5),
)
CONTENT = st.lists(PHRASE, max_size=3).map("".join)
"""Activity narrative: table words, each maybe followed by a space and more."""
TEMPLATES = [  # one per rule of LINES.md 2 and 3, with few ids so agents share them
    "Started coding agent for features #{n}, #{m}{text}",
    "Started coding agent for feature #{n}{text}",
    "Started testing agent for features [{n},{m}] (PID 7){text}",
    "Started testing agent for feature #{n}{text}",
    "Feature #{n} testing {outcome}{text}",
    "Features #{n}, #{m} {outcome}{text}",
    "Feature #{n} has failed 3 times, will not retry{text}",
    "Feature #{n} {outcome}{text}",
    "[Feature #{n}] {text}",
    "[Feature #{n}]{text}",
    "[DEBUG] Spawning loop: {n} ready, {m} slots{text}",
    "Starting feature 1/2: #{n} - {text}",
    "{n} blocked by dependencies{text}",
    "{text}max_concurrency={n}{text}",
]
TEMPLATED = st.builds(
    lambda template, n, m, outcome, text: template.format(n=n, m=m, outcome=outcome, text=text),
    st.sampled_from(TEMPLATES),
    st.integers(1, 3),
    st.integers(1, 3),
    st.sampled_from(["completed", "failed"]),
    st.one_of(st.just(""), CONTENT, GENERATED),
)
STATUS = st.sampled_from(sorted(AGENT_STATUSES)).map(lambda status: ("status", status))


def items(lines: st.SearchStrategy[str]) -> st.SearchStrategy[list[tuple[str, str]]]:
    """Up to 40 inputs, about one in ten a status from the producer."""
    line = lines.map(lambda text: ("line", text))
    return st.lists(st.one_of(*[line] * 9, STATUS), min_size=8, max_size=40)


STEPS = st.lists(st.integers(1, 1500), min_size=40, max_size=40)
"""Microseconds between two inputs: many pairs share a millisecond."""


class Clock:
    def __init__(self) -> None:
        self.now = 1_795_626_245.0

    def __call__(self) -> float:
        return self.now


def run_both(items: list[tuple[str, str]], steps: list[int]) -> None:
    """Feed both pipelines the same inputs at the same times; every answer must be equal."""
    clock = Clock()
    fast, slow = AgentPipeline(clock), Reference()
    for step, (what, value) in zip(steps, items, strict=False):
        clock.now += step / 1e6
        if what == "line":
            got, want = fast.feed_line(value), slow.feed_line(value, clock.now)
        else:
            got, want = fast.set_status(value), slow.set_status(value, clock.now)
        assert got == want, (what, value)
        for event in got:
            assert encode(event) == json.dumps(event, separators=(",", ":"), ensure_ascii=False)


@settings(max_examples=200, deadline=None)
@given(items(st.one_of(st.sampled_from(CORPUS), GENERATED, TEMPLATED, TEMPLATED, LONG)), STEPS)
def test_mixed_lines_emit_what_the_lines_rules_say(
    inputs: list[tuple[str, str]], steps: list[int]
) -> None:
    run_both(inputs, steps)


@settings(max_examples=200, deadline=None)
@given(items(TEMPLATED), STEPS)
def test_agents_sharing_features_emit_what_the_lines_rules_say(
    inputs: list[tuple[str, str]], steps: list[int]
) -> None:
    """Rule lines only, for three features: spawns, completions and activity meet."""
    run_both(inputs, steps)


@settings(max_examples=500, deadline=None)
@given(CONTENT)
def test_an_activity_line_gets_the_state_and_thought_of_the_table(content: str) -> None:
    """One line for a feature nobody owns: the new agent's state and thought are the table's."""
    run_both([("line", f"[Feature #1] {content}")], [1])


@pytest.mark.parametrize("word", ACTIVITY_WORDS)
@pytest.mark.parametrize("spelling", [str, str.upper, str.lower, str.swapcase])
def test_each_word_of_the_activity_table_classifies_as_the_table_says(
    word: str, spelling: Callable[[str], str]
) -> None:
    run_both([("line", f"[Feature #1] so {spelling(word)} it")], [1])


def test_the_whole_corpus_in_order_emits_what_the_lines_rules_say() -> None:
    """Each transcript its own run (an auto-improve one would mute those after it)."""
    inputs = [
        item
        for transcript in TRANSCRIPTS
        for item in [
            ("status", "running"),
            *(("line", line) for line in transcript),
            ("status", "stopped"),
        ]
    ]
    run_both(inputs, [7] * len(inputs))


DEV_URLS = [  # LINES.md 4, in order
    r"https?://(?:localhost|127\.0\.0\.1):\d+(?:/[^\s]*)?",
    r"https?://\[::1\]:\d+(?:/[^\s]*)?",
    r"https?://0\.0\.0\.0:\d+(?:/[^\s]*)?",
]
URL = st.builds(
    "".join,
    st.tuples(
        st.sampled_from(["http://", "https://", "ftp://", "http:/"]),
        st.sampled_from(["localhost", "127.0.0.1", "[::1]", "0.0.0.0", "192.168.1.2", "LOCALHOST"]),
        st.sampled_from([":5173", ":8000", ":", ""]),
        st.sampled_from(["", "/", "/app", "/x?token=abc", "/a),"]),
        st.sampled_from(["", ")", ".", ",", " ", ")."]),
    ),
)
DEV_LINE = st.lists(st.one_of(URL, PIECES), max_size=6).map("".join)
"""Dev-server output: URLs that are and are not the dev server's, among other text."""


@settings(max_examples=200, deadline=None)
@given(st.lists(DEV_LINE, min_size=1, max_size=10))
def test_dev_lines_emit_what_the_lines_rules_say(lines: list[str]) -> None:
    """LINES.md 4: a ``dev_log`` per line; the first URL of the run, once, redacted."""
    clock = Clock()
    fast = DevPipeline(clock)
    fast.set_status("running")
    url, in_key = None, False
    for line in lines:
        clock.now += 3e-6
        head, dropped = cap(line)
        redacted, in_key = redact_line(head, in_key)
        want: list[Msg] = [
            {
                "type": "dev_log",
                "line": finish(redacted, dropped),
                "timestamp": timestamp(clock.now),
            }
        ]
        hits = [m for m in (re.search(p, head, A) for p in DEV_URLS) if m is not None]
        if url is None and hits:
            url = redact_line(hits[0][0].rstrip("),."), False)[0]
            want.append({"type": "dev_server_status", "status": "running", "url": url})
        assert fast.feed_line(line) == want
