"""``loom_dead_letters`` as the operations read and change it.

A dead letter is never deleted. A replay, or a rewind that reads it again, that makes it fit writes its row
(or route write) and marks it resolved (``resolved_at``, ``resolved_by``: the operation) in the same
transaction; one that still does not fit keeps it, with the new reason and one more attempt. Only the
unresolved ones are replayed again. Every change here runs in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from loom_ray.decode import Rejection
from loom_ray.ops.selection import Filter, where

Key = tuple[str, int, int, int]  # topic, partition, incarnation, offset


@dataclass(frozen=True, slots=True)
class Summary:
    """Dead letters of one topic, error class and stage: how many are open and resolved, first and last."""

    topic: str
    error_class: str
    stage: str
    open: int
    resolved: int
    first_failed: datetime
    last_failed: datetime


async def summary(conn: asyncpg.Connection, selected: Filter, topics: tuple[str, ...] | None) -> list[Summary]:
    """The dead letters ``selected`` picks (of ``topics``; None: of any topic), by topic, class and stage."""
    conditions, parameters = where(selected, topics)
    rows = await conn.fetch(
        f"""SELECT d.topic, d.error_class, d.stage,
                   count(*) FILTER (WHERE d.resolved_at IS NULL) AS open,
                   count(*) FILTER (WHERE d.resolved_at IS NOT NULL) AS resolved,
                   min(d.failed_at) AS first_failed, max(d.failed_at) AS last_failed
            FROM loom_dead_letters AS d WHERE {conditions}
            GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""",
        *parameters,
    )
    return [Summary(*row) for row in rows]


@dataclass(frozen=True, slots=True)
class Candidate:
    """An open dead letter a replay selected; ``current``: of the partition's current incarnation (the broker
    still has that log; an older incarnation's record cannot be read again)."""

    topic: str
    partition: int
    incarnation: int
    offset: int
    current: bool


async def candidates(conn: asyncpg.Connection, selected: Filter, topics: tuple[str, ...]) -> list[Candidate]:
    """The open dead letters ``selected`` picks among ``topics``, in partition and offset order."""
    conditions, parameters = where(selected, topics)
    rows = await conn.fetch(
        f"""SELECT d.topic, d."partition", d.incarnation, d."offset",
                   o.incarnation IS NOT DISTINCT FROM d.incarnation AS current
            FROM loom_dead_letters AS d LEFT JOIN loom_offsets AS o USING (topic, "partition")
            WHERE d.resolved_at IS NULL AND {conditions}
            ORDER BY 1, 2, 3, 4""",
        *parameters,
    )
    return [Candidate(*row) for row in rows]


async def lock_open(
    conn: asyncpg.Connection, topic: str, partition: int, incarnation: int, offsets: Sequence[int]
) -> dict[int, bytes | None]:
    """Lock those of ``offsets`` still open (a concurrent replay or re-read may have resolved some): offset ->
    the SHA-256 of the record's value (None for a tombstone)."""
    rows = await conn.fetch(
        """SELECT "offset", value_sha256 FROM loom_dead_letters
           WHERE topic = $1 AND "partition" = $2 AND incarnation = $3 AND "offset" = ANY($4::bigint[])
             AND resolved_at IS NULL
           ORDER BY "offset" FOR UPDATE""",
        topic,
        partition,
        incarnation,
        list(offsets),
    )
    return {row["offset"]: row["value_sha256"] for row in rows}


async def open_among(
    conn: asyncpg.Connection, topic: str, partition: int, incarnation: int, offsets: Iterable[int]
) -> set[int]:
    """Which of ``offsets`` are open dead letters (their records were never applied)."""
    rows = await conn.fetch(
        """SELECT "offset" FROM loom_dead_letters
           WHERE topic = $1 AND "partition" = $2 AND incarnation = $3 AND "offset" = ANY($4::bigint[])
             AND resolved_at IS NULL""",
        topic,
        partition,
        incarnation,
        list(offsets),
    )
    return {row["offset"] for row in rows}


async def open_in_ranges(
    conn: asyncpg.Connection, ranges: Sequence[tuple[str, int, int, int, int]]
) -> dict[tuple[str, int], set[int]]:
    """The open dead letters in each ``(topic, partition, incarnation, from_offset, to_offset)`` range,
    locked for the caller's transaction: ``(topic, partition) -> offsets``."""
    rows = await conn.fetch(
        """SELECT d.topic, d."partition", d."offset"
           FROM loom_dead_letters AS d
           JOIN unnest($1::text[], $2::int[], $3::int[], $4::bigint[], $5::bigint[])
                AS r(topic, "partition", incarnation, from_offset, to_offset)
             ON d.topic = r.topic AND d."partition" = r."partition" AND d.incarnation = r.incarnation
            AND d."offset" >= r.from_offset AND d."offset" < r.to_offset
           WHERE d.resolved_at IS NULL
           ORDER BY 1, 2, 3 FOR UPDATE OF d""",
        *(list(column) for column in zip(*ranges, strict=True)),
    )
    found: dict[tuple[str, int], set[int]] = {}
    for row in rows:
        found.setdefault((row["topic"], row["partition"]), set()).add(row["offset"])
    return found


async def resolve(conn: asyncpg.Connection, resolved: Sequence[tuple[Key, int | None]]) -> None:
    """Mark dead letters resolved, each by its operation (their rows were written in this transaction)."""
    if not resolved:
        return
    await conn.execute(
        """UPDATE loom_dead_letters AS d
           SET resolved_at = now(), resolved_by = k.operation, attempts = d.attempts + 1, attempted_at = now()
           FROM unnest($1::text[], $2::int[], $3::int[], $4::bigint[], $5::bigint[])
                AS k(topic, "partition", incarnation, "offset", operation)
           WHERE d.topic = k.topic AND d."partition" = k."partition" AND d.incarnation = k.incarnation
             AND d."offset" = k."offset" AND d.resolved_at IS NULL""",
        [key[0] for key, _ in resolved],
        [key[1] for key, _ in resolved],
        [key[2] for key, _ in resolved],
        [key[3] for key, _ in resolved],
        [operation for _, operation in resolved],
    )


async def fail_again(conn: asyncpg.Connection, failed: Sequence[tuple[Key, Rejection]]) -> None:
    """Keep dead letters that still do not fit, each with its new reason and one more attempt."""
    if not failed:
        return
    await conn.execute(
        """UPDATE loom_dead_letters AS d
           SET error_class = k.error_class, error_message = k.error_message, stage = k.stage,
               sqlstate = k.sqlstate, attempts = d.attempts + 1, attempted_at = now()
           FROM unnest($1::text[], $2::int[], $3::int[], $4::bigint[], $5::text[], $6::text[], $7::text[],
                       $8::text[])
                AS k(topic, "partition", incarnation, "offset", error_class, error_message, stage, sqlstate)
           WHERE d.topic = k.topic AND d."partition" = k."partition" AND d.incarnation = k.incarnation
             AND d."offset" = k."offset" AND d.resolved_at IS NULL""",
        [key[0] for key, _ in failed],
        [key[1] for key, _ in failed],
        [key[2] for key, _ in failed],
        [key[3] for key, _ in failed],
        [rejection.error_class for _, rejection in failed],
        [rejection.error_message[:2000] for _, rejection in failed],
        [rejection.stage for _, rejection in failed],
        [rejection.sqlstate for _, rejection in failed],
    )


@dataclass(slots=True)
class CountChange:
    """What an operation changes in one ``loom_route_counts`` row: a record that was counted as a dead letter
    and is now applied (or left out as stale) is counted once, as what it is now."""

    dead_letters: int = 0
    stale: int = 0


async def recount(conn: asyncpg.Connection, changes: Mapping[tuple[str, str, int], CountChange]) -> None:
    """Apply ``(route, topic, partition) -> CountChange`` to ``loom_route_counts``."""
    items = [(key, change) for key, change in changes.items() if change.dead_letters or change.stale]
    if not items:
        return
    await conn.execute(
        """UPDATE loom_route_counts AS c
           SET dead_letters = c.dead_letters + k.dead_letters, stale = c.stale + k.stale, updated_at = now()
           FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[], $5::bigint[])
                AS k(route, topic, "partition", dead_letters, stale)
           WHERE c.route = k.route AND c.topic = k.topic AND c."partition" = k."partition\"""",
        [route for (route, _, _), _ in items],
        [topic for (_, topic, _), _ in items],
        [partition for (_, _, partition), _ in items],
        [change.dead_letters for _, change in items],
        [change.stale for _, change in items],
    )
