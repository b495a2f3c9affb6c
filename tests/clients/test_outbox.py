"""The producer's pure parts: line splitting and the outbox."""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

from hypothesis import given, settings
from hypothesis import strategies as st
from plain import Msg

from trio_ws.clients.outbox import LINE_CAP, MESSAGE_CAP, LineSplitter, Outbox, dropped_line
from trio_ws.core import protocol
from trio_ws.data.progress import Progress

# -- LineSplitter --------------------------------------------------------------


def split_all(chunks: list[bytes]) -> list[str]:
    splitter = LineSplitter()
    lines: list[str] = []
    for chunk in chunks:
        lines += splitter.feed(chunk)
    return lines + splitter.close()


def test_splitter_joins_a_line_split_across_chunks() -> None:
    assert split_all([b"hel", b"lo\nwor", b"ld\n"]) == ["hello", "world"]


def test_splitter_emits_final_line_without_newline_only_at_eof() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"one\ntwo") == ["one"]
    assert splitter.close() == ["two"]


def test_splitter_keeps_empty_lines_and_nothing_extra_at_eof() -> None:
    assert split_all([b"\n\na\n"]) == ["", "", "a"]


def test_splitter_keeps_carriage_return_and_spaces_for_the_server() -> None:
    assert split_all([b"dos line\r\n  padded  \n"]) == ["dos line\r", "  padded  "]


def test_splitter_replaces_invalid_utf8() -> None:
    assert split_all([b"bad \xff\xfe bytes\n"]) == ["bad \ufffd\ufffd bytes"]


def test_splitter_decodes_a_character_split_across_chunks() -> None:
    encoded = "é€\n".encode()
    assert split_all([encoded[:1], encoded[1:3], encoded[3:]]) == ["é€"]


def test_splitter_replaces_a_truncated_character_at_eof() -> None:
    assert split_all([b"cut \xe2\x82"]) == ["cut \ufffd"]


@settings(max_examples=200)
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=6))
def test_splitter_chunking_never_changes_the_lines(data: bytes, cuts: list[int]) -> None:
    points = sorted({min(cut, len(data)) for cut in cuts})
    chunks = [
        data[start:end] for start, end in zip([0, *points], [*points, len(data)], strict=True)
    ]
    expected = data.decode("utf-8", "replace").split("\n")
    if expected[-1] == "":
        expected.pop()
    assert split_all(chunks) == expected


def test_splitter_cuts_a_long_line_as_it_arrives_and_marks_the_cut() -> None:
    splitter = LineSplitter()
    for _ in range(100):  # 6.4 M characters in 64 KiB chunks, then the rest of the line
        assert splitter.feed(b"y" * 65536) == []
    [line, after] = splitter.feed(b"z\nafter\n")
    dropped = 100 * 65536 + 1 - (LINE_CAP - len(" … [truncated 6488001 chars]"))
    assert line == "y" * (LINE_CAP - 28) + f" … [truncated {dropped} chars]"
    assert len(line) == LINE_CAP
    assert after == "after"


def test_splitter_keeps_a_line_of_exactly_the_cap() -> None:
    assert split_all([b"c" * LINE_CAP + b"\n"]) == ["c" * LINE_CAP]


# -- Outbox ----------------------------------------------------------------------


def test_outbox_messages_stay_within_the_cap_even_for_control_characters() -> None:
    """U+0001 takes 6 bytes in JSON: the cap counts encoded bytes, not characters."""
    outbox = Outbox()
    for _ in range(40):
        outbox.add_line("\x01" * (LINE_CAP - 1))
    messages = outbox.take()
    sizes = [len(protocol.encode(message).encode()) for message in messages]
    assert max(sizes) <= MESSAGE_CAP
    assert len(messages) == 20  # two 384 KiB lines per message
    assert [line for _, line in lines_of(messages)] == ["\x01" * (LINE_CAP - 1)] * 40


def lines_of(messages: list[Msg]) -> Iterator[tuple[int, str]]:
    """(pseq, line) of every line in ``messages``."""
    for message in messages:
        if message["type"] == "lines":
            for offset, line in enumerate(message["lines"]):
                yield message["first"] + offset, line


def untimed(messages: list[Msg]) -> list[Msg]:
    """The messages without when their items were read (``at``, ``sent``)."""
    return [{k: v for k, v in m.items() if k not in ("at", "sent")} for m in messages]


def test_every_item_carries_when_it_was_read_and_the_message_when_it_was_sent() -> None:
    """Lines held through an outage keep their own time (issue 24 item 2)."""
    now = [100.0]
    outbox = Outbox(clock=lambda: now[0])
    outbox.add_status("running")
    outbox.add_line("read at 100")
    now[0] = 160.25  # the server was away meanwhile
    outbox.add_line("read at 160.25")
    now[0] = 400.5
    status, lines = cast(list[Msg], outbox.take())
    assert (status["at"], status["sent"]) == (100.0, 400.5)
    assert (lines["at"], lines["sent"]) == ([100.0, 160.25], 400.5)


def test_outbox_numbers_lines_and_statuses_from_one() -> None:
    outbox = Outbox()
    outbox.add_status("running")
    outbox.add_line("a")
    outbox.add_line("b")
    outbox.add_status("stopped", 0)
    assert untimed(outbox.take()) == [
        {"type": "status", "pseq": 1, "status": "running"},
        {"type": "lines", "first": 2, "lines": ["a", "b"]},
        {"type": "status", "pseq": 4, "status": "stopped", "exit_code": 0},
    ]


def test_outbox_batches_at_most_batch_lines_per_message() -> None:
    outbox = Outbox(batch_lines=3)
    for index in range(7):
        outbox.add_line(str(index))
    messages: list[Msg] = outbox.take()
    assert [len(message["lines"]) for message in messages] == [3, 3, 1]
    assert [message["first"] for message in messages] == [1, 4, 7]


def test_outbox_take_sends_each_item_once() -> None:
    outbox = Outbox()
    outbox.add_line("a")
    assert len(outbox.take()) == 1
    assert untimed(outbox.take()) == []
    outbox.add_line("b")
    assert list(lines_of(outbox.take())) == [(2, "b")]


def test_outbox_ack_forgets_items_up_to_pseq() -> None:
    outbox = Outbox()
    for line in "abcd":
        outbox.add_line(line)
    outbox.take()
    outbox.ack(3)
    assert outbox.pending == 1
    assert outbox.acked == 3


def test_outbox_restart_resends_only_after_welcome_acked() -> None:
    outbox = Outbox()
    for line in "abcde":
        outbox.add_line(line)
    outbox.take()
    outbox.ack(1)
    outbox.restart(3)  # it had applied two more before the connection broke
    assert list(lines_of(outbox.take())) == [(4, "d"), (5, "e")]


def test_outbox_restart_puts_resent_items_before_new_ones() -> None:
    outbox = Outbox()
    outbox.add_line("old")
    outbox.take()
    outbox.add_line("new")
    outbox.restart(0)
    assert list(lines_of(outbox.take())) == [(1, "old"), (2, "new")]


def test_outbox_restart_after_the_server_forgot_keeps_pseqs_then_resends_the_status() -> None:
    """A server that lost its history welcomes with 0 although 3 items were acked:
    the unacked ones go again under their own numbers (it takes the first as our
    start), then the current status as a new item, then what comes next."""
    outbox = Outbox()
    outbox.add_status("running")
    for line in "abcd":
        outbox.add_line(line)
    outbox.take()
    outbox.ack(3)
    outbox.restart(0)
    outbox.add_line("e")
    assert untimed(outbox.take()) == [
        {"type": "lines", "first": 4, "lines": ["c", "d"]},
        {"type": "status", "pseq": 6, "status": "running"},
        {"type": "lines", "first": 7, "lines": ["e"]},
    ]
    outbox.ack(7)
    assert outbox.pending == 0


def test_outbox_restart_after_the_server_forgot_resends_the_latest_status() -> None:
    outbox = Outbox()
    outbox.add_status("running")
    outbox.add_line("a")
    outbox.add_status("paused")
    outbox.take()
    outbox.ack(3)
    outbox.restart(0)
    assert untimed(outbox.take()) == [{"type": "status", "pseq": 4, "status": "paused"}]


def test_outbox_restart_after_the_server_forgot_sends_an_unacked_status_once() -> None:
    """The status is still among the resent items: it reaches the server anyway."""
    outbox = Outbox()
    outbox.add_line("a")
    outbox.add_status("running")
    outbox.take()
    outbox.ack(1)
    outbox.restart(0)
    assert untimed(outbox.take()) == [{"type": "status", "pseq": 2, "status": "running"}]


def test_outbox_sends_progress_as_its_own_pseq_item_between_lines() -> None:
    outbox = Outbox()
    outbox.add_line("a")
    outbox.add_progress(Progress(passing=2, in_progress=1, total=5, needs_human_input=0))
    outbox.add_line("b")
    assert untimed(outbox.take()) == [
        {"type": "lines", "first": 1, "lines": ["a"]},
        {
            "type": "progress",
            "pseq": 2,
            "passing": 2,
            "in_progress": 1,
            "total": 5,
            "needs_human_input": 0,
        },
        {"type": "lines", "first": 3, "lines": ["b"]},
    ]


def test_outbox_restart_after_the_server_forgot_resends_status_and_latest_progress() -> None:
    """A server that forgot the run learns how far the project is, not only that it runs."""
    outbox = Outbox(capacity=1)
    outbox.add_status("running")
    outbox.add_progress(Progress(passing=1, in_progress=0, total=4, needs_human_input=0))
    outbox.add_progress(Progress(passing=2, in_progress=0, total=4, needs_human_input=1))
    outbox.take()
    outbox.ack(3)
    outbox.restart(0)
    assert untimed(outbox.take()) == [
        {"type": "status", "pseq": 4, "status": "running"},
        {
            "type": "progress",
            "pseq": 5,
            "passing": 2,
            "in_progress": 0,
            "total": 4,
            "needs_human_input": 1,
        },
    ]


def test_outbox_overflow_drops_new_lines_and_counts_them() -> None:
    outbox = Outbox(capacity=3)
    kept = [outbox.add_line(line) for line in "abcde"]
    assert kept == [True, True, True, False, False]
    assert outbox.dropped == 2
    assert [line for _, line in lines_of(outbox.take())] == ["a", "b", "c"]


def test_outbox_reports_drops_as_a_line_once_there_is_room() -> None:
    outbox = Outbox(capacity=2)
    for line in "abcd":
        outbox.add_line(line)
    outbox.take()
    outbox.ack(1)
    assert list(lines_of(outbox.take())) == [(3, dropped_line(2))]
    assert outbox.dropped == 0
    assert outbox.dropped_total == 2


def test_outbox_status_is_never_dropped_and_follows_the_drop_report() -> None:
    outbox = Outbox(capacity=1)
    outbox.add_line("a")
    outbox.add_line("lost")
    outbox.add_status("stopped", 0)
    messages = outbox.take()
    assert list(lines_of(messages)) == [(1, "a"), (2, dropped_line(1))]
    assert untimed(messages)[-1] == {
        "type": "status",
        "pseq": 3,
        "status": "stopped",
        "exit_code": 0,
    }


def test_outbox_ack_beyond_what_exists_is_clamped() -> None:
    outbox = Outbox()
    outbox.add_line("a")
    outbox.take()
    outbox.ack(99)
    assert outbox.pending == 0
    assert outbox.acked == 1
