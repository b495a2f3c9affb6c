"""A stand-in child for `trio-ws run` tests: prints a file's lines, then exits.

Options make it misbehave the ways real children do: no final newline,
invalid UTF-8, stderr output, ignoring SIGTERM, or ticking until stopped.
Every wait is short and bounded, so a broken test can never hang on it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import BinaryIO

HOLD_CAP = 20.0
"""No option keeps this process alive longer than this many seconds."""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("file", nargs="?", help="print this file's lines (none if omitted)")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between lines")
    parser.add_argument("--exit", type=int, default=0, dest="code", help="exit status")
    parser.add_argument("--no-final-newline", action="store_true")
    parser.add_argument("--invalid-utf8", action="store_true", help="add a line with bad bytes")
    parser.add_argument("--stderr", action="store_true", help="print odd lines to stderr")
    parser.add_argument("--pid", action="store_true", help="print 'pid N' first")
    parser.add_argument("--stamp", action="store_true", help="start each line with time.time()")
    parser.add_argument("--at-once", action="store_true", help="print every line in one write")
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--gate", help="after --gate-after lines, wait until this file exists")
    parser.add_argument("--gate-after", type=int, default=0)
    parser.add_argument("--ticks", type=float, default=0.0, help="then print 'tick N' for S s")
    parser.add_argument("--hold", type=float, default=0.0, help="then wait up to S s")
    args = parser.parse_args()
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = sys.stdout.buffer
    if args.pid:
        write(out, f"pid {os.getpid()}\n".encode())
    lines: list[bytes] = []
    if args.file:
        with open(args.file, "rb") as handle:
            lines = handle.read().splitlines(keepends=True)
    if args.invalid_utf8:
        lines.append(b"bad \xff\xfe bytes\n")
    if args.no_final_newline and lines:
        lines[-1] = lines[-1].rstrip(b"\n")
    if args.at_once:
        write(out, b"".join(lines))
        lines = []
    for index, line in enumerate(lines):
        if args.gate and index == args.gate_after:
            wait_for(args.gate)
        if args.stamp:
            line = f"{time.time():.6f} ".encode() + line
        write(sys.stderr.buffer if args.stderr and index % 2 else out, line)
        if args.pause:
            time.sleep(args.pause)
    deadline = time.monotonic() + min(args.ticks, HOLD_CAP)
    tick = 0
    while time.monotonic() < deadline:
        write(out, f"tick {tick}\n".encode())
        tick += 1
        time.sleep(0.02)
    if args.hold:
        time.sleep(min(args.hold, HOLD_CAP))
    return int(args.code)


def wait_for(path: str) -> None:
    deadline = time.monotonic() + HOLD_CAP
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def write(stream: BinaryIO, data: bytes) -> None:
    stream.write(data)
    stream.flush()


if __name__ == "__main__":
    sys.exit(main())
