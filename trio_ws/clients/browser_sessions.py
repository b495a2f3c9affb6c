"""Which ``playwright-cli`` sessions of a run have a browser worth a screenshot: raw
output lines in, session names out (pure; the capture loop is `browser_view.py`).

AutoForge's rules (0.1.22, ``server/websocket.py``): its orchestrator gives each
agent the session ``coding-<primary feature id>``, or ``testing-<n>`` counting its
testing agents from 0; a session is captured only once a ``[Feature #N]`` line of
that agent calls ``playwright-cli`` with ``open`` or ``goto`` (before that it has no
browser), and a coding session is dropped when its agent completes or fails, all
of them when the run ends. The agents are told apart by the same `AgentTracker` the
server runs, so a session's feature is the one the server names its card by.
Unlike AutoForge, every feature of a batch leads to its session (not only the
first), and a testing session is dropped with its agent too.
"""

from __future__ import annotations

from typing import Final

from trio_ws.core.pipeline import cap
from trio_ws.core.trackers import AgentTracker

OPENS: Final = ("open ", "goto ", "open\t", "goto\t")
STARTING: Final = frozenset({"Starting work...", "Starting batch work..."})
DONE: Final = frozenset({"success", "error"})
FEATURE_LINE: Final = "[Feature #"


class BrowserSessions:
    """The sessions to capture, each with its agent's primary feature id."""

    def __init__(self) -> None:
        self._agents = AgentTracker()
        self._testing = 0
        self._started: dict[int, tuple[str, int]] = {}
        """Each started agent's session and primary feature, by agent index."""
        self.sessions: dict[str, int] = {}
        """Registered sessions: name -> primary feature id."""

    def feed(self, raw: str) -> None:
        """Apply one raw output line."""
        line, _ = cap(raw)
        update = self._agents.feed(line)
        if update is not None:
            index, primary = update["agentIndex"], update["featureId"]
            if update["state"] == "thinking" and update["thought"] in STARTING:
                if update["agentType"] == "testing":
                    session = f"testing-{self._testing}"
                    self._testing += 1
                else:
                    session = f"coding-{primary}"
                self._started[index] = (session, primary)
            elif update["state"] in DONE:
                started = self._started.pop(index, None)
                if started is not None:
                    self.sessions.pop(started[0], None)
        opens = line.startswith(FEATURE_LINE) and "playwright-cli" in line
        if opens and any(verb in line for verb in OPENS):
            self._register(line)

    def _register(self, line: str) -> None:
        """A browser opened: its agent's session (the agent the server files the line
        under, `AgentTracker.owner_of`) is captured from now on."""
        number = line[len(FEATURE_LINE) : line.find("]")]
        if not number.isascii() or not number.isdigit():
            return
        owner = self._agents.owner_of(int(number))
        started = None if owner is None else self._started.get(owner)
        if started is not None:
            session, primary = started
            self.sessions.setdefault(session, primary)

    def drop(self, session: str) -> None:
        """Stop capturing ``session`` (it failed too often); another open line brings it
        back."""
        self.sessions.pop(session, None)

    def stop(self) -> None:
        """The run ended: no session is left, and testing agents count from 0 again."""
        self._agents.reset()
        self._started.clear()
        self.sessions.clear()
        self._testing = 0
