"""The runs API's bodies: ``GET /api/projects/{name}/runs`` (newest first, paged with
``limit`` and ``before``), ``.../runs/{id}``, and one run's ``/events``, ``/state`` and
``/export`` (docs: the runs contract). Pure: the query, the recorder and what was read
in, a status and a body out (a bad parameter a `BadParameter` naming it); `server`
routes the request, reads the journal (`state.run_events`) and decides access as for
the rest of ``/api/projects/{name}/...``.

Events go out as journalled: their texts are spliced into the bodies, never decoded
and encoded again, so they are byte for byte what subscribers received.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import regex

from trio_ws.state.replay import Replay
from trio_ws.state.run_events import EventFilter, EventsPage, parse_time
from trio_ws.state.runs import RunSummary

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500

Body = dict[str, Any]


def listing_query(query: Mapping[str, str]) -> tuple[int, str | None]:
    """``limit`` (1-500, default 50) and ``before`` (a run id) of a runs listing;
    BadParameter naming the first bad one."""
    raw_limit = query.get("limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
            raise BadParameter("limit", f"must be an integer from 1 to {MAX_LIMIT}")
        limit = int(raw_limit)
    return limit, query.get("before")


def listing_body(project: str, runs: list[RunSummary], more: bool) -> Body:
    """One page of runs, newest first; ``next_before`` is the id to ask with for the
    next page (None on the last)."""
    return {
        "project": project,
        "runs": [run.to_json() for run in runs],
        "next_before": runs[-1].id if more and runs else None,
    }


def unknown_run(run_id: str) -> tuple[int, Body]:
    return 404, {"detail": f"Run {run_id!r} not found"}


# -- one run's events: /events, /state, /export --------------------------------

EVENTS_DEFAULT_LIMIT: Final = 200
EVENTS_MAX_LIMIT: Final = 1000
MAX_QUERY_CHARS: Final = 200
"""Longest ``q``: a search text, not a document."""
EVENT_TYPES: Final = frozenset(
    {
        "log",
        "dev_log",
        "agent_update",
        "agent_status",
        "dev_server_status",
        "progress",
        "orchestrator_update",
        "alert",
    }
)


class BadParameter(ValueError):
    """A query parameter that cannot be served: the 400's detail names it."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")


@dataclass(frozen=True, slots=True)
class EventsQuery:
    selected: EventFilter
    after: int
    limit: int


def events_query(run: RunSummary, query: Mapping[str, str]) -> EventsQuery:
    """``type``, ``agent``, ``feature``, ``q``, ``regex``, ``after`` and ``limit`` of an
    ``/events`` request; BadParameter naming the first bad one."""
    types = None
    if (raw_types := query.get("type")) is not None:
        types = frozenset(part.strip() for part in raw_types.split(",") if part.strip())
        unknown = sorted(types - EVENT_TYPES)
        if not types or unknown:
            raise BadParameter("type", f"unknown event type {', '.join(unknown) or '(none)'}")
    indices: frozenset[int] | None = None
    names: frozenset[str] = frozenset()
    if (agent := query.get("agent")) is not None:
        if not agent:
            raise BadParameter("agent", "empty")
        known = run.agents.values()
        if _is_int(agent):
            indices = frozenset({int(agent)})
            names = frozenset(
                str(a["agentName"])
                for a in known
                if a["agentIndex"] == int(agent) and a.get("agentName")
            )
        else:
            names = frozenset({agent})
            indices = frozenset(a["agentIndex"] for a in known if a.get("agentName") == agent)
    feature = None
    if (raw_feature := query.get("feature")) is not None:
        if not _is_int(raw_feature):
            raise BadParameter("feature", "must be an integer feature id")
        feature = int(raw_feature)
    text: str | None = None
    pattern: regex.Pattern[str] | None = None
    as_regex = query.get("regex")
    if as_regex not in (None, "0", "1", "true", "false"):
        raise BadParameter("regex", "must be 1 or 0")
    if (q := query.get("q")) is not None:
        if not q or len(q) > MAX_QUERY_CHARS:
            raise BadParameter("q", f"must be 1 to {MAX_QUERY_CHARS} characters")
        if as_regex in ("1", "true"):
            try:
                pattern = regex.compile(q, regex.IGNORECASE)
            except regex.error as exc:
                raise BadParameter("q", f"not a regular expression: {exc}") from None
        else:
            text = q.lower()
    after = run.first_seq - 1
    if (raw_after := query.get("after")) is not None:
        if not raw_after.isdigit():
            raise BadParameter("after", "must be a seq (a non-negative integer)")
        after = max(after, int(raw_after))
    limit = EVENTS_DEFAULT_LIMIT
    if (raw_limit := query.get("limit")) is not None:
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= EVENTS_MAX_LIMIT:
            raise BadParameter("limit", f"must be an integer from 1 to {EVENTS_MAX_LIMIT}")
        limit = int(raw_limit)
    selected = EventFilter(types, indices, names, feature, text, pattern)
    return EventsQuery(selected, after, limit)


def events_body(project: str, run: RunSummary, page: EventsPage) -> bytes:
    """The ``/events`` JSON, the events spliced in as journalled (not re-encoded)."""
    head = json.dumps({"project": project, "run": run.id}, separators=(",", ":"))[:-1]
    tail = json.dumps(
        {"next_after": page.next_after, "partial": page.partial}, separators=(",", ":")
    )[1:]
    return f'{head},"events":[{",".join(page.texts)}],{tail}'.encode()


@dataclass(frozen=True, slots=True)
class StateQuery:
    seq: int | None
    at: datetime | None


def state_query(query: Mapping[str, str]) -> StateQuery:
    """``seq`` or ``at`` of a ``/state`` request (neither: the run's last event)."""
    raw_seq, raw_at = query.get("seq"), query.get("at")
    if raw_seq is not None and raw_at is not None:
        raise BadParameter("seq", "give seq or at, not both")
    if raw_seq is not None:
        if not raw_seq.isdigit():
            raise BadParameter("seq", "must be a seq (a non-negative integer)")
        return StateQuery(int(raw_seq), None)
    if raw_at is not None:
        try:
            return StateQuery(None, parse_time(raw_at))
        except ValueError:
            raise BadParameter("at", "must be an ISO-8601 time") from None
    return StateQuery(None, None)


def state_body(project: str, run: RunSummary, replay: Replay) -> bytes:
    head = json.dumps(
        {"project": project, "run": run.id, "seq": replay.seq, "timestamp": replay.timestamp},
        separators=(",", ":"),
    )[:-1]
    messages = ",".join(item.text for item in replay.messages())
    return f'{head},"messages":[{messages}]}}'.encode()


def export_filename(project: str, run: RunSummary) -> str:
    return f"{project}-run-{run.id}.ndjson"


def _is_int(text: str) -> bool:
    return text.removeprefix("-").isdigit()
