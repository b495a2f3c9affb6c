"""docs/benchmarks.md from the figures of one run (and docs/benchmarks.json beside it).

Everything in the page is computed from the JSON, so
``python -m bench.report docs/benchmarks.json`` rewrites the page from the
committed figures. Targets (issue 6) are judged here, each against the
figure it names, and a scenario that failed or did not run says so.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench import gate

CPU_TARGET_US: Final = 10.0
THROUGHPUT_TARGET: Final = 1.0
RATE_P99_TARGET_MS: Final = 25.0
IDLE_TARGET_KIB: Final = 16.0
SINGLE_THROUGHPUT_TARGET: Final = 1.5
"""Throughput at 1 subscriber, as a multiple of the peer's in the same run (issue 11)."""
STALL_TARGET_MS: Final = 1.0
POLL_SLACK_MS: Final = 50.0
ADDED_P50_TARGET_MS: Final = 2.0
"""What `trio-ws run` may add to a line's p50 at 100 lines/s (issue 11)."""
WATCHERS_P95_MS: Final = 250.0
WATCHERS_P99_MS: Final = 500.0
WATCHERS_CONNECT_S: Final = 15.0
WATCHERS_IDLE_KIB: Final = 12.0
LATE_JOINER_MS: Final = 100.0
"""Issue 22: 15,000 watchers of one project on one core."""
READS_GROWTH: Final = 1.1
"""Reads/s with many subscribers may exceed reads/s with one by this factor (timer jitter)."""

Results = dict[str, Any]


@dataclass(frozen=True)
class Target:
    target: str
    trio_ws: str
    peer: str
    met: bool | None  # None: not measured in this run
    inconclusive: bool = False  # measured, but identical runs differ by more than the target


def write(results: Results, out: Path) -> list[Path]:
    """Write benchmarks.json and benchmarks.md into ``out``; returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    data, page = out / "benchmarks.json", out / "benchmarks.md"
    data.write_text(json.dumps(results, indent=2) + "\n")
    page.write_text(render(results))
    return [page, data]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _num(value: float | None, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}{unit}"


def _scenario(results: Results, name: str) -> Results | None:
    found = results.get("scenarios", {}).get(name)
    if not isinstance(found, dict) or "error" in found:
        return None
    return found


def _missing(results: Results, name: str) -> str:
    found = results.get("scenarios", {}).get(name)
    if isinstance(found, dict) and "error" in found:
        return "failed: see below"
    return "not run"


# -- targets -----------------------------------------------------------------------------


def targets(results: Results) -> list[Target]:
    return [
        *_fanout_targets(results),
        _single_target(results),
        *_rate_targets(results),
        *_per_event_targets(results),
        *_durable_latency_targets(results),
        _idle_target(results),
        _idle_peer_target(results),
        *_slow_targets(results),
        *_polling_targets(results),
        _producer_latency_target(results),
        *_watchers_targets(results),
    ]


def _watchers_targets(results: Results) -> list[Target]:
    """Issue 22: every watcher of one project connected, live and cheap at idle."""
    found = _scenario(results, "watchers")
    if found is None:
        why = _missing(results, "watchers")
        return [Target("15,000 watchers of one project on one core", why, "", None)]
    ours, peer = found["trio-ws"], found.get("peer")
    if peer is not None and "error" in peer:
        peer = None
    size, rate = ours["subscribers"], found["rate"]
    event = ours["latency_from_event_timestamp"]
    complete = ours["deliveries"] == ours["expected_deliveries"]
    incomplete = "" if complete else " (deliveries incomplete)"

    def peer_of(key: str, unit: str, digits: int = 1) -> str:
        if peer is None:
            return ""
        value = peer["latency_from_event_timestamp"].get(key) if key.endswith("_ms") else None
        return _num(peer.get(key) if value is None else value, unit, digits)

    joined = ours["late_joiner_snapshot_ms"].get("max_ms")
    failed = ours.get("late_joiners_failed", 0)
    return [
        Target(
            f"{size:,} watchers connected in <= {WATCHERS_CONNECT_S:g} s, none refused",
            f"{_num(ours['connect_all_s'], ' s', 1)}, {ours['refused']} refused",
            ""
            if peer is None
            else f"{_num(peer['connect_all_s'], ' s', 1)}, {peer['refused']} refused",
            ours["connect_all_s"] <= WATCHERS_CONNECT_S and ours["refused"] == 0,
        ),
        Target(
            f"event→receive p95 <= {WATCHERS_P95_MS:g} ms at {size:,} watchers x {rate:g}/s",
            _num(event.get("p95_ms"), " ms", 1) + incomplete,
            peer_of("p95_ms", " ms"),
            event.get("p95_ms", 1e9) <= WATCHERS_P95_MS and complete,
        ),
        Target(
            f"event→receive p99 <= {WATCHERS_P99_MS:g} ms at {size:,} watchers x {rate:g}/s",
            _num(event.get("p99_ms"), " ms", 1) + incomplete,
            peer_of("p99_ms", " ms"),
            event.get("p99_ms", 1e9) <= WATCHERS_P99_MS and complete,
        ),
        Target(
            f"idle RSS <= {WATCHERS_IDLE_KIB:g} KiB per watcher at {size:,}",
            _num(ours["rss_per_subscriber_kib"], " KiB", 1),
            peer_of("rss_per_subscriber_kib", " KiB"),
            ours["rss_per_subscriber_kib"] <= WATCHERS_IDLE_KIB,
        ),
        Target(
            f"a late joiner's snapshot in <= {LATE_JOINER_MS:g} ms while {size:,} are live",
            f"max {_num(joined, ' ms', 1)} of {ours['late_joiner_snapshot_ms'].get('count', 0)}"
            + (f", {failed} got none within 30 s" if failed else ""),
            "",
            joined is not None and joined <= LATE_JOINER_MS and not failed,
        ),
    ]


def _producer_latency_target(results: Results) -> Target:
    found = _scenario(results, "producer_latency")
    name = f"`trio-ws run` adds p50 <= {ADDED_P50_TARGET_MS:g} ms at 100 lines/s"
    if found is None:
        return Target(name, _missing(results, "producer_latency"), "", None)
    added = found.get("added_p50_ms")
    name = f"`trio-ws run` adds p50 <= {ADDED_P50_TARGET_MS:g} ms at {found['rate']:g} lines/s"
    run, raw = found["run"]["latency"], found["raw"]["latency"]
    complete = all(
        found[how]["deliveries"] == found[how]["expected_deliveries"] for how in ("run", "raw")
    )
    shown = (
        f"{_num(added, ' ms')} (print→receive p50 {_num(run.get('p50_ms'), ' ms')}; "
        f"raw producer send→receive p50 {_num(raw.get('p50_ms'), ' ms')})"
    )
    return Target(
        name,
        shown + ("" if complete else " (deliveries incomplete)"),
        "",
        added is not None and added <= ADDED_P50_TARGET_MS and complete,
    )


def _largest(runs: Sequence[Results], server: str) -> Results | None:
    mine = [run for run in runs if run["server"] == server]
    return max(mine, key=lambda run: run["subscribers"]) if mine else None


def _fanout_targets(results: Results) -> list[Target]:
    fanout = _scenario(results, "fanout")
    if fanout is None:
        why = _missing(results, "fanout")
        return [
            Target(
                f"server CPU per delivery <= {CPU_TARGET_US:g} µs at 1000 subscribers",
                why,
                "",
                None,
            ),
            Target("throughput >= 1.0x the peer's at 1000 subscribers", why, "", None),
        ]
    ours, peer = _largest(fanout["runs"], "trio-ws"), _largest(fanout["runs"], "peer")
    assert ours is not None
    size = ours["subscribers"]
    cpu = ours["server_cpu_us_per_delivery"]
    peer_cpu = peer["server_cpu_us_per_delivery"] if peer else None
    ratio = next((r["throughput"] for r in fanout["ratios"] if r["subscribers"] == size), None)
    return [
        Target(
            f"server CPU per delivery <= {CPU_TARGET_US:g} µs at {size:,} subscribers",
            _num(cpu, " µs"),
            _num(peer_cpu, " µs"),
            None if cpu is None else cpu <= CPU_TARGET_US,
        ),
        Target(
            f"throughput >= {THROUGHPUT_TARGET:g}x the peer's at {size:,} subscribers",
            f"{_num(ratio, 'x')} ({_num(ours['deliveries_per_s'], '/s', 0)})",
            _num(peer["deliveries_per_s"], "/s", 0) if peer else "—",
            None if ratio is None else ratio >= THROUGHPUT_TARGET,
        ),
    ]


RATE_RUNS: Final = (
    ("batched", "producer batching every 50 ms"),
    ("per_event", "one event per producer message"),
)


def _rate_targets(results: Results) -> list[Target]:
    found = _scenario(results, "rate")
    if found is None:
        name = f"p99 <= {RATE_P99_TARGET_MS:g} ms at 1000 subscribers x 100 events/s"
        return [Target(name, _missing(results, "rate"), "", None)]
    judged = []
    for key, how in RATE_RUNS:
        run = found[key]
        p99 = run["latency"].get("p99_ms")
        complete = run["deliveries"] == run["expected_deliveries"]
        judged.append(
            Target(
                f"p99 <= {RATE_P99_TARGET_MS:g} ms at {run['subscribers']:,} subscribers x "
                f"{run['rate']:g} events/s, {how}",
                _num(p99, " ms") + ("" if complete else " (deliveries incomplete)"),
                "",
                p99 is not None and p99 <= RATE_P99_TARGET_MS and complete,
            )
        )
    return judged


def _single_target(results: Results) -> Target:
    """Issue 11: per-line cost, as throughput at 1 subscriber against the peer's."""
    name = f"throughput >= {SINGLE_THROUGHPUT_TARGET:g}x the peer's at 1 subscriber (journal on)"
    fanout = _scenario(results, "fanout")
    if fanout is None:
        return Target(name, _missing(results, "fanout"), "", None)
    by = {(run["server"], run["subscribers"]): run for run in fanout["runs"]}
    ours, peer = by.get(("trio-ws", 1)), by.get(("peer", 1))
    if ours is None or peer is None:
        return Target(name, "not run at 1 subscriber", "", None)
    ratio = _ratio_of(ours["deliveries_per_s"], peer["deliveries_per_s"])
    return Target(
        name,
        f"{_num(ratio, 'x')} ({_num(ours['deliveries_per_s'], '/s', 0)}, "
        f"{_num(ours['server_cpu_us_per_delivery'], ' µs')}/line)",
        f"{_num(peer['deliveries_per_s'], '/s', 0)} "
        f"({_num(peer['server_cpu_us_per_delivery'], ' µs')}/line)",
        None if ratio is None else ratio >= SINGLE_THROUGHPUT_TARGET,
    )


def _ratio_of(ours: float | None, theirs: float | None) -> float | None:
    return None if ours is None or not theirs else ours / theirs


def _per_event_targets(results: Results) -> list[Target]:
    """Issue 11: one line per producer message, trio-ws and the peer in the same run."""
    found = _scenario(results, "rate")
    if found is None or "per_event_runs" not in found:
        name = "one line per message at 1,000 subscribers, against the peer"
        return [Target(name, _missing(results, "rate"), "", None)]
    by = {(run["server"], run["subscribers"]): run for run in found["per_event_runs"]}
    size = max(size for _, size in by)
    ours, peer = by[("trio-ws", size)], by.get(("peer", size))
    complete = ours["deliveries"] == ours["expected_deliveries"]
    incomplete = "" if complete else " (deliveries incomplete)"
    where = f"at {size:,} subscribers x {ours['rate']:g} lines/s, one line per message"
    event_p99 = ours["latency_from_event_timestamp"].get("p99_ms")
    peer_event = peer["latency_from_event_timestamp"].get("p99_ms") if peer else None
    send_p99 = ours["latency"].get("p99_ms")
    peer_send = peer["latency"].get("p99_ms") if peer else None
    ratio = _ratio_of(send_p99, peer_send)
    return [
        Target(
            f"event→receive p99 <= {RATE_P99_TARGET_MS:g} ms {where}",
            _num(event_p99, " ms") + incomplete,
            _num(peer_event, " ms"),
            event_p99 is not None and event_p99 <= RATE_P99_TARGET_MS and complete,
        ),
        Target(
            f"send→receive p99 <= the peer's {where}",
            f"{_num(send_p99, ' ms')} ({_num(ratio, 'x')} the peer's){incomplete}",
            _num(peer_send, " ms"),
            None if ratio is None else ratio <= 1.0 and complete,
        ),
    ]


DURABLE_SIZES: Final = (1, 100)
"""Issue 22: subscriber counts at which a committed event must reach them no later than
the peer's (which commits nothing) does."""


def _durable_latency_targets(results: Results) -> list[Target]:
    """Issue 22: one line per message, sqlite journal: event→receive p50 and p99 no
    worse than the peer's in the same run, at 1 and at 100 subscribers."""
    found = _scenario(results, "rate")
    runs = found.get("per_event_runs", []) if found else []
    by = {(run["server"], run["subscribers"]): run for run in runs}
    made = []
    for size in DURABLE_SIZES:
        name = f"event→receive p50 and p99 <= the peer's at {size:,} x 100 lines/s, sqlite"
        ours, peer = by.get(("trio-ws", size)), by.get(("peer", size))
        if ours is None or peer is None:
            why = _missing(results, "rate") if found is None else f"{size:,} not run"
            made.append(Target(name, why, "", None))
            continue
        mine, theirs = ours["latency_from_event_timestamp"], peer["latency_from_event_timestamp"]
        pairs = [(mine.get(key), theirs.get(key)) for key in ("p50_ms", "p99_ms")]
        made.append(
            Target(
                f"event→receive p50 and p99 <= the peer's at {size:,} x {ours['rate']:g} "
                "lines/s, one per message, sqlite",
                " / ".join(_num(a, " ms") for a, _ in pairs),
                " / ".join(_num(b, " ms") for _, b in pairs),
                all(a is not None and b is not None and a <= b for a, b in pairs),
            )
        )
    return made


def _idle_peer_target(results: Results) -> Target:
    """Issue 11: idle memory per subscriber no more than the peer's, same run."""
    found = _scenario(results, "idle")
    name = "idle RSS per subscriber <= the peer's at 10,000"
    if found is None:
        return Target(name, _missing(results, "idle"), "", None)
    ours, peer = found["trio-ws"], found.get("peer")
    if peer is None:
        return Target(name, "the peer was not run", "", None)
    ratio = _ratio_of(ours["rss_per_subscriber_kib"], peer["rss_per_subscriber_kib"])
    return Target(
        f"idle RSS per subscriber <= the peer's at {ours['subscribers']:,}",
        f"{_num(ours['rss_per_subscriber_kib'], ' KiB', 1)} ({_num(ratio, 'x')} the peer's)",
        _num(peer["rss_per_subscriber_kib"], " KiB", 1),
        None if ratio is None else ratio <= 1.0,
    )


def _idle_target(results: Results) -> Target:
    found = _scenario(results, "idle")
    if found is None:
        name = f"idle RSS <= {IDLE_TARGET_KIB:g} KiB per subscriber at 10,000"
        return Target(name, _missing(results, "idle"), "", None)
    ours = found["trio-ws"]
    peer = found.get("peer")
    return Target(
        f"idle RSS <= {IDLE_TARGET_KIB:g} KiB per subscriber at {ours['subscribers']:,}",
        _num(ours["rss_per_subscriber_kib"], " KiB", 1),
        _num(peer["rss_per_subscriber_kib"], " KiB", 1) if peer else "",
        ours["rss_per_subscriber_kib"] <= IDLE_TARGET_KIB,
    )


def _slow_targets(results: Results) -> list[Target]:
    found = _scenario(results, "slow")
    if found is None:
        why = _missing(results, "slow")
        name = f"a stalled subscriber moves the others' p99 by <= {STALL_TARGET_MS:g} ms"
        return [Target(name, why, "", None), Target("it holds a bounded buffer", why, "", None)]
    without, with_stall = _p99s(found, False), _p99s(found, True)
    moved = stall_shift_ms(found)
    noise = max(_spread(without), _spread(with_stall))
    stalled = [run["held"] for run in found["runs"] if run["stalled"]]
    growth = max(entry["grew_in_second_half_bytes"] for entry in stalled)
    held = max(entry["kernel_bytes_max"] for entry in stalled)
    return [
        Target(
            f"a stalled subscriber moves the others' p99 by <= {STALL_TARGET_MS:g} ms",
            f"{_num(moved, ' ms')} (p99 without: {_ms_list(without)}; with: "
            f"{_ms_list(with_stall)}; identical runs differ by up to {noise:,.1f} ms)",
            "",
            None if moved is None else moved <= STALL_TARGET_MS,
            inconclusive=noise > STALL_TARGET_MS,
        ),
        Target(
            "a stalled subscriber holds a bounded buffer",
            f"{held / 1024:,.0f} KiB in kernel queues at most; grew "
            f"{growth / 1024:,.0f} KiB in the second half of the run",
            "",
            growth == 0,
        ),
    ]


def _p99s(found: Results, stalled: bool) -> list[float]:
    return [
        float(run["latency"]["p99_ms"])
        for run in found["runs"]
        if run["stalled"] is stalled and "p99_ms" in run["latency"]
    ]


def _spread(values: Sequence[float]) -> float:
    return max(values) - min(values) if values else 0.0


def _ms_list(values: Sequence[float]) -> str:
    return ", ".join(f"{value:,.1f}" for value in values) + " ms" if values else "—"


def stall_shift_ms(found: Results) -> float | None:
    """Mean readers' p99 with the stalled subscriber minus the mean without it."""
    without, with_stall = _p99s(found, False), _p99s(found, True)
    if not without or not with_stall:
        return None
    return round(sum(with_stall) / len(with_stall) - sum(without) / len(without), 3)


def _polling_targets(results: Results) -> list[Target]:
    found = _scenario(results, "polling")
    if found is None:
        why = _missing(results, "polling")
        return [
            Target("database reads do not grow with subscribers", why, "", None),
            Target("change-to-event <= poll interval + 50 ms", why, "", None),
        ]
    reads = sorted(found["reads_per_s"].items(), key=lambda item: int(item[0]))
    (few, few_rate), (many, many_rate) = reads[0], reads[-1]
    limit_ms = found["poll_interval_s"] * 1000 + POLL_SLACK_MS
    changes = sorted(found["change_to_event"].items(), key=lambda item: int(item[0]))
    worst = max(float(change["max_ms"]) for _, change in changes)
    shown = "; ".join(
        f"with {int(size):,}: max {_num(change['max_ms'], ' ms', 1)}, "
        f"p50 {_num(change['p50_ms'], ' ms', 1)}"
        for size, change in changes
    )
    return [
        Target(
            "database reads do not grow with subscribers",
            f"{few_rate:g}/s with {int(few):,}, {many_rate:g}/s with {int(many):,}",
            "",
            many_rate <= few_rate * READS_GROWTH,
        ),
        Target(
            f"change-to-event <= poll interval + {POLL_SLACK_MS:g} ms ({limit_ms:,.0f} ms)",
            shown,
            "",
            worst <= limit_ms,
        ),
    ]


# -- the page ------------------------------------------------------------------------------


def limit_of(run: Results) -> str:
    """What set the pace of a window, as far as CPU use shows."""
    found = []
    if run["server_cores"] >= 0.9:
        found.append("server CPU")
    if run["client_cpus_busy"] >= 0.9 * run.get("client_cpus", 1):
        found.append("client CPU")
    return ", ".join(found) or "—"


def _latency(summary: Results, key: str) -> float | None:
    value = summary.get(key)
    return float(value) if isinstance(value, (int, float)) else None


LIMITS = """

What limits the targets that are not met (profiles as of the end of issue 11: our own
websocket connection, direct fan-out writes, bursts taken in whole, orjson encoding, the
row-per-commit sqlite journal):

- **p99 at 1,000 subscribers x 100 lines/s, one line per message.** Each event is one
  loopback `write` per subscriber: a py-spy profile of the server in this run's
  conditions (25 s, sqlite/normal) has 64% of its samples on the `os.write` in
  `WebSocket.send_now`, the rest is Python around it; 7 µs of server CPU per delivery,
  the server core 70% busy, so an event reaches the last of 1,000 subscribers ~7 ms
  after the first and a following event often waits for that. The subscriber processes
  share the other core with the producer and are ~90% busy reading 100,000 messages a
  second. The peer's `broadcast()` meets the same limits in the same run (its p99 is in
  the table, and its server core is busier). *send→receive* is no worse than the
  peer's. Coalescing needs events to wait for each other, which costs the latency it
  would save at this rate. With a producer batching every 50 ms the producer alone
  holds a line up to 50 ms, so that row cannot meet 25 ms by construction.
- **Throughput at 1 subscriber (1.5x the peer's).** The peer does no parsing,
  redaction, history or journal. trio-ws with the sqlite journal spends ~9 µs of server
  CPU per line: the agent pipeline (redaction, trackers, timestamp) 3.6 µs
  (`python -m bench.pipeline`), encoding 0.3-0.5, numbering, history, snapshot and the
  commit's bookkeeping ~1.5, the producer's frames and JSON ~0.5, the subscriber's write
  ~0.7, the journal ~1.5 (its worker thread 0.8 µs; the rest is the event loop's side of
  the commit and GIL hand-offs with the worker). With `--journal memory` the same server
  runs at 6.5-7.5 µs per line, about 1.4-1.6x the peer (section "Journals side by
  side"): the journal's durability is what is left between the sqlite figure and the
  target.
- **Full-speed fan-out at 100 and 1,000 subscribers**: the server accepts events
  faster than the subscriber processes (one shared CPU) can read them, so subscribers
  fall behind the held history and are resynced (*missed*, *resyncs*): by the protocol
  a subscriber that cannot keep up skips to a fresh snapshot; the peer never drops
  because it never bounds a subscriber's buffer.
- **A stalled subscriber's effect on the others' p99** is below the run-to-run noise of
  this shared 2-core machine; the test alternates runs so the noise is visible.
- **event→receive p50/p99 no worse than the peer's at 1 and 100 subscribers, one line
  per message, sqlite (issue 22).** Commit-then-fan-out puts the commit on every event's
  path, and the peer commits nothing and stamps its events just before it sends them.
  Perf counters around each step of a served project (1 subscriber x 100 lines/s, at
  the end of issue 22) put a line's arrival to its fan-out at ~730 µs on this busy
  machine: reading and applying the producer's message ~100 µs, the writer's wake-up
  ~50, the commit's preparation ~40, the hand-off to the journal's thread ~150, the
  SQLite transaction ~160 (32 µs when run back to back: a commit every 10 ms runs with
  cold caches), the way back to the event loop ~100, the fan-out ~45. Both hand-offs are
  context switches on the one core the server is pinned to, where the worker can run
  only once the event loop sleeps. Issue 22 took out what was Python's: `to_thread`'s
  thread cache, limiter and scheduler passes (a long-lived thread per journal: about
  half the round trip), the commit lock's checkpoint when free, and `json.dumps` of the
  state (orjson, 36 to 10 µs); what is left is the operating system's. At 100
  subscribers our cheaper write per subscriber (one prebuilt frame, ~5 µs against the
  peer's ~8-10) makes up for most of it and send→receive is ahead of the peer's.
- **15,000 watchers of one project (issue 22).** The server's one core limits this
  row. Each event is one `write` per watcher, a system call that on loopback also runs
  the receiving side's TCP: about 6-10 µs of the server's CPU with Python's share, so a
  walk over 15,000 is about 100 ms and 10 single events a second would need about the
  whole core. So a walk commits what was staged after every 256 watchers and hands it,
  with what it carries, to those it has not reached yet (one write each); the ones it
  passed get it in the next walk. An event reaches every watcher within about one walk,
  and a late joiner's handshake waits for a chunk, not a walk. The liveness probe
  looks at 512 sessions per scheduler pass, about once a second, so pings go out as
  each watcher falls due instead of 7,500 at once. The core is also shared with the
  rest of the machine: compare server CPUs busy with server cores. The client measures 300 live
  readers (spread over the fan-out order) and lets the rest read once a second in
  slices, so its one core is no longer the limit. Connecting all is server CPU too:
  upgrade, hello and snapshot, ~0.5 ms per watcher, once the registry read is shared.
  Idle memory per watcher is Python's: tracemalloc on the server puts ~10 KiB of it in the
  objects and coroutine frames each connection holds for its life (wsproto's
  connection ~1.7 KiB, two trio locks ~0.6, a chain of ~10 awaiting frames ~2.5), the
  rest is the allocator's."""


def render(results: Results) -> str:
    client_cpus = results.get("machine", {}).get("client_cpus") or 1
    parts = [_header(results), _machine(results), _targets_section(results)]
    parts.append(_fanout(results, client_cpus))
    parts.append(_rate(results))
    parts.append(_rate_rounds(results))
    parts.append(_idle(results))
    parts.append(_slow(results))
    parts.append(_polling(results))
    parts.append(_producer_latency(results))
    parts.append(_journal(results))
    parts.append(_nodes(results))
    parts.append(_runs(results))
    parts.append(_watchers(results))
    parts.append(_gate(results))
    parts.append(_errors(results))
    parts.append(METHOD)
    return "\n\n".join(part for part in parts if part) + "\n"


def _header(results: Results) -> str:
    mode = results.get("mode", "?")
    lines = [
        "# Benchmarks",
        "",
        f"Measured {results.get('started', '?')} in a **{mode}** run that took "
        f"{results.get('duration_s', 0):,.0f} s, with",
        "",
        f"    {results.get('command', '?')}",
        "",
        "Rerun with `nox -s bench` (all scenarios at full size, writes this page and "
        "[benchmarks.json](benchmarks.json)), `nox -s bench -- --quick` (CI-sized, writes "
        "build/bench/) or `nox -s bench -- --only fanout` (one scenario). "
        "`--only rate_rounds` is the narrow check of one line per message at 1 and 100 "
        "subscribers in alternating rounds (not part of a full run's page; "
        "`BENCH_BASELINE=DIR` adds another checkout's trio-ws to the same rounds).",
    ]
    if mode != "full":
        lines += ["", "**Not a full run**: sizes are smaller than the targets name."]
    for later in results.get("remeasured", []):
        lines += [
            "",
            f"**Re-measured** {later['started']} at {later['commit']}, full size, with "
            f"`{later['command']}`: the sections {', '.join(later['scenarios'])} (and their "
            "targets); every other figure is from the run above.",
        ]
    return "\n".join(lines)


def _machine(results: Results) -> str:
    found = results.get("machine", {})
    rows = [
        ("CPU", f"{found.get('cpu_model')} ({found.get('cpus')} cores)"),
        ("memory", f"{found.get('memory_gib')} GiB"),
        ("OS", f"{found.get('os')} (kernel {found.get('kernel')})"),
        ("Python", found.get("python")),
        (
            "trio / trio-websocket / websockets",
            f"{found.get('trio')} / {found.get('trio_websocket')} / {found.get('websockets')}",
        ),
        ("trio-ws checkout", found.get("trio_ws_commit")),
        ("CPU placement", found.get("placement")),
        ("open-file limit (raised to the hard limit)", found.get("nofile_limit")),
    ]
    return "## Machine\n\n" + table(("", ""), rows)


def _targets_section(results: Results) -> str:
    rows = [
        (t.target, t.trio_ws, t.peer or "", "inconclusive: noise" if t.inconclusive else t.met)
        for t in targets(results)
    ]
    return "## Targets\n\n" + table(("target", "trio-ws", "peer", "met"), rows) + LIMITS


def _fanout(results: Results, client_cpus: int) -> str:
    found = _scenario(results, "fanout")
    if found is None:
        return f"## Fan-out at full speed\n\n{_missing(results, 'fanout')}."
    throughput_headers = (
        "subscribers", "server", "events/s", "deliveries/s", "delivered",
        "server CPU µs/delivery", "server cores", "client CPUs busy",
        "loadgen cores (busiest)", "limit",
    )  # fmt: skip
    latency_headers = (
        "subscribers", "server", "send→receive p50 ms", "p99 ms", "event→receive p50 ms",
        "p99 ms", "missed", "resyncs", "longest ack wait s",
    )  # fmt: skip
    throughput, latency = [], []
    for run in found["runs"]:
        run = {**run, "client_cpus": client_cpus}
        throughput.append(
            (
                run["subscribers"],
                run["server"],
                run.get("events_per_s"),
                run["deliveries_per_s"],
                run.get("delivered_fraction"),
                run["server_cpu_us_per_delivery"],
                run["server_cores"],
                f"{_cell(run['client_cpus_busy'])} of {client_cpus}",
                f"{_cell(run['loadgen_cores_total'])} ({_cell(run['loadgen_cores_max_process'])})",
                limit_of(run),
            )
        )
        from_event = run["latency_from_event_timestamp"]
        latency.append(
            (
                run["subscribers"],
                run["server"],
                _latency(run["latency"], "p50_ms"),
                _latency(run["latency"], "p99_ms"),
                _latency(from_event, "p50_ms"),
                _latency(from_event, "p99_ms"),
                run["missed"],
                run["resyncs"],
                run["producer"]["longest_ack_wait_s"],
            )
        )
    ratio_rows = [
        (r["subscribers"], r["throughput"], r["cpu_per_delivery"], r["p99_latency"])
        for r in found["ratios"]
    ]
    plan = results["plan"]
    sizes = {run["mean_event_bytes"] for run in found["runs"] if run["mean_event_bytes"]}
    size_text = " to ".join(f"{size:g}" for size in (min(sizes), max(sizes))) if sizes else "?"
    return "\n\n".join(
        [
            "## Fan-out at full speed",
            "One project. The producer sends 64-line batches through the publish endpoint as "
            "fast as the server acknowledges them: it keeps about 0.3 s of the server's own "
            f"acknowledged rate in flight (at most {plan['window']:,} items). Every subscriber "
            f"counts each `log` event it receives. Window {plan['fanout_seconds']:g} s after "
            f"{plan['fanout_warmup']:g} s of warm-up; events are {size_text} bytes of JSON. "
            "*delivered* is deliveries / (events x subscribers) in the window (above 1: "
            "subscribers drained a backlog from before it; below 1: they fell behind).",
            table(throughput_headers, throughput),
            "Latency at full speed is mostly queueing: *send→receive* starts when the "
            "producer stamped the batch, so it includes the producer's in-flight window; "
            "*event→receive* starts at the server's own `timestamp` in the event (1 ms "
            "resolution), so it is the fan-out alone. *longest ack wait* is the longest the "
            "producer waited for an acknowledgement with items in flight: a stalled event "
            "loop shows there.",
            table(latency_headers, latency),
            "### trio-ws / peer, same run",
            table(
                ("subscribers", "throughput", "CPU per delivery", "p99 send→receive"), ratio_rows
            ),
        ]
    )


def _rate(results: Results) -> str:
    found = _scenario(results, "rate")
    if found is None:
        return f"## Steady rate\n\n{_missing(results, 'rate')}."
    headers = (
        "producer", "subscribers", "events/s", "deliveries", "send→receive p50 ms", "p99 ms",
        "max ms", "event→receive p50 ms", "p99 ms", "server cores", "CPU µs/delivery",
        "longest ack wait s",
    )  # fmt: skip
    rows = []
    runs = [(how, found[key]) for key, how in RATE_RUNS[:1]]
    runs += [
        (f"{RATE_RUNS[1][1]} ({run['server']})", run)
        for run in found.get("per_event_runs", [found[RATE_RUNS[1][0]]])
    ]
    for how, run in runs:
        latency, from_event = run["latency"], run["latency_from_event_timestamp"]
        rows.append(
            (
                how,
                run["subscribers"],
                run["rate"],
                f"{run['deliveries']:,} of {run['expected_deliveries']:,}",
                latency.get("p50_ms"),
                latency.get("p99_ms"),
                latency.get("max_ms"),
                from_event.get("p50_ms"),
                from_event.get("p99_ms"),
                run["server_cores"],
                run["server_cpu_us_per_delivery"],
                run["longest_ack_wait_s"],
            )
        )
    text = (
        "Every delivery is sampled. *send→receive* runs from the producer's send to the "
        "subscriber's receive; *event→receive* from the server's `timestamp` in the event, "
        "so the difference is time the producer's messages waited before the server read "
        "them."
    )
    return "## Steady rate\n\n" + table(headers, rows) + "\n\n" + text


def _idle(results: Results) -> str:
    found = _scenario(results, "idle")
    if found is None:
        return f"## Idle subscribers\n\n{_missing(results, 'idle')}."
    rows = []
    for kind in ("trio-ws", "peer"):
        run = found.get(kind)
        if run is None:
            continue
        rows.append(
            (
                kind,
                run["subscribers"],
                run["rss_before_mib"],
                run["rss_after_mib"],
                run["rss_per_subscriber_kib"],
                run["connect_all_s"],
                run["connects_per_s"],
                run["idle_server_cores"],
            )
        )
    headers = (
        "server",
        "subscribers",
        "RSS before MiB",
        "RSS after MiB",
        "KiB per subscriber",
        "connect all s",
        "connects/s",
        "idle server cores",
    )
    limits = found["limits"]
    note = (
        f"Open-file limit {limits['nofile_soft']:,} (hard {limits['nofile_hard']:,}); each "
        "process raises its soft limit to the hard one."
    )
    return "## Idle subscribers\n\n" + table(headers, rows) + "\n\n" + note


def _watchers(results: Results) -> str:
    found = _scenario(results, "watchers")
    title = "## Many watchers of one project"
    if found is None:
        return f"{title}\n\n{_missing(results, 'watchers')}."
    rows = []
    for kind in ("trio-ws", "peer"):
        run = found.get(kind)
        if run is None or "error" in run:
            continue
        event = run["latency_from_event_timestamp"]
        rows.append(
            (
                kind,
                run["connected"],
                run["refused"],
                run["connect_all_s"],
                run["rss_per_subscriber_kib"],
                event.get("p50_ms"),
                event.get("p95_ms"),
                event.get("p99_ms"),
                run["latency"].get("p95_ms"),
                run["latency"].get("p99_ms"),
                run["server_cores"],
                run["server_cpu_us_per_delivery"],
                run["late_joiner_snapshot_ms"].get("max_ms"),
            )
        )
    headers = (
        "server", "watchers", "refused", "connect all s", "idle KiB per watcher",
        "event→receive p50 ms", "p95 ms", "p99 ms", "send→receive p95 ms", "p99 ms",
        "server cores", "server µs/delivery", "late joiner snapshot max ms",
    )  # fmt: skip
    ours = found.get("trio-ws") or {}
    live = ours.get("live_watchers")
    note = (
        f"One project, {found['rate']:g} events/s, one per producer message, the server on "
        "one core and the watchers spread over processes of up to 1,000 connections on the "
        "other. A late joiner (backlog 100, as the dashboard asks) is timed from opening "
        "its connection to the last message of its snapshot, while the events flow; the "
        "peer has no snapshot. Event→receive starts at the event's timestamp, which "
        "each server writes when it takes the event in: a server that falls behind its "
        "producer hides that wait there, and send→receive (from the producer's send) "
        "shows it. "
        + (
            f"Latency is sampled by {live:,} watchers reading live (every 50th in each "
            "client process's connecting order, so spread over the server's fan-out order; "
            "each records every event); the others read once a second what their kernel "
            "buffer holds, checking that the frames are whole and the counters contiguous "
            "(missed/disorder count both kinds). The server cannot tell them apart, except "
            "that a paused socket wakes no reader: at 2,000, all live cost it about 10% "
            "more CPU per delivery. "
            if live is not None and live < ours.get("connected", 0)
            else ""
        )
        + "What limits it: each event is one write per watcher, a system call that on "
        "loopback also runs the receiving side's TCP (about 6-10 µs with Python's share on "
        "this machine), so a walk over 15,000 is about 100 ms of the server's one core; "
        "events committed meanwhile join the walk at its next 256 watchers (the ones it "
        "passed get them in the next walk), so an event reaches all within about one "
        "walk. The server core is "
        "shared with whatever else the machine runs (see server CPUs busy against server "
        "cores). Connecting is the server's CPU too (HTTP upgrade, hello, snapshot, about "
        "0.5 ms each)."
    )
    failed = (found.get("peer") or {}).get("error")
    if failed:
        note += f" The peer's run failed: {failed}"
    return f"{title}\n\n" + table(headers, rows) + "\n\n" + note


def _gate(results: Results) -> str:
    found = results.get("gate")
    if found is None:
        return ""
    lines = [
        "## Regression gate",
        "",
        "`bench/gate.py`: the run fails when server CPU per delivery at 1,000 batched "
        "subscribers is over 1 µs, or (quick runs) when a figure, as a ratio to the peer "
        "in the same run where there is one, is worse than `bench/baseline.json` by more "
        "than 1.5 times the spread that repeated quick runs of one commit showed "
        "(at least 10%).",
        "",
    ]
    failures = found.get("failures", [])
    lines += [f"- **failed**: {failure}" for failure in failures] or ["Passed."]
    lines += [f"- {caveat}" for caveat in found.get("caveats", [])]
    baseline = gate.load()
    if baseline is not None:
        lines += ["", _baseline(baseline)]
    return "\n".join(lines)


def _baseline(baseline: Results) -> str:
    """The committed baseline: how much each gated figure moved between runs of one
    commit (the noise), and so how far the gate lets it go."""
    rows = []
    for name, figure in baseline["figures"].items():
        _, allowed = gate.limit(figure)
        rows.append(
            (
                name,
                f"{min(figure['values']):g} – {max(figure['values']):g}",
                f"{figure['median']:g}",
                f"{figure['spread']:.0%}",
                f"{'≤' if figure['better'] == 'lower' else '≥'} {allowed:.3g}",
            )
        )
    commits = ", ".join(baseline.get("commits", []))
    runs = max((figure["runs"] for figure in baseline["figures"].values()), default=0)
    return (
        f"The baseline (`bench/baseline.json`, written by `python -m bench.gate` from {runs} "
        f"{baseline.get('mode')} runs of {commits}); the noise is each figure's spread over "
        "those runs, max / min - 1:\n\n"
        + table(("figure", "runs' values", "median", "noise", "allowed"), rows)
    )


def _slow(results: Results) -> str:
    found = _scenario(results, "slow")
    if found is None:
        return f"## One stalled subscriber\n\n{_missing(results, 'slow')}."
    rows = []
    for run in found["runs"]:
        stalled = run.get("held") or {}
        rows.append(
            (
                "with" if run["stalled"] else "without",
                run["latency"].get("p50_ms"),
                run["latency"].get("p99_ms"),
                run["latency"].get("max_ms"),
                f"{run['deliveries']:,} of {run['expected_deliveries']:,}",
                run["server_counters"].get("fell_behind"),
                run["server_counters"].get("aborted"),
                f"{stalled['kernel_bytes_max'] / 1024:,.0f}" if stalled else None,
                stalled.get("server_rss_growth_mib"),
            )
        )
    headers = (
        "stalled subscriber", "readers' p50 ms", "readers' p99 ms", "max ms", "deliveries",
        "fell behind", "aborted", "stalled: kernel-held KiB (max)", "server RSS growth MiB",
    )  # fmt: skip
    last = [run["held"] for run in found["runs"] if run["stalled"]][-1]
    series = ", ".join(
        f"{s['t']:g} s: {(s['server_send_queue'] + s['client_receive_queue']) / 1024:,.0f}"
        for s in last["samples"]
    )
    text = (
        f"{found['readers']} readers at {found['rate']:g} events/s (the producer batching "
        "every 50 ms), runs without and with one more subscriber that completes the upgrade "
        "and then never reads, alternated so the run-to-run noise of p99 shows. What the "
        "stalled connection holds in the kernel (server send queue plus its own receive "
        f"queue), in KiB, over the last run: {series}. *fell behind* is the server's count "
        "of subscribers whose queue overflowed; past that point the server holds nothing "
        "more for it than its place in the shared history."
    )
    return "## One stalled subscriber\n\n" + table(headers, rows) + "\n\n" + text


def _polling(results: Results) -> str:
    found = _scenario(results, "polling")
    if found is None:
        return f"## Polling\n\n{_missing(results, 'polling')}."
    rows = []
    for size, rate in sorted(found["reads_per_s"].items(), key=lambda item: int(item[0])):
        change = found["change_to_event"][size]
        rows.append(
            (
                int(size),
                rate,
                change.get("p50_ms"),
                change.get("max_ms"),
                ", ".join(f"{value:g}" for value in change.get("samples_ms", [])),
            )
        )
    headers = (
        "subscribers", "database reads/s", "change→event p50 ms", "max ms", "each commit, ms",
    )  # fmt: skip
    text = (
        f"Poll interval {found['poll_interval_s']:g} s. Reads are counted by the server's "
        "`trio_ws_poll_duration_seconds_count`; failed reads: "
        f"{found['read_errors']:g}. Each commit lands at a random moment of the poll cycle."
    )
    return "## Polling\n\n" + table(headers, rows) + "\n\n" + text


def _producer_latency(results: Results) -> str:
    found = _scenario(results, "producer_latency")
    if found is None:
        return f"## Producer latency\n\n{_missing(results, 'producer_latency')}."
    headers = (
        "producer", "lines/s", "deliveries", "latency p50 ms", "p99 ms", "max ms",
        "event→receive p50 ms", "p99 ms",
    )  # fmt: skip
    rows = []
    for key, how in (
        ("run", "`trio-ws run` of a child printing (print→receive)"),
        ("raw", "raw producer websocket, one line per message (send→receive)"),
    ):
        run = found[key]
        latency, from_event = run["latency"], run["latency_from_event_timestamp"]
        rows.append(
            (
                how,
                found["rate"],
                f"{run['deliveries']:,} of {run['expected_deliveries']:,}",
                latency.get("p50_ms"),
                latency.get("p99_ms"),
                latency.get("max_ms"),
                from_event.get("p50_ms"),
                from_event.get("p99_ms"),
            )
        )
    text = (
        f"{found['lines']:,} lines at {found['rate']:g}/s to one subscriber, each run on a "
        "fresh server. The child stamps each line just before it prints it, so the first "
        "row holds everything `trio-ws run` adds (pipe, line splitting, its websocket); the "
        "raw producer stamps just before it sends. Added by `run`: p50 "
        f"{_num(found.get('added_p50_ms'), ' ms')}, p99 {_num(found.get('added_p99_ms'), ' ms')}."
    )
    return "## Producer latency\n\n" + table(headers, rows) + "\n\n" + text


JOURNAL_BUDGET_P50_MS = 1.0
"""`sqlite`/normal may add at most this much to the steady-rate p50 over `memory`."""
JOURNAL_BUDGET_CPU = 1.25
"""... and at most this factor to server CPU per line at 1 subscriber (STATE issue budget)."""


def _journal(results: Results) -> str:
    found = _scenario(results, "journal")
    if found is None:
        return ""
    headers = (
        "trial", "journal", "sync", "subscribers", "deliveries/s", "CPU µs/delivery",
        "rate: producer", "subscribers", "event→receive p50 ms", "p99 ms", "send→receive p50 ms",
        "p99 ms", "CPU µs/delivery", "longest ack wait s",
    )  # fmt: skip
    rows = []
    for run in found["runs"]:
        trial = run.get("trial", 1)
        for fan in run["fanout"]:
            rows.append(
                (trial, run["journal"], run["sync"], fan["subscribers"], fan["deliveries_per_s"],
                 fan["server_cpu_us_per_delivery"], "", "", "", "", "", "", "", "")
            )  # fmt: skip
        for how, paced in sorted(run["rate"].items()):
            latency, from_event = paced["latency"], paced["latency_from_event_timestamp"]
            rows.append(
                (trial, run["journal"], run["sync"], "", "", "", how, paced["subscribers"],
                 from_event.get("p50_ms"), from_event.get("p99_ms"), latency.get("p50_ms"),
                 latency.get("p99_ms"), paced["server_cpu_us_per_delivery"],
                 paced["longest_ack_wait_s"])
            )  # fmt: skip
    measured = "".join(
        f"\n- trial {i}: {when}" for i, when in enumerate(found.get("measured", []), 1)
    )
    if "separately" in found:  # merged in from a later `--only journal` run
        measured += f"\n\nMeasured separately: {found['separately']}."
    trials = sorted({run.get("trial", 1) for run in found["runs"]})
    budgets = [
        _journal_budget([run for run in found["runs"] if run.get("trial", 1) == trial], trial)
        for trial in trials
    ]
    if len(trials) > 1:
        budgets.append(_journal_median(found["runs"], trials))
    return (
        "## Journals side by side\n\n"
        "`python -m bench.run --only journal`: the same fan-out (full speed) and steady-rate "
        "runs against `trio-ws serve --journal memory`, `--journal sqlite --sync normal` "
        "(the default) and `--sync full`. Every event is committed before any subscriber "
        "sees it and acks wait for the commit (STATE.md 3.1, 3.2)."
        + (f"\n{measured}" if measured else "")
        + "\n\n"
        + table(headers, rows)
        + "\n\n"
        + "\n\n".join(budget for budget in budgets if budget)
    )


@dataclass(frozen=True)
class JournalTrial:
    """One trial's sqlite/normal against memory: p50 at each steady rate and CPU per line
    at the smallest fan-out, as (memory, sqlite) pairs."""

    p50_ms: dict[str, tuple[float, float]]
    cpu_us: tuple[float, float] | None
    subscribers: int


def _journal_trial(runs: Sequence[Results]) -> JournalTrial | None:
    """The budget's figures from one trial's runs; None unless both journals ran."""
    by = {(run["journal"], run["sync"]): run for run in runs}
    memory, sqlite = by.get(("memory", "normal")), by.get(("sqlite", "normal"))
    if memory is None or sqlite is None:
        return None
    p50_ms = {}
    for how in sorted(memory["rate"]):
        ours = sqlite["rate"][how]["latency_from_event_timestamp"].get("p50_ms")
        base = memory["rate"][how]["latency_from_event_timestamp"].get("p50_ms")
        if ours is not None and base is not None:
            p50_ms[how] = (base, ours)
    ours_cpu = _cpu_per_line(sqlite["fanout"][0])
    base_cpu = _cpu_per_line(memory["fanout"][0])
    cpu_us = (base_cpu, ours_cpu) if ours_cpu and base_cpu else None
    return JournalTrial(p50_ms, cpu_us, memory["fanout"][0]["subscribers"])


def _journal_budget(runs: Sequence[Results], trial: int) -> str:
    """The budget: sqlite/normal vs memory, p50 at the steady rate and CPU at 1 subscriber."""
    found = _journal_trial(runs)
    if found is None:
        return ""
    lines = []
    for how, (base, ours) in found.p50_ms.items():
        added = ours - base
        verdict = "within" if added <= JOURNAL_BUDGET_P50_MS else "**over**"
        lines.append(
            f"- steady rate ({how}): event→receive p50 {base} ms (memory) → {ours} ms "
            f"(sqlite/normal), {added:+.2f} ms: {verdict} the {JOURNAL_BUDGET_P50_MS:g} ms "
            "budget"
        )
    if found.cpu_us is not None:
        base_cpu, ours_cpu = found.cpu_us
        factor = ours_cpu / base_cpu
        verdict = "within" if factor <= JOURNAL_BUDGET_CPU else "**over**"
        lines.append(
            f"- CPU per line at {found.subscribers} subscriber: "
            f"{base_cpu} µs (memory) → {ours_cpu} µs (sqlite/normal), {factor - 1:+.0%}: "
            f"{verdict} the {JOURNAL_BUDGET_CPU - 1:.0%} budget"
        )
    return f"Budget, trial {trial} (sqlite/normal against memory):\n\n" + "\n".join(lines)


def _journal_median(runs: Sequence[Results], trials: Sequence[int]) -> str:
    """The budget judged on the median, over the trials, of each trial's difference."""
    added: dict[str, list[float]] = {}
    factors: list[float] = []
    for trial in trials:
        found = _journal_trial([run for run in runs if run.get("trial", 1) == trial])
        if found is None:
            continue
        for how, (base, ours) in found.p50_ms.items():
            added.setdefault(how, []).append(ours - base)
        if found.cpu_us is not None:
            factors.append(found.cpu_us[1] / found.cpu_us[0])
    lines = []
    for how, values in sorted(added.items()):
        middle = statistics.median(values)
        verdict = "within" if middle <= JOURNAL_BUDGET_P50_MS else "**over**"
        each = ", ".join(f"{value:+.2f}" for value in values)
        commits = _commit_p50s(runs, how)
        waited = (
            f"; the server's own commit p50, what each event waits before its fan-out: "
            f"{statistics.median(commits):.2f} ms (trials: "
            + ", ".join(f"{value:.2f}" for value in commits)
            + ")"
            if commits
            else ""
        )
        lines.append(
            f"- steady rate ({how}): event→receive p50 added {middle:+.2f} ms (trials: {each})"
            f"{waited}: {verdict} the {JOURNAL_BUDGET_P50_MS:g} ms budget"
        )
    if factors:
        middle = statistics.median(factors)
        verdict = "within" if middle <= JOURNAL_BUDGET_CPU else "**over**"
        each = ", ".join(f"{factor - 1:+.0%}" for factor in factors)
        lines.append(
            f"- CPU per line at 1 subscriber: {middle - 1:+.0%} (trials: {each}): "
            f"{verdict} the {JOURNAL_BUDGET_CPU - 1:.0%} budget"
        )
    return (
        f"**Budget, median of {len(trials)} trials** (sqlite/normal against memory, "
        "each trial's two runs one after the other):\n\n" + "\n".join(lines)
    )


def _cpu_per_line(fan: Results) -> float | None:
    """Server CPU µs per line the server took in (the budget's unit): per delivery would
    also count what a subscriber that fell behind skipped. Runs recorded before
    ``events_per_s`` was kept fall back to per delivery."""
    events, cores = fan.get("events_per_s"), fan.get("server_cores")
    if events and cores:
        return round(float(cores) / float(events) * 1e6, 2)
    value = fan.get("server_cpu_us_per_delivery")
    return None if value is None else float(value)


def _commit_p50s(runs: Sequence[Results], how: str) -> list[float]:
    """sqlite/normal's commit p50 (ms) in each trial's steady-rate run, where recorded."""
    found = []
    for run in runs:
        if (run["journal"], run["sync"]) == ("sqlite", "normal"):
            commit = run["rate"].get(how, {}).get("journal_commit") or {}
            if commit.get("commit_p50_ms") is not None:
                found.append(float(commit["commit_p50_ms"]))
    return found


NODES_BUDGET_P99_MS = 10.0
"""Two nodes over Redis may add at most this much to one sqlite node's steady-rate p99."""


def _nodes(results: Results) -> str:
    found = _scenario(results, "nodes")
    if found is None:
        return ""
    headers = (
        "setup", "subscribers", "deliveries/s", "event→receive p50 ms", "p99 ms",
        "send→receive p50 ms", "p99 ms", "missed", "resyncs", "longest ack wait s",
    )  # fmt: skip
    rows = []
    for setup, run in (("one node, sqlite", found["single_sqlite"]),
                       ("two nodes, redis", found["two_nodes"])):  # fmt: skip
        event, send = run["latency_from_event_timestamp"], run["latency"]
        rows.append(
            (setup, run["subscribers"], run["deliveries_per_s"], event.get("p50_ms"),
             event.get("p99_ms"), send.get("p50_ms"), send.get("p99_ms"), run["missed"],
             run["resyncs"], run["longest_ack_wait_s"])
        )  # fmt: skip
    two = found["two_nodes"]
    per_node = [
        f"- subscribers on node {node.upper()}: event→receive p50 "
        f"{two[f'latency_from_event_timestamp_on_{node}'].get('p50_ms')} ms, p99 "
        f"{two[f'latency_from_event_timestamp_on_{node}'].get('p99_ms')} ms"
        for node in ("a", "b")
    ]
    single = found["single_sqlite"]["latency_from_event_timestamp"].get("p99_ms")
    ours = two["latency_from_event_timestamp"].get("p99_ms")
    if single is None or ours is None:
        budget = "Budget: not judged (no latency samples)."
    else:
        added = ours - single
        verdict = "within" if added <= NODES_BUDGET_P99_MS else "**over**"
        budget = (
            f"Budget: event→receive p99 {single} ms (one node) → {ours} ms (two nodes), "
            f"{added:+.2f} ms: {verdict} the {NODES_BUDGET_P99_MS:g} ms budget at "
            f"{two['rate']:g} events/s."
        )
    return (
        "## Several nodes\n\n"
        "`python -m bench.run --only nodes`: two `trio-ws serve --broker` nodes over one "
        "local `redis-server`, the producer on node A and the subscribers split over A and "
        "B, at the steady rate; beside one `--journal sqlite` node with as many subscribers, "
        "in the same run.\n\n"
        + table(headers, rows)
        + "\n\n"
        + "\n".join(per_node)
        + "\n\n"
        + budget
    )


def _runs(results: Results) -> str:
    found = _scenario(results, "runs")
    if found is None:
        return ""
    headers = ("read (issue 20 item 6)", "target ms", "median ms", "worst of 5 ms")
    rows = [
        ("runs list, 50 newest", 50, found["runs_list"]["median_ms"], found["runs_list"]["max_ms"]),
        ("search, first page: a common word", 200, found["search_common"]["median_ms"],
         found["search_common"]["max_ms"]),
        ("search, first page: one line near the end", 200, found["search_rare"]["median_ms"],
         found["search_rare"]["max_ms"]),
        ("search, first page: a regex (no index; time guard 1 s)", "", found["search_regex"][
            "median_ms"], found["search_regex"]["max_ms"]),
        ("seek (6 moments spread over the run)", 100, found["seek"]["median_ms"],
         found["seek"]["max_ms"]),
    ]  # fmt: skip
    return (
        "## Runs: search and seek in a long run\n\n"
        f"One run of {found['events']:,} events on SQLite (journal "
        f"{found['journal_mib']} MiB, built in {found['build_s']} s through the hub's "
        f"pipeline and commits), after {found['runs'] - 1}+ short runs; the reads call what "
        "the runs API's handlers call (`state.run_events`). A whole export reads "
        f"{found['export_events_s']:,} events/s.\n\n" + table(headers, rows)
    )


def _rate_rounds(results: Results) -> str:
    """Only when run (`--only rate_rounds`): a narrow check, not one of the page's figures."""
    found = _scenario(results, "rate_rounds")
    if found is None:
        return ""
    rows = [
        (run["round"], run["subscribers"], run["server"], run["p50_ms"], run["p99_ms"],
         run["samples"], run["missed"])
        for run in found["runs"]
    ]  # fmt: skip
    load = ", ".join(f"{value:.2f}" for value in found["load_average"])
    return (
        "## One line per message, in rounds\n\n"
        f"`python -m bench.run --only rate_rounds`: {found['events']} events at "
        f"{found['rate']:g}/s, one line per message, each server at each size once per round, "
        "in alternating order; event->receive latency (ms). "
        + (f"`baseline` is the checkout {found['baseline']}. " if found["baseline"] else "")
        + f"Load average at the end: {load}.\n\n"
        + table(("round", "subscribers", "server", "p50", "p99", "samples", "missed"), rows)
        + "\n\nThe floor (`bench.floor`, on the server's CPU, once per round): µs p50 / p99 "
        "of one line's apply, a no-op trip to the journal's thread and back, one one-event "
        "append, and the hub's whole commit (append and fan-out included).\n\n"
        + table(
            ("round", "apply", "thread round trip", "append", "commit"),
            [
                (index, *(_p50_p99(found_floor[step]) for step in FLOOR_STEPS))
                for index, found_floor in enumerate(found.get("floors", []))
            ],
        )
    )


FLOOR_STEPS: Final = ("apply", "thread_round_trip", "append", "commit")


def _p50_p99(step: Results) -> str:
    return f"{step['p50_us']} / {step['p99_us']}"


def _errors(results: Results) -> str:
    failed = [
        (name, found["error"])
        for name, found in results.get("scenarios", {}).items()
        if isinstance(found, dict) and "error" in found
    ]
    if not failed:
        return ""
    return "## Failures\n\n" + "\n".join(f"- **{name}**: {error}" for name, error in failed)


METHOD: Final = """## How it is measured

- Every figure comes from separate processes on this machine talking over 127.0.0.1: the
  server under test (`trio-ws serve --poll-interval 1`, or the peer), one producer
  process, and subscriber processes holding up to 250 connections each (1,000 for idle
  runs). The orchestrator (`bench/run.py`) reads every process's CPU time
  (`/proc/PID/stat`), RSS (`/proc/PID/status`) and each CPU's busy time (`/proc/stat`)
  itself, at the same two marks that bound each window.
- **CPU placement**: both servers run their event loop in one thread, so the server under
  test gets one CPU to itself and everything else (orchestrator, producer, subscribers) shares the
  others. A busy client then cannot take CPU from the server it measures, and a client
  that cannot keep up shows as *client CPUs busy* near its CPU count (the *limit* column
  names what was saturated: server CPU near 1 core, client CPUs near all busy).
- **Peer**: `bench/peers/broadcast_server.py`, python-websockets' asyncio server with its
  defaults and `broadcast()` per event, speaking just enough of the protocol (hello;
  welcome and an ack every 100 ms to the producer) for the same clients. It does no
  parsing, redaction, history or snapshots and never waits for a slow subscriber.
- **Subscribers** are a minimal RFC 6455 client (`bench/wire.py`): upgrade, then read
  server frames in place and find the bench line's counter and send time without
  decoding the JSON (under 1 µs per frame), answer pings. Neither side negotiates
  compression. The same client code reads both servers.
- **Latency**: the subscriber's `time.time()` when the frame's bytes arrived minus the
  producer's `time.time()` just before it sent the batch (one clock on one machine), and
  minus the event's own server `timestamp`. p50/p99 are nearest-rank over sampled
  deliveries: every delivery in paced runs, 1 in 16 at full speed (spread over the
  subscribers), thinned evenly if a process would hold over 200,000 samples.
- **Missed** counts events a subscriber never got (gaps in the event counter);
  **resyncs** counts `resync` messages (trio-ws sends one when a subscriber fell further
  behind than the held history).
- **Stalled subscriber**: a raw socket with a 4 KiB receive buffer that completes the
  upgrade and then never reads; what it holds is read from `/proc/net/tcp` (the server
  socket's send queue and the client socket's receive queue) every 0.5 s.
- **Polling**: reads are `trio_ws_poll_duration_seconds_count{project="bench"}` from
  `GET /metrics`; change-to-event commits an `UPDATE` to the project's `features.db`
  at a random moment and times the `progress` event that reports it.
- Each scenario starts a fresh server; every run is bounded in time and every process it
  starts is stopped when it ends."""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.report path/to/benchmarks.json", file=sys.stderr)
        return 2
    source = Path(args[0])
    results = json.loads(source.read_text())
    (source.parent / "benchmarks.md").write_text(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
