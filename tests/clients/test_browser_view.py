"""The capture loop of ``trio-ws run --screenshots`` in process, with stand-in
``playwright-cli`` scripts on PATH and a producer that is never connected to anything
(``connected`` and ``watching`` set by hand, as its connection would)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

from trio_ws.clients.browser_sessions import BrowserSessions
from trio_ws.clients.browser_view import BrowserView
from trio_ws.clients.producer import Producer

FAILING = (
    f"#!{sys.executable}\nimport sys\nprint('no such session', file=sys.stderr)\nsys.exit(1)\n"
)
SLEEPING = f"#!{sys.executable}\nimport time\ntime.sleep(30)\n"


def on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, script: str) -> None:
    directory = tmp_path / "bin"
    directory.mkdir()
    cli = directory / "playwright-cli"
    cli.write_text(script)
    cli.chmod(0o755)
    monkeypatch.setenv("PATH", str(directory))


def watched_view(
    tmp_path: Path, said: list[str], max_failures: int, timeout: float = 5.0
) -> BrowserView:
    producer = Producer("ws://127.0.0.1:9/unused", "token", "agent", report=said.append)
    producer.connected = producer.watching = True
    sessions = BrowserSessions()
    sessions.sessions["coding-5"] = 5
    return BrowserView(
        producer,
        sessions,
        tmp_path,
        said.append,
        interval=0.01,
        timeout=timeout,
        max_failures=max_failures,
    )


async def test_a_session_failing_in_a_row_is_dropped_with_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    on_path(monkeypatch, tmp_path, FAILING)
    said: list[str] = []
    view = watched_view(tmp_path, said, max_failures=3)
    with trio.fail_after(10), trio.move_on_after(1):
        await view.run()
    assert view.sessions.sessions == {}
    assert len(said) == 1
    assert "coding-5: 3 screenshots failed in a row (exit 1: no such session)" in said[0]
    assert view.sent == 0


async def test_a_capture_that_hangs_is_killed_after_its_timeout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    on_path(monkeypatch, tmp_path, SLEEPING)
    said: list[str] = []
    view = watched_view(tmp_path, said, max_failures=1, timeout=0.2)
    with trio.fail_after(10), trio.move_on_after(2):
        await view.run()
    assert view.sessions.sessions == {}
    assert "timed out after 0.2 s" in said[0]


async def test_nothing_is_captured_while_nobody_watches(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    on_path(monkeypatch, tmp_path, FAILING)
    said: list[str] = []
    view = watched_view(tmp_path, said, max_failures=1)
    view.producer.watching = False
    with trio.fail_after(10), trio.move_on_after(0.3):
        await view.run()
    assert view.sessions.sessions == {"coding-5": 5} and said == []
