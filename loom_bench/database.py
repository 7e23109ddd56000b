"""The bench database: creation, a fresh table before every run, and what PostgreSQL says afterwards.

Every number about a sink comes from PostgreSQL itself: commit times from ``pg_xact_commit_timestamp(xmin)``
(``track_commit_timestamp`` must be on), exactness from ``count(*)`` against ``count(DISTINCT ...)``.
Systems other than loom-ray write to ``events``, which has the columns of ``loom_messages``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from loom_ray.migrate import SQL_DIR, migrate

Schema = Literal["events", "loom", "none"]
Sink = Literal["events", "loom"]  # a schema that holds rows

# The peers write to ``events``: the same DDL as loom_messages (made from it), in a table of their own. Both
# keep autovacuum on, as in production (since PostgreSQL 13 it also runs on insert-only tables); the bench
# shows its CPU apart (loom_bench.measure.pg_part).
EVENTS_DDL = "CREATE TABLE events (LIKE loom_messages INCLUDING ALL)"
# When loom-ray (B4, B5) claims a partition for the first time it inserts its loom_offsets row and starts
# reading right after: the first claim marks the start of consumption, which commit times cannot show.
_CLAIM_WITNESS = """
CREATE TABLE bench_claims (claimed_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION bench_note_claim() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN INSERT INTO bench_claims DEFAULT VALUES; RETURN NULL; END $$;
CREATE TRIGGER bench_note_claim AFTER INSERT ON loom_offsets FOR EACH ROW EXECUTE FUNCTION bench_note_claim();
"""
EVENT_COLUMNS = ("topic", "partition", "offset", "key", "payload", "headers", "kafka_ts")

# The rows a system wrote, as one relation with topic, partition, offset, kafka_ts and xmin.
_SOURCES: dict[Sink, str] = {
    "events": 'SELECT topic, "partition", "offset", kafka_ts, xmin FROM events',
    "loom": 'SELECT topic, "partition", "offset", kafka_ts, xmin FROM loom_messages UNION ALL '
    'SELECT topic, "partition", "offset", NULL, xmin FROM loom_dead_letters',
}


def with_database(dsn: str, database: str) -> str:
    """The same DSN pointing at another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


async def ensure_database(dsn: str, database: str, synchronous_commit: str) -> None:
    """Create ``database`` if missing and pin ``synchronous_commit`` for every session in it."""
    conn = await asyncpg.connect(with_database(dsn, "postgres"))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{database}"')
        await conn.execute(f'ALTER DATABASE "{database}" SET synchronous_commit = {synchronous_commit}')
    finally:
        await conn.close()


async def drop_database(dsn: str, database: str) -> None:
    """Drop the bench database (after the smoke run); connections to it are ended first."""
    conn = await asyncpg.connect(with_database(dsn, "postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()


async def reset(dsn: str, schema: Schema) -> None:
    """Drop everything, recreate the table(s) ``schema`` needs, and CHECKPOINT."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public")
        if schema == "events":
            await conn.execute((SQL_DIR / "001_core.sql").read_text())
            await conn.execute(EVENTS_DDL)
        elif schema == "loom":
            await migrate(conn)
            await conn.execute(_CLAIM_WITNESS)
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def commits(dsn: str, schema: Sink, topic: str) -> list[tuple[float, int]]:
    """``(commit time, rows)`` per transaction that wrote rows of ``topic``."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            f"""SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 AS ts, count(*) AS n
                FROM ({_SOURCES[schema]}) AS s WHERE topic = $1 GROUP BY 1""",
            topic,
        )
    finally:
        await conn.close()
    return [(float(r["ts"]), int(r["n"])) for r in rows if r["ts"] is not None]


async def first_claim(dsn: str) -> float | None:
    """When loom-ray claimed its first partition (epoch seconds), if it did."""
    conn = await asyncpg.connect(dsn)
    try:
        value = await conn.fetchval("SELECT extract(epoch FROM min(claimed_at))::float8 FROM bench_claims")
    finally:
        await conn.close()
    return None if value is None else float(value)


@dataclass(frozen=True, slots=True)
class Exactness:
    """What landed for a topic: rows, distinct offsets, and what is missing or doubled."""

    rows: int
    distinct: int
    lost: int
    duplicated: int


async def exactness(dsn: str, schema: Sink, topic: str, expected: int | None) -> Exactness:
    """Count rows against distinct (partition, offset).

    ``lost`` is ``expected - distinct`` when the whole topic (``expected`` messages) was due; otherwise (a
    run stopped after its window) the offsets missing below each partition's highest written offset.
    """
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            f"""WITH s AS (SELECT "partition", "offset" FROM ({_SOURCES[schema]}) AS s WHERE topic = $1)
                SELECT (SELECT count(*) FROM s) AS n, (SELECT count(DISTINCT ("partition", "offset")) FROM s) AS d,
                       (SELECT coalesce(sum(top), 0) FROM
                           (SELECT max("offset") + 1 AS top FROM s GROUP BY "partition") AS t) AS span""",
            topic,
        )
    finally:
        await conn.close()
    assert row is not None
    rows, distinct = int(row["n"]), int(row["d"])
    lost = int(row["span"]) - distinct if expected is None else max(0, expected - distinct)
    return Exactness(rows, distinct, lost, rows - distinct)


async def has_rows(dsn: str, schema: Sink) -> bool:
    """Whether the system committed its first row (the start of a timed window)."""
    table = "loom_messages" if schema == "loom" else "events"
    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"))
    finally:
        await conn.close()


async def inserted(dsn: str) -> int:
    """Rows inserted into the bench database's tables so far (statistics: cheap, ~1 s behind)."""
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT coalesce(sum(n_tup_ins), 0) FROM pg_stat_user_tables"))
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class Landed:
    """Where a topic's messages went: rows, dead letters, and distinct offsets over both."""

    rows: int
    dead_letters: int
    distinct: int


async def landed(dsn: str, schema: Sink, topic: str) -> Landed:
    """Rows and dead letters of ``topic`` (only loom-ray has a dead-letter table)."""
    conn = await asyncpg.connect(dsn)
    try:
        table = "loom_messages" if schema == "loom" else "events"
        rows = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE topic = $1", topic)
        dead = 0
        if schema == "loom":
            dead = await conn.fetchval("SELECT count(*) FROM loom_dead_letters WHERE topic = $1", topic)
        distinct = await conn.fetchval(
            f'SELECT count(DISTINCT ("partition", "offset")) FROM ({_SOURCES[schema]}) AS s WHERE topic = $1', topic
        )
    finally:
        await conn.close()
    return Landed(int(rows), int(dead), int(distinct))


@dataclass(frozen=True, slots=True)
class Latency:
    """Kafka timestamp to PostgreSQL commit, in milliseconds, over the measured messages."""

    measured: int  # messages after the warm-up
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    produced_per_s: float | None


async def latency(dsn: str, schema: Sink, topic: str, warmup_s: float) -> Latency:
    """Latency percentiles of ``topic``'s rows, leaving out the first ``warmup_s`` of production."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            f"""WITH s AS (SELECT kafka_ts, pg_xact_commit_timestamp(xmin) AS committed
                           FROM ({_SOURCES[schema]}) AS s WHERE topic = $1 AND kafka_ts IS NOT NULL),
                     m AS (SELECT s.*, extract(epoch FROM committed - kafka_ts) * 1000 AS ms FROM s
                           WHERE kafka_ts >= (SELECT min(kafka_ts) FROM s) + make_interval(secs => $2))
                SELECT count(*) AS n,
                       percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY ms) AS p,
                       max(ms) AS worst,
                       count(*) / nullif(extract(epoch FROM max(kafka_ts) - min(kafka_ts)), 0) AS rate
                FROM m""",
            topic,
            warmup_s,
        )
    finally:
        await conn.close()
    assert row is not None
    p = row["p"] or [None, None, None]
    worst, rate = row["worst"], row["rate"]
    return Latency(
        int(row["n"]),
        p[0],
        p[1],
        p[2],
        None if worst is None else float(worst),
        None if rate is None else float(rate),
    )


async def checkpointer_pid(dsn: str) -> int | None:
    """The server's checkpointer process (a child of the postmaster that lives as long as the server)."""
    conn = await asyncpg.connect(dsn)
    try:
        pid = await conn.fetchval("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
    finally:
        await conn.close()
    return None if pid is None else int(pid)


async def server_info(dsn: str) -> dict[str, str]:
    """Server version and the settings that shape the numbers."""
    names = [
        "server_version",
        "shared_buffers",
        "max_wal_size",
        "checkpoint_timeout",
        "synchronous_commit",
        "fsync",
        "wal_level",
        "track_commit_timestamp",
        "max_connections",
    ]
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT name, current_setting(name) AS value FROM unnest($1::text[]) AS name", names)
    finally:
        await conn.close()
    return {r["name"]: r["value"] for r in rows}


async def loom_progress(dsn: str, topics: list[str]) -> tuple[int, int]:
    """``(partitions claimed, offsets committed)`` in ``loom_offsets`` for ``topics`` (B4/B5 live mode)."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS claimed, coalesce(sum(next_offset), 0) AS committed "
            "FROM loom_offsets WHERE topic = ANY($1::text[])",
            topics,
        )
    except asyncpg.UndefinedTableError:
        return 0, 0
    finally:
        await conn.close()
    assert row is not None
    return int(row["claimed"]), int(row["committed"])
