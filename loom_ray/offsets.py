"""The offsets table, ``loom_offsets``: claims that fence old owners, and reads of committed progress.

A claim bumps the partition's epoch. Every flush compares-and-sets its partition's row on
``(epoch, next_offset)``, so once a claim commits, the previous owner cannot commit anything more for
that partition: PostgreSQL, not Ray or Kafka, decides who may write.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from loom_ray.policy.positions import BrokerPartition, Position, StoredOffset, Target, plan


@dataclass(frozen=True, slots=True)
class Claim:
    """The right to write one partition: from ``next_offset`` on, while ``epoch`` is current. Offsets below
    ``reread_until`` were read before a rewind (:mod:`loom_ray.ops.reread`)."""

    topic: str
    partition: int
    epoch: int
    next_offset: int
    incarnation: int = 0
    reread_until: int = 0


TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """One partition to claim: for ``owner`` (None: for nobody, an operator's move applied while no consumer
    should hold it); ``from_end`` when it starts at its end if never claimed; ``target`` where an operator
    moves it (a rewind or a skip), None to resume it."""

    topic: str
    partition: int
    owner: str | None
    from_end: bool = False
    target: Target | None = None


# Watermarks and topic id of each partition asked for, read by the caller after the rows are locked; a
# partition left out of the answer is not claimed.
BrokerRead = Callable[[list[TopicPartition]], Awaitable[dict[TopicPartition, BrokerPartition]]]

log = logging.getLogger(__name__)

# The coordinator's lock_timeout: how long a claim waits for an old owner's flush to end. Flushes take
# milliseconds; a row held longer (a flush stuck in its transaction, a person's lock) is claimed a round
# later rather than holding up the round, and with it every lag sample and health check.
CLAIM_LOCK_TIMEOUT_MS = 5_000

_ROWS_SQL = """
SELECT o.topic, o."partition", o.next_offset, o.incarnation, o.topic_id, o.reread_until
FROM loom_offsets AS o JOIN unnest($1::text[], $2::int[]) AS r(topic, "partition") USING (topic, "partition")
ORDER BY o.topic, o."partition"
"""
_LOCK_SQL = _ROWS_SQL + "FOR UPDATE OF o"
_LOCK_FREE_SQL = _LOCK_SQL + " SKIP LOCKED"

_CLAIM_SQL = """
INSERT INTO loom_offsets AS o
    (topic, "partition", next_offset, epoch, owner, incarnation, topic_id, reread_until, reread_operation)
SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[], $5::text[], $6::int[], $7::text[],
                     $8::bigint[], $9::bigint[])
ON CONFLICT (topic, "partition") DO UPDATE
    SET epoch = o.epoch + 1, owner = EXCLUDED.owner, next_offset = EXCLUDED.next_offset,
        incarnation = EXCLUDED.incarnation, topic_id = coalesce(EXCLUDED.topic_id, o.topic_id),
        reread_until = EXCLUDED.reread_until,
        reread_operation = CASE WHEN EXCLUDED.reread_until = 0 THEN NULL
                                ELSE coalesce(EXCLUDED.reread_operation, o.reread_operation) END,
        updated_at = now()
RETURNING o.topic, o."partition", o.epoch, o.next_offset, o.incarnation, o.reread_until
"""

_GAP_SQL = """
INSERT INTO loom_gaps (topic, "partition", incarnation, from_offset, to_offset, reason, detail)
SELECT * FROM unnest($1::text[], $2::int[], $3::int[], $4::bigint[], $5::bigint[], $6::text[], $7::text[])
ON CONFLICT DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class Moved:
    """One partition a claim took: the claim, the offset row as it was (None: never claimed), and the
    position the policy chose (:func:`loom_ray.policy.positions.plan`)."""

    claim: Claim
    before: StoredOffset | None
    position: Position


async def claim_many(conn: asyncpg.Connection, requests: list[ClaimRequest], broker: BrokerRead) -> list[Claim]:
    """Take many partitions in one transaction (:func:`move_many`); the claims."""
    return [moved.claim for moved in await move_many(conn, requests, broker)]


async def move_many(
    conn: asyncpg.Connection, requests: list[ClaimRequest], broker: BrokerRead, operation: int | None = None
) -> list[Moved]:
    """Take many partitions in one transaction and three statements: lock their rows (in key order), ask
    ``broker`` for their watermarks (after the lock, so no flush moves a row past them), place each
    (:func:`loom_ray.policy.positions.plan`: resume, or the request's rewind or skip, ``operation`` being
    the ``loom_operations`` row that asked), bump the epochs, and record the gaps that leaves.

    The row locks wait for in-flight flushes of the old owners and see the offsets they left; a row held past
    the connection's ``lock_timeout`` (the coordinator's is :data:`CLAIM_LOCK_TIMEOUT_MS`) is left out, as
    are partitions the broker did not answer for (claim them again later). A move the policy refuses raises
    :class:`~loom_ray.errors.PositionRefusedError`, and nothing is claimed.
    """
    if not requests:
        return []
    async with conn.transaction():
        rows, busy = await _lock(conn, [(r.topic, r.partition) for r in requests])
        if busy:
            log.warning(
                "%d offset rows held by another session past lock_timeout (a flush stuck in its transaction, or "
                "a person's lock), e.g. %s[%d]: those partitions are claimed later",
                len(busy),
                *min(busy),
            )
            requests = [r for r in requests if (r.topic, r.partition) not in busy]
            if not requests:
                return []
        tps = [(r.topic, r.partition) for r in requests]
        stored = {
            (r["topic"], r["partition"]): StoredOffset(
                r["next_offset"], r["incarnation"], r["topic_id"], r["reread_until"]
            )
            for r in rows
        }
        found = await broker(tps)
        plans = [
            (r, plan(stored.get((r.topic, r.partition)), found[(r.topic, r.partition)], r.from_end, r.target))
            for r in requests
            if (r.topic, r.partition) in found
        ]
        if not plans:
            return []
        claimed = await conn.fetch(
            _CLAIM_SQL,
            [r.topic for r, _ in plans],
            [r.partition for r, _ in plans],
            [position.next_offset for _, position in plans],
            [1] * len(plans),
            [r.owner for r, _ in plans],
            [position.incarnation for _, position in plans],
            [found[(r.topic, r.partition)].topic_id for r, _ in plans],
            [position.reread_until for _, position in plans],
            [operation] * len(plans),
        )
        await _record_gaps(conn, [(r.topic, r.partition, position) for r, position in plans])
    by_tp = {(r.topic, r.partition): position for r, position in plans}
    return [
        Moved(
            Claim(r["topic"], r["partition"], r["epoch"], r["next_offset"], r["incarnation"], r["reread_until"]),
            stored.get((r["topic"], r["partition"])),
            by_tp[(r["topic"], r["partition"])],
        )
        for r in claimed
    ]


async def _record_gaps(conn: asyncpg.Connection, placed: list[tuple[str, int, Position]]) -> None:
    """Insert the gaps the positions leave (a gap already recorded from the same offset is kept)."""
    gaps = [(t, p, position.gap) for t, p, position in placed if position.gap is not None]
    if gaps:
        await conn.execute(
            _GAP_SQL,
            [t for t, _, _ in gaps],
            [p for _, p, _ in gaps],
            [g.incarnation for _, _, g in gaps],
            [g.from_offset for _, _, g in gaps],
            [g.to_offset for _, _, g in gaps],
            [g.reason for _, _, g in gaps],
            [g.detail for _, _, g in gaps],
        )


_REPOSITION_SQL = """
UPDATE loom_offsets SET next_offset = $4, incarnation = $5, epoch = epoch + 1, owner = NULL, reread_until = 0,
                        reread_operation = NULL, updated_at = now()
WHERE topic = $1 AND "partition" = $2 AND epoch = $3
"""


async def reposition(conn: asyncpg.Connection, claim: Claim, position: Position) -> bool:
    """Move a partition its owner holds under ``claim`` to ``position`` (a new incarnation the consumer found
    after a fetch out of range, :func:`loom_ray.policy.positions.out_of_range`) and record its gap, in one
    transaction; the new epoch fences the owner too, which drops the partition for the coordinator to claim
    again. False, changing nothing, when the claim was no longer current (fenced)."""
    async with conn.transaction():
        status = await conn.execute(
            _REPOSITION_SQL, claim.topic, claim.partition, claim.epoch, position.next_offset, position.incarnation
        )
        if status != "UPDATE 1":
            return False
        await _record_gaps(conn, [(claim.topic, claim.partition, position)])
    return True


async def _lock(
    conn: asyncpg.Connection, tps: list[TopicPartition]
) -> tuple[list[asyncpg.Record], set[TopicPartition]]:
    """Lock the offset rows of ``tps`` (in key order); the rows, and the partitions whose row another session
    held longer than the connection's ``lock_timeout`` (none when it has none). After such a wait the rows
    are locked again skipping the held ones, so one stuck row never holds the others' claims back."""
    topics, partitions = [t for t, _ in tps], [p for _, p in tps]
    try:
        async with conn.transaction():  # a savepoint: a lock_timeout rolls back only this wait
            return await conn.fetch(_LOCK_SQL, topics, partitions), set()
    except asyncpg.LockNotAvailableError:
        rows = await conn.fetch(_LOCK_FREE_SQL, topics, partitions)
        existing = await conn.fetch(_ROWS_SQL, topics, partitions)
    locked = {(r["topic"], r["partition"]) for r in rows}
    return rows, {(r["topic"], r["partition"]) for r in existing} - locked


async def claim(
    conn: asyncpg.Connection,
    topic: str,
    partition: int,
    owner: str | None,
    broker: Callable[[], Awaitable[BrokerPartition]],
    from_end: bool,
) -> Claim:
    """Take one partition for ``owner`` (:func:`claim_many` for one); ``broker`` reads its watermarks."""

    async def read(_: list[TopicPartition]) -> dict[TopicPartition, BrokerPartition]:
        return {(topic, partition): await broker()}

    (claimed,) = await claim_many(conn, [ClaimRequest(topic, partition, owner, from_end)], read)
    return claimed


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


_DISOWN_SQL = """
UPDATE loom_offsets AS o SET owner = NULL, updated_at = now()
FROM unnest($1::text[], $2::integer[], $3::bigint[]) AS r(topic, "partition", epoch)
WHERE o.topic = r.topic AND o."partition" = r."partition" AND o.epoch = r.epoch AND o.owner IS NOT NULL
"""


async def disown(conn: asyncpg.Connection, released: dict[tuple[str, int], int]) -> int:
    """Clear the owner of partitions handed back cleanly (``(topic, partition) -> epoch`` of the released
    claim); a partition claimed again since (a newer epoch) keeps its new owner. The number cleared."""
    status = await conn.execute(
        _DISOWN_SQL, [tp[0] for tp in released], [tp[1] for tp in released], list(released.values())
    )
    return int(status.rsplit(" ", 1)[1])  # "UPDATE <rows>"
