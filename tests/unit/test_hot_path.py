"""The consume -> decode -> batch hot loop (IngestWorker._add_all) and the kafka_ts encoding, without I/O."""

from __future__ import annotations

import operator
import random
import struct
import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_NOT_AVAILABLE, Message

from loom_ray import fields
from loom_ray.batch import PartitionBatch
from loom_ray.offsets import Claim
from loom_ray.pipeline import IngestWorker, _Partition
from loom_ray.settings import Settings
from loom_ray.sink.codecs import PG_EPOCH, decode_timestamptz, kafka_ts_micros

NOW = 100.0


def _old_kafka_ts(ts_ms: int) -> datetime:
    """What the pipeline bound before the int codec (asyncpg sent it as microseconds since 2000)."""
    return datetime.fromtimestamp(ts_ms / 1000, UTC)


def _micros(dt: datetime) -> int:
    """``dt`` as asyncpg's default timestamptz encoder sent it (datetime.min/max are -infinity/infinity)."""
    if dt == datetime.min.replace(tzinfo=UTC):
        return -(2**63)
    if dt == datetime.max.replace(tzinfo=UTC):
        return 2**63 - 1
    return (dt - PG_EPOCH) // timedelta(microseconds=1)


@pytest.mark.parametrize(
    "ts_ms",
    [
        0,
        1,
        999,
        1_700_000_000_123,
        1_700_000_000_999,
        946_684_800_000,  # 2000-01-01: zero in PostgreSQL's epoch
        4_102_444_799_999,  # the last fast-path millisecond
        4_102_444_800_000,  # the first one past it
        253_402_300_799_999,  # 9999-12-31T23:59:59.999Z
        -1,
        -1_000,
        -62_135_596_800_000,  # 0001-01-01T00:00:00Z is datetime.min: asyncpg sent -infinity
        -62_135_596_799_999,
    ],
)
def test_kafka_ts_micros_is_the_old_datetime(ts_ms: int) -> None:
    assert kafka_ts_micros(ts_ms) == _micros(_old_kafka_ts(ts_ms))


def test_kafka_ts_micros_matches_on_random_timestamps() -> None:
    rng = random.Random(20241127)
    for _ in range(20_000):
        ts_ms = rng.randrange(0, 4_200_000_000_000)
        assert kafka_ts_micros(ts_ms) == _micros(_old_kafka_ts(ts_ms)), ts_ms


def test_kafka_ts_micros_raises_where_datetime_raised() -> None:
    with pytest.raises((ValueError, OverflowError)):
        _old_kafka_ts(10**15)
    with pytest.raises((ValueError, OverflowError)):
        kafka_ts_micros(10**15)


@pytest.mark.parametrize(
    "ts_ms",
    [253_402_300_800_000, 2**63 - 1, -62_135_596_800_001, -(2**63)],
    ids=["year-10000", "int64-max", "before-year-1", "int64-min"],
)
def test_kafka_ts_micros_refuses_times_outside_years_1_to_9999_with_one_error(ts_ms: int) -> None:
    with pytest.raises(ValueError, match="outside years 1 to 9999"):
        kafka_ts_micros(ts_ms)


@pytest.mark.parametrize(
    ("micros", "expected"),
    [
        (0, PG_EPOCH),
        (-1, PG_EPOCH - timedelta(microseconds=1)),
        (753_315_200_123_000, datetime(2023, 11, 14, 22, 13, 20, 123_000, tzinfo=UTC)),
        (2**63 - 1, datetime.max),  # 'infinity', as asyncpg's own codec returns it
        (-(2**63), datetime.min),  # '-infinity'
    ],
)
def test_decode_timestamptz(micros: int, expected: datetime) -> None:
    assert decode_timestamptz(struct.pack("!q", micros)) == expected


def _worker(partitions: list[int], next_offset: int = 0) -> IngestWorker:
    worker = IngestWorker(Settings(kafka_topics=["t"]), "unit")
    for p in partitions:
        claim = Claim("t", p, 3, next_offset)
        worker._parts[("t", p)] = _Partition(claim, next_offset, PartitionBatch("t", p, 3, next_offset), 0)
    return worker


def _message(partition: int, offset: int, value: bytes | None, ts_ms: int = 1_700_000_000_123, **kw: object) -> Message:
    return Message(
        topic="t", partition=partition, offset=offset, value=value, timestamp=(TIMESTAMP_CREATE_TIME, ts_ms), **kw
    )


def test_add_all_builds_rows_and_dead_letters_in_offset_order() -> None:
    worker = _worker([0, 1])
    messages = [
        _message(0, 0, b'{"a": 1}', key=b"k0"),
        _message(0, 1, b"not json"),
        _message(1, 0, b"[1]", headers=[("h", b"v")]),
        _message(0, 2, b'"x"', ts_ms=5),
        _message(2, 0, b"{}"),  # a partition this worker does not hold
    ]
    worker._add_all(messages, NOW, 0)
    b0 = worker._parts[("t", 0)].open
    b1 = worker._parts[("t", 1)].open
    assert b0.rows == [
        ("t", 0, 0, b"k0", '{"a": 1}', None, kafka_ts_micros(1_700_000_000_123), 0, None),
        ("t", 0, 2, None, '"x"', None, kafka_ts_micros(5), 0, None),
    ]
    assert [dl[:4] + dl[8:] for dl in b0.dead_letters] == [
        ("t", 0, 1, None, "InvalidJson", b0.dead_letters[0][9], "decode", None, 0)
    ]
    assert b0.dead_letters[0][4:7] == (b"not json", 8, b0.dead_letters[0][6])
    assert (b0.start, b0.end, b0.count, b0.size_bytes, b0.opened_at) == (0, 3, 3, 8 + 8 + 3, NOW)
    assert b1.rows == [("t", 1, 0, None, "[1]", '[["h","v"]]', kafka_ts_micros(1_700_000_000_123), 0, None)]
    assert worker._parts[("t", 0)].stats.messages == 3


def test_add_all_skips_offsets_already_buffered_or_committed() -> None:
    worker = _worker([0], next_offset=10)
    worker._add_all([_message(0, 9, b"1"), _message(0, 10, b"2"), _message(0, 10, b"3"), _message(0, 12, b"4")], NOW, 0)
    batch = worker._parts[("t", 0)].open
    assert [row[2] for row in batch.rows] == [10, 12]
    assert [row[4] for row in batch.rows] == ["2", "4"]
    assert batch.end == 13


def test_add_all_ignores_a_consume_that_started_before_the_partition_was_claimed_again() -> None:
    # Partition 0 was fenced and claimed again from offset 10 (its lost commit had ended at 15) while a
    # consume() was in flight: that call's messages come from the old position and must not open the batch,
    # or 10..14, read again next, would be skipped as already buffered (lost).
    worker = _worker([0, 1], next_offset=10)
    worker._parts[("t", 0)].assigned = 1
    worker._add_all([_message(0, 15, b"1"), _message(0, 16, b"2"), _message(1, 10, b"3")], NOW, 0)
    assert worker._parts[("t", 0)].open.count == 0
    assert [row[2] for row in worker._parts[("t", 1)].open.rows] == [10]  # the other partition is unaffected
    worker._add_all([_message(0, 10, b"4")], NOW, 1)  # the next consume(), after the claim
    assert [row[2] for row in worker._parts[("t", 0)].open.rows] == [10]


class _HeaderKeyNotUtf8(Message):
    """A consumed message with a header key that is not UTF-8, as confluent-kafka 2.x hands it over:
    ``headers()`` raises, and a second call would return a list holding a broken tuple, so calls are counted."""

    calls = 0

    def headers(self) -> Any:
        self.calls += 1
        try:
            b"k\xff".decode("utf-8")
        except UnicodeDecodeError as cause:
            raise SystemError("<method 'headers'> returned a result with an exception set") from cause
        raise AssertionError("unreachable")


def test_add_all_makes_a_record_with_an_unstorable_field_a_dead_letter_naming_it_and_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fields, "_HEADERS", operator.methodcaller("headers"))  # reach the stand-in's headers()
    worker = _worker([0])
    unreadable = _HeaderKeyNotUtf8(
        topic="t", partition=0, offset=1, value=b'{"b": 2}', timestamp=(TIMESTAMP_CREATE_TIME, 5)
    )
    messages = [
        _message(0, 0, b'{"a": 1}'),
        unreadable,
        _message(0, 2, b'{"c": 3}', ts_ms=2**63 - 1, headers=[("h", b"v")]),
        _message(0, 3, b"{}", ts_ms=253_402_300_800_000),  # 10000-01-01
        _message(0, 4, b"not json", ts_ms=2**63 - 1),  # the value is read first: it is the field named
        _message(0, 5, b"{}", ts_ms=253_402_300_799_999),  # 9999-12-31T23:59:59.999Z: still a row
    ]
    worker._add_all(messages, NOW, 0)
    batch = worker._parts[("t", 0)].open
    assert [row[2] for row in batch.rows] == [0, 5]
    assert [(dl[2], dl[8], dl[10], dl[9].split(":")[0]) for dl in batch.dead_letters] == [
        (1, "UnreadableHeaders", "decode", "headers"),
        (2, "TimestampOutOfRange", "validate", "timestamp"),
        (3, "TimestampOutOfRange", "validate", "timestamp"),
        (4, "InvalidJson", "decode", "value"),
    ]
    by_offset = {dl[2]: dl for dl in batch.dead_letters}
    assert by_offset[1][7] is None  # the headers could not be read
    assert (by_offset[2][4], by_offset[2][7]) == (b'{"c": 3}', '[["h","v"]]')  # value and headers kept
    assert unreadable.calls == 1
    assert (batch.end, worker._parts[("t", 0)].stats.messages) == (6, 6)


def test_add_all_without_a_timestamp_stores_null() -> None:
    worker = _worker([0])
    message = Message(topic="t", partition=0, offset=0, value=b"{}", timestamp=(TIMESTAMP_NOT_AVAILABLE, -1))
    worker._add_all([message], NOW, 0)
    assert worker._parts[("t", 0)].open.rows[0][6] is None


def test_take_due_while_paused_takes_young_batches() -> None:
    worker = _worker([0, 1])
    worker._add_all([_message(0, 0, b"1")], NOW, 0)
    assert worker._take_due(NOW, force=False) == []  # young and small: waits for its timer
    worker._paused = True
    due = worker._take_due(NOW, force=False)
    assert [(b.partition, b.start, b.end) for b in due] == [(0, 0, 1)]
    assert worker._parts[("t", 0)].open.start == 1  # a fresh batch opens after it


@pytest.mark.parametrize("value_bytes", [200, 2048])
def test_buffered_bytes_is_about_the_memory_the_buffered_rows_take(value_bytes: int) -> None:
    # LOOM_BUFFER_MAX_BYTES bounds memory: the estimate must follow what the rows really take, values of the
    # benchmark's W1 and W2 sizes, a key and a timestamp each (the Messages themselves are dropped).
    worker = _worker([0])
    value = orjson.dumps({"payload": "x" * (value_bytes - 14)})
    messages = [_message(0, offset, value, key=f"key-{offset}".encode()) for offset in range(20_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        worker._add_all(messages, NOW, 0)
        del messages
        taken = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert worker._parts[("t", 0)].open.count == 20_000
    assert 0.75 * taken <= worker.buffered_bytes() <= 1.25 * taken
