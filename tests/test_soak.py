"""The soak (bench/soak.py): its checker of the subscribe promise, its figures, its
report, and a short real run of its server, producer and subscriber across a kill -9."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/ is not installed

from bench import soak
from bench.soak import Sample, SeqChecker, Totals

E2E_TIMEOUT = 40
EPOCH = "e1"

# -- the checker -------------------------------------------------------------------------


def hello(seq: int, epoch: str = EPOCH) -> dict[str, Any]:
    return {"type": "hello", "protocol": 1, "project": "soak", "epoch": epoch, "seq": seq}


def event(seq: int, mark: int | None = None) -> dict[str, Any]:
    line = f"{soak.MARK_PREFIX}{mark:08d}" if mark is not None else "[Tool: Read]"
    return {"type": "log", "line": line, "timestamp": "2026-12-05T11:00:00.000000Z", "seq": seq}


def fresh(totals: Totals, head: int) -> SeqChecker:
    checker = SeqChecker(totals)
    checker.hello(hello(head), resuming=False)
    return checker


def feed(checker: SeqChecker, seqs: range | list[int], marks: dict[int, int] | None = None) -> None:
    for seq in seqs:
        checker.message(event(seq, (marks or {}).get(seq)))


def test_a_contiguous_stream_after_hello_is_clean() -> None:
    totals = Totals()
    checker = fresh(totals, 10)
    feed(checker, [3, 9, 10])  # the snapshot: seqs at or below hello's
    feed(checker, range(11, 20))
    assert (totals.events, totals.gaps, totals.regressions, totals.protocol_errors) == (12, 0, 0, 0)
    assert checker.resume_point() == (19, EPOCH)


def test_a_jump_without_resync_is_a_gap_with_its_span() -> None:
    totals = Totals()
    checker = fresh(totals, 10)
    feed(checker, [11, 12, 15, 16])
    assert (totals.gaps, totals.missed_events) == (1, 2)
    assert totals.gap_spans == [(EPOCH, 12, 15)]
    assert totals.gap_roles == {"steady": 1}


def test_the_first_live_event_must_follow_hellos_seq() -> None:
    totals = Totals()
    feed(fresh(totals, 10), [12])
    assert totals.gaps == 1


def test_a_resync_restarts_the_count_at_its_snapshot_point() -> None:
    totals = Totals()
    checker = fresh(totals, 10)
    feed(checker, [11])
    checker.message({"type": "resync", "reason": "gap_evicted", "epoch": EPOCH, "seq": 500})
    feed(checker, [480, 499, 501, 502])
    assert (totals.gaps, totals.regressions) == (0, 0)
    assert totals.resyncs == {"gap_evicted": 1}


def test_a_resync_without_reason_counts_as_behind() -> None:
    totals = Totals()
    fresh(totals, 1).message({"type": "resync", "epoch": EPOCH, "seq": 9})
    assert totals.resyncs == {"behind": 1}


def test_resumed_continues_at_since_plus_one() -> None:
    totals = Totals()
    checker = fresh(totals, 10)
    feed(checker, [11, 12])
    checker.hello(hello(40), resuming=True)
    checker.message({"type": "resumed", "since": 12, "seq": 40})
    feed(checker, [13, 14])
    assert (totals.resumed, totals.gaps, totals.protocol_errors) == (1, 0, 0)


def test_a_resumed_stream_that_skips_is_a_gap() -> None:
    totals = Totals()
    checker = fresh(totals, 10)
    checker.hello(hello(40), resuming=True)
    checker.message({"type": "resumed", "since": 10, "seq": 40})
    feed(checker, [12])
    assert totals.gap_spans == [(EPOCH, 10, 12)]


def test_resumed_from_another_seq_than_the_last_one_is_a_violation() -> None:
    totals = Totals()
    checker = fresh(totals, 10)
    checker.hello(hello(40), resuming=True)
    checker.message({"type": "resumed", "since": 7, "seq": 40})
    assert totals.protocol_errors == 1
    assert "since 7" in totals.protocol_samples[0]


def test_an_event_between_a_resuming_hello_and_its_answer_is_a_violation() -> None:
    totals = Totals()
    checker = fresh(totals, 10)
    checker.hello(hello(40), resuming=True)
    feed(checker, [11])
    assert totals.protocol_errors == 1


def test_a_repeated_live_event_is_a_regression() -> None:
    totals = Totals()
    checker = fresh(totals, 10)
    feed(checker, [11, 12, 12])
    assert (totals.regressions, totals.gaps) == (1, 0)


def test_a_mark_received_twice_is_a_duplicate() -> None:
    totals = Totals()
    checker = fresh(totals, 10)
    feed(checker, [11, 12, 13], marks={11: 1, 12: 2, 13: 2})
    assert totals.duplicate_marks == 1
    assert totals.marks_committed_twice == 1  # mark 2 at seqs 12 and 13


def test_a_mark_inside_another_subscribers_gap_is_lost_there() -> None:
    totals = Totals()
    marks = {11: 1, 13: 2, 15: 3}
    whole, skipping = fresh(totals, 10), fresh(totals, 10)
    feed(whole, range(11, 17), marks)
    feed(skipping, [11, 12, 16], marks)  # 13-15 never arrived: marks 2 and 3
    assert totals.lost_marks() == (2, 2)


def test_a_mark_is_lost_once_however_many_subscribers_miss_it() -> None:
    totals = Totals()
    marks = {11: 1, 12: 2, 13: 3}
    feed(fresh(totals, 10), range(11, 14), marks)
    for _ in range(3):
        feed(fresh(totals, 10), [11, 13], marks)
    assert totals.lost_marks() == (1, 3)


def test_only_mark_lines_are_marks() -> None:
    assert soak.mark_of(event(5, 42)) == 42
    assert soak.mark_of(event(5)) is None
    assert soak.mark_of({"type": "dev_log", "line": "soak mark 00000001", "seq": 5}) is None
    assert soak.mark_of({"type": "log", "line": "soak mark later", "seq": 5}) is None


# -- figures -------------------------------------------------------------------------


def samples(incarnation: int, levels: list[float], start: float = 0.0) -> list[Sample]:
    return [
        Sample(at_s=start + 60 * i, incarnation=incarnation, uptime_s=60.0 * i, rss_mib=rss, fds=9)
        for i, rss in enumerate(levels)
    ]


def test_the_rss_slope_is_in_mib_per_minute_after_the_warmup() -> None:
    assert soak.rss_slope(samples(0, [10.0, 50.0, 51.0, 52.0, 53.0])) == pytest.approx(1.0)


def test_each_server_process_has_its_own_rss_level() -> None:
    first = samples(0, [10.0, 50.0, 50.5, 51.0])
    after_kill = samples(1, [5.0, 20.0, 20.5, 21.0], start=240)
    assert soak.rss_slope(first + after_kill) == pytest.approx(0.5)


def test_no_slope_without_two_samples_past_a_warmup() -> None:
    assert soak.rss_slope(samples(0, [10.0, 50.0]) + samples(1, [10.0, 60.0])) is None


def test_the_table_keeps_the_last_sample_of_each_minute() -> None:
    taken = [
        Sample(at_s=at, incarnation=0, uptime_s=at, rss_mib=at, fds=1) for at in (0, 30, 50, 70)
    ]
    assert [sample.at_s for sample in soak.per_minute(taken)] == [50, 70]


SERVER_LOG = """\
2026-12-05 11:54:52,100 INFO trio_ws.net.connection: websocket closed 1000: bye
2026-12-05 11:54:52,912 ERROR trio_ws.state.project: project soak: journal writer failed; restarting
Traceback (most recent call last):
  File "/x/trio_ws/state/hub.py", line 688, in _commit
RuntimeError: Nursery is closed to new arrivals
2026-12-05 11:54:53,000 INFO trio_ws.net.connection: websocket closed 1000: bye
2026-12-05 11:54:54,000 ERROR trio_ws.net.server: something else
"""


def test_the_log_search_counts_errors_and_quotes_each_with_its_traceback() -> None:
    found = soak.log_errors(SERVER_LOG, quoted=1)
    assert (found["error_lines"], found["tracebacks"]) == (2, 1)
    assert found["first"] == ["\n".join(SERVER_LOG.splitlines()[1:5])]


def test_a_big_line_is_10_to_16_kb() -> None:
    rng = random.Random(3)
    lines = soak.transcript_lines()
    sizes = [len(soak.big_line(rng, lines)) for _ in range(50)]
    assert min(sizes) >= 10_000
    assert max(sizes) <= 16_000


# -- the report ------------------------------------------------------------------------


def results(**checks: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "events": 1000, "marks": 50, "gaps": 0, "missed_events": 0, "lost": [0, 0],
        "lost_marks": 0, "duplicate_marks": 0, "marks_committed_twice": 0, "regressions": 0,
        "protocol_errors": 0, "protocol_samples": [], "hellos": 60, "reconnects": 10,
        "resumed": 10, "resyncs": {}, "closes": {"1011": 2}, "connect_failures": 0,
        "connect_errors": [], "gap_spans": [],
        "ping": {"count": 5, "p50_ms": 1.0, "p99_ms": 2.5, "max_ms": 3.0, "mean_ms": 1.2,
                 "unanswered": 0},
    }  # fmt: skip
    found: dict[str, Any] = {
        "command": "nox -s soak -- --minutes 3",
        "commit": "890f127",
        "started": "2026-12-05 12:00:00 UTC",
        "duration_s": 180.0,
        "options": {"minutes": 3, "kill_every": 1},
        "server_command": "`serve --port 1`",
        "checks": {**base, **checks},
        "server": {
            "first_start_s": 0.5,
            "kills": [{"at_s": 60.0, "restart_s": 0.42}],
            "samples": [
                {"at_s": 0.0, "incarnation": 0, "uptime_s": 0.0, "rss_mib": 60.0, "fds": 70},
                {"at_s": 70.0, "incarnation": 1, "uptime_s": 9.0, "rss_mib": 55.0, "fds": 68},
            ],
            "rss_slope_mib_per_min": 0.02,
            "final_stop": {"exit_code": 0, "seconds": 0.1},
            "log_path": "/tmp/server.log",
            "log": {"error_lines": 0, "tracebacks": 0, "first": []},
        },
        "load": {
            "lines_written": 45_000,
            "marks_written": 50,
            "big_lines": 60,
            "short_lived": 360,
            "producer": {"restarts": 2, "exit_codes": {"eof 0": 1, "sigterm 0": 1}},
        },
    }
    found["failures"] = soak.failures(found)
    return found


def test_a_clean_soak_passes_the_gate() -> None:
    assert soak.failures(results()) == []


@pytest.mark.parametrize(
    ("checks", "reason"),
    [
        ({"gaps": 3}, "3 seq gaps"),
        ({"lost_marks": 1}, "1 mark lines lost"),
        ({"duplicate_marks": 2}, "2 mark lines duplicated"),
    ],
)
def test_gaps_lost_and_duplicated_marks_fail_the_gate(checks: dict[str, Any], reason: str) -> None:
    assert any(reason in failure for failure in soak.failures(results(**checks)))


def test_a_growing_rss_fails_the_gate() -> None:
    found = results()
    found["server"]["rss_slope_mib_per_min"] = 0.3
    assert soak.failures(found) == ["RSS grows 0.300 MiB/min (limit 0.1)"]


def test_an_unclean_exit_fails_the_gate() -> None:
    found = results()
    found["server"]["final_stop"] = {"exit_code": None, "seconds": 10.0}
    assert soak.failures(found) == ["the server's SIGTERM exit status was None, not 0"]


def test_the_page_shows_the_verdict_and_the_figures() -> None:
    page = soak.render(results(gaps=4, gaps_by_subscriber={"steady": 3, "churning": 1}))
    assert "| verdict | **FAIL**: 4 seq gaps without a resync |" in page
    assert "| seq gaps without resync | 4 (churning: 1, steady: 3) |" in page
    assert "| 1011 closes | 2 |" in page
    assert "restart until `/healthz` answers: 0.42 s" in page
    assert "p99 2.5 ms" in page
    assert "| 1.2 | 1 | 55.0 | 68 |" in page  # the minute table


def test_the_page_says_when_the_slope_cannot_be_measured() -> None:
    found = results()
    found["server"]["rss_slope_mib_per_min"] = None
    assert "RSS slope: not measurable" in soak.render(found)


def test_write_puts_the_json_beside_the_page(tmp_path: Path) -> None:
    page, data = soak.write(results(), tmp_path / "docs" / "soak.md")
    assert data == tmp_path / "docs" / "soak.json"
    assert "| verdict | pass |" in page.read_text()


# -- a short real run ------------------------------------------------------------------


async def test_every_mark_reaches_a_subscriber_that_resumes_across_kill_9(
    tmp_path: Path,
) -> None:
    with trio.fail_after(E2E_TIMEOUT):
        home = await soak.register(tmp_path)
        with (
            (tmp_path / "server.log").open("wb") as log,
            (tmp_path / "producer.log").open("wb") as producer_log,
        ):
            server = soak.Server(home, soak.free_port(), log)
            await server.start()
            producer = soak.Producer(server, producer_log)
            clients = soak.Clients(server.port, server)
            try:
                await producer.start()
                began = trio.current_time()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(soak.subscriber, clients, began + 7)
                    await trio.sleep(0.5)  # synced before the first mark is written
                    nursery.start_soon(producer.feed, began + 2.5)
                    await trio.sleep(1)
                    restart = await server.kill()
                    await trio.sleep_until(began + 3)
                    await producer.stop()  # EOF: everything read is delivered
                final = await server.terminate()
            finally:
                server.stop_now()
    totals = clients.totals
    assert restart < 10
    assert final["exit_code"] == 0
    assert totals.resumed >= 1
    assert (totals.gaps, totals.duplicate_marks, totals.protocol_errors) == (0, 0, 0)
    assert producer.figures.exit_codes == {"eof 0": 1}
    assert len(totals.marks) == producer.figures.marks_written > 50
