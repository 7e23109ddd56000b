"""No field of a record may stop a partition: hostile keys, values, headers and timestamps, generated.

A seeded generator draws each field of each record from hostile variants; the records are produced to a
real topic (with confluent-kafka, and through librdkafka's C API for the header keys that are not UTF-8,
which the Python producer cannot write), the real job drains it, and every offset must be exactly one row
or dead letter: a dead letter names the field at fault first in its ``error_message``, and a row holds the
record's key, headers, timestamp and value as produced.
"""

from __future__ import annotations

import base64
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.support.pipeline import account, high_watermarks, pipeline_env, run_until_drained, scalar
from tests.support.raw_producer import RawProducer
from tests.support.services import Endpoints

SEED = 20260509
RECORDS = 400
PARTITIONS = 3
MAX_MESSAGE_BYTES = 65_536  # LOOM_MAX_MESSAGE_BYTES for the job: "huge" values are over it
INT64_MAX = 2**63 - 1

Headers = list[tuple[bytes, bytes | None]]


@dataclass(frozen=True, slots=True)
class Variant:
    """One hostile form of a field, and the field a dead letter must name if this form alone is at fault."""

    name: str
    data: Any
    fault: str | None = None


KEYS = [
    Variant("none", None),
    Variant("empty", b""),
    Variant("binary", bytes(range(256))),
    Variant("large", random.Random(SEED).randbytes(100_000)),
    Variant("text", b"order-17"),
]
VALUES = [
    Variant("none", None, "value"),  # a tombstone
    Variant("empty", b"", "value"),
    Variant("invalid_utf8", b"\xff\xfe{}", "value"),
    Variant("huge", b'{"pad": "' + b"x" * 100_000 + b'"}', "value"),  # valid JSON over LOOM_MAX_MESSAGE_BYTES
    Variant("object", b'{"a": 1, "b": [true, null, 1.5]}'),
    Variant("unicode", '{"name": "é ✓ 😀"}'.encode()),
    Variant("scalar", b"42"),
    Variant("nested", b'{"x": ' * 50 + b"0" + b"}" * 50),
]
HEADERS = [
    Variant("none", None),
    Variant("empty_list", []),
    Variant("duplicate_keys", [(b"dup", b"1"), (b"dup", b"2")]),
    Variant("none_values", [(b"n", None), (b"m", None)]),
    Variant("binary_with_nul", [(b"bin", b"\x00\x01\xfe\xff")]),
    Variant("invalid_utf8_value", [(b"v", b"\xc3\x28")]),
    Variant("empty_key", [(b"", b"v")]),
    Variant("many", [(f"h{i}".encode(), str(i).encode()) for i in range(300)]),
    Variant("key_not_utf8", [(b"k\xff\xfe", b"v")], "headers"),
]
TIMESTAMPS = [
    Variant("unset", None),  # the producer's clock
    Variant("zero", 0),  # librdkafka reads 0 as "now"
    Variant("one", 1),
    Variant("now", int(time.time() * 1000)),
    Variant("last_ms_of_9999", 253_402_300_799_999),
    Variant("year_10000", 253_402_300_800_000, "timestamp"),
    Variant("year_190000", 6_000_000_000_000_000, "timestamp"),  # within PostgreSQL's range, past Python's
    Variant("int64_max", INT64_MAX, "timestamp"),  # the largest the broker takes (message.timestamp.after.max.ms)
]


@dataclass(frozen=True, slots=True)
class Hostile:
    """One generated record."""

    partition: int
    key: Variant
    value: Variant
    headers: Variant
    timestamp: Variant

    @property
    def fault(self) -> str | None:
        """The field its dead letter names: the first at fault in the order the consume loop reads them."""
        return self.headers.fault or self.value.fault or self.timestamp.fault

    def __str__(self) -> str:
        return (
            f"partition={self.partition} key={self.key.name} value={self.value.name} "
            f"headers={self.headers.name} timestamp={self.timestamp.name}"
        )

    @property
    def raw(self) -> bool:
        """Whether only librdkafka's C API can produce it (a header key that is not UTF-8)."""
        return self.headers.name == "key_not_utf8"


def generate(seed: int, count: int) -> list[Hostile]:
    rng = random.Random(seed)
    return [
        Hostile(i % PARTITIONS, rng.choice(KEYS), rng.choice(VALUES), rng.choice(HEADERS), rng.choice(TIMESTAMPS))
        for i in range(count)
    ]


def produce(endpoints: Endpoints, topic: str, records: list[Hostile]) -> dict[tuple[int, int], tuple[Hostile, int]]:
    """Produce ``records`` in order; per (partition, offset), the record and its timestamp as the broker has it
    (librdkafka sets "now" for an unset or zero timestamp). Each run of records of one producer is flushed
    before the other producer takes over, so offsets follow the generated order."""
    admin = AdminClient({"bootstrap.servers": endpoints.kafka})
    config = {"message.timestamp.after.max.ms": str(INT64_MAX)}  # take far-future timestamps
    admin.create_topics([NewTopic(topic, PARTITIONS, 1, config=config)])[topic].result(30)
    producer = Producer({"bootstrap.servers": endpoints.kafka, "enable.idempotence": True})
    delivered: dict[int, tuple[int, int]] = {}
    next_offset = dict.fromkeys(range(PARTITIONS), 0)
    expected: dict[tuple[int, int], tuple[Hostile, int]] = {}
    with RawProducer(endpoints.kafka) as raw:
        for i, record in enumerate(records):
            if i and record.raw != records[i - 1].raw:
                (raw.flush if records[i - 1].raw else producer.flush)(30)
            offset = next_offset[record.partition]
            next_offset[record.partition] += 1
            expected[(record.partition, offset)] = (record, -1)
            if record.raw:
                raw.produce(
                    topic,
                    record.partition,
                    record.value.data,
                    record.key.data,
                    record.headers.data,
                    record.timestamp.data,
                )
                continue

            def on_delivery(error: Any, message: Message, i: int = i) -> None:
                assert error is None, error
                delivered[i] = (message.offset(), message.timestamp()[1])

            producer.produce(
                topic,
                record.value.data,
                key=record.key.data,
                partition=record.partition,
                headers=None if record.headers.data is None else [(k.decode(), v) for k, v in record.headers.data],
                timestamp=record.timestamp.data or 0,
                on_delivery=on_delivery,
            )
        raw.flush(30)
    assert producer.flush(30) == 0
    for i, record in enumerate(records):
        if not record.raw:
            offset, ts_ms = delivered[i]
            assert expected[(record.partition, offset)][0] is record, "offsets do not follow the generated order"
            expected[(record.partition, offset)] = (record, ts_ms)
    assert high_watermarks(endpoints.kafka, topic) == {p: (0, n) for p, n in next_offset.items()}
    return expected


def _header_bytes(text: str | dict[str, str]) -> bytes:
    return base64.b64decode(text["base64"]) if isinstance(text, dict) else text.encode()


def stored_headers(column: str | None) -> Headers | None:
    """The ``headers`` column decoded back to the (key, value) bytes Kafka carried."""
    if column is None:
        return None
    return [(_header_bytes(k), None if v is None else _header_bytes(v)) for k, v in orjson.loads(column)]


def test_hostile_records_through_every_field(endpoints: Endpoints, topic_name: str, tmp_path: Path) -> None:
    records = generate(SEED, RECORDS)
    for field, variants in (("key", KEYS), ("value", VALUES), ("headers", HEADERS), ("timestamp", TIMESTAMPS)):
        drawn = {getattr(r, field).name for r in records}
        assert drawn == {v.name for v in variants}, f"seed {SEED} leaves out some {field} variants"
    assert {r.fault for r in records} == {None, "headers", "value", "timestamp"}
    expected = produce(endpoints, topic_name, records)

    run_until_drained(
        pipeline_env(endpoints, topic_name, max_message_bytes=MAX_MESSAGE_BYTES), tmp_path / "main.log", 180
    )
    result = account(endpoints, topic_name)
    assert result.exact, str(result)

    rows = scalar(
        endpoints,
        """SELECT coalesce(jsonb_agg(jsonb_build_array("partition", "offset", encode(key, 'base64'), headers::text,
                                    (extract(epoch FROM kafka_ts) * 1000)::bigint, payload::text)), '[]')::text
           FROM loom_messages WHERE topic = $1""",
        topic_name,
    )
    dead = scalar(
        endpoints,
        """SELECT coalesce(jsonb_agg(jsonb_build_array("partition", "offset", encode(key, 'base64'), headers::text,
                                    error_class, error_message, stage)), '[]')::text
           FROM loom_dead_letters WHERE topic = $1""",
        topic_name,
    )
    outcome: dict[tuple[int, int], tuple[str, list[Any]]] = {}
    for kind, found in (("row", rows), ("dead letter", dead)):
        for partition, offset, *fields in orjson.loads(found):
            key = None if fields[0] is None else base64.b64decode(fields[0])
            outcome[(partition, offset)] = (kind, [key, stored_headers(fields[1]), *fields[2:]])
    assert outcome.keys() == expected.keys()

    for position, (record, ts_ms) in expected.items():
        kind, (key, headers, *rest) = outcome[position]
        where = f"{position} {record}"
        assert key == record.key.data, where
        if record.fault is None:
            assert kind == "row", where
            assert headers == (record.headers.data or None), where
            stored_ts_ms, payload = rest
            assert stored_ts_ms == ts_ms, where
            assert orjson.loads(payload) == orjson.loads(record.value.data), where
        else:
            assert kind == "dead letter", where
            error_class, error_message, stage = rest
            assert error_message.startswith(f"{record.fault}: "), (where, error_class, error_message)
            assert stage == ("validate" if record.fault == "timestamp" else "decode"), where
            if record.fault == "timestamp":
                assert headers == (record.headers.data or None), where  # kept with the dead letter
