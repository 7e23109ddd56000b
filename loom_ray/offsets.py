"""The offsets table, ``loom_offsets``: claims that fence old owners, and reads of committed progress.

A claim bumps the partition's epoch. Every flush compares-and-sets its partition's row on
``(epoch, next_offset)``, so once a claim commits, the previous owner cannot commit anything more for
that partition: PostgreSQL, not Ray or Kafka, decides who may write.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True, slots=True)
class Claim:
    """The right to write one partition: from ``next_offset`` on, while ``epoch`` is current."""

    topic: str
    partition: int
    epoch: int
    next_offset: int


_CLAIM_SQL = """
INSERT INTO loom_offsets AS o (topic, "partition", next_offset, epoch, owner)
VALUES ($1, $2, $3, 1, $4)
ON CONFLICT (topic, "partition") DO UPDATE
    SET epoch = o.epoch + 1, owner = EXCLUDED.owner, updated_at = now()
RETURNING epoch, next_offset
"""


async def claim(conn: asyncpg.Connection, topic: str, partition: int, start_offset: int, owner: str) -> Claim:
    """Take a partition for ``owner``: insert it at ``start_offset`` on first sight, else bump its epoch.

    ``UPDATE ... RETURNING`` waits for an in-flight flush of the old owner and returns the offset it left.
    """
    row = await conn.fetchrow(_CLAIM_SQL, topic, partition, start_offset, owner)
    assert row is not None
    return Claim(topic, partition, row["epoch"], row["next_offset"])


async def committed(conn: asyncpg.Connection, topics: list[str]) -> dict[tuple[str, int], tuple[int, int, str | None]]:
    """``(topic, partition) -> (next_offset, epoch, owner)`` for the given topics."""
    rows = await conn.fetch(
        'SELECT topic, "partition", next_offset, epoch, owner FROM loom_offsets WHERE topic = ANY($1::text[])',
        topics,
    )
    return {(r["topic"], r["partition"]): (r["next_offset"], r["epoch"], r["owner"]) for r in rows}


async def disown(conn: asyncpg.Connection, topic: str, partition: int, epoch: int) -> None:
    """Clear the owner after a clean release, if the claim is still ``epoch`` (diagnostics only)."""
    await conn.execute(
        'UPDATE loom_offsets SET owner = NULL, updated_at = now() WHERE topic = $1 AND "partition" = $2 AND epoch = $3',
        topic,
        partition,
        epoch,
    )
