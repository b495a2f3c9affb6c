"""Journal append throughput through the async interface (STATE.md 4).

``python -m bench.journal`` appends ~200-byte events to a fresh journal per
configuration, one batch at a time, each batch awaited (as the hub's writer
task does), and prints events/s, appends/s and commit latency percentiles for
batch sizes 1, 64 and 512 with ``synchronous`` NORMAL and FULL (and the
memory backend for reference). ``--events N`` sets the events per run;
``--redis URL`` adds the redis backend against that server (its ``bench`` project
is removed before each run; the journal of every other project is left alone).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import trio

from trio_ws.journal.interface import Batch, Journal
from trio_ws.journal.memory import MemoryBackend
from trio_ws.journal.redis import open_redis_backend
from trio_ws.journal.sqlite import SqliteBackend, Synchronous

BATCHES = (1, 64, 512)
EVENT_BYTES = 200


def event(seq: int) -> str:
    text = f'{{"type":"log","seq":{seq},"line":"'
    return text + "x" * (EVENT_BYTES - len(text) - 2) + '"}'


async def run(journal: Journal, batch: int, total: int) -> tuple[float, float, list[float]]:
    """Events/s and appends/s over ``total`` events, and each append's latency."""
    await journal.open()
    head, latencies = 0, []
    start = time.perf_counter()
    while head < total:
        events = [(head + n, event(head + n)) for n in range(1, batch + 1)]
        began = time.perf_counter()
        await journal.append(Batch(events, {"producer": head + batch}, {"head": head + batch}))
        latencies.append(time.perf_counter() - began)
        head += batch
    elapsed = time.perf_counter() - start
    await journal.close()
    return head / elapsed, len(latencies) / elapsed, latencies


def report(backend: str, sync: str, batch: int, result: tuple[float, float, list[float]]) -> None:
    per_s, appends_s, latencies = result
    cuts = statistics.quantiles(latencies, n=100)
    print(
        f"{backend:<8} {sync:<6} {batch:>5} {per_s:>10,.0f} {appends_s:>10,.0f}"
        f" {cuts[49] * 1e3:>7.2f} {cuts[98] * 1e3:>7.2f}",
        flush=True,
    )


async def main(total: int, redis_url: str | None) -> None:
    print(
        f"{'backend':<8} {'sync':<6} {'batch':>5} {'events/s':>10} {'appends/s':>10}"
        f" {'p50 ms':>7} {'p99 ms':>7}"
    )
    configs: list[tuple[str, Synchronous | None]] = [
        ("sqlite", "NORMAL"),
        ("sqlite", "FULL"),
        ("memory", None),
    ]
    for backend, sync in configs:
        for batch in BATCHES:
            with tempfile.TemporaryDirectory() as home:
                if sync is None:
                    journal: Journal = MemoryBackend().journal("bench")
                else:
                    journal = SqliteBackend(Path(home), synchronous=sync).journal("bench")
                result = await run(journal, batch, max(total, batch * 20))
            report(backend, sync or "-", batch, result)
    if redis_url is None:
        return
    async with open_redis_backend(redis_url) as redis:
        for batch in BATCHES:
            await redis.remove("bench")
            result = await run(redis.journal("bench"), batch, max(total, batch * 20))
            report("redis", "-", batch, result)
        await redis.remove("bench")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events per run")
    parser.add_argument("--redis", metavar="URL", help="also the redis backend at URL")
    args = parser.parse_args()
    trio.run(main, args.events, args.redis)
