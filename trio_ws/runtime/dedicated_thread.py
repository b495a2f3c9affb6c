"""One long-lived thread that runs blocking calls for trio tasks, one at a time, in order.

A one-line commit is on the critical path of every event (commit, then fan out),
and `trio.to_thread.run_sync` costs a thread-cache hand-off, an `outcome`, a
limiter and several scheduler passes on each call: about 0.2 ms round trip on a
loaded 2-core box, where this thread's queue and a direct reschedule through the
run's token take about 0.1 ms (measured with a no-op call every 5 ms). The journal
gives its writes to one of these (``SqliteJournal``), so a busy project's
commits never wait for a thread to be found or started.

As with ``to_thread.run_sync``, a call in flight cannot be cancelled: the caller
waits for it to end, so it never loses track of what the call did.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import TypeVar, cast

import outcome
import trio

T = TypeVar("T")

_Call = tuple[Callable[[], object], trio.lowlevel.Task, trio.lowlevel.TrioToken]


class DedicatedThread:
    """A thread started on the first call and ended by `stop`; calls run in the order
    they were made, each caller parked until its own call returns or raises."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue[_Call | None] | None = None

    @property
    def running(self) -> bool:
        return self._calls is not None

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
            calls = self._calls
            if calls is None:
                calls = self._calls = queue.SimpleQueue()
                threading.Thread(target=_serve, args=(calls,), name=self.name, daemon=True).start()
            calls.put((fn, trio.lowlevel.current_task(), trio.lowlevel.current_trio_token()))
            found = await trio.lowlevel.wait_task_rescheduled(_cannot_abort)
        finally:
            limiter.release()
        return cast("T", found)

    def stop(self) -> None:
        """End the thread once the calls already made have run; a later call starts a
        new one."""
        calls, self._calls = self._calls, None
        if calls is not None:
            calls.put(None)


def _cannot_abort(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


def _serve(calls: queue.SimpleQueue[_Call | None]) -> None:
    while (call := calls.get()) is not None:
        fn, task, token = call
        result = outcome.capture(fn)
        try:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)
        except trio.RunFinishedError:
            return  # the run that asked has ended: so has every task that could ask
