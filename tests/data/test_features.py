"""`GET /api/projects/{name}/features` over real HTTP on real SQLite files (DATA.md 1).

Every database is built the way the orchestrator builds it (`features_db`);
every answer is read through a real socket from a real server.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import trio
from features_db import LAYOUTS, Row, create_db, db_path
from serving import NETWORK_TIMEOUT, TOKEN, http_json, make_config

from trio_ws.data.registry import Registry
from trio_ws.net.server import Server, serve

LOCK_TIMEOUT = 0.5
URL = "/api/projects/demo/features"


@pytest.fixture
async def server(nursery: trio.Nursery, registry: Registry) -> AsyncIterator[Server]:
    """A server whose readers give up on a locked database after ``LOCK_TIMEOUT``."""
    with trio.fail_after(NETWORK_TIMEOUT):
        running: Server = await nursery.start(
            serve, make_config(registry, lock_timeout=LOCK_TIMEOUT)
        )
    yield running
    running._cancel.cancel()


async def get_features(server: Server, **headers: str) -> tuple[int, Any]:
    with trio.fail_after(NETWORK_TIMEOUT):
        return await http_json(server, "GET", URL, headers)


def feature(
    id: int, priority: int, name: str, dependencies: list[int], **flags: bool
) -> dict[str, Any]:
    return {
        "id": id,
        "priority": priority,
        "category": "core",
        "name": name,
        "passes": flags.get("passes", False),
        "in_progress": flags.get("in_progress", False),
        "needs_human_input": flags.get("needs_human_input", False),
        "dependencies": dependencies,
    }


async def test_features_are_listed_by_priority_then_id(server: Server, project_dir: Path) -> None:
    create_db(
        db_path(project_dir),
        [
            Row(priority=2, name="list todos", passes=True, dependencies="[]"),
            Row(priority=1, name="add a todo", in_progress=True, dependencies="[3]"),
            Row(priority=1, name="delete a todo", needs_human_input=True, dependencies="[1, 2]"),
        ],
    )
    status, body = await get_features(server)
    assert status == 200
    assert body == {
        "project": "demo",
        "features": [
            feature(2, 1, "add a todo", [3], in_progress=True),
            feature(3, 1, "delete a todo", [1, 2], needs_human_input=True),
            feature(1, 2, "list todos", [], passes=True),
        ],
    }


async def test_the_database_is_found_in_every_layout(server: Server, project_dir: Path) -> None:
    """Resolved on every request: a project migrated while served is followed."""
    path = create_db(db_path(project_dir, LAYOUTS[2]), [Row(name="old layout")])
    assert (await get_features(server))[1]["features"][0]["name"] == "old layout"
    create_db(db_path(project_dir, LAYOUTS[0]), [Row(name="new layout")])
    assert (await get_features(server))[1]["features"][0]["name"] == "new layout"
    assert path.exists()


@pytest.mark.parametrize("schema", ["legacy", "oldest"])
async def test_old_schemas_and_null_booleans_read_as_false(
    server: Server, project_dir: Path, schema: Any
) -> None:
    create_db(
        db_path(project_dir),
        [Row(passes=None, in_progress=None, needs_human_input=None), Row(passes=True)],
        schema=schema,
    )
    status, body = await get_features(server)
    assert status == 200
    assert body["features"] == [
        feature(1, 1, "feature", []),
        feature(2, 1, "feature", [], passes=True),
    ]


async def test_dependencies_null_or_malformed_read_as_empty_and_non_ids_are_left_out(
    server: Server, project_dir: Path
) -> None:
    raw = [None, "not json", '{"a": 1}', '"7"', '[1, "2", 3.5, true, 4]', "[5, 6]"]
    create_db(db_path(project_dir), [Row(dependencies=value) for value in raw])
    status, body = await get_features(server)
    assert status == 200
    assert [f["dependencies"] for f in body["features"]] == [[], [], [], [], [1, 4], [5, 6]]


async def test_no_database_yet_is_404_never_an_empty_list(
    server: Server, project_dir: Path
) -> None:
    status, body = await get_features(server)
    assert (status, body) == (
        404,
        {"detail": f"no features database yet in {project_dir}"},
    )


async def test_an_empty_database_is_an_empty_list(server: Server, project_dir: Path) -> None:
    create_db(db_path(project_dir))
    assert await get_features(server) == (200, {"project": "demo", "features": []})


async def test_unknown_project_is_404_with_autoforge_detail(
    server: Server, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        status, body = await http_json(server, "GET", "/api/projects/nope/features")
    assert (status, body) == (404, {"detail": "Project 'nope' not found in registry"})


async def test_a_locked_database_is_503_and_the_server_keeps_answering(
    server: Server, project_dir: Path
) -> None:
    path = create_db(db_path(project_dir), [Row()], journal_mode="delete")
    with closing(sqlite3.connect(path, isolation_level=None)) as writer:
        writer.execute("BEGIN EXCLUSIVE")
        writer.execute("DELETE FROM features")
        answers: list[tuple[int, Any]] = []
        health: list[int] = []

        async def features() -> None:
            answers.append(await get_features(server))

        async def healthz() -> None:
            status, _ = await http_json(server, "GET", "/healthz")
            assert status == 200
            health.append(len(answers))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(features)
            # Polled under the test's deadline: a worker thread sets no trio.Event.
            while server.manager.limiter.borrowed_tokens == 0:  # noqa: ASYNC110
                await trio.sleep(0.005)
            nursery.start_soon(healthz)
        writer.execute("ROLLBACK")
    status, body = answers[0]
    assert status == 503
    assert body == {"detail": f"features database {path} is locked (waited {LOCK_TIMEOUT} s)"}
    assert health == [0]  # answered while the read still waited: in a thread, not the loop


async def test_a_corrupt_database_is_500_with_its_path(server: Server, project_dir: Path) -> None:
    path = db_path(project_dir)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not an SQLite database, only garbage bytes " * 100)
    status, body = await get_features(server)
    assert status == 500
    assert body["detail"].startswith(f"features database {path} is corrupt: ")


async def test_a_database_without_features_table_is_500(server: Server, project_dir: Path) -> None:
    path = db_path(project_dir)
    path.parent.mkdir(parents=True)
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE other (id INTEGER)")
    status, body = await get_features(server)
    assert (status, body) == (
        500,
        {"detail": f"features database {path} has no features table"},
    )


async def test_a_features_table_missing_board_columns_is_500(
    server: Server, project_dir: Path
) -> None:
    path = db_path(project_dir)
    path.parent.mkdir(parents=True)
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE features (id INTEGER PRIMARY KEY, passes BOOLEAN)")
    status, body = await get_features(server)
    assert (status, body) == (
        500,
        {
            "detail": f"features database {path}: features table has no "
            "priority, category, name columns"
        },
    )


async def test_features_need_the_token_when_subscribers_do(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    create_db(db_path(project_dir), [Row()])
    with trio.fail_after(NETWORK_TIMEOUT):
        server: Server = await nursery.start(serve, make_config(registry, require_token=True))
        refused = await http_json(server, "GET", URL)
        allowed = await http_json(server, "GET", URL, {"Authorization": f"Bearer {TOKEN}"})
        by_query = await http_json(server, "GET", f"{URL}?token={TOKEN}")
        server._cancel.cancel()
    assert refused == (401, {"detail": "Unauthorized"})
    assert allowed[0] == by_query[0] == 200
