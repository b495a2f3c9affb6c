"""Coalesced registry reads: shared under load, never older than the request."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_ws.data.registry import RegistryCorrupt
from trio_ws.net.project_lookup import CoalescedReads

TIMEOUT = 10.0


class GatedRead:
    """A read that numbers itself and, while ``gate`` is closed, blocks its thread."""

    def __init__(self) -> None:
        self.started = 0
        self.names: list[str] = []
        self.gate = threading.Event()
        self.fail = False
        self.entered: dict[int, trio.Event] = {}

    def entered_event(self, number: int) -> trio.Event:
        return self.entered.setdefault(number, trio.Event())

    def __call__(self, path: Path, name: str) -> int:
        self.started += 1
        number = self.started
        self.names.append(name)
        trio.from_thread.run_sync(self.entered_event(number).set)
        if not self.gate.wait(TIMEOUT):
            raise AssertionError("the test never opened the gate")
        if self.fail:
            raise RegistryCorrupt(f"{path} is not a registry")
        return number


async def until_read(read: GatedRead, number: int) -> None:
    """Until read ``number`` runs in its thread (the scheduler cannot see that)."""
    await read.entered_event(number).wait()


async def test_requests_during_a_read_share_the_next_one(tmp_path: Path) -> None:
    read = GatedRead()
    reads = CoalescedReads(read)
    answers: list[int] = []

    async def request() -> None:
        answers.append(await reads.get(tmp_path, "demo"))

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(request)
            await until_read(read, 1)  # the first request reads at once
            for _ in range(5):  # these arrive while read 1 runs: it may predate them
                nursery.start_soon(request)
            await trio.testing.wait_all_tasks_blocked()
            assert read.started == 1  # they wait for read 1 to end, then share read 2
            read.gate.set()
    assert sorted(answers) == [1, 2, 2, 2, 2, 2]
    assert read.started == 2


async def test_each_name_is_read_on_its_own(tmp_path: Path) -> None:
    read = GatedRead()
    read.gate.set()
    reads = CoalescedReads(read)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for name in ("alpha", "beta"):
                nursery.start_soon(reads.get, tmp_path, name)
    assert sorted(read.names) == ["alpha", "beta"]


async def test_a_failed_read_fails_every_request_of_its_batch(tmp_path: Path) -> None:
    read = GatedRead()
    read.fail = True
    reads = CoalescedReads(read)
    failures: list[str] = []

    async def request() -> None:
        with pytest.raises(RegistryCorrupt) as caught:
            await reads.get(tmp_path, "demo")
        failures.append(str(caught.value))

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(request)
            await trio.testing.wait_all_tasks_blocked()
            read.gate.set()
    assert failures == [f"{tmp_path} is not a registry"] * 3
    read.fail = False
    with trio.fail_after(TIMEOUT):
        # Read 1 started with the first request, the other two shared read 2; the
        # next request reads anew.
        assert await reads.get(tmp_path, "demo") == 3


async def test_a_cancelled_first_request_still_answers_the_others(tmp_path: Path) -> None:
    read = GatedRead()
    reads = CoalescedReads(read)
    answers: list[int] = []

    async def joiner() -> None:
        answers.append(await reads.get(tmp_path, "demo"))

    first = trio.CancelScope()

    async def starter() -> None:
        with first:
            await reads.get(tmp_path, "demo")

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(joiner)  # read 1
            await until_read(read, 1)
            nursery.start_soon(starter)  # starts batch 2, then is cancelled
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(joiner)  # joins batch 2
            await trio.testing.wait_all_tasks_blocked()
            first.cancel()
            read.gate.set()
    assert sorted(answers) == [1, 2]
    assert read.started == 2
