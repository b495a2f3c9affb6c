"""The redis journal beyond the contract (tests/test_journal.py): epochs that follow
what Redis lost, idempotent appends, outages, and the live path between nodes.

Every test runs against a real ``redis-server``; tests that stop or restart it get
their own (``own_redis``), the others share the session's, flushed first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import coredis
import pytest
import trio
from redis_server import RedisServer
from services import free_port
from serving import NETWORK_TIMEOUT

from trio_ws.journal.interface import Batch, JournalConflictError, JournalError, JournalWriteError
from trio_ws.journal.redis import LiveBatch, RedisBackend, RedisJournal, redis_client

PROJECT = "demo"


def events(first: int, last: int) -> Batch:
    return Batch([(seq, f'{{"n":{seq}}}') for seq in range(first, last + 1)])


@pytest.fixture
def own_redis(redis_server: RedisServer, tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, free to be stopped and restarted."""
    server = RedisServer(redis_server.binary, tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[coredis.Redis[str]]:
    """A client of the session's server, flushed for this test."""
    async with redis_client(redis_server.url) as connected:
        await connected.flushall()
        yield connected


async def test_flushall_starts_a_new_epoch_and_stops_the_old_writer(
    client: coredis.Redis[str],
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        journal = RedisBackend(client).journal(PROJECT)
        first = await journal.open()
        await journal.append(events(1, 3))
        await client.flushall()
        with pytest.raises(JournalConflictError, match="meta is gone"):
            await journal.append(events(4, 4))
        await journal.close()
        again = await RedisBackend(client).journal(PROJECT).open()
    assert (again.new_epoch, again.head, again.oldest) == ("new", 0, 1)
    assert again.epoch != first.epoch


async def test_a_restart_without_data_starts_a_new_epoch(own_redis: RedisServer) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        async with redis_client(own_redis.url) as client:
            journal = RedisBackend(client).journal(PROJECT)
            first = await journal.open()
            await journal.append(events(1, 3))
            await journal.close()
            own_redis.stop()
            own_redis.start()
            again = await RedisBackend(client).journal(PROJECT).open()
    assert (again.new_epoch, again.head) == ("new", 0)
    assert again.epoch != first.epoch


async def test_a_restart_from_a_snapshot_rotates_the_epoch(own_redis: RedisServer) -> None:
    """Redis came back with its data but is another run: the snapshot may lack the
    newest appends, so their seqs must not be reused under the same epoch."""
    with trio.fail_after(NETWORK_TIMEOUT):
        async with redis_client(own_redis.url) as client:
            journal = RedisBackend(client).journal(PROJECT)
            first = await journal.open()
            await journal.append(Batch([(1, '"a"')], {"agent-1": 4}, {"agents": ["Spark"]}))
            await journal.close()
            await client.save()
            own_redis.stop()
            own_redis.start()
            assert await client.exists([f"tws:{{{PROJECT}}}:events"]) == 1  # the data came back
            again = await RedisBackend(client).journal(PROJECT).open()
            held = await client.exists([f"tws:{{{PROJECT}}}:events"])
    assert again.new_epoch == "broker_reset"
    assert again.epoch != first.epoch
    assert (again.head, again.oldest, again.pseqs, again.state, held) == (0, 1, {}, None, 0)


async def test_the_same_run_of_redis_continues_the_epoch(client: coredis.Redis[str]) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        journal = RedisBackend(client).journal(PROJECT)
        first = await journal.open()
        await journal.append(events(1, 2))
        await journal.close()
        again = await RedisBackend(client).journal(PROJECT).open()
    assert (again.epoch, again.new_epoch, again.head) == (first.epoch, None, 2)


async def test_a_retried_append_applies_once(client: coredis.Redis[str]) -> None:
    """Node B's reply to the same batch was lost (here: B never saw A's commit of it):
    sending it again changes nothing and moves B's head past it."""
    with trio.fail_after(NETWORK_TIMEOUT):
        backend = RedisBackend(client)
        a, b = backend.journal(PROJECT), backend.journal(PROJECT)
        await a.open()
        await b.open()
        batch = Batch([(1, '"x"'), (2, '"y"')], {"agent-1": 3}, {"n": 1})
        await a.append(batch)
        await b.append(batch)
        assert await client.xlen(f"tws:{{{PROJECT}}}:events") == 2
        assert (b.stats().head, b.stats().events_held, b.stats().bytes_held) == (2, 2, 6)
        await b.append(events(3, 3))
        assert await a.read_since(0, 10) == [(1, '"x"'), (2, '"y"'), (3, '{"n":3}')]


async def test_a_different_batch_on_a_stale_head_is_a_conflict(
    client: coredis.Redis[str],
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        backend = RedisBackend(client)
        a, b = backend.journal(PROJECT), backend.journal(PROJECT)
        await a.open()
        await b.open()
        await a.append(events(1, 2))
        with pytest.raises(JournalConflictError, match="head is 2 where 0 was expected"):
            await b.append(Batch([(1, '"other"')]))
        assert await a.read_since(0, 10) == [(1, '{"n":1}'), (2, '{"n":2}')]


async def test_pseqs_only_grow(client: coredis.Redis[str]) -> None:
    """A late pseq from another node never lowers the stored one."""
    with trio.fail_after(NETWORK_TIMEOUT):
        backend = RedisBackend(client)
        journal = backend.journal(PROJECT)
        await journal.open()
        await journal.append(Batch([], {"agent-1": 9}))
        await journal.append(Batch([], {"agent-1": 5, "dev-1": 1}))
        await journal.close()
        again = await backend.journal(PROJECT).open()
    assert again.pseqs == {"agent-1": 9, "dev-1": 1}


async def test_redis_down_fails_appends_until_it_is_back(own_redis: RedisServer) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        async with redis_client(own_redis.url) as client:
            journal = RedisBackend(client).journal(PROJECT)
            await journal.open()
            await journal.append(events(1, 1))
            await client.save()
            own_redis.stop()
            with pytest.raises(JournalWriteError, match=f"127.0.0.1:{own_redis.port}"):
                await journal.append(events(2, 2))
            assert journal.stats().write_errors == 1
            own_redis.start()
            await journal.append(events(2, 2))
            assert await journal.read_since(0, 10) == [(1, '{"n":1}'), (2, '{"n":2}')]
    assert journal.stats().head == 2


async def test_open_without_redis_names_it_but_not_its_password() -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    with trio.fail_after(NETWORK_TIMEOUT):
        async with redis_client(url) as client:
            with pytest.raises(JournalError, match="cannot open") as raised:
                await RedisBackend(client).journal(PROJECT).open()
    assert "127.0.0.1" in str(raised.value)
    assert "s3cret" not in str(raised.value)


async def collect(
    journal: RedisJournal, count: int, out: list[LiveBatch], ready: trio.Event
) -> None:
    async with journal.live() as batches:
        ready.set()
        async for batch in batches:
            out.append(batch)
            if len(out) == count:
                return


async def test_appends_of_one_node_reach_another_live_in_order(redis_server: RedisServer) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        async with redis_client(redis_server.url) as one, redis_client(redis_server.url) as two:
            await one.flushall()
            writer = RedisBackend(one).journal(PROJECT)
            reader = RedisBackend(two).journal(PROJECT)
            state = await writer.open()
            await reader.open()
            seen: list[LiveBatch] = []
            ready = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect, reader, 20, seen, ready)
                await ready.wait()
                for first in range(1, 60, 3):
                    await writer.append(events(first, first + 2))
    assert [batch.epoch for batch in seen] == [state.epoch] * 20
    assert [(batch.first, batch.last) for batch in seen] == [(n, n + 2) for n in range(1, 60, 3)]
    assert seen[0].texts == ('{"n":1}', '{"n":2}', '{"n":3}')


async def test_live_ends_with_an_error_when_redis_goes_away(own_redis: RedisServer) -> None:
    """No silent reconnect: the follower must read the stream again after one."""
    with trio.fail_after(NETWORK_TIMEOUT):
        async with redis_client(own_redis.url) as client:
            journal = RedisBackend(client).journal(PROJECT)
            await journal.open()
            with pytest.raises(JournalError, match="live subscription"):
                async with journal.live() as batches:
                    own_redis.stop()
                    async for _ in batches:
                        pass


async def test_head_tells_the_stored_epoch_and_seq(client: coredis.Redis[str]) -> None:
    """What a follower compares itself with after a reconnect: another node's appends
    move it, a flush removes it."""
    with trio.fail_after(NETWORK_TIMEOUT):
        backend = RedisBackend(client)
        writer, follower = backend.journal(PROJECT), backend.journal(PROJECT)
        state = await writer.open()
        await follower.open()
        await writer.append(events(1, 4))
        assert await follower.head() == (state.epoch, 4)
        await client.flushall()
        assert await follower.head() is None


async def test_an_append_replaces_only_the_state_keys_it_carries(
    client: coredis.Redis[str],
) -> None:
    """Node A writes the agent trackers, node B the dev trackers: neither erases the
    other's, and a third node reads both back."""
    with trio.fail_after(NETWORK_TIMEOUT):
        backend = RedisBackend(client)
        a, b = backend.journal(PROJECT), backend.journal(PROJECT)
        await a.open()
        await b.open()
        await a.append(Batch([(1, '"a"')], {"agent:a": 1}, {"agent": {"next": 3}, "snap": 1}))
        b.seen(1)
        await b.append(Batch([(2, '"b"')], {"dev:b": 4}, {"dev": {"url": "x"}, "snap": 2}))
        pseqs, state = await backend.journal(PROJECT).stored()
        again = await backend.journal(PROJECT).open()
    assert pseqs == {"agent:a": 1, "dev:b": 4}
    assert state == {"agent": {"next": 3}, "dev": {"url": "x"}, "snap": 2}
    assert again.state == state


async def test_head_is_none_once_another_run_of_redis_holds_the_meta(
    own_redis: RedisServer,
) -> None:
    """Restarted from its snapshot, Redis still holds the epoch, but maybe not its
    newest appends: a follower must start again rather than continue it."""
    with trio.fail_after(NETWORK_TIMEOUT):
        async with redis_client(own_redis.url) as client:
            journal = RedisBackend(client).journal(PROJECT)
            state = await journal.open()
            await journal.append(events(1, 2))
            assert await journal.head() == (state.epoch, 2)
            await client.save()
            own_redis.stop()
            own_redis.start()
            assert await client.exists([f"tws:{{{PROJECT}}}:meta"]) == 1
            assert await journal.head() is None


async def test_check_names_an_unreachable_broker() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with trio.fail_after(NETWORK_TIMEOUT):
        async with redis_client(url) as client:
            with pytest.raises(JournalError, match="cannot reach the broker at"):
                await RedisBackend(client).check()


async def test_remove_refuses_while_any_node_holds_the_project(
    client: coredis.Redis[str],
) -> None:
    """Each node's hold is its own: one node closing the project leaves the other's
    standing, so `projects remove` cannot delete a history another node still writes."""
    await client.flushall()
    backend = RedisBackend(client)
    first, second = backend.journal("demo"), backend.journal("demo")
    with trio.fail_after(NETWORK_TIMEOUT):
        await first.open()
        await second.open()
        await first.append(events(1, 2))
        await first.close()
        with pytest.raises(JournalError, match="open on a running trio-ws server"):
            await backend.remove("demo")
        await second.close()
        assert await backend.remove("demo")
