"""The poll lease (`trio_ws.state.lease`) against a real ``redis-server``: one holder per
project, renewals keep it, release and expiry hand it over, and a node never touches
a lease another node took."""

from __future__ import annotations

from collections.abc import AsyncIterator

import coredis
import pytest
import trio
from redis_server import RedisServer
from services import free_port
from serving import NETWORK_TIMEOUT

from trio_ws.journal.redis import redis_client
from trio_ws.state.lease import LeaseError, PollLease, lease_key

TTL = 0.3


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[coredis.Redis[str]]:
    async with redis_client(redis_server.url) as connected:
        await connected.flushall()
        yield connected


async def test_only_one_node_holds_a_project_and_renewing_keeps_it(
    client: coredis.Redis[str],
) -> None:
    one, two = PollLease(client, TTL), PollLease(client, TTL)
    with trio.fail_after(NETWORK_TIMEOUT):
        assert await one.hold("demo")
        assert not await two.hold("demo")
        assert await two.hold("other")  # leases are per project
        for _ in range(4):  # renewed for longer than one ttl in all
            await trio.sleep(TTL / 2)
            assert await one.hold("demo")
            assert not await two.hold("demo")
        assert await client.get(lease_key("demo")) == one.node_id


async def test_release_hands_the_project_to_the_next_node_at_once(
    client: coredis.Redis[str],
) -> None:
    one, two = PollLease(client, 60), PollLease(client, 60)
    with trio.fail_after(NETWORK_TIMEOUT):
        assert await one.hold("demo")
        assert not await two.release("demo")  # not its lease: left alone
        assert not await two.hold("demo")
        assert await one.release("demo")
        assert await two.hold("demo")


async def test_a_lease_not_renewed_expires_and_another_node_takes_it(
    client: coredis.Redis[str],
) -> None:
    one, two = PollLease(client, TTL), PollLease(client, TTL)
    with trio.fail_after(NETWORK_TIMEOUT):
        assert await one.hold("demo")
        started = trio.current_time()
        for _ in range(100):
            if await two.hold("demo"):
                break
            await trio.sleep(TTL / 10)
        waited = trio.current_time() - started
    assert TTL * 0.8 <= waited <= TTL * 3
    assert not await one.hold("demo")


async def test_an_unreachable_redis_is_a_lease_error_not_a_false() -> None:
    async with redis_client(f"redis://127.0.0.1:{free_port()}/0") as unreachable:
        lease = PollLease(unreachable, TTL)
        with trio.fail_after(NETWORK_TIMEOUT), pytest.raises(LeaseError, match="cannot hold"):
            await lease.hold("demo")
