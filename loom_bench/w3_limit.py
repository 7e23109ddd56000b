"""W3's PostgreSQL limit: loom-ray's upsert statements on records held in memory, nothing else.

What the database alone can apply of W3, the ceiling for any system writing the same table this way. The first
``ROWS_IN_MEMORY`` messages are built, untimed, into the records loom-ray's route makes (its own conversion,
:mod:`loom_ray.routes.convert`, for the table as the catalog describes it). Then ``connections`` connections
at once, each holding the keys whose hash falls to it (as loom-ray's actors hold disjoint partitions, so no
two touch one key), repeat per batch of ``BATCH`` records what a routed flush does in PostgreSQL: one
transaction in which loom-ray's routed writer (:class:`loom_ray.sink.routed.RoutedWriter`) COPYs the batch
into the route's staging table and applies it (per key the net effect, tombstones delete) and counts it. Left
out: reading Kafka, decoding, the offset compare-and-set and the dead letters. Each connection repeats whole
passes over its records until the window is over (a pass cut short would leave a replayed prefix, not the
fold); the rate is the window's, from client-side commit times (:func:`loom_bench.stats.windowed`). The table
must then hold one row per key whose last record is not a tombstone (``correct``).
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
from loom_ray.batch import PartitionBatch
from loom_ray.routes.convert import RoutedRecord, RoutePlan, tombstone
from loom_ray.routes.convert import convert as convert_record
from loom_ray.routes.model import Route, RouteSet
from loom_ray.routes.tables import prepare_tables
from loom_ray.sink.codecs import install_codecs
from loom_ray.sink.routed import RoutedWriter, RouteTables

BATCH = 10_000
ROWS_IN_MEMORY = 200_000
KEY = 0  # a record's entity key: the route's first column, ``id``


def route(topic: str) -> Route:
    """W3's route, as loom-ray reads it from the harness's routes file (its key the first column, :data:`KEY`)."""
    found = routes(topic).routes[0]
    if [c.name for c in found.columns[:1]] != list(found.key):
        raise ValueError(f"W3's route must have its one key column first, not {found.key}")
    return found


def routes(topic: str) -> RouteSet:
    """W3's routes file, parsed."""
    return RouteSet.model_validate(tomllib.loads(w3.routes_toml(topic)))


def staged(route_plan: RoutePlan, topic: str, seq: int) -> RoutedRecord:
    """Message ``seq`` as loom-ray's consumer buffers it for its route."""
    key = w3.entity_key(seq).encode()
    if w3.is_tombstone(seq):
        values = tombstone(route_plan, key, None, (1, 0), topic, 0, seq)
        raw = None
    else:
        raw = w3.json_value(seq)
        values = convert_record(route_plan, orjson.loads(raw), key, None, (1, 0), topic, 0, seq)
    if not isinstance(values, tuple):
        raise ValueError(f"W3 message {seq} does not fit its route: {values}")
    return RoutedRecord(seq, raw is None, values, key, raw, None)


def shares(records: list[RoutedRecord], connections: int) -> list[list[RoutedRecord]]:
    """``records`` split by key hash into one list per connection, each in the original order."""
    found: list[list[RoutedRecord]] = [[] for _ in range(connections)]
    for record in records:
        found[zlib.crc32(str(record.values[KEY]).encode()) % connections].append(record)
    return found


async def measure(dsn: str, topic: str, messages: int, connections: int, window: Window) -> dict[str, Any]:
    """Apply W3's records over ``connections`` until ``window`` is over; the rate and what was applied."""
    conn = await asyncpg.connect(dsn)
    try:
        schema = await conn.fetchval("SELECT current_schema()")
        route_set = routes(topic)
        route_set = route_set.with_tables(await prepare_tables(conn, route_set, schema))
    finally:
        await conn.close()
    tables = RouteTables(route_set, schema)
    route_plan = tables.plan_for(route_set.routes[0])
    records = [staged(route_plan, topic, seq) for seq in range(min(messages, ROWS_IN_MEMORY))]
    commits: list[tuple[float, int]] = []
    deadline = time.monotonic() + window.total_s + 2.0

    async def one(mine: list[RoutedRecord]) -> None:
        conn = await asyncpg.connect(dsn)
        writer = RoutedWriter(tables)
        try:
            await install_codecs(conn)  # as loom-ray's pool: a timestamptz is staged as int microseconds
            while time.monotonic() < deadline:
                for start in range(0, len(mine), BATCH):
                    part = mine[start : start + BATCH]
                    batch = PartitionBatch(topic, 0, 0, part[0].offset, part[-1].offset + 1, plan=route_plan)
                    batch.rows.extend(part)
                    async with conn.transaction():
                        await writer.write(conn, [batch])
                    commits.append((time.time(), len(part)))
        finally:
            await conn.close()

    await asyncio.gather(*(one(mine) for mine in shares(records, connections)))
    rows = await _count(dsn, route_plan.table.label)
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


def expected_rows(records: list[RoutedRecord]) -> int:
    """Rows the table holds after the records are applied: keys whose last record is not a tombstone."""
    last = {record.values[KEY]: record.delete for record in records}
    return sum(1 for deleted in last.values() if not deleted)


async def _count(dsn: str, label: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {label}"))
    finally:
        await conn.close()
