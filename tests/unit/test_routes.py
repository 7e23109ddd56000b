"""Routes: parsing and validating the file, converting a record's fields for its table, and the SQL (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from loom_ray.decode import Rejection
from loom_ray.errors import RoutesFileError
from loom_ray.formats import jsonify
from loom_ray.routes.convert import RoutePlan, convert, plan, tombstone
from loom_ray.routes.model import Route, load_routes, split_qualified
from loom_ray.routes.sql import (
    add_columns_sql,
    compare_sql,
    create_table_sql,
    delete_sql,
    insert_sql,
    stage_columns,
    upsert_sql,
)
from loom_ray.routes.types import timestamp_micros
from tests.support.shapes import pg, shape

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
ORDERS_TABLE = shape(
    {
        "order_id": pg("int8"),
        "customer": pg("text"),
        "amount": pg("numeric"),
        "tags": pg("jsonb"),
        "first_item": pg("text"),
        "source": pg("text"),
        "ts": pg("timestamptz"),
        "src": pg("int8"),
    },
    keys=[("order_id",)],
)


def _load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "routes.toml"
    path.write_text(text)
    return load_routes(path)


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(RoutesFileError) as caught:
        _load(tmp_path, text)
    return str(caught.value)


def _orders(tmp_path: Path) -> RoutePlan:
    return plan(_load(tmp_path, ORDERS).routes[0], ORDERS_TABLE)


# --- the file ---------------------------------------------------------------------------------------------------


def test_the_example_file_parses() -> None:
    routes = load_routes(EXAMPLE)
    assert [r.name for r in routes.routes] == ["orders", "clicks"]
    assert routes.route_for("orders") is routes.routes[0]
    assert routes.route_for("clicks.eu") is routes.routes[1]
    assert routes.route_for("clicks") is None  # the pattern must match the whole name
    assert routes.route_for("payments") is None  # no route: loom_messages


def test_columns_keep_their_order_declared_types_and_sources(tmp_path: Path) -> None:
    route = _load(tmp_path, ORDERS).routes[0]
    assert [(c.name, c.type, c.source) for c in route.columns][:3] == [
        ("order_id", "bigint", "key"),
        ("customer", "text", "value"),
        ("amount", "numeric", "value"),
    ]
    columns = {c.name: c for c in route.columns}
    assert columns["customer"].json_path == ("customer", "name")
    assert columns["amount"].json_path == ("amount",)  # the column's name by default
    assert (route.schema_name, route.table_name) == ("shop", "orders")


def test_names_are_taken_exactly_as_the_catalog_spells_them(tmp_path: Path) -> None:
    text = ORDERS.replace('table = "shop.orders"', 'table = \'"Sales"."Or.ders"\'').replace(
        "first_item = {", '"createdAt" = {'
    )
    route = _load(tmp_path, text).routes[0]
    assert (route.schema_name, route.table_name) == ("Sales", "Or.ders")
    assert route.label("public") == '"Sales"."Or.ders"'
    assert "createdAt" in [c.name for c in route.columns]
    assert split_qualified('shop."We ""quote"""') == ("shop", 'We "quote"')
    assert split_qualified("Orders") == (None, "Orders")


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
        (('type = "numeric"', 'type = "numeric; drop table x"'), "is not a PostgreSQL type name"),
        (('topic = "orders"', 'topic_pattern = "("'), "topic_pattern '(' is not a regular expression"),
        (('topic = "orders"', ""), "give exactly one of topic or topic_pattern"),
        (('table = "shop.orders"', 'table = "a.b.c"'), "write schema.table or table"),
        (("first_item = {", "_loom_x = {"), "names starting with _loom are loom-ray's own"),
        ((', header = "source"', ""), 'from = "header" needs header = "<header name>"'),
        (('from = "offset"', 'from = "offset", path = "x"'), 'path is only read with from = "value" or "key"'),
        (('on_tombstone = "delete"', 'on_tombstone = "delete"\ncolour = "red"'), "colour: Extra inputs"),
        (('on_tombstone = "delete"', 'on_tombstone = "delete"\nversion = "nope"'), "version names nope"),
        (('on_tombstone = "delete"', 'on_tombstone = "delete"\nversion = "order_id"'), "version order_id is part"),
        (('on_tombstone = "delete"', 'on_tombstone = "delete"\non_duplicate = "ignore"'), 'mode = "insert" with a'),
        (('on_tombstone = "delete"', 'on_tombstone = "delete"\nmodel_fields_read = ["a"]'), "set by loom-ray"),
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


def test_a_version_belongs_to_an_upsert(tmp_path: Path) -> None:
    insert = ORDERS.replace('mode = "upsert"', 'mode = "insert"').replace('on_tombstone = "delete"', 'version = "src"')
    assert 'version orders the records of a key for mode = "upsert" only' in _error(tmp_path, insert)


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
        ({"customer": {"name": "a"}, "amount": "1e140000"}, b"7", "OutOfRange", "amount", "than numeric holds"),
        ({"customer": {"name": "a"}, "amount": "1e-16384"}, b"7", "OutOfRange", "amount", "16383 digits after"),
        ({"customer": {"name": "a"}}, b"x7", "WrongType", "order_id", "expected decimal digits, got 'x7'"),
        ({"customer": {"name": "a"}}, str(2**63).encode(), "OutOfRange", "order_id", "outside bigint"),
        ({"customer": {"name": "a"}}, None, "MissingField", "order_id", "required, but key is null"),
        ({"customer": {"name": "a\x00"}}, b"7", "BadValue", "customer", "U+0000, which PostgreSQL text"),
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


@pytest.mark.parametrize(
    "value",
    [
        {
            "customer": {"name": "ann", "since": datetime(2020, 1, 2, tzinfo=UTC)},
            "amount": Decimal("12.50"),
            "tags": [Decimal("1.0"), b"\x00\xff", {"at": datetime(2026, 1, 1, 10, tzinfo=UTC)}],
            "items": [{"sku": "x1", "price": Decimal("3")}],
        },
        {"customer": {"name": b"ann"}, "amount": Decimal("1E+2")},  # bytes into text: refused as its base64
        {"customer": {"name": "a"}, "amount": Decimal("NaN")},
        {"customer": {"name": None}, "items": [{"sku": datetime(2026, 1, 1)}]},
    ],
)
def test_a_decoded_record_becomes_what_its_json_form_becomes(tmp_path: Path, value: Any) -> None:
    # A registry format's record through a route without a model: the paths find the same fields in the decoded
    # record, and each column gets the value, or the record the rejection, that its JSON form gets.
    route_plan = _orders(tmp_path)
    native = convert(route_plan, value, b"7", None, (1, 1_700_000_000_000), "orders", 2, 41, native=True)
    assert repr(native) == repr(_convert(route_plan, jsonify.document(value)))


def test_a_field_no_column_reads_may_hold_anything(tmp_path: Path) -> None:
    values = _convert(_orders(tmp_path), {"customer": {"name": "a"}, "note": "x\x00y"})
    assert not isinstance(values, Rejection)


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


def test_a_tombstone_deletes_by_key_with_its_metadata_or_is_a_dead_letter(tmp_path: Path) -> None:
    route_plan = _orders(tmp_path)
    deletes = tombstone(route_plan, b"7", [("source", b"app")], (1, 1_700_000_000_000), "orders", 0, 9)
    assert deletes == (7, None, None, None, None, "app", timestamp_micros("2023-11-14T22:13:20Z"), 9)
    bad_key = tombstone(route_plan, b"seven", None, (0, 0), "orders", 0, 9)
    assert isinstance(bad_key, Rejection) and bad_key.error_class == "WrongType"
    keeps = Route.model_validate({**route_plan.route.model_dump(by_alias=True), "on_tombstone": "dead_letter"})
    rejection = tombstone(plan(keeps, ORDERS_TABLE), b"7", None, (0, 0), "orders", 0, 9)
    assert isinstance(rejection, Rejection)
    assert rejection.error_class == "NullValue"
    assert 'set on_tombstone = "delete"' in rejection.error_message


def test_the_plan_follows_the_table_not_the_file(tmp_path: Path) -> None:
    """A route without types converts for the table's types: the same value fits one table, not another."""
    route = Route.model_validate({"name": "r", "topic": "t", "table": "t", "columns": {"code": {}, "n": {}}})
    wide = plan(route, shape({"code": pg("text"), "n": pg("int8")}))
    narrow = plan(route, shape({"code": pg("varchar", length=2), "n": pg("int2")}, signature="s2"))
    assert convert(wide, {"code": "NLD", "n": 70_000}, None, None, (0, 0), "t", 0, 0) == ("NLD", 70_000)
    refused = convert(narrow, {"code": "NLD", "n": 1}, None, None, (0, 0), "t", 0, 0)
    assert isinstance(refused, Rejection) and refused.error_class == "TooLong"
    assert "column 'code': 3 characters, over character varying(2)" in refused.error_message
    assert wide.stage != narrow.stage  # records of each shape go through a staging table of its own


# --- SQL ----------------------------------------------------------------------------------------------------------


def test_create_table_uses_the_declared_types_and_the_key_as_primary_key(tmp_path: Path) -> None:
    route = _load(tmp_path, ORDERS.replace('type = "numeric"', 'type = "numeric(12,2)"')).routes[0]
    schema, table = create_table_sql(route, "public")
    assert schema == 'CREATE SCHEMA IF NOT EXISTS "shop"'
    assert '"order_id" bigint NOT NULL' in table
    assert '"customer" text NOT NULL' in table  # required
    assert '"amount" numeric(12,2),' in table
    assert '"ts" timestamptz' in table
    assert table.rstrip().endswith('PRIMARY KEY ("order_id")\n)')


def test_upsert_sql_writes_one_record_per_key_by_number(tmp_path: Path) -> None:
    route_plan = _orders(tmp_path)
    sql = upsert_sql(route_plan, "loom")
    assert sql.startswith('INSERT INTO "shop"."orders" AS t (')
    assert "WHERE _loom_ord IN (SELECT unnest($1::int4[])) AND " in sql
    assert '(SELECT "loom".loom_route_guard($2::text::regclass, $3::text))' in sql
    assert 'SELECT DISTINCT ON ("order_id")' in sql and 'ORDER BY "order_id", _loom_ord DESC' in sql
    assert 'ON CONFLICT ("order_id") DO UPDATE SET "customer" = EXCLUDED."customer"' in sql
    assert '"order_id" = EXCLUDED' not in sql
    assert "RETURNING" not in sql  # without a version every chosen record applies
    delete = delete_sql(route_plan, "loom")
    assert delete.startswith('DELETE FROM "shop"."orders" AS t USING (SELECT * FROM ')
    assert 't."order_id" = d."order_id"' in delete
    assert stage_columns(route_plan)[:3] == ("_loom_ord", "_loom_delete", "order_id")


def test_a_version_keeps_the_newer_row_and_returns_the_stale_records(tmp_path: Path) -> None:
    text = ORDERS.replace('on_tombstone = "delete"', 'on_tombstone = "delete"\nversion = "ts"')
    route_plan = plan(_load(tmp_path, text).routes[0], ORDERS_TABLE)
    sql = upsert_sql(route_plan, "loom")
    assert 'WHERE t."ts" IS NULL OR t."ts" <= EXCLUDED."ts"' in sql
    assert sql.startswith("WITH _loom_in AS (") and 'RETURNING t."order_id"' in sql
    assert "AND NOT EXISTS (SELECT 1 FROM _loom_in" in sql
    compare = compare_sql(route_plan, "loom")
    assert '(s."ts" IS NOT NULL AND t."ts" IS NOT NULL AND s."ts" < t."ts")' in compare
    assert compare.endswith('ORDER BY t."order_id" FOR UPDATE OF t')  # rows locked in key order


def test_insert_sql_appends_in_offset_order_or_skips_duplicates() -> None:
    routes = load_routes(EXAMPLE)
    route = routes.routes[1]
    table = shape(
        {
            c.name: pg(
                {"text": "text", "integer": "int4", "bigint": "int8", "uuid": "uuid"}.get(c.type or "", "timestamptz")
            )
            for c in route.columns
        },  # fmt: skip
        keys=[tuple(route.key)],
        label='"shop"."clicks"',
    )
    sql = insert_sql(plan(route, table), "loom")
    assert sql.startswith('INSERT INTO "shop"."clicks" ("src_topic", ')
    assert sql.endswith("ORDER BY _loom_ord") and "ON CONFLICT" not in sql
    ignoring = Route.model_validate({**route.model_dump(by_alias=True), "on_duplicate": "ignore"})
    sql = insert_sql(plan(ignoring, table), "loom")
    assert 'ON CONFLICT ("src_topic", "src_partition", "src_offset") DO NOTHING RETURNING' in sql


def test_add_columns_adds_nullable_columns_of_the_declared_type(tmp_path: Path) -> None:
    route = _load(tmp_path, ORDERS).routes[0]
    assert add_columns_sql(route, "public", ["customer", "ts"]) == [
        'ALTER TABLE "shop"."orders" ADD COLUMN IF NOT EXISTS "customer" text',  # required, yet nullable here
        'ALTER TABLE "shop"."orders" ADD COLUMN IF NOT EXISTS "ts" timestamptz',
    ]


def test_an_unqualified_table_is_in_loom_db_schema() -> None:
    route = Route.model_validate({"name": "r", "topic": "t", "table": "events", "columns": {"a": {"type": "int"}}})
    assert route.label("loom") == '"loom"."events"'


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
MODEL_TABLE = shape(
    {
        "order_id": pg("int8"),
        "customer": pg("jsonb"),
        "amount": pg("numeric"),
        "placed_at": pg("timestamptz"),
        "tags": pg("jsonb"),
        "note": pg("text"),
        "paid": pg("bool"),
        "src": pg("int8"),
        "raw_note": pg("text"),
    },
    keys=[("order_id",)],
)


def test_a_model_gives_the_columns(tmp_path: Path) -> None:
    route = _load(tmp_path, MODEL_ROUTE).routes[0]
    assert [(c.name, c.type, c.source, c.required) for c in route.columns] == [
        ("order_id", "bigint", "value", True),
        ("customer", "jsonb", "value", True),
        ("amount", "numeric", "value", True),
        ("placed_at", "timestamptz", "value", False),
        ("tags", "jsonb", "value", False),
        ("note", "text", "value", False),
        ("paid", "boolean", "value", False),
    ]
    assert route.model_fields_read == tuple(c.name for c in route.columns)


def test_declared_columns_override_the_models(tmp_path: Path) -> None:
    text = MODEL_ROUTE + '[route.columns]\norder_id = { from = "key" }\nsrc = { from = "offset" }\n'
    route = _load(tmp_path, text).routes[0]
    columns = {c.name: c for c in route.columns}
    assert columns["order_id"].source == "key"
    assert columns["src"].source == "offset"
    assert len(route.columns) == 8
    assert "order_id" not in route.model_fields_read and "src" not in route.model_fields_read


def test_the_model_validates_each_value(tmp_path: Path) -> None:
    route_plan = plan(_load(tmp_path, MODEL_ROUTE).routes[0], MODEL_TABLE)
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


def test_declared_columns_of_a_model_route_read_the_value_as_it_came(tmp_path: Path) -> None:
    """The model's dump drops fields it does not declare; a column under [route.columns] still finds them."""
    text = MODEL_ROUTE + '[route.columns]\nraw_note = { path = "extra.note" }\n'
    route_plan = plan(_load(tmp_path, text).routes[0], MODEL_TABLE)
    value = {"order_id": 7, "customer": {"name": "a"}, "amount": 1, "extra": {"note": "kept"}}
    values = _convert(route_plan, value)
    assert not isinstance(values, Rejection)
    assert values[-1] == "kept"


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
