"""Sending one alert: an HTTP POST to a webhook (httpx, under Trio through anyio) or a
process with the alert's JSON on stdin (``trio.run_process``), each bounded in time.

The I/O shell of ``--notify`` and ``--notify-command``: what is sent is built by
`core/notify.py`, and the order, retries and journalled cursors are
`state/delivery.py`'s. Every failure a target can cause becomes an `Outcome`; the
logs name a target by its label, never by its URL or command line (both may carry
a token), and never show the secret.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Final

import httpx
import trio

from trio_ws.core.notify import NotifyTarget, Outcome, http_outcome, webhook_request
from trio_ws.state.delivery import RETRY, NotifySetup

log = logging.getLogger("trio_ws.net.alert_sender")

ATTEMPT_TIMEOUT: Final = 10.0
"""Seconds one attempt may take (a POST with its answer, a command to its exit)."""
STDERR_SHOWN: Final = 300
"""Characters of a failed command's stderr a log line shows (its end)."""


class AlertSender:
    """Makes one attempt at a time for `state.notify.Delivery`."""

    def __init__(
        self,
        client: httpx.AsyncClient | None,
        *,
        secret: str | None = None,
        timeout: float = ATTEMPT_TIMEOUT,
    ) -> None:
        self._client = client
        self._secret = secret
        self.timeout = timeout

    async def send(self, target: NotifyTarget, event_text: str, delivery: str) -> Outcome:
        if target.kind == "command":
            return await self._run(target, event_text)
        return await self._post(target, event_text, delivery)

    async def _post(self, target: NotifyTarget, event_text: str, delivery: str) -> Outcome:
        client = self._client
        assert client is not None, "a webhook target comes with a client"
        request = webhook_request(
            target, event_text, delivery=delivery, now=time.time(), secret=self._secret
        )
        try:
            # httpx bounds each phase; this bounds the whole attempt, a slow drip included.
            with trio.fail_after(self.timeout):
                async with client.stream(
                    "POST", request.url, content=request.body, headers=request.headers
                ) as response:
                    # The body is not read: not ours to log.
                    status = response.status_code
                    retry_after = response.headers.get("retry-after")
        except trio.TooSlowError:
            return Outcome.retry(f"no answer within {self.timeout:g} s")
        except httpx.HTTPError as exc:
            # An httpx message may quote the URL: only its type, and an OS error's text.
            cause = exc.__cause__ or exc.__context__
            detail = f": {cause}" if isinstance(cause, OSError) else ""
            return Outcome.retry(f"{type(exc).__name__}{detail}")
        return http_outcome(status, retry_after)

    async def _run(self, target: NotifyTarget, event_text: str) -> Outcome:
        """Run the command, no shell, in its own process group, with the alert on stdin;
        past the timeout the whole group is killed."""
        result: subprocess.CompletedProcess[bytes] | None = None
        try:
            with trio.move_on_after(self.timeout):
                result = await trio.run_process(
                    list(target.argv),
                    stdin=event_text.encode() + b"\n",
                    stdout=subprocess.DEVNULL,
                    capture_stderr=True,
                    check=False,
                    start_new_session=True,
                    deliver_cancel=_kill_group,
                )
        except OSError as exc:
            return Outcome.retry(f"cannot run it: {exc.strerror or exc}")
        if result is None:
            return Outcome.retry(f"killed after {self.timeout:g} s")
        if result.returncode != 0:
            stderr = result.stderr.decode(errors="replace").strip()[-STDERR_SHOWN:]
            shown = f": {stderr}" if stderr else ""
            return Outcome.retry(f"exit code {result.returncode}{shown}")
        return Outcome.delivered()


async def _kill_group(process: trio.Process) -> None:
    """Kill the command and whatever it started (they share its process group): a
    child left holding stderr would keep the attempt from ending."""
    with contextlib.suppress(ProcessLookupError):  # it ended by itself meanwhile
        os.killpg(process.pid, signal.SIGKILL)


@asynccontextmanager
async def open_notify(
    targets: Sequence[NotifyTarget],
    *,
    secret: str | None = None,
    timeout: float = ATTEMPT_TIMEOUT,  # noqa: ASYNC109 (each attempt's, not this call's)
    retry: tuple[float, float] = RETRY,
) -> AsyncIterator[NotifySetup | None]:
    """Where alerts go, for the server's lifetime: one HTTP client (its connections
    kept between alerts) when any target is a webhook; None without targets."""
    if not targets:
        yield None
        return
    webhooks = [target for target in targets if target.kind != "command"]
    for library in ("httpx", "httpcore"):
        # Their INFO and DEBUG lines quote each request's URL: a webhook's token.
        logging.getLogger(library).setLevel(logging.WARNING)
    for target in targets:
        log.info("alerts are delivered to %s", target.label)
    if not webhooks:
        yield NotifySetup(targets, AlertSender(None, timeout=timeout), retry=retry)
        return
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout), follow_redirects=False) as client:
        sender = AlertSender(client, secret=secret, timeout=timeout)
        yield NotifySetup(targets, sender, retry=retry)
