"""Paused topics (``python -m loom_ray.ctl pause|resume``): ``loom_paused``, one open row per paused topic.

ctl writes the rows, whether the job runs or not; the coordinator reads them at every round: it has the
owners of a paused topic's partitions flush and hand them back, and claims them no more, so they are neither
fetched nor flushed while their ``loom_offsets`` rows keep their place; once resumed, they are claimed again
from there. Rows are never deleted: a resumed topic keeps ``resumed_at`` and ``resumed_by``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg


@dataclass(frozen=True, slots=True)
class Paused:
    """A topic paused now: since when (epoch seconds), by whom, why, and by which operation."""

    since: float
    by: str
    reason: str | None
    operation: int

    def as_dict(self) -> dict[str, Any]:
        """Plain values for the coordinator's ``status()``."""
        return {"since": self.since, "by": self.by, "reason": self.reason, "operation": self.operation}


async def paused(conn: asyncpg.Connection, topics: Sequence[str]) -> dict[str, Paused]:
    """The topics of ``topics`` paused now."""
    rows = await conn.fetch(
        """SELECT topic, extract(epoch FROM paused_at)::float8 AS since, paused_by, reason, operation
           FROM loom_paused WHERE topic = ANY($1::text[]) AND resumed_at IS NULL""",
        list(topics),
    )
    return {row["topic"]: Paused(row["since"], row["paused_by"], row["reason"], row["operation"]) for row in rows}


async def pause(conn: asyncpg.Connection, topics: Sequence[str], operation: int, reason: str | None) -> list[str]:
    """Pause ``topics`` (in the caller's transaction); those that were not paused already."""
    rows = await conn.fetch(
        """INSERT INTO loom_paused (topic, operation, reason) SELECT unnest($1::text[]), $2, $3
           ON CONFLICT (topic) WHERE resumed_at IS NULL DO NOTHING RETURNING topic""",
        list(topics),
        operation,
        reason,
    )
    return sorted(row["topic"] for row in rows)


async def resume(conn: asyncpg.Connection, topics: Sequence[str], operation: int) -> list[str]:
    """Resume ``topics`` (in the caller's transaction); those that were paused."""
    rows = await conn.fetch(
        """UPDATE loom_paused SET resumed_at = now(), resumed_by = current_user, resume_operation = $2
           WHERE topic = ANY($1::text[]) AND resumed_at IS NULL RETURNING topic""",
        list(topics),
        operation,
    )
    return sorted(row["topic"] for row in rows)
