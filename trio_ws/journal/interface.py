"""The journal seam (STATE.md): where a project's epoch, events, producer pseqs and
snapshot state live, so a restart continues the same history.

This module holds what every backend shares: the plain value types that go in
and out, the errors, the trimming rule and the ``Journal`` / ``JournalBackend``
protocols. A backend knows no hubs and no sockets (LAYERS.md rule 4): seqs and
JSON texts in, seqs and JSON texts out. Group commit and numbering are the
caller's job; a backend checks only that what it is given keeps the history
contiguous.
"""

from __future__ import annotations

import bisect
import secrets
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from trio_ws.core import defaults
from trio_ws.core.protocol import is_valid_project_name

DEFAULT_HISTORY: Final = defaults.HISTORY
"""Events held per project (``--history``)."""
DEFAULT_HISTORY_BYTES: Final = defaults.HISTORY_BYTES
"""Bytes of event text held per project (``--history-bytes``)."""
TRIM_SLACK: Final = 10
"""A journal trims itself once it holds 1/TRIM_SLACK more than its limits, so a trim
deletes about a tenth of the history at a time instead of one row per append."""
MAX_PRODUCERS: Final = 1024
"""Producer pseqs a journal keeps per group (a key ``<group>:<id>``; the hub's group is
the stream): the most recently written. One producer id per ``run``/``publish``
invocation would otherwise grow the journal for its whole life; an older id is
dropped in the commit that writes a newer one, and a producer that comes back after
that is one the server has no record of (PROTOCOL.md 4.2)."""
CHECKPOINT_EVERY: Final = 2000
"""A snapshot checkpoint is stored with the commit of every event whose seq is a
multiple of this: a seek replays at most this many events (issue 20: <= 100 ms)."""
DEFAULT_ARCHIVE_BYTES: Final = {"sqlite": 1024**3, "memory": 64 * 1024**2, "redis": 256 * 1024**2}
"""Bytes of event text each backend keeps per project (``--archive-bytes``): on disk
for sqlite; in the server's or Redis's memory for the others, hence less."""
LATENCY_WINDOW: Final = 1024
"""Commit latencies kept for stats (seconds, newest last)."""

JsonObject = dict[str, Any]
"""A JSON-able mapping: what the snapshot state is stored as."""

NewEpochReason = Literal["new", "corrupt", "unclean_reboot", "broker_reset"]
"""Why ``open`` started a new epoch: no journal yet (or the memory backend), an
unreadable journal moved aside, an unclean stop followed by an OS reboot
(``synchronous=NORMAL`` commits may have been rolled back by the power loss), or a
broker (Redis) that is not the server that wrote the journal (restarted from a
snapshot that may lack the newest appends)."""


class JournalError(Exception):
    """A journal could not do what was asked; the message names the journal."""


class JournalWriteError(JournalError):
    """An append was not committed (disk full, read-only, I/O error); nothing of it
    was written and the journal stays usable: the same append may be retried."""


class JournalConflictError(JournalError):
    """The stored history moved on without this journal (another node appended, the
    broker lost its data, another epoch began): nothing was written, and no retry
    will succeed; open the journal again and follow the stored history."""


@dataclass(frozen=True, slots=True)
class StoredRun:
    """A closed run's summary as the journal keeps it: its seqs and its JSON text."""

    first: int
    last: int
    text: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The replay state (JSON text) right after event ``seq``, stamped with the newest
    event timestamp up to it (None when none had one)."""

    seq: int
    stamp: str | None
    text: str


@dataclass(frozen=True, slots=True)
class Batch:
    """One transaction: events with their final seqs (contiguous from head + 1), the
    producers' highest applied pseqs after them, and the snapshot state that follows
    them (None: leave the stored state as it is); the runs these events closed and the
    checkpoints among them, kept with the archive."""

    events: Sequence[tuple[int, str]] = ()
    pseqs: Mapping[str, int] = field(default_factory=dict)
    state: JsonObject | None = None
    runs: Sequence[StoredRun] = ()
    checkpoints: Sequence[Checkpoint] = ()
    texts: Sequence[str] = ()
    """Each event's searchable text (its line, thought or message; "" if none), in the
    order of ``events``, for a backend that indexes them (sqlite); may be empty."""


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    """How much a journal keeps beyond its live history: event text bytes and closed
    runs (None: any number); the oldest whole runs go first."""

    archive_bytes: int
    keep_runs: int | None = None

    def __post_init__(self) -> None:
        if self.archive_bytes < 1:
            raise ValueError("archive_bytes must be at least 1")
        if self.keep_runs is not None and self.keep_runs < 0:
            raise ValueError("keep_runs must not be negative")


@dataclass(frozen=True, slots=True)
class ArchiveStats:
    """What the archive holds (events from ``oldest`` on, closed runs)."""

    oldest: int
    events: int
    bytes: int
    runs: int
    oldest_run: int | None
    """The first seq of the oldest closed run kept."""


@dataclass(frozen=True, slots=True)
class JournalState:
    """What ``open`` found: the history to continue, and why it is new if it is.

    ``oldest`` is the first seq still held (``head + 1`` when none is held);
    ``moved_aside`` is where an unreadable journal went (reason ``corrupt``).
    """

    epoch: str
    head: int
    oldest: int
    pseqs: dict[str, int]
    state: JsonObject | None
    new_epoch: NewEpochReason | None
    moved_aside: str | None = None


@dataclass(frozen=True, slots=True)
class JournalStats:
    """For /healthz and /metrics: which backend, what it holds, how commits go."""

    backend: str
    head: int
    oldest: int
    events_held: int
    bytes_held: int
    commits: int
    commit_seconds_sum: float
    commit_seconds: tuple[float, ...]
    """The newest commits' latencies (at most LATENCY_WINDOW), oldest first."""
    write_errors: int
    archive: ArchiveStats | None = None


@dataclass
class Commits:
    """Commit counters a backend keeps for its stats."""

    count: int = 0
    seconds_sum: float = 0.0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    write_errors: int = 0

    def record(self, seconds: float) -> None:
        self.count += 1
        self.seconds_sum += seconds
        self.recent.append(seconds)

    def stats(
        self,
        backend: str,
        head: int,
        oldest: int,
        held: int,
        size: int,
        archive: ArchiveStats | None = None,
    ) -> JournalStats:
        return JournalStats(
            backend=backend,
            head=head,
            oldest=oldest,
            events_held=held,
            bytes_held=size,
            commits=self.count,
            commit_seconds_sum=self.seconds_sum,
            commit_seconds=tuple(self.recent),
            write_errors=self.write_errors,
            archive=archive,
        )


class Journal(Protocol):
    """One project's journal. ``open`` comes first and ``close`` last; appends come
    one at a time (the hub's writer task awaits each before the next), while
    ``read_since`` may be called at any time in between (a backend serialises it)."""

    @property
    def project(self) -> str: ...

    async def open(self) -> JournalState:
        """Load the history to continue, or start a new epoch (and say why)."""
        ...

    async def append(self, batch: Batch) -> None:
        """Commit ``batch`` as one transaction; JournalWriteError if it was not."""
        ...

    async def read_since(self, seq: int, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` held events with seq > ``seq``, oldest first."""
        ...

    async def read_range(self, after: int, last: int, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` events with ``after`` < seq <= ``last`` that the journal still
        holds, the archive included, oldest first."""
        ...

    async def search(
        self, after: int, last: int, needle: str, limit: int, seconds: float
    ) -> tuple[list[tuple[int, str]], int]:
        """Up to ``limit`` held events in (``after``, ``last``] whose lower-cased JSON
        text holds ``needle`` (lower case, as it appears inside JSON), oldest first, and
        the seq the search got through (``last`` unless ``limit`` or ``seconds``
        stopped it first). A backend that indexes `Batch.texts` looks only at the events
        whose searchable text holds it (the sqlite backend, for needles of 3 characters
        or more without a JSON escape)."""
        ...

    async def runs(self, before: int | None, limit: int) -> list[str]:
        """Up to ``limit`` closed run summaries (JSON texts) whose first seq is below
        ``before`` (None: any), newest first."""
        ...

    async def checkpoint(self, seq: int, stamp: str | None = None) -> Checkpoint | None:
        """The newest checkpoint at or before ``seq`` (and stamped at or before
        ``stamp``) whose events after it are all held; None if there is none."""
        ...

    async def close(self, *, clean: bool = True) -> None:
        """Release the journal; ``clean`` records a clean stop for the next ``open``."""
        ...

    def stats(self) -> JournalStats: ...

    def retain(self, archive: ArchiveLimits) -> None:
        """Keep to ``archive`` from the next commit on: the project's own ``keep-runs``
        or ``archive-bytes`` changed while its journal is open."""
        ...


class SharedJournal(Journal, Protocol):
    """A journal that other nodes append to as well (``--broker``): a node follows
    their appends and continues the history wherever it stands."""

    async def head(self) -> tuple[str, int] | None:
        """The stored epoch and head seq now; None when the history must start again."""
        ...

    def seen(self, head: int) -> None:
        """This node has applied the other nodes' events up to ``head``."""
        ...

    async def stored(self) -> tuple[dict[str, int], JsonObject | None]:
        """The producers' pseqs and the snapshot state stored now."""
        ...

    async def reopen(self) -> JournalState:
        """``open`` again, on whatever history is stored now (a new epoch if none); the
        journal stays as it was when this fails."""
        ...

    async def send_control(self, action: str) -> int:
        """Hand a control ``action`` to the node whose agent producer is connected; how
        many nodes took it (0: none has the producer). JournalError if Redis fails."""
        ...

    def control_requests(self) -> AbstractAsyncContextManager[AsyncIterator[str]]:
        """While entered, the control actions other nodes send this project's agent
        producer (enter it only while this node holds that producer)."""
        ...


class JournalBackend(Protocol):
    """Where the journals of every project live (``--journal``)."""

    @property
    def name(self) -> str: ...

    def journal(self, project: str, archive: ArchiveLimits | None = None) -> Journal:
        """The (unopened) journal of ``project``; no I/O. ``archive``: the project's own
        limits (its ``keep-runs``/``archive-bytes`` settings), else the backend's."""
        ...

    async def remove(self, project: str) -> bool:
        """Delete ``project``'s journal (``trio-ws projects remove``); False if none."""
        ...

    async def knows(self, project: str) -> bool:
        """Does a journal of ``project`` exist (a history a restart continues)?
        JournalError when that cannot be told now."""
        ...

    async def last_state(self, project: str) -> JsonObject | None:
        """The state ``project``'s journal last committed (what ``open`` restores: the
        snapshot, trackers, open run), read without opening it or creating anything;
        None when it holds none. For a glance at a project not open here (the
        overview). JournalError when it cannot be read now."""
        ...


def new_epoch() -> str:
    """A fresh epoch name: never equal to an earlier one in practice."""
    return secrets.token_hex(8)


def check_project(project: str) -> str:
    """``project`` if it is a valid project name (it becomes a file or key name)."""
    if not is_valid_project_name(project):
        raise ValueError(f"invalid project name {project!r}")
    return project


def check_batch(batch: Batch, head: int) -> None:
    """Refuse a batch that would break the history: seqs must run on from ``head``."""
    for offset, (seq, _) in enumerate(batch.events, start=1):
        if seq != head + offset:
            raise ValueError(f"batch on head {head} has seq {seq} where {head + offset} is due")


def over_limits(count: int, size: int, history: int, history_bytes: int) -> bool:
    """True when a journal holds enough beyond its limits to trim itself now."""
    return (
        count > history + history // TRIM_SLACK
        or size > history_bytes + history_bytes // TRIM_SLACK
    )


def check_limits(history: int, history_bytes: int, max_producers: int = MAX_PRODUCERS) -> None:
    if history < 1 or history_bytes < 1:
        raise ValueError("history and history_bytes must each allow at least one event")
    if max_producers < 1:
        raise ValueError("max_producers must allow at least one producer")


def producer_group(key: str) -> str:
    """The group a producer key is bounded in: what precedes its first ``:``."""
    return key.partition(":")[0]


class RecentPseqs:
    """Producer pseqs, least recently written first, at most ``limit`` keys per group
    (MAX_PRODUCERS): what a hub keeps in memory, under the journals' rule."""

    def __init__(self, limit: int = MAX_PRODUCERS) -> None:
        self.limit = limit
        self.pseqs: dict[str, int] = {}
        self._counts: dict[str, int] = {}

    def update(self, pseqs: Mapping[str, int]) -> None:
        """Write ``pseqs`` (each becomes the most recent), then drop each group's oldest
        keys beyond the limit: only from the front, where they are."""
        grown = set()
        for key, pseq in pseqs.items():
            if self.pseqs.pop(key, None) is None:
                group = producer_group(key)
                self._counts[group] = self._counts.get(group, 0) + 1
                grown.add(group)
            self.pseqs[key] = pseq
        for group in grown:
            excess = self._counts[group] - self.limit
            if excess <= 0:
                continue
            doomed: list[str] = []
            for key in self.pseqs:  # oldest first: the scan stops at the last one to go
                if producer_group(key) == group:
                    doomed.append(key)
                    if len(doomed) == excess:
                        break
            for key in doomed:
                del self.pseqs[key]
            self._counts[group] -= excess


def trim_point(
    oldest_first: Iterable[tuple[int, int]], count: int, size: int, history: int, history_bytes: int
) -> tuple[int, int, int | None]:
    """Where to cut held ``(seq, size)`` pairs, oldest first (``count`` of them,
    ``size`` bytes): ``(dropped, freed bytes, oldest seq kept)``, keeping at most
    ``history`` events and ``history_bytes`` bytes but always the newest event.
    Walks only what it drops, so trimming costs no read of the whole history."""
    dropped = freed = 0
    for seq, item_size in oldest_first:
        held = count - dropped
        if held <= 1 or (held <= history and size - freed <= history_bytes):
            return dropped, freed, seq
        dropped += 1
        freed += item_size
    return dropped, freed, None


def archive_cut(
    rows: Iterable[tuple[int, int]],
    stored: int,
    runs: Sequence[tuple[int, int]],
    limits: ArchiveLimits,
    live_oldest: int,
) -> tuple[int, int, int] | None:
    """Where to cut an archive that holds ``stored`` bytes in ``rows`` (``(last seq,
    bytes)``, oldest first) and closed ``runs`` (``(first, last)``, oldest first) down
    to ``limits``: ``(first seq kept, first seq of the oldest run kept, bytes freed)``:
    events before the first go, runs that start before the second; None when nothing
    need go. Whole runs go first (the cut falls right after the newest one dropped);
    when dropping every closed run is not enough, rows go, but never the live history
    (from ``live_oldest``): a run beyond ``keep_runs`` whose events are still live
    loses its record now and its events once they leave the live history. Waits for
    1/TRIM_SLACK over a limit, as trims do."""
    slack = limits.archive_bytes // TRIM_SLACK
    over_bytes = stored > limits.archive_bytes + slack
    keep = limits.keep_runs
    over_runs = keep is not None and len(runs) > keep + max(1, keep // TRIM_SLACK)
    if not over_bytes and not over_runs:
        return None
    target = limits.archive_bytes - slack  # cut a little further: no cut per commit
    lasts: list[int] = []
    freed_before: list[int] = []  # bytes freed by cutting before row i
    total = 0
    for last, size in rows:
        lasts.append(last)
        freed_before.append(total)
        total += size

    def freed(cut: int) -> int:
        """Bytes of the rows that end before ``cut``."""
        index = bisect.bisect_left(lasts, cut)
        return freed_before[index] if index < len(lasts) else total

    dropped = beyond_keep = len(runs) - keep if keep is not None and len(runs) > keep else 0
    cut = runs[dropped - 1][1] + 1 if dropped else 0
    while dropped < len(runs) and stored - freed(cut) > target:
        dropped += 1
        cut = runs[dropped - 1][1] + 1
    if stored - freed(cut) > target:  # every closed run gone, still over: rows go
        for last in lasts:
            if last + 1 > live_oldest or stored - freed(cut) <= target:
                break
            cut = max(cut, last + 1)
    cut = min(cut, live_oldest)
    dropped = max(beyond_keep, sum(1 for _, last in runs if last < cut))
    if dropped == 0 and freed(cut) == 0:
        return None
    runs_from = runs[dropped][0] if dropped < len(runs) else runs[-1][1] + 1 if runs else 0
    return cut, runs_from, freed(cut)
