"""One long-lived thread that runs blocking calls for trio tasks, one at a time, in order.

A one-line commit is on the critical path of every event (commit, then fan out),
and `trio.to_thread.run_sync` costs a thread-cache hand-off, an `outcome`, a
limiter and several scheduler passes on each call: about 0.2 ms round trip on a
loaded 2-core box, where this thread's queue and a direct reschedule through the
run's token take about 0.1 ms (measured with a no-op call every 5 ms). The journal
gives its writes to one of these (``SqliteJournal``), so a busy project's
commits never wait for a thread to be found or started.

The way back is a byte on a socket pair the caller waits on (`trio.lowlevel.wait_readable`):
the event loop's poll then wakes the caller itself, one scheduler pass sooner than
`TrioToken.run_sync_soon` (whose callbacks run in a system task that must run first):
about 40 us less per call on the 2-core box. A second caller while one waits (the
socket takes one waiter) comes back through `run_sync_soon` instead.

As with ``to_thread.run_sync``, a call in flight cannot be cancelled: the caller
waits for it to end, so it never loses track of what the call did.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar, cast

import outcome
import trio

T = TypeVar("T")


@dataclass(eq=False)
class _Call:
    fn: Callable[[], object]
    task: trio.lowlevel.Task | None
    """Rescheduled through ``token`` when set; else the result goes to ``found`` and a
    byte to the generation's socket."""
    token: trio.lowlevel.TrioToken
    found: outcome.Outcome[object] | None = None


@dataclass(eq=False)
class _Generation:
    """One thread's queue and the socket pair it answers on; ended by `stop`."""

    calls: queue.SimpleQueue[_Call | None] = field(default_factory=queue.SimpleQueue)
    pair: tuple[socket.socket, socket.socket] = field(default_factory=socket.socketpair)
    waiting: bool = False
    """A caller waits on the socket (it takes one waiter at a time)."""
    in_flight: int = 0
    stopped: bool = False

    def __post_init__(self) -> None:
        for end in self.pair:
            end.setblocking(False)

    def release(self) -> None:
        """Close the reading end once stopped and no caller is left to read it."""
        if self.stopped and self.in_flight == 0:
            self.pair[0].close()


class DedicatedThread:
    """A thread started on the first call and ended by `stop`; calls run in the order
    they were made, each caller parked until its own call returns or raises."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._generation: _Generation | None = None

    @property
    def running(self) -> bool:
        return self._generation is not None

    async def run_sync(self, fn: Callable[[], T], limiter: trio.CapacityLimiter) -> T:
        """``fn()`` on the thread, holding ``limiter`` (the resource's other users may
        run in `trio.to_thread` threads under it) for the call; its result, or its
        exception raised here. Checkpoints once (the wait), or twice when the limiter
        is taken."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            limiter.acquire_nowait()
        except trio.WouldBlock:
            await limiter.acquire()
        try:
            generation = self._generation
            if generation is None:
                generation = self._generation = _Generation()
                threading.Thread(
                    target=_serve, args=(generation,), name=self.name, daemon=True
                ).start()
            token = trio.lowlevel.current_trio_token()
            generation.in_flight += 1
            try:
                if generation.waiting:
                    task = trio.lowlevel.current_task()
                    generation.calls.put(_Call(fn, task, token))
                    found = await trio.lowlevel.wait_task_rescheduled(_cannot_abort)
                else:
                    call = _Call(fn, None, token)
                    generation.waiting = True
                    try:
                        generation.calls.put(call)
                        await _wait_answer(generation.pair[0], call)
                    finally:
                        generation.waiting = False
                    assert call.found is not None
                    found = call.found.unwrap()
            finally:
                generation.in_flight -= 1
                generation.release()
        finally:
            limiter.release()
        return cast("T", found)

    def stop(self) -> None:
        """End the thread once the calls already made have run; a later call starts a
        new one."""
        generation, self._generation = self._generation, None
        if generation is not None:
            generation.stopped = True
            generation.calls.put(None)
            generation.release()


async def _wait_answer(reading: socket.socket, call: _Call) -> None:
    """Until the thread has answered ``call``; a cancellation meanwhile waits for the
    answer all the same (the next checkpoint raises it)."""
    while call.found is None:
        try:
            await trio.lowlevel.wait_readable(reading)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                while call.found is None:
                    await trio.lowlevel.wait_readable(reading)
                    _drain(reading)
            return
        _drain(reading)


def _drain(reading: socket.socket) -> None:
    """Take the byte(s) that woke us; none left is fine (an earlier drain took them)."""
    with contextlib.suppress(BlockingIOError):
        reading.recv(64)


def _cannot_abort(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


def _serve(generation: _Generation) -> None:
    calls, writing = generation.calls, generation.pair[1]
    try:
        while (call := calls.get()) is not None:
            result = outcome.capture(call.fn)
            if call.task is None:
                call.found = result
                writing.send(b"\0")
                continue
            try:
                call.token.run_sync_soon(trio.lowlevel.reschedule, call.task, result)
            except trio.RunFinishedError:
                return  # the run that asked has ended: so has every task that could ask
    finally:
        writing.close()
