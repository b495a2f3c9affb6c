"""Run the benchmarks and write docs/benchmarks.md and docs/benchmarks.json.

``python -m bench.run`` (or ``nox -s bench``) runs every scenario at full
size (about 26 minutes on a 2-core 2.1 GHz Xeon) and writes docs/; ``--quick``
runs CI-sized versions (about 7 minutes there) and ``--only NAME`` one scenario, and
both write to build/bench/ unless ``--out`` says otherwise, so a partial
run never replaces the committed figures. Process logs are kept when a
scenario fails (the path is printed).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from websockets.exceptions import WebSocketException

from bench import gate, report
from bench.harness import PLACEMENT, REPO, BenchError
from bench.loadgen import raise_file_limit
from bench.scenarios import FULL, ON_REQUEST, QUICK, SCENARIOS, plan_json

COMMAND_ENV = "BENCH_COMMAND"
"""Set by `nox -s bench` to the command line as the user typed it."""


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        platform.processor() or "unknown",
    )
    memory = next(
        line.split()[1]
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    os_name = platform.platform()
    release = Path("/etc/os-release")
    if release.exists():
        for line in release.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(int(memory) / 2**20, 1),
        "os": os_name,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "trio": importlib.metadata.version("trio"),
        "trio_websocket": importlib.metadata.version("trio-websocket"),
        "websockets": importlib.metadata.version("websockets"),
        "trio_ws_commit": git_commit(),
    }


def git_commit() -> str:
    """The measured checkout, marked ``+changes`` when trio_ws/ or cli.py differ from it."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        return "unknown (not a git checkout)"
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    changed = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "trio_ws", "cli.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return f"{head}+changes" if changed else head


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="CI-sized runs (about 7 minutes)")
    parser.add_argument(
        "--only", action="append", choices=sorted(SCENARIOS), help="run only this scenario"
    )
    parser.add_argument("--out", type=Path, help="where benchmarks.md/.json go")
    parser.add_argument("--keep-logs", action="store_true", help="keep every process's logs")
    parser.add_argument(
        "--no-pin", action="store_true", help="let the server and the clients share every CPU"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    chosen = args.only or [name for name in SCENARIOS if name not in ON_REQUEST]
    partial = args.quick or args.only is not None
    out: Path = args.out or (REPO / "build" / "bench" if partial else REPO / "docs")
    typed = " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])])
    limit = raise_file_limit()
    if not args.no_pin:
        PLACEMENT.pin_clients()
    run_dir = Path(tempfile.mkdtemp(prefix="trio-ws-bench-"))
    results: dict[str, Any] = {
        "mode": plan.mode,
        "command": os.environ.get(COMMAND_ENV) or typed,
        "started": datetime.now(tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "machine": {
            **machine(),
            "nofile_limit": limit,
            "placement": PLACEMENT.describe(),
            "client_cpus": len(PLACEMENT.clients),
        },
        "plan": plan_json(plan),
        "scenarios": {},
    }
    began = time.monotonic()
    failed = False
    for name in chosen:
        print(f"bench: {name} ...", flush=True)
        started = time.monotonic()
        try:
            figures = SCENARIOS[name](plan, run_dir)
        except (BenchError, OSError, TimeoutError, WebSocketException) as exc:
            failed = True
            (run_dir / f"{name}.traceback").write_text(traceback.format_exc())
            figures = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"bench: {name} failed: {figures['error']}", file=sys.stderr, flush=True)
        figures["seconds"] = round(time.monotonic() - started, 1)
        results["scenarios"][name] = figures
        print(f"bench: {name} done in {figures['seconds']} s", flush=True)
    results["duration_s"] = round(time.monotonic() - began, 1)
    failures = gate.check(results, gate.load())
    results["gate"] = {"failures": failures, "caveats": gate.caveats(results)}
    written = report.write(results, out)
    print(f"bench: wrote {', '.join(str(path) for path in written)}", flush=True)
    for failure in failures:
        print(f"bench gate FAILED: {failure}", file=sys.stderr, flush=True)
    for caveat in results["gate"]["caveats"]:
        print(f"bench gate: {caveat}", flush=True)
    if not failures:
        print("bench gate: passed", flush=True)
    if failed or args.keep_logs:
        print(f"bench: process logs are in {run_dir}", flush=True)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 1 if failed or failures else 0


if __name__ == "__main__":
    sys.exit(main())
