"""What the parts of a `ProjectHub` share: its numbering, pipelines, history, snapshot,
staged events, warnings and subscribers, made in one place (`HubState.__init__`) so
a reader finds every field and what it means here.

The parts (`HubCommit`, `HubFollow`, `HubFanOut`) each do one job on this state;
where one calls another, the call is declared here and defined by its part.
"""

from __future__ import annotations

import itertools
import secrets
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

import trio

from trio_ws.core import defaults
from trio_ws.core.alerts import AlertRules
from trio_ws.core.messages import Event
from trio_ws.core.pipeline import AgentPipeline, DevPipeline
from trio_ws.core.protocol import Clock, JsonObject, Stream, wall_clock
from trio_ws.data.progress import Progress
from trio_ws.journal.interface import (
    Journal,
    JournalError,
    JournalState,
    RecentPseqs,
    SharedJournal,
)
from trio_ws.runtime.streak import FailureStreak
from trio_ws.state.history import History, Outgoing
from trio_ws.state.runs import RunRecorder
from trio_ws.state.screenshots import Screenshots
from trio_ws.state.snapshot import Snapshot
from trio_ws.state.subscriber import Subscriber

DEFAULT_HISTORY: Final = defaults.HISTORY
"""Most events held per project for resume and catch-up."""
DEFAULT_HISTORY_BYTES: Final = defaults.HISTORY_BYTES
"""Most encoded bytes (UTF-8 JSON) of events held per project."""
DEFAULT_QUEUE: Final = defaults.QUEUE_SIZE
"""Per-subscriber queue capacity, in messages."""
MAX_BACKLOG: Final = defaults.MAX_BACKLOG


@dataclass
class HubStats:
    """Counters the server exposes (healthz, metrics) and tests assert on."""

    events: Counter[str] = field(default_factory=Counter)
    deliveries: int = 0
    fell_behind: int = 0
    catch_ups: int = 0
    journal_catch_ups: int = 0
    resyncs: int = 0
    aborted: int = 0
    send_tasks: int = 0
    direct_writes: int = 0
    """Fan-out writes the connection took without waking the send task."""
    delivery_failures: int = 0
    """Subscribers whose part of a fan-out raised (a bug): their connections were ended."""


class HubState:
    """The fields of one project's hub; the behaviour lives in its parts."""

    def __init__(
        self,
        name: str,
        *,
        history: int = DEFAULT_HISTORY,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
        queue_size: int = DEFAULT_QUEUE,
        clock: Clock = wall_clock,
        extra_secrets: Iterable[str] = (),
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.name = name
        self.epoch = secrets.token_hex(8)
        self.seq = 0
        """The newest seq given out (staged or committed)."""
        self.head = 0
        """The newest committed seq: all a subscriber may see (hello, resume)."""
        self.queue_size = queue_size
        self._clock = clock
        self._secrets = tuple(extra_secrets)
        self.agent = AgentPipeline(clock, self._secrets)
        self.dev = DevPipeline(clock, self._secrets)
        self.progress: Progress | None = None
        self.features: list[JsonObject] | None = None
        """The features board as the agent producer last sent it (its machine has the
        database); shared with other nodes through the journal's state."""
        self._features_due = False
        """``features`` changed since the last commit (a shared journal gets it then)."""
        self.stats = HubStats()
        self.history = History(history, history_bytes)
        self.journal: Journal | None = None
        self.shared: SharedJournal | None = None
        """The journal again when other nodes append to it too (``--broker``): then the
        hub follows their events and writes only its own streams' tracker state."""
        self._last_dated: dict[Stream, float] = {}
        """Each stream's last producer-dated event time: the next one is not earlier."""
        self._dirty: set[Stream] = set()
        """Streams whose pipeline ran since the last commit (their state is due)."""
        self._committing: set[Stream] = set()
        """Streams whose state the append in flight carries."""
        self.remote_seen: dict[Stream, float] = {}
        """When (trio clock) each stream's newest event from another node was applied:
        its producer runs elsewhere now."""
        self._committed_pseqs = RecentPseqs()
        self._pending: list[tuple[Event, Outgoing]] = []
        self._pending_pseqs: dict[str, int] = {}
        self._wake = trio.Event()
        self._write_trouble = FailureStreak()
        """Journal writes failing now: said once, and its end once."""
        self._committed = trio.Event()
        self._commit_lock = trio.Lock()
        self.closed = False
        """Set by `close` once it committed the rest: nothing touches the journal after."""
        self._closing = trio.Event()
        """Set with ``closed``: cuts the writer's retry backoff short."""
        self.on_commit: Callable[[str, float], None] | None = None
        """Told each commit's latency (seconds), for the metrics, right after its
        fan-out."""
        self._subscribers: set[Subscriber] = set()
        self._sweep: list[Outgoing] | None = None
        """The events a paced fan-out is handing out, while one runs (`HubFanOut`)."""
        self._ids = itertools.count(1)
        self._snapshot_state = Snapshot()
        self.runs = RunRecorder(self.epoch)
        """The open run and the newest closed ones, recorded from committed events and
        journalled with each commit (as the snapshot is)."""
        # The snapshot's log tails, under the same byte bound: else 1,000 long lines
        # would be held here whatever the history's bound.
        self._logs = History(MAX_BACKLOG, history_bytes)
        self._dev_logs = History(MAX_BACKLOG, history_bytes)
        self._warnings: dict[str, tuple[int, Outgoing]] = {}
        """Standing warnings by key, each with its serial (which orders them)."""
        self._warning_serial = 0
        self._agent_status_changed = trio.Event()
        self.screenshots = Screenshots()
        """The latest browser screenshot per session and who watches them: no event."""
        self.alerts: AlertRules | None = None
        """The alert rules, fed every event this node commits (None: alerts are off)."""
        self.alerts_fed = trio.Event()
        """Set (and replaced) whenever the rules were fed: their next deadline may move."""
        self.on_summary: Callable[[str], None] | None = None
        """Told the project's name after each fan-out of committed events (the overview:
        its summary may have changed); once per batch, never per subscriber."""
        self.alert_listeners: list[Callable[[int, str], None]] = []
        """Told each committed alert as it is held (seq, journalled text), whichever node
        committed it: the notify deliveries (`state/delivery.py`). Must not block."""

    # -- calls across parts: each is defined by the part named -----------------

    def _hold(self, item: Outgoing) -> None:
        """`ProjectHub`: hold a committed event."""
        raise NotImplementedError

    async def _hold_stored(self, journal: Journal, state: JournalState) -> None:
        """`HubCommit`: hold what the journal still has."""
        raise NotImplementedError

    def _write_failed(self, exc: JournalError) -> None:
        """`HubCommit`: acks stop, said once per streak."""
        raise NotImplementedError

    def _alert_on(self, messages: list[Event]) -> None:
        """`ProjectHub`: feed committed events to the alert rules, publish their edges."""
        raise NotImplementedError

    async def _follow_stored(self) -> None:
        """`HubFollow`: apply what other nodes appended."""
        raise NotImplementedError

    async def _follow_stored_or_warn(self) -> bool:
        """`HubFollow`: the same, a failure warned."""
        raise NotImplementedError

    def warn(self, source: str, content: str, key: str | None = None) -> None:
        """`HubFanOut`: a standing warning to every subscriber."""
        raise NotImplementedError

    def clear_warning(self, key: str) -> None:
        """`HubFanOut`."""
        raise NotImplementedError

    def _fan_out(self, items: list[Outgoing]) -> None:
        """`HubFanOut`: hold committed events and hand them to every subscriber."""
        raise NotImplementedError

    def _walks(self) -> bool:
        """`HubFanOut`: would a fan-out now be a paced walk of its own?"""
        raise NotImplementedError

    async def _fan_out_paced(
        self, items: list[Outgoing], commit_staged: Callable[[], Awaitable[object]]
    ) -> None:
        """`HubFanOut`: `_fan_out`, letting other tasks run between chunks of subscribers
        and handing on what ``commit_staged`` commits meanwhile."""
        raise NotImplementedError

    def resync_all(self, reason: str) -> None:
        """`HubFanOut`: resync every subscriber at the head."""
        raise NotImplementedError
