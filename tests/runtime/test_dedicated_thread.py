"""The journal's own thread: calls run there in order, results and errors come back to
the caller, a call in flight is waited for even when its caller is cancelled, and the
limiter keeps it apart from the resource's `to_thread` users."""

from __future__ import annotations

import functools
import threading
import time

import pytest
import trio

from trio_ws.runtime.dedicated_thread import DedicatedThread


async def test_calls_run_in_order_on_one_thread_that_is_not_the_loops() -> None:
    worker = DedicatedThread("test worker")
    limiter = trio.CapacityLimiter(1)
    seen: list[tuple[int, int]] = []

    def call(number: int) -> int:
        seen.append((number, threading.get_ident()))
        return number * 2

    with trio.fail_after(10):
        results = [await worker.run_sync(functools.partial(call, n), limiter) for n in range(5)]
    worker.stop()
    assert results == [0, 2, 4, 6, 8]
    assert [number for number, _ in seen] == [0, 1, 2, 3, 4]
    assert len({ident for _, ident in seen}) == 1
    assert seen[0][1] != threading.get_ident()


async def test_an_exception_is_raised_in_the_caller_and_the_thread_goes_on() -> None:
    worker = DedicatedThread("test worker")
    limiter = trio.CapacityLimiter(1)

    def fail() -> None:
        raise ValueError("disk on fire")

    with trio.fail_after(10):
        with pytest.raises(ValueError, match="disk on fire"):
            await worker.run_sync(fail, limiter)
        assert await worker.run_sync(lambda: "still here", limiter) == "still here"
    worker.stop()


async def test_a_cancelled_caller_waits_for_its_call_to_end() -> None:
    worker = DedicatedThread("test worker")
    limiter = trio.CapacityLimiter(1)
    done: list[str] = []

    def slow() -> str:
        time.sleep(0.3)
        done.append("written")
        return "written"

    with trio.fail_after(10):
        with trio.move_on_after(0.05) as scope:
            found = await worker.run_sync(slow, limiter)
    worker.stop()
    # The deadline passed during the call, which was neither cut nor lost.
    assert (found, done, scope.cancelled_caught) == ("written", ["written"], False)


async def test_the_limiter_keeps_to_thread_users_of_the_resource_out_meanwhile() -> None:
    worker = DedicatedThread("test worker")
    limiter = trio.CapacityLimiter(1)
    events: list[str] = []

    def slow() -> None:
        events.append("write starts")
        time.sleep(0.2)
        events.append("write ends")

    async def read() -> None:
        await trio.sleep(0.05)  # the write holds the limiter by now
        await trio.to_thread.run_sync(lambda: events.append("read"), limiter=limiter)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await worker.run_sync(slow, limiter)
    worker.stop()
    assert events == ["write starts", "write ends", "read"]


async def test_stop_ends_the_thread_and_a_later_call_starts_another() -> None:
    worker = DedicatedThread("test worker stop")
    limiter = trio.CapacityLimiter(1)
    with trio.fail_after(10):
        first = await worker.run_sync(threading.get_ident, limiter)
        thread = next(found for found in threading.enumerate() if found.ident == first)
        assert worker.running and thread.name == "test worker stop"
        worker.stop()
        assert not worker.running
        await trio.to_thread.run_sync(thread.join, 5.0)  # it ends once it sees the stop
        assert not thread.is_alive()
        second = await worker.run_sync(threading.get_ident, limiter)
    worker.stop()
    assert second != threading.get_ident()


async def test_callers_waiting_together_each_get_their_own_answer() -> None:
    # Separate limiters: the second caller comes while the first waits on the socket,
    # and is answered through the run's token instead.
    worker = DedicatedThread("test worker together")
    results: dict[int, int] = {}

    def slow(number: int) -> int:
        time.sleep(0.05)
        return number * 10

    async def call(number: int) -> None:
        results[number] = await worker.run_sync(
            functools.partial(slow, number), trio.CapacityLimiter(1)
        )

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for number in range(4):
                nursery.start_soon(call, number)
        assert await worker.run_sync(lambda: "after", trio.CapacityLimiter(1)) == "after"
    worker.stop()
    assert results == {0: 0, 1: 10, 2: 20, 3: 30}


async def test_stop_while_a_call_is_in_flight_still_answers_it() -> None:
    worker = DedicatedThread("test worker stop in flight")
    limiter = trio.CapacityLimiter(1)

    def slow() -> str:
        time.sleep(0.1)
        return "answered"

    async def stop_soon() -> None:
        await trio.sleep(0.03)
        worker.stop()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_soon)
            found = await worker.run_sync(slow, limiter)
    assert (found, worker.running) == ("answered", False)
