"""The command `trio-ws run` supervises in the producer-latency scenario.

``python -m bench.paced_child COUNT RATE SIZE`` prints COUNT bench lines of
SIZE characters at RATE lines/s on a fixed schedule (a late line does not
shift the next), each stamped with ``time.time()`` just before it is written,
so a subscriber's latency runs from the print: everything `trio-ws run` adds
is inside it.
"""

from __future__ import annotations

import sys
import time

from bench.wire import make_line


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m bench.paced_child COUNT RATE SIZE", file=sys.stderr)
        return 2
    count, rate, size = int(args[0]), float(args[1]), int(args[2])
    out = sys.stdout.buffer
    started = time.monotonic()
    for counter in range(1, count + 1):
        delay = started + (counter - 1) / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        out.write(make_line(counter, time.time(), size).encode() + b"\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
