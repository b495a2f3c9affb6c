"""Wire vocabulary shared by every module: message shapes, names, timestamps.

Pure (orjson its one dependency), so the trackers, the hub and the server all speak
the same words (``../shared/spec/PROTOCOL.md``). Messages are plain dicts
because they go straight to JSON, typed by the TypedDicts of ``messages``;
``encode`` is the one place that turns a message into wire text, compact, so
each event is encoded exactly once; ``decode_client_message`` reads a client's
frame into a JSON object, or refuses it with a typed ``BadClientMessage``, and
``decode_producer_hello`` a producer's first frame, or refuses it with ``ExpectedHello``,
and ``screenshot_of`` a producer's ``screenshot``, or refuses it with ``BadClientMessage``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from trio_ws import __version__
from trio_ws.core.errors import BadClientMessage, ExpectedHello
from trio_ws.core.messages import (
    AgentStatusEvent,
    DevLogEvent,
    DevServerStatusEvent,
    LogEvent,
    ProducerHello,
    ScreenshotMessage,
    WarningMessage,
)
from trio_ws.core.messages import Stream as Stream  # re-exported: other layers name it here

PROTOCOL_VERSION: Final = 1
SERVER_NAME: Final = f"trio-ws/{__version__}"

JsonObject = dict[str, Any]
"""A JSON object not (yet) known to be a message of the protocol: a frame decoded
off the wire before it is checked, a REST body, a journalled event read back."""

MessageFields = Mapping[str, Any]
"""A message read by its fields, whether it was made here (a TypedDict of
`messages`) or decoded (a `JsonObject` off the wire or out of a journal): what the
hub's snapshot and history, and a client's view, read of any message."""

EXIT_LINE: Final = "[trio-ws] process exited with code"
"""The log line the publish endpoint adds before a final status with an exit code; runs
and alerts read the code from it (an ``agent_status`` event carries none)."""
LOST_LINE: Final = "[trio-ws] producer lost"
"""The log line a project adds before ``crashed`` when its producer's grace expired."""

Clock = Callable[[], float]
"""Returns the current time as UNIX seconds; injected so pure code is testable."""

wall_clock: Clock = time.time

PROJECT_NAME_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,50}")
"""A project name, matched with ``fullmatch`` (so a trailing newline fails)."""

AGENT_STATUSES: Final = frozenset(
    {"stopped", "running", "paused", "crashed", "pausing", "paused_graceful"}
)
DEV_STATUSES: Final = frozenset({"stopped", "running", "crashed"})
AGENT_STATES: Final = frozenset(
    {"thinking", "working", "testing", "success", "error", "struggling"}
)
CONTROL_ACTIONS: Final = frozenset({"stop", "pause", "resume", "graceful_pause", "graceful_resume"})


def is_valid_project_name(name: str) -> bool:
    """True when ``name`` is a whole-string match of ``^[A-Za-z0-9_-]{1,50}$``."""
    return PROJECT_NAME_RE.fullmatch(name) is not None


def iso_timestamp(unix_seconds: float) -> str:
    """``2026-11-25T17:04:05.123456Z``: ISO 8601, UTC, microseconds (PROTOCOL.md 1).

    Microseconds because the UI keys its React lists by timestamp and events in
    one burst share a millisecond. Called for every event, so the seconds part
    is formatted once per second and only the microseconds per call; the
    rounding is ``datetime.fromtimestamp``'s (half to even, carried into the
    seconds), so the text is the one ``datetime`` would give.
    """
    global _second_prefix
    fraction, whole = math.modf(unix_seconds)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        micros -= 1_000_000
        whole += 1
    elif micros < 0:
        micros += 1_000_000
        whole -= 1
    second = int(whole)
    cached_second, prefix = _second_prefix
    if second != cached_second:
        prefix = datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _second_prefix = (second, prefix)  # one tuple: safe to share between threads
    return f"{prefix}{micros:06d}Z"


_second_prefix: tuple[int | None, str] = (None, "")
"""The last whole second ``iso_timestamp`` formatted, and its text up to the dot."""

_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
"""The reference encoding, built once (``json.dumps`` with options builds one per call)."""

_ORJSON_OPTIONS: Final = (
    orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
)
"""Make orjson refuse what ``json`` would encode differently or refuse: subclasses
(``IntEnum``, ``StrEnum``), dataclasses, datetimes."""

_PLAIN_TYPES: Final = frozenset({str, int, bool, type(None)})


def encode(message: Mapping[str, object]) -> str:
    """Compact JSON text for one message; the only encoder on the wire.

    The text is exactly ``_ENCODER``'s: orjson (about ten times faster, and
    this runs once per event) only takes messages made of plain strings,
    ints, bools, None, lists and dicts, where both give the same bytes, and
    everything orjson refuses among those (ints beyond 64 bits, non-string
    keys, lone surrogates) goes to ``_ENCODER`` too, which gives today's text
    or today's error. Floats never take the fast path: orjson writes NaN as
    ``null`` and ``1e-07`` as ``1e-7``.
    """
    if _plain(message):
        try:
            return orjson.dumps(message, option=_ORJSON_OPTIONS).decode()
        except orjson.JSONEncodeError:
            pass  # _ENCODER below: the same text, or the error it always raised
    return _ENCODER.encode(message)


def _plain(container: Mapping[Any, Any] | list[Any]) -> bool:
    """Whether ``container`` holds only plain JSON values (no float, tuple, subclass, ...)."""
    for value in container if isinstance(container, list) else container.values():
        kind = type(value)
        if kind in _PLAIN_TYPES or ((kind is dict or kind is list) and _plain(value)):
            continue
        return False
    return True


# -- event constructors (PROTOCOL.md 3.2); the hub adds ``seq`` -------------


def agent_status(status: str, timestamp: str | None = None) -> AgentStatusEvent:
    """``timestamp`` (additive, revision 2) dates the change for a progress chart."""
    if status not in AGENT_STATUSES:
        raise ValueError(f"unknown agent status {status!r}")
    message: AgentStatusEvent = {"type": "agent_status", "status": status}
    if timestamp is not None:
        message["timestamp"] = timestamp
    return message


def dev_server_status(status: str, url: str | None) -> DevServerStatusEvent:
    if status not in DEV_STATUSES:
        raise ValueError(f"unknown dev server status {status!r}")
    return {"type": "dev_server_status", "status": status, "url": url}


def log(line: str, timestamp: str, feature_id: int | None, agent_index: int | None) -> LogEvent:
    message: LogEvent = {"type": "log", "line": line, "timestamp": timestamp}
    if feature_id is not None:
        message["featureId"] = feature_id
    if agent_index is not None:
        message["agentIndex"] = agent_index
    return message


def dev_log(line: str, timestamp: str) -> DevLogEvent:
    return {"type": "dev_log", "line": line, "timestamp": timestamp}


# -- connection messages (PROTOCOL.md 3.3); never carry ``seq`` -------------


def warning(source: str, content: str) -> WarningMessage:
    return {"type": "warning", "source": source, "content": content}


# -- client frames (PROTOCOL.md 3.4, 4.1) --------------------------------------


def decode_client_message(frame: str | bytes) -> JsonObject:
    """The JSON object one client frame holds; ``BadClientMessage`` (answered with a
    ``warning``, the connection stays) for a binary frame, text that is not JSON,
    or JSON that is not an object. What the object's ``type`` asks is the caller's."""
    if isinstance(frame, bytes):
        raise BadClientMessage("binary frames are not accepted")
    try:
        # orjson: a one-line producer message in 1.2 us where json takes 2.9 (it is on
        # every line's way to its commit); json for what orjson alone refuses (NaN,
        # a lone surrogate escape). An integer beyond 64 bits reads as a float, so it
        # is refused wherever an integer is due (no journal could store it).
        payload = orjson.loads(frame)
    except orjson.JSONDecodeError:
        try:
            payload = json.loads(frame)
        except ValueError:
            raise BadClientMessage("message is not valid JSON") from None
    if not isinstance(payload, dict):
        raise BadClientMessage("message is not a JSON object")
    return payload


PRODUCER_ID_LENGTH: Final = range(1, 201)
"""How long a producer's id may be, in characters."""


def decode_producer_hello(frame: str | bytes) -> ProducerHello:
    """The ``hello`` a producer's first frame must be (PROTOCOL.md 4.1), or
    ``ExpectedHello`` (told ``error``, closed 1008): anything that is not a JSON
    object of ``type`` hello, a ``producer`` id of 1-200 characters and a known
    ``stream``. Extra keys are ignored, as in every message."""
    try:
        payload = json.loads(frame)
    except (ValueError, TypeError):
        raise ExpectedHello from None
    if not isinstance(payload, dict) or payload.get("type") != "hello":
        raise ExpectedHello
    producer, stream = payload.get("producer"), payload.get("stream")
    if not isinstance(producer, str) or len(producer) not in PRODUCER_ID_LENGTH:
        raise ExpectedHello
    if stream == "agent" or stream == "dev":
        return {"type": "hello", "producer": producer, "stream": stream}
    raise ExpectedHello


MAX_SCREENSHOT_BYTES: Final = 4 * 1024 * 1024
"""Most base64 characters of one screenshot's ``imageData``: its own cap, outside the
log's line limits (a 1920x1080 PNG of a busy page is about 1-2 MiB of base64)."""
SESSION_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,100}")
"""A ``playwright-cli`` session name (``coding-5``, ``testing-0``), matched whole."""
PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
MAX_TIMESTAMP_LENGTH: Final = 64


def screenshot_of(payload: JsonObject) -> ScreenshotMessage:
    """The ``screenshot`` a producer's decoded message holds (PROTOCOL.md 4.1), or
    ``BadClientMessage`` (a ``warning``, the connection stays): a session name of
    1-100 of ``[A-Za-z0-9_.-]``, a ``featureId`` int >= 0 or null, an ISO
    ``timestamp``, and ``imageData`` a base64 PNG of at most `MAX_SCREENSHOT_BYTES`
    characters (checked whole: it goes into every watcher's page as a data URL)."""
    session, feature_id = payload.get("sessionName"), payload.get("featureId")
    image, timestamp = payload.get("imageData"), payload.get("timestamp")
    if not isinstance(session, str) or SESSION_NAME_RE.fullmatch(session) is None:
        raise BadClientMessage("screenshot needs a 'sessionName' of 1-100 of [A-Za-z0-9_.-]")
    if feature_id is not None and (
        not isinstance(feature_id, int) or isinstance(feature_id, bool) or feature_id < 0
    ):
        raise BadClientMessage("screenshot 'featureId' must be an integer >= 0 or null")
    if not isinstance(timestamp, str) or not _is_iso(timestamp):
        raise BadClientMessage("screenshot needs an ISO 8601 'timestamp'")
    if not isinstance(image, str) or not image:
        raise BadClientMessage("screenshot needs 'imageData', a base64 PNG")
    if len(image) > MAX_SCREENSHOT_BYTES:
        raise BadClientMessage(
            f"screenshot of {len(image)} base64 characters is over the limit of "
            f"{MAX_SCREENSHOT_BYTES} (session {session!r}); dropped"
        )
    try:
        png = base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise BadClientMessage("screenshot 'imageData' is not base64") from None
    if not png.startswith(PNG_SIGNATURE):
        raise BadClientMessage("screenshot 'imageData' is not a PNG")
    return {
        "type": "screenshot",
        "sessionName": session,
        "featureId": feature_id,
        "imageData": image,
        "timestamp": timestamp,
    }


def _is_iso(text: str) -> bool:
    if len(text) > MAX_TIMESTAMP_LENGTH:
        return False
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True
