"""How a long-running command logs: free text for a terminal, or one JSON object per
line for a log collector (``--log-format json``).

A JSON line holds ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``project`` when
the record names one, ``message``, and every field the call passed with
``extra=`` (an access line's ``method``, ``path``, ``status``...). A record names
its project with ``extra={"project": name}``, or by the codebase's convention of
starting its message with ``"project %s"`` and the name as the first argument.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Final, Literal

from trio_ws.core.protocol import iso_timestamp

LogFormat = Literal["text", "json"]
LOG_FORMATS: Final = ("text", "json")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_PROJECT_PREFIX: Final = "project %s"
_STANDARD: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
"""A record's own attributes; any other was passed with ``extra=``."""


def project_of(record: logging.LogRecord) -> str | None:
    """The project a record is about, if it names one."""
    given = record.__dict__.get("project")
    if isinstance(given, str):
        return given
    args = record.args
    if (
        isinstance(record.msg, str)
        and record.msg.startswith(_PROJECT_PREFIX)
        and isinstance(args, tuple)
        and args
        and isinstance(args[0], str)
    ):
        return args[0]
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": iso_timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        project = project_of(record)
        if project is not None:
            line["project"] = project
        line["message"] = record.getMessage()
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in line and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(level: str, log_format: LogFormat) -> None:
    """Send the process's log records to stderr at ``level`` in ``log_format``
    (replacing any handler set before: one line per record, never two)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
