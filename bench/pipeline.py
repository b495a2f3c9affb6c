"""What one line costs before fan-out: ``feed_line`` and encoding its events.

Run ``python -m bench.pipeline``. It prints µs per line (best of a few rounds,
so other load on the machine inflates nothing but the spread) for:

- the real-format transcripts (tests/corpus/*.txt) repeated, the lines every
  project sends all day, and the lines the throughput bench sends
  (``bench.wire.make_line``, 125 characters);
- 16 KiB worst-case lines: the redaction cases of ``bench.redaction`` and
  lines made to keep the trackers, the auth check and the status literals
  busy (many near-misses of their trigger words).

Columns: ``AgentPipeline.feed_line``; the same plus ``encode`` of every event
it emits (what the server pays per line at one subscriber, before fan-out);
``DevPipeline.feed_line``. The pipelines read the real wall clock, so
timestamp formatting costs what it costs in the server. Only public calls are
used, so the same script measures older code for comparison.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from bench.redaction import WORST_CASES as REDACTION_CASES
from bench.wire import make_line
from trio_ws.core.messages import AgentEvent
from trio_ws.core.pipeline import AgentPipeline, DevPipeline
from trio_ws.core.protocol import encode

DATA: Final = Path(__file__).resolve().parent.parent / "tests" / "corpus"
CORPUS_FILES: Final = ("autoforge-run.txt", "edge-cases.txt")
"""The transcripts played as one run, as they were when docs/benchmarks.md was measured:
a later file (an --auto-improve run) would turn every line after it into a plain log."""
CORPUS_REPEATS: Final = 50
WORST_REPEATS: Final = 20
ROUNDS: Final = 5
LINE: Final = 16 * 1024


def _fill(unit: str) -> str:
    return (unit * (LINE // len(unit) + 1))[:LINE]


TRACKER_CASES: Final = {
    "activity, no rule word": "[Feature #7] " + _fill("the quick brown fox jumps over "),
    "activity, late rule word": "[Feature #7] " + _fill("Tool: Tool [Tool: ") + " passed",
    "activity, many near misses": "[Feature #7] " + _fill("Readin Creatin Testin Erro "),
    "orchestrator near misses": _fill("Started Feature # At max Running All agents "),
    "auth near misses": _fill("not logged invalid expired sign in please "),
    "status literal near misses": _fill("All agents drained - Resuming from graceful "),
}


def per_line_us(function: Callable[[str], object], lines: Sequence[str]) -> float:
    """Best-of-``ROUNDS`` time of ``function`` over ``lines``, in µs per line."""
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for line in lines:
            function(line)
        best = min(best, time.perf_counter() - start)
    return best / len(lines) * 1e6


def agent_feed() -> Callable[[str], list[AgentEvent]]:
    """``feed_line`` of a fresh running agent pipeline."""
    pipeline = AgentPipeline()
    pipeline.set_status("running")
    return pipeline.feed_line


def agent_feed_encode() -> Callable[[str], object]:
    """``feed_line`` and then ``encode`` of each event, as the server does."""
    feed = agent_feed()

    def run(line: str) -> object:
        return [encode(event) for event in feed(line)]

    return run


def dev_feed() -> Callable[[str], object]:
    """``feed_line`` of a fresh running dev pipeline."""
    pipeline = DevPipeline()
    pipeline.set_status("running")
    return pipeline.feed_line


def main() -> None:
    corpus = [
        line
        for name in CORPUS_FILES
        for line in (DATA / name).read_text(encoding="utf-8").splitlines()
    ] * CORPUS_REPEATS
    print(f"{'µs per line':<40}{'agent':>10}{'+encode':>10}{'dev':>10}")
    bench_lines = [make_line(n, 1_764_090_245.123456 + n / 1e4, 125) for n in range(len(corpus))]
    rows = [
        (f"corpus ({len(corpus)} lines)", corpus),
        ("bench.wire lines (125 chars)", bench_lines),
    ]
    cases = {**REDACTION_CASES, **TRACKER_CASES}
    rows += [(f"16 KiB: {name}", [line] * WORST_REPEATS) for name, line in cases.items()]
    for name, lines in rows:
        times = [per_line_us(make(), lines) for make in (agent_feed, agent_feed_encode, dev_feed)]
        print(f"{name:<40}" + "".join(f"{t:>10.1f}" for t in times))


if __name__ == "__main__":
    main()
