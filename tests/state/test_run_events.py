"""A run's events read back from a real SQLite journal: the snapshot at a seq replayed
from the newest checkpoint, and a search's time guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trio_ws.journal.interface import Journal
from trio_ws.journal.sqlite import SqliteBackend
from trio_ws.state import commit
from trio_ws.state.hub import ProjectHub
from trio_ws.state.replay import Replay
from trio_ws.state.run_events import EventFilter, events_page, find_run, state_at
from trio_ws.state.runs import RunSummary

CORPUS = Path(__file__).parent.parent / "corpus" / "autoforge-run.txt"


async def a_run(tmp_path: Path, lines: int = 300) -> tuple[ProjectHub, Journal, RunSummary]:
    hub = ProjectHub("demo")
    await hub.open(SqliteBackend(tmp_path).journal("demo"))
    hub.set_status("running")
    hub.feed_lines(CORPUS.read_text("utf-8").splitlines()[:lines])
    hub.set_status("stopped")
    assert await hub.commit()
    assert hub.journal is not None
    run = await find_run(hub.journal, hub.runs, f"{hub.epoch}-1")
    assert run is not None and run.ended == "stopped"
    return hub, hub.journal, run


class Counting:
    """A journal that counts the events its ranges returned."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.read = 0

    async def read_range(self, after: int, last: int, limit: int) -> list[tuple[int, str]]:
        found = await self.journal.read_range(after, last, limit)
        self.read += len(found)
        return found

    def __getattr__(self, name: str) -> object:
        return getattr(self.journal, name)


async def test_a_seek_replays_from_the_newest_checkpoint_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commit, "CHECKPOINT_EVERY", 50)
    hub, journal, run = await a_run(tmp_path)
    assert run.last_seq > 200
    everything = await journal.read_range(0, run.last_seq, 10_000)
    for seq in (1, 49, 50, 51, 173, run.last_seq):
        scratch = Replay()
        for number, text in everything:
            if number <= seq:
                scratch.feed(number, text)
        counting = Counting(journal)
        replay = await state_at(counting, run, seq=seq)  # type: ignore[arg-type]
        assert replay.seq == seq
        assert [item.text for item in replay.messages()] == [
            item.text for item in scratch.messages()
        ]
        assert counting.read < 50 + 1  # never more than the events since a checkpoint
    point = await journal.checkpoint(173)
    assert point is not None and point.seq == 150
    assert json.loads(point.text)["seq"] == 150
    await hub.close()


async def test_a_search_that_hits_its_time_guard_says_where_to_go_on(tmp_path: Path) -> None:
    hub, journal, run = await a_run(tmp_path)
    # Many events hold the text, none is an alert: each candidate costs a decode.
    selected = EventFilter(types=frozenset({"alert"}), text="feature")
    page = await events_page(journal, run, selected, 0, 10, guard=0.0)
    assert page.partial and page.texts == []
    assert page.next_after is not None and page.next_after < run.last_seq
    whole = await events_page(journal, run, selected, 0, 10)
    assert (whole.partial, whole.texts, whole.next_after) == (False, [], None)
    rest = await events_page(journal, run, selected, page.next_after, 10)
    assert (rest.partial, rest.texts, rest.next_after) == (False, [], None)
    await hub.close()
