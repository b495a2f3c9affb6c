"""Property: whatever producers send, numbering and delivery stay whole (PROTOCOL.md 3.1).

Each example runs a real server on 127.0.0.1, connects a subscriber, lets a
real producer websocket send arbitrary messages (any JSON, any strings, lone
surrogates included, any pseq order), then checks: the subscriber saw every
seq once and in order (or was told ``resync`` with the point it continues
from), the producer was never closed by the server nor did a handler fail,
and a resume from any earlier seq returns every later event exactly once (or
says ``resync`` because that part of the history is gone).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving import NETWORK_TIMEOUT, TOKEN, connect, make_config, receive, ws_url
from trio_websocket import ConnectionClosed, WebSocketConnection, connect_websocket_url

from trio_ws.data.registry import Registry
from trio_ws.net.server import Server, serve

Msg = dict[str, Any]
CONNECTION_WITH_SEQ = frozenset({"hello", "resumed", "resync"})

# -- what a producer may send -----------------------------------------------------------

any_text = st.text(st.characters(exclude_categories=()), max_size=20)
"""Any code points, lone surrogates included (they reach the server as JSON escapes)."""
surrogates = st.sampled_from(["\ud800", "bad \ud800 x", "\udfff", "a\udc00\ud83d"])
line_text = st.one_of(
    any_text, surrogates, st.sampled_from(["[Feature #1] x", "Feature #2 completed"])
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(any_text, children, max_size=3)
    ),
    max_leaves=6,
)
pseqs = st.one_of(st.integers(min_value=-1, max_value=30), json_values)
statuses = st.sampled_from(
    ["running", "stopped", "crashed", "paused", "pausing", "paused_graceful", "bogus"]
)
lines_messages = st.fixed_dictionaries(
    {"type": st.just("lines"), "first": pseqs, "lines": st.lists(line_text, max_size=5)}
)
status_messages = st.fixed_dictionaries(
    {"type": st.just("status"), "pseq": pseqs, "status": statuses | json_values},
    optional={"exit_code": json_values},
)
progress_messages = st.fixed_dictionaries(
    {"type": st.just("progress"), "pseq": pseqs},
    optional={key: json_values for key in ("passing", "in_progress", "total")},
)
frames = st.one_of(
    lines_messages.map(json.dumps),
    status_messages.map(json.dumps),
    progress_messages.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=20),  # not JSON at all (a text frame carries no surrogates)
)


# -- the property ---------------------------------------------------------------------------


@settings(
    max_examples=30,
    deadline=None,
    # The registry and the project directory are only read; sharing them is safe.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    stream=st.sampled_from(["agent", "dev"]),
    sent=st.lists(frames, max_size=12),
    queue_size=st.integers(min_value=1, max_value=4),
    history=st.sampled_from([3, 10, 10_000]),
    resume_at=st.floats(min_value=0, max_value=1),
)
def test_producer_messages_never_break_numbering_or_delivery(
    stream: str, sent: list[str], queue_size: int, history: int, resume_at: float
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        registry = Registry(Path(scratch) / "registry.db")
        (Path(scratch) / "demo").mkdir()
        registry.add("demo", Path(scratch) / "demo")
        config = make_config(registry, queue_size=queue_size, history=history)
        trio.run(scenario, config, stream, sent, resume_at)


async def scenario(config: Any, stream: str, sent: list[str], resume_at: float) -> None:
    failures = Failures()
    logging.getLogger("trio_ws").addHandler(failures)
    try:
        with trio.fail_after(NETWORK_TIMEOUT):
            async with trio.open_nursery() as nursery:
                server: Server = await nursery.start(serve, config)
                await check_server(nursery, server, stream, sent, resume_at)
                nursery.cancel_scope.cancel()
    finally:
        logging.getLogger("trio_ws").removeHandler(failures)
    assert failures.records == []


async def check_server(
    nursery: trio.Nursery, server: Server, stream: str, sent: list[str], resume_at: float
) -> None:
    watcher = Watcher(await connect(nursery, server, backlog=5))
    nursery.start_soon(watcher.run)
    await watcher.reached(0)  # its hello: the project's hub exists
    producer = await connect_websocket_url(
        nursery,
        ws_url(server, "/ws/projects/demo/publish"),
        extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())],
    )
    await producer.send_message(json.dumps({"type": "hello", "producer": "p", "stream": stream}))
    assert (await receive(producer))["type"] == "welcome"  # it holds the stream now
    nursery.start_soon(drain, producer)
    for frame in sent:
        await producer.send_message(frame)
    await producer.aclose()  # the server reads everything before it sees the close
    assert producer.closed is not None
    assert producer.closed.code == 1000, producer.closed  # we closed it: never a 1011
    while server.manager.producer_count:  # noqa: ASYNC110 (no event for this)
        await trio.sleep(0.005)

    hub = server.manager.get_hub("demo")
    assert hub is not None
    head = hub.seq
    await watcher.reached(head)
    watcher.assert_whole()

    since = round(resume_at * head)
    ws = await connect(nursery, server, since=since, epoch=hub.epoch, backlog=0)
    hello, answer = await receive(ws), await receive(ws)
    assert hello["type"] == "hello"
    head = hello["seq"]  # the progress poll may have published meanwhile
    if answer["type"] == "resync":  # allowed only when that part of the history is gone
        assert answer == {
            "type": "resync",
            "reason": "gap_evicted",
            "epoch": hub.epoch,
            "seq": head,
        }
        assert since < hub.history.evicted_through
    else:
        assert answer == {"type": "resumed", "since": since, "seq": head}
        replayed: list[int] = []
        while len(replayed) < head - since:
            message = await receive(ws)
            if "seq" in message:  # standing warnings carry none
                replayed.append(message["seq"])
        assert replayed == list(range(since + 1, head + 1))
    await ws.aclose()


class Watcher:
    """A subscriber that reads everything, keeping the messages in arrival order."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.messages: list[Msg] = []
        self.point = -1
        self.changed = trio.Event()

    async def run(self) -> None:
        try:
            while True:
                message = await receive(self.ws)
                self.messages.append(message)
                if "seq" in message:  # an event, or the point a hello or resync names
                    self.point = max(self.point, message["seq"])
                self.changed.set()
                self.changed = trio.Event()
        except ConnectionClosed:
            return

    async def reached(self, head: int) -> None:
        while self.point < head:
            await self.changed.wait()

    def assert_whole(self) -> None:
        """After hello and after each resync: snapshot messages (seq at most its point),
        then every later seq exactly once, in order."""
        expected = 0
        live = False
        for message in self.messages:
            kind = message["type"]
            if kind in ("hello", "resync"):
                expected, live = message["seq"] + 1, False
            elif "seq" in message and kind not in CONNECTION_WITH_SEQ:
                if not live and message["seq"] < expected:
                    continue  # part of a snapshot: keeps the seq it was first sent with
                assert message["seq"] == expected, (message, self.messages)
                expected, live = expected + 1, True


async def drain(ws: WebSocketConnection) -> None:
    """Read what the server tells the producer (welcome, acks, warnings) until closed."""
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed:
        return


class Failures(logging.Handler):
    """Collects error records: a handler that failed (a 1011 or an abort) logs one."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
