"""Load generator processes: many subscribers, or one producer, driven over stdin/stdout.

``python -m bench.loadgen subscribe HOST PORT PATH --count N --result FILE``
holds N subscriber connections in one asyncio process. It waits for
commands on stdin, one per line, and answers each with one JSON line:

- ``connect``: open all N (bounded concurrency), answer when every one got
  its ``hello`` (or failed): start/end times, how many, errors.
- ``start`` / ``stop``: mark the measured window (counters are read at both
  marks; latency samples are kept only in between).
- ``drain LAST TIMEOUT``: wait until every subscriber has seen counter LAST.
- ``report``: write the figures to FILE, close every connection, exit.

With ``--live L`` only L of the N (every N/L-th in connecting order, so spread over
the server's fan-out order) read live and sample latency; the others read in
slices: after their ``hello`` they stop reading, and every ``--slice`` seconds each
reads at once what its kernel buffer holds, checking cheaply (`wire.SliceReader`)
that it is whole frames whose bench counters continue the last one seen. A lost,
repeated or reordered event still counts as missed or disorder. The server cannot
tell the two kinds apart (the kernel takes its writes either way), and the client
core no longer has to parse every frame in Python as it arrives.

``python -m bench.loadgen produce URL (--duration S | --count N)``, with the
server's token in ``$BENCH_PRODUCER_TOKEN``,
feeds bench lines through the publish endpoint (PROTOCOL.md 4) at full
speed (at most ``--window`` unacked items) or at ``--rate`` events/s, sending
what is due every ``--tick`` seconds in one message (a tick of 1/rate sends
each event alone). It
prints ``{"started": t}``, answers ``mark`` on stdin with how many items the
server has acked, and prints its result when done.

Each process raises its own open-file limit to the hard limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from collections import Counter, deque
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from websockets.asyncio.client import connect as ws_connect

from bench.stats import Sampler
from bench.wire import (
    MARK,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    ProtocolViolation,
    Slice,
    SliceReader,
    check_upgrade,
    client_frame,
    close_code,
    make_line,
    upgrade_request,
)

TOKEN_ENV: Final = "BENCH_PRODUCER_TOKEN"
CONNECT_TIMEOUT: Final = 30.0
ACK_TIMEOUT: Final = 60.0
MAX_HEAD: Final = 16 * 1024
TIMESTAMP: Final = b'"timestamp":"'
SLICE_READ: Final = 64 * 1024
"""A read this large may have left more in the kernel: a sliced watcher then reads on."""
SLICE_PARTS: Final = 10
"""A slice resumes its watchers in this many groups spread over the slice, not all at once."""
_COUNTER_AT: Final = len(MARK)
_STAMP_AT: Final = _COUNTER_AT + 9


def raise_file_limit() -> int:
    """Set the soft open-file limit to the hard limit; returns the new soft limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def reply(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


# -- subscribers ---------------------------------------------------------------------


class Group:
    """What all subscribers of this process saw, counted in one place."""

    def __init__(self, sample_cap: int, stride: int, count: int = 1, live: int = 1) -> None:
        self.count = count
        self.live = live
        """How many of the ``count`` subscribers read live; the others read in slices."""
        self.sampler = Sampler(sample_cap, stride, columns=2)
        self.recording = False
        self.deliveries = 0
        self.bytes = 0
        self.missed = 0
        self.disorder = 0
        self.resyncs = 0
        self.types: Counter[str] = Counter()
        self.closes: Counter[str] = Counter()
        self.errors: list[str] = []
        self.members: list[Subscriber] = []
        self.joined = 0
        self.slices = 0

    def counters(self) -> dict[str, int]:
        return {
            "deliveries": self.deliveries,
            "bytes": self.bytes,
            "missed": self.missed,
            "disorder": self.disorder,
            "resyncs": self.resyncs,
            "head": max((member.last for member in self.members), default=0),
        }

    def error(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)


_MINUTES: dict[bytes, float] = {}


def event_time(buf: bytearray, start: int, end: int) -> float:
    """The server's ``timestamp`` of the event in ``buf[start:end]`` as UNIX seconds.

    ``2026-11-25T17:04:05.123456Z`` (or ``.123Z``): the minute's start is parsed once
    and cached, the seconds and fraction each time, so sampling stays cheap.
    """
    at = buf.find(TIMESTAMP, start, end) + len(TIMESTAMP)
    if at < len(TIMESTAMP):
        raise ProtocolViolation("a bench event without a timestamp")
    minute = bytes(buf[at : at + 16])
    base = _MINUTES.get(minute)
    if base is None:
        base = datetime.fromisoformat(minute.decode() + ":00+00:00").timestamp()
        _MINUTES[minute] = base
    # Both servers write microseconds: reading only the milliseconds made every
    # event look up to 1 ms older (0.5 ms on average) than it was.
    if buf[at + 23 : at + 26].isdigit():
        return base + int(buf[at + 17 : at + 19]) + int(buf[at + 20 : at + 26]) / 1e6
    return base + int(buf[at + 17 : at + 19]) + int(buf[at + 20 : at + 23]) / 1000


class Subscriber(asyncio.Protocol):
    """One subscriber connection: upgrade, then count bench lines and sample latency."""

    def __init__(self, group: Group, host: str, port: int, path: str) -> None:
        self.group = group
        self.request, self.accept = upgrade_request(host, port, path)
        self.hello: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.head = bytearray()
        self.reader: FrameReader | None = None
        self.now = 0.0
        self.offset = group.joined  # spreads the sampled events over the subscribers
        # Bresenham: exactly `live` of `count` read live, evenly spread in joining order.
        self.sliced = group.joined * group.live % group.count >= group.live
        self.slicer: SliceReader | None = None
        group.joined += 1
        self.last = 0
        self.count = 0
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.now = time.time()
        try:
            if self.slicer is not None:
                self._slice(self.slicer.feed(data))
                if len(data) < SLICE_READ:  # the kernel buffer is empty: until next slice
                    self._pause()
            elif self.reader is not None:
                self.reader.feed(data)
            else:
                self._upgrade(data)
            if self.sliced and self.slicer is None and self.reader and self.hello.done():
                # From now on, read in slices: what the live reader left (a partial
                # frame) is where the slice reader starts.
                self.slicer = SliceReader(self._other_frame, self.reader.buf)
                self._pause()
        except (ProtocolViolation, ValueError) as exc:
            self._fail(f"{type(exc).__name__}: {exc}")

    def _pause(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    def resume(self) -> None:
        """Read what the kernel holds now (the slicer calls this once a slice)."""
        transport = self.transport
        if self.slicer is not None and transport is not None and not transport.is_closing():
            transport.resume_reading()

    def _slice(self, found: Slice) -> None:
        """Count a slice's events as `on_text` counts live ones, and check that they
        continue the last counter seen: contiguous, in order, none twice."""
        group = self.group
        group.slices += 1
        if not found.events:
            return
        last = self.last
        if last and found.first <= last:
            group.disorder += 1
            group.error(f"sliced watcher: event {found.first} after {last}")
        elif not found.increasing:
            group.disorder += 1
            group.error(
                f"sliced watcher: events out of order between {found.first} and {found.last}"
            )
        else:
            start = last + 1 if last else found.first
            gap = found.last - start + 1 - found.events
            if gap:
                group.missed += gap
                group.error(f"sliced watcher: {gap} events missing up to {found.last}")
        self.last = max(last, found.last)
        self.count += found.events
        group.deliveries += found.events
        group.bytes += found.payload_bytes

    def _other_frame(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_TEXT:
            self._other(payload)
        else:
            self.on_control(opcode, payload)

    def _upgrade(self, data: bytes) -> None:
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > MAX_HEAD:
                raise ProtocolViolation("no end of the 101 answer within 16 KiB")
            return
        check_upgrade(bytes(self.head[:end]), self.accept)
        self.reader = FrameReader(self.on_text, self.on_control)
        rest = bytes(self.head[end + 4 :])
        self.head = bytearray()
        if rest:
            self.reader.feed(rest)

    def on_text(self, buf: bytearray, start: int, end: int) -> None:
        at = buf.find(MARK, start, end)
        if at < 0:
            self._other(bytes(buf[start:end]))
            return
        counter = int(buf[at + _COUNTER_AT : at + _STAMP_AT - 1])
        group = self.group
        last = self.last
        if counter > last:
            if last and counter != last + 1:
                group.missed += counter - last - 1
            self.last = counter
        else:
            group.disorder += 1
        self.count += 1
        group.deliveries += 1
        group.bytes += end - start
        if group.recording:
            sampler = group.sampler
            key = counter + self.offset
            if key % sampler.stride == 0:
                sent = float(buf[at + _STAMP_AT : at + _STAMP_AT + 17])
                made = event_time(buf, at, end)
                sampler.add(key, self.now - sent, self.now - made)

    def _other(self, payload: bytes) -> None:
        message = json.loads(payload)
        kind = str(message.get("type"))
        self.group.types[kind] += 1
        if kind == "hello" and not self.hello.done():
            self.hello.set_result(None)
        elif kind == "resync":
            self.group.resyncs += 1

    def on_control(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if opcode == OP_PING:
            transport.write(client_frame(OP_PONG, payload[:125]))
        elif opcode == OP_CLOSE:
            code = close_code(payload)
            if not self.closing:
                self.group.closes[str(code)] += 1
                transport.write(client_frame(OP_CLOSE, payload[:2]))
            self.closing = True
            transport.close()

    def _fail(self, text: str) -> None:
        self.group.error(text)
        if not self.hello.done():
            self.hello.set_exception(ProtocolViolation(text))
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.hello.done():
            self.hello.set_exception(ConnectionError(f"closed before hello: {exc}"))
        elif not self.closing:
            self.group.closes["dropped"] += 1

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.closing = True
            self.transport.write(client_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
            self.transport.close()


async def connect_all(
    group: Group, host: str, port: int, path: str, count: int, concurrency: int
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(concurrency)
    failed = 0

    async def one() -> None:
        nonlocal failed
        async with limit:
            member = Subscriber(group, host, port, path)
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await loop.create_connection(lambda: member, host, port)
                    await member.hello
            except (OSError, TimeoutError, ConnectionError, ProtocolViolation) as exc:
                failed += 1
                group.error(f"connect: {type(exc).__name__}: {exc}")
                if member.transport is not None:
                    member.transport.abort()
                return
            group.members.append(member)

    started = time.time()
    await asyncio.gather(*(one() for _ in range(count)))
    return {
        "started": started,
        "finished": time.time(),
        "connected": len(group.members),
        "failed": failed,
        "errors": group.errors[:5],
    }


async def read_slices(group: Group, every: float) -> None:
    """Once per ``every`` s, each sliced watcher reads what its kernel buffer holds;
    they take turns in SLICE_PARTS groups, so this process reads steadily."""
    while True:
        members = [member for member in group.members if member.sliced]
        for part in range(SLICE_PARTS):
            for member in members[part::SLICE_PARTS]:
                member.resume()
            await asyncio.sleep(every / SLICE_PARTS)


async def drain(group: Group, last: int, within: float) -> dict[str, Any]:
    """Wait until every subscriber has seen counter ``last``; say how many have not."""

    async def caught_up() -> None:
        while True:
            if all(member.last >= last or member.closing for member in group.members):
                return
            await asyncio.sleep(0.02)  # the counters change in data_received: poll them

    try:
        async with asyncio.timeout(within):
            await caught_up()
    except TimeoutError:
        behind = sum(1 for member in group.members if member.last < last)
        return {"ok": False, "t": time.time(), "behind": behind}
    return {"ok": True, "t": time.time()}


async def subscribe_main(args: argparse.Namespace) -> None:
    raise_file_limit()
    live = args.count if args.live < 0 else min(args.live, args.count)
    group = Group(args.sample_cap, args.stride, max(1, args.count), live)
    slicing: asyncio.Task[None] | None = None
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    marks: dict[str, dict[str, Any]] = {}
    per_member_at_start: list[int] = []
    connected: dict[str, Any] = {}
    reply({"ready": True})
    while True:
        line = (await commands.readline()).decode().strip()
        if not line:
            return  # the orchestrator went away: stop by ourselves
        word, *rest = line.split()
        if word == "connect":
            connected = await connect_all(
                group, args.host, args.port, args.path, args.count, args.concurrency
            )
            live = sum(1 for member in group.members if not member.sliced)
            connected["live"] = live
            connected["sliced"] = len(group.members) - live
            if slicing is None and live < len(group.members):
                slicing = asyncio.create_task(read_slices(group, args.slice))
            reply(connected)
        elif word == "start":
            per_member_at_start = [member.count for member in group.members]
            marks["start"] = {"t": time.time(), **group.counters()}
            group.recording = True
            reply(marks["start"])
        elif word == "stop":
            group.recording = False
            marks["stop"] = {"t": time.time(), **group.counters()}
            reply(marks["stop"])
        elif word == "drain":
            reply(await drain(group, int(rest[0]), float(rest[1])))
        elif word == "report":
            window = [
                member.count - before
                for member, before in zip(group.members, per_member_at_start, strict=False)
            ]
            result = {
                "connect": connected,
                "marks": marks,
                "totals": group.counters(),
                "types": dict(group.types),
                "closes": dict(group.closes),
                "errors": group.errors,
                "live": sum(1 for member in group.members if not member.sliced),
                "slices": group.slices,
                "per_subscriber_window": {
                    "min": min(window, default=0),
                    "max": max(window, default=0),
                },
                "sampler": {
                    "stride": group.sampler.stride,
                    "keys": list(group.sampler.keys),
                    "values": [round(value, 6) for value in group.sampler.columns[0]],
                    "server_values": [round(value, 6) for value in group.sampler.columns[1]],
                },
            }
            if slicing is not None:
                slicing.cancel()
            await asyncio.to_thread(Path(args.result).write_text, json.dumps(result))
            for member in group.members:
                member.close()
            await asyncio.sleep(0.05)
            reply({"ok": True})
            return
        else:
            reply({"error": f"unknown command {word!r}"})


# -- producer ------------------------------------------------------------------------


IN_FLIGHT_SECONDS: Final = 0.3
"""At full speed, keep about this much of the server's own throughput unacknowledged:
three ack intervals, so it never waits for work, and no deeper a queue than that."""


def full_speed_window(acks_per_s: float, batch: int, ceiling: int) -> int:
    """Items to keep unacknowledged at full speed, given the server's recent ack rate.

    Starts at two batches and at least doubles while the window is what limits
    the rate (acks come every 100 ms), so it settles within a second or so at
    ``IN_FLIGHT_SECONDS`` of what the server really absorbs.
    """
    return max(2 * batch, min(ceiling, int(acks_per_s * IN_FLIGHT_SECONDS)))


class AckState:
    """What the server acknowledged, when, and the longest it kept us waiting."""

    def __init__(self, acked: int) -> None:
        self.acked = acked
        self.changed = asyncio.Event()
        self.warnings: list[str] = []
        self.recent: deque[tuple[float, int]] = deque([(time.monotonic(), acked)])
        self.last_ack = time.monotonic()
        self.longest_gap = 0.0

    def ack(self, pseq: int) -> None:
        now = time.monotonic()
        self.longest_gap = max(self.longest_gap, now - self.last_ack)
        self.last_ack = now
        self.acked = max(self.acked, pseq)
        self.recent.append((now, self.acked))
        while len(self.recent) > 2 and now - self.recent[1][0] >= 1.0:
            self.recent.popleft()
        self.changed.set()

    def rate(self) -> float:
        """Items acknowledged per second over about the last second."""
        (then, before), (now, after) = self.recent[0], self.recent[-1]
        return (after - before) / (now - then) if now > then else 0.0


async def produce_main(args: argparse.Namespace) -> None:
    token = os.environ.get(TOKEN_ENV, "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with ws_connect(
        args.url,
        additional_headers=headers,
        compression=None,
        max_size=None,
        ping_interval=None,
        open_timeout=CONNECT_TIMEOUT,
    ) as ws:
        await ws.send(json.dumps({"type": "hello", "producer": "bench", "stream": "agent"}))
        welcome = json.loads(await ws.recv())
        if welcome.get("type") != "welcome":
            raise RuntimeError(f"expected welcome, got {welcome}")
        state = AckState(int(welcome["acked"]))
        loop = asyncio.get_running_loop()
        commands = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
        first = state.acked + 1
        pseq = [first]  # next item to send, shared with the mark answerer

        async def read_acks() -> None:
            async for message in ws:
                payload = json.loads(message)
                if payload.get("type") == "ack":
                    state.ack(int(payload["pseq"]))
                elif payload.get("type") == "warning":
                    state.warnings.append(str(payload.get("content")))

        async def answer_marks() -> None:
            while line := (await commands.readline()).decode().strip():
                if line == "mark":
                    reply(
                        {
                            "t": time.time(),
                            "sent": pseq[0] - first,
                            "acked": state.acked,
                            "longest_ack_wait_s": round(state.longest_gap, 3),
                        }
                    )

        readers = [asyncio.create_task(read_acks()), asyncio.create_task(answer_marks())]
        started = time.time()
        reply({"started": started})
        await _send_lines(ws, args, state, pseq)
        finished = time.time()
        async with asyncio.timeout(ACK_TIMEOUT):
            while state.acked < pseq[0] - 1:
                state.changed.clear()
                await state.changed.wait()
        reply(
            {
                "done": True,
                "started": started,
                "finished": finished,
                "sent": pseq[0] - first,
                "acked": state.acked,
                "warnings": state.warnings[:5],
                "longest_ack_wait_s": round(state.longest_gap, 3),
            }
        )
        for task in readers:
            task.cancel()


async def _send_lines(ws: Any, args: argparse.Namespace, state: AckState, pseq: list[int]) -> None:
    """Send until --count items or --duration seconds: at --rate, what is due every --tick
    in one message; at full speed, batches with a window that follows the server's acks."""
    first = pseq[0]
    limit = args.count if args.count else None
    end = time.time() + args.duration if args.duration else None
    started = time.time()
    ticks = 0
    while True:
        now = time.time()
        sent = pseq[0] - first
        if (limit is not None and sent >= limit) or (end is not None and now >= end):
            return
        window = (
            args.window if args.rate else full_speed_window(state.rate(), args.batch, args.window)
        )
        in_flight = pseq[0] - 1 - state.acked
        if in_flight >= window:
            state.changed.clear()
            async with asyncio.timeout(ACK_TIMEOUT):
                await state.changed.wait()
            continue
        want = args.batch if limit is None else min(args.batch, limit - sent)
        if args.rate:
            due = int(args.rate * (now - started)) + 1 - sent
            if due <= 0:
                ticks += 1
                await asyncio.sleep(max(0.0, started + ticks * args.tick - time.time()))
                continue
            want = min(want, due)
        count = min(want, window - in_flight)
        if in_flight == 0:
            state.last_ack = time.monotonic()  # the server was idle until now, not slow
        stamp = time.time()
        lines = [make_line(pseq[0] + i, stamp, args.line_size) for i in range(count)]
        await ws.send(json.dumps({"type": "lines", "first": pseq[0], "lines": lines}))
        pseq[0] += count


# -- command line ------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("subscribe", help="hold many subscriber connections")
    sub.add_argument("host")
    sub.add_argument("port", type=int)
    sub.add_argument("path")
    sub.add_argument("--count", type=int, required=True)
    sub.add_argument("--concurrency", type=int, default=64, help="handshakes in flight")
    sub.add_argument("--sample-cap", type=int, default=200_000)
    sub.add_argument("--stride", type=int, default=1, help="sample 1 in STRIDE deliveries")
    sub.add_argument("--result", required=True)
    sub.add_argument(
        "--live",
        type=int,
        default=-1,
        help="how many read live and sample latency; the others read in slices (-1: all live)",
    )
    sub.add_argument("--slice", type=float, default=1.0, help="seconds between sliced reads")
    pro = commands.add_parser("produce", help="feed bench lines through the publish endpoint")
    pro.add_argument("url")
    pro.add_argument("--duration", type=float, default=0.0)
    pro.add_argument("--count", type=int, default=0)
    pro.add_argument("--rate", type=float, default=0.0, help="events/s; 0 is full speed")
    pro.add_argument(
        "--tick", type=float, default=0.05, help="at --rate: send what is due this often"
    )
    pro.add_argument("--batch", type=int, default=64, help="lines per message")
    pro.add_argument("--window", type=int, default=50_000, help="most unacked items in flight")
    pro.add_argument("--line-size", type=int, default=125)
    args = parser.parse_args(argv)
    if args.command == "subscribe":
        asyncio.run(subscribe_main(args))
    else:
        if not args.duration and not args.count:
            parser.error("produce needs --duration or --count")
        asyncio.run(produce_main(args))


if __name__ == "__main__":
    main()
