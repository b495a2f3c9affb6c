"""Which node polls a project's features database, when several share one Redis.

Every node that can see a project's directory could read it; one is enough. A
node reads a project only while it holds the lease ``tws:{P}:poll`` (its value:
the node's id), taken with ``SET NX PX`` and renewed by the holder before each
read. The expiry (a few poll intervals) is what hands the project over when the
holder dies without releasing it; a node that stops polling releases it at once.

Data layer: takes a coredis client, knows no hubs. Both scripts check the holder
inside Redis, so a node never renews or deletes a lease another node took over.
"""

from __future__ import annotations

import secrets
from typing import Final

import anyio
import coredis
from coredis.exceptions import RedisError

from trio_ws.journal.redis import KEY_PREFIX

_HOLD: Final = """
-- KEYS: the lease. ARGV: this node's id, the expiry in ms. 1 when this node holds it.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_RELEASE: Final = """
-- KEYS: the lease. ARGV: this node's id. Deletes it only if this node holds it.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LeaseError(Exception):
    """Redis could not be asked about a lease; ``str()`` says where and why."""


def lease_key(project: str, what: str = "poll") -> str:
    """The ``what`` lease of ``project`` (hash-tagged with the project, like its journal):
    ``poll`` (who reads its features database), ``notify`` (who delivers its alerts)."""
    return f"{KEY_PREFIX}:{{{project}}}:{what}"


def new_node_id() -> str:
    """A random id for one server process: what its leases hold."""
    return f"node-{secrets.token_hex(8)}"


class PollLease:
    """The poll leases of one node: ``hold`` before each read, ``release`` on stop."""

    def __init__(self, client: coredis.Redis[str], ttl: float, node_id: str | None = None) -> None:
        if ttl <= 0:
            raise ValueError("a lease needs a positive ttl")
        self.node_id = node_id or new_node_id()
        self.ttl_ms = max(1, round(ttl * 1000))
        self._where = f"poll lease at {client.connection_pool.location!r}"
        self._hold = client.register_script(_HOLD)
        self._release = client.register_script(_RELEASE)

    async def hold(self, project: str, what: str = "poll") -> bool:
        """Take or renew the ``what`` lease of ``project`` for ``ttl`` more seconds; False
        when another node holds it. LeaseError when Redis cannot be asked."""
        try:
            reply: object = await self._hold(
                keys=[lease_key(project, what)], args=[self.node_id, self.ttl_ms]
            )
        except (RedisError, OSError, anyio.ClosedResourceError, anyio.BrokenResourceError) as error:
            raise LeaseError(f"{self._where}: cannot hold {project!r}: {error}") from None
        return reply == 1

    async def release(self, project: str, what: str = "poll") -> bool:
        """Give the ``what`` lease of ``project`` up, if this node holds it; True when it
        did."""
        try:
            reply: object = await self._release(
                keys=[lease_key(project, what)], args=[self.node_id]
            )
        except (RedisError, OSError, anyio.ClosedResourceError, anyio.BrokenResourceError) as error:
            # Closed: the server is going down with its client; the lease expires by itself.
            raise LeaseError(f"{self._where}: cannot release {project!r}: {error}") from None
        return reply == 1
