"""The regression gate of a benchmark run (issue 22): `nox -s bench -- --quick` fails
when server CPU per delivery at 1,000 batched subscribers is over 1 µs, or when a
figure is worse than bench/baseline.json by more than the noise measured for it.

The figures are ratios to the python-websockets peer measured in the same run where
there is one (throughput, CPU per delivery, p99 latency): a busy machine slows both
servers alike, so a ratio moves far less between runs than either figure; idle memory
per subscriber is absolute (the peer is not run in quick mode). A figure's noise is
the spread of repeated runs of one commit, ``max / min - 1`` (worse direction), and
the gate allows ``TOLERANCE_FACTOR`` times that past the baseline's median.

``python -m bench.gate RESULTS.json...`` (repeated runs of one commit) writes the
baseline: each figure's median and spread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

CPU_LIMIT_US: Final = 1.0
"""Most server CPU per delivery at `CPU_SIZE` batched subscribers (the fan-out's cost)."""
CPU_SIZE: Final = 1000
TOLERANCE_FACTOR: Final = 1.5
"""How far past the baseline a figure may go, in multiples of its measured spread."""
MIN_TOLERANCE: Final = 0.10
"""Never tighter than this: three runs do not show every run's noise."""
BASELINE: Final = Path(__file__).with_name("baseline.json")

Better = Literal["higher", "lower"]
Results = dict[str, Any]


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    better: Better


def figures(results: Results) -> list[Figure]:
    """The gated figures a run measured (a scenario not run gives none)."""
    found: list[Figure] = []
    scenarios = results.get("scenarios", {})
    fanout = scenarios.get("fanout") or {}
    for ratio in fanout.get("ratios", []):
        size = ratio["subscribers"]
        if ratio.get("throughput") is not None:
            name = f"fan-out throughput / the peer's at {size:,}"
            found.append(Figure(name, ratio["throughput"], "higher"))
        if ratio.get("cpu_per_delivery") is not None:
            name = f"fan-out server CPU per delivery / the peer's at {size:,}"
            found.append(Figure(name, ratio["cpu_per_delivery"], "lower"))
    rate = scenarios.get("rate") or {}
    by = {(run["server"], run["subscribers"]): run for run in rate.get("per_event_runs", [])}
    for (server, size), ours in sorted(by.items()):
        peer = by.get(("peer", size))
        if server != "trio-ws" or peer is None:
            continue
        for key in ("p50_ms", "p99_ms"):
            mine, theirs = ours["latency"].get(key), peer["latency"].get(key)
            if mine is not None and theirs:
                name = f"one line per message: send→receive {key[:3]} / the peer's at {size:,}"
                found.append(Figure(name, round(mine / theirs, 3), "lower"))
    idle = (scenarios.get("idle") or {}).get("trio-ws")
    if idle is not None:
        name = f"idle KiB per subscriber at {idle['subscribers']:,}"
        found.append(Figure(name, idle["rss_per_subscriber_kib"], "lower"))
    found.extend(_watchers_figures(scenarios.get("watchers") or {}))
    return found


def _watchers_figures(watchers: Results) -> list[Figure]:
    """Item 2's figures at the run's watcher count, absolute (quick mode runs no peer
    there): event→receive p95 and p99, the slowest late joiner's snapshot and how many
    got none (baseline 0: any fails), the time all took to connect, and idle memory
    per watcher."""
    ours = watchers.get("trio-ws")
    if not ours or "subscribers" not in ours:
        return []
    size = f"{ours['subscribers']:,} watchers"
    latency = ours.get("latency_from_event_timestamp") or {}
    joiners = ours.get("late_joiner_snapshot_ms") or {}
    values = [
        (f"{size}: event→receive p95 ms", latency.get("p95_ms")),
        (f"{size}: event→receive p99 ms", latency.get("p99_ms")),
        (f"{size}: slowest late joiner's snapshot ms", joiners.get("max_ms")),
        (f"{size}: late joiners with no snapshot", ours.get("late_joiners_failed")),
        (f"{size}: seconds to connect all", ours.get("connect_all_s")),
        (f"{size}: idle KiB per watcher", ours.get("rss_per_subscriber_kib")),
    ]
    return [Figure(name, float(value), "lower") for name, value in values if value is not None]


def _run_at_size(results: Results) -> Results | None:
    fanout = results.get("scenarios", {}).get("fanout") or {}
    for run in fanout.get("runs", []):
        if run["server"] == "trio-ws" and run["subscribers"] == CPU_SIZE:
            return dict(run)
    return None


def cpu_at_size(results: Results) -> float | None:
    """trio-ws's server CPU µs per delivery at `CPU_SIZE` batched subscribers, if run and
    every subscriber kept up: when the subscriber processes (one shared core) fall
    behind, the server resyncs them and the figure no longer measures the fan-out."""
    run = _run_at_size(results)
    if run is None or run.get("missed") or run.get("resyncs"):
        return None
    value = run.get("server_cpu_us_per_delivery")
    return None if value is None else float(value)


def caveats(results: Results) -> list[str]:
    """What the gate could not judge in this run, and why."""
    run = _run_at_size(results)
    if run is not None and (run.get("missed") or run.get("resyncs")):
        return [
            f"server CPU per delivery at {CPU_SIZE:,} batched subscribers not judged: the "
            f"subscriber processes fell behind ({run.get('resyncs')} resyncs, "
            f"{run.get('missed'):,} events missed, client CPUs "
            f"{run.get('client_cpus_busy')} busy), so it measured the resyncs "
            f"({run.get('server_cpu_us_per_delivery')} µs)"
        ]
    return []


def check(results: Results, baseline: Results | None) -> list[str]:
    """One line per figure that fails the gate; [] when the run passes."""
    failures = []
    cpu = cpu_at_size(results)
    if cpu is not None and cpu > CPU_LIMIT_US:
        failures.append(
            f"server CPU per delivery at {CPU_SIZE:,} batched subscribers is {cpu:g} µs, "
            f"over the {CPU_LIMIT_US:g} µs limit"
        )
    if baseline is None or baseline.get("mode") != results.get("mode"):
        return failures
    known = baseline["figures"]
    for figure in figures(results):
        base = known.get(figure.name)
        if base is None:
            continue
        tolerance, allowed = limit(base)
        if figure.value > allowed if figure.better == "lower" else figure.value < allowed:
            failures.append(
                f"{figure.name} is {figure.value:g}, worse than the baseline's "
                f"{base['median']:g} by more than its noise (allowed: {allowed:.3g}, "
                f"{tolerance:.0%} = {TOLERANCE_FACTOR:g} x the spread of "
                f"{base['runs']} runs of one commit, at least {MIN_TOLERANCE:.0%})"
            )
    return failures


def limit(base: Results) -> tuple[float, float]:
    """A baseline figure's tolerance (a fraction of its median) and the worst value the
    gate allows: `TOLERANCE_FACTOR` times its spread past the median, at least
    `MIN_TOLERANCE`."""
    tolerance = max(MIN_TOLERANCE, TOLERANCE_FACTOR * base["spread"])
    if base["better"] == "lower":
        return tolerance, base["median"] * (1 + tolerance)
    return tolerance, base["median"] / (1 + tolerance)


def load(path: Path = BASELINE) -> Results | None:
    return json.loads(path.read_text()) if path.exists() else None


def baseline_of(runs: Sequence[Results]) -> Results:
    """Each figure's median over ``runs`` (one commit, run again and again) and its
    spread, max / min - 1."""
    values: dict[str, list[float]] = {}
    better: dict[str, Better] = {}
    for run in runs:
        for figure in figures(run):
            values.setdefault(figure.name, []).append(figure.value)
            better[figure.name] = figure.better
    modes = {run.get("mode") for run in runs}
    if len(modes) != 1:
        raise ValueError(f"runs of one mode only, not {sorted(map(str, modes))}")
    return {
        "mode": modes.pop(),
        "commits": sorted({str(run.get("machine", {}).get("trio_ws_commit")) for run in runs}),
        "started": [run.get("started") for run in runs],
        "figures": {
            name: {
                "median": round(statistics.median(found), 4),
                "spread": round(max(found) / min(found) - 1, 4) if min(found) > 0 else 0.0,
                "runs": len(found),
                "values": found,
                "better": better[name],
            }
            for name, found in sorted(values.items())
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gate", description=__doc__)
    parser.add_argument("results", nargs="+", type=Path, help="benchmarks.json of each run")
    parser.add_argument("--out", type=Path, default=BASELINE)
    args = parser.parse_args(argv)
    runs = [json.loads(path.read_text()) for path in args.results]
    args.out.write_text(json.dumps(baseline_of(runs), indent=2) + "\n")
    print(f"bench gate: wrote {args.out} from {len(runs)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
