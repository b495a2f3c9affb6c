"""The journal contract (STATE.md 1-3), the same tests for every backend.

A new backend is a file and a fixture: add it to ``BACKENDS``. Backends
differ in one declared way only: whether a journal outlives its object
(``durable``); a memory journal starts a new epoch at every open. The redis
backend runs against a real ``redis-server`` (tests/redis_server.py), flushed
before each test.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import coredis
import pytest

from trio_ws.journal.interface import (
    ArchiveLimits,
    Batch,
    Checkpoint,
    Journal,
    JournalBackend,
    StoredRun,
)
from trio_ws.journal.memory import MemoryBackend
from trio_ws.journal.redis import RedisBackend, redis_client
from trio_ws.journal.sqlite import SqliteBackend

BACKENDS = ("memory", "sqlite", "redis")


@dataclass
class Backends:
    """Makes a backend of the parametrized kind with the given history limits."""

    kind: str
    home: Path
    boot_id_path: Path
    client: coredis.Redis[str] | None = None

    @property
    def durable(self) -> bool:
        return self.kind != "memory"

    def __call__(
        self,
        history: int = 10_000,
        history_bytes: int = 1 << 26,
        max_producers: int = 1024,
        archive: ArchiveLimits | None = None,
    ) -> JournalBackend:
        if self.kind == "memory":
            return MemoryBackend(history=history, history_bytes=history_bytes, archive=archive)
        if self.client is not None:
            return RedisBackend(
                self.client,
                history=history,
                history_bytes=history_bytes,
                max_producers=max_producers,
                archive=archive,
            )
        return SqliteBackend(
            self.home,
            history=history,
            history_bytes=history_bytes,
            boot_id_path=self.boot_id_path,
            max_producers=max_producers,
            archive=archive,
        )


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def redis_url(kind: str, request: pytest.FixtureRequest) -> str | None:
    """The session's redis-server (started on first use) for the redis kind only."""
    return request.getfixturevalue("redis_server").url if kind == "redis" else None


@pytest.fixture
async def backends(kind: str, redis_url: str | None, tmp_path: Path) -> AsyncIterator[Backends]:
    boot = tmp_path / "boot_id"
    boot.write_text("boot-1\n")
    if redis_url is None:
        yield Backends(kind, tmp_path / "home", boot)
        return
    async with redis_client(redis_url) as client:
        await client.flushall()
        yield Backends(kind, tmp_path / "home", boot, client)


def events(first: int, last: int, text: Callable[[int], str] | None = None) -> Batch:
    text = text or (lambda seq: f'{{"n":{seq}}}')
    return Batch([(seq, text(seq)) for seq in range(first, last + 1)])


async def opened(backends: Backends, **limits: Any) -> Journal:
    journal = backends(**limits).journal("demo")
    await journal.open()
    return journal


async def test_first_open_is_a_new_empty_epoch(backends: Backends) -> None:
    state = await backends().journal("demo").open()
    assert state.new_epoch == "new"
    assert (state.head, state.oldest, state.pseqs, state.state) == (0, 1, {}, None)
    assert state.moved_aside is None
    assert len(state.epoch) >= 16


async def test_read_since_returns_what_follows_in_order(backends: Backends) -> None:
    journal = await opened(backends)
    await journal.append(events(1, 3))
    await journal.append(events(4, 6))
    assert await journal.read_since(0, 100) == [(n, f'{{"n":{n}}}') for n in range(1, 7)]
    assert await journal.read_since(2, 2) == [(3, '{"n":3}'), (4, '{"n":4}')]
    assert await journal.read_since(6, 10) == []
    stats = journal.stats()
    assert (stats.head, stats.oldest, stats.events_held) == (6, 1, 6)


async def test_append_refuses_a_seq_that_does_not_follow_the_head(backends: Backends) -> None:
    journal = await opened(backends)
    await journal.append(events(1, 2))
    with pytest.raises(ValueError, match="on head 2 has seq 4 where 3 is due"):
        await journal.append(events(4, 4))
    with pytest.raises(ValueError, match="on head 2 has seq 5 where 4 is due"):
        await journal.append(Batch([(3, "a"), (5, "b")]))
    assert journal.stats().head == 2
    await journal.append(events(3, 3))
    assert [seq for seq, _ in await journal.read_since(0, 10)] == [1, 2, 3]


async def test_an_append_over_the_limits_keeps_the_newest_history_events(
    backends: Backends,
) -> None:
    journal = await opened(backends, history=5)
    for seq in range(1, 6):
        await journal.append(events(seq, seq))
    await journal.append(events(6, 7))  # 7 held: over 5 (a tenth of 5 is no slack)
    assert [seq for seq, _ in await journal.read_since(0, 100)] == [3, 4, 5, 6, 7]
    stats = journal.stats()
    assert (stats.head, stats.oldest, stats.events_held) == (7, 3, 5)


async def test_an_append_over_the_limits_keeps_at_most_history_bytes(backends: Backends) -> None:
    journal = await opened(backends, history_bytes=250)
    await journal.append(events(1, 5, lambda seq: "x" * 100))
    assert [seq for seq, _ in await journal.read_since(0, 100)] == [4, 5]
    assert journal.stats().bytes_held == 200


async def test_bytes_are_counted_in_utf8(backends: Backends) -> None:
    journal = await opened(backends)
    await journal.append(Batch([(1, '"é€😀"')]))
    assert journal.stats().bytes_held == len('"é€😀"'.encode())


async def test_trimming_always_keeps_the_newest_event(backends: Backends) -> None:
    journal = await opened(backends, history_bytes=10)
    await journal.append(events(1, 2, lambda seq: "y" * 50))
    assert await journal.read_since(0, 10) == [(2, "y" * 50)]
    assert journal.stats().oldest == 2


async def test_appends_trim_by_themselves_beyond_a_tenth_over_the_limit(
    backends: Backends,
) -> None:
    journal = await opened(backends, history=20)
    for seq in range(1, 101):
        await journal.append(events(seq, seq))
        assert journal.stats().events_held <= 22
    held = await journal.read_since(0, 1000)
    assert [seq for seq, _ in held] == list(range(journal.stats().oldest, 101))
    assert journal.stats().events_held == len(held)


async def test_read_since_older_than_held_starts_at_the_oldest(backends: Backends) -> None:
    journal = await opened(backends, history=3)
    await journal.append(events(1, 10))
    assert [seq for seq, _ in await journal.read_since(2, 100)] == [8, 9, 10]


async def test_a_batch_may_carry_only_producer_pseqs(backends: Backends) -> None:
    journal = await opened(backends)
    await journal.append(Batch([], {"producer-a": 7}, {"agents": []}))
    assert journal.stats().head == 0
    assert journal.stats().commits == 1


async def test_stats_name_the_backend_and_time_each_commit(backends: Backends) -> None:
    journal = await opened(backends)
    for seq in range(1, 4):
        await journal.append(events(seq, seq))
    stats = journal.stats()
    assert stats.backend == backends.kind
    assert stats.commits == 3
    assert len(stats.commit_seconds) == 3
    assert all(seconds > 0 for seconds in stats.commit_seconds)
    assert stats.commit_seconds_sum == pytest.approx(sum(stats.commit_seconds))
    assert stats.write_errors == 0


async def test_reopen_continues_the_history_only_when_durable(backends: Backends) -> None:
    backend = backends()
    journal = backend.journal("demo")
    first = await journal.open()
    state = {"agents": [{"index": 0, "name": "Spark"}], "next_index": 1, "url": None}
    await journal.append(Batch([(1, '"a"'), (2, '"b"')], {"agent-1": 5, "dev-1": 2}, state))
    await journal.append(Batch([(3, '"c"')], {"agent-1": 6}))
    await journal.close()
    reopened = backend.journal("demo")
    again = await reopened.open()
    if backends.durable:
        assert (again.epoch, again.new_epoch) == (first.epoch, None)
        assert (again.head, again.oldest) == (3, 1)
        assert again.pseqs == {"agent-1": 6, "dev-1": 2}
        assert again.state == state
        stats = reopened.stats()
        assert (stats.head, stats.oldest, stats.events_held, stats.bytes_held) == (3, 1, 3, 9)
    else:
        assert again.epoch != first.epoch
        assert (again.new_epoch, again.head, again.pseqs, again.state) == ("new", 0, {}, None)


async def test_remove_forgets_the_project(backends: Backends) -> None:
    backend = backends()
    journal = backend.journal("demo")
    first = await journal.open()
    await journal.append(events(1, 2))
    await journal.close()
    assert await backend.remove("demo") is backends.durable
    assert await backend.remove("demo") is False
    again = await backend.journal("demo").open()
    assert (again.new_epoch, again.head) == ("new", 0)
    assert again.epoch != first.epoch


async def test_a_backend_knows_a_project_once_its_journal_exists_until_removed(
    backends: Backends,
) -> None:
    backend = backends()
    assert await backend.knows("demo") is False
    journal = backend.journal("demo")
    await journal.open()
    await journal.append(events(1, 1))
    await journal.close()
    assert await backend.knows("demo") is backends.durable
    assert await backend.knows("other") is False
    await backend.remove("demo")
    assert await backend.knows("demo") is False


async def test_the_last_state_is_read_without_opening_the_journal(backends: Backends) -> None:
    """What the overview shows of a project not open here: the state last committed,
    read while the journal is closed (and while open: the server may open it then)."""
    backend = backends()
    assert await backend.last_state("demo") is None
    journal = backend.journal("demo")
    await journal.open()
    assert await backend.last_state("demo") is None  # nothing committed yet
    await journal.append(Batch([(1, '{"n":1}')], state={"snapshot": {"n": 1}}))
    await journal.append(Batch([(2, '{"n":2}')], state={"snapshot": {"n": 2}}))
    expected = {"snapshot": {"n": 2}} if backends.durable else None
    assert await backend.last_state("demo") == expected
    await journal.close()
    assert await backend.last_state("demo") == expected
    assert await backend.last_state("other") is None


async def test_project_names_are_checked(backends: Backends) -> None:
    with pytest.raises(ValueError, match="invalid project name"):
        backends().journal("../escape")


async def test_each_group_keeps_only_its_newest_producers(backends: Backends) -> None:
    """One producer id per run must not grow the journal for its whole life: beyond the
    bound, a commit that writes a newer producer drops the group's least recently
    written one; another group's producers do not count against it."""
    backend = backends(max_producers=3)

    async def reopened() -> list[tuple[str, int]]:
        await journal.close()
        state = await journal.open()
        return list(state.pseqs.items()) if backends.durable else []

    journal = backend.journal("demo")
    await journal.open()
    await journal.append(Batch([], {"dev:d1": 1}))
    for run in (1, 2, 3):
        await journal.append(Batch([], {f"agent:r{run}": run}))
    await journal.append(Batch([], {"agent:r1": 10}))  # written again: the newest now
    await journal.append(Batch([], {"agent:r4": 4}))
    first = await reopened()
    await journal.append(Batch([], {"agent:r5": 5, "agent:r6": 6}))
    second = await reopened()
    if backends.durable:
        assert first == [("dev:d1", 1), ("agent:r3", 3), ("agent:r1", 10), ("agent:r4", 4)]
        assert second == [("dev:d1", 1), ("agent:r4", 4), ("agent:r5", 5), ("agent:r6", 6)]
    else:
        assert first == second == []


async def test_a_pruned_producer_written_again_counts_as_new(backends: Backends) -> None:
    backend = backends(max_producers=2)
    journal = backend.journal("demo")
    await journal.open()
    for run in (1, 2, 3):
        await journal.append(Batch([], {f"agent:r{run}": 5}))
    await journal.append(Batch([], {"agent:r1": 2}))  # r1 was forgotten: starts again
    await journal.close()
    again = await backend.journal("demo").open()
    assert again.pseqs == ({"agent:r3": 5, "agent:r1": 2} if backends.durable else {})


# -- the archive: events beyond the live history, runs, checkpoints --------------


def run_of(first: int, last: int) -> StoredRun:
    return StoredRun(first, last, f'{{"first_seq":{first},"last_seq":{last}}}')


async def test_events_beyond_the_live_history_are_kept_for_ranges_not_for_catch_up(
    backends: Backends,
) -> None:
    journal = await opened(backends, history=5)
    await journal.append(events(1, 20))
    stats = journal.stats()
    assert stats.oldest == 16 and stats.events_held == 5
    assert [seq for seq, _ in await journal.read_since(0, 100)] == list(range(16, 21))
    assert await journal.read_range(2, 6, 100) == [(n, f'{{"n":{n}}}') for n in range(3, 7)]
    assert [seq for seq, _ in await journal.read_range(17, 100, 2)] == [18, 19]
    assert stats.archive is not None
    assert (stats.archive.oldest, stats.archive.events) == (1, 20)


async def test_closed_runs_are_records_read_newest_first_and_paged(backends: Backends) -> None:
    journal = await opened(backends)
    await journal.append(Batch([(1, "{}"), (2, "{}")], runs=[run_of(1, 2)]))
    await journal.append(Batch([(3, "{}"), (4, "{}"), (5, "{}")], runs=[run_of(3, 4)]))
    assert await journal.runs(None, 10) == [run_of(3, 4).text, run_of(1, 2).text]
    assert await journal.runs(3, 10) == [run_of(1, 2).text]
    assert await journal.runs(None, 1) == [run_of(3, 4).text]
    stats = journal.stats().archive
    assert stats is not None and (stats.runs, stats.oldest_run) == (2, 1)


async def test_the_oldest_whole_runs_go_when_the_archive_is_over_its_bytes(
    backends: Backends,
) -> None:
    """Runs of 10 events of 10 bytes each; 300 bytes kept: the newest ~2 runs and the
    live history stay, whole runs went first (the cut falls right after a run)."""
    journal = await opened(backends, history=5, archive=ArchiveLimits(300))
    text = '{"n":"x"}'  # 10 bytes
    for number in range(6):
        first = number * 10 + 1
        batch = Batch([(seq, text) for seq in range(first, first + 10)])
        await journal.append(batch)
        await journal.append(Batch(runs=[run_of(first, first + 9)]))
    stats = journal.stats().archive
    assert stats is not None
    kept = [run["first_seq"] for run in map(json.loads, await journal.runs(None, 100))]
    assert kept == sorted(kept, reverse=True) and kept[0] == 51 and len(kept) < 6
    assert stats.oldest == kept[-1]  # the archive starts where the oldest run kept starts
    assert stats.bytes <= 330
    assert [seq for seq, _ in await journal.read_range(0, 100, 1)] == [kept[-1]]


async def test_keep_runs_keeps_the_newest_runs(backends: Backends) -> None:
    journal = await opened(backends, history=3, archive=ArchiveLimits(1 << 30, keep_runs=2))
    for number in range(6):
        first = number * 3 + 1
        await journal.append(
            Batch([(seq, "{}") for seq in range(first, first + 3)], runs=[run_of(first, first + 2)])
        )
    kept = [run["first_seq"] for run in map(json.loads, await journal.runs(None, 100))]
    assert kept[:2] == [16, 13] and len(kept) <= 3
    assert (await journal.read_range(0, 100, 1))[0][0] == kept[-1]


async def test_limits_retained_while_open_apply_from_the_next_commit(
    backends: Backends,
) -> None:
    """A project's keep-runs set on a running server: its open journal keeps to it."""
    journal = await opened(backends, history=3, archive=ArchiveLimits(1 << 30))
    for number in range(3):
        first = number * 3 + 1
        await journal.append(
            Batch([(seq, "{}") for seq in range(first, first + 3)], runs=[run_of(first, first + 2)])
        )
    assert len(await journal.runs(None, 100)) == 3
    journal.retain(ArchiveLimits(1 << 30, keep_runs=1))
    for number in range(3, 6):
        first = number * 3 + 1
        await journal.append(
            Batch([(seq, "{}") for seq in range(first, first + 3)], runs=[run_of(first, first + 2)])
        )
    kept = [run["first_seq"] for run in map(json.loads, await journal.runs(None, 100))]
    assert kept[0] == 16 and len(kept) <= 2


async def test_keep_runs_drops_the_records_of_runs_whose_events_are_still_live(
    backends: Backends,
) -> None:
    """The live history is never cut: a run beyond keep_runs loses its record, and its
    events stay for the subscribers that may resume into them."""
    journal = await opened(backends, archive=ArchiveLimits(1 << 30, keep_runs=1))
    for number in range(4):
        first = number * 3 + 1
        await journal.append(
            Batch([(seq, "{}") for seq in range(first, first + 3)], runs=[run_of(first, first + 2)])
        )
    kept = [run["first_seq"] for run in map(json.loads, await journal.runs(None, 100))]
    assert kept[0] == 10 and len(kept) <= 2
    assert [seq for seq, _ in await journal.read_since(0, 100)] == list(range(1, 13))


async def test_the_newest_checkpoint_at_or_before_a_seq_or_a_time(backends: Backends) -> None:
    journal = await opened(backends)
    points = [Checkpoint(2, "t2", "a"), Checkpoint(4, None, "b"), Checkpoint(6, "t6", "c")]
    await journal.append(Batch([(seq, "{}") for seq in range(1, 8)], checkpoints=points))
    assert await journal.checkpoint(1) is None
    assert await journal.checkpoint(5) == points[1]
    assert await journal.checkpoint(100) == points[2]
    assert await journal.checkpoint(100, "t5") == points[1]  # no stamp sorts first
    assert await journal.checkpoint(3, "t9") == points[0]


async def test_search_finds_the_events_holding_a_text_and_says_how_far_it_got(
    backends: Backends,
) -> None:
    journal = await opened(backends, history=3)
    await journal.append(
        events(1, 50, lambda seq: f'{{"line":"{"hay" if seq % 7 else "Needle"}"}}')
    )
    found, through = await journal.search(0, 30, "needle", 100, 5.0)
    assert [seq for seq, _ in found] == [7, 14, 21, 28] and through == 30
    found, through = await journal.search(7, 50, "needle", 2, 5.0)
    assert [seq for seq, _ in found] == [14, 21] and through == 21
