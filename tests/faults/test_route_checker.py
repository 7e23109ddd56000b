"""The route checker can fail: tables written by hand as an exactly-once run would, then one violation each."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
import pytest
from confluent_kafka import Producer

from loom_bench.topic_fold import Record, last_writer_fold, read_topic
from loom_ray import loadgen
from tests.faults.route_checker import RouteReport, check_insert, check_upsert, check_versioned
from tests.faults.stack import FaultStack

# (key, amount or None for a tombstone, or "bad" for a record that must be a dead letter), in offset order.
STREAM: list[tuple[bytes, Any]] = [(b"1", 10), (b"2", 20), (b"1", 11), (b"3", "bad"), (b"2", None), (b"3", 30)]


def _expected(record: Record) -> tuple[Any, ...] | None:
    assert record.value is not None
    amount = orjson.loads(record.value)["amount"]
    return None if amount == "bad" else (int(record.key or b""), Decimal(amount), record.offset)


async def _write(dsn: str, topic: str, mutation: str, records: list[Record]) -> None:
    """The tables of a correct run of STREAM (one partition), then ``mutation``."""
    schema = f"c_{topic.replace('-', '_')}"
    fold = last_writer_fold(records, _expected)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f"CREATE SCHEMA {schema};"
            f"CREATE TABLE {schema}.t (id bigint PRIMARY KEY, amount numeric, src_offset bigint);"
            f"CREATE TABLE {schema}.log (src_partition int, src_offset bigint)"
        )
        await conn.executemany(f"INSERT INTO {schema}.t VALUES ($1, $2, $3)", list(fold.values()))
        good = [r for r in records if r.value is not None and _expected(r) is not None]
        await conn.executemany(f"INSERT INTO {schema}.log VALUES (0, $1)", [(r.offset,) for r in good])
        await conn.execute(
            'INSERT INTO loom_route_counts (route, topic, "partition", upserted, deleted, dead_letters) '
            "VALUES ($1, $1, 0, 4, 1, 1)",
            topic,
        )
        dead = [(topic, 3), (f"{topic}-log", 3), (f"{topic}-log", 4)]  # the insert route keeps no tombstone
        await conn.executemany(
            'INSERT INTO loom_dead_letters (topic, "partition", "offset", error_class, error_message, stage) '
            "VALUES ($1, 0, $2, 'WrongType', 'x', 'validate')",
            dead,
        )
        await conn.executemany(
            'INSERT INTO loom_offsets (topic, "partition", next_offset, epoch) VALUES ($1, 0, $2, 1)',
            [(topic, len(records)), (f"{topic}-log", len(records))],
        )
        mutations = {
            "none": "",
            "stale": f"UPDATE {schema}.t SET amount = 10, src_offset = 0 WHERE id = 1",
            "missing": f"DELETE FROM {schema}.t WHERE id = 3",
            "extra": f"INSERT INTO {schema}.t VALUES (2, 20, 1)",  # the delete of key 2 lost
            "applied_twice": "UPDATE loom_route_counts SET upserted = upserted + 1 WHERE topic = $1",
            "duplicated": f"INSERT INTO {schema}.log VALUES (0, 5)",
            "lost": f"DELETE FROM {schema}.log WHERE src_offset = 2",
            "dead_letters_off": 'DELETE FROM loom_dead_letters WHERE topic = $1 AND "offset" = 3',
            "at_end": "UPDATE loom_offsets SET next_offset = 5 WHERE topic = $1",
        }
        statement = mutations[mutation]
        if statement:
            await conn.execute(statement, *([topic] if "$1" in statement else []))
    finally:
        await conn.close()


@pytest.mark.parametrize(
    "mutation",
    ["none", "stale", "missing", "extra", "applied_twice", "duplicated", "lost", "dead_letters_off", "at_end"],
)
def test_each_violation_is_counted(fault_stack: FaultStack, topic: str, mutation: str) -> None:
    producer = Producer({"bootstrap.servers": fault_stack.kafka})
    for each in (topic, f"{topic}-log"):
        loadgen.ensure_topic(fault_stack.kafka, each, 1)
        for key, amount in STREAM:
            producer.produce(each, key=key, value=None if amount is None else orjson.dumps({"amount": amount}))
    assert producer.flush(30) == 0
    records = read_topic(fault_stack.kafka, topic)
    asyncio.run(_write(fault_stack.dsn, topic, mutation, records))
    schema = f"c_{topic.replace('-', '_')}"
    upsert = check_upsert(
        fault_stack.dsn, fault_stack.kafka, topic, topic, f"{schema}.t", "id, amount, src_offset", _expected
    )
    insert = check_insert(fault_stack.dsn, fault_stack.kafka, f"{topic}-log", topic, f"{schema}.log", _expected)
    if mutation == "none":
        assert upsert.ok and insert.ok, (upsert.counts(), insert.counts())
        return
    report: RouteReport = insert if mutation in ("duplicated", "lost") else upsert
    assert not report.ok
    value = getattr(report, mutation)
    assert value is False if mutation == "at_end" else value == 1, report.counts()


# (partition, account, seq): one account's records over two partitions; the newest (seq 3) is in partition 0.
VERSIONED: list[tuple[int, int, int]] = [(0, 1, 1), (1, 1, 2), (0, 1, 3), (1, 2, 4)]


def _account(record: Record) -> tuple[Any, ...] | None:
    assert record.value is not None
    value = orjson.loads(record.value)
    return (value["account"], value["seq"])


@pytest.mark.parametrize("mutation", ["none", "older_won"])
def test_the_versioned_check_catches_an_older_record_applied_last(
    fault_stack: FaultStack, topic: str, mutation: str
) -> None:
    loadgen.ensure_topic(fault_stack.kafka, topic, 2)
    producer = Producer({"bootstrap.servers": fault_stack.kafka})
    for partition, account, seq in VERSIONED:
        producer.produce(topic, value=orjson.dumps({"account": account, "seq": seq}), partition=partition)
    assert producer.flush(30) == 0
    schema = f"v_{topic.replace('-', '_')}"
    newest = {1: 2 if mutation == "older_won" else 3, 2: 4}  # an older record applied over the newer one

    async def write() -> None:
        conn = await asyncpg.connect(fault_stack.dsn)
        try:
            await conn.execute(
                f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.t (account bigint PRIMARY KEY, seq bigint)"
            )
            await conn.executemany(f"INSERT INTO {schema}.t VALUES ($1, $2)", list(newest.items()))
            await conn.executemany(
                'INSERT INTO loom_route_counts (route, topic, "partition", upserted, stale) '
                "VALUES ($1, $1, $2, $3, $4)",
                [(topic, 0, 2, 0), (topic, 1, 1, 1)],
            )
            await conn.executemany(
                'INSERT INTO loom_offsets (topic, "partition", next_offset, epoch) VALUES ($1, $2, 2, 1)',
                [(topic, 0), (topic, 1)],
            )
        finally:
            await conn.close()

    asyncio.run(write())
    report = check_versioned(
        fault_stack.dsn, fault_stack.kafka, topic, topic, f"{schema}.t", "account, seq", _account, lambda r: r[1]
    )
    assert report.ok is (mutation == "none"), report.counts()
    assert report.stale == (1 if mutation == "older_won" else 0)
