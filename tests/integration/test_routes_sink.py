"""The routed flush on a real PostgreSQL, without Kafka or Ray: batches built as the consumer builds them
(:mod:`loom_ray.routes.convert`), written by the real sink with the offset compare-and-set.

What it shows: last-writer-wins per key inside one batch, with upserts and deletes of the same key in
either order; a row the user's table refuses (a CHECK) becomes a dead letter at stage db_row and the rest
commits; the counts in loom_route_counts; and that a flush without routes leaves no staging table behind.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import asyncpg
import orjson

from loom_ray.batch import PartitionBatch
from loom_ray.decode import Rejection
from loom_ray.errors import RouteTableError
from loom_ray.migrate import migrate
from loom_ray.routes.convert import RoutedRecord, convert, plan, tombstone
from loom_ray.routes.model import Route, RouteSet
from loom_ray.routes.tables import prepare_tables
from loom_ray.sink.codecs import install_codecs
from loom_ray.sink.postgres import PostgresSink
from tests.support.claims import claim_at
from tests.support.services import Endpoints


def _route(topic: str, **overrides: Any) -> Route:
    spec: dict[str, Any] = {
        "name": "accounts",
        "topic": topic,
        "table": "accounts",
        "mode": "upsert",
        "key": ["id"],
        "on_tombstone": "delete",
        "auto_create": True,
        "columns": {
            "id": {"type": "bigint", "from": "key"},
            "owner": {"type": "text", "required": True},
            "balance": {"type": "numeric"},
            "src_offset": {"type": "bigint", "from": "offset"},
        },
    }
    return Route.model_validate({**spec, **overrides})


def _batch(route: Route, epoch: int, start: int, records: list[tuple[bytes, dict[str, Any] | None]]) -> PartitionBatch:
    """A batch of ``records`` (key, value or None for a tombstone) from offset ``start``, as the consumer adds
    them: converted, or dead letters for those that do not fit (their count only: not needed here)."""
    assert route.topic is not None
    batch = PartitionBatch(route.topic, 0, epoch, start, route=route)
    route_plan = plan(route)
    for offset, (key, value) in enumerate(records, start):
        raw = None if value is None else orjson.dumps(value)
        values = (
            tombstone(route_plan, key)
            if value is None
            else convert(route_plan, value, key, None, (0, 0), route.topic, 0, offset)
        )
        assert not isinstance(values, Rejection), values
        batch.add_row(offset, RoutedRecord(offset, value is None, values, key, raw, None), 1, 0)
    return batch


async def _scenario(dsn: str, topic: str) -> dict[str, Any]:
    schema = f"loom_{topic.replace('-', '_')}"
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=2, init=install_codecs, server_settings={"search_path": schema}
    )
    assert pool is not None
    route = _route(topic)
    try:
        async with pool.acquire() as conn:
            await migrate(conn, schema=schema)
            await prepare_tables(conn, RouteSet(route=(route,)), schema)
            await conn.execute("ALTER TABLE accounts ADD CONSTRAINT no_overdraft CHECK (balance >= 0)")
            claim = await claim_at(conn, topic, 0, "routes-sink")
        sink = PostgresSink(pool, "routes-sink", 1024, default_schema=schema)
        first = _batch(
            route,
            claim.epoch,
            0,
            [
                (b"1", {"owner": "ann", "balance": 10}),
                (b"2", {"owner": "bob", "balance": 20}),
                (b"1", {"owner": "ann", "balance": 11}),  # a later write of key 1 in the same batch wins
                (b"2", None),  # bob deleted after his upsert
                (b"3", None),  # a delete, then an upsert of key 3: the upsert wins
                (b"3", {"owner": "cy", "balance": 30}),
                (b"4", {"owner": "dee", "balance": -5}),  # refused by the table's CHECK: a dead letter
                (b"5", {"owner": "eve", "balance": 50}),
                (b"5", {"owner": "eve", "balance": -1}),  # refused: eve keeps her earlier write
            ],
        )
        first_result = await sink.write([first])
        second = _batch(
            route,
            claim.epoch,
            first.end,
            [(b"1", {"owner": "ann", "balance": 12}), (b"3", None), (b"6", None)],  # across batches
        )
        second_result = await sink.write([second])
        async with pool.acquire() as conn:
            rows = [
                tuple(r) for r in await conn.fetch("SELECT id, owner, balance, src_offset FROM accounts ORDER BY id")
            ]
            dead = [
                (r["offset"], r["error_class"], r["stage"], r["error_message"])
                for r in await conn.fetch(
                    'SELECT "offset", error_class, stage, error_message FROM loom_dead_letters ORDER BY "offset"'
                )
            ]
            counts = tuple(
                await conn.fetchrow("SELECT inserted, upserted, deleted, dead_letters FROM loom_route_counts") or ()
            )
            view = tuple(
                await conn.fetchrow(
                    "SELECT route, topics, inserted, upserted, deleted, dead_letters FROM v_route_counts"
                )
                or ()
            )
            next_offset = await conn.fetchval("SELECT next_offset FROM loom_offsets WHERE topic = $1", topic)
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        return {
            "rows": rows,
            "dead": dead,
            "counts": counts,
            "view": view,
            "next_offset": next_offset,
            "results": [(r.rows, r.dead_letters) for r in (first_result, second_result)],
        }
    finally:
        await pool.close()


def test_last_writer_wins_deletes_and_refused_rows(endpoints: Endpoints, topic_name: str) -> None:
    found = asyncio.run(_scenario(endpoints.dsn, topic_name))
    # Key 1: its last write (offset 9, the second batch); 2: deleted after its upsert; 3: upserted after its
    # delete, then deleted by the second batch; 4: refused; 5: its last write refused, the one before kept.
    assert found["rows"] == [(1, "ann", Decimal(12), 9), (5, "eve", Decimal(50), 7)]
    assert [(o, c, s) for o, c, s, _ in found["dead"]] == [
        (6, "CheckViolationError", "db_row"),
        (8, "CheckViolationError", "db_row"),
    ]
    assert all(m.startswith("route 'accounts': ") and "no_overdraft" in m for *_, m in found["dead"])
    # Records, not rows: 12 = 6 upserts + 4 deletes applied + 2 dead letters.
    assert found["counts"] == (0, 6, 4, 2)
    assert found["view"] == ("accounts", 1, 0, 6, 4, 2)
    assert found["results"] == [(7, 2), (3, 0)]
    assert found["next_offset"] == 12


async def _evolve(dsn: str, topic: str) -> tuple[str, list[str]]:
    """A table lacking two of the route's columns: refused without ``add_columns``, extended with it."""
    schema = f"loom_{topic.replace('-', '_')}"
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        await conn.execute(f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.accounts (id bigint PRIMARY KEY)")
        route = _route(topic, auto_create=False)
        try:
            await prepare_tables(conn, RouteSet(route=(route,)), schema)
            refused = ""
        except RouteTableError as exc:
            refused = str(exc)
        evolving = _route(topic, auto_create=False, add_columns=True)
        await prepare_tables(conn, RouteSet(route=(evolving,)), schema)
        columns = await conn.fetch(
            "SELECT column_name, is_nullable FROM information_schema.columns WHERE table_schema = $1 "
            "ORDER BY ordinal_position",
            schema,
        )
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        return refused, [f"{c['column_name']}:{c['is_nullable']}" for c in columns]
    finally:
        await conn.close()


def test_add_columns_extends_an_existing_table_only_when_asked(endpoints: Endpoints, topic_name: str) -> None:
    refused, columns = asyncio.run(_evolve(endpoints.dsn, topic_name))
    assert "column owner is missing" in refused and "set add_columns = true" in refused
    assert columns == ["id:NO", "owner:YES", "balance:YES", "src_offset:YES"]
