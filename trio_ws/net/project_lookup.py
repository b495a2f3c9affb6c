"""The registry read each connecting client needs, shared by the clients that wait for it.

Every websocket and REST request for a project looks its name up in the registry
(another process may add or remove projects) and checks that its directory exists.
One read per connection is an SQLite open, a schema check and a query in a worker
thread: at a connect storm of thousands of watchers that was a quarter of the
server's CPU, and dozens of worker threads fought the event loop for the GIL.

So reads of one name are coalesced, without ever answering from a read older than
the request: a request joins the read of its name that has not started yet (or
starts one); a read starts only once the previous read of that name has finished.
Every answer therefore comes from a read begun after its request arrived, exactly
as if each request had read alone, and under load one read serves every request
that arrived during the previous one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


@dataclass
class _Read(Generic[T]):
    """One read of one name and the requests waiting for it."""

    done: trio.Event = field(default_factory=trio.Event)
    result: T | None = None
    error: BaseException | None = None


class CoalescedReads(Generic[T]):
    """``read(path, name)`` in a worker thread, at most one at a time per name, its
    answer shared by every request that arrived before it began (module docstring)."""

    def __init__(self, read: Callable[[Path, str], T]) -> None:
        self._read = read
        self._waiting: dict[tuple[Path, str], _Read[T]] = {}
        self._running: dict[tuple[Path, str], trio.Event] = {}

    async def get(self, path: Path, name: str) -> T:
        key = (path, name)
        pending = self._waiting.get(key)
        if pending is None:
            pending = _Read()
            self._waiting[key] = pending
            # The first request of a batch reads for all: it waits for the read in
            # progress, then starts its own. A later request joins while it waits.
            await self._run(key, pending)
        else:
            await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]  # set when error is None

    async def _run(self, key: tuple[Path, str], pending: _Read[T]) -> None:
        # Shielded, and bounded by the reads themselves: the joiners wait for this
        # answer even when the request that started it is cancelled (its client left).
        with trio.CancelScope(shield=True):
            while (previous := self._running.get(key)) is not None:
                await previous.wait()
            # From here on, newcomers start a new batch: this read may already be
            # under way when they arrive.
            del self._waiting[key]
            finished = trio.Event()
            self._running[key] = finished
            try:
                pending.result = await trio.to_thread.run_sync(self._read, *key)
            except Exception as exc:  # noqa: BLE001 - raised to every waiter by get
                pending.error = exc
            finally:
                del self._running[key]
                finished.set()
                pending.done.set()
