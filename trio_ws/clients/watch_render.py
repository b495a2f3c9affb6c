"""`trio-ws watch`'s rendering: a `RunView` into rich renderables; it reads nothing else.

Text that came from the server (log lines, thoughts, names) is never interpreted
as rich markup and has control characters made visible, so a log line can neither
restyle nor take over the terminal.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable
from datetime import UTC, datetime, tzinfo
from typing import Final

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from trio_ws.clients.run_view import (
    LogEntry,
    ProgressPoint,
    RunView,
    parse_timestamp,
)

ONCE_LOG_LINES: Final = 20
SPARK_WIDTH: Final = 40
SPARK_BLOCKS: Final = " ▁▂▃▄▅▆▇█"
IN_PROGRESS_SHOWN: Final = 12
"""In-progress features listed by name; more are summed up in one line."""


_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONNECTION_STYLE: Final = {
    "live": "green",
    "connecting": "yellow",
    "reconnecting": "yellow",
    "closed": "red",
    "snapshot": "cyan",
    "replay": "magenta",
}
_STATUS_STYLE: Final = {
    "running": "green",
    "stopped": "dim",
    "crashed": "bold red",
    "paused": "yellow",
    "pausing": "yellow",
    "paused_graceful": "yellow",
}
_STATE_STYLE: Final = {
    "thinking": "cyan",
    "working": "green",
    "testing": "blue",
    "struggling": "red",
}

ALERT_STYLES: Final = {"error": "bold red", "warning": "yellow", "info": "green"}
"""How a standing alert's line looks, by its severity."""
MIN_LOG_LINES: Final = 8
"""Log lines the live view keeps room for: when the whole view would leave fewer (an
80x24 terminal with a features board), it goes compact."""


def printable(text: str) -> str:
    """``text`` with ANSI sequences dropped and other control characters shown as ``?``."""
    return _CONTROL.sub(lambda m: "" if m.group().startswith("\x1b[") else "?", text)


def _text(value: object, style: str = "") -> Text:
    """Server-supplied text as a rich `Text`: never parsed as markup."""
    return Text(printable(str(value)), style=style, no_wrap=False)


def format_age(seconds: float | None) -> str:
    """``4s``, ``2m05s``, ``1h02m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def render_header(view: RunView) -> Table:
    grid = Table.grid(padding=(0, 2))
    row: list[RenderableType] = [_text(view.project or "?", "bold")]
    connection = Text(view.connection, style=_CONNECTION_STYLE.get(view.connection, ""))
    if view.connection_detail:
        connection.append(f" ({printable(view.connection_detail)})", style="dim")
    row.append(connection)
    agents = Text("agents: ")
    agents.append(printable(view.agent_status), style=_STATUS_STYLE.get(view.agent_status, ""))
    row.append(agents)
    dev = Text("dev server: ")
    dev.append(printable(view.dev_status), style=_STATUS_STYLE.get(view.dev_status, ""))
    if view.dev_url:
        dev.append(f" {printable(view.dev_url)}", style="underline")
    row.append(dev)
    row.append(Text(f"seq {view.seq if view.seq is not None else '-'}", style="dim"))
    for _ in row:
        grid.add_column(no_wrap=True)
    grid.add_row(*row)
    return grid


def render_progress(view: RunView) -> RenderableType:
    counts = view.progress
    if counts is None:
        return Text("progress: no data yet", style="dim")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(width=30)
    grid.add_column()
    bar = ProgressBar(total=max(counts.total, 1), completed=counts.passing, width=30)
    summary = Text(
        f"{counts.percentage:.1f}%  passing {counts.passing}/{counts.total}  "
        f"in progress {counts.in_progress}  needs input {counts.needs_human_input}"
    )
    grid.add_row(bar, summary)
    return grid


def sparkline(points: Iterable[ProgressPoint], width: int = SPARK_WIDTH) -> str:
    """Passing over time in block characters: the run's span cut into ``width`` equal
    slices, each showing the count at its end (a count holds until the next event),
    scaled to the largest total (a full block is every feature passing)."""
    ordered = sorted(points, key=lambda point: point.seq)
    if not ordered:
        return ""
    start, end = ordered[0].time, ordered[-1].time
    top = max(max(point.total, point.passing) for point in ordered) or 1
    slices = min(width, len(ordered)) if end <= start else width
    span = (end - start) / slices if end > start else 0.0
    blocks = []
    index = 0
    for number in range(slices):
        limit = start + span * (number + 1)
        if end <= start:
            index = round((number + 1) * len(ordered) / slices) - 1
        else:
            while index + 1 < len(ordered) and ordered[index + 1].time <= limit:
                index += 1
        level = ordered[index].passing / top
        blocks.append(SPARK_BLOCKS[min(len(SPARK_BLOCKS) - 1, round(level * 8))])
    return "".join(blocks)


def clock_of(seconds: float, zone: tzinfo | None) -> str:
    """``HH:MM:SS`` of UNIX ``seconds`` in ``zone`` (None: this machine's local time)."""
    return datetime.fromtimestamp(seconds, zone or UTC).astimezone(zone).strftime("%H:%M:%S")


def zone_name(zone: tzinfo | None, seconds: float) -> str:
    """What ``zone`` is called at ``seconds`` (``UTC``, ``CET``, ``+0530``)."""
    moment = datetime.fromtimestamp(seconds, zone or UTC).astimezone(zone)
    return moment.tzname() or moment.strftime("%z")


def render_history(view: RunView, zone: tzinfo | None = None) -> Text:
    line = Text("passing over time ")
    if view.history_error:
        line.append(printable(view.history_error), style="red")
        return line
    if not view.points:
        line.append("no progress events yet", style="dim")
        return line
    line.append(sparkline(view.points.values()), style="green")
    first = min(view.points.values(), key=lambda point: point.seq)
    last = max(view.points.values(), key=lambda point: point.seq)
    since = clock_of(first.time, zone)
    events = len(view.points)
    line.append(
        f"  {last.passing}/{last.total} now, since {since} {zone_name(zone, first.time)}"
        f" ({events} event{'' if events == 1 else 's'})",
        style="dim",
    )
    return line


def render_features(view: RunView) -> RenderableType:
    if view.features_error is not None:
        return _text(f"features: {view.features_error}", "red")
    if view.features is None and view.connection == "replay":
        return Text("features: a run's events do not record the board", style="dim")
    if view.features is None:
        return Text("features: not read yet", style="dim")
    if not view.features:
        return Text("features: the database holds none yet", style="dim")
    counts: dict[str, list[int]] = {}
    for feature in view.features:
        row = counts.setdefault(feature.category, [0, 0, 0, 0])
        row[0 if feature.passes else 1 if feature.in_progress else 2] += 1
        row[3] += feature.needs_human_input
    table = Table(box=None, header_style="bold", pad_edge=False, expand=False)
    table.add_column("features", no_wrap=True, overflow="ellipsis")
    for column in ("done", "in progress", "pending", "needs input"):
        table.add_column(column, justify="right", no_wrap=True)
    for category in sorted(counts):
        table.add_row(_text(category), *(Text(str(n)) for n in counts[category]))
    totals = [sum(row[i] for row in counts.values()) for i in range(4)]
    table.add_row(Text("all", style="bold"), *(Text(str(n), style="bold") for n in totals))
    working = [feature for feature in view.features if feature.in_progress and not feature.passes]
    if not working:
        return Group(table, Text("no feature in progress", style="dim"))
    agents: dict[int, list[str]] = {}
    for index in sorted(view.agents):
        card = view.agents[index]
        for feature_id in card.feature_ids:
            agents.setdefault(feature_id, []).append(card.name)
    lines = Text("in progress:", style="bold")
    for feature in working[:IN_PROGRESS_SHOWN]:
        lines.append(f"\n  #{feature.id} ", style="dim")
        lines.append(printable(feature.name))
        lines.append(f"  {printable(feature.category)}", style="dim")
        names = agents.get(feature.id)
        if names:
            lines.append(f"  <- {printable(', '.join(names))}", style="cyan")
    if len(working) > IN_PROGRESS_SHOWN:
        lines.append(f"\n  and {len(working) - IN_PROGRESS_SHOWN} more", style="dim")
    return Group(table, lines)


def render_agents(view: RunView, now: float) -> RenderableType:
    if not view.agents:
        return Text("no active agents", style="dim")
    table = Table(box=None, header_style="bold", pad_edge=False, expand=False)
    for column in ("agent", "type", "features", "state", "thought", "age"):
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    for index in sorted(view.agents):
        card = view.agents[index]
        features = ", ".join(f"#{i}" for i in card.feature_ids) or (card.feature_name or "-")
        table.add_row(
            _text(card.name, "bold"),
            _text(card.type),
            _text(features),
            _text(card.state, _STATE_STYLE.get(card.state, "")),
            _text(card.thought if card.thought is not None else "", "italic"),
            Text(format_age(None if card.updated is None else now - card.updated)),
        )
    return table


def render_orchestrator(view: RunView) -> Text:
    card = view.orchestrator
    if card is None:
        return Text("orchestrator: no events yet", style="dim")
    line = Text("orchestrator: ")
    line.append(printable(card.state), style="bold")
    line.append(
        f"  coding {card.coding} testing {card.testing} max {card.max_concurrency}"
        f"  ready {card.ready} blocked {card.blocked}  "
    )
    line.append(printable(card.message), style="italic")
    return line


def log_tail(view: RunView, count: int) -> list[LogEntry]:
    """The last ``count`` lines of both streams, interleaved in event order."""
    if count <= 0:
        return []
    agent = list(view.logs)[-count:]
    dev = list(view.dev_logs)[-count:]
    merged = list(heapq.merge(agent, dev, key=lambda entry: entry.seq or 0))
    return merged[-count:]


def render_logs(
    view: RunView, count: int, zone: tzinfo | None = None, now: float = 0.0
) -> RenderableType:
    """The log tail, each line at its time in ``zone`` (the panel says which zone)."""
    lines = Text(no_wrap=True, overflow="ellipsis")
    for number, entry in enumerate(log_tail(view, count)):
        if number:
            lines.append("\n")
        seconds = parse_timestamp(entry.timestamp)
        clock = entry.timestamp if seconds is None else clock_of(seconds, zone)
        lines.append(f"{printable(clock)} ", style="dim")
        if entry.stream == "dev":
            lines.append("dev ", style="magenta")
        lines.append(printable(entry.line))
    title = f"log · {zone_name(zone, now)}"
    return Panel(lines, title=title, title_align="left", border_style="dim")


def render(
    view: RunView,
    now: float,
    log_lines: int = ONCE_LOG_LINES,
    zone: tzinfo | None = None,
    *,
    compact: bool = False,
) -> Group:
    """The whole dashboard for ``view`` at time ``now`` (UNIX seconds), its times in
    ``zone`` (None: this machine's local time, as a browser shows them). ``compact``
    (a short terminal) leaves out the sparkline, the features board and the
    orchestrator, so the agents and the log keep their room."""
    parts: list[RenderableType] = [render_header(view)]
    parts.extend(_problems(view))
    parts.append(render_progress(view))
    if not compact:
        parts.append(render_history(view, zone))
    parts.append(render_agents(view, now))
    if not compact:
        parts += [render_features(view), render_orchestrator(view)]
    parts.append(render_logs(view, log_lines, zone, now))
    return Group(*parts)


def _problems(view: RunView) -> Iterable[Text]:
    if view.error:
        yield _text(f"error: {view.error}", "bold red")
    if view.warnings:
        source, content = view.warnings[-1]
        yield _text(f"warning ({source}): {content}", "yellow")
    for kind, severity, text in view.alerts.values():
        yield _text(f"alert {kind}: {text}", ALERT_STYLES.get(severity, "yellow"))


def fitting_layout(
    view: RunView, console: Console, now: float, zone: tzinfo | None = None
) -> tuple[bool, int]:
    """Whether the view must be compact on ``console``'s screen, and how many log lines
    then fit under the rest: the whole view, unless it leaves the log fewer than
    `MIN_LOG_LINES` (then the compact one)."""
    compact = False
    while True:
        rest = render(view, now, log_lines=0, zone=zone, compact=compact)
        used = len(console.render_lines(rest, console.options, pad=False))
        lines = console.size.height - used - 1
        if lines >= MIN_LOG_LINES or compact:
            return compact, max(1, lines)
        compact = True
