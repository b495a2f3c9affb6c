"""`trio-ws replay`: a recorded run played again through the `watch` view.

A replay is what a subscriber would have seen: the run's ``/state`` at the moment
it starts from (the snapshot a subscriber joining right then is sent), fed to a
fresh `RunView` as a snapshot, then the run's ``/events`` page by page, each applied
when its timestamp comes due at the chosen speed. Only the protocol (the runs
API's JSON), so it replays from any trio-ws node; pages are read as the replay
goes, so a run of a million events never sits in memory at once.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Final, Literal, NoReturn
from urllib.parse import quote, urlencode

import trio
from rich.console import Console, RenderableType
from rich.live import Live

from trio_ws.clients.run_view import RunView, SequenceGap, parse_timestamp
from trio_ws.clients.watch import REFRESH, screen
from trio_ws.clients.watch_api import get_json
from trio_ws.clients.watch_session import WatchError, WatchTarget
from trio_ws.core.protocol import JsonObject

PAGE: Final = 1000
"""Events read per ``/events`` request while replaying (the most the API gives)."""
FOLLOW_EVERY: Final = 1.0
"""Seconds between two looks for newer events of a run still going, once caught up."""
_OFFSET: Final = re.compile(r"\+(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+(?:\.\d+)?)s?)?")

Summary = dict[str, Any]


@dataclass(frozen=True)
class Moment:
    """A ``/state`` answer: the snapshot right after event ``seq``."""

    seq: int
    timestamp: str | None
    messages: list[JsonObject]


@dataclass(frozen=True)
class EventPage:
    """An ``/events`` answer: events in seq order and the cursor of the next page."""

    events: list[JsonObject]
    next_after: int | None
    partial: bool


def run_view(run_id: str) -> str:
    """The API path of a run, below the project's ``/api/projects/NAME/``."""
    return f"runs/{quote(run_id, safe='')}"


async def _read(target: WatchTarget, view: str, what: str) -> Any:
    status, body = await get_json(target, view)
    if status != 200:
        detail = body.get("detail") if isinstance(body, dict) else body
        raise WatchError(f"{what} of {target.project}: HTTP {status}: {detail}")
    if not isinstance(body, dict):
        raise WatchError(f"{what} of {target.project}: the answer is not a JSON object")
    return body


async def read_summary(target: WatchTarget, run_id: str) -> Summary:
    """The run's summary; `WatchError` on a 404 or a failure."""
    body: Summary = await _read(target, run_view(run_id), f"run {run_id}")
    return body


async def read_state(
    target: WatchTarget, run_id: str, *, seq: int | None = None, at: str | None = None
) -> Moment:
    """The run's snapshot at ``seq`` (or at time ``at``), which the server clamps to
    the run."""
    query = {"seq": str(seq)} if seq is not None else {"at": at} if at is not None else {}
    view = f"{run_view(run_id)}/state" + (f"?{urlencode(query)}" if query else "")
    body = await _read(target, view, f"state of run {run_id}")
    messages = body.get("messages")
    if not isinstance(body.get("seq"), int) or not isinstance(messages, list):
        raise WatchError(f"state of run {run_id}: the answer holds no seq and messages")
    if not all(isinstance(message, dict) for message in messages):
        raise WatchError(f"state of run {run_id}: a message is not a JSON object")
    return Moment(body["seq"], body.get("timestamp"), messages)


async def read_events(
    target: WatchTarget,
    run_id: str,
    *,
    after: int | None = None,
    limit: int = PAGE,
    **filters: str,
) -> EventPage:
    """One page of the run's events after seq ``after`` (from its start when None),
    narrowed by the API's ``filters`` (``type``, ``agent``, ``feature``, ``q``)."""
    query = {"limit": str(limit), **filters}
    if after is not None:
        query["after"] = str(after)
    view = f"{run_view(run_id)}/events?{urlencode(query)}"
    body = await _read(target, view, f"events of run {run_id}")
    events = body.get("events")
    next_after = body.get("next_after")
    if not isinstance(events, list) or not all(isinstance(event, dict) for event in events):
        raise WatchError(f"events of run {run_id}: the answer holds no event list")
    if next_after is not None and not isinstance(next_after, int):
        raise WatchError(f"events of run {run_id}: next_after {next_after!r} is not a seq")
    return EventPage(events, next_after, bool(body.get("partial")))


async def events_after(target: WatchTarget, run_id: str, after: int) -> AsyncIterator[JsonObject]:
    """Every event of the run after seq ``after``, read a page at a time as consumed."""
    cursor: int | None = after
    while cursor is not None:
        page = await read_events(target, run_id, after=cursor)
        for event in page.events:
            yield event
        if page.next_after is not None and page.next_after <= cursor:
            raise WatchError(f"events of run {run_id}: the cursor went back to {page.next_after}")
        cursor = page.next_after


def start_moment(summary: Summary, text: str | None) -> dict[str, Any]:
    """What ``--at`` asks ``/state`` for: ``{"seq": N}`` for a whole number, ``{"at":
    ISO}`` for a time (``2026-12-05T10:03:00Z``) or an offset from the run's start
    (``+90s``, ``+5m``, ``+1h30m``); the run's first event when None. ValueError names
    what cannot be read."""
    if text is None:
        return {"seq": int(summary["first_seq"])}
    text = text.strip()
    if text.isdigit():
        return {"seq": int(text)}
    offset = _OFFSET.fullmatch(text)
    if offset is not None and text != "+":
        started = _datetime(summary.get("started_at"))
        if started is None:
            raise ValueError(f"--at {text}: the run has no start time to count from")
        hours, minutes, seconds = (float(offset[name] or 0) for name in ("h", "m", "s"))
        moment = started + timedelta(hours=hours, minutes=minutes, seconds=seconds)
        return {"at": _iso(moment)}
    when = _datetime(text)
    if when is None:
        raise ValueError(
            f"--at {text!r}: give a seq, an ISO-8601 time or an offset such as +5m or +1h30m"
        )
    return {"at": _iso(when)}


def _datetime(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def view_at(project: str, epoch: str, moment: Moment) -> RunView:
    """A fresh view holding the snapshot ``moment``, as a live view holds one after
    ``hello``: the events after ``moment.seq`` apply to it next."""
    view = RunView(project=project)
    view.begin_snapshot(epoch, moment.seq)
    try:
        for message in moment.messages:
            view.apply(message)
    except ValueError as exc:
        raise WatchError(f"state at seq {moment.seq}: {exc}") from None
    view.set_connection("replay")
    return view


@dataclass
class Pacer:
    """When each event is due: its timestamp's distance from the previous one's,
    divided by ``speed`` (``inf``: no waiting). Pure: it says how long to wait."""

    speed: float
    last: float | None = None
    """UNIX seconds of the newest event timestamp applied (the replay's "now")."""

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ValueError("speed must be above 0")

    def wait(self, event: JsonObject) -> float:
        """Seconds to wait before applying ``event`` (0 when it has no timestamp)."""
        moment = parse_timestamp(event.get("timestamp"))
        if moment is None:
            return 0.0
        before, self.last = self.last, moment if self.last is None else max(self.last, moment)
        if before is None or math.isinf(self.speed):
            return 0.0
        return max(0.0, moment - before) / self.speed


@dataclass
class Replay:
    """One replay in progress: the view, the pacing and where it stands."""

    target: WatchTarget
    run_id: str
    summary: Summary
    view: RunView
    pacer: Pacer
    events: int = 0
    phase: Literal["playing", "caught up", "ended"] = "playing"
    """"caught up": the run is still going and every event so far is applied."""

    @property
    def now(self) -> float | None:
        """The replayed moment (UNIX seconds), for the screen's times and ages."""
        return self.pacer.last


async def open_replay(
    target: WatchTarget,
    run_id: str,
    *,
    speed: float = 1.0,
    at: str | None = None,
    on_message: Callable[[JsonObject], None] | None = None,
) -> Replay:
    """Read the run's summary and its snapshot at ``--at`` (`start_moment`) into a
    fresh view; each snapshot message goes to ``on_message`` too. Raises `WatchError`
    when the run cannot be read, ValueError when ``at`` cannot."""
    summary = await read_summary(target, run_id)
    moment = await read_state(target, run_id, **start_moment(summary, at))
    view = view_at(target.project, str(summary.get("epoch")), moment)
    pacer = Pacer(speed)
    pacer.last = parse_timestamp(moment.timestamp)
    if on_message is not None:
        for message in moment.messages:
            on_message(message)
    replay = Replay(target, run_id, summary, view, pacer)
    replay.view.set_connection("replay", _detail(replay))
    return replay


async def play(
    replay: Replay,
    on_message: Callable[[JsonObject], None] | None = None,
    *,
    sleep: Callable[[float], Awaitable[None]] = trio.sleep,
    follow_every: float = FOLLOW_EVERY,
) -> None:
    """Apply the run's events after the snapshot, each when it is due, to the end of the
    run; a run still going is followed (asked again every ``follow_every`` seconds)
    until it ends."""
    while True:
        ended = replay.summary.get("ended") is not None
        assert replay.view.seq is not None
        async for event in events_after(replay.target, replay.run_id, replay.view.seq):
            delay = replay.pacer.wait(event)
            if delay > 0:
                await sleep(delay)
            try:
                replay.view.apply(event)
            except SequenceGap as gap:
                raise WatchError(f"events of run {replay.run_id}: {gap}") from None
            except ValueError as exc:
                raise WatchError(f"events of run {replay.run_id}: {exc}") from None
            replay.events += 1
            if on_message is not None:
                on_message(event)
        if ended:
            break
        replay.phase = "caught up"
        replay.view.set_connection("replay", _detail(replay))
        await sleep(follow_every)
        replay.summary = await read_summary(replay.target, replay.run_id)
        replay.phase = "playing"
    replay.phase = "ended"
    replay.view.set_connection("replay", _detail(replay))


def _detail(replay: Replay) -> str:
    speed = replay.pacer.speed
    shown = "max" if math.isinf(speed) else f"{speed:g}x"
    when = replay.now
    clock = "" if when is None else datetime.fromtimestamp(when, UTC).strftime(" %H:%M:%S UTC")
    phases = {"ended": "end of run", "caught up": "caught up, run still going"}
    state = phases.get(replay.phase, shown)
    return f"{state}{clock}"  # short: the header shares one line with the run's facts


async def read_progress(replay: Replay, *, pages: int = 20) -> None:
    """Put the run's progress events up to the replayed moment on the view's chart (the
    live view reads ``progress-history`` for this), at most ``pages`` pages of them."""
    view = replay.view
    assert view.seq is not None
    points: list[JsonObject] = []
    cursor: int | None = int(replay.summary.get("first_seq", 1)) - 1
    for _ in range(pages):
        if cursor is None:
            break
        page = await read_events(
            replay.target, replay.run_id, after=cursor, limit=1000, type="progress"
        )
        points += [event for event in page.events if int(event.get("seq", 0)) <= view.seq]
        if page.events and int(page.events[-1].get("seq", 0)) > view.seq:
            break
        cursor = page.next_after
    try:
        view.apply_history({"epoch": view.epoch, "points": points})
    except ValueError as exc:
        view.history_error = str(exc)


async def replay_live(
    replay: Replay,
    console: Console,
    *,
    log_lines: int | None = None,
    zone: tzinfo | None = None,
) -> None:
    """The `watch` screen replaying the run to its end, redrawn every `REFRESH` seconds
    from the task that owns the view; the last screen stays."""

    def current() -> RenderableType:
        now = replay.now if replay.now is not None else time.time()
        replay.view.set_connection("replay", _detail(replay))  # where it stands now
        return screen(replay.view, console, now, log_lines, zone)

    async def refresh(live: Live) -> NoReturn:
        while True:
            live.update(current(), refresh=True)
            await trio.sleep(REFRESH)

    failure: WatchError | None = None
    with Live(current(), console=console, auto_refresh=False) as live:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(refresh, live)
            try:
                await play(replay)
            except WatchError as exc:
                failure = exc  # raised below, outside the nursery: not wrapped in a group
            finally:
                nursery.cancel_scope.cancel()
                live.update(current(), refresh=True)
    if failure is not None:
        raise failure
