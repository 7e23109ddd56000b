"""PartitionBatch bookkeeping and the flush_due and take_together rules (explicit clock values, no sleeping)."""

from __future__ import annotations

import pytest

from loom_ray.batch import FlushLimits, PartitionBatch, flush_due, take_together

LIMITS = FlushLimits(max_messages=3, max_bytes=1000, max_age_s=0.5)


def _batch(start: int = 10) -> PartitionBatch:
    return PartitionBatch(topic="orders", partition=2, epoch=7, start=start)


def test_new_batch_is_empty_and_ends_where_it_starts() -> None:
    batch = _batch(10)
    assert (batch.start, batch.end, batch.count, batch.size_bytes) == (10, 10, 0, 0)
    assert batch.rows == [] and batch.dead_letters == []


def test_rows_and_dead_letters_advance_end_count_and_size() -> None:
    batch = _batch(10)
    batch.add_row(10, ("r10",), 100, now=1.0)
    batch.add_dead_letter(11, ("d11",), 7, now=2.0)
    batch.add_row(12, ("r12",), 50, now=3.0)
    assert (batch.start, batch.end, batch.count, batch.size_bytes) == (10, 13, 3, 157)
    assert batch.rows == [("r10",), ("r12",)]
    assert batch.dead_letters == [("d11",)]


def test_gaps_are_allowed_and_end_is_one_past_the_last_offset() -> None:
    # Compacted topics and transaction markers leave holes in the offsets.
    batch = _batch(10)
    batch.add_row(15, ("r15",), 1, now=0.0)
    batch.add_dead_letter(40, ("d40",), 1, now=0.0)
    assert (batch.start, batch.end, batch.count) == (10, 41, 2)


@pytest.mark.parametrize("behind", [9, 11, 12])
def test_offset_behind_end_raises(behind: int) -> None:
    batch = _batch(10)
    batch.add_row(10, ("r10",), 1, now=0.0)
    batch.add_row(12, ("r12",), 1, now=0.0)  # end is now 13
    with pytest.raises(ValueError, match=r"orders\[2\] offset .* behind the batch end 13"):
        batch.add_row(behind, ("again",), 1, now=0.0)
    with pytest.raises(ValueError, match="behind"):
        batch.add_dead_letter(behind, ("again",), 1, now=0.0)
    assert (batch.end, batch.count, batch.size_bytes) == (13, 2, 2)  # a refused add changes nothing


def test_offset_behind_start_of_an_empty_batch_raises() -> None:
    with pytest.raises(ValueError, match="behind"):
        _batch(10).add_row(9, ("r9",), 1, now=0.0)


def test_age_clock_starts_at_the_first_message() -> None:
    batch = _batch()
    batch.add_row(10, ("a",), 1, now=100.0)
    batch.add_row(11, ("b",), 1, now=100.4)
    assert batch.opened_at == 100.0
    assert not flush_due(batch, LIMITS, now=100.49)
    assert flush_due(batch, LIMITS, now=100.5)


def test_age_clock_starts_with_a_dead_letter_too() -> None:
    batch = _batch()
    batch.add_dead_letter(10, ("d",), 1, now=50.0)
    assert batch.opened_at == 50.0


@pytest.mark.parametrize("now", [0.0, 1e9])
def test_empty_batch_is_never_due(now: float) -> None:
    assert not flush_due(_batch(), FlushLimits(max_messages=1, max_bytes=1, max_age_s=0.0), now)


@pytest.mark.parametrize(
    ("count", "size_each", "age", "due"),
    [
        (2, 10, 0.0, False),  # under every limit
        (3, 10, 0.0, True),  # count reaches max_messages (3)
        (1, 999, 0.0, False),  # one byte under max_bytes
        (1, 1000, 0.0, True),  # bytes reach max_bytes (1000)
        (2, 600, 0.0, True),  # 2 * 600 = 1200 >= 1000
        (1, 10, 0.49, False),  # younger than max_age_s
        (1, 10, 0.5, True),  # as old as max_age_s
    ],
)
def test_flush_due(count: int, size_each: int, age: float, due: bool) -> None:
    batch = _batch(0)
    for offset in range(count):
        batch.add_row(offset, (offset,), size_each, now=1000.0)
    assert flush_due(batch, LIMITS, now=1000.0 + age) is due


def test_while_paused_every_non_empty_batch_is_due() -> None:
    # Fetching is paused (buffers full): a young, small batch would otherwise wait for its timer
    # (up to LOOM_KAFKA_BATCH_TIMEOUT) with nothing arriving to fill it.
    limits = FlushLimits(max_messages=1000, max_bytes=10**9, max_age_s=60.0)
    batch = _batch()
    batch.add_row(10, ("a",), 1, now=100.0)
    assert not flush_due(batch, limits, now=100.0)
    assert flush_due(batch, limits, now=100.0, paused=True)
    assert not flush_due(_batch(), limits, now=100.0, paused=True)  # empty: still never due


def test_offsets_without_a_record_advance_the_batch_and_make_it_due() -> None:
    from loom_ray.batch import FlushLimits, flush_due

    limits = FlushLimits(max_messages=10, max_bytes=1024, max_age_s=1.0)
    b = PartitionBatch(topic="orders", partition=2, epoch=7, start=40, incarnation=3)
    assert not b.advances and not flush_due(b, limits, now=100.0)
    b.skip_to(38, now=5.0)  # a position behind the batch changes nothing
    assert (b.end, b.advances) == (40, False)
    b.skip_to(43, now=5.0)
    assert (b.start, b.end, b.count, b.advances, b.opened_at) == (40, 43, 0, True, 5.0)
    assert not flush_due(b, limits, now=5.5) and flush_due(b, limits, now=6.0)
    nxt = b.after()
    assert (nxt.start, nxt.end, nxt.epoch, nxt.incarnation, nxt.count) == (43, 43, 7, 3, 0)


def test_a_gap_is_recorded_from_the_batch_end_and_moves_it() -> None:
    b = PartitionBatch(topic="orders", partition=2, epoch=7, start=10)
    b.add_row(10, ("row",), 5, now=1.0)
    b.add_gap(500, "offset_out_of_range", "log start moved", now=2.0)
    assert [(g.from_offset, g.to_offset, g.reason) for g in b.gaps] == [(11, 500, "offset_out_of_range")]
    assert (b.end, b.count, b.opened_at) == (500, 1, 1.0)
    b.add_gap(400, "offset_out_of_range", "behind: ignored", now=3.0)
    assert len(b.gaps) == 1
    b.add_row(500, ("row",), 5, now=4.0)
    assert b.end == 501


def _opened(partition: int, at: float, count: int = 1) -> PartitionBatch:
    batch = _batch(0)
    batch.partition = partition
    for offset in range(count):
        batch.add_row(offset, (offset,), 1, now=at)
    return batch


def test_take_together_takes_nothing_until_one_batch_is_due() -> None:
    batches = [_opened(0, at=100.0), _opened(1, at=100.1)]
    assert take_together(batches, LIMITS, now=100.49) == []


def test_batches_half_a_timeout_old_ride_along_with_a_due_one() -> None:
    # LIMITS.max_age_s is 0.5: at 100.5 partition 0 is due, 1 and 2 are at least 0.25 s old, 3 is younger, 4 is empty.
    due, old, just_half, young, empty = (
        _opened(0, at=100.0),
        _opened(1, at=100.2),
        _opened(2, at=100.25),
        _opened(3, at=100.3),
        _batch(0),
    )
    taken = take_together([young, due, empty, old, just_half], LIMITS, now=100.5)
    assert [b.partition for b in taken] == [0, 1, 2]


def test_a_batch_full_by_count_takes_the_old_ones_but_not_the_young() -> None:
    full, old, young = _opened(0, at=100.0, count=3), _opened(1, at=99.7), _opened(2, at=99.9)
    assert [b.partition for b in take_together([full, old, young], LIMITS, now=100.0)] == [0, 1]


def test_while_paused_take_together_takes_every_non_empty_batch() -> None:
    batches = [_opened(0, at=100.0), _batch(0)]
    assert take_together(batches, LIMITS, now=100.0, paused=True) == [batches[0]]
