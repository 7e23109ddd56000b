"""Routes on the real broker, PostgreSQL and Ray: two topics into two of the user's tables, one consumer.

The real driver (``python -m loom_ray.main --exit-when-drained``) runs twice with a routes file: an
upsert route with tombstone deletes (``orders``: keys repeated inside one batch and across batches and
runs) and an insert route (``clicks``: one row per offset). Records that do not fit their columns become
dead letters naming the route, the column and the reason; the rest commits. The upsert table must equal
the last-writer-wins fold of the topic read back with a read_committed consumer. A table that does not fit
its route, and a routes file with a mistake, stop the start with a message that says what to change.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from confluent_kafka import Producer

from loom_bench.topic_fold import Record, last_writer_fold, read_topic
from loom_ray.loadgen.topic import ensure_topic
from tests.support.pipeline import pipeline_env, run_until_drained
from tests.support.services import ROOT, Endpoints

KEYS = 40
SEED = 11

ROUTES = """
[[route]]
name = "orders"
topic = "{orders}"
table = "{schema}.orders"
mode = "upsert"
key = ["order_id"]
on_tombstone = "delete"
auto_create = true

[route.columns]
order_id = {{ type = "bigint", from = "key" }}
customer = {{ type = "text", path = "customer.name", required = true }}
amount   = {{ type = "numeric", required = true }}
qty      = {{ type = "smallint" }}
placed   = {{ type = "timestamptz", path = "placed_at" }}
version  = {{ type = "integer", required = true }}
source   = {{ type = "text", from = "header", header = "source" }}

[[route]]
name = "clicks"
topic = "{clicks}"
table = "{schema}.clicks"
key = ["src_partition", "src_offset"]
auto_create = true

[route.columns]
src_partition = {{ type = "integer", from = "partition" }}
src_offset    = {{ type = "bigint", from = "offset" }}
user_id       = {{ type = "uuid", path = "user", required = true }}
url           = {{ type = "text", required = true }}
"""

# Values that do not fit the orders route, and the dead letter each must become: (error_class, column).
BAD_ORDERS: list[tuple[dict[str, Any], tuple[str, str]]] = [
    ({"customer": {"name": "x"}, "amount": "twelve", "version": 1}, ("WrongType", "amount")),
    ({"amount": 5, "version": 1}, ("MissingField", "customer")),
    ({"customer": {"name": "x"}, "amount": 5, "qty": 70_000, "version": 1}, ("OutOfRange", "qty")),
    ({"customer": {"name": "x"}, "amount": 5, "placed_at": "yesterday", "version": 1}, ("BadTimestamp", "placed")),
    ({"customer": {"name": "x"}, "amount": 5, "version": True}, ("WrongType", "version")),
]


def _good_order(rng: random.Random, version: int) -> dict[str, Any]:
    return {
        "customer": {"name": rng.choice(["ann", "bob", "cy"])},
        "amount": rng.choice([1, 2.5, "19.99", 1000]),
        "qty": rng.randint(1, 9),
        "placed_at": f"2024-05-{rng.randint(1, 28):02d}T10:00:00+02:00",
        "version": version,
    }


def _produce(endpoints: Endpoints, orders: str, clicks: str, phase: int, rng: random.Random) -> int:
    """One phase of records (orders: upserts with repeats, tombstones, bad values; clicks, 3 of 60 with a
    user that is not a UUID); the number of bad orders."""
    producer = Producer({"bootstrap.servers": endpoints.kafka, "enable.idempotence": True})
    bad = 0
    for version in range(phase * 1000, phase * 1000 + 400):
        key = str(rng.randrange(KEYS)).encode()
        draw = rng.random()
        if draw < 0.05:
            producer.produce(orders, key=key, value=None)  # a tombstone: deletes the order
        elif draw < 0.08:
            value, _ = BAD_ORDERS[bad % len(BAD_ORDERS)]
            bad += 1
            producer.produce(orders, key=key, value=orjson.dumps(value))
        else:
            value = _good_order(rng, version)
            producer.produce(orders, key=key, value=orjson.dumps(value), headers=[("source", b"web")])
    for n in range(60):
        user = "not-a-uuid" if n % 20 == 0 else f"{rng.getrandbits(128):032x}"
        producer.produce(clicks, key=None, value=orjson.dumps({"user": user, "url": f"/p/{n}"}))
    assert producer.flush(30) == 0
    return bad


def _expected_order(record: Record) -> tuple[Any, ...] | None:
    """The row a good order becomes, computed here without loom-ray's conversions; None for a bad one."""
    assert record.value is not None
    value = orjson.loads(record.value)
    if set(value) != {"customer", "amount", "qty", "placed_at", "version"}:  # every bad order lacks one
        return None
    amount = value["amount"]
    return (
        int(record.key or b""),
        value["customer"]["name"],
        Decimal(amount) if isinstance(amount, str | int) else Decimal(repr(amount)),
        value["qty"],
        value["version"],
        "web",
    )


async def _fetch(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _rows(endpoints: Endpoints, sql: str) -> list[tuple[Any, ...]]:
    return asyncio.run(_fetch(endpoints.dsn, sql))


def test_two_topics_into_two_tables_held_by_one_consumer(endpoints: Endpoints, topic_name: str, tmp_path: Path) -> None:
    orders, clicks = f"{topic_name}-orders", f"{topic_name}-clicks"
    schema = f"r_{topic_name.replace('-', '_')}"
    ensure_topic(endpoints.kafka, orders, 3)
    ensure_topic(endpoints.kafka, clicks, 2)
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES.format(orders=orders, clicks=clicks, schema=schema))
    env = pipeline_env(
        endpoints,
        f"{orders},{clicks}",
        routes_file=routes,
        min_actors=1,
        max_actors=1,
        kafka_batch_size=50,  # 400 orders over 40 keys: repeats inside each batch and across batches
    )
    rng = random.Random(SEED)
    bad_first = _produce(endpoints, orders, clicks, 1, rng)
    first = run_until_drained(env, tmp_path / "first.log", 240)
    bad_second = _produce(endpoints, orders, clicks, 2, rng)  # the same keys again: across runs, on an existing table
    second = run_until_drained(env, tmp_path / "second.log", 240)
    bad = bad_first + bad_second
    for log, bad_orders in ((first, bad_first), (second, bad_second)):
        assert f"route clicks -> {schema}.clicks: inserted=57 dead_letters=3" in log
        orders_line = next(line for line in log.splitlines() if line.startswith("route orders -> "))
        assert orders_line.endswith(f" dead_letters={bad_orders}"), orders_line

    records = read_topic(endpoints.kafka, orders)
    expected = sorted(last_writer_fold(records, _expected_order).values())
    stored = _rows(
        endpoints, f"SELECT order_id, customer, amount, qty, version, source FROM {schema}.orders ORDER BY 1"
    )
    assert stored == expected
    assert len(expected) > KEYS // 2  # not a vacuous comparison

    clicks_stored = _rows(endpoints, f"SELECT src_partition, src_offset FROM {schema}.clicks ORDER BY 1, 2")
    clicks_read = read_topic(endpoints.kafka, clicks)
    good_clicks = [(r.partition, r.offset) for r in clicks_read if b"not-a-uuid" not in (r.value or b"")]
    assert clicks_stored == sorted(good_clicks)

    dead = _rows(
        endpoints,
        f"""SELECT topic, error_class, stage, error_message FROM loom_dead_letters
            WHERE topic IN ('{orders}', '{clicks}') ORDER BY topic, "partition", "offset\"""",
    )
    orders_dead = [d for d in dead if d[0] == orders]
    assert len(orders_dead) == bad
    kinds = {kind for _, kind in BAD_ORDERS}
    for _, error_class, stage, message in orders_dead:
        column = message.split("'")[3]  # route 'orders', column '<column>': <reason>
        assert message.startswith(f"route 'orders', column {column!r}: "), message
        assert (error_class, column, stage) in {(c, col, "validate") for c, col in kinds}, message
    assert {(c, m.split("'")[3]) for _, c, _, m in orders_dead} == kinds  # every kind was produced and caught
    clicks_dead = [d for d in dead if d[0] == clicks]
    assert [(c, m.split(":")[0]) for _, c, _, m in clicks_dead] == [
        ("BadValue", "route 'clicks', column 'user_id'")
    ] * 6

    tombstones = sum(1 for r in records if r.value is None)
    counts = _rows(
        endpoints,
        "SELECT route, sum(inserted)::int, sum(upserted)::int, sum(deleted)::int, sum(dead_letters)::int "
        f"FROM loom_route_counts WHERE topic IN ('{orders}', '{clicks}') GROUP BY route ORDER BY route",
    )
    assert counts == [
        ("clicks", len(good_clicks), 0, 0, 6),
        ("orders", 0, len(records) - tombstones - bad, tombstones, bad),
    ]
    summary = next(line for line in second.splitlines() if line.startswith("summary:"))
    assert f"dead_letters={bad_second + 3} " in summary


def _start(endpoints: Endpoints, topic: str, routes: Path) -> subprocess.CompletedProcess[str]:
    env = pipeline_env(endpoints, topic, routes_file=routes)
    return subprocess.run(
        [sys.executable, "-m", "loom_ray.main", "--exit-when-drained"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_table_that_does_not_fit_its_route_refuses_the_start(
    endpoints: Endpoints, topic_name: str, tmp_path: Path
) -> None:
    schema = f"r_{topic_name.replace('-', '_')}"
    ensure_topic(endpoints.kafka, topic_name, 1)
    asyncio.run(
        _execute(
            endpoints.dsn,
            f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.orders (order_id bigint PRIMARY KEY, amount text)",
        )
    )
    routes = tmp_path / "routes.toml"
    routes.write_text(
        f"""
[[route]]
name = "orders"
topic = "{topic_name}"
table = "{schema}.orders"
mode = "upsert"
key = ["order_id"]
[route.columns]
order_id = {{ type = "bigint", from = "key" }}
amount = {{ type = "numeric" }}
customer = {{ type = "text" }}
"""
    )
    refused = _start(endpoints, topic_name, routes)
    assert refused.returncode == 2, refused.stderr
    assert f"table \"{schema}\".\"orders\": column 'amount' is text but route 'orders' says numeric" in refused.stderr
    assert f'ALTER TABLE "{schema}"."orders" ALTER COLUMN "amount" TYPE numeric' in refused.stderr
    assert f'column \'customer\' is missing; fix: ALTER TABLE "{schema}"."orders" ADD COLUMN' in refused.stderr
    assert "Started a local Ray instance" not in refused.stdout + refused.stderr  # refused before Ray

    routes.write_text(
        routes.read_text()
        .replace('mode = "upsert"', 'mode = "upsert"\non_tombstone = "delete"')
        .replace('order_id = { type = "bigint", from = "key" }', 'order_id = { type = "bigint" }')
    )
    bad_file = _start(endpoints, topic_name, routes)
    assert bad_file.returncode == 2
    assert f"routes file {routes}" in bad_file.stderr
    assert "route 'orders': on_tombstone = \"delete\": a tombstone has no value, so key column order_id must be" in (
        bad_file.stderr
    )


def test_a_route_named_by_a_pydantic_model(endpoints: Endpoints, topic_name: str, tmp_path: Path) -> None:
    """The model (importable on the Ray workers: PYTHONPATH) validates each value; its fields are columns."""
    schema = f"r_{topic_name.replace('-', '_')}"
    ensure_topic(endpoints.kafka, topic_name, 2)
    routes = tmp_path / "routes.toml"
    routes.write_text(
        f"""
[[route]]
name = "model-orders"
topic = "{topic_name}"
table = "{schema}.orders"
mode = "upsert"
key = ["order_id"]
auto_create = true
model = "tests.support.route_models:Order"
[route.columns]
order_id = {{ type = "bigint", from = "key" }}
"""
    )
    producer = Producer({"bootstrap.servers": endpoints.kafka})
    for n in range(60):
        amount = -1 if n % 10 == 9 else n  # the model refuses a negative amount
        value = {
            "order_id": n % 7,
            "customer": {"name": f"c{n}"},
            "amount": amount,
            "placed_at": "2024-05-01T10:00:00Z",
        }
        producer.produce(topic_name, key=str(n % 7).encode(), value=orjson.dumps(value))
    assert producer.flush(30) == 0
    env = pipeline_env(endpoints, topic_name, routes_file=routes, min_actors=1, max_actors=1)
    log = run_until_drained(env, tmp_path / "main.log", 240)
    assert f"route model-orders -> {schema}.orders: upserted=54 deleted=0 dead_letters=6" in log

    def expected(record: Record) -> tuple[Any, ...] | None:
        assert record.value is not None
        value = orjson.loads(record.value)
        return None if value["amount"] < 0 else (int(record.key or b""), value["customer"], Decimal(value["amount"]))

    fold = sorted(last_writer_fold(read_topic(endpoints.kafka, topic_name), expected).values())
    stored = _rows(endpoints, f"SELECT order_id, customer, amount FROM {schema}.orders ORDER BY 1")
    assert [(k, orjson.loads(c), a) for k, c, a in stored] == fold
    dead = _rows(endpoints, f"SELECT error_class, error_message FROM loom_dead_letters WHERE topic = '{topic_name}'")
    assert len(dead) == 6
    assert all(
        c == "ModelValidation" and m.startswith("route 'model-orders', column 'amount': Input should be greater")
        for c, m in dead
    )
