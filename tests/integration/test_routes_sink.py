"""The routed flush on a real PostgreSQL, without Kafka or Ray: batches converted as the consumer converts them
(for the table as the catalog describes it), written by the real sink with the offset compare-and-set.

What it shows, one case each: last-writer-wins per key with deletes; a repeated key on an insert route (a dead
letter, or ignored and counted); a version that keeps the newest record of a key whatever the order its
partitions are flushed in; a tombstone and a new write of one key in one batch leave the table as two batches
would (a new row, its delete trigger fired); a table altered while running (taken in when it only widens,
blocked until fixed otherwise); a unique key dropped or a deferred constraint; ``add_columns``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from loom_ray.errors import RouteTableChangedError, RouteTableError
from loom_ray.policy.sink_errors import Kind, classify
from tests.support.pipeline import scalar_at
from tests.support.routed import Record, RoutedSink, routed_sink
from tests.support.services import Endpoints

ACCOUNTS = """
[[route]]
name = "accounts"
topic = "accounts"
table = "accounts"
mode = "upsert"
key = ["id"]
on_tombstone = "delete"
auto_create = true

[route.columns]
id = {{ type = "bigint", from = "key" }}
owner = {{ type = "text", required = true }}
balance = {{ type = "numeric" }}
src_offset = {{ type = "bigint", from = "offset" }}
{extra}
"""


def _run(
    endpoints: Endpoints, routes: str, body: Callable[[RoutedSink], Awaitable[Any]], *setup: str, **kw: Any
) -> Any:
    """``body(sink)`` on a schema of its own with ``routes`` prepared after ``setup``; the schema is dropped."""
    schema = f"loom_rs_{uuid.uuid4().hex[:10]}"

    async def run() -> Any:
        sink = await routed_sink(endpoints.dsn, schema, routes, *setup, **kw)
        try:
            return await body(sink)
        finally:
            async with sink.pool.acquire() as conn:
                await conn.execute(f"DROP SCHEMA {schema} CASCADE")
            await sink.pool.close()

    return asyncio.run(run())


def test_last_writer_wins_deletes_and_refused_rows(endpoints: Endpoints) -> None:
    async def body(sink: RoutedSink) -> None:
        async with sink.pool.acquire() as conn:
            await conn.execute("ALTER TABLE accounts ADD CONSTRAINT no_overdraft CHECK (balance >= 0)")
        first = await sink.write(
            sink.batch(
                "accounts",
                [
                    Record(b"1", {"owner": "ann", "balance": 10}),
                    Record(b"2", {"owner": "bob", "balance": 20}),
                    Record(b"1", {"owner": "ann", "balance": 11}),  # a later write of key 1 in the same batch wins
                    Record(b"2", None),  # bob deleted after his upsert
                    Record(b"3", None),  # a delete, then an upsert of key 3: the upsert wins
                    Record(b"3", {"owner": "cy", "balance": 30}),
                    Record(b"4", {"owner": "dee", "balance": -5}),  # refused by the table's CHECK: a dead letter
                    Record(b"5", {"owner": "eve", "balance": 50}),
                    Record(b"5", {"owner": "eve", "balance": -1}),  # refused: eve keeps her earlier write
                ],
            )
        )
        second = await sink.write(
            sink.batch(
                "accounts", [Record(b"1", {"owner": "ann", "balance": 12}), Record(b"3", None), Record(b"6", None)]
            )
        )
        # Key 1: its last write (offset 9); 2: deleted after its upsert; 3: upserted after its delete, then
        # deleted by the second batch; 4: refused; 5: its last write refused, the one before kept.
        assert await sink.fetch("SELECT id, owner, balance, src_offset FROM accounts ORDER BY id") == [
            (1, "ann", Decimal(12), 9),
            (5, "eve", Decimal(50), 7),
        ]
        dead = await sink.dead_letters("accounts")
        assert [(o, c, s) for o, c, s, _ in dead] == [
            (6, "CheckViolationError", "db_row"),
            (8, "CheckViolationError", "db_row"),
        ]
        assert all(
            m.startswith("route 'accounts': table ") and "refused the row (constraint 'no_overdraft')" in m
            for *_, m in dead
        )
        # Records, not rows: 12 = 6 upserts + 4 deletes applied + 2 dead letters.
        counts = await sink.fetch(
            "SELECT inserted, upserted, deleted, stale, duplicates, dead_letters FROM loom_route_counts"
        )
        assert counts == [(0, 6, 4, 0, 0, 2)]
        assert await sink.fetch("SELECT route, topics, upserted, deleted, dead_letters FROM v_route_counts") == [
            ("accounts", 1, 6, 4, 2)
        ]
        assert [(r.rows, r.dead_letters) for r in (first, second)] == [(7, 2), (3, 0)]
        assert await sink.fetch("SELECT next_offset FROM loom_offsets WHERE topic = 'accounts'") == [(12,)]

    _run(endpoints, ACCOUNTS.format(extra=""), body)


INSERT_KEYED = """
[[route]]
name = "payments"
topic = "payments"
table = "payments"
key = ["payment_id"]
auto_create = true
{on_duplicate}

[route.columns]
payment_id = {{ type = "bigint" }}
amount = {{ type = "numeric(10,2)" }}
"""


@pytest.mark.parametrize("on_duplicate", ["dead_letter", "ignore"])
def test_a_repeated_key_on_an_insert_route_never_stops_the_flush(endpoints: Endpoints, on_duplicate: str) -> None:
    """Case 1: the key is a PRIMARY KEY; a repeat (an update event, a producer's retry) is the table refusing
    that row, not a broken invariant: a dead letter naming the key, or ignored and counted."""

    async def body(sink: RoutedSink) -> None:
        records = [Record(None, {"payment_id": n % 3, "amount": n}) for n in range(6)]  # 0 1 2 0 1 2
        await sink.write(sink.batch("payments", records[:4]))
        await sink.write(sink.batch("payments", records[4:]))
        assert await sink.fetch("SELECT payment_id, amount FROM payments ORDER BY 1") == [
            (0, Decimal(0)),
            (1, Decimal(1)),
            (2, Decimal(2)),
        ]  # the first of each key
        dead = await sink.dead_letters("payments")
        counts = await sink.fetch("SELECT inserted, duplicates, dead_letters FROM loom_route_counts")
        if on_duplicate == "dead_letter":
            assert [(o, c, s) for o, c, s, _ in dead] == [(3, "UniqueViolationError", "db_row")] + [
                (o, "UniqueViolationError", "db_row") for o in (4, 5)
            ]
            assert "constraint 'payments_pkey'" in dead[0][3] and "Key (payment_id)=(0) already exists" in dead[0][3]
            assert counts == [(3, 0, 3)]
        else:
            assert dead == []
            assert counts == [(3, 3, 0)]

    _run(endpoints, INSERT_KEYED.format(on_duplicate=f'on_duplicate = "{on_duplicate}"'), body)


VERSIONED = """
[[route]]
name = "profiles"
topic = "profiles"
table = "profiles"
mode = "upsert"
key = ["user_id"]
version = "updated_at"
auto_create = true

[route.columns]
user_id = { type = "bigint" }
name = { type = "text" }
updated_at = { type = "timestamptz", required = true }
"""


def test_a_version_keeps_the_newest_record_whatever_order_partitions_flush_in(endpoints: Endpoints) -> None:
    """Case 5: the key is read from the value, so one key's records sit in two partitions; the lagging partition's
    older record, flushed last, is stale and changes nothing."""

    def profile(name: str, minute: int) -> dict[str, Any]:
        return {"user_id": 7, "name": name, "updated_at": f"2024-05-01T10:{minute:02d}:00Z"}

    async def body(sink: RoutedSink) -> None:
        newer = sink.batch("profiles", [Record(None, profile("new", 30)), Record(None, profile("newest", 40))], 1)
        older = sink.batch("profiles", [Record(None, profile("old", 10)), Record(None, profile("older", 5))], 0)
        await sink.write(newer)
        await sink.write(older)
        assert await sink.fetch("SELECT user_id, name FROM profiles") == [(7, "newest")]
        # One flush holding both partitions, in the other order: the same.
        later = sink.batch("profiles", [Record(None, profile("late", 35))], 0)
        latest = sink.batch("profiles", [Record(None, profile("latest", 50))], 1)
        await sink.write(latest, later)
        assert await sink.fetch("SELECT user_id, name FROM profiles") == [(7, "latest")]
        assert await sink.fetch('SELECT "partition", upserted, stale FROM loom_route_counts ORDER BY "partition"') == [
            (0, 0, 3),
            (1, 3, 0),
        ]

    _run(endpoints, VERSIONED, body, partitions=2)


@pytest.mark.parametrize("split", [False, True])
def test_a_tombstone_then_a_write_of_one_key_makes_a_new_row_in_one_batch_or_two(
    endpoints: Endpoints, split: bool
) -> None:
    """Case 6: the row is deleted (its delete trigger fires, its identity and defaults are the new row's), the
    same whether the tombstone and the write share a batch or not."""
    setup = (
        "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance numeric, src_offset bigint, "
        "row_no bigint GENERATED ALWAYS AS IDENTITY, created text NOT NULL DEFAULT 'by insert')",
        "CREATE TABLE deleted_log (id bigint, row_no bigint)",
        """CREATE FUNCTION log_delete() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO deleted_log VALUES (OLD.id, OLD.row_no); RETURN OLD; END $$""",
        "CREATE TRIGGER log_delete AFTER DELETE ON accounts FOR EACH ROW EXECUTE FUNCTION log_delete()",
    )

    async def body(sink: RoutedSink) -> list[tuple[Any, ...]]:
        await sink.write(sink.batch("accounts", [Record(b"1", {"owner": "ann", "balance": 1})]))
        async with sink.pool.acquire() as conn:
            await conn.execute("UPDATE accounts SET created = 'by hand'")
        records = [Record(b"1", None), Record(b"1", {"owner": "ann again", "balance": 2})]
        batches = [records[:1], records[1:]] if split else [records]
        for records_of_batch in batches:
            await sink.write(sink.batch("accounts", records_of_batch))
        return await sink.fetch(
            "SELECT a.id, a.owner, a.row_no, a.created, (SELECT array_agg(row_no) FROM deleted_log) FROM accounts a"
        )

    found = _run(endpoints, ACCOUNTS.format(extra="").replace("auto_create = true", ""), body, *setup)
    assert found == [(1, "ann again", 2, "by insert", [1])]


NARROW = """
[[route]]
name = "codes"
topic = "codes"
table = "codes"

[route.columns]
code = {}
n = {}
"""


def test_a_table_that_only_widens_while_running_is_taken_in(endpoints: Endpoints) -> None:
    """The insert route COPYs into the table: both pool connections have COPYed under the old types before the
    ALTER, so a COPY encoded by asyncpg's cached column types would dead-letter or misread what comes after."""

    async def body(sink: RoutedSink) -> None:
        for n in (-2, -1):  # one flush on each of the pool's two connections (it hands them out in turn)
            await sink.write(sink.batch("codes", [Record(None, {"code": "old", "n": n})]))
        buffered = sink.batch("codes", [Record(None, {"code": "abc", "n": 1})])
        too_long = sink.batch("codes", [Record(None, {"code": "abcdef", "n": 2})])
        assert [r.error_class for _, r in sink.validation] == ["TooLong"]
        async with sink.pool.acquire() as conn:
            await conn.execute("ALTER TABLE codes ALTER COLUMN code TYPE varchar(10), ALTER COLUMN n TYPE bigint")
        await sink.write(buffered)  # converted for the old shape, written under the new one
        await sink.write(too_long)
        for n in (2**40, 2**40 + 1):
            await sink.write(sink.batch("codes", [Record(None, {"code": "abcdef", "n": n})]))
        assert await sink.fetch("SELECT code, n FROM codes ORDER BY n") == [
            ("old", -2),
            ("old", -1),
            ("abc", 1),
            ("abcdef", 2**40),
            ("abcdef", 2**40 + 1),
        ]
        assert [(o, c) for o, c, _, _ in await sink.dead_letters("codes")] == [(3, "TooLong")]  # too_long alone

    _run(endpoints, NARROW, body, "CREATE TABLE codes (code varchar(3), n integer)")


def test_an_insert_route_keeps_a_rule_and_a_partitioned_table_as_an_insert_would(endpoints: Endpoints) -> None:
    """An insert route COPYs into its table, which PostgreSQL does without rules: a table with a rule at start,
    or one given a rule while running, takes its records through the staging table's INSERT, which the rule
    rewrites. A partitioned table takes the COPY, each row into its partition."""
    setup = (
        "CREATE TABLE codes (code varchar(3), n integer) PARTITION BY RANGE (n)",
        "CREATE TABLE codes_low PARTITION OF codes FOR VALUES FROM (MINVALUE) TO (100)",
        "CREATE TABLE codes_high PARTITION OF codes FOR VALUES FROM (100) TO (MAXVALUE)",
        "CREATE TABLE seen (code text, n integer)",
        "CREATE TABLE kept (code varchar(3), n integer)",
        "CREATE RULE kept_seen AS ON INSERT TO kept DO INSTEAD INSERT INTO seen VALUES (NEW.code, NEW.n)",
        "CREATE TABLE later (code varchar(3), n integer)",
    )

    async def body(sink: RoutedSink) -> None:
        two = [Record(None, {"code": "a", "n": 1}), Record(None, {"code": "b", "n": 200})]
        await sink.write(sink.batch("codes", two))
        assert await sink.fetch("SELECT tableoid::regclass::text, code FROM codes ORDER BY n") == [
            ("codes_low", "a"),
            ("codes_high", "b"),
        ]
        await sink.write(sink.batch("kept", [Record(None, {"code": "c", "n": 3})]))
        await sink.write(sink.batch("later", [Record(None, {"code": "d", "n": 4})]))
        async with sink.pool.acquire() as conn:
            await conn.execute(
                "CREATE RULE later_seen AS ON INSERT TO later DO ALSO INSERT INTO seen VALUES (NEW.code, NEW.n)"
            )
        await sink.write(sink.batch("later", [Record(None, {"code": "e", "n": 5})]))
        assert await sink.fetch("SELECT code, n FROM seen ORDER BY n") == [("c", 3), ("e", 5)]
        assert await sink.fetch("SELECT code FROM kept") == []
        assert await sink.fetch("SELECT code FROM later ORDER BY n") == [("d",), ("e",)]
        assert await sink.fetch("SELECT inserted FROM loom_route_counts ORDER BY route") == [(2,), (1,), (2,)]

    routes = NARROW + NARROW.replace('"codes"', '"kept"') + NARROW.replace('"codes"', '"later"')
    _run(endpoints, routes, body, *setup)


def test_a_table_changed_otherwise_blocks_its_flushes_until_it_is_fixed(endpoints: Endpoints) -> None:
    async def body(sink: RoutedSink) -> None:
        buffered = sink.batch("codes", [Record(None, {"code": "abc", "n": 1})])
        async with sink.pool.acquire() as conn:
            await conn.execute("ALTER TABLE codes ALTER COLUMN n TYPE numeric(3,1)")  # 1 would not round-trip
        with pytest.raises(RouteTableChangedError) as caught:
            await sink.write(buffered)
        assert classify(caught.value).kind is Kind.NEEDS_PERSON
        assert "n integer -> numeric(3,1)" in str(caught.value)
        assert await sink.fetch("SELECT count(*) FROM codes") == [(0,)]
        async with sink.pool.acquire() as conn:
            await conn.execute("ALTER TABLE codes ALTER COLUMN n TYPE integer")
        await sink.write(buffered)  # the retry goes through once it is fixed
        assert await sink.fetch("SELECT code, n FROM codes") == [("abc", 1)]

    _run(endpoints, NARROW, body, "CREATE TABLE codes (code varchar(3), n integer)")


def test_a_dropped_unique_key_blocks_and_a_deferred_constraint_is_isolated(endpoints: Endpoints) -> None:
    setup = (
        "CREATE TABLE owners (name text PRIMARY KEY)",
        "INSERT INTO owners VALUES ('ann')",
        "CREATE TABLE accounts (id bigint, owner text NOT NULL REFERENCES owners DEFERRABLE INITIALLY DEFERRED, "
        "balance numeric, src_offset bigint, CONSTRAINT accounts_key UNIQUE (id))",
    )

    async def body(sink: RoutedSink) -> None:
        # A deferred foreign key is checked per statement (SET CONSTRAINTS ALL IMMEDIATE): the row that breaks it
        # is isolated and dead-lettered instead of failing the whole commit.
        await sink.write(sink.batch("accounts", [Record(b"1", {"owner": "ann"}), Record(b"2", {"owner": "bob"})]))
        assert await sink.fetch("SELECT id FROM accounts") == [(1,)]
        ((_, error_class, _, message),) = await sink.dead_letters("accounts")
        assert error_class == "ForeignKeyViolationError" and "constraint 'accounts_owner_fkey'" in message
        async with sink.pool.acquire() as conn:
            await conn.execute("ALTER TABLE accounts DROP CONSTRAINT accounts_key")
        with pytest.raises(asyncpg.InvalidColumnReferenceError) as caught:  # ON CONFLICT has no key to use
            await sink.write(sink.batch("accounts", [Record(b"1", {"owner": "ann"})]))
        verdict = classify(caught.value)
        assert verdict.kind is Kind.NEEDS_PERSON and verdict.condition is not None
        assert "CREATE UNIQUE INDEX" in verdict.condition.fix

    _run(endpoints, ACCOUNTS.format(extra="").replace("auto_create = true", ""), body, *setup)


def test_add_columns_extends_an_existing_table_only_when_asked(endpoints: Endpoints) -> None:
    schema = f"loom_rs_{uuid.uuid4().hex[:10]}"
    setup = ("CREATE TABLE accounts (id bigint PRIMARY KEY)",)
    routes = ACCOUNTS.format(extra="").replace("auto_create = true", "")
    with pytest.raises(RouteTableError) as refused:
        asyncio.run(routed_sink(endpoints.dsn, schema, routes, *setup))
    assert "column 'owner' is missing" in str(refused.value) and "set add_columns = true" in str(refused.value)

    async def evolve() -> list[tuple[Any, ...]]:
        sink = await routed_sink(
            endpoints.dsn, schema, routes.replace('mode = "upsert"', 'mode = "upsert"\nadd_columns = true')
        )
        try:
            return await sink.fetch(
                "SELECT column_name::text, is_nullable::text FROM information_schema.columns WHERE table_schema = $1 "
                "AND table_name = 'accounts' ORDER BY ordinal_position",
                schema,
            )
        finally:
            async with sink.pool.acquire() as conn:
                await conn.execute(f"DROP SCHEMA {schema} CASCADE")
            await sink.pool.close()

    assert asyncio.run(evolve()) == [("id", "NO"), ("owner", "YES"), ("balance", "YES"), ("src_offset", "YES")]


def test_the_example_routes_file_creates_its_tables_and_takes_a_record(endpoints: Endpoints) -> None:
    """README's example, as a user would start it: auto_create makes the tables from the declared types."""
    example = (Path(__file__).resolve().parents[2] / "examples" / "routes.toml").read_text()
    shop = f"shop_{uuid.uuid4().hex[:8]}"

    async def body(sink: RoutedSink) -> None:
        order = {"customer": {"name": "ann"}, "amount": "12.5", "currency": "EUR", "items": [{"sku": "a"}]}
        await sink.write(sink.batch("orders", [Record(b"7", order, [("source", b"web")], 1_700_000_000_000)]))
        assert await sink.fetch(f"SELECT order_id, customer, amount, currency, source FROM {shop}.orders") == [
            (7, "ann", Decimal("12.50"), "EUR", "web")
        ]
        assert await sink.fetch(f"SELECT count(*) FROM {shop}.clicks") == [(0,)]

    routes = example.replace("shop.", f"{shop}.").replace("topic_pattern = 'clicks\\..*'", 'topic = "clicks"')
    try:
        _run(endpoints, routes, body)
    finally:
        scalar_at(endpoints.dsn, f"DROP SCHEMA IF EXISTS {shop} CASCADE")
