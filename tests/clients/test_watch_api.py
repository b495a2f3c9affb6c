"""`watch_api`: the features board and the progress history read over HTTP while
live, against a real server.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from functools import partial
from pathlib import Path

import pytest
import trio
from features_db import create_db, db_path, rows
from serving import NETWORK_TIMEOUT
from watching import FAST, target_of

from trio_ws.clients.run_view import RunView
from trio_ws.clients.watch_api import keep_extras, stream_get
from trio_ws.clients.watch_session import WatchError, WatchTarget, follow
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


async def one_answer(nursery: trio.Nursery, answer: bytes, *, then_wait: bool = False) -> int:
    """A listener on 127.0.0.1 that reads a request, sends ``answer`` raw, then closes
    (or, with ``then_wait``, holds the connection open saying nothing); its port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(65536)
            await stream.send_all(answer)
            if then_wait:
                await trio.sleep_forever()

    await nursery.start(trio.serve_listeners, handle, listeners)
    return int(listeners[0].socket.getsockname()[1])


async def test_a_streamed_answer_broken_off_is_an_error_not_a_short_body(
    nursery: trio.Nursery,
) -> None:
    port = await one_answer(nursery, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
    target = WatchTarget.from_server(f"http://127.0.0.1:{port}", "demo")
    got: list[bytes] = []
    with trio.fail_after(NETWORK_TIMEOUT), pytest.raises(WatchError, match="closed"):
        await stream_get(target, "runs/e-1/export", got.append)
    assert got == [b"abc"]  # what came was passed on as it came


async def test_a_streamed_answer_that_stalls_is_an_error_after_the_idle_time(
    nursery: trio.Nursery,
) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
    port = await one_answer(nursery, head, then_wait=True)
    target = WatchTarget.from_server(f"http://127.0.0.1:{port}", "demo")
    with trio.fail_after(NETWORK_TIMEOUT), pytest.raises(WatchError, match="nothing received"):
        await stream_get(target, "runs/e-1/export", lambda data: None, idle=0.2)


async def test_a_streamed_refusal_returns_its_status_and_body(nursery: trio.Nursery) -> None:
    body = b'{"detail": "limit: must be 1-1000"}'
    answer = b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    port = await one_answer(nursery, answer)
    target = WatchTarget.from_server(f"http://127.0.0.1:{port}", "demo")
    got: list[bytes] = []
    with trio.fail_after(NETWORK_TIMEOUT):
        status, refused = await stream_get(target, "runs/e-1/export", got.append)
    assert (status, refused, got) == (400, body, [])
