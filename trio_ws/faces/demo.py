"""`trio-ws demo`: a live run to watch with no setup.

Everything in it is real except the orchestrator: a home of its own (a
temporary one unless ``--home``), a registered project with a real features
database, the server, and the simulated orchestrator of `demo_orchestrator`
supervised by a real ``trio-ws run`` child process that publishes over the
real producer endpoint. So the demo shows exactly what a real AutoForge run
would show, including working control buttons.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from trio_ws.core import defaults
from trio_ws.core.security import load_token
from trio_ws.data.registry import Registry
from trio_ws.net.config import ServerConfig
from trio_ws.net.server import Server, serve
from trio_ws.runtime.signals import on_stop_signals

log = logging.getLogger("trio_ws.faces.demo")

PROJECT: Final = "demo"
STOP_CHILD_WITHIN: Final = 15.0
FLUSH_WITHIN: Final = 2.0
"""How long a producer child still tries to deliver once stopped (our server may be gone)."""


@dataclass(frozen=True)
class DemoOptions:
    home: Path | None
    port: int = defaults.PORT
    host: str = defaults.HOST
    speed: float = 1.0
    duration: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class DemoLinks:
    """What the demo tells the person who started it."""

    dashboard: str
    watch: str
    home: Path


def prepare_home(home: Path) -> tuple[Registry, Path]:
    """The demo's registry and project directory, created or reused."""
    project_dir = home / "projects" / "todo-app"
    project_dir.mkdir(parents=True, exist_ok=True)
    registry = Registry(home / "registry.db")
    registry.ensure()
    existing = registry.get(PROJECT)
    if existing is None:
        registry.add(PROJECT, project_dir)
    elif existing.path != project_dir.resolve():
        project_dir = existing.path
        project_dir.mkdir(parents=True, exist_ok=True)
    return registry, project_dir


def trio_ws_command() -> list[str]:
    """How to start our own CLI in a child process, installed or not."""
    installed = Path(sys.executable).parent / "trio-ws"
    if installed.exists():
        return [str(installed)]
    return [sys.executable, "-m", "trio_ws"]


async def run_demo(options: DemoOptions, announce: Callable[[DemoLinks], None]) -> int:
    """Serve the demo until its duration ends or a signal arrives; returns the exit status."""
    temporary = options.home is None
    home = Path(tempfile.mkdtemp(prefix="trio-ws-demo-")) if temporary else options.home
    assert home is not None
    try:
        return await _run(options, home, announce)
    finally:
        if temporary:
            shutil.rmtree(home, ignore_errors=True)


async def _run(options: DemoOptions, home: Path, announce: Callable[[DemoLinks], None]) -> int:
    registry, project_dir = await trio.to_thread.run_sync(prepare_home, home)
    token = load_token(home, None, create=True)
    config = ServerConfig(
        registry_path=registry.path,
        token=token,
        host=options.host,
        port=options.port,
        poll_interval=0.5,
    )
    # Every child gets the read end; only we hold the write end, so however we
    # end (an exception, kill -9), the kernel closes it and each child stops.
    lifeline, keep_alive = os.pipe()
    stop = trio.Event()
    hurry = trio.CancelScope()
    hurried: list[int] = []

    def stop_demo(signum: int) -> None:
        log.info("signal %d: stopping the demo", signum)
        stop.set()

    def stop_now(signum: int) -> None:
        """Skip the graceful stop but still clean up: the lifeline stops the children,
        and a temporary home is removed."""
        log.warning("signal %d again: stopping the demo now", signum)
        hurried.append(signum)
        hurry.cancel()

    try:
        async with on_stop_signals(stop_demo, stop_now):
            with hurry:
                async with trio.open_nursery() as nursery:
                    server: Server = await nursery.start(serve, config)
                    base = server.url.rstrip("/")
                    announce(
                        DemoLinks(
                            dashboard=f"{base}/projects/{PROJECT}?token={token}",
                            watch=f"trio-ws watch {PROJECT} --server {base}",
                            home=home,
                        )
                    )
                    children = [
                        await nursery.start(
                            _orchestrate, options, base, home, project_dir, lifeline, dev
                        )
                        for dev in (True, False)
                    ]
                    with trio.move_on_after(options.duration or float("inf")):
                        await stop.wait()
                    async with trio.open_nursery() as stopping:
                        for child in children:
                            stopping.start_soon(_stop_child, child)
                    await server.shutdown(1001)
                    nursery.cancel_scope.cancel()
        return 128 + hurried[0] if hurried else 0
    finally:
        os.close(lifeline)
        os.close(keep_alive)


async def _orchestrate(
    options: DemoOptions,
    base: str,
    home: Path,
    project_dir: Path,
    lifeline: int,
    dev: bool,
    *,
    task_status: trio.TaskStatus[trio.Process],
) -> None:
    """Run the simulated orchestrator (or its dev server, on the dev stream) under a
    real `trio-ws run` producer."""
    orchestrator = [
        sys.executable, "-m", "trio_ws.faces.demo_orchestrator",
        "--project-dir", str(project_dir), "--speed", str(options.speed),
    ]  # fmt: skip
    if options.seed is not None:
        orchestrator += ["--seed", str(options.seed)]
    if dev:
        orchestrator.append("--dev-server")
    command = [
        *trio_ws_command(), "run", PROJECT, "--quiet", "--home", str(home),
        "--server", base, "--cwd", str(project_dir), *(["--dev"] if dev else []),
        "--lifeline", str(lifeline), "--flush-within", str(FLUSH_WITHIN),
        "--", *orchestrator,
    ]  # fmt: skip
    # Its own session: our signal handling decides when and how it stops.
    process = await trio.lowlevel.open_process(
        command, start_new_session=True, pass_fds=(lifeline,)
    )
    task_status.started(process)
    code = await process.wait()
    if not dev:
        log.info("demo run finished (exit %d); still serving until stopped", code)


async def _stop_child(process: trio.Process) -> None:
    """Stop the producer the way a person would (SIGTERM), so it reports `stopped`."""
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    with trio.move_on_after(STOP_CHILD_WITHIN):
        await process.wait()
        return
    process.kill()
    await process.wait()
