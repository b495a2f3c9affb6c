"""The runs archive at size (issue 20 item 6): a long run on a SQLite journal, then the
runs API's reads of it, timed.

``python -m bench.runs [--events N]`` (1,000,000 by default; ``bench.run``'s ``runs``
scenario uses the plan's size). A hub on a real SQLite file records 200 short runs and
then one run of N events (AutoForge lines through the real pipeline, committed in
batches as the writer does), and the reads go through the same code the HTTP handlers
call (`state.run_events`): the runs list, the first page of a search for a common
word and for one line near the end (the worst case: the whole run is scanned), a
search with a regex, and seeks to moments spread over the run. Each read is timed
the median and the worst of a few tries; targets: search <= 200 ms, seek <= 100 ms,
runs list <= 50 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import regex
import trio

from trio_ws.journal.sqlite import SqliteBackend
from trio_ws.state.hub import ProjectHub
from trio_ws.state.run_events import EventFilter, events_page, find_run, list_runs, state_at
from trio_ws.state.runs import RunSummary

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "corpus" / "autoforge-run.txt"
SMALL_RUNS = 200
BATCH = 5000
"""Lines fed per commit (the writer commits what is staged; a busy producer stages thousands)."""
TRIES = 5
RARE = "the one rare needle line"


async def build(home: Path, events: int) -> tuple[ProjectHub, float]:
    """The journal: SMALL_RUNS short runs, then one of about ``events`` events (the
    corpus over and over: its agents start and finish, as a real run's do, and one
    line near the end is unlike any other); seconds it took."""
    corpus = [line for line in CORPUS.read_text("utf-8").splitlines() if line.strip()]
    hub = ProjectHub("bench", history=10_000)
    await hub.open(SqliteBackend(home).journal("bench"))
    started = time.perf_counter()
    for number in range(SMALL_RUNS):
        hub.set_status("running")
        hub.feed_lines([f"short run {number} line {n}" for n in range(5)])
        hub.set_status("stopped")
        await hub.commit()
    hub.set_status("running")
    fed = 0
    while hub.seq < events:
        lines = [corpus[(fed + n) % len(corpus)] for n in range(BATCH)]
        if hub.seq + 2 * BATCH >= events and RARE not in " ".join(lines):
            lines[BATCH // 2] = RARE
        hub.feed_lines(lines)
        fed += BATCH
        assert await hub.commit()
    hub.set_status("stopped")
    assert await hub.commit()
    return hub, time.perf_counter() - started


async def timed(read: Callable[[], Awaitable[object]]) -> dict[str, float]:
    seconds = []
    for _ in range(TRIES):
        start = time.perf_counter()
        await read()
        seconds.append(time.perf_counter() - start)
    return {
        "median_ms": round(statistics.median(seconds) * 1000, 2),
        "max_ms": round(max(seconds) * 1000, 2),
    }


async def measure(events: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="trio-ws-bench-runs-") as tmp:
        home = Path(tmp)
        hub, build_s = await build(home, events)
        journal = hub.journal
        assert journal is not None
        listed, _ = await list_runs(journal, hub.runs, None, 50)
        run = await find_run(journal, hub.runs, listed[0].id)
        assert run is not None and run.ended == "stopped"
        figures: dict[str, Any] = {
            "events": run.last_seq - run.first_seq + 1,
            "runs": len(listed),
            "build_s": round(build_s, 1),
            "journal_mib": round((home / "journal" / "bench.db").stat().st_size / 2**20, 1),
        }

        async def runs_list() -> None:
            page, _ = await list_runs(journal, hub.runs, None, 50)
            assert len(page) == 50

        async def search(selected: EventFilter, hits: int) -> None:
            page = await events_page(journal, run, selected, run.first_seq - 1, 200)
            assert len(page.texts) >= hits, (len(page.texts), page.partial)

        async def seek(at: int) -> None:
            replay = await state_at(journal, run, seq=at)
            assert replay.seq == at

        figures["runs_list"] = await timed(runs_list)
        figures["search_common"] = await timed(lambda: search(EventFilter(text="feature"), 200))
        figures["search_rare"] = await timed(lambda: search(EventFilter(text=RARE), 1))
        figures["search_regex"] = await timed(
            lambda: search(
                EventFilter(pattern=regex.compile(r"max concurrency: \d+ coding", regex.I)), 1
            )
        )
        spread = [run.first_seq + (run.last_seq - run.first_seq) * k // 7 for k in range(1, 7)]
        seeks = [await timed(lambda at=at: seek(at)) for at in spread]  # type: ignore[misc]
        figures["seek"] = {
            "median_ms": round(statistics.median(s["median_ms"] for s in seeks), 2),
            "max_ms": round(max(s["max_ms"] for s in seeks), 2),
        }
        figures["export_events_s"] = await _export_rate(journal, run)
        await hub.close()
    return figures


async def _export_rate(journal: Any, run: RunSummary) -> float:
    """Events per second of a whole export's journal reads."""
    from trio_ws.state.run_events import export_pages

    start = time.perf_counter()
    count = 0
    async for texts in export_pages(journal, run):
        count += len(texts)
    return round(count / (time.perf_counter() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    print(json.dumps(trio.run(measure, args.events), indent=2))


if __name__ == "__main__":
    main()
