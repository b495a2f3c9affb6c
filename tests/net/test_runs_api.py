"""``GET /api/projects/{name}/runs`` and ``.../runs/{id}`` on a real server, fed by a
real agent producer over the publish endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from serving import NETWORK_TIMEOUT, TOKEN, http_json, make_config
from test_subscribe import Producer

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
