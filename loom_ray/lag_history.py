"""The progress history, ``consumer_lag_history``: one row per partition per lag sample, kept for a while.

The coordinator appends a sample of every partition each ``LOOM_LAG_SAMPLE_INTERVAL_S`` and deletes the
samples older than ``LOOM_LAG_HISTORY_RETENTION_S``. Deletes go in small batches along the ``sampled_at``
index, each its own short statement: the views (which read the last minutes) and the next sample never
wait on a long delete, and a large backlog (a first prune after months) is worked off over several rounds.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from loom_ray.policy.assignment import TopicPartition
from loom_ray.policy.lag_health import WINDOW_SAMPLES, Sample

_INSERT_SQL = """
INSERT INTO consumer_lag_history (topic, "partition", next_offset, high_watermark, owner)
VALUES ($1, $2, $3, $4, $5)
"""

# The oldest rows first, along consumer_lag_history_sampled_at: a batch touches only rows it deletes.
_PRUNE_SQL = """
DELETE FROM consumer_lag_history
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM consumer_lag_history
    WHERE sampled_at < now() - make_interval(secs => $1)
    ORDER BY sampled_at
    LIMIT $2
))
"""

# Each partition's newest samples, read backwards along the primary key (topic, partition, sampled_at).
_WINDOWS_SQL = """
SELECT p.topic, p."partition", extract(epoch FROM w.sampled_at)::float8 AS sampled_at, w.next_offset, w.lag,
       extract(epoch FROM now())::float8 AS now
FROM unnest($1::text[], $2::int[]) AS p(topic, "partition")
CROSS JOIN LATERAL (
    SELECT h.sampled_at, h.next_offset, h.lag
    FROM consumer_lag_history AS h
    WHERE h.topic = p.topic AND h."partition" = p."partition"
    ORDER BY h.sampled_at DESC
    LIMIT $3
) AS w
ORDER BY p.topic, p."partition", w.sampled_at
"""


async def record(pool: asyncpg.Pool, samples: Iterable[tuple[str, int, int, int, str | None]]) -> None:
    """Append one sample per ``(topic, partition, next_offset, high_watermark, owner)``."""
    await pool.executemany(_INSERT_SQL, list(samples))


async def prune(conn: asyncpg.Connection, retention_s: float, batch_rows: int, max_batches: int) -> tuple[int, bool]:
    """Delete samples older than ``retention_s``, ``batch_rows`` per statement, at most ``max_batches``
    statements; ``(rows deleted, finished)``, where ``finished`` is False while older samples remain."""
    deleted = 0
    for _ in range(max_batches):
        status = await conn.execute(_PRUNE_SQL, retention_s, batch_rows)
        rows = int(status.rsplit(" ", 1)[1])  # "DELETE <rows>"
        deleted += rows
        if rows < batch_rows:
            return deleted, True
    return deleted, False


async def windows(
    conn: asyncpg.Connection, partitions: list[TopicPartition], samples: int = WINDOW_SAMPLES
) -> tuple[dict[TopicPartition, list[Sample]], float]:
    """Each partition's newest ``samples`` samples, oldest first (a partition without any is left out), and
    PostgreSQL's clock now (seconds since the epoch: the samples' ``sampled_at`` is PostgreSQL's ``now()``)."""
    rows = await conn.fetch(_WINDOWS_SQL, [t for t, _ in partitions], [p for _, p in partitions], samples)
    found: dict[TopicPartition, list[Sample]] = {}
    for row in rows:
        found.setdefault((row["topic"], row["partition"]), []).append(
            Sample(row["sampled_at"], row["next_offset"], row["lag"])
        )
    now = rows[0]["now"] if rows else float(await conn.fetchval("SELECT extract(epoch FROM now())::float8"))
    return found, now
