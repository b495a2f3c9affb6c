"""ConnectionManager: the server's set of projects and its live sessions.

A name opens one project (one hub, one reader), two names two; shutdown
closes every live session with 1001 within its bound, whatever the peers do.
Real sockets on 127.0.0.1; the per-project behaviour is tests/test_project.py's.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import trio
import trio.testing
import wsproto
from serving import NETWORK_TIMEOUT
from test_project import (
    add_project,
    close_code,
    start_server,
    subscribe,
    until_pong,
    wait_until,
)
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from trio_ws.manager import ConnectionManager
from trio_ws.protocol import Message
from trio_ws.registry import Registry
from trio_ws.server import Server

# -- opening projects -------------------------------------------------------------


async def test_open_gives_the_same_hub_for_the_same_name(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    manager = ConnectionManager(nursery)
    hub = (await manager.open("alpha", tmp_path)).hub
    reader = manager.projects["alpha"].reader
    assert (await manager.open("alpha", tmp_path)).hub is hub
    assert manager.get_hub("alpha") is hub
    assert manager.projects["alpha"].reader is reader  # its cached connection is kept


async def test_open_gives_different_names_different_hubs_and_epochs(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    manager = ConnectionManager(nursery)
    alpha = (await manager.open("alpha", tmp_path / "alpha")).hub
    beta = (await manager.open("beta", tmp_path / "beta")).hub
    assert alpha is not beta
    assert alpha.epoch != beta.epoch
    assert manager.hubs == {"alpha": alpha, "beta": beta}
    assert manager.projects["alpha"].reader is not manager.projects["beta"].reader


# -- shutdown ---------------------------------------------------------------------


async def test_shutdown_closes_every_subscriber_with_1001(
    nursery: trio.Nursery, tmp_path: Path, registry: Registry, project_dir: Path, server: Server
) -> None:
    add_project(registry, tmp_path, "other")
    with trio.fail_after(NETWORK_TIMEOUT):
        watchers = [await subscribe(nursery, server, name) for name in ("demo", "demo", "other")]
        for ws in watchers:
            await until_pong(ws)  # read everything, so each client answers the close at once
        assert server.manager.subscriber_count == 3
    with trio.fail_after(5):
        await server.shutdown(1001)
    with trio.fail_after(NETWORK_TIMEOUT):
        codes = [await close_code(ws) for ws in watchers]
        await wait_until(lambda: server.manager.poll.running == 0)
    assert codes == [1001, 1001, 1001]
    assert server.manager.subscriber_count == 0


async def test_shutdown_is_not_held_up_by_a_subscriber_that_reads_nothing(
    nursery: trio.Nursery, project_dir: Path, server: Server
) -> None:
    """trio-websocket's client cannot answer a close while its unread messages fill its queue."""
    with trio.fail_after(NETWORK_TIMEOUT):
        idle = await subscribe(nursery, server)  # its snapshot stays unread
        reading = await subscribe(nursery, server)
        await until_pong(reading)
    with trio.fail_after(5):
        await server.shutdown(1001)
    with trio.fail_after(NETWORK_TIMEOUT):
        codes = [await close_code(ws) for ws in (idle, reading)]
    assert codes == [1001, 1001]


class RawClient:
    """A websocket client driven by hand (wsproto), so the test decides when it answers a close."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self._text = ""

    @classmethod
    async def connect(cls, server: Server, target: str) -> RawClient:
        client = cls(await trio.open_tcp_stream("127.0.0.1", server.port))
        await client.send(Request(host=f"127.0.0.1:{server.port}", target=target))
        await client.next_event(AcceptConnection)
        return client

    async def send(self, event: wsproto.events.Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def next_event(self, *kinds: type[wsproto.events.Event]) -> wsproto.events.Event:
        """The next event of one of ``kinds``, skipping any other."""
        while True:
            for event in self.ws.events():
                if isinstance(event, kinds):
                    return event
            data = await self.stream.receive_some(65536)
            assert data, "server closed the TCP connection"
            self.ws.receive_data(data)

    async def text(self) -> Message:
        while True:
            event = await self.next_event(TextMessage)
            assert isinstance(event, TextMessage)
            self._text += event.data
            if event.message_finished:
                message: Message = json.loads(self._text)
                self._text = ""
                return message


async def test_shutdown_finishes_once_the_subscriber_answers_the_close(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    # A long poll interval: nothing runs on a timer while the test waits for quiet.
    server = await start_server(nursery, registry, poll_interval=60.0)
    done = trio.Event()

    async def shut_down() -> None:
        await server.shutdown(1001)
        done.set()

    with trio.fail_after(NETWORK_TIMEOUT):
        client = await RawClient.connect(server, "/ws/projects/demo?backlog=0")
        await client.send(TextMessage(data='{"type":"ping"}'))
        while (await client.text())["type"] != "pong":
            pass
        nursery.start_soon(shut_down)
        close = await client.next_event(CloseConnection)
        assert isinstance(close, CloseConnection) and close.code == 1001
        # The server has done all it can without the reply; a slow network, not a dead peer.
        await trio.testing.wait_all_tasks_blocked(0.05)
        with contextlib.suppress(trio.BrokenResourceError):
            await client.send(close.response())
    with trio.fail_after(1):  # the close bound is 2 s; answered, it takes a round trip
        await done.wait()
