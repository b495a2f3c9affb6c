"""The rows of `trio-ws runs` (pure): when, how long, how it ended, final progress."""

from __future__ import annotations

from trio_ws.clients.runs_list import row

PROGRESS = {"passing": 4, "total": 10, "percentage": 40.0}


def test_a_closed_run_shows_how_long_it_took_and_how_it_ended() -> None:
    run = {
        "id": "e1-1",
        "started_at": "2026-12-05T10:00:00.000000Z",
        "ended_at": "2026-12-05T10:03:05.500000Z",
        "ended": "crashed",
        "exit_code": 3,
        "progress_end": PROGRESS,
        "log_lines": 12,
        "error_lines": 1,
    }
    cells = ("e1-1", "2026-12-05 10:00:00 UTC", "3m05s", "crashed", "3", "4/10 (40.0%)", "12", "1")
    assert row(run) == cells


def test_a_live_run_took_until_its_newest_event() -> None:
    run = {
        "id": "e1-9",
        "started_at": "2026-12-05T10:00:00Z",
        "ended_at": None,
        "last_at": "2026-12-05T12:04:00Z",
        "ended": None,
        "exit_code": None,
        "progress_end": None,
        "log_lines": 0,
        "error_lines": 0,
    }
    assert row(run)[2:6] == ("2h04m", "live", "", "")
