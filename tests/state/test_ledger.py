"""ProducerLedger: resends skipped, gaps refused, unknown producers start where they are,
acks only up to what is committed, the most recently used ids kept."""

from __future__ import annotations

from trio_ws.journal.memory import MemoryBackend
from trio_ws.state.hub import ProjectHub
from trio_ws.state.ledger import MAX_PRODUCER_IDS, ProducerLedger


async def ledger() -> ProducerLedger:
    hub = ProjectHub("demo")
    await hub.open(MemoryBackend().journal("demo"))
    return ProducerLedger("agent", hub)


async def test_an_unknown_producer_starts_at_its_first_item() -> None:
    book = await ledger()
    assert book.lines_to_skip("p", 41, 3) == 0
    assert book.applied_of("p") == 40


async def test_lines_already_applied_are_skipped_and_a_whole_resend_is_all_skipped() -> None:
    book = await ledger()
    book.remember("p", 5)
    assert book.lines_to_skip("p", 4, 4) == 2  # 4 and 5 again, then 6 and 7
    assert book.lines_to_skip("p", 1, 5) == 5


async def test_a_gap_is_refused_with_where_to_resend_from() -> None:
    book = await ledger()
    book.remember("p", 5)
    assert book.lines_to_skip("p", 8, 2) == "pseq gap: expected 6, got 8; resend from there"
    assert book.item_is_new("p", 9) == "pseq gap: expected 6, got 9; resend from there"


async def test_an_item_is_new_only_when_it_comes_next() -> None:
    book = await ledger()
    book.remember("p", 5)
    assert (book.item_is_new("p", 5), book.item_is_new("p", 6)) == (False, True)


async def test_acks_say_only_what_is_committed() -> None:
    book = await ledger()
    book.applied_through("p", 3)
    assert book.committed_of("p") == 0
    assert await book.hub.commit()
    assert book.committed_of("p") == 3


async def test_the_least_recently_used_ids_are_forgotten() -> None:
    book = await ledger()
    book.remember("old", 1)
    for index in range(MAX_PRODUCER_IDS):
        book.remember(f"p{index}", 1)
    assert len(book.applied) == MAX_PRODUCER_IDS
    assert book.applied_of("old") == 0
