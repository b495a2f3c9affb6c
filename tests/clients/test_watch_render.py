"""Rendering a RunView, and the small pure helpers it uses."""

from __future__ import annotations

import os
from datetime import UTC, timedelta, timezone, tzinfo
from typing import Any

import pytest
from rich.console import Console
from test_run_view import (
    agent_update,
    alert,
    at,
    dev_log,
    hello,
    log,
    orchestrator,
    progress,
    status,
    view_of,
)

from trio_ws.clients.run_view import ProgressPoint, RunView
from trio_ws.clients.watch_render import (
    MIN_LOG_LINES,
    fitting_layout,
    format_age,
    printable,
    render,
    sparkline,
)
from trio_ws.clients.watch_session import (
    WatchTarget,
)
from trio_ws.core import protocol

TS_UNIX = 1795626245.123


# -- small pure helpers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "url"),
    [
        ("http://127.0.0.1:8888", "ws://127.0.0.1:8888/ws/projects/demo?backlog=100"),
        ("https://example.org/", "wss://example.org/ws/projects/demo?backlog=100"),
        ("http://h:1/prefix/", "ws://h:1/prefix/ws/projects/demo?backlog=100"),
        ("ws://[::1]:9", "ws://[::1]:9/ws/projects/demo?backlog=100"),
    ],
)
def test_target_maps_server_urls_to_the_subscribe_endpoint(server: str, url: str) -> None:
    assert WatchTarget.from_server(server, "demo").url() == url


def test_target_url_carries_resume_point_and_quoted_token() -> None:
    target = WatchTarget.from_server("http://h:1", "demo", token="a b&c", backlog=5)
    assert target.url((12, "ep/1")) == (
        "ws://h:1/ws/projects/demo?backlog=5&since=12&epoch=ep%2F1&token=a%20b%26c"
    )
    assert "token" not in target.display_url


@pytest.mark.parametrize(("server", "name"), [("ftp://h", "demo"), ("http://h", "bad name")])
def test_target_refuses_bad_server_or_name(server: str, name: str) -> None:
    with pytest.raises(ValueError):
        WatchTarget.from_server(server, name)


def test_printable_drops_ansi_and_shows_other_controls() -> None:
    assert printable("\x1b[31mred\x1b[0m bell\x07 tab\tend") == "red bell? tab\tend"


@pytest.mark.parametrize(
    ("seconds", "shown"), [(None, "-"), (-3, "0s"), (4.9, "4s"), (125, "2m05s"), (3720, "1h02m")]
)
def test_format_age(seconds: float | None, shown: str) -> None:
    assert format_age(seconds) == shown


# -- rendering -------------------------------------------------------------------------


def busy_view() -> RunView:
    return view_of(
        hello(0, project="todo-app"),
        status(1, "running"),
        protocol.dev_server_status("running", "http://localhost:5173") | {"seq": 2},
        progress(3, passing=3, total=12),
        agent_update(4, 0, "thinking", "Reading src/app.py", name="Spark", features=(3,)),
        agent_update(5, 1, "testing", "npm test", name="Fizz", features=(5, 6)),
        orchestrator(6, "monitoring", 2, "At maximum capacity, monitoring active agents"),
        log(7, "[Feature #3] [Tool: Read] src/app.py"),
        dev_log(8, "VITE ready in 300 ms"),
    )


def rendered(
    view: RunView,
    now: float = TS_UNIX + 65,
    width: int = 100,
    lines: int = 10,
    zone: tzinfo | None = UTC,
) -> str:
    console = Console(record=True, width=width, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(render(view, now, lines, zone))
    return console.export_text()


def test_times_show_in_the_zone_asked_for_and_say_which() -> None:
    """The browser shows local time: so does watch (its default), naming the zone; the
    log's panel says it once, the sparkline's 'since' too."""
    plus_two = timezone(timedelta(hours=2), "EET")
    view = view_of(hello(3), *(progress(n, passing=n * 4, total=12, at=at(n)) for n in (1, 2, 3)))
    view.apply(log(4, "[Feature #3] working"))
    in_utc, in_eet = rendered(view), rendered(view, zone=plus_two)
    assert "since 17:04:01 UTC" in in_utc and "since 19:04:01 EET" in in_eet
    assert "log · UTC" in in_utc and "log · EET" in in_eet
    clock = next(line for line in in_eet.splitlines() if "[Feature #3] working" in line)
    assert "19:04:05" in clock


def test_render_shows_header_facts() -> None:
    text = rendered(busy_view())
    for fact in ("todo-app", "agents: running", "dev server: running", "http://localhost:5173"):
        assert fact in text


def test_render_shows_progress_numbers() -> None:
    text = rendered(busy_view())
    assert "25.0%" in text
    assert "passing 3/12" in text
    assert "in progress 2" in text
    assert "needs input 1" in text


def test_render_shows_each_agent_with_type_features_state_thought_and_age() -> None:
    lines = rendered(busy_view()).splitlines()
    spark = next(line for line in lines if "Spark" in line)
    fizz = next(line for line in lines if "Fizz" in line)
    for fact in ("coding", "#3", "thinking", "Reading src/app.py", "1m05s"):
        assert fact in spark
    for fact in ("#5, #6", "testing", "npm test"):
        assert fact in fizz


def test_render_shows_orchestrator_counters_and_message() -> None:
    line = next(line for line in rendered(busy_view()).splitlines() if "orchestrator" in line)
    for fact in ("monitoring", "coding 2", "testing 1", "max 3", "ready 4", "blocked 2"):
        assert fact in line
    assert "At maximum capacity" in line


def test_render_shows_the_log_tail_of_both_streams() -> None:
    text = rendered(busy_view())
    assert "17:04:05 [Feature #3] [Tool: Read] src/app.py" in text
    assert "dev VITE ready in 300 ms" in text


def test_render_shows_only_the_last_log_lines() -> None:
    view = view_of(hello(0), *[log(seq, f"entry-{seq:02d}") for seq in range(1, 31)])
    text = rendered(view, lines=3)
    assert [f"entry-{n}" in text for n in (27, 28, 29, 30)] == [False, True, True, True]


def test_render_never_interprets_server_text_as_markup() -> None:
    view = view_of(hello(0), log(1, "[bold red]not markup[/] \x1b[2Jcleared"))
    assert "[bold red]not markup[/] cleared" in rendered(view)


def test_render_shows_the_connection_state_and_last_warning() -> None:
    view = view_of(hello(0), protocol.warning("progress", "features.db is locked"))
    view.set_connection("reconnecting", "closed 1001")
    text = rendered(view)
    assert "reconnecting (closed 1001)" in text
    assert "warning (progress): features.db is locked" in text


def test_fitting_log_lines_fill_but_do_not_overflow_the_screen() -> None:
    view = view_of(hello(0), *[log(seq) for seq in range(1, 200)])
    console = Console(width=100, height=30, file=open(os.devnull, "w"))  # noqa: SIM115
    compact, count = fitting_layout(view, console, TS_UNIX)
    rendered_view = render(view, TS_UNIX, count, compact=compact)
    height = len(console.render_lines(rendered_view, pad=False))
    assert 26 <= height <= 30


def test_sparkline_shows_passing_over_time_scaled_to_the_total() -> None:
    points = [
        ProgressPoint(1, 0.0, 0, 8),
        ProgressPoint(2, 5.0, 4, 8),
        ProgressPoint(3, 10.0, 8, 8),
    ]
    assert sparkline(points, width=4) == " ▄▄█"
    assert sparkline(points[:1], width=4) == " "
    assert sparkline([], width=4) == ""


FEATURE_ROWS = [
    {"id": 1, "category": "functional", "name": "Add a todo", "passes": True},
    {"id": 3, "category": "functional", "name": "Delete a todo", "in_progress": True},
    {"id": 5, "category": "style", "name": "Dark mode", "in_progress": True},
    {"id": 6, "category": "style", "name": "Empty state hint", "needs_human_input": True},
    {"id": 7, "category": "style", "name": "Strike through done"},
]


def features_body() -> dict[str, Any]:
    flags = {"passes": False, "in_progress": False, "needs_human_input": False}
    return {"project": "todo-app", "features": [flags | row for row in FEATURE_ROWS]}


def test_render_counts_features_per_category() -> None:
    view = busy_view()
    view.apply_features(200, features_body())
    lines = rendered(view).splitlines()
    header = next(line for line in lines if "needs input" in line and "pending" in line)
    assert header.split() == ["features", "done", "in", "progress", "pending", "needs", "input"]
    counts = {line.split()[0]: line.split()[1:] for line in lines if line.split()[:1]}
    assert counts["functional"] == ["1", "1", "0", "0"]
    assert counts["style"] == ["0", "1", "2", "1"]
    assert counts["all"] == ["1", "2", "2", "1"]


def test_render_lists_in_progress_features_with_their_agents() -> None:
    view = busy_view()  # Spark works on #3, Fizz on #5 and #6
    view.apply_features(200, features_body())
    lines = rendered(view).splitlines()
    assert any(
        line.split() == ["#3", "Delete", "a", "todo", "functional", "<-", "Spark"] for line in lines
    )
    assert any(line.split() == ["#5", "Dark", "mode", "style", "<-", "Fizz"] for line in lines)
    assert not any("Empty state hint" in line and "<-" in line for line in lines)


def test_render_shows_the_features_error_detail_not_counts() -> None:
    view = busy_view()
    view.apply_features(200, features_body())
    view.apply_features(404, {"detail": "no features database yet in /p"})
    text = rendered(view)
    assert "features: HTTP 404: no features database yet in /p" in text
    assert "functional" not in text


def test_a_replay_says_what_it_replays_and_that_the_board_is_not_recorded() -> None:
    view = busy_view()
    assert "features: not read yet" in rendered(view)
    view.set_connection("replay", "10x 17:04:05 UTC")
    text = rendered(view)
    assert "replay (10x 17:04:05 UTC)" in text
    assert "features: a run's events do not record the board" in text


def test_render_shows_the_sparkline_and_the_latest_count() -> None:
    view = view_of(hello(3), *(progress(n, passing=n * 4, total=12, at=at(n)) for n in (1, 2, 3)))
    line = next(line for line in rendered(view).splitlines() if "passing over time" in line)
    assert "12/12 now, since 17:04:01 UTC (3 events)" in line
    assert line.split()[3][-1] == "█"


def test_a_short_terminal_gets_the_compact_view_with_room_for_the_log() -> None:
    """At 80x24 the whole view (a board of twelve categories) left the log a line: the
    compact one drops the sparkline, the board and the orchestrator instead."""
    view = busy_view()
    rows = [
        {"id": n, "category": f"category {n}", "name": f"feature {n}", "in_progress": n < 4}
        for n in range(1, 13)
    ]
    flags = {"passes": False, "in_progress": False, "needs_human_input": False}
    view.apply_features(200, {"project": "todo-app", "features": [flags | r for r in rows]})
    short = Console(width=80, height=24, file=open(os.devnull, "w"))  # noqa: SIM115
    tall = Console(width=80, height=80, file=open(os.devnull, "w"))  # noqa: SIM115
    compact, lines = fitting_layout(view, short, TS_UNIX + 65, UTC)
    assert compact and lines >= MIN_LOG_LINES
    assert fitting_layout(view, tall, TS_UNIX + 65, UTC)[0] is False
    text = rendered(view, width=80, lines=lines)
    assert "category 12" in text  # the whole view shows the board …
    short.begin_capture()
    short.print(render(view, TS_UNIX + 65, lines, UTC, compact=True))
    assert "category 12" not in short.end_capture()  # … the compact one does not


def test_a_standing_alert_is_a_line_above_the_run() -> None:
    view = busy_view()
    view.apply(alert(view.seq + 1 if view.seq is not None else 1))
    assert "alert needs_input: a feature needs a human (Spark 3)" in rendered(view)
