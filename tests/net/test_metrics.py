"""GET /metrics over a real socket, parsed with prometheus-client's own parser."""

from __future__ import annotations

import json
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families
from serving import NETWORK_TIMEOUT, connect, http_get, receive, receive_until, ws_url
from trio_websocket import connect_websocket_url

from trio_ws.net.server import Server


async def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, body = await http_get(server, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_count_subscribers_events_and_deliveries(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        hub = (await server.manager.open("demo", project_dir)).hub
        watchers = [await connect(nursery, server) for _ in range(2)]
        for ws in watchers:
            await receive_until(ws, lambda m: m["type"] == "dev_server_status")
        hub.set_status("running")
        hub.feed_lines(["Started coding agent for feature #1", "plain"])
        for ws in watchers:
            await receive_until(ws, lambda m: m.get("line") == "plain")
        samples = await scrape(server)
    project = (("project", "demo"),)
    assert samples[("trio_ws_subscribers", project)] == 2
    assert samples[("trio_ws_producers", project)] == 0
    assert samples[("trio_ws_events_total", (("project", "demo"), ("type", "log")))] == 2
    assert samples[("trio_ws_events_total", (("project", "demo"), ("type", "agent_status")))] == 1
    published = hub.seq
    assert samples[("trio_ws_deliveries_total", project)] >= 2 * (published - 1)
    assert samples[("trio_ws_resyncs_total", project)] == 0


async def test_metrics_observe_poll_durations_and_read_errors(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    (project_dir / "features.db").write_bytes(b"definitely not sqlite" * 64)
    with trio.fail_after(NETWORK_TIMEOUT):
        watcher = await connect(nursery, server)
        await receive_until(watcher, lambda m: m["type"] == "warning")
        samples = await scrape(server)
    project = (("project", "demo"),)
    assert samples[("trio_ws_progress_read_errors_total", project)] >= 1
    assert samples[("trio_ws_poll_duration_seconds_count", project)] >= 1


async def test_metrics_without_projects_are_still_valid(server: Server) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        samples = await scrape(server)
    assert not any(name == "trio_ws_subscribers" for name, _ in samples)


async def test_metrics_and_healthz_say_what_the_archive_keeps(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        hub = (await server.manager.open("demo", project_dir)).hub
        ws = await connect(nursery, server)
        hub.set_status("running")
        hub.feed_lines(["one line"])
        hub.set_status("stopped")
        await receive_until(ws, lambda m: m.get("status") == "stopped")
        samples = await scrape(server)
        status, _, body = await http_get(server, "/healthz")
    project = (("project", "demo"),)
    assert samples[("trio_ws_archive_runs", project)] == 1
    assert samples[("trio_ws_archive_events", project)] == hub.head
    assert samples[("trio_ws_archive_bytes", project)] > 0
    first = samples[("trio_ws_archive_oldest_run_seq", project)]
    archive = json.loads(body)["journals"]["demo"]["archive"]
    assert status == 200
    assert archive == {
        "oldest_seq": 1,
        "events": hub.head,
        "bytes": samples[("trio_ws_archive_bytes", project)],
        "runs": 1,
        "oldest_run_seq": first,
    }


async def test_metrics_count_overview_watchers_and_summaries(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        before = await scrape(server)
        assert before[("trio_ws_overview_watchers", ())] == 0
        assert before[("trio_ws_overview_summaries_sent_total", ())] == 0
        watcher = await connect_websocket_url(nursery, ws_url(server, "/ws/overview"))
        first = await receive(watcher)
        assert [project["name"] for project in first["projects"]] == ["demo"]
        hub = (await server.manager.open("demo", project_dir)).hub
        hub.set_status("running")
        await receive_until(
            watcher,
            lambda m: any(p["agent_status"] == "running" for p in m.get("projects", [])),
        )
        samples = await scrape(server)
    assert samples[("trio_ws_overview_watchers", ())] == 1
    # The first list's one summary, then at least the one saying "running".
    assert samples[("trio_ws_overview_summaries_sent_total", ())] >= 2
    assert samples[("trio_ws_overview_summaries_dropped_total", ())] == 0  # it kept up
    assert samples[("trio_ws_overview_pending_summaries", ())] == 0
    assert samples[("trio_ws_overview_watchers_dropped_total", ())] == 0
