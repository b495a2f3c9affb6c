"""A run's events read back from the journal: a filtered page (``/events``), the
snapshot at a moment (``/state``) and every event in pages (``/export``).

Only the run's own seqs (``first_seq..last_seq``) are read, a chunk at a time, and
never the whole run at once. The filter (`EventFilter`) is pure; what reads is a thin
shell over `Journal.read_since`. A text search checks each event's raw JSON text
before decoding it, so a page of a rare word decodes only the events that hold it.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import regex
import trio

from trio_ws.core.protocol import iso_timestamp
from trio_ws.journal.interface import Journal
from trio_ws.state.replay import Replay
from trio_ws.state.runs import RunRecorder, RunSummary, run_first_seq

READ_CHUNK: Final = 1000
"""Events read from the journal per call."""
SEARCH_GUARD: Final = 1.0
"""Seconds a filtered page may take before it returns what it found (``partial``)."""
TEXT_FIELDS: Final = ("line", "thought", "message")
"""Where an event's text is, by type: a log line, an agent's thought, an orchestrator
update's or an alert's message."""


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events of a run a page holds; None (or empty) means any."""

    types: frozenset[str] | None = None
    agent_indices: frozenset[int] | None = None
    """With ``agent_names``: the agent asked for (None: any agent)."""
    agent_names: frozenset[str] = frozenset()
    feature: int | None = None
    text: str | None = None
    """Lower-cased substring of the event's text."""
    pattern: regex.Pattern[str] | None = None
    """A regular expression (the `regex` module's: it lets go of the GIL while it
    matches and stops at a timeout, where `re` holds the interpreter for as long as a
    pathological pattern backtracks)."""

    @property
    def searches(self) -> bool:
        return self.text is not None or self.pattern is not None

    @property
    def filters(self) -> bool:
        """Anything to match at all (else every event is on the page)."""
        return self.searches or not (
            self.types is None and self.agent_indices is None and self.feature is None
        )

    @property
    def raw_types(self) -> tuple[str, ...]:
        """``"type":"<type>"`` as each type asked for appears in an event's compact JSON
        text: an event holding none of them is not one of those types."""
        return tuple(f'"type":"{kind}"' for kind in sorted(self.types or ()))

    @property
    def raw_text(self) -> str | None:
        """``text`` as it appears inside an event's JSON text (lower-cased): every event
        whose text holds ``text`` holds this, so it rules events out before decoding."""
        if self.text is None:
            return None
        return json.dumps(self.text, ensure_ascii=False)[1:-1].lower()

    def matches(self, message: Mapping[str, Any]) -> bool:
        if self.types is not None and message.get("type") not in self.types:
            return False
        if self.agent_indices is not None and not self._agent(message):
            return False
        if self.feature is not None and not self._feature(message):
            return False
        if self.searches:
            texts = [value for key in TEXT_FIELDS if isinstance(value := message.get(key), str)]
            if self.text is not None and not any(self.text in text.lower() for text in texts):
                return False
            if self.pattern is not None and not any(self._search(t) for t in texts):
                return False
        return True

    def _search(self, text: str) -> bool:
        assert self.pattern is not None
        try:
            return self.pattern.search(text, timeout=SEARCH_GUARD) is not None
        except TimeoutError:
            raise PatternTooSlow(SEARCH_GUARD) from None

    def _agent(self, message: Mapping[str, Any]) -> bool:
        assert self.agent_indices is not None
        index = message.get("agentIndex")
        if isinstance(index, int) and index in self.agent_indices:
            return True
        name = message.get("agentName", message.get("agent"))
        return isinstance(name, str) and name in self.agent_names

    def _feature(self, message: Mapping[str, Any]) -> bool:
        ids = message.get("featureIds")
        if isinstance(ids, list) and self.feature in ids:
            return True
        return self.feature in (message.get("featureId"), message.get("feature"))


class PatternTooSlow(ValueError):
    """A regular expression took longer than the search's whole time guard on one
    event: no page could ever get past that event, so the search is refused."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"the regular expression took over {seconds:g} s on a single event; "
            "make it simpler (nested repeats such as (a|aa)+ backtrack for ever)"
        )


@dataclass(frozen=True, slots=True)
class EventsPage:
    """One page of a run's events (their journalled texts, in seq order)."""

    texts: list[str]
    next_after: int | None
    """The seq to continue after, or None when the run has no more."""
    partial: bool = False
    """The search hit its time guard before filling the page."""


async def find_run(journal: Journal, recorder: RunRecorder, run_id: str) -> RunSummary | None:
    """The run ``run_id`` names: the open one, or a closed one the journal keeps."""
    opened = recorder.open
    if opened is not None and opened.id == run_id:
        return opened
    first = run_first_seq(run_id, recorder.epoch)
    if first is None:
        return None
    found = await journal.runs(first + 1, 1)
    if not found:
        return None
    run = RunSummary.from_json(json.loads(found[0]))
    return run if run.id == run_id else None


async def list_runs(
    journal: Journal, recorder: RunRecorder, before: RunSummary | None, limit: int
) -> tuple[list[RunSummary], bool]:
    """Up to ``limit`` runs older than ``before`` (None: from the newest), newest first
    (the open run, then the journal's), and whether there are more."""
    runs: list[RunSummary] = []
    opened = recorder.open
    if opened is not None and before is None:
        runs.append(opened)
    bound = None if before is None else before.first_seq
    if bound is None and opened is not None:
        bound = opened.first_seq
    found = await journal.runs(bound, limit + 1 - len(runs))
    runs += [RunSummary.from_json(json.loads(text)) for text in found]
    return runs[:limit], len(runs) > limit


async def run_chunks(
    journal: Journal, run: RunSummary, after: int, chunk: int = READ_CHUNK
) -> AsyncIterator[list[tuple[int, str]]]:
    """The run's events with seq > ``after``, in chunks of at most ``chunk``, oldest
    first; ends at the run's last event (as far as the journal still holds them)."""
    async for found in range_chunks(journal, max(after, run.first_seq - 1), run.last_seq, chunk):
        yield found


async def range_chunks(
    journal: Journal, after: int, last: int, chunk: int = READ_CHUNK
) -> AsyncIterator[list[tuple[int, str]]]:
    """The held events in (``after``, ``last``], a chunk at a time."""
    seq = after
    while seq < last:
        found = await journal.read_range(seq, last, chunk)
        if not found:
            return
        yield found
        seq = found[-1][0]


async def events_page(
    journal: Journal,
    run: RunSummary,
    selected: EventFilter,
    after: int,
    limit: int,
    *,
    guard: float = SEARCH_GUARD,
    clock: Callable[[], float] = time.monotonic,
) -> EventsPage:
    """Up to ``limit`` of the run's events after ``after`` that ``selected`` matches. A
    text search lets the journal find the events that hold the text (`Journal.search`);
    a search stops at the time guard with what it found (``partial``)."""
    raw = selected.raw_text
    deadline = clock() + guard
    texts: list[str] = []
    scanned = max(after, run.first_seq - 1)
    last = run.last_seq
    while scanned < last:
        if raw is not None:
            left = max(0.0, deadline - clock())
            chunk, through = await journal.search(scanned, last, raw, limit - len(texts), left)
        else:
            chunk = await journal.read_range(scanned, last, READ_CHUNK)
            through = chunk[-1][0] if chunk else last
        wanted = limit - len(texts)
        if selected.pattern is None:
            picked, seen = _pick(chunk, selected, wanted, None, clock)
        else:
            # Off the event loop: a regex may take up to the guard on one event.
            picked, seen = await trio.to_thread.run_sync(
                _pick, chunk, selected, wanted, deadline, clock
            )
        texts += picked
        if len(texts) == limit:
            return EventsPage(texts, None if seen >= last else seen)
        if chunk and seen < chunk[-1][0]:  # the guard stopped it within the chunk
            return EventsPage(texts, seen, partial=True)
        scanned = through
        if not chunk and raw is None:
            break
        if selected.filters and clock() > deadline and scanned < last:
            return EventsPage(texts, scanned, partial=True)
        await trio.lowlevel.checkpoint()
    return EventsPage(texts, None)


def _pick(
    chunk: list[tuple[int, str]],
    selected: EventFilter,
    wanted: int,
    deadline: float | None,
    clock: Callable[[], float],
) -> tuple[list[str], int]:
    """The texts in ``chunk`` that ``selected`` matches, at most ``wanted``, and the
    seq of the last event looked at: the last match when ``wanted`` were found, else
    the first event seen past ``deadline`` (if given), else the chunk's last."""
    raw = selected.raw_text
    raw_types = selected.raw_types
    picked: list[str] = []
    seen = 0
    for seen, text in chunk:  # noqa: B007 (the last one looked at is the answer)
        if raw is not None and raw not in text.lower():
            continue
        if raw_types and not any(kind in text for kind in raw_types):
            continue
        if selected.matches(json.loads(text)):
            picked.append(text)
            if len(picked) == wanted:
                break
        if deadline is not None and clock() > deadline:
            break
    return picked, seen


def parse_time(text: str) -> datetime:
    """An ISO-8601 time, naive ones taken as UTC; ValueError if it is not one."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def _stamp_after(text: str, at: datetime) -> bool:
    """Does event ``text`` carry a timestamp later than ``at``?"""
    stamp = json.loads(text).get("timestamp")
    if not isinstance(stamp, str):
        return False
    try:
        return parse_time(stamp) > at
    except ValueError:
        return False


async def state_at(
    journal: Journal,
    run: RunSummary,
    *,
    seq: int | None = None,
    at: datetime | None = None,
) -> Replay:
    """The run's snapshot right after its last event with seq <= ``seq`` (or timestamp
    <= ``at``), clamped to its first and last events: replayed from the journal's
    newest checkpoint before that event (at most CHECKPOINT_EVERY events), or from
    the oldest event held when there is none."""
    target = run.last_seq if seq is None else max(run.first_seq, min(seq, run.last_seq))
    stamp = None if at is None else iso_timestamp(at.timestamp())
    point = await journal.checkpoint(target, stamp)
    if point is None and stamp is not None:  # ``at`` before every checkpoint
        point = await journal.checkpoint(run.first_seq)
    replay = Replay() if point is None else Replay.from_state(json.loads(point.text))
    async for chunk in range_chunks(journal, replay.seq, target):
        for number, text in chunk:
            if at is not None and number > run.first_seq and _stamp_after(text, at):
                return replay
            replay.feed(number, text)
        await trio.lowlevel.checkpoint()
    return replay


async def export_pages(journal: Journal, run: RunSummary) -> AsyncIterator[list[str]]:
    """Every event of the run, as journalled, a chunk at a time."""
    async for chunk in run_chunks(journal, run, run.first_seq - 1):
        yield [text for _, text in chunk]
