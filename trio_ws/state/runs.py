"""Runs: what happened between the agent status becoming ``running`` and its becoming
``stopped`` or ``crashed``, summed up from the committed events, pure (no I/O).

`RunRecorder` is fed every committed event in seq order (a node's own commits and
other nodes' alike) and keeps a `RunSummary` for the open run; its state goes into
the journal with every commit, so a restart (``kill -9`` too) continues the open run.
A run that closes is handed to the commit that closed it (``finished``), which stores
it as a journal record of its own (`Batch.runs`), in the same transaction: the state
written with every commit holds only the open run. Everything it records is read off
the events, so the same journal gives the same runs on every node and after every
restart.

- A run starts with an ``agent_status`` that is not final while none is open
  (``running``, or a pause a new epoch learns from a producer's resent status);
  ``paused``, ``pausing``, ``paused_graceful`` and back to ``running`` stay in it.
- It ends ``stopped`` or ``crashed`` with that status; ``interrupted`` when the
  producer's grace expired (the server's ``producer lost`` line comes just before
  the ``crashed``) or when a ``running`` follows a ``running`` (its producer or the
  server died unseen and a new run began).
- Its id is ``<epoch>-<first seq>``: both are in the journal, unique per history,
  the same on every node and after a restart.
- The exit code: ``agent_status`` events carry none; the publish endpoint logs
  ``[trio-ws] process exited with code N`` just before the final status, and that
  line is where it is read from (None when the producer sent none).
- Error lines: ``agent_update`` events whose state is ``error`` (a failed feature).
  Orchestrator updates carry no failure (a completion reads the same either way) and
  ``log`` events no error marker, so neither counts.
- Alerts: ``alert`` events raised within the run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, cast

from trio_ws.core.protocol import EXIT_LINE, LOST_LINE

MAX_AGENTS: Final = 32
"""Agents listed per summary (``agent_count`` counts them all): a long run spawns
hundreds, and the summary is journalled with every commit."""
MAX_FEATURE_IDS: Final = 32
"""Feature ids listed per agent."""

RunEnd = Literal["stopped", "crashed", "interrupted"]
FINAL: Final = frozenset({"stopped", "crashed"})
ENDS: Final = frozenset({"stopped", "crashed", "interrupted"})
PROGRESS_FIELDS: Final = ("passing", "in_progress", "total", "percentage", "needs_human_input")

JsonObject = dict[str, Any]


@dataclass
class RunSummary:
    """One run, as far as it went; ``ended`` is None while it is live."""

    epoch: str
    first_seq: int
    last_seq: int
    started_at: str | None
    ended_at: str | None = None
    last_at: str | None = None
    """The newest timestamp seen in the run: an interrupted run ended then."""
    ended: RunEnd | None = None
    exit_code: int | None = None
    status: str = "running"
    """The newest status within the run (a resume continues only after a pause)."""
    progress_start: JsonObject | None = None
    progress_end: JsonObject | None = None
    agents: dict[int, JsonObject] = field(default_factory=dict)
    agent_count: int = 0
    log_lines: int = 0
    error_lines: int = 0
    alerts: int = 0
    lost: bool = False
    """The producer-lost line came since the last status: a ``crashed`` now is an
    interruption, not the agent's crash."""
    _text: str | None = field(default=None, repr=False, compare=False)

    @property
    def id(self) -> str:
        return f"{self.epoch}-{self.first_seq}"

    def to_json(self) -> JsonObject:
        return {
            "id": self.id,
            "epoch": self.epoch,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "last_at": self.last_at,
            "ended": self.ended,
            "exit_code": self.exit_code,
            "status": self.status,
            "progress_start": self.progress_start,
            "progress_end": self.progress_end,
            "agents": [self.agents[index] for index in sorted(self.agents)],
            "agent_count": self.agent_count,
            "log_lines": self.log_lines,
            "error_lines": self.error_lines,
            "alerts": self.alerts,
            "lost": self.lost,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunSummary:
        """The summary `to_json` wrote; KeyError/TypeError/ValueError if it is not one."""
        ended = data["ended"]
        if ended is not None and ended not in ENDS:
            raise ValueError(f"unknown run end {ended!r}")
        agents: dict[int, JsonObject] = {}
        for agent in data["agents"]:
            agents[_int(agent["agentIndex"])] = dict(agent)
        return cls(
            epoch=str(data["epoch"]),
            first_seq=_int(data["first_seq"]),
            last_seq=_int(data["last_seq"]),
            started_at=_opt_str(data["started_at"]),
            ended_at=_opt_str(data["ended_at"]),
            last_at=_opt_str(data["last_at"]),
            ended=cast("RunEnd | None", ended),
            exit_code=None if data["exit_code"] is None else _int(data["exit_code"]),
            status=str(data["status"]),
            progress_start=_opt_dict(data["progress_start"]),
            progress_end=_opt_dict(data["progress_end"]),
            agents=agents,
            agent_count=_int(data["agent_count"]),
            log_lines=_int(data["log_lines"]),
            error_lines=_int(data["error_lines"]),
            alerts=_int(data.get("alerts", 0)),  # none in a journal older than the count
            lost=bool(data["lost"]),
        )

    def text(self) -> str:
        """`to_json` as compact JSON text; made once for a closed run (it never
        changes again), so each commit's journal state reuses it."""
        if self._text is not None:
            return self._text
        text = json.dumps(self.to_json(), separators=(",", ":"))
        if self.ended is not None:
            self._text = text
        return text

    def copy(self) -> RunSummary:
        agents = {
            index: {**agent, "featureIds": list(agent["featureIds"])}
            for index, agent in self.agents.items()
        }
        return replace(self, agents=agents, _text=None)


class RunRecorder:
    """The open run of one history (one epoch), and the runs closed since the last
    commit took them."""

    def __init__(self, epoch: str) -> None:
        self.epoch = epoch
        self.open: RunSummary | None = None
        self.finished: list[RunSummary] = []
        """Closed and not yet stored, oldest first: the commit that closed them takes
        them (a follower drops them: the node that committed them stored them)."""
        self.progress: JsonObject | None = None
        """The newest progress figures, run or not: the next run's start."""

    def feed(self, message: Mapping[str, Any]) -> None:
        """Record one committed event (it carries its ``seq``); events between runs
        count for none, except that progress is remembered for the next start."""
        kind = message.get("type")
        seq = message.get("seq")
        if not isinstance(seq, int):
            return
        if kind == "progress":
            self.progress = {key: message.get(key) for key in PROGRESS_FIELDS}
        if kind == "agent_status":
            self._status(str(message.get("status")), seq, _opt_str(message.get("timestamp")))
            return
        run = self.open
        if run is None:
            return
        run.last_seq = seq
        run.last_at = _opt_str(message.get("timestamp")) or run.last_at
        if kind == "progress":
            run.progress_end = self.progress
        elif kind == "log":
            self._log(run, str(message.get("line", "")))
        elif kind == "agent_update":
            self._agent(run, message)
        elif kind == "alert" and message.get("state") == "raised":
            run.alerts += 1

    def _status(self, status: str, seq: int, stamp: str | None) -> None:
        run = self.open
        if run is not None:
            if status in FINAL:
                run.status, run.last_seq, run.last_at = status, seq, stamp or run.last_at
                self._close(run, "interrupted" if run.lost and status == "crashed" else status)
                return
            if status == "running" and run.status == "running":
                self._close(run, "interrupted")  # a running after a running: a new run
            else:
                run.status, run.last_seq, run.lost = status, seq, False
                run.last_at = stamp or run.last_at
                return
        if status in FINAL:
            return  # no run open: a final status ends nothing
        self.open = RunSummary(
            self.epoch,
            seq,
            seq,
            stamp,
            last_at=stamp,
            status=status,
            progress_start=self.progress,
            progress_end=self.progress,
        )

    def _close(self, run: RunSummary, how: str) -> None:
        run.ended, run.ended_at = cast(RunEnd, how), run.last_at
        self.finished.append(run)
        self.open = None

    @staticmethod
    def _log(run: RunSummary, line: str) -> None:
        run.log_lines += 1
        if line == LOST_LINE:
            run.lost = True
        elif line.startswith(EXIT_LINE):
            code = line[len(EXIT_LINE) :].strip()
            if code.lstrip("-").isdigit():
                run.exit_code = int(code)

    @staticmethod
    def _agent(run: RunSummary, message: Mapping[str, Any]) -> None:
        if message.get("state") == "error":
            run.error_lines += 1
        index = message.get("agentIndex")
        if not isinstance(index, int) or index < 0:
            return
        agent = run.agents.get(index)
        if agent is None:
            run.agent_count += 1
            if len(run.agents) >= MAX_AGENTS:
                return
            agent = run.agents[index] = {"agentIndex": index, "featureIds": []}
        agent["agentName"] = message.get("agentName")
        agent["agentType"] = message.get("agentType")
        ids: list[int] = agent["featureIds"]
        found = message.get("featureIds")
        for feature in [*(found if isinstance(found, list) else []), message.get("featureId")]:
            if isinstance(feature, int) and feature not in ids and len(ids) < MAX_FEATURE_IDS:
                ids.append(feature)

    # -- reading -----------------------------------------------------------------

    def take_finished(self) -> list[RunSummary]:
        """The runs closed since the last take, oldest first (for the journal)."""
        finished, self.finished = self.finished, []
        return finished

    # -- the journal: state out, state in -----------------------------------------

    def copy(self) -> RunRecorder:
        """For a commit to record into: the recorder stays as it was if the commit
        fails."""
        recorder = RunRecorder(self.epoch)
        recorder.open = None if self.open is None else self.open.copy()
        recorder.finished = list(self.finished)
        recorder.progress = self.progress
        return recorder

    def to_state(self) -> JsonObject:
        return {
            "open": None if self.open is None else self.open.to_json(),
            "progress": self.progress,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], epoch: str) -> RunRecorder:
        """The recorder `to_state` wrote, recording on in ``epoch``; KeyError,
        TypeError or ValueError if ``state`` is not one. The closed runs a journal
        older than the archive listed in it are ``finished``: the next commit stores
        them."""
        recorder = cls(epoch)
        opened = state["open"]
        recorder.open = None if opened is None else RunSummary.from_json(opened)
        closed = state.get("closed", [])
        recorder.finished = [RunSummary.from_json(json.loads(text)) for text in closed]
        recorder.progress = _opt_dict(state["progress"])
        return recorder


def run_first_seq(run_id: str, epoch: str) -> int | None:
    """The first seq of the run ``run_id`` names in ``epoch`` (None: no run of it)."""
    named_epoch, _, first = run_id.rpartition("-")
    if named_epoch != epoch or not first.isdigit():
        return None
    return int(first)


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _opt_dict(value: object) -> JsonObject | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {value!r}")
    return dict(value)
