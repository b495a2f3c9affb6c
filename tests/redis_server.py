"""A real ``redis-server`` for the redis journal tests, on a free 127.0.0.1 port.

Started without persistence (``--save '' --appendonly no``), so a restart comes
back empty with a new ``run_id``, as a Redis without persistence does.
"""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import time
from pathlib import Path
from typing import Final

from services import free_port

REDIS_SERVER: Final = "redis-server"
START_TIMEOUT: Final = 10.0
READY_LINE: Final = b"Ready to accept connections"


def redis_server_path() -> str | None:
    """The ``redis-server`` binary, or None when it is not installed."""
    return shutil.which(REDIS_SERVER)


class RedisServer:
    """One ``redis-server`` process in ``directory``; ``start`` again reuses the port."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and return once it accepts connections (it says so on stdout)."""
        if self.process is not None:
            raise RuntimeError("redis-server is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.directory),
                "--maxmemory-policy", "noeviction",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert process.stdout is not None
        output = b""
        deadline = time.monotonic() + START_TIMEOUT
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while READY_LINE not in output:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    process.kill()
                    process.wait()
                    raise RuntimeError(f"redis-server did not start: {output.decode()[-500:]}")
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    process.wait()
                    raise RuntimeError(f"redis-server exited: {output.decode()[-500:]}")
                output += chunk
        self.process = process

    def stop(self) -> None:
        """Kill the server (no shutdown save: its data is gone, as after a crash)."""
        if self.process is None:
            return
        process, self.process = self.process, None
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()
