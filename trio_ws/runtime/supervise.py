"""Background tasks that must not take their nursery down: `run_restarting` restarts
a loop that crashed, `contained` ends only the task that failed.

A project's writer, its poll loop and its broker follower each run for the
project's life in a nursery that also holds the project's other tasks (and,
above it, the server's connections). A bug that makes one of them raise must
neither end the others nor end the loop for good: the traceback is logged,
the caller's ``on_crash`` repairs what the crash may have left (say, resyncing
subscribers who may have missed a commit), and the loop runs again after a
delay that doubles while it keeps crashing. Cancellation is never caught.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from trio_ws.runtime.backoff import Backoff

log = logging.getLogger(__name__)


async def run_restarting(
    what: str,
    body: Callable[[], Awaitable[object]],
    delays: Backoff,
    *,
    done: Callable[[], bool],
    on_crash: Callable[[Exception], None] | None = None,
    logger: logging.Logger = log,
) -> None:
    """Await ``body()`` until ``done()``; after an exception, log it with its traceback,
    call ``on_crash(exc)`` and wait ``delays.next()`` before the next run. Whoever sees
    the loop healthy again (a good read, a commit) calls ``delays.reset()``. The crash
    is logged to ``logger``: the owner's, so its log says whose loop it was."""
    while not done():
        try:
            await body()
        except Exception as exc:
            delay = delays.next()
            logger.error("%s failed; restarting in %g s", what, delay, exc_info=True)
            if on_crash is not None:
                on_crash(exc)
            await trio.sleep(delay)


async def contained(what: str, task: Callable[..., Awaitable[object]], *args: object) -> None:
    """Run a background task so that its unexpected failure is logged with its traceback
    and ends only this task: the nursery it runs in also serves connections (or holds a
    project's other tasks), and one failure there must not take them down."""
    try:
        await task(*args)
    except Exception:
        log.exception("%s failed", what)
