"""Honest counts: records processed, not offsets moved; rates only over a window long enough to mean them."""

from __future__ import annotations

import pytest

from loom_ray.main import Counts, progress_line, summary
from loom_ray.progress import (
    LISTED_PARTITIONS,
    MIN_RATE_WINDOW_S,
    ConsumerLines,
    IngestWindow,
    RecordTally,
    records_per_consumer,
)


def _stats(rows: int, dead_letters: int) -> dict[str, object]:
    return {"partitions": {}, "totals": {"rows": rows, "dead_letters": dead_letters}}


def test_the_tally_adds_what_each_consumer_reports_beyond_its_previous_report() -> None:
    tally = RecordTally()
    tally.observe("c1", _stats(100, 5), now=1.0)
    tally.observe("c2", _stats(40, 0), now=1.0)
    tally.observe("c1", _stats(300, 5), now=3.0)
    assert (tally.total, tally.observed_at) == (100 + 5 + 40 + 200, 3.0)


def test_the_tally_keeps_a_stopped_consumer_and_counts_its_replacement_from_zero() -> None:
    tally = RecordTally()
    tally.observe("c1", _stats(1_000, 0), now=1.0)
    # c1 was stopped (or died) and c2 took its partitions: c1's reports stay counted.
    tally.observe("c2", _stats(10, 1), now=3.0)
    tally.observe("c2", _stats(50, 1), now=5.0)
    assert tally.total == 1_000 + 51


def test_the_tally_reads_stats_without_totals_as_zero() -> None:
    tally = RecordTally()
    tally.observe("old", {"partitions": {}}, now=1.0)
    assert tally.total == 0


def test_the_autoscaler_rate_counts_records_not_a_claim_at_a_high_low_watermark() -> None:
    # 2 consumers, 6 000 records committed in 3 s: 1 000 records/s each, whatever the offsets did.
    assert records_per_consumer((10.0, 4_000), (13.0, 10_000), consumers=2) == pytest.approx(1_000)
    assert records_per_consumer((10.0, 4_000), (12.0, 4_000), consumers=3) == 0


def test_the_window_runs_from_the_first_to_the_last_sample_that_saw_records_committed() -> None:
    window = IngestWindow()
    window.observe(0.0, 7_000)  # the baseline: a rejoined coordinator counted an earlier run
    window.observe(1.0, 7_000)  # start-up, nothing committed yet
    window.observe(2.0, 17_000)  # 10 000 committed before this sample: outside the window
    window.observe(4.0, 37_000)
    window.observe(8.0, 57_000)
    window.observe(9.0, 57_000)  # drained: samples after the last commit do not stretch the window
    assert window.processed == 50_000
    assert window.seconds == 6.0
    assert window.rate() == pytest.approx(40_000 / 6.0)


def test_a_restarted_coordinator_counts_from_zero_again() -> None:
    window = IngestWindow()
    window.observe(0.0, 0)
    window.observe(1.0, 500)
    window.observe(2.0, 120)  # restarted: its tally holds only what was committed since
    window.observe(3.0, 220)
    assert window.processed == 500 + 120 + 100


def test_no_rate_over_a_window_shorter_than_the_minimum() -> None:
    window = IngestWindow()
    window.observe(0.0, 0)
    window.observe(1.0, 10_000)
    window.observe(1.0 + MIN_RATE_WINDOW_S - 0.1, 50_000)
    assert window.rate() is None
    window.observe(1.0 + MIN_RATE_WINDOW_S, 50_001)
    assert window.rate() == pytest.approx(40_001 / MIN_RATE_WINDOW_S)


def _window(*samples: tuple[float, int]) -> IngestWindow:
    window = IngestWindow()
    for when, total in samples:
        window.observe(when, total)
    return window


def test_summary_counts_rows_and_dead_letters_and_reports_offsets_apart() -> None:
    # A first claim at a low watermark of 5 000 000: the offsets moved 5 001 000, 1 000 records were stored.
    before = Counts(committed=0, rows=200, dead_letters=3, gap_offsets=40)
    after = Counts(committed=5_001_000, rows=1_190, dead_letters=13, gap_offsets=50)
    line = summary(before, after, 20.0, _window((0.0, 0), (5.0, 400), (11.0, 1_000)))
    assert line == (
        "summary: messages=1000 rows=990 dead_letters=10 offsets=5001000 gap_offsets=10 seconds=20.0 msgs_per_s=50 "
        "ingest_msgs_per_s=100 ingest_window_s=6.0"
    )


def test_summary_says_why_it_prints_no_ingest_rate() -> None:
    # 50 000 messages drained between two samples 1 s apart: no honest rate can come from that.
    line = summary(Counts(0, 0, 0), Counts(50_000, 50_000, 0), 7.0, _window((0.0, 0), (2.0, 10_000), (3.0, 50_000)))
    assert line.startswith(
        "summary: messages=50000 rows=50000 dead_letters=0 offsets=50000 gap_offsets=0 seconds=7.0 msgs_per_s=7143 "
    )
    assert line.endswith(
        "ingest_msgs_per_s=n/a ingest_window_s=1.0 "
        "(records were committed over less than 5s: too short to measure a rate)"
    )


def test_progress_line() -> None:
    status = {"lag": 12, "actors": {"a": {}, "b": {}}, "assigned": 3, "partitions": 4, "database": True}
    assert progress_line(status, 2_000, (500.0, 2.0), 5_002_000, 9.4) == (
        "progress: 2000 messages in 9s (500 msg/s over the last 2s), offsets advanced 5002000, lag 12, "
        "2 actors, 3/4 partitions assigned"
    )


def _consumer(rows: int, dead_letters: int, *partitions: str) -> dict[str, object]:
    return {"partitions": dict.fromkeys(partitions, {}), "totals": {"rows": rows, "dead_letters": dead_letters}}


def test_consumer_lines_give_each_consumers_rates_since_the_previous_line_and_its_partitions_lag() -> None:
    lines = ConsumerLines()
    first = {
        "actors": {"loom-consumer-2": _consumer(0, 0, "t[1]"), "loom-consumer-1": _consumer(100, 2, "t[0]", "t[2]")},
        "lags": {"t[0]": 40, "t[1]": 7, "t[2]": 3},
    }
    assert lines.lines(first, now=10.0) == [
        "consumer loom-consumer-1: - msg/s, - rows/s, 102 messages, 2 dead letters, lag 43, partitions held: 2 "
        "(t[0],t[2])",
        "consumer loom-consumer-2: - msg/s, - rows/s, 0 messages, 0 dead letters, lag 7, partitions held: 1 (t[1])",
    ]
    second = {
        "actors": {"loom-consumer-1": _consumer(1_100, 12, "t[0]"), "loom-consumer-3": _consumer(5, 0)},
        "lags": {"t[0]": 0, "t[1]": 9, "t[2]": 3},
    }
    assert lines.lines(second, now=15.0) == [
        "consumer loom-consumer-1: 202 msg/s, 200 rows/s, 1112 messages, 12 dead letters, lag 0, "
        "partitions held: 1 (t[0])",
        "consumer loom-consumer-3: - msg/s, - rows/s, 5 messages, 0 dead letters, lag 0, partitions held: 0",
    ]


def test_a_consumer_line_names_the_first_partitions_and_counts_the_rest() -> None:
    held = [f"t[{p}]" for p in range(LISTED_PARTITIONS + 3)]
    [line] = ConsumerLines().lines({"actors": {"c": _consumer(0, 0, *held)}, "lags": {}}, now=1.0)
    assert line.endswith(
        f"partitions held: {LISTED_PARTITIONS + 3} ({','.join(sorted(held)[:LISTED_PARTITIONS])},… (+3))"
    )
