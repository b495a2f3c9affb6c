"""What the line pipeline costs per line: ``redact`` and ``AgentPipeline.feed_line``.

Run ``python -m bench.redaction``. It times, in µs per line (best of a few
rounds, so other load on the machine inflates nothing but the spread):

- the real-format transcript (tests/corpus/autoforge-run.txt) repeated, the
  lines every project sends all day;
- 16 KiB worst-case lines, built to make each kind of pattern do the most
  work (many failing starts, many matches, a line the pre-check cannot skip);
- one 10 MB line through the pipeline, which the cap must make cost what a
  16 KiB line does (LINES.md 1.1).

Only ``redact(line)`` and ``AgentPipeline(clock).feed_line(line)`` are used,
so the same script measures older code for comparison.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from trio_ws.core.pipeline import AgentPipeline
from trio_ws.core.security import redact

CORPUS: Final = Path(__file__).resolve().parent.parent / "tests" / "corpus" / "autoforge-run.txt"
CORPUS_REPEATS: Final = 50
WORST_REPEATS: Final = 20
ROUNDS: Final = 5
LINE: Final = 16 * 1024


def _fill(unit: str) -> str:
    return (unit * (LINE // len(unit) + 1))[:LINE]


WORST_CASES: Final = {
    "plain (no trigger)": "x" * LINE,
    "prose with triggers": _fill("the key token pass secret auth of the run "),
    "many named values": _fill("password=hunter2 "),
    "json named values": _fill('"api_key": "v", '),
    "failing name prefixes": _fill("aws_secret"),
    "short sk- keys": _fill("sk-" + "a" * 19 + " "),
    "long word, no name": "a_" * (LINE // 2),
    "url starts without @": _fill("a://b:c"),
    "bearer words": _fill("Bearer "),
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


def pipeline_feed() -> Callable[[str], object]:
    """``feed_line`` of a fresh running pipeline with a fixed clock."""
    pipeline = AgentPipeline(lambda: 0.0)
    pipeline.set_status("running")
    return pipeline.feed_line


def main() -> None:
    corpus = CORPUS.read_text(encoding="utf-8").splitlines() * CORPUS_REPEATS
    print(f"{'lines':<34}{'redact µs/line':>16}{'pipeline µs/line':>18}")
    rows = [(f"corpus ({len(corpus)} lines)", corpus)]
    rows += [(f"16 KiB: {name}", [line] * WORST_REPEATS) for name, line in WORST_CASES.items()]
    for name, lines in rows:
        redact_us, pipeline_us = per_line_us(redact, lines), per_line_us(pipeline_feed(), lines)
        print(f"{name:<34}{redact_us:>16.1f}{pipeline_us:>18.1f}")
    big = "password=hunter2 " * 620_000
    start = time.perf_counter()
    pipeline_feed()(big)
    took = (time.perf_counter() - start) * 1e6
    print(f"{f'one {len(big) / 1e6:.1f} MB line':<34}{'':>16}{took:>18.1f}")


if __name__ == "__main__":
    main()
