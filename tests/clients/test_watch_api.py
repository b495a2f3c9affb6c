"""`watch_api`: the features board and the progress history read over HTTP while
live, against a real server.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from functools import partial
from pathlib import Path

import trio
from features_db import create_db, db_path, rows
from serving import NETWORK_TIMEOUT
from watching import FAST, target_of

from trio_ws.clients.run_view import RunView
from trio_ws.clients.watch_api import keep_extras
from trio_ws.clients.watch_session import follow
from trio_ws.net.server import Server


def mark_passing(path: Path, feature: int) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("UPDATE features SET passes = 1, in_progress = 0 WHERE id = ?", (feature,))


async def test_live_extras_read_the_board_again_when_progress_changes(
    nursery: trio.Nursery, server: Server, project_dir: Path
) -> None:
    database = create_db(db_path(project_dir), rows(in_progress=1, pending=2))
    target = target_of(server)
    view = RunView(project="demo")
    nursery.start_soon(partial(follow, target, view, backoff=FAST))
    nursery.start_soon(partial(keep_extras, target, view))
    with trio.fail_after(NETWORK_TIMEOUT):
        while view.features is None or view.history_epoch is None:  # noqa: ASYNC110
            await trio.sleep(0.01)
        assert [feature.passes for feature in view.features] == [False, False, False]
        await trio.to_thread.run_sync(mark_passing, database, 1)
        while not view.features[0].passes:  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert [feature.in_progress for feature in view.features] == [False, False, False]
    assert sorted(point.passing for point in view.points.values()) == [0, 1]
