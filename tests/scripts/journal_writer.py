"""Appends to a sqlite journal until killed, for the kill -9 test.

Usage: journal_writer.py HOME PROJECT BOOT_ID_PATH SEED. Prints the epoch, then
after every append that returned (so is committed) the new head, one per line,
flushed: every head printed must survive a SIGKILL.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import trio

from trio_ws.journal.interface import Batch
from trio_ws.journal.sqlite import SqliteBackend


async def main(home: Path, project: str, boot_id_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    journal = SqliteBackend(home, boot_id_path=boot_id_path, history=2000).journal(project)
    state = await journal.open()
    print(state.epoch, flush=True)
    head = state.head
    while True:
        size = rng.choice((1, 1, 3, 64, 200))
        texts = [
            f'{{"seq":{head + n},"pad":"{"x" * rng.randrange(300)}"}}' for n in range(1, size + 1)
        ]
        batch = Batch(
            list(enumerate(texts, start=head + 1)), {"producer": head + size}, {"head": head + size}
        )
        await journal.append(batch)
        head += size
        print(head, flush=True)


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
