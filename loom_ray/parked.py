"""``loom_parked`` (``sql/009_parked.sql``): the partitions the coordinator parked, so a restarted coordinator
keeps them parked.

The coordinator reads the open rows of its topics at its first round, inserts one when it parks a partition
(:mod:`loom_ray.policy.parking`), and closes them (``unparked_at``, ``unparked_by``) when ``python -m
loom_ray.ctl unpark`` asks it to. Rows are never deleted; ``v_consumer_alerts`` shows each open one as a
``parked`` alert.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import asyncpg

from loom_ray.policy.assignment import TopicPartition
from loom_ray.policy.parking import Parked

_LOAD_SQL = """
SELECT topic, "partition", error, faults, extract(epoch FROM first_fault_at)::float8 AS first_fault_at,
       extract(epoch FROM parked_at)::float8 AS parked_at
FROM loom_parked WHERE topic = ANY($1::text[]) AND unparked_at IS NULL
"""

_PARK_SQL = """
INSERT INTO loom_parked (topic, "partition", error, faults, first_fault_at, parked_at)
SELECT topic, "partition", error, faults, to_timestamp(first_fault_at), to_timestamp(parked_at)
FROM unnest($1::text[], $2::int[], $3::text[], $4::int[], $5::float8[], $6::float8[])
     AS r(topic, "partition", error, faults, first_fault_at, parked_at)
ON CONFLICT (topic, "partition") WHERE unparked_at IS NULL DO NOTHING
"""

_UNPARK_SQL = """
UPDATE loom_parked AS p SET unparked_at = now(), unparked_by = coalesce($3, current_user)
FROM unnest($1::text[], $2::int[]) AS r(topic, "partition")
WHERE p.topic = r.topic AND p."partition" = r."partition" AND p.unparked_at IS NULL
RETURNING p.topic, p."partition", p.unparked_by
"""


async def load(conn: asyncpg.Connection, topics: Sequence[str]) -> dict[TopicPartition, Parked]:
    """The partitions of ``topics`` parked now."""
    rows = await conn.fetch(_LOAD_SQL, list(topics))
    return {
        (r["topic"], r["partition"]): Parked(r["error"], r["faults"], r["first_fault_at"], r["parked_at"]) for r in rows
    }


async def park(conn: asyncpg.Connection, parked: Mapping[TopicPartition, Parked]) -> None:
    """Record partitions as parked; one already parked keeps its row."""
    items = sorted(parked.items())
    await conn.execute(
        _PARK_SQL,
        [t for (t, _), _ in items],
        [p for (_, p), _ in items],
        [row.error for _, row in items],
        [row.faults for _, row in items],
        [row.first_fault_at for _, row in items],
        [row.parked_at for _, row in items],
    )


async def unpark(
    conn: asyncpg.Connection, partitions: Sequence[TopicPartition], by: str | None
) -> dict[TopicPartition, str]:
    """Close the open rows of ``partitions`` (by ``by``, else the connection's database role); ``partition ->
    unparked_by`` of those that had one."""
    rows = await conn.fetch(_UNPARK_SQL, [t for t, _ in partitions], [p for _, p in partitions], by)
    return {(r["topic"], r["partition"]): r["unparked_by"] for r in rows}
