"""Whether a table fits its route (:mod:`loom_ray.routes.fit`), at start and when it changes while running;
and the start's warning for upserts whose records of a key may arrive out of order."""

from __future__ import annotations

from typing import Any

import pytest

from loom_ray.routes.catalog import PgType, decode_typmod, widens
from loom_ray.routes.fit import problems, unchanged_or_wider, upsert_order_warnings
from loom_ray.routes.model import Route
from tests.support.shapes import pg, shape


def _route(**overrides: Any) -> Route:
    spec: dict[str, Any] = {
        "name": "orders",
        "topic": "orders",
        "table": "shop.orders",
        "mode": "upsert",
        "key": ["order_id"],
        "columns": {
            "order_id": {"from": "key"},
            "customer": {"path": "customer.name"},
            "amount": {},
            "kafka_ts": {"from": "timestamp"},
        },
    }
    return Route.model_validate({**spec, **overrides})


FITS = {"order_id": pg("int8"), "customer": pg("text"), "amount": pg("numeric"), "kafka_ts": pg("timestamptz")}


def test_a_fitting_table_has_no_problem() -> None:
    table = shape({**FITS, "note": pg("text"), "id": pg("int8")}, keys=[("order_id",)], defaults=["id"])
    assert problems(_route(), table) == []


def test_an_unfit_table_names_table_column_and_fix() -> None:
    found = dict(FITS)
    del found["customer"]
    found["kafka_ts"] = pg("int8")
    found["audit_by"] = pg("text")
    found["ip"] = None  # a type no route fills
    table = shape(found, keys=[("order_id", "amount")], not_null=["audit_by"])
    assert problems(_route(), table) == [
        'table "shop"."orders": column \'customer\' is missing; fix: ALTER TABLE "shop"."orders" ADD COLUMN '
        "\"customer\" <type>, set add_columns = true in route 'orders' (with a type for the column), or remove the "
        "column from it",
        'table "shop"."orders": column \'kafka_ts\' is bigint, but from = "timestamp" (without a path) gives '
        "timestamptz or timestamp; fix: change the column's type, or its source in route 'orders'",
        "table \"shop\".\"orders\": column 'audit_by' is NOT NULL without a default and route 'orders' gives it "
        'no value; fix: add "audit_by" to the route\'s columns, or ALTER TABLE "shop"."orders" ALTER COLUMN '
        '"audit_by" SET DEFAULT ...',
        'table "shop"."orders": no primary key or unique index on (order_id), which upsert needs; fix: CREATE '
        'UNIQUE INDEX ON "shop"."orders" ("order_id")',
    ]


def test_a_column_spelled_in_another_case_is_pointed_at() -> None:
    found = {("Customer" if name == "customer" else name): t for name, t in FITS.items()}
    (problem,) = problems(_route(), shape(found, keys=[("order_id",)]))
    assert "no column 'customer', but there is 'Customer'" in problem
    assert '("Customer" = { ... })' in problem


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ip": None}, "column 'amount' is inet, which a route cannot fill"),
        ({"generated": True}, "column 'amount' is generated"),
        ({"deferrable": True}, "is DEFERRABLE, and INSERT ... ON CONFLICT cannot use a deferrable key"),
        ({"bytes": pg("jsonb")}, 'from = "key" (without a path) gives text, varchar, char, bytea'),
        ({"version": pg("text")}, "version column 'customer' is text; a version must be an integer"),
    ],
)
def test_each_kind_of_misfit_says_what_to_change(change: dict[str, Any], message: str) -> None:
    found: dict[str, PgType | None] = dict(FITS)
    route = _route()
    keys, deferrable, generated = [("order_id",)], [], []
    if "ip" in change:
        found["amount"] = None
    if "generated" in change:
        generated = ["amount"]
    if "deferrable" in change:
        keys, deferrable = [], [("order_id",)]
    if "bytes" in change:
        found["order_id"] = change["bytes"]
    if "version" in change:
        route = _route(version="customer")
        found["customer"] = change["version"]
    table = shape(found, keys=keys, deferrable_keys=deferrable, generated=generated)
    assert any(message in p for p in problems(route, table)), problems(route, table)


def test_a_declared_type_must_be_the_tables() -> None:
    route = _route(columns={"order_id": {"from": "key", "type": "integer"}, "amount": {}})
    table = shape({"order_id": pg("int8"), "amount": pg("numeric")}, keys=[("order_id",)])
    int8 = table.columns["order_id"].type_oid
    assert problems(route, table, {"order_id": int8}) == []
    (problem,) = problems(route, table, {"order_id": int8 + 1})
    assert "column 'order_id' is bigint but route 'orders' says integer" in problem
    assert 'declare type = "bigint" (or leave type out' in problem


def test_an_insert_with_a_key_needs_that_unique_key() -> None:
    route = _route(mode="insert", on_duplicate="ignore")
    (problem,) = problems(route, shape(FITS))
    assert "which on_duplicate acts on" in problem and "or remove key from the route" in problem


@pytest.mark.parametrize(
    ("old", "new", "wider"),
    [
        (pg("int4"), pg("int8"), True),
        (pg("int8"), pg("int4"), False),
        (pg("int4"), pg("numeric"), True),
        (pg("int8"), pg("numeric", precision=18, scale=0), False),  # 19 digits do not fit
        (pg("float4"), pg("float8"), True),
        (pg("varchar", length=10), pg("varchar", length=100), True),
        (pg("varchar", length=10), pg("text"), True),
        (pg("varchar", length=10), pg("varchar", length=5), False),
        (pg("text"), pg("varchar", length=5), False),
        (pg("numeric", precision=10, scale=2), pg("numeric", precision=12, scale=4), True),
        (pg("numeric", precision=10, scale=2), pg("numeric", precision=12, scale=1), False),
        (pg("numeric", precision=10, scale=2), pg("numeric"), True),
        (pg("timestamp", precision=3), pg("timestamp"), True),
        (pg("timestamptz"), pg("timestamp"), False),
        (pg("enum", labels=("a", "b")), pg("enum", labels=("a", "c", "b")), True),
        (pg("enum", labels=("a", "b")), pg("enum", labels=("a",)), False),
        (pg("array", element=pg("int2")), pg("array", element=pg("int4")), True),
        (pg("int4", domain="posint"), pg("int4"), False),  # a domain's checks are the table's: a person decides
    ],
)
def test_a_change_that_only_gives_room_is_a_widening(old: PgType, new: PgType, wider: bool) -> None:
    assert widens(old, new) is wider


def test_a_table_altered_while_running_is_taken_in_only_when_every_column_widened() -> None:
    route = _route()
    before = shape(FITS, keys=[("order_id",)])
    assert unchanged_or_wider(route, before, shape({**FITS, "amount": pg("numeric"), "x": pg("int2")}))
    assert not unchanged_or_wider(route, before, shape({**FITS, "amount": pg("float8")}))


def test_numeric_typmods_decode_as_postgresql_15_packs_them() -> None:
    assert decode_typmod("numeric", ((10 << 16) | 2) + 4) == (None, 10, 2)
    assert decode_typmod("numeric", ((3 << 16) | (-2 & 0x7FF)) + 4) == (None, 3, -2)  # a negative scale
    assert decode_typmod("varchar", 68) == (64, None, None)
    assert decode_typmod("timestamptz", 3) == (None, 3, None)
    assert decode_typmod("text", -1) == (None, None, None)


def test_upserts_that_may_arrive_out_of_order_are_warned_about() -> None:
    by_value = _route(columns={"order_id": {}, "amount": {}})
    (warning,) = upsert_order_warnings(by_value, {"orders": 4}, ["orders"])
    assert "its key is not read from the Kafka key and orders has more than one partition" in warning
    assert 'set version = "<column>"' in warning
    assert upsert_order_warnings(by_value, {"orders": 1}, ["orders"]) == []
    assert upsert_order_warnings(_route(), {"orders": 4}, ["orders"]) == []  # the key is the Kafka key
    pattern = _route(topic=None, topic_pattern="orders-.*")
    (many,) = upsert_order_warnings(pattern, {"orders-a": 1, "orders-b": 1}, ["orders-a", "orders-b"])
    assert "it matches 2 topics (orders-a, orders-b)" in many
    versioned = _route(columns={"order_id": {}, "amount": {}}, version="amount")
    assert upsert_order_warnings(versioned, {"orders": 4}, ["orders"]) == []
