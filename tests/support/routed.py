"""The routed flush on a real PostgreSQL without Kafka or Ray: routes read from TOML, tables prepared as the
driver prepares them, records converted as the consumer converts them, flushes written by the real sink."""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from loom_ray.batch import PartitionBatch
from loom_ray.decode import Rejection, decode_document
from loom_ray.migrate import migrate
from loom_ray.routes.convert import RoutedRecord, convert, tombstone
from loom_ray.routes.model import RouteSet
from loom_ray.routes.tables import prepare_tables
from loom_ray.sink.codecs import install_codecs
from loom_ray.sink.postgres import FlushResult, PostgresSink
from loom_ray.sink.routed import RouteTables
from tests.support.claims import claim_at


@dataclass(frozen=True)
class Record:
    """A Kafka record as the consumer sees it: key, value (a JSON-able value, raw bytes, or None for a
    tombstone), headers, timestamp (ms, or None)."""

    key: bytes | None
    value: Any
    headers: list[tuple[str, bytes]] | None = None
    ts_ms: int | None = None

    def raw_value(self) -> bytes | None:
        if self.value is None or isinstance(self.value, bytes):
            return self.value
        return orjson.dumps(self.value)


@dataclass
class RoutedSink:
    """A schema with loom-ray's tables, the routes' tables prepared in it, and a sink writing to them."""

    pool: asyncpg.Pool
    schema: str
    routes: RouteSet
    tables: RouteTables
    sink: PostgresSink
    next_offset: dict[tuple[str, int], int] = field(default_factory=dict)
    epochs: dict[tuple[str, int], int] = field(default_factory=dict)
    validation: list[tuple[int, Rejection]] = field(default_factory=list)  # (offset, rejection) before the sink

    def batch(self, topic: str, records: Sequence[Record], partition: int = 0) -> PartitionBatch:
        """The next batch of ``records`` of ``topic[partition]``, converted as the consumer converts them; a
        record that does not fit its route is a dead letter of the batch (its rejection in ``validation``)."""
        route = self.routes.route_for(topic)
        assert route is not None, topic
        route_plan = self.tables.plan_for(route)
        tp = (topic, partition)
        start = self.next_offset.get(tp, 0)
        batch = PartitionBatch(topic, partition, self.epochs[tp], start, plan=route_plan)
        for offset, record in enumerate(records, start):
            raw = record.raw_value()
            timestamp = (0, 0) if record.ts_ms is None else (1, record.ts_ms)
            if raw is None:
                values: Any = tombstone(route_plan, record.key, record.headers, timestamp, topic, partition, offset)
            else:
                document = decode_document(raw, 1 << 20)
                values = (
                    document
                    if isinstance(document, Rejection)
                    else convert(route_plan, document, record.key, record.headers, timestamp, topic, partition, offset)
                )
            if isinstance(values, Rejection):
                self.validation.append((offset, values))
                dead_letter = (topic, partition, offset, record.key, raw, None, None, None, values.error_class,
                               values.error_message, values.stage, None, 0)  # fmt: skip
                batch.add_dead_letter(offset, dead_letter, 1, 0)
                continue
            batch.add_row(offset, RoutedRecord(offset, raw is None, values, record.key, raw, None), 1, 0)
        self.next_offset[tp] = batch.end
        return batch

    async def write(self, *batches: PartitionBatch) -> FlushResult:
        return await self.sink.write(list(batches))

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self.pool.acquire() as conn:
            return [tuple(r) for r in await conn.fetch(sql, *args)]

    async def dead_letters(self, topic: str) -> list[tuple[int, str, str, str]]:
        """(offset, error_class, stage, error_message) of ``topic``'s dead letters, in offset order."""
        rows = await self.fetch(
            'SELECT "offset", error_class, stage, error_message FROM loom_dead_letters WHERE topic = $1 '
            'ORDER BY "partition", "offset"',
            topic,
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]


async def routed_sink(dsn: str, schema: str, routes_toml: str, *setup: str, partitions: int = 1) -> RoutedSink:
    """Migrate ``schema``, run the ``setup`` statements (the user's tables), prepare the routes' tables as the
    driver does at start and claim every routed topic's partitions; the sink on a consumer-like pool."""
    routes = RouteSet.model_validate(tomllib.loads(routes_toml))
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=2, init=install_codecs, server_settings={"search_path": f'"{schema}"'}
    )
    assert pool is not None
    try:
        async with pool.acquire() as conn:
            await migrate(conn, schema=schema)
            for statement in setup:
                await conn.execute(statement)
            shapes = await prepare_tables(conn, routes, schema)
            routes = routes.with_tables(shapes)
            epochs = {}
            for route in routes.routes:
                assert route.topic is not None
                for partition in range(partitions):
                    claim = await claim_at(conn, route.topic, partition, "routed-sink")
                    epochs[(route.topic, partition)] = claim.epoch
    except BaseException:
        await pool.close()
        raise
    tables = RouteTables(routes, schema)
    sink = PostgresSink(pool, "routed-sink", 1 << 16, routes=tables)
    return RoutedSink(pool, schema, routes, tables, sink, epochs=epochs)
