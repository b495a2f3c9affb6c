"""A real nginx in front of a test server, as a user puts one in front of trio-ws to
serve the AutoForge UI from another origin: its own page at ``/``, and ``/ws/`` and
the agent API (``/api/projects/NAME/agent/...``) proxied to trio-ws, websockets
included. Started on a free 127.0.0.1 port in a temp dir, stopped by the fixture."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Final

import trio
from services import free_port

START_TIMEOUT: Final = 10.0
CANDIDATES: Final = ("nginx", "/usr/sbin/nginx")

CONFIG: Final = """
{user}
daemon off;
worker_processes 1;
pid {home}/nginx.pid;
error_log {home}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {home}/body;
    proxy_temp_path {home}/proxy;
    fastcgi_temp_path {home}/fastcgi;
    uwsgi_temp_path {home}/uwsgi;
    scgi_temp_path {home}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ root {home}/ui; }}
        location ~ ^/api/projects/[^/]+/agent/ {{
            proxy_pass http://127.0.0.1:{upstream};
        }}
        location /ws/ {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""


def nginx_path() -> str | None:
    """The ``nginx`` binary (Debian puts it in /usr/sbin), or None."""
    for candidate in CANDIDATES:
        found = shutil.which(candidate)
        if found is not None:
            return found
    return None


class NginxProxy:
    """One nginx process serving ``home/ui`` and proxying to a trio-ws port."""

    def __init__(self, binary: str, home: Path) -> None:
        self.binary = binary
        self.home = home
        self.port = free_port()
        self.process: trio.Process | None = None

    @property
    def origin(self) -> str:
        """The origin of the pages it serves: what a browser sends as ``Origin``."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self, upstream: int) -> None:
        """Proxy to trio-ws on ``upstream``; return once nginx listens (its workers come up
        after the master: nothing but a connection tells when)."""
        await trio.to_thread.run_sync(self._write_files, upstream)
        self.process = await trio.lowlevel.open_process(
            [self.binary, "-p", str(self.home), "-c", str(self.home / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with trio.move_on_after(START_TIMEOUT):
            while self.process.returncode is None:
                try:
                    await (await trio.open_tcp_stream("127.0.0.1", self.port)).aclose()
                    return
                except OSError:
                    await trio.sleep(0.05)
            raise RuntimeError(f"nginx exited: {self.error_log()}")
        raise RuntimeError(f"nginx did not listen within {START_TIMEOUT} s: {self.error_log()}")

    def _write_files(self, upstream: int) -> None:
        home = self.home
        (home / "ui").mkdir(parents=True, exist_ok=True)
        (home / "ui" / "index.html").write_text("<!doctype html><title>the UI</title>\n")
        # Run as root (CI), nginx's workers would drop to nobody, who cannot read tmp_path.
        user = "user root;" if os.geteuid() == 0 else ""
        config = CONFIG.format(user=user, home=home, port=self.port, upstream=upstream)
        (home / "nginx.conf").write_text(config)

    async def stop(self) -> None:
        """Stop nginx gracefully (SIGQUIT), killed if it takes too long."""
        process, self.process = self.process, None
        if process is None:
            return
        with trio.CancelScope(shield=True):
            process.send_signal(signal.SIGQUIT)
            with trio.move_on_after(START_TIMEOUT):
                await process.wait()
                return
            process.kill()
            await process.wait()

    def error_log(self) -> str:
        path = self.home / "error.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""
