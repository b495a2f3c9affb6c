"""The ``redis`` journal backend (``--broker redis://HOST:PORT/DB``): several nodes share
a project's history through Redis (STATE.md 5).

Keys per project, with the hash tag ``{P}`` so they share one cluster slot:

- ``tws:{P}:meta``: hash with ``epoch``, ``head``, ``oldest`` (the live history's
  oldest seq: the stream before it is the archive), ``bytes`` (event text of the live
  history), ``abytes`` (of the whole stream),
  ``run_id`` (of the Redis server that holds it), ``s:<key>`` (each top-level key of
  the snapshot state, as JSON: an append replaces only the keys it carries, so two
  nodes that each write their own stream's tracker state never overwrite each other)
  and ``p:<producer id>`` (highest applied pseq) fields;
- ``tws:{P}:events``: stream, entry ID ``<seq>-0``, field ``t`` = the event's JSON text:
  the live history and the archive before it (``--archive-bytes``, 256 MiB by default:
  Redis holds it in memory; the oldest whole runs go first);
- ``tws:{P}:runs``: sorted set of closed run summaries (JSON) by first seq;
- ``tws:{P}:checkpoints``: sorted set of ``<seq>\n<stamp>\n<state JSON>`` by seq;
- ``tws:{P}:producers``: sorted set of producer keys by when each was last written
  (the meta's ``pclock``); each group keeps its MAX_PRODUCERS newest, counted in the
  meta's ``n:<group>`` fields, and the older ones lose their ``p:`` field with it;
- ``tws:{P}:live``: pub/sub channel; every append publishes its batch as JSON
  ``{"epoch": ..., "first": seq, "texts": [...]}``.

An append is one Lua script, so it is atomic, and it is idempotent: a batch that
was already applied (same seqs, same texts) is a no-op, so an append whose reply
was lost can be sent again. That makes the client's single retry on a lost
connection safe (it is what keeps the first command after a Redis restart, sent on a
pooled connection that died, from failing); coredis's default retries (twice, on
timeouts too) are off, and the live subscription never reconnects by itself: a
follower must see every reconnect, to read the stream again.

The backend shares one coredis client between the journals of every project; it
must be entered (``async with``) in a task that outlives them all, as coredis runs
its connections in a task group of that task (``open_redis_backend``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, cast

import anyio
import coredis
from coredis.exceptions import ConnectionError as ConnectionLost
from coredis.exceptions import RedisError
from coredis.retry import ConstantRetryPolicy, NoRetryPolicy
from coredis.tokens import PureToken

from trio_ws.journal.interface import (
    DEFAULT_ARCHIVE_BYTES,
    DEFAULT_HISTORY,
    DEFAULT_HISTORY_BYTES,
    MAX_PRODUCERS,
    TRIM_SLACK,
    ArchiveLimits,
    ArchiveStats,
    Batch,
    Checkpoint,
    Commits,
    JournalConflictError,
    JournalError,
    JournalState,
    JournalStats,
    JournalWriteError,
    JsonObject,
    NewEpochReason,
    archive_cut,
    check_batch,
    check_limits,
    check_project,
    new_epoch,
)

BACKEND: Final = "redis"
KEY_PREFIX: Final = "tws"
TIMEOUT: Final = 5.0
"""Seconds a command (or a connection attempt) may take before it counts as failed:
a hung Redis fails appends instead of stalling the writer task for good."""
TEXT_FIELD: Final = "t"
PSEQ_PREFIX: Final = "p:"
STATE_PREFIX: Final = "s:"
SEARCH_CHUNK: Final = 1000
"""Entries read per call by a search or an archive cut."""

log = logging.getLogger("trio_ws.journal.redis")

_OPEN: Final = """
-- KEYS: meta, events. ARGV: a fresh epoch, the server's run_id.
local meta, events, producers = KEYS[1], KEYS[2], KEYS[3]
local epoch = redis.call('HGET', meta, 'epoch')
local reason = ''
if not epoch then
  reason = 'new'
elseif redis.call('HGET', meta, 'run_id') ~= ARGV[2] then
  reason = 'broker_reset'
end
if reason ~= '' then
  redis.call('DEL', meta, events, producers, KEYS[4], KEYS[5])
  redis.call('HSET', meta, 'epoch', ARGV[1], 'head', '0', 'bytes', '0', 'run_id', ARGV[2])
end
local first = redis.call('XRANGE', events, '-', '+', 'COUNT', 1)
local oldest = ''
if #first > 0 then oldest = first[1][1] end
return {reason, redis.call('HGETALL', meta), redis.call('XLEN', events), oldest,
        redis.call('ZRANGE', producers, 0, -1), redis.call('ZCARD', KEYS[4]),
        redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')}
"""

_APPEND: Final = """
-- KEYS: meta, events, live, producers (sorted set: producer key by when last written),
--       runs, checkpoints.
-- ARGV: epoch, history, history_bytes, most producers per group,
--       n state keys,
--       n x (state key, JSON), n producers, n x (producer id, pseq),
--       n runs, n x (first seq, summary), n checkpoints, n x (seq, member),
--       first seq, the texts.
local meta, events, live, written = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local runs, checkpoints = KEYS[5], KEYS[6]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  return {'conflict', 'its meta is gone (Redis flushed, restarted without its data or evicted)'}
end
if epoch ~= ARGV[1] then
  return {'conflict', 'epoch ' .. epoch .. ' replaced epoch ' .. ARGV[1]}
end
local history, history_bytes = tonumber(ARGV[2]), tonumber(ARGV[3])
local max_producers = tonumber(ARGV[4])
local states = tonumber(ARGV[5])
local pat = 6 + 2 * states
local producers = tonumber(ARGV[pat])
local rat = pat + 1 + 2 * producers
local nruns = tonumber(ARGV[rat])
local cat = rat + 1 + 2 * nruns
local npoints = tonumber(ARGV[cat])
local at = cat + 1 + 2 * npoints
local first = tonumber(ARGV[at])
local count = #ARGV - at
local head = tonumber(redis.call('HGET', meta, 'head'))
local size = tonumber(redis.call('HGET', meta, 'bytes'))
local abytes = tonumber(redis.call('HGET', meta, 'abytes') or size)

local function oldest_id()
  local oldest = redis.call('XRANGE', events, '-', '+', 'COUNT', 1)
  if #oldest > 0 then return oldest[1][1] end
  return ''
end
-- The live history's oldest seq; a journal older than the archive has none stored:
-- its whole stream is the live history.
local live_oldest = tonumber(redis.call('HGET', meta, 'oldest') or '')
if not live_oldest then
  local found = oldest_id()
  if found == '' then live_oldest = head + 1
  else live_oldest = tonumber(string.match(found, '^(%d+)')) end
end

local function done(status, last)
  return {status, string.format('%d', last), oldest_id(), head - live_oldest + 1,
          string.format('%d', size), string.format('%d', live_oldest),
          string.format('%d', abytes), redis.call('ZCARD', runs),
          redis.call('ZRANGE', runs, 0, 0, 'WITHSCORES')}
end

local function holds(seq, text)
  local id = string.format('%d-0', seq)
  local found = redis.call('XRANGE', events, id, id)
  return #found == 1 and found[1][2][2] == text
end

if count > 0 and first ~= head + 1 then
  local last = first + count - 1
  if last <= head and holds(first, ARGV[at + 1]) and holds(last, ARGV[#ARGV]) then
    return done('applied', last)
  end
  return {'conflict', string.format('its head is %d where %d was expected', head, first - 1)}
end

if count > 0 then
  local texts = {}
  for i = 1, count do
    local text = ARGV[at + i]
    redis.call('XADD', events, string.format('%d-0', first + i - 1), 't', text)
    size = size + #text
    abytes = abytes + #text
    texts[i] = text
  end
  head = first + count - 1
  redis.call('HSET', meta, 'head', string.format('%d', head), 'bytes', string.format('%d', size),
             'abytes', string.format('%d', abytes), 'oldest', string.format('%d', live_oldest))
  redis.call('PUBLISH', live, cjson.encode({epoch = epoch, first = first, texts = texts}))
end
local grown = {}
if producers > 0 then
  local clock = redis.call('HINCRBY', meta, 'pclock', 1)
  for i = 0, producers - 1 do
    local key = ARGV[pat + 1 + 2 * i]
    local field = 'p:' .. key
    local pseq = tonumber(ARGV[pat + 2 + 2 * i])
    local stored = tonumber(redis.call('HGET', meta, field))
    if not stored or pseq > stored then
      redis.call('HSET', meta, field, ARGV[pat + 2 + 2 * i])
    end
    if redis.call('ZADD', written, clock, key) == 1 then
      local group = string.match(key, '^([^:]*)')
      grown[group] = redis.call('HINCRBY', meta, 'n:' .. group, 1)
    end
  end
end
-- Each group keeps its max_producers most recently written producers: the oldest of
-- a group that grew beyond it go, from the front of the set, where they are.
for group, count in pairs(grown) do
  local excess = count - max_producers
  local cursor = 0
  while excess > 0 do
    local chunk = redis.call('ZRANGE', written, cursor, cursor + 63)
    if #chunk == 0 then break end
    for _, key in ipairs(chunk) do
      if excess > 0 and string.match(key, '^([^:]*)') == group then
        redis.call('ZREM', written, key)
        redis.call('HDEL', meta, 'p:' .. key)
        redis.call('HINCRBY', meta, 'n:' .. group, -1)
        excess = excess - 1
      else
        cursor = cursor + 1
      end
    end
  end
end
for i = 0, states - 1 do
  redis.call('HSET', meta, 's:' .. ARGV[6 + 2 * i], ARGV[7 + 2 * i])
end
for i = 0, nruns - 1 do
  redis.call('ZADD', runs, tonumber(ARGV[rat + 1 + 2 * i]), ARGV[rat + 2 + 2 * i])
end
for i = 0, npoints - 1 do
  redis.call('ZADD', checkpoints, tonumber(ARGV[cat + 1 + 2 * i]), ARGV[cat + 2 + 2 * i])
end

local held = head - live_oldest + 1
local over = held > history + math.floor(history / TRIM_SLACK)
  or size > history_bytes + math.floor(history_bytes / TRIM_SLACK)
if held > 0 and over then
  -- journal.trim_point: walking from the oldest,: drop while over a limit, never the
  -- newest; reads only what it drops (about a tenth of the history), not all of it.
  -- The stream keeps it (the archive): only the live history's oldest seq moves.
  local cut, cursor, finished = nil, string.format('%d-0', live_oldest), false
  while not finished do
    local chunk = redis.call('XRANGE', events, cursor, '+', 'COUNT', 256)
    if #chunk == 0 then break end
    for _, entry in ipairs(chunk) do
      if held <= 1 or (held <= history and size <= history_bytes) then
        finished = true
        break
      end
      held = held - 1
      size = size - #entry[2][2]
      cut = entry[1]
    end
    cursor = '(' .. chunk[#chunk][1]
  end
  if cut then
    live_oldest = tonumber(string.match(cut, '^(%d+)')) + 1
    redis.call('HSET', meta, 'bytes', string.format('%d', size),
               'oldest', string.format('%d', live_oldest))
  end
end
return done('ok', head)
""".replace("TRIM_SLACK", str(TRIM_SLACK))


_CUT: Final = """
-- KEYS: meta, events, runs, checkpoints. ARGV: the archive's new oldest seq (never past
-- the live history's), the first seq of the oldest run kept. Drops the stream and the
-- checkpoints before the first, the runs that start before the second; the archive's
-- bytes shrink by what went.
local meta, events, runs, checkpoints = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local cut, runs_from = tonumber(ARGV[1]), tonumber(ARGV[2])
local live_oldest = tonumber(redis.call('HGET', meta, 'oldest') or '0')
if cut > live_oldest then cut = live_oldest end
local freed, cursor = 0, '-'
while true do
  local chunk = redis.call('XRANGE', events, cursor, string.format('%d-0', cut - 1), 'COUNT', 256)
  if #chunk == 0 then break end
  for _, entry in ipairs(chunk) do freed = freed + #entry[2][2] end
  cursor = '(' .. chunk[#chunk][1]
end
redis.call('XTRIM', events, 'MINID', string.format('%d-0', cut))
if freed > 0 then redis.call('HINCRBY', meta, 'abytes', string.format('%d', -freed)) end
redis.call('ZREMRANGEBYSCORE', runs, '-inf', '(' .. runs_from)
redis.call('ZREMRANGEBYSCORE', checkpoints, '-inf', '(' .. cut)
return freed
"""


@dataclass(frozen=True, slots=True)
class LiveBatch:
    """One committed append as every node sees it on ``live``: events ``first`` ..
    ``first + len(texts) - 1`` of ``epoch``."""

    epoch: str
    first: int
    texts: tuple[str, ...]

    @property
    def last(self) -> int:
        return self.first + len(self.texts) - 1


def redis_client(url: str) -> coredis.Redis[str]:
    """A client for journals: text replies, bounded waits, and one retry when a
    connection was lost (a pooled connection to a Redis that restarted; every command
    of this module may run twice). Enter it with ``async with`` before use."""
    return coredis.Redis.from_url(
        url,
        decode_responses=True,
        retry_policy=ConstantRetryPolicy((ConnectionLost,), retries=1, delay=0),
        stream_timeout=TIMEOUT,
        connect_timeout=TIMEOUT,
    )


def _seq(entry_id: str) -> int:
    """The seq of a stream entry ID ``<seq>-0``."""
    return int(entry_id.partition("-")[0])


def _stored(
    meta: dict[str, str], written: Sequence[str] = ()
) -> tuple[dict[str, int], JsonObject | None]:
    """The producers' pseqs (least recently written first, in the order of ``written``;
    any not in it first) and the snapshot state (None if none) of a meta hash."""
    found = {
        key.removeprefix(PSEQ_PREFIX): int(value)
        for key, value in meta.items()
        if key.startswith(PSEQ_PREFIX)
    }
    rank = {key: index for index, key in enumerate(written)}
    pseqs = dict(sorted(found.items(), key=lambda item: rank.get(item[0], -1)))
    state = {
        key.removeprefix(STATE_PREFIX): json.loads(value)
        for key, value in meta.items()
        if key.startswith(STATE_PREFIX)
    }
    return pseqs, state or None


def _keys(project: str) -> tuple[str, str, str, str]:
    """The meta, events, live and producers keys of ``project``."""
    tag = f"{KEY_PREFIX}:{{{project}}}"
    return f"{tag}:meta", f"{tag}:events", f"{tag}:live", f"{tag}:producers"


def _archive_keys(project: str) -> tuple[str, str]:
    """The runs and checkpoints keys of ``project``."""
    tag = f"{KEY_PREFIX}:{{{project}}}"
    return f"{tag}:runs", f"{tag}:checkpoints"


def _control_channel(project: str) -> str:
    """Where control actions for ``project``'s agent producer go between nodes."""
    return f"{KEY_PREFIX}:{{{project}}}:control"


def _holders_key(project: str) -> str:
    """The nodes that have ``project`` open, each with when its claim expires (a sorted
    set: one member per node, so one node closing leaves the others' claims standing):
    `RedisBackend.remove` refuses while any stands."""
    return f"{KEY_PREFIX}:{{{project}}}:holders"


_HOLD: Final = """
-- KEYS[1] holders; ARGV[1] this node's member, ARGV[2] ttl in ms. Redis's own clock,
-- so the nodes' clocks need not agree.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""

_HOLDER: Final = """
-- KEYS[1] holders: one node whose claim still stands, or false.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local found = redis.call('ZRANGE', KEYS[1], 0, 0)
return found[1] or false
"""


_UNREACHABLE: Final = (RedisError, OSError, anyio.ClosedResourceError, anyio.BrokenResourceError)
"""What a call to Redis raises when it cannot be made (its client may be closing)."""

HOLD_TTL: Final = 3.0
"""How long a node's claim that it has a project open lasts unless renewed (each second
while it follows the project)."""


class RedisJournal:
    """One project's journal in Redis, shared with every node that opens the same project."""

    def __init__(
        self,
        client: coredis.Redis[str],
        project: str,
        *,
        history: int = DEFAULT_HISTORY,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
        max_producers: int = MAX_PRODUCERS,
        archive: ArchiveLimits | None = None,
    ) -> None:
        check_limits(history, history_bytes, max_producers)
        self._max_producers = max_producers
        self._client = client
        self._project = check_project(project)
        self._archive = archive or ArchiveLimits(DEFAULT_ARCHIVE_BYTES[BACKEND])
        self._runs_key, self._checkpoints_key = _archive_keys(project)
        self._cut_script = client.register_script(_CUT)
        self._stored_bytes = 0
        self._archived = 1
        self._run_count = 0
        self._oldest_run: int | None = None
        self._where = f"redis journal of {project!r} at {client.connection_pool.location!r}"
        self._meta, self._events, self._live, self._producers = _keys(project)
        self._history = history
        self._history_bytes = history_bytes
        self._open_script = client.register_script(_OPEN)
        self._append_script = client.register_script(_APPEND)
        self._hold_script = client.register_script(_HOLD)
        self._holder = f"{socket.gethostname()} pid {os.getpid()} #{secrets.token_hex(4)}"
        """This node's member among the project's holders (unique per open journal)."""
        self._epoch: str | None = None
        self._head = 0
        self._oldest = 1
        self._held = 0
        self._size = 0
        self._commits = Commits()

    @property
    def project(self) -> str:
        return self._project

    async def open(self) -> JournalState:
        """Continue the stored epoch, or start a new one when the meta hash is missing
        (``new``) or Redis is not the server that wrote it (``broker_reset``: a restart
        from a snapshot may lack the newest appends, so their seqs would be reused)."""
        if self._epoch is not None:
            raise JournalError(f"{self._where} is already open")
        try:
            info = await self._client.info("server")
            run_id = str(info["run_id"])
            reply: object = await self._open_script(
                keys=[
                    self._meta,
                    self._events,
                    self._producers,
                    self._runs_key,
                    self._checkpoints_key,
                ],
                args=[new_epoch(), run_id],
            )
        except (RedisError, OSError) as error:
            raise JournalError(f"{self._where}: cannot open: {error}") from None
        reason_text, flat, _, oldest, written, run_count, first_run = cast(list[object], reply)
        fields = cast(list[str], flat)
        meta = dict(zip(fields[::2], fields[1::2], strict=True))
        reason = cast(NewEpochReason, reason_text) if reason_text else None
        self._epoch = meta["epoch"]
        self._head = int(meta["head"])
        self._size = int(meta["bytes"])
        self._stored_bytes = int(meta.get("abytes", meta["bytes"]))
        self._archived = _seq(str(oldest)) if oldest else self._head + 1
        self._oldest = int(meta.get("oldest", self._archived))
        self._held = self._head - self._oldest + 1
        self._runs_seen(run_count, first_run)
        pseqs, state = _stored(meta, cast(list[str], written))
        await self.hold()  # renewed while the project is followed, dropped by close
        return JournalState(self._epoch, self._head, self._oldest, pseqs, state, reason)

    async def reopen(self) -> JournalState:
        """``open`` again on what Redis holds now (another epoch began, the meta went,
        or this node fell behind the trimmed stream); unchanged when Redis is out of
        reach."""
        epoch = self._epoch_open()
        self._epoch = None
        try:
            return await self.open()
        except JournalError:
            self._epoch = epoch
            raise

    async def append(self, batch: Batch) -> None:
        """Commit ``batch``; JournalWriteError if Redis could not be reached (the same
        batch may be sent again: one already applied is not applied twice),
        JournalConflictError if the stored history moved on without this journal."""
        epoch = self._epoch_open()
        check_batch(batch, self._head)
        await self._run_append(epoch, batch)

    async def read_since(self, seq: int, limit: int) -> list[tuple[int, str]]:
        # The stream before the live history is the archive's: not for a catch-up.
        return await self.read_range(max(seq, self._oldest - 1), 0, limit)

    async def read_range(self, after: int, last: int, limit: int) -> list[tuple[int, str]]:
        """``last`` 0: to the end of the stream (other nodes may have appended)."""
        self._epoch_open()
        if limit <= 0:
            return []
        try:
            entries = await self._client.xrange(
                self._events, f"{max(after, 0) + 1}-0", f"{last}-0" if last else "+", count=limit
            )
        except (RedisError, OSError) as error:
            raise JournalError(f"{self._where}: cannot read: {error}") from None
        return [
            (_seq(str(entry.identifier)), str(entry.field_values[TEXT_FIELD])) for entry in entries
        ]

    async def search(
        self, after: int, last: int, needle: str, limit: int, seconds: float
    ) -> tuple[list[tuple[int, str]], int]:
        """Read a chunk at a time and match here: Redis has no text search of its own."""
        found: list[tuple[int, str]] = []
        deadline = time.monotonic() + seconds
        seq = after
        while seq < last:
            chunk = await self.read_range(seq, last, SEARCH_CHUNK)
            if not chunk:
                break
            for number, text in chunk:
                if needle in text.lower():
                    found.append((number, text))
                    if len(found) == limit:
                        return found, number
            seq = chunk[-1][0]
            if time.monotonic() > deadline:
                return found, seq
        return found, last

    async def runs(self, before: int | None, limit: int) -> list[str]:
        self._epoch_open()
        try:
            found = await self._client.zrange(
                self._runs_key,
                "+inf" if before is None else f"({before}",
                "-inf",
                sortby=PureToken.BYSCORE,
                rev=True,
                offset=0,
                count=limit,
            )
        except (RedisError, OSError) as error:
            raise JournalError(f"{self._where}: cannot read: {error}") from None
        return [str(text) for text in found]

    async def checkpoint(self, seq: int, stamp: str | None = None) -> Checkpoint | None:
        self._epoch_open()
        top = seq
        while top >= 0:
            try:
                found = await self._client.zrange(
                    self._checkpoints_key,
                    top,
                    "-inf",
                    sortby=PureToken.BYSCORE,
                    rev=True,
                    offset=0,
                    count=16,
                )
            except (RedisError, OSError) as error:
                raise JournalError(f"{self._where}: cannot read: {error}") from None
            for member in found:
                number, found_stamp, text = str(member).split("\n", 2)
                point = Checkpoint(int(number), found_stamp or None, text)
                if point.seq < self._archived:
                    return None
                if stamp is None or (point.stamp or "") <= stamp:
                    return point
                top = point.seq - 1
            if len(found) < 16:
                return None
        return None

    async def close(self, *, clean: bool = True) -> None:
        """Forget the epoch and drop this node's hold; Redis needs no clean-stop mark (its
        ``run_id`` tells a restart)."""
        self._epoch_open()
        self._epoch = None
        # Best effort by design: a hold that cannot be dropped now (Redis is away at
        # shutdown) expires by itself within HOLD_TTL, which is what it is for.
        with contextlib.suppress(*_UNREACHABLE):
            await self._client.zrem(_holders_key(self._project), [self._holder])

    def retain(self, archive: ArchiveLimits) -> None:
        self._archive = archive

    def stats(self) -> JournalStats:
        archive = ArchiveStats(
            oldest=self._archived,
            events=self._head - self._archived + 1,
            bytes=self._stored_bytes,
            runs=self._run_count,
            oldest_run=self._oldest_run,
        )
        return self._commits.stats(
            BACKEND, self._head, self._oldest, self._held, self._size, archive
        )

    def _runs_seen(self, count: object, first: object) -> None:
        """The runs count and the oldest run (``[member, score]`` or empty) a script saw."""
        self._run_count = int(cast(int, count))
        pair = cast(list[object], first)
        self._oldest_run = int(float(cast(str, pair[1]))) if pair else None

    async def hold(self) -> None:
        """Say (for `HOLD_TTL`) that this node has the project open; JournalError when
        Redis cannot be written."""
        try:
            await self._hold_script(
                keys=[_holders_key(self._project)], args=[self._holder, int(HOLD_TTL * 1000)]
            )
        except _UNREACHABLE as error:
            raise JournalError(f"{self._where}: cannot write: {error}") from None

    async def head(self) -> tuple[str, int] | None:
        """The stored epoch and head seq now: where a node that follows ``live``
        compares itself after a reconnect. None when the history must start again:
        the meta hash is gone, or another run of Redis holds it (restarted from a
        snapshot that may lack the newest appends); ``open`` then starts a new epoch."""
        try:
            info = await self._client.info("server")
            epoch, head, run_id = await self._client.hmget(self._meta, ["epoch", "head", "run_id"])
        except (RedisError, OSError) as error:
            raise JournalError(f"{self._where}: cannot read: {error}") from None
        if epoch is None or head is None or run_id != str(info["run_id"]):
            return None
        return epoch, int(head)

    def seen(self, head: int) -> None:
        """This node has applied every event up to ``head`` that other nodes appended:
        its next append starts after it."""
        self._epoch_open()
        self._head = max(self._head, head)

    async def stored(self) -> tuple[dict[str, int], JsonObject | None]:
        """The producers' pseqs and the snapshot state stored now, whichever node wrote
        them: what a node loads when a producer moves to it from another node."""
        try:
            meta = await self._client.hgetall(self._meta)
        except (RedisError, OSError) as error:
            raise JournalError(f"{self._where}: cannot read: {error}") from None
        return _stored({str(key): str(value) for key, value in meta.items()})

    @asynccontextmanager
    async def live(self) -> AsyncIterator[AsyncIterator[LiveBatch]]:
        """Subscribe to the project's committed appends, every node's (this one's too).

        The rule for a node that follows a project (STATE.md 5): enter this first, then
        read the stream (``read_since``) from the last seq it has, then apply the live
        batches in order, skipping those it already read. On a gap (a batch's ``first``
        is not its head + 1), an epoch change, or when the iterator ends with a
        JournalError (the pub/sub connection was lost; nothing reconnects silently),
        enter ``live`` again and read the stream again.
        """
        pubsub = self._client.pubsub(ignore_subscribe_messages=True, retry_policy=NoRetryPolicy())
        try:
            async with pubsub:
                await pubsub.subscribe(self._live)
                yield self._batches(pubsub)
        except* (RedisError, OSError, anyio.ClosedResourceError) as group:
            # ClosedResourceError: coredis unsubscribing on a connection already gone.
            raise JournalError(
                f"{self._where}: live subscription lost: {group.exceptions[0]}"
            ) from None

    async def send_control(self, action: str) -> int:
        """Hand ``action`` to the node that holds the agent producer (it listens while it
        does); how many nodes took it. JournalError when Redis cannot be reached."""
        try:
            return int(await self._client.publish(_control_channel(self._project), action))
        except _UNREACHABLE as error:
            raise JournalError(f"{self._where}: cannot send a control action: {error}") from None

    @asynccontextmanager
    async def control_requests(self) -> AsyncIterator[AsyncIterator[str]]:
        """While entered, the actions other nodes send to this node's agent producer;
        JournalError when the subscription is lost (the caller enters it again)."""
        pubsub = self._client.pubsub(ignore_subscribe_messages=True, retry_policy=NoRetryPolicy())
        try:
            async with pubsub:
                await pubsub.subscribe(_control_channel(self._project))
                yield self._actions(pubsub)
        except* (RedisError, OSError, anyio.ClosedResourceError) as group:
            raise JournalError(
                f"{self._where}: control subscription lost: {group.exceptions[0]}"
            ) from None

    async def _actions(self, pubsub: coredis.patterns.pubsub.PubSub[str]) -> AsyncIterator[str]:
        async for message in pubsub:
            if message["type"] == "message":
                yield str(message["data"])
        raise JournalError(f"{self._where}: control subscription ended")

    async def _batches(
        self, pubsub: coredis.patterns.pubsub.PubSub[str]
    ) -> AsyncIterator[LiveBatch]:
        async for message in pubsub:
            if message["type"] != "message":
                continue
            data = json.loads(str(message["data"]))
            # cjson encodes an empty Lua table as an object; appends publish only events.
            yield LiveBatch(str(data["epoch"]), int(data["first"]), tuple(data["texts"]))
        raise JournalError(f"{self._where}: live subscription ended")

    def _epoch_open(self) -> str:
        if self._epoch is None:
            raise JournalError(f"{self._where} is not open")
        return self._epoch

    async def _run_append(self, epoch: str, batch: Batch) -> None:
        state = batch.state or {}
        args: list[str | int] = [
            epoch,
            self._history,
            self._history_bytes,
            self._max_producers,
            len(state),
        ]
        for key, value in state.items():
            args += [key, json.dumps(value, separators=(",", ":"))]
        args.append(len(batch.pseqs))
        for producer, pseq in batch.pseqs.items():
            args += [producer, pseq]
        args.append(len(batch.runs))
        for run in batch.runs:
            args += [run.first, run.text]
        args.append(len(batch.checkpoints))
        for point in batch.checkpoints:
            args += [point.seq, f"{point.seq}\n{point.stamp or ''}\n{point.text}"]
        args.append(batch.events[0][0] if batch.events else self._head + 1)
        args += [text for _, text in batch.events]
        start = time.perf_counter()
        try:
            reply = cast(
                Sequence[object],
                await self._append_script(
                    keys=[
                        self._meta,
                        self._events,
                        self._live,
                        self._producers,
                        self._runs_key,
                        self._checkpoints_key,
                    ],
                    args=args,
                ),
            )
        except (RedisError, OSError) as error:
            self._commits.write_errors += 1
            raise JournalWriteError(f"{self._where}: cannot write: {error}") from None
        status = reply[0]
        if status == "conflict":
            raise JournalConflictError(f"{self._where}: {reply[1]}; open it again")
        self._commits.record(time.perf_counter() - start)
        # "applied": this batch was committed before (its reply was lost); the head is
        # its last seq, what follows it in the stream belongs to whoever appended it.
        head, archived, held, size, oldest, stored, run_count, first_run = reply[1:]
        self._head = int(cast(str, head))
        self._held = int(cast(int, held))
        self._size = int(cast(str, size))
        self._oldest = int(cast(str, oldest))
        self._archived = _seq(str(archived)) if archived else self._head + 1
        self._stored_bytes = int(cast(str, stored))
        self._runs_seen(run_count, first_run)
        await self._cut_archive()

    async def _cut_archive(self) -> None:
        """Over the archive's limits: drop the oldest whole runs (`archive_cut`, on the
        runs read here and sizes estimated from the mean event size: reading the
        stream's sizes would cost a read of the archive), cut in one script, which
        counts what it freed exactly. Every node may decide it; a cut is idempotent. A
        failure leaves the archive as it was (the next commit tries again)."""
        keep = self._archive.keep_runs
        slack = self._archive.archive_bytes // TRIM_SLACK
        over_runs = keep is not None and self._run_count > keep + max(1, keep // TRIM_SLACK)
        if self._stored_bytes <= self._archive.archive_bytes + slack and not over_runs:
            return
        try:
            texts = await self._client.zrange(self._runs_key, 0, -1)
            runs = []
            for text in texts:
                summary = json.loads(str(text))
                runs.append((int(summary["first_seq"]), int(summary["last_seq"])))
            rows = _estimated_rows(
                self._archived, self._head, self._stored_bytes, runs, self._oldest
            )
            plan = archive_cut(rows, self._stored_bytes, runs, self._archive, self._oldest)
            if plan is None:
                return
            freed: object = await self._cut_script(
                keys=[self._meta, self._events, self._runs_key, self._checkpoints_key],
                args=[plan[0], plan[1]],
            )
        except (RedisError, OSError, JournalError, ValueError, KeyError) as error:
            log.warning("%s: archive not cut: %s", self._where, error)
            return
        self._stored_bytes -= int(cast(int, freed))
        self._archived = max(self._archived, min(plan[0], self._oldest))
        self._run_count -= sum(1 for first, _ in runs if first < plan[1])


def _estimated_rows(
    archived: int, head: int, stored: int, runs: Sequence[tuple[int, int]], live_oldest: int
) -> list[tuple[int, int]]:
    """`archive_cut`'s rows for a stream holding ``stored`` bytes from ``archived`` to
    ``head``: one per closed run's end and one up to the live history, each sized by
    the mean event size."""
    mean = stored / max(1, head - archived + 1)
    rows, start = [], archived
    for last in sorted({last for _, last in runs if archived <= last < live_oldest}):
        rows.append((last, round((last - start + 1) * mean)))
        start = last + 1
    if start < live_oldest:
        rows.append((live_oldest - 1, round((live_oldest - start) * mean)))
    return rows


class RedisBackend:
    """``--broker redis://…``: every project's journal in one Redis, through one client."""

    def __init__(
        self,
        client: coredis.Redis[str],
        *,
        history: int = DEFAULT_HISTORY,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
        max_producers: int = MAX_PRODUCERS,
        archive: ArchiveLimits | None = None,
    ) -> None:
        check_limits(history, history_bytes, max_producers)
        self._max_producers = max_producers
        self._archive = archive
        self._client = client
        self._holder_script = client.register_script(_HOLDER)
        self._history = history
        self._history_bytes = history_bytes

    @property
    def name(self) -> str:
        return BACKEND

    @property
    def client(self) -> coredis.Redis[str]:
        """The entered client, for what else the nodes share through Redis (the poll lease)."""
        return self._client

    async def check(self) -> None:
        """Reach Redis now (``serve --broker`` at start); JournalError naming it if not."""
        try:
            await self._client.ping()
        except (RedisError, OSError) as error:
            where = self._client.connection_pool.location
            raise JournalError(f"cannot reach the broker at {where!r}: {error}") from None

    def journal(self, project: str, archive: ArchiveLimits | None = None) -> RedisJournal:
        return RedisJournal(
            self._client,
            project,
            history=self._history,
            history_bytes=self._history_bytes,
            max_producers=self._max_producers,
            archive=archive or self._archive,
        )

    async def knows(self, project: str) -> bool:
        """Does Redis hold a history of ``project`` (some node served it)?"""
        meta, _, _, _ = _keys(check_project(project))
        try:
            return await self._client.exists([meta]) > 0
        except (RedisError, OSError) as error:
            where = self._client.connection_pool.location
            raise JournalError(
                f"redis journal of {project!r} at {where!r}: cannot read: {error}"
            ) from None

    async def last_state(self, project: str) -> JsonObject | None:
        """The snapshot state stored now, whichever node committed it."""
        return (await self.journal(project).stored())[1]

    async def remove(self, project: str) -> bool:
        """Delete the project's keys; JournalError while a node has the project open
        (for up to `HOLD_TTL` after it closed it)."""
        meta, events, _, producers = _keys(check_project(project))
        try:
            holder: object = await self._holder_script(keys=[_holders_key(project)])
            if holder:
                raise JournalError(
                    f"project {project!r} is open on a running trio-ws server ({holder}); "
                    "stop it (or let it close the project) first"
                )
            return await self._client.delete([meta, events, producers, *_archive_keys(project)]) > 0
        except (RedisError, OSError) as error:
            where = self._client.connection_pool.location
            raise JournalError(
                f"redis journal of {project!r} at {where!r}: cannot remove: {error}"
            ) from None


@asynccontextmanager
async def open_redis_backend(
    url: str,
    *,
    history: int = DEFAULT_HISTORY,
    history_bytes: int = DEFAULT_HISTORY_BYTES,
    archive: ArchiveLimits | None = None,
) -> AsyncIterator[RedisBackend]:
    """The backend for ``--broker URL``, its client alive for the block (no I/O yet:
    an unreachable Redis shows at the first open or append)."""
    async with redis_client(url) as client:
        yield RedisBackend(client, history=history, history_bytes=history_bytes, archive=archive)
