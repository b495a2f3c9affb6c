"""Every tunable default of trio-ws, each stated once.

The server's `ServerConfig`, the library's keyword defaults and the CLI's option
defaults all refer here, so ``--help`` shows what the code does. Core layer: it
imports nothing of trio-ws, so any module may use it.
"""

from __future__ import annotations

from typing import Final

HOST: Final = "127.0.0.1"
"""Where `serve` listens: loopback, so nothing off this machine reaches it unless asked."""
PORT: Final = 8888
"""The port `serve` and `demo` listen on and clients' default server uses."""
SERVER_URL: Final = f"http://{HOST}:{PORT}"
"""The server `run`, `publish` and `watch` talk to when not told another."""

POLL_INTERVAL: Final = 1.0
"""Seconds between reads of each watched project's features database."""
LOCK_TIMEOUT: Final = 1.0
"""Seconds one read waits on a locked features database before reporting it."""
POLL_RESTART: Final = (0.1, 5.0)
"""A crashed poll loop restarts after 0.1 s, doubling per crash in a row up to 5 s."""
HISTORY: Final = 10_000
"""Most events held per project for resume and catch-up."""
HISTORY_BYTES: Final = 64 * 1024 * 1024
"""Most bytes of events held per project, counted as the UTF-8 of each event's JSON text
(no frame headers), in the hub's history and the journal alike; each log tail a fresh
sync replays keeps to it too."""
QUEUE_SIZE: Final = 1024
"""Most messages one subscriber may have queued and not yet written (a plain list, not a
channel): a subscriber with a full queue is behind, and is caught up from the held
history once it drains, or resynced (PROTOCOL.md 3.1)."""
BACKLOG: Final = 0
"""Log lines replayed on a fresh sync when the subscriber names no ``backlog``: none, so a
client that appends what it receives on every reconnect (the AutoForge UI) sees nothing
twice (PROTOCOL.md 3). Our dashboard and `watch` ask for theirs explicitly."""
CLIENT_BACKLOG: Final = 100
"""Log lines our own clients (`watch`, the dashboard) ask for on a fresh sync."""
MAX_BACKLOG: Final = 1000
"""Most log lines (per stream) a fresh sync replays, and so a project keeps for it."""

HANDSHAKE_TIMEOUT: Final = 10.0
"""Seconds a client has to finish its HTTP request or websocket upgrade."""
STALL_TIMEOUT: Final = 30.0
"""Seconds a response write may make no progress before the peer is dropped."""
PRODUCER_GRACE: Final = 30.0
"""Seconds a vanished agent producer may take to come back before its run is crashed."""
PRODUCER_PING_TIMEOUT: Final = 20.0
"""A producer that answers no websocket ping for this long is dropped (PROTOCOL.md 4.2)."""
STAGED_LIMIT: Final = 20_000
"""Events a project may hold staged (numbered, not yet committed) before the server stops
reading its producers: while the journal cannot write (a full disk), or a producer
sends faster than it commits, a producer is back-pressured instead of growing the
server without bound (it keeps its items; nothing is lost)."""
SUBSCRIBER_IDLE: Final = 20.0
"""A subscriber that sent nothing for this long is pinged (a vanished dashboard is
otherwise held forever on an idle project)."""
SUBSCRIBER_PONG_TIMEOUT: Final = 20.0
"""A pinged subscriber that answers no pong within this long is dropped."""

CAPACITY: Final = 100_000
"""Unacked items (lines and statuses) a producer buffers while the server is away."""
FLUSH_WITHIN: Final = 5.0
"""Seconds a producer keeps delivering what is left once its input ended."""
KILL_AFTER: Final = 10.0
"""Seconds `run` waits between SIGTERM and SIGKILL when stopping its command."""

IDLE_CLOSE: Final = 600.0
"""Seconds a project may go without subscriber, producer or request before it is closed
(its writer, broker subscription and history freed); its next use opens it again."""
MAX_PROJECTS: Final = 1000
"""Most projects open at once; beyond it a new one is refused until one is closed idle."""
