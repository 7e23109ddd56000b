"""Fencing at the sink: a flush by a stale epoch is rolled back whole and leaves no row behind."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg

from loom_ray.batch import PartitionBatch
from loom_ray.migrate import migrate
from loom_ray.offsets import ClaimRequest, claim_many
from loom_ray.policy.positions import BrokerPartition
from loom_ray.sink.postgres import PostgresSink
from tests.support.claims import claim_at
from tests.support.services import Endpoints


def _batch(topic: str, partition: int, epoch: int, start: int, n: int) -> PartitionBatch:
    batch = PartitionBatch(topic, partition, epoch, start)
    for offset in range(start, start + n):
        row = (topic, partition, offset, None, f'{{"n": {offset}}}', None, datetime.now(UTC), 0, None)
        batch.add_row(offset, row, 10, 0.0)
    return batch


async def _stale_epoch_flush(dsn: str, topic: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            zombie = await claim_at(conn, topic, 0, "zombie")
            other = await claim_at(conn, topic, 1, "zombie")
            successor = await claim_at(conn, topic, 0, "successor")  # epoch bump on partition 0 only
        result = await PostgresSink(pool, "zombie", 1024, audit=True).write(
            [_batch(topic, 0, zombie.epoch, 0, 5), _batch(topic, 1, other.epoch, 0, 3)]
        )
        fresh = await PostgresSink(pool, "successor", 1024, audit=True).write([_batch(topic, 0, successor.epoch, 0, 2)])
        assert [(b.partition, b.epoch) for b in result.fenced] == [(0, 1)]
        assert [b.partition for b in result.committed] == [1]
        assert [b.partition for b in fresh.committed] == [0]
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                'SELECT "partition", count(*) AS n FROM loom_messages WHERE topic = $1 GROUP BY 1 ORDER BY 1', topic
            )
            stored = await conn.fetch(
                'SELECT "partition", next_offset, epoch FROM loom_offsets WHERE topic = $1 ORDER BY 1', topic
            )
            zombie_audit = await conn.fetch(
                "SELECT \"partition\" FROM loom_audit WHERE topic = $1 AND owner = 'zombie'", topic
            )
    finally:
        await pool.close()
    # Partition 0 holds only the successor's 2 rows: the zombie's 5 left nothing, not even an audit line.
    assert [(r["partition"], r["n"]) for r in rows] == [(0, 2), (1, 3)]
    assert [(r["partition"], r["next_offset"], r["epoch"]) for r in stored] == [(0, 2, 2), (1, 3, 1)]
    assert [r["partition"] for r in zombie_audit] == [1]  # its partition-1 batch, committed after the retry


def test_stale_epoch_flush_is_rejected_and_the_rest_commits(endpoints: Endpoints, topic_name: str) -> None:
    asyncio.run(_stale_epoch_flush(endpoints.dsn, topic_name))


async def _bulk_claims(dsn: str, topic: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        first = await claim_at(conn, topic, 0, "old")
        await conn.execute('UPDATE loom_offsets SET next_offset = 40 WHERE topic = $1 AND "partition" = 0', topic)
        broker = {
            (topic, 0): BrokerPartition(low=10, high=90, topic_id="A"),
            (topic, 1): BrokerPartition(low=10, high=90, topic_id="A"),
            (topic, 2): BrokerPartition(low=10, high=90, topic_id="A"),
        }

        async def read(tps: list[tuple[str, int]]) -> dict[tuple[str, int], BrokerPartition]:
            assert sorted(tps) == [(topic, 0), (topic, 1), (topic, 2), (topic, 3)]
            return broker  # partition 3 has no watermarks: it is not claimed

        requests = [
            ClaimRequest(topic, 0, "a"),
            ClaimRequest(topic, 1, "a", from_end=True),
            ClaimRequest(topic, 2, "b"),
            ClaimRequest(topic, 3, "b"),
        ]
        claims = await claim_many(conn, requests, read)
        rows = await conn.fetch(
            'SELECT "partition", owner, topic_id FROM loom_offsets WHERE topic = $1 ORDER BY 1', topic
        )
    finally:
        await conn.close()
    assert sorted((c.partition, c.epoch, c.next_offset) for c in claims) == [
        (0, first.epoch + 1, 40),  # resumes where it was, with a new epoch
        (1, 1, 90),  # first sight, from the end
        (2, 1, 10),  # first sight, from the log start
    ]
    assert [(r["partition"], r["owner"], r["topic_id"]) for r in rows] == [(0, "a", "A"), (1, "a", "A"), (2, "b", "A")]


def test_many_partitions_are_claimed_in_one_transaction(endpoints: Endpoints, topic_name: str) -> None:
    asyncio.run(_bulk_claims(endpoints.dsn, topic_name))


async def _claims_past_a_held_row(dsn: str, topic: str) -> None:
    conn = await asyncpg.connect(dsn, server_settings={"lock_timeout": "300"})
    holder = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        for partition in range(3):
            await claim_at(conn, topic, partition, "old")

        async def read(tps: list[tuple[str, int]]) -> dict[tuple[str, int], BrokerPartition]:
            return {tp: BrokerPartition(low=0, high=90, topic_id=None) for tp in tps}

        requests = [ClaimRequest(topic, p, "new") for p in range(4)]
        # Another session holds partition 1's row (a flush stuck in its transaction, a person's lock).
        await holder.execute("BEGIN")
        await holder.execute('SELECT 1 FROM loom_offsets WHERE topic = $1 AND "partition" = 1 FOR UPDATE', topic)
        held = await claim_many(conn, requests, read)
        await holder.execute("ROLLBACK")
        later = await claim_many(conn, [ClaimRequest(topic, 1, "new")], read)
        owners = await conn.fetch(
            'SELECT "partition", owner, epoch FROM loom_offsets WHERE topic = $1 ORDER BY 1', topic
        )
    finally:
        await holder.close()
        await conn.close()
    # The others are claimed (partition 3 for the first time) without waiting for the held one ...
    assert sorted((c.partition, c.epoch) for c in held) == [(0, 2), (2, 2), (3, 1)]
    # ... which is claimed once it is free.
    assert [(c.partition, c.epoch) for c in later] == [(1, 2)]
    assert [tuple(r) for r in owners] == [(0, "new", 2), (1, "new", 2), (2, "new", 2), (3, "new", 1)]


def test_a_row_held_past_lock_timeout_is_left_for_later_and_the_rest_is_claimed(
    endpoints: Endpoints, topic_name: str
) -> None:
    asyncio.run(_claims_past_a_held_row(endpoints.dsn, topic_name))
