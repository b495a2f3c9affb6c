import itertools
import logging

import pytest
import trio

from trio_ws.runtime.backoff import Backoff
from trio_ws.runtime.supervise import run_restarting


async def test_a_crashing_body_runs_again_after_doubling_delays(
    autojump_clock: trio.abc.Clock,
) -> None:
    starts: list[float] = []

    async def body() -> None:
        starts.append(trio.current_time())
        raise RuntimeError("boom")

    await run_restarting(
        "loop", body, Backoff(1.0, 4.0, jitter=None), done=lambda: len(starts) >= 5
    )
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(starts)]
    assert gaps == [1.0, 2.0, 4.0, 4.0]


async def test_each_crash_is_logged_with_its_traceback_and_repaired(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    crashes: list[Exception] = []
    runs = 0

    async def body() -> None:
        nonlocal runs
        runs += 1
        raise ValueError(f"bug {runs}")

    await run_restarting(
        "project p: writer",
        body,
        Backoff(0.5, 0.5, jitter=None),
        done=lambda: runs >= 2,
        on_crash=crashes.append,
    )
    assert [str(exc) for exc in crashes] == ["bug 1", "bug 2"]
    records = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in records] == [
        "project p: writer failed; restarting in 0.5 s"
    ] * 2
    assert all(r.exc_info is not None for r in records)


async def test_a_body_that_returns_runs_again_at_once_until_done(
    autojump_clock: trio.abc.Clock,
) -> None:
    runs = 0

    async def body() -> None:
        nonlocal runs
        runs += 1

    await run_restarting("loop", body, Backoff(1.0, 1.0, jitter=None), done=lambda: runs >= 3)
    assert runs == 3
    assert trio.current_time() == 0


async def test_cancellation_is_not_caught(autojump_clock: trio.abc.Clock) -> None:
    with trio.move_on_after(10) as scope:
        await run_restarting(
            "loop", trio.sleep_forever, Backoff(1.0, 1.0, jitter=None), done=lambda: False
        )
    assert scope.cancelled_caught
