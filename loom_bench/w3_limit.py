"""W3's PostgreSQL limit: loom-ray's upsert statements on records held in memory, nothing else.

What the database alone can apply of W3, the ceiling for any system writing the same table this way. The
first ``ROWS_IN_MEMORY`` messages are built, untimed, into the staged records loom-ray's route makes (its own
conversion, :mod:`loom_ray.routes.convert`). Then ``connections`` connections at once, each holding the keys
whose hash falls to it (as loom-ray's actors hold disjoint partitions, so no two touch one key), repeat per
batch of ``BATCH`` records what a routed flush does in PostgreSQL: one transaction that COPYs the batch into
the route's staging table and runs the route's one set-based statement
(:func:`loom_ray.routes.sql.apply_sql`: last writer per key, tombstones delete). Left out: reading Kafka,
decoding, the offset compare-and-set and the dead letters. Each connection repeats whole passes over its
records until the window is over (a pass cut short would leave a replayed prefix, not the fold); the rate is
the window's, from client-side commit times (:func:`loom_bench.stats.windowed`). The table must then hold
one row per key whose last record is not a tombstone (``correct``).
"""

from __future__ import annotations

import asyncio
import time
import tomllib
import zlib
from typing import Any

import asyncpg
import orjson

from loom_bench import w3
from loom_bench.config import Window
from loom_bench.stats import drain_rate, windowed
from loom_ray.routes.convert import RoutePlan, plan, tombstone
from loom_ray.routes.convert import convert as convert_record
from loom_ray.routes.model import Route, RouteSet
from loom_ray.routes.sql import apply_sql, create_stage_sql, stage_columns, stage_name, table_name
from loom_ray.sink.codecs import install_codecs

BATCH = 10_000
ROWS_IN_MEMORY = 200_000
Staged = tuple[Any, ...]  # (delete, *column values): _loom_ord is added per batch
KEY = 1  # a staged record's entity key: the route's first column, ``id``, right after the delete flag


def route(topic: str) -> Route:
    """W3's route, as loom-ray reads it from the harness's routes file (its key the first column, :data:`KEY`)."""
    found = RouteSet.model_validate(tomllib.loads(w3.routes_toml(topic))).routes[0]
    if [c.name for c in found.columns[:1]] != list(found.key):
        raise ValueError(f"W3's route must have its one key column first, not {found.key}")
    return found


def staged(route_plan: RoutePlan, topic: str, seq: int) -> Staged:
    """Message ``seq`` as loom-ray stages it: (is a tombstone, *values in column order)."""
    key = w3.entity_key(seq).encode()
    if w3.is_tombstone(seq):
        values = tombstone(route_plan, key)
    else:
        document = orjson.loads(w3.json_value(seq))
        values = convert_record(route_plan, document, key, None, (1, 0), topic, 0, seq)
    if not isinstance(values, tuple):
        raise ValueError(f"W3 message {seq} does not fit its route: {values}")
    return (w3.is_tombstone(seq), *values)


def shares(records: list[Staged], connections: int) -> list[list[Staged]]:
    """``records`` split by key hash into one list per connection, each in the original order."""
    found: list[list[Staged]] = [[] for _ in range(connections)]
    for record in records:
        found[zlib.crc32(str(record[KEY]).encode()) % connections].append(record)
    return found


async def measure(dsn: str, topic: str, messages: int, connections: int, window: Window) -> dict[str, Any]:
    """Apply W3's records over ``connections`` until ``window`` is over; the rate and what was applied."""
    the_route = route(topic)
    route_plan = plan(the_route)
    records = [staged(route_plan, topic, seq) for seq in range(min(messages, ROWS_IN_MEMORY))]
    commits: list[tuple[float, int]] = []
    deadline = time.monotonic() + window.total_s + 2.0

    async def one(mine: list[Staged]) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await install_codecs(conn)  # as loom-ray's pool: a timestamptz is staged as int microseconds
            schema = await conn.fetchval("SELECT current_schema()")
            apply = apply_sql(the_route, schema)
            await conn.execute(create_stage_sql(the_route))
            while time.monotonic() < deadline:
                for start in range(0, len(mine), BATCH):
                    batch = [(ord_, *r) for ord_, r in enumerate(mine[start : start + BATCH])]
                    async with conn.transaction():
                        await conn.copy_records_to_table(
                            stage_name(the_route), records=batch, columns=stage_columns(the_route)
                        )
                        await conn.execute(apply, 0, len(batch))
                    commits.append((time.time(), len(batch)))
        finally:
            await conn.close()

    await asyncio.gather(*(one(mine) for mine in shares(records, connections)))
    rows = await _count(dsn, the_route)
    rate = windowed(commits, window.warmup_s, window.seconds) if window.timed else drain_rate(commits)
    return {
        "variant": f"upsert_only_{connections}conn",
        "msgs_per_s": None if rate is None else rate.msgs_per_s,
        "window_s": None if rate is None else round(rate.seconds, 2),
        "applied": sum(n for _, n in commits),
        "records_in_memory": len(records),
        "rows": rows,
        "correct": rows == expected_rows(records),
    }


def expected_rows(records: list[Staged]) -> int:
    """Rows the table holds after the records are applied: keys whose last record is not a tombstone."""
    last = {record[KEY]: record[0] for record in records}
    return sum(1 for deleted in last.values() if not deleted)


async def _count(dsn: str, the_route: Route) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        schema = await conn.fetchval("SELECT current_schema()")
        return int(await conn.fetchval(f"SELECT count(*) FROM {table_name(the_route, schema)}"))
    finally:
        await conn.close()
