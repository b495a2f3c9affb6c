"""``GET /api/projects/{name}/runs`` and ``.../runs/{id}`` on a real server, fed by a
real agent producer over the publish endpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trio
from serving import (
    NETWORK_TIMEOUT,
    TOKEN,
    connect,
    http_json,
    http_request,
    make_config,
    receive_until,
)
from test_subscribe import RUN, Producer, hub_of, is_event, seq_at_least

from trio_ws.data.registry import Registry
from trio_ws.net.server import Server, serve

RUNS = "/api/projects/demo/runs"


async def three_runs(nursery: trio.Nursery, server: Server) -> list[dict[str, Any]]:
    """Three runs, the last one open; the listing of them, newest first."""
    producer = await Producer.connect(nursery, server)
    for number in range(3):
        await producer.status("running")
        await producer.lines([f"run {number} works"])
        if number < 2:
            await producer.status("stopped")
    status, body = await http_json(server, "GET", RUNS)
    assert status == 200
    runs: list[dict[str, Any]] = body["runs"]
    return runs


async def test_runs_are_listed_newest_first_the_open_one_on_top(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        runs = await three_runs(nursery, server)
    assert [run["ended"] for run in runs] == [None, "stopped", "stopped"]
    assert [run["first_seq"] for run in runs] == [7, 4, 1]
    assert all(run["log_lines"] == 1 for run in runs)


async def test_runs_are_paged_with_limit_and_before(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        runs = await three_runs(nursery, server)
        first = await http_json(server, "GET", f"{RUNS}?limit=2")
        second = await http_json(server, "GET", f"{RUNS}?limit=2&before={runs[1]['id']}")
    assert first[0] == second[0] == 200
    assert [run["id"] for run in first[1]["runs"]] == [runs[0]["id"], runs[1]["id"]]
    assert first[1]["next_before"] == runs[1]["id"]
    assert [run["id"] for run in second[1]["runs"]] == [runs[2]["id"]]
    assert second[1]["next_before"] is None


@pytest.mark.parametrize(
    ("query", "named"),
    [("limit=0", "limit"), ("limit=501", "limit"), ("limit=x", "limit"), ("before=nope", "before")],
)
async def test_a_bad_paging_parameter_is_a_400_naming_it(
    server: Server, project_dir: Path, query: str, named: str
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        status, body = await http_json(server, "GET", f"{RUNS}?{query}")
    assert status == 400 and body["detail"].startswith(named)


async def test_one_run_is_its_summary(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        runs = await three_runs(nursery, server)
        status, body = await http_json(server, "GET", f"{RUNS}/{runs[1]['id']}")
    assert (status, body) == (200, runs[1])


async def test_an_unknown_run_is_a_404(server: Server, project_dir: Path) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        status, body = await http_json(server, "GET", f"{RUNS}/0123-1")
    assert status == 404 and "not found" in body["detail"]


async def test_runs_of_an_unregistered_project_are_a_404(server: Server, project_dir: Path) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        status, body = await http_json(server, "GET", "/api/projects/nobody/runs")
    assert status == 404 and "not found in registry" in body["detail"]


async def test_runs_need_the_token_when_readers_do(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    config = make_config(registry, require_token=True)
    with trio.fail_after(NETWORK_TIMEOUT):
        running: Server = await nursery.start(serve, config)
        refused = await http_json(running, "GET", RUNS)
        allowed = await http_json(running, "GET", RUNS, {"Authorization": f"Bearer {TOKEN}"})
    running._cancel.cancel()
    assert (refused[0], allowed[0]) == (401, 200)


# -- one run's events: /events, /state, /export ---------------------------------

RUN_LINES = 177
"""The corpus run's first lines: agents at work, orchestrator updates, finished agents."""


async def corpus_run(
    nursery: trio.Nursery, server: Server
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """A stopped run fed the corpus' lines, then an open run; the first run's summary,
    every event a subscriber received in it, and every event up to its end."""
    watcher = await connect(nursery, server)
    before = await receive_until(watcher, lambda m: m["type"] == "progress")
    hub = hub_of(server)
    hub.set_status("running")
    hub.feed_lines(RUN[:RUN_LINES])
    hub.set_status("stopped")
    end = hub.seq
    seen = before + await receive_until(watcher, seq_at_least(end))
    hub.set_status("running")
    hub.feed_lines(["the second run"])
    await receive_until(watcher, seq_at_least(hub.seq))
    status, body = await http_json(server, "GET", RUNS)
    assert status == 200
    run: dict[str, Any] = body["runs"][1]
    assert run["last_seq"] == end
    every = [m for m in seen if is_event(m)]
    return run, [m for m in every if m["seq"] >= run["first_seq"]], every


async def all_pages(server: Server, path: str) -> list[dict[str, Any]]:
    """Every event of ``path``'s pages, following ``next_after``."""
    events: list[dict[str, Any]] = []
    after = None
    for _ in range(1000):
        joiner = "&" if "?" in path else "?"
        status, body = await http_json(
            server, "GET", path + ("" if after is None else f"{joiner}after={after}")
        )
        assert status == 200, body
        events += body["events"]
        after = body["next_after"]
        if after is None:
            return events
    raise AssertionError("pages never ended")


async def test_events_are_the_runs_events_as_subscribers_received_them(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        run, seen, _ = await corpus_run(nursery, server)
        status, body = await http_json(server, "GET", f"{RUNS}/{run['id']}/events")
        paged = await all_pages(server, f"{RUNS}/{run['id']}/events?limit=7")
    assert status == 200
    assert (body["project"], body["run"], body["partial"]) == ("demo", run["id"], False)
    assert len(seen) > 100
    assert len(seen) > 200 and body["events"] == seen[:200]
    assert body["next_after"] == seen[199]["seq"]
    assert paged == seen


async def test_events_are_filtered_by_type_agent_feature_and_text(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        run, seen, _ = await corpus_run(nursery, server)
        base = f"{RUNS}/{run['id']}/events?limit=1000"
        named = next(m for m in seen if m["type"] == "agent_update")
        feature = named["featureId"]
        word = next(m for m in seen if m["type"] == "log")["line"].split()[-1]
        types = await all_pages(server, f"{base}&type=agent_update,orchestrator_update")
        by_index = await all_pages(server, f"{base}&agent={named['agentIndex']}")
        by_name = await all_pages(server, f"{base}&agent={named['agentName']}")
        by_feature = await all_pages(server, f"{base}&feature={feature}")
        text = await all_pages(server, f"{base}&q={quote(word.upper())}")
        regex = await all_pages(server, f"{base}&regex=1&q={quote('^started .* #[0-9]+$')}")
    kinds = {"agent_update", "orchestrator_update"}
    assert types == [m for m in seen if m["type"] in kinds]
    of_agent = [m for m in seen if m.get("agentIndex") == named["agentIndex"]]
    assert by_index == by_name == of_agent and of_agent
    assert by_feature and all(
        feature == m.get("featureId") or feature in m.get("featureIds", []) for m in by_feature
    )
    assert by_feature == [
        m for m in seen if m.get("featureId") == feature or feature in m.get("featureIds", [])
    ]
    assert text and text == [
        m for m in seen if any(word.lower() in str(m.get(k, "")).lower() for k in TEXT_KEYS)
    ]
    assert regex and all(m["line"].lower().startswith("started") for m in regex)


TEXT_KEYS = ("line", "thought", "message")


def expected_state(events: list[dict[str, Any]], seq: int) -> list[dict[str, Any]]:
    """The snapshot after ``seq`` from every event before it (PROTOCOL.md 3.1's order,
    backlog 100)."""
    upto = [m for m in events if m["seq"] <= seq]

    def of(kind: str) -> list[dict[str, Any]]:
        return [m for m in upto if m["type"] == kind]

    latest: dict[int, dict[str, Any]] = {}
    for update in of("agent_update"):
        if update["state"] in ("success", "error"):
            latest.pop(update["agentIndex"], None)
        else:
            latest[update["agentIndex"]] = update
    return [
        *of("agent_status")[-1:],
        *of("dev_server_status")[-1:],
        *of("progress")[-1:],
        *of("orchestrator_update")[-5:],
        *[latest[index] for index in sorted(latest)],
        *of("log")[-100:],
    ]


async def test_state_is_the_snapshot_right_after_the_event_asked_for(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        run, seen, every = await corpus_run(nursery, server)
        middle = seen[len(seen) // 2]
        at_seq = await http_json(server, "GET", f"{RUNS}/{run['id']}/state?seq={middle['seq']}")
        stamped = next(m for m in seen[len(seen) // 3 :] if "timestamp" in m)
        at_time = await http_json(
            server, "GET", f"{RUNS}/{run['id']}/state?at={quote(stamped['timestamp'])}"
        )
        before = await http_json(server, "GET", f"{RUNS}/{run['id']}/state?seq=0")
        beyond = await http_json(server, "GET", f"{RUNS}/{run['id']}/state?seq=999999")
    status, body = at_seq
    assert status == 200
    assert (body["project"], body["run"], body["seq"]) == ("demo", run["id"], middle["seq"])
    assert body["messages"] == expected_state(every, middle["seq"])
    assert [m for m in body["messages"] if m["type"] == "agent_update"]
    # ``at``: the last event stamped no later than it (events may share a timestamp).
    same = [m["seq"] for m in seen if m.get("timestamp", "") <= stamped["timestamp"]]
    assert at_time[1]["seq"] == max(same)
    assert at_time[1]["timestamp"] <= stamped["timestamp"]
    assert before[1]["seq"] == run["first_seq"]
    assert beyond[1]["seq"] == run["last_seq"]
    assert beyond[1]["messages"][0]["status"] == "stopped"


async def test_export_streams_the_run_as_ndjson(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        run, seen, _ = await corpus_run(nursery, server)
        status, headers, raw = await http_request(server, "GET", f"{RUNS}/{run['id']}/export")
    assert status == 200
    assert headers["content-type"] == "application/x-ndjson"
    assert headers["content-disposition"].startswith("attachment;")
    assert headers["transfer-encoding"] == "chunked"
    lines = dechunk(raw).decode().splitlines()
    assert [json.loads(line) for line in lines] == seen


def dechunk(raw: bytes) -> bytes:
    """A chunked body's bytes; AssertionError when it lacks its final chunk."""
    body = b""
    while True:
        size_line, _, raw = raw.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return body
        body, raw = body + raw[:size], raw[size + 2 :]
        assert raw, "the chunked body was cut short"


@pytest.mark.parametrize(
    ("view", "query", "named"),
    [
        ("events", "limit=0", "limit"),
        ("events", "limit=1001", "limit"),
        ("events", "after=-3", "after"),
        ("events", "type=log,nonsense", "type"),
        ("events", "feature=twelve", "feature"),
        ("events", "q=" + "x" * 201, "q"),
        ("events", "regex=1&q=(unclosed", "q"),
        ("events", "regex=maybe&q=x", "regex"),
        ("state", "seq=x", "seq"),
        ("state", "at=yesterday", "at"),
        ("state", "seq=1&at=2026-01-01T00:00:00Z", "seq"),
    ],
)
async def test_a_bad_run_parameter_is_a_400_naming_it(
    nursery: trio.Nursery, server: Server, project_dir: Path, view: str, query: str, named: str
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        runs = await three_runs(nursery, server)
        status, body = await http_json(server, "GET", f"{RUNS}/{runs[1]['id']}/{view}?{query}")
    assert status == 400 and body["detail"].startswith(f"{named}:")


BACKTRACKING = "(a|aa)+$"
"""Nested alternatives: on a line of 40 a's and a "!" the number of ways to try grows
like Fibonacci(40). Python's `re` matched it for minutes holding the interpreter, so
the whole server (every socket of every project) stood still meanwhile."""


async def test_a_backtracking_regex_is_refused_and_never_stops_the_server(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        producer = await Producer.connect(nursery, server)
        await producer.status("running")
        await producer.lines(["a" * 40 + "!"])
        run_id = (await runs_listing(server))[0]["id"]
        watcher = await connect(nursery, server)
        await receive_until(watcher, lambda m: m.get("type") == "hello")
        path = f"{RUNS}/{run_id}/events?regex=1&q={quote(BACKTRACKING)}"
        answers: list[tuple[int, Any]] = []
        pongs: list[float] = []

        async def search() -> None:
            answers.append(await http_json(server, "GET", path))

        async def ping_meanwhile() -> None:
            while not answers:
                sent = trio.current_time()
                await watcher.send_message('{"type":"ping"}')
                await receive_until(watcher, lambda m: m.get("type") == "pong")
                pongs.append(trio.current_time() - sent)
                await trio.sleep(0.05)

        async with trio.open_nursery() as both:
            both.start_soon(search)
            both.start_soon(ping_meanwhile)
    [(status, body)] = answers
    assert status == 400 and body["detail"].startswith("q: the regular expression took over")
    assert len(pongs) >= 5, "the search took the guard's 1 s, answering pings meanwhile"
    assert max(pongs) < 0.5, pongs


async def runs_listing(server: Server) -> list[dict[str, Any]]:
    status, body = await http_json(server, "GET", RUNS)
    assert status == 200
    runs: list[dict[str, Any]] = body["runs"]
    return runs


@pytest.mark.parametrize("view", ["events", "state", "export"])
async def test_the_events_of_an_unknown_run_are_a_404(
    server: Server, project_dir: Path, view: str
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        status, body = await http_json(server, "GET", f"{RUNS}/0123-1/{view}")
    assert status == 404 and "not found" in body["detail"]


# -- retention per project (issue 23): keep-runs and archive-bytes ------------------


async def closed_runs(nursery: trio.Nursery, server: Server, project: str, count: int) -> None:
    producer = await Producer.connect(nursery, server, project)
    for number in range(count):
        await producer.status("running")
        await producer.lines([f"{project} run {number} works"])
        await producer.status("stopped")
    await producer.ws.aclose()


@pytest.mark.parametrize("where", ["registry", "file"])
async def test_a_projects_own_keep_runs_bounds_its_journal_and_no_other(
    registry: Registry, home: Path, tmp_path: Path, where: str
) -> None:
    """Alpha keeps 1 closed run (in the registry, or the config file's table), beta
    the server's default (no limit): after 3 runs each on real sqlite journals, alpha
    lists 1 and beta 3; reopened from disk, alpha's journal still holds only 1."""
    from trio_ws.core.project_settings import ProjectSettings
    from trio_ws.journal.sqlite import SqliteBackend

    for name in ("alpha", "beta"):
        (tmp_path / name).mkdir()
        registry.add(name, tmp_path / name)
    filed: dict[str, ProjectSettings] = {}
    if where == "registry":
        registry.set_setting("alpha", "keep-runs", "1")
    else:
        filed["alpha"] = ProjectSettings(keep_runs=1)
    config = make_config(registry, journal="sqlite", home=home, project_settings=filed)
    listed = {}
    with trio.fail_after(NETWORK_TIMEOUT):
        async with trio.open_nursery() as serving:  # left once the journals are closed
            running: Server = await serving.start(serve, config)
            for name in ("alpha", "beta"):
                await closed_runs(serving, running, name, 3)
            for name in ("alpha", "beta"):
                status, body = await http_json(running, "GET", f"/api/projects/{name}/runs")
                assert status == 200
                listed[name] = body["runs"]
            running._cancel.cancel()
    assert [run["ended"] for run in listed["alpha"]] == ["stopped"]
    assert listed["alpha"][0]["log_lines"] == 1
    assert [run["ended"] for run in listed["beta"]] == ["stopped"] * 3
    for name, kept in (("alpha", 1), ("beta", 3)):
        journal = SqliteBackend(home).journal(name)
        await journal.open()
        try:
            assert len(await journal.runs(None, 10)) == kept
        finally:
            await journal.close()
