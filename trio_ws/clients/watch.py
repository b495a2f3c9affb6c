"""`trio-ws watch`: a terminal dashboard for one project, the command's modes.

The network is `watch_session` (the websocket: snapshot, follow, reconnect) and
`watch_api` (the features board and progress history over HTTP); the view is the
pure `run_view.RunView`, drawn by `watch_render.render`. `once` reads everything
once, `watch_live` keeps a live screen, `watch_json` writes every message as a line.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import tzinfo
from functools import partial
from typing import Final, NoReturn

import trio
from rich.console import Console, RenderableType
from rich.live import Live

from trio_ws.clients.run_view import RunView
from trio_ws.clients.watch_api import keep_extras, read_features, read_history
from trio_ws.clients.watch_render import fitting_layout, render
from trio_ws.clients.watch_session import WatchError, WatchTarget, fetch_snapshot, follow
from trio_ws.core import protocol
from trio_ws.runtime.backoff import Backoff

REFRESH: Final = 0.25
"""Seconds between two redraws of the live screen."""
ONCE_WIDTH: Final = 200
"""Columns of ``--once`` output when stdout is not a terminal (rich would cut at 80)."""


async def once(target: WatchTarget) -> RunView:
    """The snapshot, the features board and the progress history, read once."""
    view = await fetch_snapshot(target)
    await read_features(target, view)
    await read_history(target, view)
    return view


def once_console() -> Console:
    """The console for ``--once``: the terminal's width, or when stdout is no terminal
    (a file, a pipe) `ONCE_WIDTH` columns unless ``COLUMNS`` says otherwise."""
    console = Console(highlight=False)
    if console.is_terminal or os.environ.get("COLUMNS"):
        return console
    return Console(highlight=False, width=ONCE_WIDTH)


def screen(
    view: RunView, console: Console, now: float, log_lines: int | None, zone: tzinfo | None
) -> RenderableType:
    """The whole view at ``now`` with ``log_lines`` of log, or as many as fit ``console``."""
    if log_lines is not None:
        return render(view, now, log_lines, zone)
    compact, lines = fitting_layout(view, console, now, zone)
    return render(view, now, lines, zone, compact=compact)


async def watch_live(
    target: WatchTarget,
    console: Console,
    *,
    log_lines: int | None = None,
    backoff: Backoff | None = None,
    clock: Callable[[], float] = time.time,
    zone: tzinfo | None = None,
    bell: bool = True,
) -> NoReturn:
    """The live dashboard until cancelled; raises `WatchRefused` on a do-not-retry close.
    Times show in ``zone`` (None: local time).

    The screen is redrawn every `REFRESH` seconds from the trio task that owns
    the view (never from rich's refresh thread, which would read it mid-update).
    """
    view = RunView(project=target.project)

    def current() -> RenderableType:
        return screen(view, console, clock(), log_lines, zone)

    async def refresh(live: Live) -> None:
        rung = 0
        while True:
            live.update(current(), refresh=True)
            if bell and view.alerts_raised > rung:
                console.bell()  # a run needs you: a new alert was raised
            rung = view.alerts_raised
            await trio.sleep(REFRESH)

    failure: WatchError | None = None
    with Live(current(), console=console, auto_refresh=False) as live:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(refresh, live)
            nursery.start_soon(partial(keep_extras, target, view))
            try:
                await follow(target, view, backoff=backoff)
            except WatchError as exc:
                failure = exc
            finally:
                nursery.cancel_scope.cancel()
                live.update(current())
    assert failure is not None  # follow() only ends by raising
    raise failure


async def watch_json(
    target: WatchTarget,
    write: Callable[[str], None],
    *,
    backoff: Backoff | None = None,
    on_drop: Callable[[str], None] | None = None,
) -> NoReturn:
    """Every received message as one compact JSON line, across reconnects."""
    view = RunView(project=target.project)
    await follow(
        target,
        view,
        lambda message: write(protocol.encode(message)),
        backoff=backoff,
        on_drop=on_drop,
    )
