"""What one committed line costs at least on the server's CPU, step by step.

``python -m bench.floor`` (run by `rate_rounds` pinned to the server's CPU, in the
same rounds as the peer) prints one JSON line: the p50 and p99 (µs) of

- ``apply``: one producer message of one line decoded and run through the hub's
  pipeline (numbered, encoded, staged);
- ``thread_round_trip``: a no-op call on the journal's own thread
  (`DedicatedThread`) and back on the event loop;
- ``append``: one one-event batch appended to a fresh sqlite journal
  (``synchronous=NORMAL``, a 3 KB state as the hub writes it), thread trip included;
- ``commit``: the hub's whole commit of one staged line (state, append, fan-out to one
  in-process subscriber), as `ProjectHub.commit` runs it.

Every commit is on its events' way to the subscribers (commit, then fan out), so
``apply + commit`` is the least a line spends in trio-ws before its first send; the
peer (python-websockets ``broadcast()``) spends the equivalent of ``apply`` alone.
Calls are spaced ``GAP`` apart, as at 100-1,000 lines/s, so none waits for another.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import trio

from bench.stats import percentile
from bench.wire import make_line
from trio_ws.core import protocol
from trio_ws.journal.interface import Batch
from trio_ws.journal.sqlite import SqliteBackend
from trio_ws.runtime.dedicated_thread import DedicatedThread
from trio_ws.state.hub import ProjectHub

SAMPLES: Final = 600
WARMUP: Final = 100
GAP: Final = 0.002


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_us": round(percentile(ordered, 50) * 1e6, 1),
        "p99_us": round(percentile(ordered, 99) * 1e6, 1),
    }


async def _timed(step: Callable[[int], Awaitable[None]]) -> dict[str, float]:
    samples: list[float] = []
    for number in range(WARMUP + SAMPLES):
        started = time.perf_counter()
        await step(number)
        if number >= WARMUP:
            samples.append(time.perf_counter() - started)
        await trio.sleep(GAP)
    return _summary(samples)


async def measure(directory: Path) -> dict[str, dict[str, float]]:
    thread = DedicatedThread("floor")
    limiter = trio.CapacityLimiter(1)

    async def round_trip(_: int) -> None:
        await thread.run_sync(lambda: None, limiter)

    found = {"thread_round_trip": await _timed(round_trip)}
    thread.stop()

    hub = ProjectHub("floor")
    await hub.open(SqliteBackend(directory / "hub").journal("floor"))
    subscriber = hub.subscribe(backlog=0)

    def message(number: int) -> str:
        line = make_line(number, time.time(), 125)
        return json.dumps({"type": "lines", "first": number + 1, "lines": [line]})

    applied = []
    commits = []
    for number in range(WARMUP + SAMPLES):
        text = message(number)
        started = time.perf_counter()
        payload = protocol.decode_client_message(text)
        hub.feed_lines(payload["lines"])
        hub.applied("agent:floor", number + 1)
        staged = time.perf_counter()
        await hub.commit()
        if number >= WARMUP:
            applied.append(staged - started)
            commits.append(time.perf_counter() - staged)
        subscriber.queue.clear()
        await trio.sleep(GAP)
    found["apply"] = _summary(applied)
    found["commit"] = _summary(commits)
    state = {"agent": hub.agent.to_state(), "snapshot": {"pad": "x" * 3000}}
    await hub.close()

    journal = SqliteBackend(directory / "journal").journal("floor")
    await journal.open()

    async def append(number: int) -> None:
        event = json.dumps({"type": "log", "line": message(number), "seq": number + 1})
        await journal.append(Batch([(number + 1, event)], {"agent:floor": number + 1}, state))

    found["append"] = await _timed(append)
    await journal.close()
    return found


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="trio-ws-floor-") as directory:
        print(json.dumps(trio.run(measure, Path(directory))), flush=True)


if __name__ == "__main__":
    main()
