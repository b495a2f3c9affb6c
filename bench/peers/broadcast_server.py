"""The reference fan-out server: python-websockets' asyncio ``broadcast()``.

This is the standard Python answer to "send every event to every
watcher": one asyncio process, ``websockets.asyncio.server.serve`` with its
defaults, a set of open connections, and ``broadcast(connections, message)``
per event, which writes each frame to every connection at once and never
waits for a slow one (its buffer just grows).

It speaks just enough of the trio-ws protocol for the same bench clients to
drive it: subscribers on ``/ws/projects/bench`` get a ``hello`` and then one
``{"type":"log","line":..,"timestamp":..,"seq":n}`` per line (the same
shape and size as trio-ws's ``log`` event); the producer on
``/ws/projects/bench/publish`` gets ``welcome`` and an ``ack`` every 100 ms,
and resent items are skipped, as in PROTOCOL.md 4. No parsing, redaction,
history or snapshot: this is the cost floor of a plain broadcaster.

Run: ``python -m bench.peers.broadcast_server --port 0``; prints
``listening on 127.0.0.1:PORT`` and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
import time
from datetime import UTC, datetime
from typing import Final

from websockets.asyncio.server import ServerConnection, broadcast, serve

ACK_INTERVAL: Final = 0.1
BACKLOG: Final = 4096
"""Listen backlog; asyncio's default of 100 would make connecting thousands look slow."""


def iso_timestamp(unix_seconds: float) -> str:
    """Same text as trio-ws's timestamps: ISO 8601, UTC, microseconds (PROTOCOL.md 1)."""
    return datetime.fromtimestamp(unix_seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode(message: dict[str, object]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


class Broadcaster:
    """One project's subscribers and its event counter."""

    def __init__(self) -> None:
        self.subscribers: set[ServerConnection] = set()
        self.seq = 0
        self.applied: dict[str, int] = {}

    async def handle(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else ""
        route = path.split("?", 1)[0]
        if route == "/ws/projects/bench/publish":
            await self.produce(ws)
        elif route == "/ws/projects/bench":
            await self.subscribe(ws)
        else:
            await ws.close(4004, "Project not found in registry")

    async def subscribe(self, ws: ServerConnection) -> None:
        hello = {
            "type": "hello",
            "protocol": 1,
            "project": "bench",
            "epoch": "peer",
            "seq": self.seq,
            "server": "websockets-broadcast",
        }
        await ws.send(encode(hello))
        self.subscribers.add(ws)
        try:
            async for _ in ws:
                pass  # subscribers have nothing to say here; keep reading so pings work
        finally:
            self.subscribers.discard(ws)

    async def produce(self, ws: ServerConnection) -> None:
        hello = json.loads(await ws.recv())
        producer = str(hello.get("producer"))
        await ws.send(encode({"type": "welcome", "acked": self.applied.get(producer, 0)}))
        acker = asyncio.create_task(self._acks(ws, producer))
        try:
            async for message in ws:
                payload = json.loads(message)
                if payload.get("type") == "lines":
                    self._lines(producer, int(payload["first"]), payload["lines"])
        finally:
            acker.cancel()

    def _lines(self, producer: str, first: int, lines: list[str]) -> None:
        applied = self.applied.setdefault(producer, first - 1)
        for line in lines[max(0, applied + 1 - first) :]:
            self.seq += 1
            stamp = iso_timestamp(time.time())
            event = {"type": "log", "line": line, "timestamp": stamp, "seq": self.seq}
            broadcast(self.subscribers, encode(event))
        self.applied[producer] = max(applied, first + len(lines) - 1)

    async def _acks(self, ws: ServerConnection, producer: str) -> None:
        sent = -1
        while True:
            await asyncio.sleep(ACK_INTERVAL)
            applied = self.applied.get(producer, 0)
            if applied > sent:
                await ws.send(encode({"type": "ack", "pseq": applied}))
                sent = applied


async def main_async(port: int) -> None:
    broadcaster = Broadcaster()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with serve(broadcaster.handle, "127.0.0.1", port, backlog=BACKLOG) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        sys.stdout.write(f"listening on 127.0.0.1:{bound}\n")
        sys.stdout.flush()
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.broadcast_server")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(main_async(args.port))


if __name__ == "__main__":
    main()
