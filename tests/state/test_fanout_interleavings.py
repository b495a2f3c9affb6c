"""The hub's fan-out under any interleaving of subscriber lives (issue 17, item 3).

A hypothesis `RuleBasedStateMachine` drives one `ProjectHub` on a memory journal,
with its real writer task, and fake sessions shaped like `SubscriberSession`
(a nursery per session, a send task started on demand by ``wake``, a direct
write that the "socket" takes or refuses, leaving the hub before the nursery
closes): subscribe fresh or resuming, stall, unstall, leave, close mid fan-out,
break a session so that its wake and direct write raise, commit, fail the writer
after a commit. The invariant is PROTOCOL.md 3.1's: every session sees seqs
in order with no gap and no duplicate, except right after a ``resync``, which
names the point it continues from; once everything settles, every open session
that is not stalled holds every event up to the head.

The trio loop runs in a thread of its own for the machine's lifetime, since a
rule is a plain function and the sessions' tasks must outlive it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from trio_ws.journal.memory import MemoryJournal
from trio_ws.state import fanout
from trio_ws.state.fanout import FanOut
from trio_ws.state.history import Outgoing
from trio_ws.state.hub import ProjectHub
from trio_ws.state.subscriber import Subscriber

CONNECTION = frozenset({"hello", "resumed", "resync"})


class LoopThread:
    """A trio loop in a thread; `call` runs an async function there and returns its value."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self.token: trio.lowlevel.TrioToken | None = None
        self.nursery: trio.Nursery | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        self._ready.wait(10)

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._ready.set()
            await trio.sleep_forever()

    def call(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``fn`` on the loop (everything the rules touch lives there)."""
        return trio.from_thread.run(fn, trio_token=self.token)

    def sync(self, fn: Callable[[], Any]) -> Any:
        return trio.from_thread.run_sync(fn, trio_token=self.token)

    def stop(self) -> None:
        nursery = self.nursery
        assert nursery is not None
        trio.from_thread.run_sync(nursery.cancel_scope.cancel, trio_token=self.token)
        self._thread.join(10)


class BrokenSession(RuntimeError):
    """What a broken fake session raises from its wake and its direct write."""


class FakeSession:
    """`SubscriberSession`'s life around a hub subscriber, writing into a list."""

    def __init__(self, hub: ProjectHub, subscriber: Subscriber, name: int) -> None:
        self.hub = hub
        self.subscriber = subscriber
        self.name = name
        self.received: list[dict[str, Any]] = []
        self.stalled = False
        self._unstalled = trio.Event()
        self.takes_now = True
        """Does its 'socket' take a direct write at once?"""
        self.fail_next_direct = False
        self.broken = False
        self.aborted = False
        self.left = trio.Event()
        self.ended = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._sending = False

    async def run(self) -> None:
        subscriber = self.subscriber
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                subscriber.wake = self._wake
                subscriber.abort = self._abort
                try:
                    self._wake()
                    await self.left.wait()
                finally:
                    self._nursery = None
                    self.hub.unsubscribe(subscriber)
                    nursery.cancel_scope.cancel()
        finally:
            self.ended.set()

    def _abort(self) -> None:
        self.aborted = True
        self.left.set()

    def _wake(self) -> None:
        if self.broken:
            raise BrokenSession("wake of a broken session")
        if self._sending or self._nursery is None:
            return
        self._sending = True
        self._nursery.start_soon(self._send_task)

    async def _send_task(self) -> None:
        await self.hub.drain(self.subscriber, self._send, self._direct)
        self._sending = False

    def stall(self) -> None:
        if not self.stalled:
            self.stalled = True
            self._unstalled = trio.Event()

    def unstall(self) -> None:
        self.stalled = False
        self._unstalled.set()

    async def _send(self, batch: list[Outgoing]) -> None:
        while self.stalled:
            await self._unstalled.wait()
        self.received.extend(json.loads(item.text) for item in batch if item.text)

    def _direct(self, fan_out: FanOut) -> bool:
        if self.broken:
            raise BrokenSession("direct write of a broken session")
        if self.fail_next_direct:
            # The connection fails at this write: its send task would meet the same
            # error; the subscriber goes closing while the fan-out walks on.
            self.subscriber.close()
            self.left.set()
            return False
        if not self.takes_now or self.stalled:
            return False
        self.received.extend(json.loads(item.text) for item in fan_out.items)
        return True

    def check(self) -> int | None:
        """Seqs in order, no gap, no duplicate (a resync restarts the count); the last
        seq it stands at, or None before its first sync point."""
        at: int | None = None
        for message in self.received:
            kind = message["type"]
            if kind == "hello":
                at = message["seq"]
            elif kind == "resumed":
                assert message["since"] == at or at is None or message["since"] <= at
                at = message["since"]
            elif kind == "resync":
                at = message["seq"]
            elif "seq" in message and kind != "warning":
                assert at is not None, f"session {self.name}: event before hello"
                if message["seq"] <= at:
                    # A snapshot event keeps its seq: only allowed right at a sync point.
                    continue
                assert message["seq"] == at + 1, (
                    f"session {self.name}: gap without resync: {at} -> {message['seq']}"
                )
                at = message["seq"]
        return at


class FanOutMachine(RuleBasedStateMachine):
    sessions = Bundle("sessions")

    def __init__(self) -> None:
        super().__init__()
        self.loop = LoopThread()
        self.hub = ProjectHub("churn", queue_size=3, history=25)
        self.published = 0
        self.names = 0
        self.all: list[FakeSession] = []

        async def open_hub() -> None:
            await self.hub.open(MemoryJournal("churn", history=25))
            assert self.loop.nursery is not None
            self.loop.nursery.start_soon(self._writer)

        self.loop.call(open_hub)

    async def _writer(self) -> None:
        """`Project._write`: the writer restarts after a failure, resyncing everyone."""
        while not self.hub.closed:
            try:
                await self.hub.run_writer()
            except BrokenSession:
                self.hub.resync_all("delivery_failed")

    def _settle(self) -> None:
        self.loop.call(trio.testing.wait_all_tasks_blocked)

    def teardown(self) -> None:
        def end_all() -> None:
            for session in self.all:
                session.unstall()
                session.left.set()

        self.loop.sync(end_all)
        self._settle()
        self.loop.stop()

    # -- subscriber lives --------------------------------------------------------

    @rule(target=sessions, resume=st.booleans(), backlog=st.sampled_from([0, 5]))
    def subscribe(self, resume: bool, backlog: int) -> FakeSession:
        hub = self.hub
        self.names += 1
        name = self.names

        def start() -> FakeSession:
            since = max(0, hub.head - 3) if resume else None
            epoch = hub.epoch if resume else None
            subscriber = hub.subscribe(since=since, epoch=epoch, backlog=backlog)
            session = FakeSession(hub, subscriber, name)
            assert self.loop.nursery is not None
            self.loop.nursery.start_soon(session.run)
            return session

        session: FakeSession = self.loop.sync(start)
        self.all.append(session)
        return session

    @rule(session=sessions)
    def stall(self, session: FakeSession) -> None:
        self.loop.sync(session.stall)

    @rule(session=sessions)
    def unstall(self, session: FakeSession) -> None:
        self.loop.sync(session.unstall)

    @rule(session=sessions, takes=st.booleans())
    def socket_takes_now(self, session: FakeSession, takes: bool) -> None:
        def set_it() -> None:
            session.takes_now = takes

        self.loop.sync(set_it)

    @rule(session=consumes(sessions))
    def leave(self, session: FakeSession) -> None:
        """The receive loop ended (the client left): the session leaves the hub."""
        self.loop.sync(session.left.set)
        self._settle()
        assert session.ended.is_set()

    @rule(session=sessions)
    def close_mid_fan_out(self, session: FakeSession) -> None:
        """Its next direct write finds the connection failing."""

        def set_it() -> None:
            session.fail_next_direct = True

        self.loop.sync(set_it)

    @rule(session=sessions)
    def break_session(self, session: FakeSession) -> None:
        """A bug in one session: its wake and direct write raise."""

        def set_it() -> None:
            session.broken = True

        self.loop.sync(set_it)

    # -- the project ---------------------------------------------------------------

    @rule(count=st.integers(min_value=1, max_value=8))
    def commit(self, count: int) -> None:
        start = self.published
        self.published += count
        hub = self.hub

        async def publish() -> None:
            hub.feed_lines([f"line {n}" for n in range(start, start + count)])
            with trio.fail_after(5):
                await hub.wait_committed(hub.seq)

        self.loop.call(publish)

    @rule()
    def step(self) -> None:
        """Let every task run until all wait: send tasks drain, catch up, resync."""
        self._settle()

    @precondition(lambda self: self.hub.head > 0)
    @rule()
    def writer_fails_after_a_commit(self) -> None:
        self.loop.sync(lambda: self.hub.resync_all("delivery_failed"))

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def every_session_is_whole(self) -> None:
        def check_all() -> None:
            for session in self.all:
                session.check()

        self.loop.sync(check_all)

    def check_settled(self) -> None:
        """Every open, unstalled, unbroken session holds everything up to the head."""

        def unstall_all() -> None:
            for session in self.all:
                session.unstall()

        self.loop.sync(unstall_all)
        self._settle()

        def check_all() -> None:
            for session in self.all:
                if session.ended.is_set() or session.broken or session.aborted:
                    continue
                assert session.check() == self.hub.head, (
                    f"session {session.name} stands at {session.check()}, head {self.hub.head}"
                )

        self.loop.sync(check_all)


class SettledMachine(FanOutMachine):
    def teardown(self) -> None:
        try:
            self.check_settled()
        finally:
            super().teardown()


SettledMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestFanOutInterleavings = SettledMachine.TestCase


class ChunkedMachine(SettledMachine):
    """The same lives with a fan-out that lets other tasks run after every subscriber
    (`HubFanOut._fan_out_paced`, above 1,024 subscribers every 256): a commit's pass
    now interleaves with joins, leaves, stalls and catch-ups."""

    def __init__(self) -> None:
        self._chunk = fanout.FAN_OUT_CHUNK, fanout.PACE_ABOVE
        setattr(fanout, "FAN_OUT_CHUNK", 1)  # noqa: B010 - a Final, changed for this test
        setattr(fanout, "PACE_ABOVE", 0)  # noqa: B010 - as above
        super().__init__()

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            setattr(fanout, "FAN_OUT_CHUNK", self._chunk[0])  # noqa: B010 - as above
            setattr(fanout, "PACE_ABOVE", self._chunk[1])  # noqa: B010 - as above


ChunkedMachine.TestCase.settings = SettledMachine.TestCase.settings
TestChunkedFanOutInterleavings = ChunkedMachine.TestCase
