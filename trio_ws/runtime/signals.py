"""SIGINT/SIGTERM for the long-running commands, handled in one place.

Every command (`serve`, `run`, `publish`, `watch`, `demo`) follows one rule: the
first signal asks the work to stop gracefully, a later one stops waiting and
leaves now, with the shell's status for death by that signal (128 + N). Only
what "gracefully" and "now" mean differs, so each command passes those two
actions and this module does the listening.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final, NoReturn

import trio

log = logging.getLogger("trio_ws.runtime.signals")

STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
"""What Ctrl-C and a service manager send to stop us."""

OnSignal = Callable[[int], object]
"""Called with the signal's number; runs in a trio task, so it must not block."""


def exit_now(signum: int) -> NoReturn:
    """Leave at once, skipping cleanup, with status 128 + ``signum`` as a shell reports
    a death by that signal (130 for SIGINT, 143 for SIGTERM)."""
    os._exit(128 + signum)


def _log_and_exit(signum: int) -> NoReturn:
    log.warning("signal %d again: exiting now", signum)
    exit_now(signum)


@asynccontextmanager
async def on_stop_signals(first: OnSignal, again: OnSignal = _log_and_exit) -> AsyncIterator[None]:
    """While the block runs, the first SIGINT/SIGTERM calls ``first`` (stop gracefully:
    cancel a scope, set an event) and each later one ``again`` (by default: log and
    `exit_now`, for when the graceful stop itself hangs).

    SIGINT raises no KeyboardInterrupt inside the block. An exception from the block
    leaves as itself, not wrapped in an exception group by the listener's nursery.
    """
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:

            async def dispatch() -> None:
                async for signum in signals:
                    first(signum)
                    break
                async for signum in signals:
                    again(signum)

            nursery.start_soon(dispatch)
            try:
                yield
            except Exception as exc:  # noqa: BLE001 - re-raised below, outside the nursery
                failure = exc
            finally:
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure


async def until_signalled(work: Callable[[], Awaitable[None]]) -> bool:
    """Run ``work`` until it returns or the first SIGINT/SIGTERM cancels it; True when a
    signal ended it.

    Later signals are ignored rather than exiting now: the cancelled ``work`` ends
    within its own close bounds and may be restoring the terminal (`watch`'s live view).
    """
    signalled = False
    scope = trio.CancelScope()

    def stop(signum: int) -> None:
        nonlocal signalled
        signalled = True
        scope.cancel()

    async with on_stop_signals(stop, again=lambda signum: None):
        with scope:
            await work()
    return signalled
