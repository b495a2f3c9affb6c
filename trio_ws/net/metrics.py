"""``GET /metrics``: Prometheus exposition of what the server is doing.

The hot path already counts what matters in each hub's `HubStats`, so most
metrics are read from there at scrape time by a custom collector: nothing
extra runs per event or per delivery. Only the poll-duration histogram and
the read-error counter are observed as they happen, once per database read.
Each server has its own `CollectorRegistry`, so several servers in one
process (tests) never mix their figures.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from trio_ws.state.manager import ConnectionManager

CONTENT_TYPE = CONTENT_TYPE_LATEST
POLL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class Metrics:
    """The server's metrics: one registry, the poll observations, the hub collector."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._poll_seconds = Histogram(
            "trio_ws_poll_duration_seconds",
            "Time to read one project's progress from its features database.",
            ["project"],
            buckets=POLL_BUCKETS,
            registry=self.registry,
        )
        self._read_errors = Counter(
            "trio_ws_progress_read_errors",
            "Progress reads that failed (locked, corrupt, missing table, permission).",
            ["project"],
            registry=self.registry,
        )
        self._commit_seconds = Histogram(
            "trio_ws_journal_commit_seconds",
            "Time to commit one batch of a project's events to its journal.",
            ["project"],
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )

    def observe_commit(self, project: str, seconds: float) -> None:
        self._commit_seconds.labels(project).observe(seconds)

    def bind(self, manager: ConnectionManager) -> None:
        """Expose ``manager``'s hubs; call once, when the manager exists."""
        self.registry.register(_HubCollector(manager))
        self.registry.register(_OverviewCollector(manager))

    def observe_poll(self, project: str, seconds: float, ok: bool) -> None:
        self._poll_seconds.labels(project).observe(seconds)
        if not ok:
            self._read_errors.labels(project).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _OverviewCollector(Collector):
    """Reads the overview's own counters (``/ws/overview``) at scrape time."""

    def __init__(self, manager: ConnectionManager) -> None:
        self._manager = manager

    def collect(self) -> Iterator[Metric]:
        overview = self._manager.overview
        yield GaugeMetricFamily(
            "trio_ws_overview_watchers",
            "Connected overview clients (/ws/overview).",
            value=overview.watcher_count,
        )
        yield GaugeMetricFamily(
            "trio_ws_overview_pending_summaries",
            "Summaries waiting for slow overview clients (at most one per project each).",
            value=overview.pending_summaries,
        )
        yield CounterMetricFamily(
            "trio_ws_overview_summaries_sent",
            "Project summaries written to overview clients, first lists included.",
            value=overview.summaries_sent,
        )
        yield CounterMetricFamily(
            "trio_ws_overview_summaries_dropped",
            "Summaries a slow overview client never got: a newer one replaced them.",
            value=overview.summaries_dropped,
        )
        yield CounterMetricFamily(
            "trio_ws_overview_watchers_dropped",
            "Overview clients cut for reading nothing or answering no ping.",
            value=overview.watchers_dropped,
        )


class _HubCollector(Collector):
    """Reads the hubs' own counters at scrape time."""

    def __init__(self, manager: ConnectionManager) -> None:
        self._manager = manager

    def collect(self) -> Iterator[Metric]:
        subscribers = GaugeMetricFamily(
            "trio_ws_subscribers", "Connected subscribers.", labels=["project"]
        )
        producers = GaugeMetricFamily(
            "trio_ws_producers", "Connected producers.", labels=["project"]
        )
        events = CounterMetricFamily(
            "trio_ws_events", "Events published, by type.", labels=["project", "type"]
        )
        deliveries = CounterMetricFamily(
            "trio_ws_deliveries", "Events written to subscribers.", labels=["project"]
        )
        fell_behind = CounterMetricFamily(
            "trio_ws_subscribers_fell_behind",
            "Times a subscriber's queue was full and it was marked behind.",
            labels=["project"],
        )
        catch_ups = CounterMetricFamily(
            "trio_ws_catch_ups", "Catch-ups from history.", labels=["project"]
        )
        resyncs = CounterMetricFamily(
            "trio_ws_resyncs", "Resyncs after history no longer reached.", labels=["project"]
        )
        aborted = CounterMetricFamily(
            "trio_ws_subscribers_aborted",
            "Subscribers aborted because their socket accepted nothing.",
            labels=["project"],
        )
        journal_info = GaugeMetricFamily(
            "trio_ws_journal_info", "The project's journal backend.", labels=["project", "backend"]
        )
        journal_head = GaugeMetricFamily(
            "trio_ws_journal_head_seq", "Newest committed seq.", labels=["project"]
        )
        journal_oldest = GaugeMetricFamily(
            "trio_ws_journal_oldest_seq", "Oldest seq the journal holds.", labels=["project"]
        )
        journal_bytes = GaugeMetricFamily(
            "trio_ws_journal_bytes", "Bytes of event text the journal holds.", labels=["project"]
        )
        archive_bytes = GaugeMetricFamily(
            "trio_ws_archive_bytes",
            "Bytes of event text the journal keeps, the archive beyond the history included.",
            labels=["project"],
        )
        archive_events = GaugeMetricFamily(
            "trio_ws_archive_events",
            "Events the journal keeps, archive included.",
            labels=["project"],
        )
        archive_runs = GaugeMetricFamily(
            "trio_ws_archive_runs", "Closed runs the journal keeps.", labels=["project"]
        )
        archive_oldest_run = GaugeMetricFamily(
            "trio_ws_archive_oldest_run_seq",
            "First seq of the oldest closed run kept.",
            labels=["project"],
        )
        journal_errors = CounterMetricFamily(
            "trio_ws_journal_write_errors",
            "Commits that failed (disk full, read-only, I/O error) and were retried.",
            labels=["project"],
        )
        for name, project in sorted(self._manager.projects.items()):
            hub = project.hub
            if hub.journal is not None:
                journal = hub.journal.stats()
                journal_info.add_metric([name, journal.backend], 1)
                journal_head.add_metric([name], journal.head)
                journal_oldest.add_metric([name], journal.oldest)
                journal_bytes.add_metric([name], journal.bytes_held)
                journal_errors.add_metric([name], journal.write_errors)
                if journal.archive is not None:
                    archive_bytes.add_metric([name], journal.archive.bytes)
                    archive_events.add_metric([name], journal.archive.events)
                    archive_runs.add_metric([name], journal.archive.runs)
                    if journal.archive.oldest_run is not None:
                        archive_oldest_run.add_metric([name], journal.archive.oldest_run)
            stats = hub.stats
            subscribers.add_metric([name], hub.subscriber_count)
            producers.add_metric([name], project.producer_count)
            for kind, count in sorted(stats.events.items()):
                events.add_metric([name, kind], count)
            deliveries.add_metric([name], stats.deliveries)
            fell_behind.add_metric([name], stats.fell_behind)
            catch_ups.add_metric([name], stats.catch_ups)
            resyncs.add_metric([name], stats.resyncs)
            aborted.add_metric([name], stats.aborted)
        yield from (
            subscribers,
            producers,
            events,
            deliveries,
            fell_behind,
            catch_ups,
            resyncs,
            aborted,
            journal_info,
            journal_head,
            journal_oldest,
            journal_bytes,
            journal_errors,
            archive_bytes,
            archive_events,
            archive_runs,
            archive_oldest_run,
        )
