"""Routes: parsing and validating the file, converting a record's fields, and the SQL builder (pure)."""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from loom_ray.decode import Rejection
from loom_ray.errors import RoutesFileError
from loom_ray.routes.convert import RoutePlan, convert, plan, tombstone
from loom_ray.routes.model import Route, load_routes
from loom_ray.routes.sql import TableColumn, add_columns_sql, apply_sql, check_table, create_table_sql, stage_columns
from loom_ray.routes.types import FROM_BYTES, FROM_JSON, Unfit, timestamp_micros

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "routes.toml"

ORDERS = """
[[route]]
name = "orders"
topic = "orders"
table = "shop.orders"
mode = "upsert"
key = ["order_id"]
on_tombstone = "delete"

[route.columns]
order_id = { type = "bigint", from = "key" }
customer = { type = "text", path = "customer.name", required = true }
amount = { type = "numeric" }
tags = { type = "jsonb" }
first_item = { type = "text", path = "items.0.sku" }
source = { type = "text", from = "header", header = "source" }
ts = { type = "timestamptz", from = "timestamp" }
src = { type = "bigint", from = "offset" }
"""


def _load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "routes.toml"
    path.write_text(text)
    return load_routes(path)


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(RoutesFileError) as caught:
        _load(tmp_path, text)
    return str(caught.value)


def _orders(tmp_path: Path) -> RoutePlan:
    return plan(_load(tmp_path, ORDERS).routes[0])


# --- the file ---------------------------------------------------------------------------------------------------


def test_the_example_file_parses() -> None:
    routes = load_routes(EXAMPLE)
    assert [r.name for r in routes.routes] == ["orders", "clicks"]
    assert routes.route_for("orders") is routes.routes[0]
    assert routes.route_for("clicks.eu") is routes.routes[1]
    assert routes.route_for("clicks") is None  # the pattern must match the whole name
    assert routes.route_for("payments") is None  # no route: loom_messages


def test_columns_keep_their_order_types_and_sources(tmp_path: Path) -> None:
    route = _load(tmp_path, ORDERS).routes[0]
    assert [(c.name, c.type, c.source) for c in route.columns][:3] == [
        ("order_id", "bigint", "key"),
        ("customer", "text", "value"),
        ("amount", "numeric", "value"),
    ]
    columns = {c.name: c for c in route.columns}
    assert columns["customer"].json_path == ("customer", "name")
    assert columns["amount"].json_path == ("amount",)  # the column's name by default
    assert columns["ts"].type == "timestamp with time zone"
    assert (route.schema_name, route.table_name) == ("shop", "orders")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('mode = "upsert"', 'mode = "merge"'), "route 'orders': mode: Input should be 'insert' or 'upsert'"),
        (('key = ["order_id"]', 'key = ["nope"]'), "key names nope, not among the columns"),
        (('key = ["order_id"]', "key = []"), 'mode = "upsert" needs key = ["<column>", ...]'),
        (
            ('order_id = { type = "bigint", from = "key" }', 'order_id = { type = "bigint" }'),
            'key column order_id must be read from = "key"',
        ),
        (('type = "numeric"', 'type = "money"'), "route 'orders': column amount type: unknown type 'money'"),
        (('topic = "orders"', 'topic_pattern = "("'), "topic_pattern '(' is not a regular expression"),
        (('topic = "orders"', ""), "give exactly one of topic or topic_pattern"),
        (('table = "shop.orders"', 'table = "Shop.Orders"'), "must be a lower-case SQL identifier"),
        ((', header = "source"', ""), 'from = "header" needs header = "<header name>"'),
        (('from = "offset"', 'from = "offset", path = "x"'), 'path is only read with from = "value" or "key"'),
        (('{ type = "timestamptz", from = "timestamp" }', '{ type = "text", from = "timestamp" }'), "gives timestamp"),
        (('{ type = "bigint", from = "key" }', '{ type = "jsonb", from = "key" }'), "give a path into a JSON key"),
        (('on_tombstone = "delete"', 'on_tombstone = "delete"\ncolour = "red"'), "colour: Extra inputs"),
    ],
)
def test_a_bad_route_names_the_file_the_route_and_the_fix(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    text = ORDERS.replace(*change, 1)
    assert text != ORDERS
    error = _error(tmp_path, text)
    assert error.startswith(f"routes file {tmp_path / 'routes.toml'}:")
    assert message in error


def test_unreadable_and_empty_files_say_what_to_do(tmp_path: Path) -> None:
    assert "cannot be read" in str(pytest.raises(RoutesFileError, load_routes, tmp_path / "missing.toml").value)
    assert "not valid TOML" in _error(tmp_path, "[[route]\n")
    assert "declares no route" in _error(tmp_path, "# nothing\n")
    twice = ORDERS + ORDERS.replace('topic = "orders"', 'topic = "other"')
    assert "two routes are named 'orders'" in _error(tmp_path, twice)


# --- conversion -------------------------------------------------------------------------------------------------


def _convert(route_plan: RoutePlan, value: Any, key: bytes | None = b"7", headers: Any = None) -> Any:
    return convert(route_plan, value, key, headers, (1, 1_700_000_000_000), "orders", 2, 41)


def test_a_record_becomes_its_columns(tmp_path: Path) -> None:
    value = {"customer": {"name": "ann"}, "amount": "12.50", "tags": ["a", {"b": None}], "items": [{"sku": "x1"}]}
    values = _convert(_orders(tmp_path), value, headers=[("source", b"web"), ("source", b"app")])
    assert values == (
        7,
        "ann",
        Decimal("12.50"),
        '["a",{"b":null}]',
        "x1",
        "app",  # the last header of that name
        timestamp_micros("2023-11-14T22:13:20Z"),
        41,
    )


@pytest.mark.parametrize(
    ("value", "key", "error_class", "column", "reason"),
    [
        ({"amount": 1}, b"7", "MissingField", "customer", "required, but customer.name is missing"),
        ({"customer": {"name": None}}, b"7", "MissingField", "customer", "customer.name is null"),
        ({"customer": {"name": 5}}, b"7", "WrongType", "customer", "expected a JSON string, got integer 5"),
        ({"customer": {"name": "a"}, "amount": True}, b"7", "WrongType", "amount", "got boolean true"),
        ({"customer": {"name": "a"}, "amount": "1e"}, b"7", "WrongType", "amount", "expected a decimal number"),
        ({"customer": {"name": "a"}, "amount": "NaN"}, b"7", "OutOfRange", "amount", "not a finite number"),
        ({"customer": {"name": "a"}}, b"x7", "WrongType", "order_id", "expected decimal digits, got 'x7'"),
        ({"customer": {"name": "a"}}, str(2**63).encode(), "OutOfRange", "order_id", "outside bigint"),
        ({"customer": {"name": "a"}}, None, "MissingField", "order_id", "required, but key is null"),
        ({"customer": {"name": "a\x00"}}, b"7", "BadValue", "customer", "U+0000"),
        ({"customer": {"name": "a"}, "tags": {"k": "\x00"}}, b"7", "BadValue", "tags", "U+0000"),
    ],
)
def test_a_field_that_does_not_fit_names_route_column_and_reason(
    tmp_path: Path, value: Any, key: bytes | None, error_class: str, column: str, reason: str
) -> None:
    rejection = _convert(_orders(tmp_path), value, key)
    assert isinstance(rejection, Rejection)
    assert (rejection.error_class, rejection.stage) == (error_class, "validate")
    assert rejection.error_message.startswith(f"route 'orders', column {column!r}: ")
    assert reason in rejection.error_message


def test_missing_optional_fields_are_null(tmp_path: Path) -> None:
    values = _convert(_orders(tmp_path), {"customer": {"name": "a"}, "items": []})
    assert values[2:6] == (None, None, None, None)


def test_a_record_timestamp_past_year_9999_is_a_dead_letter(tmp_path: Path) -> None:
    rejection = convert(_orders(tmp_path), {"customer": {"name": "a"}}, b"7", None, (1, 2**62), "orders", 0, 0)
    assert isinstance(rejection, Rejection)
    assert (rejection.error_class, rejection.error_message.split(":")[0]) == (
        "BadTimestamp",
        "route 'orders', column 'ts'",
    )


def test_a_tombstone_deletes_by_key_or_is_a_dead_letter(tmp_path: Path) -> None:
    route_plan = _orders(tmp_path)
    assert tombstone(route_plan, b"7") == (7, None, None, None, None, None, None, None)
    bad_key = tombstone(route_plan, b"seven")
    assert isinstance(bad_key, Rejection) and bad_key.error_class == "WrongType"
    keeps = plan(Route.model_validate({**route_plan.route.model_dump(by_alias=True), "on_tombstone": "dead_letter"}))
    rejection = tombstone(keeps, b"7")
    assert isinstance(rejection, Rejection)
    assert rejection.error_class == "NullValue"
    assert 'set on_tombstone = "delete"' in rejection.error_message


@pytest.mark.parametrize(
    ("pg_type", "value", "expected"),
    [
        ("smallint", -32768, -32768),
        ("integer", 2**31 - 1, 2**31 - 1),
        ("bigint", -(2**63), -(2**63)),
        ("numeric", 10**30, Decimal(10**30)),
        ("numeric", 0.1, Decimal("0.1")),  # a JSON number with a fraction: its shortest decimal form
        ("numeric", "123.4500", Decimal("123.4500")),
        ("double precision", 2**53, float(2**53)),
        ("double precision", 1.5, 1.5),
        ("real", 1.5, 1.5),
        ("boolean", False, False),
        ("text", "é ✓", "é ✓"),
        ("jsonb", None, "null"),
        ("timestamp with time zone", "2000-01-01T00:00:01+00:00", 1_000_000),
        ("timestamp with time zone", "2000-01-01T02:00:00+02:00", 0),
        ("date", "2024-02-29", date(2024, 2, 29)),
        ("uuid", "12345678-1234-5678-1234-567812345678", uuid.UUID("12345678-1234-5678-1234-567812345678")),
        ("bytea", "AAH/", b"\x00\x01\xff"),
    ],
)
def test_json_values_that_fit(pg_type: str, value: Any, expected: Any) -> None:
    assert FROM_JSON[pg_type](value) == expected


@pytest.mark.parametrize(
    ("pg_type", "value", "error_class"),
    [
        ("smallint", 32768, "OutOfRange"),
        ("integer", 1.0, "WrongType"),  # no float into an integer, even a whole one
        ("integer", "1", "WrongType"),  # no string either
        ("bigint", True, "WrongType"),
        ("double precision", 2**53 + 1, "OutOfRange"),  # a double cannot hold it exactly
        ("real", 1e39, "OutOfRange"),
        ("boolean", 1, "WrongType"),
        ("text", 12, "WrongType"),
        ("timestamp with time zone", "2024-05-01T10:00:00", "BadTimestamp"),  # no time zone
        ("timestamp with time zone", "yesterday", "BadTimestamp"),
        ("timestamp with time zone", 1_700_000_000_000, "WrongType"),
        ("date", "2024-02-30", "BadValue"),
        ("date", "20240201", "BadValue"),
        ("uuid", "not-a-uuid", "BadValue"),
        ("bytea", "***", "BadValue"),
    ],
)
def test_json_values_that_do_not_fit(pg_type: str, value: Any, error_class: str) -> None:
    with pytest.raises(Unfit) as caught:
        FROM_JSON[pg_type](value)
    assert caught.value.error_class == error_class


def test_bytes_sources() -> None:
    assert FROM_BYTES["integer"](b"-12") == -12
    assert FROM_BYTES["bytea"](b"\xff\x00") == b"\xff\x00"
    assert FROM_BYTES["text"](b"order-1") == "order-1"
    with pytest.raises(Unfit, match="not UTF-8"):
        FROM_BYTES["text"](b"\xff")
    with pytest.raises(Unfit, match="expected decimal digits"):
        FROM_BYTES["bigint"](b"1.0")


# --- SQL ----------------------------------------------------------------------------------------------------------


def test_create_table_uses_the_key_as_primary_key(tmp_path: Path) -> None:
    route = _load(tmp_path, ORDERS).routes[0]
    schema, table = create_table_sql(route, "public")
    assert schema == 'CREATE SCHEMA IF NOT EXISTS "shop"'
    assert '"order_id" bigint NOT NULL' in table
    assert '"customer" text NOT NULL' in table  # required
    assert '"amount" numeric,' in table
    assert '"ts" timestamptz' in table
    assert table.rstrip().endswith('PRIMARY KEY ("order_id")\n)')


def test_upsert_sql_is_one_statement_last_writer_wins(tmp_path: Path) -> None:
    route = _load(tmp_path, ORDERS).routes[0]
    sql = apply_sql(route, "public")
    assert sql.count(";") == 0
    assert 'SELECT DISTINCT ON ("order_id") *' in sql
    assert 'ORDER BY "order_id", _loom_ord DESC' in sql
    assert "WHERE _loom_ord >= $1 AND _loom_ord < $2" in sql
    assert 'DELETE FROM "shop"."orders" AS t USING _loom_last WHERE _loom_last._loom_delete' in sql
    assert "WHERE NOT _loom_last._loom_delete" in sql
    assert 'ON CONFLICT ("order_id") DO UPDATE SET "customer" = EXCLUDED."customer"' in sql
    assert '"order_id" = EXCLUDED' not in sql
    assert stage_columns(route)[:3] == ("_loom_ord", "_loom_delete", "order_id")


def test_add_columns_adds_nullable_columns(tmp_path: Path) -> None:
    route = _load(tmp_path, ORDERS).routes[0]
    assert add_columns_sql(route, "public", ["customer", "ts"]) == [
        'ALTER TABLE "shop"."orders" ADD COLUMN IF NOT EXISTS "customer" text',  # required, yet nullable here
        'ALTER TABLE "shop"."orders" ADD COLUMN IF NOT EXISTS "ts" timestamptz',
    ]


def test_insert_sql_appends_in_offset_order() -> None:
    route = load_routes(EXAMPLE).routes[1]
    sql = apply_sql(route, "public")
    assert sql.startswith('INSERT INTO "shop"."clicks" ("src_topic", ')
    assert sql.endswith("WHERE _loom_ord >= $1 AND _loom_ord < $2 ORDER BY _loom_ord")
    assert "ON CONFLICT" not in sql


def test_an_unqualified_table_is_in_loom_db_schema() -> None:
    route = Route.model_validate({"name": "r", "topic": "t", "table": "events", "columns": {"a": {"type": "int"}}})
    assert apply_sql(route, "loom").startswith('INSERT INTO "loom"."events" ("a")')


def _fitting(route: Route) -> dict[str, TableColumn]:
    return {c.name: TableColumn(c.type, True, False) for c in route.columns}


def test_a_fitting_table_has_no_problem(tmp_path: Path) -> None:
    route = _load(tmp_path, ORDERS).routes[0]
    extra = {"note": TableColumn("text", True, False), "id": TableColumn("bigint", False, True)}
    assert check_table(route, "t", {**_fitting(route), **extra}, [frozenset({"order_id"})]) == []


def test_an_unfit_table_names_table_column_and_fix(tmp_path: Path) -> None:
    route = _load(tmp_path, ORDERS).routes[0]
    found = _fitting(route)
    del found["customer"]
    found["amount"] = TableColumn("text", True, False)
    found["audit_by"] = TableColumn("text", False, False)
    problems = check_table(route, "shop.orders", found, [frozenset({"order_id", "src"})])
    assert problems == [
        'table shop.orders: column customer is missing; fix: ALTER TABLE shop.orders ADD COLUMN "customer" text, '
        "set add_columns = true in route 'orders', or remove the column from it",
        "table shop.orders: column amount is text but route 'orders' says numeric; fix: ALTER TABLE shop.orders "
        'ALTER COLUMN "amount" TYPE numeric, or declare type = "text" in the route if it is one of its types',
        "table shop.orders: column audit_by is NOT NULL without a default and route 'orders' gives it no value; "
        'fix: add audit_by to the route\'s columns, or ALTER TABLE shop.orders ALTER COLUMN "audit_by" SET DEFAULT ...',
        "table shop.orders: no primary key or unique index on (order_id), which upsert needs; "
        'fix: CREATE UNIQUE INDEX ON shop.orders ("order_id")',
    ]


# --- routes that name a pydantic model --------------------------------------------------------------------------

MODEL_ROUTE = """
[[route]]
name = "orders"
topic = "orders"
table = "orders"
mode = "upsert"
key = ["order_id"]
model = "tests.support.route_models:Order"
"""


def test_a_model_gives_the_columns(tmp_path: Path) -> None:
    route = _load(tmp_path, MODEL_ROUTE).routes[0]
    assert [(c.name, c.type, c.source, c.required) for c in route.columns] == [
        ("order_id", "bigint", "value", True),
        ("customer", "jsonb", "value", True),
        ("amount", "numeric", "value", True),
        ("placed_at", "timestamp with time zone", "value", False),
        ("tags", "jsonb", "value", False),
        ("note", "text", "value", False),
        ("paid", "boolean", "value", False),
    ]


def test_declared_columns_override_the_models(tmp_path: Path) -> None:
    text = (
        MODEL_ROUTE
        + '[route.columns]\norder_id = { type = "bigint", from = "key" }\nsrc = { type = "bigint", from = "offset" }\n'
    )
    route = _load(tmp_path, text).routes[0]
    columns = {c.name: c for c in route.columns}
    assert columns["order_id"].source == "key"
    assert columns["src"].source == "offset"
    assert len(route.columns) == 8


def test_the_model_validates_each_value(tmp_path: Path) -> None:
    route_plan = plan(_load(tmp_path, MODEL_ROUTE).routes[0])
    good = {"order_id": 7, "customer": {"name": "ann"}, "amount": "12.50", "placed_at": "2024-05-01T10:00:00Z"}
    values = _convert(route_plan, good)
    assert values == (
        7,
        '{"name":"ann"}',
        Decimal("12.50"),
        timestamp_micros("2024-05-01T10:00:00Z"),
        "[]",
        None,
        False,
    )
    negative = _convert(route_plan, {**good, "amount": -1})
    assert isinstance(negative, Rejection)
    assert negative.error_class == "ModelValidation"
    assert negative.error_message.startswith("route 'orders', column 'amount': Input should be greater than")
    missing = _convert(route_plan, {"order_id": 7, "amount": 1})
    assert isinstance(missing, Rejection)
    assert (missing.error_class, missing.error_message.split(":")[0]) == (
        "MissingField",
        "route 'orders', column 'customer'",
    )
    naive = _convert(route_plan, {**good, "placed_at": "2024-05-01T10:00:00"})  # the model takes it; the column not
    assert isinstance(naive, Rejection) and naive.error_class == "BadTimestamp"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("tests.support.route_models:Nope", "cannot be imported (AttributeError"),
        ("no_such_module:Order", "cannot be imported (ModuleNotFoundError"),
        ("tests.support.route_models", 'write model = "package.module:ClassName"'),
        ("tests.support.route_models:Field", "is not a pydantic model"),
        ("tests.support.route_models:Blob", "field data (<class 'bytes'>) has no column type"),
    ],
)
def test_a_bad_model_names_the_route_and_the_fix(tmp_path: Path, model: str, message: str) -> None:
    error = _error(tmp_path, MODEL_ROUTE.replace("tests.support.route_models:Order", model))
    assert "route 'orders'" in error
    assert message in error
