"""Figures from samples and from /proc: percentiles, bounded sampling, CPU, RSS, TCP queues.

Percentiles are nearest-rank on the raw samples (no interpolation, so a
reported p99 is a latency some message really had). CPU and memory are read
from /proc for any process, so the server, the peer and every load
generator are measured the same way by the orchestrator.
"""

from __future__ import annotations

import math
import os
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
PAGE: Final = os.sysconf("SC_PAGE_SIZE")


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank ``q``-th percentile of already sorted values (0 < q <= 100)."""
    if not ordered:
        raise ValueError("percentile of no samples")
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} outside (0, 100]")
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[rank - 1]


def summarize_ms(seconds: Iterable[float]) -> dict[str, float | int]:
    """count, p50, p95, p99, max and mean of latencies given in seconds, reported in ms."""
    ordered = sorted(seconds)
    if not ordered:
        return {"count": 0}
    return {
        "count": len(ordered),
        "p50_ms": round(percentile(ordered, 50) * 1000, 3),
        "p95_ms": round(percentile(ordered, 95) * 1000, 3),
        "p99_ms": round(percentile(ordered, 99) * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
        "mean_ms": round(sum(ordered) / len(ordered) * 1000, 3),
    }


class Sampler:
    """Latency samples of the deliveries whose key is a multiple of ``stride``.

    A key is the event's counter plus the subscriber's offset, so subscribers
    sample different events and together cover all of them. Each sample has
    ``columns`` values (latencies measured from different points). Bounded:
    when more than ``cap`` samples are held, the stride doubles and the
    samples whose key the new stride excludes are dropped, so what is kept
    stays an even sample over the whole window, never just its beginning.
    """

    def __init__(self, cap: int, stride: int = 1, columns: int = 1) -> None:
        if cap < 2 or stride < 1 or columns < 1:
            raise ValueError("a sampler needs cap >= 2, stride >= 1 and columns >= 1")
        self.cap = cap
        self.stride = stride
        self.keys = array("q")
        self.columns = [array("d") for _ in range(columns)]

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: int, *values: float) -> None:
        """Keep one sample if its key is on the stride (callers on a hot path check
        ``key % stride`` before they compute the values)."""
        if key % self.stride:
            return
        self.keys.append(key)
        for column, value in zip(self.columns, values, strict=True):
            column.append(value)
        if len(self.keys) > self.cap:
            self._thin()

    def _thin(self) -> None:
        while len(self.keys) > self.cap:
            self.stride *= 2
            keep = [i for i, key in enumerate(self.keys) if key % self.stride == 0]
            self.keys = array("q", (self.keys[i] for i in keep))
            self.columns = [array("d", (column[i] for i in keep)) for column in self.columns]


def merge_samples(parts: Iterable[tuple[int, Sequence[int], Sequence[float]]]) -> list[float]:
    """Merge (stride, keys, values) from several samplers at their coarsest stride."""
    collected = list(parts)
    if not collected:
        return []
    stride = max(part[0] for part in collected)
    return [
        value
        for _, keys, values in collected
        for key, value in zip(keys, values, strict=True)
        if key % stride == 0
    ]


# -- /proc ------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size (VmRSS) of the process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


def cpu_ticks() -> dict[int, tuple[int, int]]:
    """(busy, total) ticks of each CPU since boot, from /proc/stat."""
    found = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *rest = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        values = [int(value) for value in rest]
        idle = values[3] + values[4]  # idle + iowait
        total = sum(values[:8])  # guest time is already counted in user
        found[int(name[3:])] = (total - idle, total)
    return found


def busy_cores(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], cpus: Iterable[int]
) -> float:
    """How many of ``cpus`` were busy on average between two `cpu_ticks` readings."""
    busy = 0.0
    for cpu in cpus:
        ticks = after[cpu][1] - before[cpu][1]
        busy += (after[cpu][0] - before[cpu][0]) / ticks if ticks else 0.0
    return busy


@dataclass(frozen=True)
class TcpQueues:
    """Bytes a TCP socket holds: sent but unacknowledged or unsent, and received but unread."""

    tx: int
    rx: int


def tcp_queues(local_port: int, remote_port: int, table: str = "/proc/net/tcp") -> TcpQueues:
    """The queues of the IPv4 socket (local_port -> remote_port) in this network namespace."""
    for line in Path(table).read_text().splitlines()[1:]:
        parts = line.split()
        local, remote, queues = parts[1], parts[2], parts[4]
        if int(local.rsplit(":", 1)[1], 16) == local_port and (
            int(remote.rsplit(":", 1)[1], 16) == remote_port
        ):
            tx, rx = queues.split(":")
            return TcpQueues(tx=int(tx, 16), rx=int(rx, 16))
    raise LookupError(f"no TCP socket {local_port} -> {remote_port} in {table}")
