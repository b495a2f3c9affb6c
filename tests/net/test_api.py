"""The REST bodies, built from real journals, real features databases and a real registry."""

from __future__ import annotations

from pathlib import Path

import trio
from features_db import create_db, db_path, rows

from trio_ws.data.registry import Registry
from trio_ws.journal.interface import Batch
from trio_ws.journal.memory import MemoryBackend
from trio_ws.net import api
from trio_ws.state.hub import ProjectHub


async def test_journal_health_says_what_is_held_and_how_commits_go() -> None:
    journal = MemoryBackend().journal("demo")
    await journal.open()
    await journal.append(Batch([(1, '{"a":1}'), (2, '{"b":2}')]))
    body = api.journal_health(journal, pending=3)
    assert (body["backend"], body["head"], body["events_held"]) == ("memory", 2, 2)
    assert (body["pending"], body["commits"], body["write_errors"]) == (3, 1, 0)
    assert body["commit_p50_ms"] is not None


async def test_features_of_a_project_without_a_database_is_a_404_with_the_detail(
    tmp_path: Path,
) -> None:
    status, body = await api.features("demo", tmp_path, 1.0, trio.CapacityLimiter(1))
    assert status == 404 and "no features database" in body["detail"]


async def test_features_lists_the_rows_of_the_database(tmp_path: Path) -> None:
    create_db(db_path(tmp_path), rows(passing=2, pending=1))
    status, body = await api.features("demo", tmp_path, 1.0, trio.CapacityLimiter(1))
    assert status == 200 and body["project"] == "demo"
    assert len(body["features"]) == 3


async def test_features_a_producer_sent_answer_where_the_directory_is_not() -> None:
    hub = ProjectHub("demo")
    await hub.open(MemoryBackend().journal("demo"))
    status, body = await api.producer_features("demo", hub)
    assert status == 404 and "has sent no features yet" in body["detail"]
    hub.set_features([{"id": 1, "name": "Add a todo", "passes": True}])
    status, body = await api.producer_features("demo", hub)
    assert (status, body) == (
        200,
        {"project": "demo", "features": [{"id": 1, "name": "Add a todo", "passes": True}]},
    )


def test_list_with_existence_says_which_directories_exist_here(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry.db")
    for name in ("here", "gone"):
        (tmp_path / name).mkdir()
        registry.add(name, tmp_path / name)
    (tmp_path / "gone").rmdir()
    found = {p.name: exists for p, exists in api.list_with_existence(registry)}
    assert found == {"here": True, "gone": False}
