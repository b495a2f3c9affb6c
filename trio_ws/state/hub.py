"""One project's hub: the only place where a project's events get their ``seq``.

Producers call its synchronous methods (`feed_lines`, `set_status`,
`publish_progress`); they never block and never await, so a publisher cannot
be slowed by any subscriber. Each event is encoded to JSON exactly once
(`history.Outgoing`) and the same text goes to every subscriber. A ``seq`` is
taken only once its event is fully encoded, so a message that fails to encode
can never leave a hole.

The hub is made of parts, one job each, over the fields of `hub_state.HubState`:

- `commit.HubCommit`: commit, then fan out (STATE.md 3.1). Events are staged;
  the writer (`run_writer`) commits each batch with the producers' pseqs and
  the snapshot state after it, and only then are they held and fanned out
  and the producers' acks advance.
- `follow.HubFollow`: with a shared journal (``--broker``), every node's
  commits applied in seq order.
- `fanout.HubFanOut`: each subscriber's bounded queue (PROTOCOL.md 3.1):
  direct writes, a send task only when something is queued, catch-up from
  the history or the journal, ``resync`` and a fresh snapshot when neither
  reaches back, standing warnings.
- `history.History` and `snapshot.Snapshot`: what is held for resume and
  what a late joiner is sent.
- `screenshots.Screenshots`: the latest browser screenshot per session, for
  the subscribers that asked; no event, never held or journalled.
- `core.alerts.AlertRules` (when alerts are on): fed every event this node
  commits; the alerts it raises are published like any event, so they are
  committed before anyone sees them and stand in the snapshot.

"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from trio_ws.core import protocol
from trio_ws.core.alerts import AlertRules, AlertSettings
from trio_ws.core.messages import Event, ScreenshotMessage
from trio_ws.core.protocol import JsonObject, Stream
from trio_ws.data.progress import Progress
from trio_ws.state.commit import HubCommit
from trio_ws.state.fanout import HubFanOut
from trio_ws.state.follow import HubFollow
from trio_ws.state.history import Outgoing
from trio_ws.state.screenshots import browser_screenshot
from trio_ws.state.subscriber import Subscriber


@dataclass(frozen=True, slots=True)
class ProducerTimes:
    """When a producer read each of its items, by its own clock, and ``offset``: what to
    add to get this server's time (our now minus its clock when it sent them)."""

    times: Sequence[float]
    offset: float


class ProjectHub(HubCommit, HubFollow, HubFanOut):
    """The live state and history of one project, and its subscribers: the producers'
    side is here; committing, following other nodes and the fan-out are its parts."""

    def feed_lines(
        self, lines: Sequence[str], stream: Stream = "agent", at: ProducerTimes | None = None
    ) -> None:
        """Run raw output lines through the stream's pipeline and publish the events,
        each dated when the producer read it (``at``) or else now."""
        pipeline = self.agent if stream == "agent" else self.dev
        self._dirty.add(stream)
        if at is None:
            for line in lines:
                self._publish(pipeline.feed_line(line))
            return
        for line, when in zip(lines, at.times, strict=True):
            self._publish(pipeline.feed_line(line, self._dated(stream, when + at.offset)))

    def wall_time(self) -> float:
        """This server's clock (UNIX seconds), as its events are dated."""
        return self._clock()

    def _dated(self, stream: Stream, when: float) -> float:
        """A producer's time for a stream's next event, kept between that stream's last
        one and now: a clock that jumped can neither date an event in the future nor
        reorder the log."""
        when = min(max(when, self._last_dated.get(stream, when)), self._clock())
        self._last_dated[stream] = when
        return when

    def set_status(
        self, status: str, stream: Stream = "agent", at: ProducerTimes | None = None
    ) -> None:
        """Apply a producer status (seen ``at`` the producer, else now); only a real
        change becomes an event."""
        pipeline = self.agent if stream == "agent" else self.dev
        self._dirty.add(stream)
        events = pipeline.set_status(status)
        when = self._clock() if at is None else self._dated(stream, at.times[0] + at.offset)
        for event in events:
            if event["type"] == "agent_status":
                event["timestamp"] = protocol.iso_timestamp(when)
        self._publish(events)

    def publish_progress(self, progress: Progress) -> bool:
        """Publish ``progress`` if any of its counts changed; True when it did."""
        self.clear_warning("progress")
        if progress == self.progress:
            return False
        self.progress = progress
        self._publish([progress.to_message(protocol.iso_timestamp(self._clock()))])
        return True

    def set_features(self, rows: list[JsonObject]) -> None:
        """The features board the agent producer read on its machine; nodes without the
        project's directory answer ``/features`` with it (PROTOCOL.md 1)."""
        if rows != self.features:
            self.features = rows
            self._features_due = True

    async def producer_features(self) -> list[JsonObject] | None:
        """The board a producer sent: here, or (several nodes) the one stored by the node
        its producer is on; None when none was sent. JournalError if Redis fails."""
        if self.features is not None or self.shared is None:
            return self.features
        _, state = await self.shared.stored()
        rows = None if state is None else state.get("features")
        return rows if isinstance(rows, list) else None

    def publish_screenshot(self, shot: ScreenshotMessage) -> bool:
        """Keep a producer's screenshot as its session's latest and hand it to the
        subscribers that want screenshots; False (dropped) when no active agent has
        its feature. Not an event: no seq, no commit, no history."""
        message = browser_screenshot(shot, self.agent.agents)
        if message is None:
            return False
        self.screenshots.put(message, self._failed)
        return True

    def watch_screenshots(self, subscriber: Subscriber, watch: bool) -> bool:
        """``subscriber`` asks for screenshots (handed the latest of each session at
        once) or no more; True when the project's number of watchers went 0 to 1 or
        1 to 0 (the agent producer is to be told)."""
        if subscriber not in self._subscribers:
            return False
        if watch:
            return self.screenshots.watch(subscriber, self._failed)
        return self.screenshots.unwatch(subscriber)

    def start_alerts(self, settings: AlertSettings) -> None:
        """Turn the alert rules on, after the journal is open: they take back the standing
        alerts it kept (none raised twice) and learn the run from its snapshot, timing
        its agents and its progress from now (a restart forgets how long they were quiet)."""
        rules = AlertRules(self.name, settings, self._clock)
        state = self._snapshot_state
        rules.restore(json.loads(item.text) for item in state.alerts.values())
        known = [state.agent_status, state.progress, *state.agents.values()]
        rules.seed(
            (json.loads(item.text) for item in known if item is not None), trio.current_time()
        )
        self.alerts = rules

    def set_alert_settings(self, settings: AlertSettings | None) -> None:
        """The project's alert settings as they are now (changed on a running server):
        new thresholds apply at once; turned off, the standing alerts are resolved;
        turned on, the rules start as at open (from the snapshot, timing from now)."""
        rules = self.alerts
        if settings is None:
            if rules is None:
                return
            self.alerts = None
            self._publish(rules.resolve_all())
        elif rules is None:
            self.start_alerts(settings)
        elif rules.settings != settings:
            rules.settings = settings
        else:
            return
        self.alerts_fed.set()  # the alert clock looks again now
        self.alerts_fed = trio.Event()

    def alert_tick(self) -> float:
        """Publish the time-based alerts due now; when (trio clock) the next can be due."""
        if self.alerts is None or self.closed:
            return math.inf
        due = self.alerts.due(trio.current_time())
        self._publish(due.alerts)
        return due.next_at

    def _alert_on(self, messages: list[Event]) -> None:
        rules = self.alerts
        if rules is None:
            return
        now = trio.current_time()
        edges: list[Event] = []
        for message in messages:
            edges += rules.feed(message, now)
        self._publish(edges)
        self.alerts_fed.set()
        self.alerts_fed = trio.Event()

    def summary_events(self) -> list[JsonObject]:
        """What the overview summarises (`core.project_summary`), decoded: the snapshot's
        statuses, progress, active agents and standing alerts, then the newest held
        event, whose time is the project's last activity. Called at most a few times
        a second per project, never per event."""
        items = [*self._snapshot_state.glance(), *self.history.tail(1)]
        return [json.loads(item.text) for item in items]

    @property
    def committed_agent_status(self) -> str:
        """The agent status subscribers were last told: with several nodes also one a
        producer on another node reported (this node's tracker only knows its own)."""
        return _told(self._snapshot_state.agent_status, self.agent.status)

    @property
    def committed_dev_status(self) -> str:
        """The dev server status subscribers were last told (as `committed_agent_status`)."""
        return _told(self._snapshot_state.dev_status, self.dev.status)

    def agent_status_changed(self) -> trio.Event:
        """Set when the next ``agent_status`` event is published (a control request
        waits on it to answer with the status after its action)."""
        return self._agent_status_changed

    def held(self, types: frozenset[str]) -> list[JsonObject]:
        """The held events of ``types``, decoded, oldest first (for the HTTP views:
        progress history, the agent status's details)."""
        return [json.loads(item.text) for item in self.history.of_types(types)]

    @property
    def oldest_seq(self) -> int | None:
        return self.history.oldest_seq

    def _publish(self, messages: Sequence[Event]) -> None:
        for message in messages:
            seq = self.seq + 1
            message["seq"] = seq
            item = Outgoing.of(message, seq)
            self.seq = seq  # taken only now: an event that fails to encode leaves no hole
            self._pending.append((message, item))
            self.screenshots.after(message)  # a stop or a completion drops screenshots
        if messages:
            self._wake.set()  # the writer commits them; only then are they fanned out

    def _hold(self, item: Outgoing) -> None:
        """Hold a committed event in the history and the snapshot's log tails."""
        assert item.seq is not None
        self.head = item.seq
        self.history.append(item)
        if item.type == "log":
            self._logs.append(item)
        elif item.type == "dev_log":
            self._dev_logs.append(item)
        elif item.type == "alert":
            for listener in self.alert_listeners:
                listener(item.seq, item.text)


def _told(item: Outgoing | None, own: str) -> str:
    """The status a committed status event says, else this node's tracker's ``own``."""
    status = None if item is None else json.loads(item.text).get("status")
    return status if isinstance(status, str) else own
