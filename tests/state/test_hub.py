"""ProjectHub: numbering, snapshots, resume, slow subscribers; most without sockets, the
last section through a real server (in-process, or `trio-ws serve` as a subprocess)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from serving import NETWORK_TIMEOUT, TOKEN, connect, make_config, receive, receive_until
from serving import serve_subprocess as serve_process
from trio_websocket import connect_websocket_url

from trio_ws.core.protocol import iso_timestamp
from trio_ws.data.progress import Progress
from trio_ws.data.registry import Registry
from trio_ws.journal.memory import MemoryJournal
from trio_ws.net.server import Server, serve
from trio_ws.net.subscribe import SubscriberSession
from trio_ws.state import fanout
from trio_ws.state.fanout import Send
from trio_ws.state.history import Outgoing
from trio_ws.state.hub import ProjectHub
from trio_ws.state.subscriber import Subscriber, SubscriberState

Received = list[dict[str, Any]]
CONNECTION = {"hello", "resumed", "resync"}


class Reader:
    """A subscriber's send task writing into a list, with a gate to simulate a stalled socket."""

    def __init__(self, hub: ProjectHub, subscriber: Subscriber) -> None:
        self.hub = hub
        self.subscriber = subscriber
        self.received: Received = []
        self.open = trio.Event()
        self.open.set()

    async def send(self, batch: list[Outgoing]) -> None:
        for item in batch:
            await self.open.wait()
            self.receive(item)
            await trio.lowlevel.checkpoint()

    def receive(self, item: Outgoing) -> None:
        self.received.append(json.loads(item.text))

    def stall(self) -> None:
        self.open = trio.Event()

    def resume(self) -> None:
        self.open.set()

    def seqs(self) -> list[int]:
        """Seqs of events (hello, resumed and resync carry a head seq, not their own)."""
        return [m["seq"] for m in self.received if "seq" in m and m["type"] not in CONNECTION]

    def types(self) -> list[str]:
        return [m["type"] for m in self.received]


async def start_reader(nursery: trio.Nursery, hub: ProjectHub, **subscribe: Any) -> Reader:
    reader = Reader(hub, hub.subscribe(**subscribe))
    nursery.start_soon(deliver, hub, reader.subscriber, reader.send)
    await trio.testing.wait_all_tasks_blocked()
    return reader


async def deliver(hub: ProjectHub, subscriber: Subscriber, send: Send) -> None:
    """A send task for the subscriber's whole life (the sessions start one on demand):
    `ProjectHub.drain` each time something is queued, until it leaves the hub."""
    while subscriber.is_open:
        woken = trio.Event()
        subscriber.wake = woken.set
        if not await hub.drain(subscriber, send, None):
            return
        await woken.wait()


async def open_hub(name: str = "demo", **options: Any) -> ProjectHub:
    """A hub opened on a memory journal that keeps one event, so that every catch-up
    is served from the hub's own history, as these tests expect."""
    hub = ProjectHub(name, **options)
    await hub.open(MemoryJournal(name, history=1))
    return hub


async def committed(hub: ProjectHub) -> None:
    """Commit what is staged and fan it out, as the writer would."""
    assert await hub.commit()


def log_lines(count: int, start: int = 0) -> list[str]:
    return [f"plain output line {i}" for i in range(start, start + count)]


async def test_seq_is_per_project_and_consecutive() -> None:
    one, two = await open_hub("one"), await open_hub("two")
    one.feed_lines(log_lines(3))
    two.feed_lines(log_lines(1))
    assert (one.seq, two.seq) == (3, 1)
    assert one.epoch != two.epoch


async def test_fresh_sync_order(nursery: trio.Nursery) -> None:
    hub = await open_hub("demo")
    hub.set_status("running")
    hub.publish_progress(Progress(passing=1, in_progress=1, total=4, needs_human_input=0))
    hub.feed_lines(
        [
            "Max concurrency: 2 coding agents",
            "Running initializer agent...",
            "INITIALIZATION COMPLETE - Starting feature loop",
            "Started coding agent for features #1, #2",
            "[Feature #1] [Tool: Read]",
            "Started coding agent for feature #3",
        ]
    )
    hub.feed_lines(["vite dev ready at http://localhost:5173/"], stream="dev")
    await committed(hub)
    reader = await start_reader(nursery, hub, backlog=2)
    types = reader.types()
    assert types[:4] == ["hello", "agent_status", "dev_server_status", "progress"]
    orchestrator = [m for m in reader.received if m["type"] == "orchestrator_update"]
    assert [m["eventType"] for m in orchestrator] == [
        "init_start",
        "init_complete",
        "coding_spawn",
        "coding_spawn",
    ]
    agents = [m for m in reader.received if m["type"] == "agent_update"]
    assert [(a["agentIndex"], a["featureIds"]) for a in agents] == [(0, [1, 2]), (1, [3])]
    assert agents[0]["state"] == "thinking"
    logs = [m for m in reader.received if m["type"] == "log"]
    assert [m["line"] for m in logs] == [
        "[Feature #1] [Tool: Read]",
        "Started coding agent for feature #3",
    ]
    assert types[-1] == "dev_log"
    assert reader.received[0]["seq"] == hub.seq


async def test_backlog_zero_snapshot_has_only_the_latest_orchestrator_update(
    nursery: trio.Nursery,
) -> None:
    """A client that appends what it gets (backlog 0) is not handed older updates again."""
    hub = await open_hub("demo")
    hub.feed_lines(
        [
            "Running initializer agent...",
            "INITIALIZATION COMPLETE - Starting feature loop",
            "Started coding agent for feature #1",
        ]
    )
    await committed(hub)
    bare = await start_reader(nursery, hub)
    await committed(hub)
    asked = await start_reader(nursery, hub, backlog=1)

    def updates(reader: Reader) -> list[str]:
        return [m["eventType"] for m in reader.received if m["type"] == "orchestrator_update"]

    assert updates(bare) == ["coding_spawn"]
    assert updates(asked) == ["init_start", "init_complete", "coding_spawn"]


async def test_snapshot_messages_keep_their_seq(nursery: trio.Nursery) -> None:
    hub = await open_hub("demo")
    hub.set_status("running")
    hub.feed_lines(log_lines(2))
    await committed(hub)
    reader = await start_reader(nursery, hub, backlog=2)
    status = next(m for m in reader.received if m["type"] == "agent_status")
    assert status["seq"] == 1
    assert [m["seq"] for m in reader.received if m["type"] == "log"] == [2, 3]


async def test_late_joiner_sees_active_agents_not_finished_ones(nursery: trio.Nursery) -> None:
    hub = await open_hub("demo")
    hub.set_status("running")
    hub.feed_lines(
        [
            "Started coding agent for feature #1",
            "Started coding agent for feature #2",
            "[Feature #2] Implementing the login form",
            "Feature #1 completed",
        ]
    )
    await committed(hub)
    appending = await start_reader(nursery, hub, backlog=0)
    asking = await start_reader(nursery, hub, backlog=1)

    def cards(reader: Reader) -> list[tuple[int, str, str | None]]:
        agents = [m for m in reader.received if m["type"] == "agent_update"]
        return [(a["agentIndex"], a["state"], a["thought"]) for a in agents]

    # A client that appends what it gets files a thought as an activity row: its card
    # comes without one (the same seq), one that asked for a backlog gets it whole.
    assert cards(appending) == [(1, "working", None)]
    assert cards(asking) == [(1, "working", "the login form")]
    assert hub.agent.agents.active_count == 1


async def test_stopped_clears_active_agents_in_snapshot(nursery: trio.Nursery) -> None:
    hub = await open_hub("demo")
    hub.set_status("running")
    hub.feed_lines(["Started coding agent for feature #1"])
    hub.set_status("stopped")
    await committed(hub)
    reader = await start_reader(nursery, hub, backlog=0)
    assert "agent_update" not in reader.types()


async def test_live_events_follow_snapshot_without_gap(nursery: trio.Nursery) -> None:
    hub = await open_hub("demo")
    hub.feed_lines(log_lines(5))
    await committed(hub)
    reader = await start_reader(nursery, hub, backlog=0)
    hello_seq = reader.received[0]["seq"]
    hub.feed_lines(log_lines(20, 5))
    await committed(hub)
    await trio.testing.wait_all_tasks_blocked()
    live = [s for s in reader.seqs() if s > hello_seq]
    assert live == list(range(hello_seq + 1, hub.seq + 1))


async def test_slow_subscriber_is_caught_up_from_history(nursery: trio.Nursery) -> None:
    hub = await open_hub("demo", queue_size=4, history=1000)
    await committed(hub)
    fast = await start_reader(nursery, hub, backlog=0)
    await committed(hub)
    slow = await start_reader(nursery, hub, backlog=0)
    slow.stall()
    for batch in range(25):  # the publisher never waits for anyone
        hub.feed_lines(log_lines(2, 2 * batch))
        await committed(hub)
        await trio.testing.wait_all_tasks_blocked()
    assert fast.seqs() == list(range(1, 51))
    assert slow.subscriber.is_behind
    assert hub.stats.fell_behind == 1
    slow.resume()
    await committed(hub)
    await trio.testing.wait_all_tasks_blocked()
    assert slow.seqs() == list(range(1, 51))
    assert not slow.subscriber.is_behind
    hub.feed_lines(log_lines(3, 50))
    await committed(hub)
    await trio.testing.wait_all_tasks_blocked()
    assert slow.seqs() == fast.seqs() == list(range(1, 54))
    assert "resync" not in slow.types()


async def test_slow_subscriber_past_history_gets_resync_and_snapshot(
    nursery: trio.Nursery,
) -> None:
    hub = await open_hub("demo", queue_size=2, history=10)
    await committed(hub)
    slow = await start_reader(nursery, hub, backlog=3)
    slow.stall()
    hub.feed_lines(log_lines(40))
    await committed(hub)
    await trio.testing.wait_all_tasks_blocked()
    slow.resume()
    await committed(hub)
    await trio.testing.wait_all_tasks_blocked()
    types = slow.types()
    assert "resync" in types
    resync_at = types.index("resync")
    # Its snapshot point: live events continue from seq 41.
    assert slow.received[resync_at] == {
        "type": "resync",
        "reason": "gap_evicted",
        "epoch": hub.epoch,
        "seq": 40,
    }
    assert types[resync_at + 1 : resync_at + 3] == ["agent_status", "dev_server_status"]
    after = slow.received[resync_at + 1 :]
    assert [m["line"] for m in after if m["type"] == "log"] == log_lines(3, 37)
    hub.feed_lines(["one more"])
    await committed(hub)
    await trio.testing.wait_all_tasks_blocked()
    assert slow.received[-1]["seq"] == 41
    assert hub.stats.resyncs == 1


async def test_resume_replays_exactly_what_was_missed(nursery: trio.Nursery) -> None:
    hub = await open_hub("demo")
    hub.feed_lines(log_lines(10))
    await committed(hub)
    reader = await start_reader(nursery, hub, since=4, epoch=hub.epoch)
    assert reader.received[1] == {"type": "resumed", "since": 4, "seq": 10}
    assert reader.seqs() == list(range(5, 11))
    hub.feed_lines(log_lines(2, 10))
    await committed(hub)
    await trio.testing.wait_all_tasks_blocked()
    assert reader.seqs() == list(range(5, 13))


@pytest.mark.parametrize(
    ("since", "epoch", "reason"),
    [
        (3, "another-epoch", "epoch_changed"),
        (3, None, "epoch_changed"),
        (99, "EPOCH", "invalid_since"),
        (-1, "EPOCH", "invalid_since"),
        (1, "EPOCH", "gap_evicted"),
    ],
)
async def test_resync_reasons(
    nursery: trio.Nursery, since: int, epoch: str | None, reason: str
) -> None:
    hub = await open_hub("demo", history=5)
    hub.feed_lines(log_lines(10))
    resolved_epoch = hub.epoch if epoch == "EPOCH" else epoch
    await committed(hub)
    reader = await start_reader(nursery, hub, since=since, epoch=resolved_epoch)
    assert reader.received[1] == {"type": "resync", "reason": reason, "epoch": hub.epoch, "seq": 10}
    assert reader.received[2]["type"] == "agent_status"


async def test_resume_at_head_gets_only_live_events(nursery: trio.Nursery) -> None:
    hub = await open_hub("demo")
    hub.feed_lines(log_lines(3))
    await committed(hub)
    reader = await start_reader(nursery, hub, since=3, epoch=hub.epoch)
    assert reader.types() == ["hello", "resumed"]
    hub.feed_lines(["next"])
    await committed(hub)
    await trio.testing.wait_all_tasks_blocked()
    assert reader.seqs() == [4]


class BudgetReader(Reader):
    """Reads ``budget`` messages, then hangs mid-send like a connection that dropped."""

    def __init__(self, hub: ProjectHub, subscriber: Subscriber, budget: int) -> None:
        super().__init__(hub, subscriber)
        self.budget = budget

    async def send(self, batch: list[Outgoing]) -> None:
        for item in batch:
            if self.budget <= 0:
                await trio.sleep_forever()
            self.budget -= 1
            await super().send([item])


@settings(max_examples=80, deadline=None)
@given(
    total=st.integers(min_value=1, max_value=120),
    rounds=st.lists(
        st.tuples(st.integers(min_value=0, max_value=40), st.integers(min_value=0, max_value=30)),
        max_size=8,
    ),
    queue=st.integers(min_value=1, max_value=8),
)
def test_resume_across_random_disconnects_is_exactly_once(
    total: int, rounds: list[tuple[int, int]], queue: int
) -> None:
    """Drop the connection at random points mid-delivery and resume with the last seq seen:
    every event arrives exactly once, in order."""

    async def scenario() -> list[int]:
        hub = await open_hub("demo", queue_size=queue, history=1000)
        seen: list[int] = []
        published = 0
        final_round = (total, 1_000_000)  # publish the rest, read everything
        async with trio.open_nursery() as nursery:
            for to_publish, budget in [*rounds, final_round]:
                since = seen[-1] if seen else 0
                subscriber = hub.subscribe(since=since, epoch=hub.epoch)
                reader = BudgetReader(hub, subscriber, budget)
                scope = trio.CancelScope()
                nursery.start_soon(_deliver_in, scope, hub, reader)
                count = min(to_publish, total - published)
                hub.feed_lines(log_lines(count, published))
                published += count
                await committed(hub)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
                hub.unsubscribe(subscriber)
                head = reader.types()[:2]
                assert head == ["hello", "resumed"][: len(head)]
                seen.extend(reader.seqs())
        assert hub.subscriber_count == 0
        return seen

    assert trio.run(scenario) == list(range(1, total + 1))


async def _deliver_in(scope: trio.CancelScope, hub: ProjectHub, reader: Reader) -> None:
    with scope:
        await deliver(hub, reader.subscriber, reader.send)


async def test_warning_reaches_subscribers_and_late_joiners(nursery: trio.Nursery) -> None:
    hub = await open_hub("demo")
    await committed(hub)
    early = await start_reader(nursery, hub)
    hub.warn("progress", "features database /x/features.db is locked")
    await committed(hub)
    await trio.testing.wait_all_tasks_blocked()
    assert early.received[-1] == {
        "type": "warning",
        "source": "progress",
        "content": "features database /x/features.db is locked",
    }
    await committed(hub)
    late = await start_reader(nursery, hub)
    assert late.received[-1]["type"] == "warning"
    hub.publish_progress(Progress(1, 0, 2, 0))
    await committed(hub)
    later = await start_reader(nursery, hub)
    assert "warning" not in later.types()


async def test_progress_published_only_on_change() -> None:
    hub = await open_hub("demo")
    assert hub.publish_progress(Progress(1, 0, 2, 0))
    assert not hub.publish_progress(Progress(1, 0, 2, 0))
    assert hub.publish_progress(Progress(2, 0, 2, 0))
    await committed(hub)
    assert hub.stats.events["progress"] == 2


async def test_unsubscribe_ends_fan_out_and_send_task(nursery: trio.Nursery) -> None:
    hub = await open_hub("demo")
    await committed(hub)
    reader = await start_reader(nursery, hub)
    hub.unsubscribe(reader.subscriber)
    assert reader.subscriber.state is SubscriberState.CLOSED
    hub.feed_lines(["after"])
    await committed(hub)
    await trio.testing.wait_all_tasks_blocked()
    assert hub.subscriber_count == 0
    assert hub.stats.send_tasks == 0
    assert "after" not in [m.get("line") for m in reader.received]


# -- numbering: a seq only for an encoded event, history found by seq ---------------------


async def test_a_lone_surrogate_becomes_a_replacement_character_and_one_seq(
    nursery: trio.Nursery,
) -> None:
    hub = await open_hub("demo")
    await committed(hub)
    reader = await start_reader(nursery, hub, backlog=0)
    hub.feed_lines(["bad \ud800 x", "next"])
    await committed(hub)
    await trio.testing.wait_all_tasks_blocked()
    assert [(m["seq"], m["line"]) for m in reader.received if m["type"] == "log"] == [
        (1, "bad \ufffd x"),
        (2, "next"),
    ]


async def test_an_event_that_fails_to_encode_takes_no_seq(nursery: trio.Nursery) -> None:
    hub = await open_hub("demo")
    await committed(hub)
    reader = await start_reader(nursery, hub, backlog=0)
    unencodable = Progress(1, {"a set"}, 2, 0)  # type: ignore[arg-type]  # not JSON
    with pytest.raises(TypeError):
        hub.publish_progress(unencodable)
    assert hub.seq == 0
    hub.feed_lines(["after the failure"])
    await committed(hub)
    await trio.testing.wait_all_tasks_blocked()
    assert reader.seqs() == [1]


# -- history bounded by bytes -----------------------------------------------------------


async def test_history_is_bounded_by_encoded_bytes(nursery: trio.Nursery) -> None:
    hub = await open_hub("demo", history=1000, history_bytes=50_000)
    hub.feed_lines(["😀" * 1000] * 40)  # each event is over 4,000 bytes of UTF-8
    await committed(hub)
    held = hub.history
    assert 0 < held.bytes <= 50_000
    assert len(held) == 50_000 // (held.bytes // len(held))  # as many as fit, no more
    assert len(held) < 13
    assert held.oldest_seq == hub.seq - len(held) + 1 == held.evicted_through + 1
    await committed(hub)
    kept = await start_reader(nursery, hub, since=held.evicted_through, epoch=hub.epoch)
    assert kept.seqs() == list(range(held.evicted_through + 1, hub.seq + 1))
    await committed(hub)
    gone = await start_reader(nursery, hub, since=held.evicted_through - 1, epoch=hub.epoch)
    assert gone.received[1] == {
        "type": "resync",
        "reason": "gap_evicted",
        "epoch": hub.epoch,
        "seq": hub.seq,
    }


async def test_snapshot_log_backlog_is_bounded_by_the_same_bytes(nursery: trio.Nursery) -> None:
    """Else the last 1,000 long lines would stay held for snapshots whatever the bound."""
    hub = await open_hub("demo", history=1000, history_bytes=50_000)
    hub.feed_lines([f"{i:02d} " + "😀" * 1000 for i in range(40)])
    hub.feed_lines([f"{i:02d} " + "😀" * 1000 for i in range(40)], stream="dev")
    await committed(hub)
    reader = await start_reader(nursery, hub, backlog=1000)
    for kind in ("log", "dev_log"):
        lines = [m["line"][:2] for m in reader.received if m["type"] == kind]
        assert 0 < len(lines) < 13
        assert lines == [f"{i:02d}" for i in range(40 - len(lines), 40)]  # the newest


# -- standing warnings reach a subscriber that could not take them ------------------------


@pytest.mark.parametrize("lines", [3, 10], ids=["queue-full", "behind"])
async def test_warning_raised_while_behind_is_handed_over_on_catch_up(
    nursery: trio.Nursery, lines: int
) -> None:
    hub = await open_hub("demo", queue_size=2)
    await committed(hub)
    reader = await start_reader(nursery, hub, backlog=0)
    reader.stall()
    hub.feed_lines(log_lines(lines))
    await committed(hub)
    hub.warn("producer", "the agent producer disconnected")
    assert reader.subscriber.is_behind
    reader.resume()
    await committed(hub)
    await trio.testing.wait_all_tasks_blocked()
    assert reader.seqs() == list(range(1, lines + 1))
    assert reader.received[-1] == {
        "type": "warning",
        "source": "producer",
        "content": "the agent producer disconnected",
    }
    assert not reader.subscriber.is_behind


async def test_warning_cleared_before_catch_up_is_not_handed_over(nursery: trio.Nursery) -> None:
    hub = await open_hub("demo", queue_size=2)
    await committed(hub)
    reader = await start_reader(nursery, hub, backlog=0)
    reader.stall()
    hub.feed_lines(log_lines(10))
    await committed(hub)
    hub.warn("producer", "the agent producer disconnected", key="producer:agent")
    hub.clear_warning("producer:agent")  # it came back: nothing stands any more
    reader.resume()
    await committed(hub)
    await trio.testing.wait_all_tasks_blocked()
    assert reader.seqs() == list(range(1, 11))
    assert "warning" not in reader.types()


# -- through a real server ----------------------------------------------------------------


async def test_warning_reaches_a_subscriber_that_was_behind_over_a_socket(
    nursery: trio.Nursery, registry: Registry, project_dir: Path
) -> None:
    with trio.fail_after(NETWORK_TIMEOUT):
        server: Server = await nursery.start(serve, make_config(registry, queue_size=8))
        ws = await connect(nursery, server, backlog=0)
        await ws.send_message('{"type":"ping"}')
        await receive_until(ws, lambda m: m["type"] == "pong")  # the snapshot is through
        hub = server.manager.get_hub("demo")
        assert hub is not None
        start = hub.seq + 1
        # The queued path, as for a socket that takes nothing now (else the fan-out
        # writes the whole commit to the socket at once and nothing queues).
        [session] = server.manager._sessions
        assert isinstance(session, SubscriberSession)
        session.subscriber.direct = None
        # One producer message's worth of lines overflows its queue at once; the
        # warning is raised while it is still behind.
        raised = trio.Event()

        def warn_after_fan_out(project: str, seconds: float) -> None:
            hub.warn("producer", "the agent producer disconnected", key="producer:agent")
            hub.on_commit = None
            raised.set()

        # The warning is raised right after the commit's fan-out, with no checkpoint.
        hub.on_commit = warn_after_fan_out
        hub.feed_lines(log_lines(50))
        await raised.wait()
        assert hub.stats.fell_behind == 1
        seen = await receive_until(ws, lambda m: m["type"] == "warning")
    events = [m["seq"] for m in seen if "seq" in m]
    assert events == list(range(start, hub.seq + 1))  # caught up first, nothing skipped
    assert seen[-1] == {
        "type": "warning",
        "source": "producer",
        "content": "the agent producer disconnected",
    }


async def test_a_paced_fan_out_hands_what_is_committed_during_it_in_the_same_walk(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event staged while a paced fan-out walks the subscribers is committed at its
    next chunk and written, with the walk's own events, to the subscribers it has not
    reached yet; the ones it passed get it in a second walk. Before, it waited for the
    whole walk to end and then a walk of its own (one to two walks of latency at
    15,000 subscribers). Every subscriber gets every event once, in order."""
    monkeypatch.setattr(fanout, "FAN_OUT_CHUNK", 1)
    monkeypatch.setattr(fanout, "PACE_ABOVE", 1)
    hub = await open_hub("demo")
    await committed(hub)
    writes: list[list[list[int]]] = []
    for _ in range(20):
        subscriber = hub.subscribe(backlog=0)
        mine: list[list[int]] = []
        writes.append(mine)

        def direct(fan_out: fanout.FanOut, mine: list[list[int]] = mine) -> bool:
            if not any(writes):  # the walk's first write: an event is staged meanwhile
                hub.feed_lines(log_lines(1, start=1))
            mine.append([item.seq or 0 for item in fan_out.items])
            return True

        nursery.start_soon(hub.drain, subscriber, Reader(hub, subscriber).send, direct)
    await trio.testing.wait_all_tasks_blocked()
    hub.feed_lines(log_lines(1))
    first = hub.seq
    await committed(hub)
    assert hub.pending == 0  # the walk committed the staged one itself
    both = [first, first + 1]
    for mine in writes:
        assert [seq for write in mine for seq in write] == both
    assert sorted(mine for mine in writes) == [[[first], [first + 1]]] + [[both]] * 19


async def test_serve_history_bytes_bounds_what_a_resume_reaches(
    nursery: trio.Nursery, home: Path, project_dir: Path
) -> None:
    """``trio-ws serve --history-bytes 20000``: forty 1 KB lines do not all stay held."""
    with trio.fail_after(NETWORK_TIMEOUT):
        async with serve_process(home, "--history-bytes", "20000", "--token", TOKEN) as (
            _,
            port,
            _,
        ):
            base = f"ws://127.0.0.1:{port}/ws/projects/demo"
            producer = await connect_websocket_url(
                nursery,
                f"{base}/publish",
                extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())],
            )
            await producer.send_message(
                json.dumps({"type": "hello", "producer": "p", "stream": "agent"})
            )
            lines = [f"{i:04d} " + "x" * 1000 for i in range(40)]
            await producer.send_message(json.dumps({"type": "lines", "first": 1, "lines": lines}))
            await receive_until(producer, lambda m: m["type"] == "ack" and m["pseq"] == 40)
            hello = await receive(await connect_websocket_url(nursery, base))
            head, epoch = hello["seq"], hello["epoch"]
            near = await connect_websocket_url(nursery, f"{base}?since={head - 10}&epoch={epoch}")
            far = await connect_websocket_url(nursery, f"{base}?since=1&epoch={epoch}")
            near_opening = [await receive(near) for _ in range(12)]
            far_opening = [await receive(far) for _ in range(2)]
    # 40 lines, and the progress read when the first subscriber came (no features.db: zeros).
    assert head == 41
    assert near_opening[1] == {"type": "resumed", "since": 31, "seq": 41}
    assert [m["seq"] for m in near_opening[2:]] == list(range(32, 42))
    assert far_opening[1] == {"type": "resync", "reason": "gap_evicted", "epoch": epoch, "seq": 41}


async def test_progress_and_status_events_are_dated_by_the_hub_clock() -> None:
    """A chart places both on a time axis (PROTOCOL.md revision 2, additive)."""
    hub = await open_hub("demo", clock=lambda: 1_700_000_000.25)
    hub.set_status("running")
    hub.publish_progress(Progress(passing=1, in_progress=0, total=2, needs_human_input=0))
    await committed(hub)
    held = hub.held(frozenset({"agent_status", "progress"}))
    assert [(m["type"], m["seq"], m["timestamp"]) for m in held] == [
        ("agent_status", 1, iso_timestamp(1_700_000_000.25)),
        ("progress", 2, iso_timestamp(1_700_000_000.25)),
    ]


async def test_a_paced_fan_out_skips_who_caught_up_during_it(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At many subscribers a commit's pass lets other tasks run between chunks: a
    subscriber that catches up from the history meanwhile already holds the pass's
    events and must not get them twice; one that joins meanwhile gets them in its
    snapshot only. (Where the slow one falls in the pass is the set's order, so
    several rounds make it likely that it comes after its catch-up.)"""
    monkeypatch.setattr(fanout, "FAN_OUT_CHUNK", 1)
    monkeypatch.setattr(fanout, "PACE_ABOVE", 1)
    hub = await open_hub("demo", queue_size=1, history=1000)
    await committed(hub)
    fast = [await start_reader(nursery, hub, backlog=0) for _ in range(60)]
    slow = await start_reader(nursery, hub, backlog=0)
    joined: list[Reader] = []
    for _ in range(5):
        slow.stall()
        for _ in range(3):  # one in hand, one queued, one too many: behind
            hub.feed_lines(log_lines(1))
            await committed(hub)
            await trio.testing.wait_all_tasks_blocked()
        assert slow.subscriber.is_behind
        # Whoever the pass reaches first resumes the slow one and lets a newcomer
        # join: both happen while the pass goes on.
        triggered = False

        def trigger(item: Outgoing, reader: Reader) -> None:
            nonlocal triggered
            if not triggered:
                triggered = True
                slow.resume()
                newcomer = Reader(hub, hub.subscribe(backlog=0))
                nursery.start_soon(deliver, hub, newcomer.subscriber, newcomer.send)
                joined.append(newcomer)
            reader.received.append(json.loads(item.text))

        for reader in fast:
            reader.receive = functools.partial(trigger, reader=reader)  # type: ignore[method-assign]
        hub.feed_lines(log_lines(1))
        await committed(hub)
        await trio.testing.wait_all_tasks_blocked()
        for reader in fast:
            del reader.receive
        assert triggered
    head = hub.head
    assert slow.seqs() == list(range(1, head + 1))
    for reader in fast:
        assert reader.seqs() == list(range(1, head + 1))
    for reader in joined:
        hello = reader.received[0]
        assert reader.seqs() == list(range(hello["seq"] + 1, head + 1))
