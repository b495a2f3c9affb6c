"""The benchmark scenarios of issue 6; each returns plain JSON-ready figures.

A measured window is bounded by two marks. At each mark the orchestrator
tells every subscriber process to read its counters, reads the CPU time of
the server, the producer and every load generator from /proc, and the
machine's busy time from /proc/stat. Figures are differences between the
marks, so start-up, connecting and warm-up never count.
"""

from __future__ import annotations

import json
import os
import random
import resource
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import trio
from websockets.exceptions import WebSocketException
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from bench import harness
from bench import runs as bench_runs
from bench.harness import BenchError, Child, Kind, StalledSocket, Subscribers, Target, running
from bench.stats import (
    busy_cores,
    cpu_seconds,
    cpu_ticks,
    merge_samples,
    rss_bytes,
    summarize_ms,
    tcp_queues,
)

TAIL: Final = 5.0
"""The full-speed producer keeps going this long after the window should close: marks
are late when the subscriber processes are swamped (1,000 subscribers at full speed)."""
PRODUCER_SLACK: Final = 90.0
PRODUCER_TICK: Final = 0.05
"""At a steady rate the producer sends what is due every 50 ms (as `trio-ws run` did
until it learnt to send at once when idle)."""


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of one benchmark run."""

    mode: str
    fanout_sizes: tuple[int, ...]
    fanout_warmup: float
    fanout_seconds: float
    rate_subscribers: int
    rate: float
    rate_seconds: float
    idle_subscribers: int
    idle_peer: bool
    slow_readers: int
    slow_rate: float
    slow_seconds: float
    slow_repeats: int
    polling_many: int
    polling_seconds: float
    change_samples: int
    poll_interval: float = 1.0
    per_process: int = 250
    fanout_stride: int = 16
    idle_per_process: int = 1000
    batch: int = 64
    window: int = 50_000
    line_size: int = 125
    latency_rate: float = 100.0
    latency_seconds: float = 8.0
    rate_sizes: tuple[int, ...] = (1, 100, 1000)
    """Subscriber counts of the one-line-per-message runs, each against trio-ws and the peer."""
    journal_trials: int = 5
    """Trials of the journal budget's runs (memory and sqlite/normal, alternating)."""
    runs_events: int = 1_000_000
    """Events of the long run the runs scenario searches and seeks in (issue 20 item 6)."""
    watchers: int = 15_000
    """Subscribers of the one project in the watchers scenario (issue 22)."""
    watchers_rate: float = 10.0
    watchers_seconds: float = 20.0
    watchers_peer: bool = True
    late_joiners: int = 5
    """Late joiners timed one after another while the watchers are live."""
    rounds_sizes: tuple[int, ...] = (1, 100)
    """Subscriber counts of the `rate_rounds` scenario (issue 22 item 1)."""
    rounds: int = 3
    """Rounds of the `rate_rounds` scenario; each runs every server at every size once."""
    watchers_live: int = 300
    """Watchers that read live and sample latency; the others read once a second in
    slices (bench.loadgen), so the one client core keeps up with 150,000 frames/s.
    300 of 15,000, every 50th in each process's connecting order: spread over the
    server's fan-out order, and each records every event (60,000 samples in 20 s)."""


FULL: Final = Plan(
    mode="full",
    fanout_sizes=(1, 10, 100, 1000),
    fanout_warmup=2.0,
    fanout_seconds=8.0,
    rate_subscribers=1000,
    rate=100.0,
    rate_seconds=20.0,
    idle_subscribers=10_000,
    idle_peer=True,
    slow_readers=100,
    slow_rate=200.0,
    slow_seconds=10.0,
    slow_repeats=3,
    polling_many=1000,
    polling_seconds=10.0,
    change_samples=10,
)

QUICK: Final = Plan(
    mode="quick",
    fanout_sizes=(1, 10, 100, 1000),
    fanout_warmup=1.0,
    fanout_seconds=3.0,
    rate_subscribers=200,
    rate=100.0,
    rate_seconds=5.0,
    idle_subscribers=1000,
    idle_peer=False,
    slow_readers=100,
    slow_rate=200.0,
    slow_seconds=4.0,
    slow_repeats=1,
    polling_many=100,
    polling_seconds=4.0,
    change_samples=5,
    latency_seconds=4.0,
    rate_sizes=(50, 200),
    journal_trials=1,
    runs_events=50_000,
    watchers=2000,
    watchers_seconds=5.0,
    watchers_peer=False,
    late_joiners=3,
)


# -- marks and windows ---------------------------------------------------------------


@dataclass
class Mark:
    t: float
    server_cpu: float
    loadgen_cpu: list[float]
    producer_cpu: float | None
    machine: dict[int, tuple[int, int]]
    subscribers: list[dict[str, Any]]
    produced: dict[str, Any] | None


def mark(found: Target, subs: Subscribers, word: str, prod: Child | None = None) -> Mark:
    """Tell every subscriber process ``word`` (start/stop) and read every process's CPU."""
    for child in subs.children:
        child.send(word)
    if prod is not None:
        prod.send("mark")
    now = time.time()
    server_cpu = cpu_seconds(found.pid)
    loadgen_cpu = [cpu_seconds(pid) for pid in subs.pids]
    producer_cpu = cpu_seconds(prod.pid) if prod is not None else None
    machine = cpu_ticks()
    answers = [child.read(30.0) for child in subs.children]
    produced = prod.read(30.0) if prod is not None else None
    return Mark(now, server_cpu, loadgen_cpu, producer_cpu, machine, answers, produced)


def window_figures(
    found: Target, subscribers: int, m0: Mark, m1: Mark, reports: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Everything measured between two marks, plus the latency samples kept in between."""
    seconds = m1.t - m0.t

    def delta(key: str) -> int:
        return sum(b[key] - a[key] for a, b in zip(m0.subscribers, m1.subscribers, strict=True))

    deliveries = delta("deliveries")
    rate = sum(
        (b["deliveries"] - a["deliveries"]) / (b["t"] - a["t"])
        for a, b in zip(m0.subscribers, m1.subscribers, strict=True)
    )
    server_cpu = m1.server_cpu - m0.server_cpu
    loadgen = [b - a for a, b in zip(m0.loadgen_cpu, m1.loadgen_cpu, strict=True)]
    placement = harness.PLACEMENT
    samples, from_server = (
        merge_samples(
            (r["sampler"]["stride"], r["sampler"]["keys"], r["sampler"][column]) for r in reports
        )
        for column in ("values", "server_values")
    )
    figures: dict[str, Any] = {
        "server": found.kind,
        "subscribers": subscribers,
        "window_s": round(seconds, 3),
        "deliveries": deliveries,
        "deliveries_per_s": round(rate, 1),
        "server_cpu_s": round(server_cpu, 3),
        "server_cores": round(server_cpu / seconds, 3),
        "server_cpu_us_per_delivery": (
            round(server_cpu / deliveries * 1e6, 2) if deliveries else None
        ),
        "mean_event_bytes": round(delta("bytes") / deliveries, 1) if deliveries else None,
        "missed": delta("missed"),
        "disorder": delta("disorder"),
        "resyncs": delta("resyncs"),
        "latency": summarize_ms(samples),
        "latency_from_event_timestamp": summarize_ms(from_server),
        "latency_stride": max((r["sampler"]["stride"] for r in reports), default=1),
        "loadgen_processes": len(loadgen),
        "loadgen_cores_total": round(sum(loadgen) / seconds, 3),
        "loadgen_cores_max_process": round(max(loadgen, default=0.0) / seconds, 3),
        "server_cpus_busy": round(busy_cores(m0.machine, m1.machine, placement.server), 2),
        "client_cpus_busy": round(busy_cores(m0.machine, m1.machine, placement.clients), 2),
        "pinned": placement.enabled,
        "closes": _merged(r["closes"] for r in reports),
        "errors": [error for r in reports for error in r["errors"]][:5],
    }
    if m0.producer_cpu is not None and m1.producer_cpu is not None:
        figures["producer_cores"] = round((m1.producer_cpu - m0.producer_cpu) / seconds, 3)
    if m0.produced is not None and m1.produced is not None:
        events = m1.produced["acked"] - m0.produced["acked"]
        figures["events_per_s"] = round(events / (m1.produced["t"] - m0.produced["t"]), 1)
        expected = events * subscribers
        figures["delivered_fraction"] = round(deliveries / expected, 3) if expected else None
    return figures


def _merged(counters: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for counter in counters:
        for key, value in counter.items():
            total[key] = total.get(key, 0) + value
    return total


def trio_ws_counters(found: Target) -> dict[str, float]:
    """The hub's own counters from /metrics, to set beside what the clients counted."""
    if found.kind != "trio-ws":
        return {}
    names = {
        "deliveries": "trio_ws_deliveries_total",
        "fell_behind": "trio_ws_subscribers_fell_behind_total",
        "catch_ups": "trio_ws_catch_ups_total",
        "resyncs": "trio_ws_resyncs_total",
        "aborted": "trio_ws_subscribers_aborted_total",
        "commits": "trio_ws_journal_commit_seconds_count",
    }
    return {key: found.metric(name) for key, name in names.items()}


# -- fan-out at full speed -----------------------------------------------------------------


def fanout(plan: Plan, run_dir: Path) -> dict[str, Any]:
    """Full-speed fan-out against trio-ws and the peer, size by size, and their ratios."""
    runs = []
    for size in plan.fanout_sizes:
        for kind in ("trio-ws", "peer"):
            runs.append(fanout_one(kind, size, plan, run_dir / f"fanout-{kind}-{size}"))
    return {"runs": runs, "ratios": ratios(runs)}


def fanout_one(
    kind: Kind,
    size: int,
    plan: Plan,
    logs: Path,
    journal: harness.Journal = harness.DEFAULT_JOURNAL,
) -> dict[str, Any]:
    logs.mkdir(parents=True)
    # Marks take longer the more subscribers must answer them (a quick run at 1,000 on a
    # busy machine saw its producer end before the closing mark): a longer tail.
    duration = plan.fanout_warmup + plan.fanout_seconds + TAIL * (1 + size // 500)
    with ExitStack() as stack:
        found = stack.enter_context(harness.target(kind, logs / "server", logs, journal=journal))
        subs = stack.enter_context(
            harness.subscribers(found, size, plan.per_process, logs, stride=plan.fanout_stride)
        )
        subs.connect()
        with harness.producer(
            found,
            logs,
            duration=duration,
            batch=plan.batch,
            window=plan.window,
            line_size=plan.line_size,
        ) as prod:
            prod.read(harness.START_TIMEOUT)
            time.sleep(plan.fanout_warmup)
            m0 = mark(found, subs, "start", prod)
            time.sleep(plan.fanout_seconds)
            m1 = mark(found, subs, "stop", prod)
            done = prod.read(duration + PRODUCER_SLACK)
            prod.wait(harness.STOP_TIMEOUT)
        server_rss = rss_bytes(found.pid)
        counters = trio_ws_counters(found)
        reports = subs.report()
    figures = window_figures(found, size, m0, m1, reports)
    figures["server_rss_mib_end"] = round(server_rss / 2**20, 1)
    figures["producer"] = {
        key: done[key] for key in ("sent", "acked", "warnings", "longest_ack_wait_s")
    }
    figures["server_counters"] = counters
    return figures


def ratios(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """trio-ws / peer for each size run against both, from this run's figures."""
    by = {(run["server"], run["subscribers"]): run for run in runs}
    found = []
    for (server, size), ours in sorted(by.items()):
        peer = by.get(("peer", size))
        if server != "trio-ws" or peer is None:
            continue
        found.append(
            {
                "subscribers": size,
                "throughput": _ratio(ours["deliveries_per_s"], peer["deliveries_per_s"]),
                "cpu_per_delivery": _ratio(
                    ours["server_cpu_us_per_delivery"], peer["server_cpu_us_per_delivery"]
                ),
                "p99_latency": _ratio(ours["latency"].get("p99_ms"), peer["latency"].get("p99_ms")),
            }
        )
    return found


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or not theirs:
        return None
    return round(ours / theirs, 3)


# -- paced runs: a fixed number of events at a fixed rate --------------------------------


def paced(
    found: Target,
    subs: Subscribers,
    logs: Path,
    *,
    count: int,
    rate: float,
    tick: float = PRODUCER_TICK,
    while_producing: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Send ``count`` events at ``rate``/s, what is due every ``tick`` s in one message
    (rate 0: full speed); every subscriber must get every event."""
    m0 = mark(found, subs, "start")
    budget = (count / rate if rate else 10.0) + PRODUCER_SLACK
    batch = 256 if rate else 64
    with harness.producer(found, logs, count=count, rate=rate, tick=tick, batch=batch) as prod:
        prod.read(harness.START_TIMEOUT)
        deadline = time.monotonic() + budget
        while (line := prod.poll_line(0.5)) is None:
            if while_producing is not None:
                while_producing()
            if time.monotonic() > deadline:
                raise BenchError(f"the producer did not finish {count} events in {budget:g} s")
        done = json.loads(line)
        prod.wait(harness.STOP_TIMEOUT)
    drained = subs.broadcast(f"drain {done['acked']} 30", timeout=60.0)
    m1 = mark(found, subs, "stop")
    counters = trio_ws_counters(found)
    reports = subs.report()
    figures = window_figures(found, sum(subs.counts), m0, m1, reports)
    figures["events"] = done["sent"]
    figures["expected_deliveries"] = done["sent"] * sum(subs.counts)
    figures["drained"] = all(answer["ok"] for answer in drained)
    figures["producer_seconds"] = round(done["finished"] - done["started"], 3)
    figures["producer_tick_s"] = tick if rate else None
    figures["longest_ack_wait_s"] = done["longest_ack_wait_s"]
    figures["server_counters"] = counters
    return figures


def rate(plan: Plan, run_dir: Path) -> dict[str, Any]:
    """Many subscribers at a steady rate: the latency a dashboard sees, with the producer
    batching every 50 ms (trio-ws), and sending each line on its own (trio-ws and the
    peer, side by side, at each of ``rate_sizes``)."""
    runs = []
    for size in plan.rate_sizes:
        for kind in ("trio-ws", "peer"):
            logs = run_dir / f"rate-per-event-{kind}-{size}"
            runs.append(rate_one(plan, logs, 1 / plan.rate, kind=kind, size=size))
    largest = max(plan.rate_sizes)
    return {
        "batched": rate_one(plan, run_dir / "rate-batched", PRODUCER_TICK),
        "per_event": next(
            run for run in runs if run["server"] == "trio-ws" and run["subscribers"] == largest
        ),
        "per_event_runs": runs,
        "per_event_ratios": [
            {
                "subscribers": size,
                **{
                    key: _ratio(
                        ours[column].get("p99_ms"),
                        peer[column].get("p99_ms"),
                    )
                    for key, column in (
                        ("send_receive_p99", "latency"),
                        ("event_receive_p99", "latency_from_event_timestamp"),
                    )
                },
            }
            for size in plan.rate_sizes
            for ours in runs
            for peer in runs
            if ours["subscribers"] == peer["subscribers"] == size
            and ours["server"] == "trio-ws"
            and peer["server"] == "peer"
        ],
    }


def rate_one(
    plan: Plan,
    logs: Path,
    tick: float,
    journal: harness.Journal = harness.DEFAULT_JOURNAL,
    *,
    kind: Kind = "trio-ws",
    size: int | None = None,
) -> dict[str, Any]:
    logs.mkdir(parents=True)
    count = int(plan.rate * plan.rate_seconds)
    size = plan.rate_subscribers if size is None else size
    with ExitStack() as stack:
        found = stack.enter_context(harness.target(kind, logs / "server", logs, journal=journal))
        subs = stack.enter_context(harness.subscribers(found, size, plan.per_process, logs))
        connected = subs.connect()
        figures = paced(found, subs, logs, count=count, rate=plan.rate, tick=tick)
        if kind == "trio-ws":  # what each event waited for its commit, from the server
            journals = json.loads(found.get("/healthz")).get("journals", {})
            figures["journal_commit"] = journals.get(harness.PROJECT)
    figures["rate"] = plan.rate
    figures["connect_s"] = round(connected["seconds"], 3)
    return figures


BASELINE_ENV: Final = "BENCH_BASELINE"
"""A checkout (its top directory) whose trio_ws `rate_rounds` also runs, as ``baseline``."""


def rate_rounds(plan: Plan, run_dir: Path) -> dict[str, Any]:
    """One line per message at ``rate``/s for ``latency_seconds``, at each of
    ``rounds_sizes`` subscribers, trio-ws and the peer in alternating order, ``rounds``
    times: the narrow, repeatable form of `rate`'s per-event runs (issue 22 item 1).
    With BENCH_BASELINE set to another checkout, its trio-ws runs in the same rounds
    (before/after in one run)."""
    base = os.environ.get(BASELINE_ENV)
    servers: list[tuple[str, Kind, Path | None]] = [
        ("trio-ws", "trio-ws", None),
        ("peer", "peer", None),
    ]
    if base:
        servers.append(("baseline", "trio-ws", Path(base)))
    count = int(plan.rate * plan.latency_seconds)
    runs = []
    floors = []
    for round_ in range(plan.rounds):
        floors.append(floor(run_dir / f"rate-rounds-floor-{round_}"))
        print(f"bench: rate_rounds floor {json.dumps(floors[-1])}", flush=True)
        order = servers if round_ % 2 == 0 else servers[::-1]
        for size in plan.rounds_sizes:
            for name, kind, checkout in order:
                logs = run_dir / f"rate-rounds-{round_}-{name}-{size}"
                logs.mkdir(parents=True)
                with ExitStack() as stack:
                    found = stack.enter_context(
                        harness.target(kind, logs / "server", logs, checkout=checkout)
                    )
                    subs = stack.enter_context(
                        harness.subscribers(found, size, plan.per_process, logs)
                    )
                    subs.connect()
                    figures = paced(
                        found, subs, logs, count=count, rate=plan.rate, tick=1 / plan.rate
                    )
                event = figures["latency_from_event_timestamp"]
                run = {
                    "round": round_,
                    "server": name,
                    "subscribers": size,
                    "p50_ms": event.get("p50_ms"),
                    "p99_ms": event.get("p99_ms"),
                    "samples": event.get("count"),
                    "missed": figures["missed"],
                    "drained": figures["drained"],
                    "server_cpu_s": figures["server_cpu_s"],
                }
                print(f"bench: rate_rounds {json.dumps(run)}", flush=True)
                runs.append(run)
    return {
        "rate": plan.rate,
        "events": count,
        "baseline": base,
        "load_average": os.getloadavg(),
        "runs": runs,
        "floors": floors,
    }


FLOOR_TIMEOUT: Final = 120.0


def floor(logs: Path) -> dict[str, Any]:
    """`bench.floor` on the server's CPU: the least one committed line costs there."""
    logs.mkdir(parents=True)
    child = Child("floor", [sys.executable, "-m", "bench.floor"], logs, stdin=False)
    with running(child):
        harness.PLACEMENT.pin_server(child.pid)
        return child.read(FLOOR_TIMEOUT)


# -- what `trio-ws run` adds to a line's latency ------------------------------------------


def producer_latency(plan: Plan, run_dir: Path) -> dict[str, Any]:
    """One subscriber, lines at ``latency_rate``/s: printed by a child under `trio-ws run`
    (print->receive), then sent one per message by a raw producer websocket
    (send->receive); the difference is what `run` adds."""
    count = int(plan.latency_rate * plan.latency_seconds)
    found: dict[str, Any] = {"rate": plan.latency_rate, "lines": count}
    for how in ("run", "raw"):
        found[how] = producer_latency_one(plan, run_dir / f"producer-latency-{how}", how, count)
    for key in ("p50_ms", "p99_ms"):
        run, raw = found["run"]["latency"].get(key), found["raw"]["latency"].get(key)
        added = round(run - raw, 3) if run is not None and raw is not None else None
        found[f"added_{key}"] = added
    return found


def producer_latency_one(plan: Plan, logs: Path, how: str, count: int) -> dict[str, Any]:
    logs.mkdir(parents=True)
    with ExitStack() as stack:
        found = stack.enter_context(harness.target("trio-ws", logs / "server", logs))
        subs = stack.enter_context(harness.subscribers(found, 1, plan.per_process, logs))
        subs.connect()
        if how == "raw":
            tick = 1 / plan.latency_rate
            return paced(found, subs, logs, count=count, rate=plan.latency_rate, tick=tick)
        return run_paced(found, subs, logs, count=count, rate=plan.latency_rate, plan=plan)


def run_paced(
    found: Target, subs: Subscribers, logs: Path, *, count: int, rate: float, plan: Plan
) -> dict[str, Any]:
    """`trio-ws run --quiet -- python -m bench.paced_child`: ``count`` lines at ``rate``/s,
    each stamped when printed; every subscriber must get every line."""
    if found.home is None:
        raise BenchError("trio-ws run needs the server's home (a trio-ws target)")
    child = [sys.executable, "-m", "bench.paced_child", str(count), str(rate), str(plan.line_size)]
    argv = [harness.trio_ws_command(), "run", harness.PROJECT, "--home", str(found.home)]
    argv += ["--server", f"http://127.0.0.1:{found.port}", "--quiet", "--", *child]
    m0 = mark(found, subs, "start")
    with running(Child("run", argv, logs, stdin=False)) as run:
        code = run.wait(count / rate + PRODUCER_SLACK)
        if code != 0:
            raise run.failure(f"exited with status {code}")
    drained = subs.broadcast(f"drain {count} 30", timeout=60.0)
    m1 = mark(found, subs, "stop")
    counters = trio_ws_counters(found)
    reports = subs.report()
    figures = window_figures(found, sum(subs.counts), m0, m1, reports)
    figures["events"] = count
    figures["expected_deliveries"] = count * sum(subs.counts)
    figures["drained"] = all(answer["ok"] for answer in drained)
    figures["server_counters"] = counters
    return figures


# -- idle scale ------------------------------------------------------------------------------


def open_watcher(found: Target) -> ClientConnection:
    """One ordinary websockets subscriber, read synchronously by the orchestrator."""
    ws = sync_connect(found.subscribe_url, compression=None, open_timeout=10.0)
    hello = json.loads(ws.recv(timeout=10.0))
    if hello.get("type") != "hello":
        raise BenchError(f"{found.kind}: expected hello, got {hello}")
    return ws


def idle(plan: Plan, run_dir: Path) -> dict[str, Any]:
    """RSS per idle subscriber and time to connect them all, for trio-ws (and the peer)."""
    found: dict[str, Any] = {"limits": file_limits()}
    kinds: tuple[Kind, ...] = ("trio-ws", "peer") if plan.idle_peer else ("trio-ws",)
    for kind in kinds:
        found[kind] = idle_one(kind, plan, run_dir / f"idle-{kind}")
    return found


def file_limits() -> dict[str, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {"nofile_soft": soft, "nofile_hard": hard}


def idle_one(kind: Kind, plan: Plan, logs: Path) -> dict[str, Any]:
    logs.mkdir(parents=True)
    size = plan.idle_subscribers
    with ExitStack() as stack:
        found = stack.enter_context(harness.target(kind, logs / "server", logs))
        watcher = open_watcher(found)
        stack.callback(watcher.close)
        time.sleep(1.0)
        before = rss_bytes(found.pid)
        subs = stack.enter_context(
            harness.subscribers(found, size, plan.idle_per_process, logs, tag="idle")
        )
        connected = subs.connect()
        time.sleep(2.0)
        after = rss_bytes(found.pid)
        server_count = None
        if kind == "trio-ws":
            server_count = json.loads(found.get("/healthz"))["subscribers"]
        idle_cpu_before = cpu_seconds(found.pid)
        time.sleep(2.0)
        idle_cpu = (cpu_seconds(found.pid) - idle_cpu_before) / 2.0
        subs.report()
    return {
        "server": kind,
        "subscribers": connected["connected"],
        "server_reports_subscribers": server_count,
        "connect_all_s": round(connected["seconds"], 3),
        "connects_per_s": round(connected["connected"] / connected["seconds"], 1),
        "rss_before_mib": round(before / 2**20, 1),
        "rss_after_mib": round(after / 2**20, 1),
        "rss_per_subscriber_kib": round((after - before) / connected["connected"] / 1024, 2),
        "idle_server_cores": round(idle_cpu, 3),
        "loadgen_processes": len(subs.children),
    }


# -- many watchers of one project ------------------------------------------------------------


def watchers(plan: Plan, run_dir: Path) -> dict[str, Any]:
    """``plan.watchers`` subscribers of one project (one core for the server, the
    clients spread over processes of ``idle_per_process``): how long they all take to
    connect and how many are refused, the server's memory per idle watcher, latency at
    ``watchers_rate`` events/s one per message, and late joiners' snapshots meanwhile."""
    kinds: tuple[Kind, ...] = ("trio-ws", "peer") if plan.watchers_peer else ("trio-ws",)
    found: dict[str, Any] = {"limits": file_limits(), "rate": plan.watchers_rate}
    for kind in kinds:
        try:
            found[kind] = watchers_one(kind, plan, run_dir / f"watchers-{kind}")
        except BenchError as exc:
            if kind == "trio-ws":
                raise
            # The peer at 15,000 on a busy machine can starve its own ack task past the
            # producer's 60 s: say so beside trio-ws's figures instead of losing them.
            found[kind] = {"error": str(exc).splitlines()[0]}
    return found


def watchers_one(kind: Kind, plan: Plan, logs: Path) -> dict[str, Any]:
    logs.mkdir(parents=True)
    size = plan.watchers
    count = int(plan.watchers_rate * plan.watchers_seconds)
    joins: list[dict[str, Any]] = []
    with ExitStack() as stack:
        found = stack.enter_context(harness.target(kind, logs / "server", logs))
        watcher = open_watcher(found)
        stack.callback(watcher.close)
        time.sleep(1.0)
        before = rss_bytes(found.pid)
        subs = stack.enter_context(
            harness.subscribers(
                found, size, plan.idle_per_process, logs, tag="w", live=plan.watchers_live
            )
        )
        answers = subs.broadcast("connect", timeout=300.0)
        connected = sum(answer["connected"] for answer in answers)
        refused = sum(answer["failed"] for answer in answers)
        connect_s = max(a["finished"] for a in answers) - min(a["started"] for a in answers)
        time.sleep(2.0)
        after = rss_bytes(found.pid)
        server_count = None
        if kind == "trio-ws":
            server_count = json.loads(found.get("/healthz"))["subscribers"]

        started = time.monotonic()
        spacing = plan.watchers_seconds / (plan.late_joiners + 1)

        def late_join() -> None:
            """One late joiner every ``spacing`` s, while the events flow."""
            due = (time.monotonic() - started) // spacing
            if kind == "trio-ws" and len(joins) < min(due, plan.late_joiners):
                joins.append(late_joiner(found))

        figures = paced(
            found,
            subs,
            logs,
            count=count,
            rate=plan.watchers_rate,
            tick=1 / plan.watchers_rate,
            while_producing=late_join,
        )
        end_rss = rss_bytes(found.pid)
    figures.update(
        {
            "connected": connected,
            "refused": refused,
            "refusal_errors": [e for a in answers for e in a["errors"]][:3],
            "server_reports_subscribers": server_count,
            "connect_all_s": round(connect_s, 3),
            "connects_per_s": round(connected / connect_s, 1) if connect_s else None,
            "rss_before_mib": round(before / 2**20, 1),
            "rss_idle_mib": round(after / 2**20, 1),
            "rss_end_mib": round(end_rss / 2**20, 1),
            "rss_per_subscriber_kib": round((after - before) / max(1, connected) / 1024, 2),
            "late_joiners": joins,
            "late_joiner_snapshot_ms": summarize_ms(
                j["snapshot_s"] for j in joins if j["snapshot_s"] is not None
            ),
            "late_joiners_failed": sum(1 for j in joins if j["snapshot_s"] is None),
            "loadgen_processes": len(subs.children),
            "live_watchers": sum(answer["live"] for answer in answers),
            "sliced_watchers": sum(answer["sliced"] for answer in answers),
        }
    )
    return figures


LATE_JOINER_BACKLOG: Final = 100
"""What the dashboard asks for: its snapshot comes with the last 100 log lines."""


LATE_JOINER_TIMEOUT: Final = 30.0


def late_joiner(found: Target) -> dict[str, Any]:
    """A dashboard joining now: seconds from opening its connection to the last message
    of its snapshot (the last one before the first live event), and what it was sent.
    One that gets no hello or no live event within LATE_JOINER_TIMEOUT says so (and
    counts as over any target) instead of ending the scenario."""
    url = found.subscribe_url.replace("backlog=0", f"backlog={LATE_JOINER_BACKLOG}")
    started = time.monotonic()
    deadline = started + LATE_JOINER_TIMEOUT
    messages = 0
    try:
        with sync_connect(url, compression=None, open_timeout=LATE_JOINER_TIMEOUT) as ws:
            hello = json.loads(ws.recv(timeout=max(0.0, deadline - time.monotonic())))
            if hello.get("type") != "hello":
                raise BenchError(f"{found.kind}: a late joiner got {hello}, not hello")
            last = time.monotonic()
            messages = 1
            while True:
                message = json.loads(ws.recv(timeout=max(0.0, deadline - time.monotonic())))
                seq = message.get("seq")
                if isinstance(seq, int) and seq > hello["seq"]:
                    break  # live: the snapshot ended with the message before
                last = time.monotonic()
                messages += 1
    except (TimeoutError, OSError, WebSocketException) as exc:
        return {
            "snapshot_s": None,
            "messages": messages,
            "error": f"{type(exc).__name__}: {exc} after {time.monotonic() - started:.1f} s",
        }
    return {"snapshot_s": last - started, "messages": messages, "head": hello["seq"]}


# -- one subscriber that never reads --------------------------------------------------------


def slow(plan: Plan, run_dir: Path) -> dict[str, Any]:
    """Readers' latency without and with one stalled subscriber, alternated to see the
    noise between runs, and what the stalled one holds."""
    runs = []
    for repeat in range(plan.slow_repeats):
        for stalled in (False, True):
            logs = run_dir / f"slow-{repeat}-{'with' if stalled else 'without'}"
            runs.append({"stalled": stalled, **slow_one(plan, logs, stalled)})
    return {"readers": plan.slow_readers, "rate": plan.slow_rate, "runs": runs}


def slow_one(plan: Plan, logs: Path, stalled: bool) -> dict[str, Any]:
    logs.mkdir(parents=True)
    count = int(plan.slow_rate * plan.slow_seconds)
    queue_samples: list[dict[str, float]] = []
    with ExitStack() as stack:
        found = stack.enter_context(harness.target("trio-ws", logs / "server", logs))
        subs = stack.enter_context(
            harness.subscribers(found, plan.slow_readers, plan.per_process, logs)
        )
        subs.connect()
        sampler = None
        if stalled:
            sock = StalledSocket(found.port)
            stack.callback(sock.close)
            started = time.monotonic()

            def sample() -> None:
                server = tcp_queues(found.port, sock.local_port)
                client = tcp_queues(sock.local_port, found.port)
                queue_samples.append(
                    {
                        "t": round(time.monotonic() - started, 2),
                        "server_send_queue": server.tx,
                        "client_receive_queue": client.rx,
                        "server_rss": rss_bytes(found.pid),
                    }
                )

            sampler = sample
        figures = paced(
            found, subs, logs, count=count, rate=plan.slow_rate, while_producing=sampler
        )
        if sampler is not None:
            sampler()
    if stalled:
        figures["held"] = stalled_figures(queue_samples)
    return figures


def stalled_figures(samples: Sequence[dict[str, float]]) -> dict[str, Any]:
    """How much the stalled subscriber holds, and whether that stopped growing."""
    if not samples:
        raise BenchError("no queue samples of the stalled subscriber were taken")
    held = [s["server_send_queue"] + s["client_receive_queue"] for s in samples]
    half = len(held) // 2
    first, second = max(held[: max(1, half)]), max(held[max(1, half) :] or held)
    return {
        "samples": list(samples),
        "kernel_bytes_max": max(held),
        "kernel_bytes_end": held[-1],
        "server_send_queue_end": samples[-1]["server_send_queue"],
        "client_receive_queue_end": samples[-1]["client_receive_queue"],
        "grew_in_second_half_bytes": max(0.0, second - first),
        "server_rss_growth_mib": round(
            (samples[-1]["server_rss"] - samples[0]["server_rss"]) / 2**20, 2
        ),
    }


# -- polling ------------------------------------------------------------------------------------


def polling(plan: Plan, run_dir: Path) -> dict[str, Any]:
    """Database reads per second and commit-to-event time with one subscriber, then with
    many."""
    logs = run_dir / "polling"
    logs.mkdir(parents=True)
    with ExitStack() as stack:
        found = stack.enter_context(
            harness.target("trio-ws", logs / "server", logs, poll_interval=plan.poll_interval)
        )
        watcher = open_watcher(found)
        stack.callback(watcher.close)
        reads = {"1": reads_per_second(found, plan.polling_seconds)}
        changes = {"1": change_to_event(found, watcher, plan, first_feature=1)}
        many = stack.enter_context(
            harness.subscribers(found, plan.polling_many - 1, plan.idle_per_process, logs)
        )
        many.connect()
        reads[str(plan.polling_many)] = reads_per_second(found, plan.polling_seconds)
        changes[str(plan.polling_many)] = change_to_event(
            found, watcher, plan, first_feature=plan.change_samples + 1
        )
        errors = found.metric("trio_ws_progress_read_errors_total")
        many.report()
    return {
        "poll_interval_s": plan.poll_interval,
        "reads_per_s": reads,
        "read_errors": errors,
        "change_to_event": changes,
    }


def reads_per_second(found: Target, seconds: float) -> float:
    name = "trio_ws_poll_duration_seconds_count"
    time.sleep(1.0)  # a poll loop that just started (or a new subscriber's prime) settles
    start, t0 = found.metric(name), time.monotonic()
    time.sleep(seconds)
    end, t1 = found.metric(name), time.monotonic()
    return round((end - start) / (t1 - t0), 3)


def change_to_event(
    found: Target, ws: ClientConnection, plan: Plan, first_feature: int
) -> dict[str, Any]:
    """Commit a change, then time the ``progress`` event that reports it; repeated.

    Feature N is the Nth to pass, so the event that reports it has
    ``passing == N``; ``ws`` has read every earlier one.
    """
    assert found.project_dir is not None
    chooser = random.Random(first_feature)
    latencies = []
    for feature in range(first_feature, first_feature + plan.change_samples):
        time.sleep(chooser.uniform(0.05, plan.poll_interval))  # any phase of the poll loop
        committed = harness.pass_feature(found.project_dir, feature)
        _await_progress(ws, lambda message: bool(message["passing"] == feature))  # noqa: B023
        latencies.append(time.time() - committed)
    summary: dict[str, Any] = dict(summarize_ms(latencies))
    summary["samples_ms"] = [round(value * 1000, 1) for value in latencies]
    return summary


def _await_progress(
    ws: ClientConnection, wanted: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        message = json.loads(ws.recv(timeout=left))
        if message.get("type") == "progress" and wanted(message):
            return dict(message)
    raise BenchError(f"no matching progress event within {timeout:g} s")


# -- journals side by side -----------------------------------------------------------------

JOURNALS: Final[tuple[harness.Journal, ...]] = (
    ("memory", "normal"),
    ("sqlite", "normal"),
    ("sqlite", "full"),
)


def journal(plan: Plan, run_dir: Path) -> dict[str, Any]:
    """What committing before fan-out costs (STATE.md 3.1): server CPU per delivery at
    the smallest and largest fan-out size, and latency at the steady rate, for each
    ``--journal``/``--sync``. Then ``plan.journal_trials - 1`` more trials of what the
    budget compares (memory against sqlite/normal, 1 subscriber and the steady rates),
    the two alternating, because identical runs on a shared machine differ by more
    than the budget."""
    runs = []
    every_size = (plan.fanout_sizes[0], plan.fanout_sizes[-1])
    for trial in range(1, plan.journal_trials + 1):
        sizes = every_size if trial == 1 else every_size[:1]
        for backend, sync in JOURNALS if trial == 1 else JOURNALS[:2]:
            name = f"{trial}-{backend}-{sync}"
            fanouts = [
                fanout_one(
                    "trio-ws",
                    size,
                    plan,
                    run_dir / f"journal-{name}-fanout-{size}",
                    (backend, sync),
                )
                for size in sizes
            ]
            rates = {
                how: rate_one(plan, run_dir / f"journal-{name}-rate-{how}", tick, (backend, sync))
                for how, tick in (("batched", PRODUCER_TICK), ("per_event", 1 / plan.rate))
            }
            runs.append(
                {"trial": trial, "journal": backend, "sync": sync, "fanout": fanouts, "rate": rates}
            )
    return {"runs": runs}


# -- several nodes over one Redis ------------------------------------------------------------


def nodes(plan: Plan, run_dir: Path) -> dict[str, Any]:
    """Two `serve --broker` nodes over one local Redis at the steady rate, producer on
    A and the subscribers split over A and B, beside one sqlite node with as many
    subscribers in the same run: what the broker adds to a delivery."""
    single = rate_one(plan, run_dir / "nodes-single-sqlite", PRODUCER_TICK, ("sqlite", "normal"))
    logs = run_dir / "nodes-two"
    logs.mkdir(parents=True)
    count = int(plan.rate * plan.rate_seconds)
    on_a_count = plan.rate_subscribers // 2
    with ExitStack() as stack:
        broker = stack.enter_context(harness.redis_server(logs))
        node_a = stack.enter_context(
            harness.target("trio-ws", logs / "node-a", logs, broker=broker)
        )
        node_b = stack.enter_context(
            harness.target("trio-ws", logs / "node-b", logs, broker=broker)
        )
        on_a = stack.enter_context(
            harness.subscribers(node_a, on_a_count, plan.per_process, logs, tag="a")
        )
        on_b = stack.enter_context(
            harness.subscribers(
                node_b, plan.rate_subscribers - on_a_count, plan.per_process, logs, tag="b"
            )
        )
        subs = Subscribers(
            on_a.children + on_b.children, on_a.results + on_b.results, on_a.counts + on_b.counts
        )
        connected = subs.connect()
        figures = paced(node_a, subs, logs, count=count, rate=plan.rate, tick=PRODUCER_TICK)
    figures["rate"] = plan.rate
    figures["connect_s"] = round(connected["seconds"], 3)
    for node, reports in (("a", subs.reports[: len(on_a.children)]),
                          ("b", subs.reports[len(on_a.children) :])):  # fmt: skip
        samples = merge_samples(
            (r["sampler"]["stride"], r["sampler"]["keys"], r["sampler"]["server_values"])
            for r in reports
        )
        figures[f"latency_from_event_timestamp_on_{node}"] = summarize_ms(samples)
    return {"single_sqlite": single, "two_nodes": figures}


def runs(plan: Plan, run_dir: Path) -> dict[str, Any]:
    """The runs archive at size (`bench.runs`): a long run on SQLite, then the runs list,
    the first page of searches and seeks into it, timed in this process."""
    return trio.run(bench_runs.measure, plan.runs_events)


SCENARIOS: Final[dict[str, Callable[[Plan, Path], dict[str, Any]]]] = {
    "fanout": fanout,
    "rate": rate,
    "rate_rounds": rate_rounds,
    "idle": idle,
    "slow": slow,
    "polling": polling,
    "producer_latency": producer_latency,
    "journal": journal,
    "nodes": nodes,
    "runs": runs,
    "watchers": watchers,
}


ON_REQUEST: Final = frozenset({"rate_rounds"})
"""Scenarios only `--only` runs: narrow checks whose figures are not the page's."""


def plan_json(plan: Plan) -> dict[str, Any]:
    return asdict(plan)
