"""``loom_sink_errors``: the coordinator's record of consumers whose flushes PostgreSQL refuses.

Written once per health-check round from the consumers' ``stats()["blocked"]``
(:meth:`loom_ray.policy.sink_errors.Blocker.as_dict`); ``v_consumer_alerts`` shows each live row as a
``sink_blocked`` alert on the partitions its owner holds. Rows are cleared (``cleared_at``), never deleted, so
the least-privilege role needs no DELETE.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg

_UPSERT_SQL = """
INSERT INTO loom_sink_errors AS e (owner, sqlstate, condition, message, fix, first_seen, last_seen)
SELECT b.owner, b.sqlstate, b.condition, b.message, b.fix, to_timestamp(b.since), now()
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::float8[])
     AS b(owner, sqlstate, condition, message, fix, since)
ON CONFLICT (owner) DO UPDATE
    SET sqlstate = EXCLUDED.sqlstate, condition = EXCLUDED.condition, message = EXCLUDED.message,
        fix = EXCLUDED.fix, first_seen = EXCLUDED.first_seen, last_seen = now(), cleared_at = NULL
"""

_CLEAR_SQL = "UPDATE loom_sink_errors SET cleared_at = now() WHERE owner = ANY($1::text[]) AND cleared_at IS NULL"


async def record(conn: asyncpg.Connection, blocked: Mapping[str, Mapping[str, Any]], cleared: Iterable[str]) -> None:
    """Upsert each owner's blocker (``owner -> Blocker.as_dict()``) and clear ``cleared``, in one transaction."""
    owners = sorted(blocked)
    columns = [
        [blocked[owner][key] for owner in owners] for key in ("sqlstate", "condition", "message", "fix", "since")
    ]
    async with conn.transaction():
        if owners:
            await conn.execute(_UPSERT_SQL, owners, *columns)
        await conn.execute(_CLEAR_SQL, sorted(cleared))
