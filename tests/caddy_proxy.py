"""A real Caddy in front of a test server, running the README's Caddyfile snippets with
only the ports substituted: the AutoForge UI's routes (``/ws/*`` and the agent API to
trio-ws, the rest to AutoForge's backend), and "Caddy in front" (``reverse_proxy`` of
a whole site, over TLS from Caddy's own internal CA). Started on free 127.0.0.1
ports; everything it writes (its CA, certificates, autosaved config) stays in its
temp dir, it never binds :80 or :443 and never touches the system trust store."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
from pathlib import Path
from typing import Final

import trio
from services import free_port

START_TIMEOUT: Final = 15.0

GLOBAL: Final = """{{
    admin off
    http_port {http_port}
    https_port {https_port}
    skip_install_trust
    local_certs
}}
"""

# README.md, "Caddy, the same routes:" (the UI on 8080, AutoForge on 8888, trio-ws on
# 8899); AutoForge's backend stands in as a second site serving the UI's page.
AUTOFORGE_ROUTES: Final = """
:{port} {{
    bind 127.0.0.1
    @trio path /ws/* /api/projects/*/agent/*
    reverse_proxy @trio 127.0.0.1:{upstream}
    reverse_proxy 127.0.0.1:{backend}
}}

:{backend} {{
    bind 127.0.0.1
    root * {home}/ui
    file_server
}}
"""

# README.md, "Caddy in front, with automatic TLS": the site's name and its
# ``reverse_proxy`` as written; ``local_certs`` (above) makes the automatic TLS Caddy's
# internal CA instead of Let's Encrypt, which cannot reach a test machine.
IN_FRONT: Final = """
{name} {{
    reverse_proxy 127.0.0.1:{upstream}
}}
"""


def caddy_path() -> str | None:
    """The ``caddy`` binary (Debian's package), or None."""
    return shutil.which("caddy")


class CaddyProxy:
    """One Caddy process with a Caddyfile written into ``home``."""

    def __init__(self, binary: str, home: Path) -> None:
        self.binary = binary
        self.home = home
        self.port = free_port()  # the AutoForge routes' site
        self.backend = free_port()  # AutoForge's backend (a page)
        self.http_port = free_port()  # Caddy's HTTP->HTTPS redirects, otherwise :80
        self.https_port = free_port()  # the TLS sites, otherwise :443
        self.process: trio.Process | None = None

    @property
    def origin(self) -> str:
        """The origin of the UI's pages: what a browser sends as ``Origin``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def root_ca(self) -> Path:
        """Caddy's internal root certificate, which clients trust as ``--cafile``."""
        return self.home / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.root_ca))

    async def start_routes(self, upstream: int) -> None:
        """The AutoForge routes to trio-ws on ``upstream``; return once Caddy listens."""
        site = AUTOFORGE_ROUTES.format(
            port=self.port, upstream=upstream, backend=self.backend, home=self.home
        )
        await self._start(site)
        await self._wait_listening(self.port)

    async def start_in_front(self, upstream: int, *names: str) -> None:
        """ "Caddy in front" for each site name, to trio-ws on ``upstream``; return once
        the TLS port serves a certificate its root signed for the first name."""
        sites = "".join(IN_FRONT.format(name=name, upstream=upstream) for name in names)
        await self._start(sites)
        await self._wait_certified(names[0])

    async def _start(self, sites: str) -> None:
        caddyfile = self.home / "Caddyfile"
        config = GLOBAL.format(http_port=self.http_port, https_port=self.https_port) + sites
        await trio.to_thread.run_sync(self._write_files, caddyfile, config)
        environment = dict(os.environ)
        environment.update(
            HOME=str(self.home),
            XDG_DATA_HOME=str(self.home / "data"),
            XDG_CONFIG_HOME=str(self.home / "config"),
        )
        with (self.home / "caddy.log").open("wb") as log:
            self.process = await trio.lowlevel.open_process(
                [self.binary, "run", "--config", str(caddyfile), "--adapter", "caddyfile"],
                stdout=log,
                stderr=log,
                env=environment,
                cwd=str(self.home),
            )

    def _write_files(self, caddyfile: Path, config: str) -> None:
        (self.home / "ui").mkdir(parents=True, exist_ok=True)
        (self.home / "ui" / "index.html").write_text("<!doctype html><title>the UI</title>\n")
        caddyfile.write_text(config)

    async def _wait_listening(self, port: int) -> None:
        with trio.move_on_after(START_TIMEOUT):
            while self._running():
                try:
                    await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                    return
                except OSError:
                    await trio.sleep(0.05)
            raise RuntimeError(f"caddy exited: {self.log()}")
        raise RuntimeError(f"caddy did not listen within {START_TIMEOUT} s: {self.log()}")

    async def _wait_certified(self, name: str) -> None:
        """Caddy issues its certificates after it starts: wait for a handshake that
        verifies against the root, which it also writes after it starts."""
        with trio.move_on_after(START_TIMEOUT):
            while self._running():
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.https_port)
                    tls = trio.SSLStream(stream, self.ssl_context(), server_hostname=name)
                    await tls.do_handshake()
                    await stream.aclose()
                    return
                except (OSError, trio.BrokenResourceError, ssl.SSLError):
                    await trio.sleep(0.1)
            raise RuntimeError(f"caddy exited: {self.log()}")
        raise RuntimeError(f"caddy served no certificate within {START_TIMEOUT} s: {self.log()}")

    def _running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self) -> None:
        """Stop Caddy gracefully (SIGTERM), killed if it takes too long."""
        process, self.process = self.process, None
        if process is None:
            return
        with trio.CancelScope(shield=True):
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(START_TIMEOUT):
                await process.wait()
                return
            process.kill()
            await process.wait()

    def log(self) -> str:
        path = self.home / "caddy.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""
