"""What a route's table must hold, computed from the topic alone, without loom-ray's code.

A ``read_committed`` consumer reads every partition from its first offset to its high watermark; the
integration tests, the fault suite's checker and the W3 benchmark fold the records by key, last writer wins
in offset order (a key always lands in the same partition), into what an upsert table must equal.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, TopicPartition


@dataclass(frozen=True, slots=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def read_topic(bootstrap: str, topic: str, timeout_s: float = 60) -> list[Record]:
    """Every committed record of ``topic``, partition by partition, in offset order."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"fold-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions if ends[p] > 0])
        found: dict[int, list[Record]] = {p: [] for p in partitions}
        done = {p for p in partitions if ends[p] == 0}
        deadline = time.monotonic() + timeout_s
        while len(done) < len(partitions):
            assert time.monotonic() < deadline, f"{topic}: read {sum(map(len, found.values()))} records, not all"
            for message in consumer.consume(1000, 1.0):
                partition = message.partition()
                assert partition is not None
                error = message.error()
                if error is not None:
                    if error.code() == -191:  # _PARTITION_EOF
                        if consumer.position([TopicPartition(topic, partition)])[0].offset >= ends[partition]:
                            done.add(partition)
                        continue
                    raise AssertionError(error)
                offset = message.offset()
                assert offset is not None
                found[partition].append(Record(partition, offset, message.key(), message.value()))
                if offset + 1 >= ends[partition]:
                    done.add(partition)
        return [record for p in partitions for record in found[p]]
    finally:
        consumer.close()


def last_writer_fold(
    records: list[Record], row: Callable[[Record], tuple[Any, ...] | None]
) -> dict[bytes | None, tuple[Any, ...]]:
    """Per key, the row of its last record that has one: ``row`` gives a record's expected row, or None for a
    record that must be a dead letter (it changes nothing). A tombstone (no value) deletes the key."""
    table: dict[bytes | None, tuple[Any, ...]] = {}
    for record in records:
        if record.value is None:
            table.pop(record.key, None)
            continue
        expected = row(record)
        if expected is not None:
            table[record.key] = expected
    return table
