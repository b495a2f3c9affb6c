"""``trio-ws run --screenshots``: pictures of the agents' browsers while someone watches.

Every 2 s, while the server says a subscriber watches (``screenshots``) and the run
has sessions with a browser (`BrowserSessions`), each session is captured as
AutoForge 0.1.22 does it: ``playwright-cli -s <session> screenshot
--filename=<project>/.playwright-cli/_view_<session>.png`` in the project's
directory, 5 s at most; the file is read, deleted and sent as a ``screenshot``
straight to the producer's connection (not its outbox: a screenshot is never
resent). A session whose captures fail 10 times in a row is dropped, said once.
"""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path
from typing import Final

import trio

from trio_ws.clients.browser_sessions import BrowserSessions
from trio_ws.clients.outbox import Report
from trio_ws.clients.producer import Producer
from trio_ws.core import protocol
from trio_ws.core.messages import ScreenshotMessage

INTERVAL: Final = 2.0
TIMEOUT: Final = 5.0
"""Seconds one capture may take; then its ``playwright-cli`` is killed."""
MAX_FAILURES: Final = 10
"""Failed captures in a row after which a session is dropped."""
CONCURRENCY: Final = 3
"""Captures running at once (AutoForge's semaphore)."""
CLI: Final = "playwright-cli"
VIEW_DIR: Final = ".playwright-cli"


class CaptureFailed(Exception):
    """One capture gave no picture; the message says why."""


class BrowserView:
    """The capture loop of one run."""

    def __init__(
        self,
        producer: Producer,
        sessions: BrowserSessions,
        project_dir: Path,
        report: Report,
        *,
        interval: float = INTERVAL,
        timeout: float = TIMEOUT,
        max_failures: int = MAX_FAILURES,
    ) -> None:
        self.producer = producer
        self.sessions = sessions
        self.project_dir = project_dir
        self.report = report
        self.interval = interval
        self.timeout = timeout
        self.max_failures = max_failures
        self.failures: dict[str, int] = {}
        self.sent = 0
        self._limiter = trio.CapacityLimiter(CONCURRENCY)

    async def run(self) -> None:
        """Capture until cancelled; without ``playwright-cli`` on PATH, say so and return."""
        cli = await trio.to_thread.run_sync(shutil.which, CLI)
        if cli is None:
            self.report(f"--screenshots: no {CLI} on PATH; no browser screenshots")
            return
        while True:
            if self.producer.connected and self.producer.watching and self.sessions.sessions:
                async with trio.open_nursery() as nursery:
                    for session, feature in list(self.sessions.sessions.items()):
                        nursery.start_soon(self._capture, cli, session, feature)
            await trio.sleep(self.interval)

    async def _capture(self, cli: str, session: str, feature: int) -> None:
        async with self._limiter:
            try:
                image = await self._take(cli, session)
            except CaptureFailed as failed:
                self._failed(session, str(failed))
                return
        self.failures.pop(session, None)
        if session not in self.sessions.sessions or not self.producer.watching:
            return  # its agent ended, or nobody watches any more, while it was taken
        message: ScreenshotMessage = {
            "type": "screenshot",
            "sessionName": session,
            "featureId": feature,
            "imageData": image,
            "timestamp": protocol.iso_timestamp(time.time()),
        }
        if self.producer.send_screenshot(message):
            self.sent += 1

    async def _take(self, cli: str, session: str) -> str:
        """One capture: the picture as base64, or CaptureFailed."""
        path = self.project_dir / VIEW_DIR / f"_view_{session}.png"
        argv = [cli, "-s", session, "screenshot", f"--filename={path}"]
        try:
            await trio.to_thread.run_sync(_make_dir, path.parent)
            with trio.move_on_after(self.timeout) as timer:
                result = await trio.run_process(
                    argv,
                    cwd=self.project_dir,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            if timer.cancelled_caught:
                raise CaptureFailed(f"timed out after {self.timeout:g} s")
            if result.returncode != 0:
                said = result.stderr.decode("utf-8", "replace").strip()[-200:]
                raise CaptureFailed(f"exit {result.returncode}" + (f": {said}" if said else ""))
            image = await trio.to_thread.run_sync(_read_base64, path)
        except OSError as exc:
            raise CaptureFailed(exc.strerror or str(exc)) from None
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_remove, path)
        if len(image) > protocol.MAX_SCREENSHOT_BYTES:
            raise CaptureFailed(f"{len(image)} base64 characters, over the server's limit")
        return image

    def _failed(self, session: str, why: str) -> None:
        count = self.failures.get(session, 0) + 1
        self.failures[session] = count
        if count >= self.max_failures:
            del self.failures[session]
            self.sessions.drop(session)
            self.report(
                f"browser session {session}: {count} screenshots failed in a row ({why}); "
                "not captured any more"
            )


def _make_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)


def _read_base64(path: Path) -> str:
    """The file's bytes as base64 (no ``data:`` prefix); FileNotFoundError if none."""
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        return  # read-only or gone with its directory: the next capture overwrites it
