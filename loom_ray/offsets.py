"""The offsets table, ``loom_offsets``: claims that fence old owners, and reads of committed progress.

A claim bumps the partition's epoch. Every flush compares-and-sets its partition's row on
``(epoch, next_offset)``, so once a claim commits, the previous owner cannot commit anything more for
that partition: PostgreSQL, not Ray or Kafka, decides who may write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from loom_ray.policy.claims import BrokerPartition, StoredOffset, plan_claim


@dataclass(frozen=True, slots=True)
class Claim:
    """The right to write one partition: from ``next_offset`` on, while ``epoch`` is current."""

    topic: str
    partition: int
    epoch: int
    next_offset: int
    incarnation: int = 0


_LOCK_SQL = """
SELECT next_offset, incarnation, topic_id FROM loom_offsets WHERE topic = $1 AND "partition" = $2 FOR UPDATE
"""

_CLAIM_SQL = """
INSERT INTO loom_offsets AS o (topic, "partition", next_offset, epoch, owner, incarnation, topic_id)
VALUES ($1, $2, $3, 1, $4, $5, $6)
ON CONFLICT (topic, "partition") DO UPDATE
    SET epoch = o.epoch + 1, owner = EXCLUDED.owner, next_offset = EXCLUDED.next_offset,
        incarnation = EXCLUDED.incarnation, topic_id = coalesce(EXCLUDED.topic_id, o.topic_id), updated_at = now()
RETURNING epoch, next_offset, incarnation
"""

_GAP_SQL = """
INSERT INTO loom_gaps (topic, "partition", incarnation, from_offset, to_offset, reason, detail)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT DO NOTHING
"""


async def claim(
    conn: asyncpg.Connection,
    topic: str,
    partition: int,
    owner: str,
    broker: Callable[[], Awaitable[BrokerPartition]],
    from_end: bool,
) -> Claim:
    """Take a partition for ``owner`` in one transaction: lock its row, ask ``broker`` for the partition's
    watermarks (after the lock, so no flush moves the row past them), plan the start
    (:func:`loom_ray.policy.claims.plan_claim`), bump the epoch, and record the gap a reset leaves.

    The row lock waits for an in-flight flush of the old owner and sees the offset it left.
    """
    async with conn.transaction():
        row = await conn.fetchrow(_LOCK_SQL, topic, partition)
        stored = None if row is None else StoredOffset(row["next_offset"], row["incarnation"], row["topic_id"])
        now = await broker()
        plan = plan_claim(stored, now, from_end)
        claimed = await conn.fetchrow(
            _CLAIM_SQL, topic, partition, plan.next_offset, owner, plan.incarnation, now.topic_id
        )
        if plan.gap is not None:
            gap = plan.gap
            await conn.execute(
                _GAP_SQL, topic, partition, gap.incarnation, gap.from_offset, gap.to_offset, gap.reason, gap.detail
            )
    assert claimed is not None
    return Claim(topic, partition, claimed["epoch"], claimed["next_offset"], claimed["incarnation"])


async def committed(conn: asyncpg.Connection, topics: list[str]) -> dict[tuple[str, int], tuple[int, int, str | None]]:
    """``(topic, partition) -> (next_offset, epoch, owner)`` for the given topics."""
    rows = await conn.fetch(
        'SELECT topic, "partition", next_offset, epoch, owner FROM loom_offsets WHERE topic = ANY($1::text[])',
        topics,
    )
    return {(r["topic"], r["partition"]): (r["next_offset"], r["epoch"], r["owner"]) for r in rows}


async def claimed_topics(conn: asyncpg.Connection, topics: list[str]) -> set[str]:
    """Which of ``topics`` have had a partition claimed before (their first sight is behind them)."""
    rows = await conn.fetch("SELECT DISTINCT topic FROM loom_offsets WHERE topic = ANY($1::text[])", topics)
    return {r["topic"] for r in rows}
