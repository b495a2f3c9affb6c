"""Which journal backend a node opens: the options in, a `JournalBackend` out.

The one place that knows the backends by name, so the server and the CLI
(``trio-ws projects remove``) open the same one from the same options
(STATE.md 1, 5): ``memory``, ``sqlite`` under ``<home>/journal``, or Redis
when a broker is named.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from trio_ws.journal.interface import (
    DEFAULT_HISTORY,
    DEFAULT_HISTORY_BYTES,
    ArchiveLimits,
    JournalBackend,
)
from trio_ws.journal.memory import MemoryBackend
from trio_ws.journal.redis import RedisBackend, open_redis_backend
from trio_ws.journal.sqlite import SqliteBackend

JournalName = Literal["sqlite", "memory", "redis"]
SyncMode = Literal["normal", "full"]


def local_backend(
    name: JournalName,
    home: Path,
    *,
    sync: SyncMode = "normal",
    history: int = DEFAULT_HISTORY,
    history_bytes: int = DEFAULT_HISTORY_BYTES,
    archive: ArchiveLimits | None = None,
) -> JournalBackend:
    """The backend that needs no client: ``memory``, or ``sqlite`` under ``home``
    (``redis`` needs one: `open_shared_backend`)."""
    if name == "redis":
        raise ValueError("the redis journal is opened with open_shared_backend")
    if name == "memory":
        return MemoryBackend(history=history, history_bytes=history_bytes, archive=archive)
    return SqliteBackend(
        home,
        synchronous="FULL" if sync == "full" else "NORMAL",
        history=history,
        history_bytes=history_bytes,
        archive=archive,
    )


@asynccontextmanager
async def open_shared_backend(
    broker: str,
    *,
    history: int = DEFAULT_HISTORY,
    history_bytes: int = DEFAULT_HISTORY_BYTES,
    archive: ArchiveLimits | None = None,
) -> AsyncIterator[RedisBackend]:
    """The broker's backend for the block. Redis must answer now (JournalError naming
    it if not): a node that cannot share its projects should not start."""
    async with open_redis_backend(
        broker, history=history, history_bytes=history_bytes, archive=archive
    ) as backend:
        await backend.check()
        yield backend
