"""`runtime.log_format`: ``--log-format json`` writes one JSON object per record."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import datetime

import pytest

from trio_ws.runtime.log_format import JsonFormatter, project_of


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("trio_ws.state.project", logging.WARNING, "x.py", 1, msg, args, None)
    made.__dict__.update(extra)
    return made


def test_a_line_holds_time_level_logger_project_message_and_the_calls_fields() -> None:
    line = json.loads(
        JsonFormatter().format(record("%s %s", "GET", "/x", method="GET", status=200, project="p"))
    )
    assert list(line) == ["time", "level", "logger", "project", "message", "method", "status"]
    assert (line["level"], line["logger"], line["project"]) == (
        "warning",
        "trio_ws.state.project",
        "p",
    )
    assert line["message"] == "GET /x"
    assert (line["method"], line["status"]) == ("GET", 200)
    assert line["time"].endswith("Z")
    assert datetime.fromisoformat(line["time"].replace("Z", "+00:00")).utcoffset() is not None


def test_a_message_that_starts_with_project_names_its_project() -> None:
    named = record("project %s: journal unreadable, moved aside to %s", "todo", "/x")
    assert project_of(named) == "todo"
    assert json.loads(JsonFormatter().format(named))["project"] == "todo"
    assert project_of(record("connection from %s dropped", "1.2.3.4:5")) is None
    assert "project" not in json.loads(JsonFormatter().format(record("projects: %d", 3)))


def test_an_exception_is_one_field_of_the_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, "x.py", 1, "failed", None, sys.exc_info())
    text = JsonFormatter().format(failed)
    assert "\n" not in text
    assert "ValueError: boom" in json.loads(text)["exception"]


def test_a_field_json_cannot_hold_is_written_as_text() -> None:
    line = json.loads(JsonFormatter().format(record("x", where=object, size=1.5)))
    assert line["where"] == "<class 'object'>" and line["size"] == 1.5


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_configure_logging_replaces_the_handlers_of_the_process(log_format: str) -> None:
    """Process-wide, so in a child process."""
    code = (
        "import logging\n"
        "from trio_ws.runtime.log_format import configure_logging\n"
        "logging.basicConfig(level='DEBUG')\n"
        f"configure_logging('info', {log_format!r})\n"
        "logging.getLogger('trio_ws.x').debug('hidden')\n"
        "logging.getLogger('trio_ws.x').info('project %s: %d lines', 'todo', 3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, check=True
    )
    (line,) = done.stderr.splitlines()
    if log_format == "json":
        parsed = json.loads(line)
        assert (parsed["level"], parsed["project"], parsed["message"]) == (
            "info",
            "todo",
            "project todo: 3 lines",
        )
    else:
        assert line.endswith(" INFO trio_ws.x: project todo: 3 lines")
