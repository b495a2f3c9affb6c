"""The ordered, journalled deliveries of a project's alerts (issue 21): the pure queue
and tries, then real projects on real journals (memory; sqlite files in a tmp dir,
closed and opened again) with a recording sender in place of the net layer's.
Backoff waits run on trio's MockClock where they would make a test slow."""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trio_ws.core.alerts import AlertSettings
from trio_ws.core.notify import NotifyTarget, Outcome, command_target, webhook_target
from trio_ws.journal.interface import ArchiveLimits, JournalBackend
from trio_ws.journal.memory import MemoryBackend
from trio_ws.journal.sqlite import SqliteBackend
from trio_ws.runtime.backoff import Backoff
from trio_ws.state.delivery import AlertQueue, Attempts, NotifySetup
from trio_ws.state.manager import ConnectionManager
from trio_ws.state.project import Project

Msg = dict[str, Any]
HOOK = webhook_target("https://example.org/hook")
OTHER = webhook_target("https://example.org/other")


# -- the pure parts --------------------------------------------------------------


def test_the_queue_keeps_alerts_in_order_once_each() -> None:
    queue = AlertQueue(cursor=3)
    assert queue.behind  # the journal is read first
    queue.behind = False
    for seq in (5, 4, 5, 7, 2):
        queue.offer(seq, f"a{seq}")
    assert list(queue.pending) == [(5, "a5"), (7, "a7")]  # 4 and 2 are behind the scan
    queue.settle(5)
    assert (queue.cursor, queue.head) == (5, (7, "a7"))
    with pytest.raises(AssertionError):
        queue.settle(9)


def test_a_full_queue_is_behind_and_takes_no_live_alert_until_it_read_the_journal() -> None:
    queue = AlertQueue(cursor=0, limit=2, behind=False)
    assert queue.offer(1, "a") and queue.offer(2, "b")
    assert not queue.offer(3, "c") and queue.behind
    queue.take_live(4, "d")  # behind: the journal is read for it, after 3
    assert [seq for seq, _ in queue.pending] == [1, 2] and queue.scanned == 2
    queue.restart(10)
    assert (queue.cursor, queue.scanned, queue.behind, queue.head) == (10, 10, True, None)


def test_attempts_back_off_and_stop_at_their_limit() -> None:
    unlimited = Attempts(Backoff(1, 8, jitter=None))
    assert [unlimited.failed() for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    limited = Attempts(Backoff(1, 8, jitter=None), limit=3)
    assert [limited.failed() for _ in range(3)] == [1, 2, None]


# -- deliveries on real projects --------------------------------------------------


class Recorder:
    """The net layer's `Sender`, recorded: answers each try with the next scripted
    outcome (then delivered); ``sent`` is every try, ``delivered`` the delivered ones."""

    def __init__(self, *outcomes: Outcome) -> None:
        self.outcomes = deque(outcomes)
        self.sent: list[tuple[str, Msg, str]] = []
        self.delivered: list[tuple[str, Msg]] = []
        self.gate: trio.Event | None = None
        """While set to an unset event, each try waits for it."""

    async def send(self, target: NotifyTarget, event_text: str, delivery: str) -> Outcome:
        alert = json.loads(event_text)
        self.sent.append((target.key, alert, delivery))
        if self.gate is not None:
            await self.gate.wait()
        outcome = self.outcomes.popleft() if self.outcomes else Outcome.delivered()
        if outcome.kind == "delivered":
            self.delivered.append((target.key, alert))
        return outcome

    def alerts_to(self, target: NotifyTarget) -> list[tuple[str, str]]:
        return [(a["id"], a["state"]) for key, a in self.delivered if key == target.key]


def setup(sender: Recorder, *targets: NotifyTarget, **kwargs: Any) -> NotifySetup:
    settings: dict[str, Any] = {"retry": (1.0, 60.0), "jitter": False}
    settings.update(kwargs)
    return NotifySetup(targets or (HOOK,), sender, **settings)


async def open_project(
    nursery: trio.Nursery,
    tmp_path: Path,
    notify: NotifySetup,
    journals: JournalBackend | None = None,
) -> tuple[ConnectionManager, Project]:
    manager = ConnectionManager(
        nursery,
        journals=journals or MemoryBackend(),
        alerts=AlertSettings(),
        notify=notify,
        idle_close=None,
    )
    return manager, await manager.open("alpha", tmp_path)


def crash_and_rerun(project: Project, times: int = 1) -> None:
    """Each time: a run crashes (``run_crashed`` raised), then runs again (resolved)."""
    for _ in range(times):
        project.hub.set_status("running")
        project.hub.set_status("crashed")
        project.hub.set_status("running")


async def wait_until(condition: Callable[[], bool], step: float = 0.01) -> None:
    """Poll (a sender's record: nothing to wait on). On an autojumping MockClock a step
    costs no time, so take long ones there: each is a round of every task. Bounded on
    the trio clock, virtual or not: a condition that never holds fails the test."""
    with trio.fail_after(600):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(step)


def alerts_of(project: Project) -> list[tuple[str, str]]:
    return [(a["id"], a["state"]) for a in project.hub.held(frozenset({"alert"}))]


async def test_a_failing_target_gets_each_alert_once_in_order_after_backing_off(
    mock_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    mock_clock.autojump_threshold = 0
    sender = Recorder(*[Outcome.retry("HTTP 503")] * 5)
    _, project = await open_project(nursery, tmp_path, setup(sender))
    started = trio.current_time()
    crash_and_rerun(project)
    await wait_until(lambda: len(sender.delivered) == 2, step=0.5)
    assert sender.alerts_to(HOOK) == alerts_of(project)  # raised, then resolved
    tries = [alert["state"] for _, alert, _ in sender.sent]
    assert tries == ["raised"] * 6 + ["resolved"]  # the next waited for the first
    assert trio.current_time() - started >= 1 + 2 + 4 + 8 + 16
    assert len({delivery for _, _, delivery in sender.sent[:6]}) == 1


async def test_a_target_asking_to_wait_is_not_tried_before(
    mock_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    mock_clock.autojump_threshold = 0
    sender = Recorder(Outcome.retry("HTTP 429", after=30.0))
    _, project = await open_project(nursery, tmp_path, setup(sender))
    started = trio.current_time()
    crash_and_rerun(project)
    await wait_until(lambda: len(sender.delivered) == 2, step=0.5)  # raised, resolved
    assert trio.current_time() - started >= 30.0  # not the backoff's 1 s
    assert len(sender.sent) == 3


async def test_a_permanent_refusal_gives_that_alert_up_and_the_next_goes(
    mock_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mock_clock.autojump_threshold = 0
    sender = Recorder(Outcome.permanent("HTTP 410"))
    _, project = await open_project(nursery, tmp_path, setup(sender))
    crash_and_rerun(project)
    await wait_until(lambda: len(sender.delivered) == 1)
    assert [state for _, state in sender.alerts_to(HOOK)] == ["resolved"]
    assert "refused alert seq" in caplog.text and "HTTP 410" in caplog.text
    assert project.hub.committed_pseqs[HOOK.key] == project.hub.head


async def test_a_command_is_given_up_after_its_tries(
    mock_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mock_clock.autojump_threshold = 0
    command = command_target("notify-me")
    sender = Recorder(*[Outcome.retry("exit code 1")] * 3)
    _, project = await open_project(nursery, tmp_path, setup(sender, command, command_attempts=3))
    crash_and_rerun(project)
    await wait_until(lambda: len(sender.delivered) == 1)
    assert len(sender.sent) == 4  # three tries of the raised one, then the resolved
    assert "given up after 3 tries (last: exit code 1)" in caplog.text


async def test_each_target_has_its_own_order_and_cursor(
    mock_clock: trio.testing.MockClock, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A target that is down holds back only its own alerts."""
    mock_clock.autojump_threshold = 0

    class OneDown(Recorder):
        async def send(self, target: NotifyTarget, event_text: str, delivery: str) -> Outcome:
            if target.key == OTHER.key and len(self.sent) < 8:
                self.sent.append((target.key, json.loads(event_text), delivery))
                return Outcome.retry("down")
            return await super().send(target, event_text, delivery)

    sender = OneDown()
    _, project = await open_project(nursery, tmp_path, setup(sender, HOOK, OTHER))
    crash_and_rerun(project)
    await wait_until(lambda: len(sender.alerts_to(HOOK)) == 2, step=0.5)
    assert sender.alerts_to(OTHER) == []
    await wait_until(lambda: len(sender.alerts_to(OTHER)) == 2, step=0.5)
    assert sender.alerts_to(OTHER) == sender.alerts_to(HOOK) == alerts_of(project)


async def test_a_project_with_an_alert_to_deliver_is_not_idle(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    sender = Recorder()
    sender.gate = trio.Event()
    with trio.fail_after(5):
        _, project = await open_project(nursery, tmp_path, setup(sender))
        crash_and_rerun(project)
        await wait_until(lambda: len(sender.sent) == 1)
        assert not project.idle
        sender.gate.set()
        await wait_until(lambda: len(sender.delivered) == 2)
    assert project.idle


# -- across restarts (sqlite files) --------------------------------------------------


async def opened_again(
    tmp_path: Path, sender: Recorder, body: Callable[[Project], Any], **backend: Any
) -> None:
    """Open ``alpha`` on its sqlite journal, run ``body`` (awaited), close it clean."""
    journals = SqliteBackend(tmp_path / "journal", **backend)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            manager, project = await open_project(
                nursery, tmp_path, setup(sender, retry=(0.01, 0.05)), journals
            )
            await body(project)
            await manager.close_journals()
            nursery.cancel_scope.cancel()


async def test_an_alert_pending_at_a_stop_is_delivered_once_after_it_and_not_again(
    tmp_path: Path,
) -> None:
    down = Recorder(*[Outcome.retry("down")] * 1000)
    pending: list[tuple[str, str]] = []

    async def raise_while_down(project: Project) -> None:
        crash_and_rerun(project)
        await wait_until(lambda: len(down.sent) >= 3)
        pending.extend(alerts_of(project))

    await opened_again(tmp_path, down, raise_while_down)
    assert down.delivered == [] and len(pending) == 2

    up = Recorder()

    async def deliver(project: Project) -> None:
        await wait_until(lambda: len(up.delivered) == 2)

    await opened_again(tmp_path, up, deliver)
    assert up.alerts_to(HOOK) == pending

    again = Recorder()

    async def nothing_resent(project: Project) -> None:
        await trio.sleep(0.2)
        crash_and_rerun(project)  # and the next alerts go as usual
        await wait_until(lambda: len(again.delivered) == 2)

    await opened_again(tmp_path, again, nothing_resent)
    assert len(again.sent) == 2
    assert [key for key, _ in again.alerts_to(HOOK)] != [key for key, _ in pending]


async def test_a_new_target_starts_at_the_head_not_with_old_alerts(tmp_path: Path) -> None:
    first = Recorder()

    async def some_alerts(project: Project) -> None:
        crash_and_rerun(project, times=2)
        await wait_until(lambda: len(first.delivered) == 4)

    await opened_again(tmp_path, first, some_alerts)
    later = Recorder()
    journals = SqliteBackend(tmp_path / "journal")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            manager, project = await open_project(
                nursery, tmp_path, setup(later, OTHER, retry=(0.01, 0.05)), journals
            )
            await trio.sleep(0.2)
            assert later.sent == []
            crash_and_rerun(project)
            await wait_until(lambda: len(later.delivered) == 2)
            await manager.close_journals()
            nursery.cancel_scope.cancel()


async def raise_ten_while_down(down: Recorder, project: Project) -> None:
    """Ten alerts (five runs crashed and resolved) that the target is down for, then
    twenty lines: with a history of 4, the alerts leave the live history."""
    crash_and_rerun(project, times=5)
    await wait_until(lambda: len(alerts_of(project)) == 10)
    project.hub.feed_lines([f"line {n}" for n in range(20)])
    await project.hub.wait_committed(project.hub.seq)
    await wait_until(lambda: len(down.sent) >= 2)


async def test_alerts_trimmed_from_the_live_history_are_delivered_from_the_archive(
    tmp_path: Path,
) -> None:
    """The live history is for resuming subscribers; the archive keeps what they no
    longer hold, and deliveries read it (they used to lose these alerts)."""
    down = Recorder(*[Outcome.retry("down")] * 1000)
    pending: list[tuple[str, str]] = []

    async def raise_ten(project: Project) -> None:
        await raise_ten_while_down(down, project)
        pending.extend(alerts_of(project))

    await opened_again(tmp_path, down, raise_ten, history=4)
    up = Recorder()

    async def deliver(project: Project) -> None:
        assert project.hub.oldest_seq is not None and project.hub.oldest_seq > 10
        await wait_until(lambda: len(up.delivered) == 10)

    await opened_again(tmp_path, up, deliver, history=4)
    assert [(body["id"], body["state"]) for _, body in up.delivered] == pending


async def test_alerts_the_archive_dropped_before_delivery_are_said_lost_with_a_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    down = Recorder(*[Outcome.retry("down")] * 1000)
    tiny = {"history": 4, "archive": ArchiveLimits(1, keep_runs=1)}
    await opened_again(tmp_path, down, partial(raise_ten_while_down, down), **tiny)
    up = Recorder()
    caplog.set_level(logging.ERROR, logger="trio_ws")

    async def deliver_what_is_left(project: Project) -> None:
        await wait_until(lambda: "left the journal" in caplog.text)
        await trio.sleep(0.2)

    await opened_again(tmp_path, up, deliver_what_is_left, **tiny)
    (line,) = [r.getMessage() for r in caplog.records if "left the journal" in r.getMessage()]
    assert "events after seq 0 left the journal" in line
    assert "any alerts among them are lost" in line
    assert len(up.delivered) < 10  # what the archive still held, if anything


async def test_a_queue_that_overflows_reads_the_rest_from_the_journal_in_order(
    tmp_path: Path,
) -> None:
    sender = Recorder()
    sender.gate = trio.Event()
    journals = SqliteBackend(tmp_path / "journal")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            manager, project = await open_project(
                nursery, tmp_path, setup(sender, queue_limit=2, retry=(0.01, 0.05)), journals
            )
            crash_and_rerun(project, times=4)
            await project.hub.wait_committed(project.hub.seq)
            await trio.testing.wait_all_tasks_blocked()
            sender.gate.set()
            await wait_until(lambda: len(sender.delivered) == 8)
            expected = alerts_of(project)
            await manager.close_journals()
            nursery.cancel_scope.cancel()
    assert sender.alerts_to(HOOK) == expected
    assert len(sender.sent) == 8
