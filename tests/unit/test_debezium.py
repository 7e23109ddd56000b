"""Debezium change events for a route (envelope = "debezium"): the envelope and Connect's types read
(loom_ray.formats.debezium, loom_ray.formats.connect), each op into a row, a delete or a dead letter
(loom_ray.routes.convert.change_values), and what the routes file accepts. On the real stack:
tests/integration/test_debezium.py and tests/faults/test_debezium.py."""

from __future__ import annotations

import base64
import datetime as dt
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from loom_ray.decode import Rejection
from loom_ray.errors import RoutesFileError
from loom_ray.formats import connect, debezium
from loom_ray.loadgen.debezium import ENVELOPE_SCHEMA, ChangeEncoder, row_image
from loom_ray.routes.convert import change_values, plan
from loom_ray.routes.model import RouteSet, load_routes
from tests.support.shapes import pg, shape

ROUTE = """
[[route]]
name = "accounts"
topic = "accounts"
table = "accounts"
mode = "upsert"
key = ["id"]
envelope = "debezium"
position = "src_position"
{extra}

[route.columns]
id = {{ type = "bigint" }}
name = {{ type = "text" }}
balance = {{ type = "numeric(12,2)" }}
src_position = {{ type = "numeric" }}
"""


def _route_set(extra: str = "") -> RouteSet:
    return RouteSet.model_validate(tomllib.loads(ROUTE.format(extra=extra)))


def _plan(extra: str = "") -> Any:
    columns = {"id": pg("int8"), "name": pg("text"), "balance": pg("numeric", precision=12, scale=2)}
    return plan(_route_set(extra).routes[0], shape({**columns, "src_position": pg("numeric")}, keys=[("id",)]))


def _values(event: debezium.Change, offset: int = 5, key: Any = None, extra: str = "") -> Any:
    return change_values(_plan(extra), event, key, None, None, (0, 0), "accounts", 0, offset)


@pytest.mark.parametrize(
    ("name", "parameters", "raw", "expected"),
    [
        (connect.DECIMAL, {"scale": "2"}, base64.b64encode(b"\x04\xd2").decode(), Decimal("12.34")),
        (connect.DECIMAL, {"scale": "2"}, base64.b64encode(b"\xfb\x2e").decode(), Decimal("-12.34")),
        (connect.DECIMAL, {"scale": "0"}, 7, Decimal(7)),  # JsonConverter's decimal.format=NUMERIC
        ("org.apache.kafka.connect.data.Date", None, 19_783, dt.date(2024, 3, 1)),
        ("org.apache.kafka.connect.data.Time", None, 3_600_001, dt.time(1, 0, 0, 1000)),
        ("org.apache.kafka.connect.data.Timestamp", None, 1_000, dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=dt.UTC)),
        ("io.debezium.time.Date", None, -1, dt.date(1969, 12, 31)),
        ("io.debezium.time.MicroTime", None, 1, dt.time(0, 0, 0, 1)),
        ("io.debezium.time.NanoTime", None, 1_000, dt.time(0, 0, 0, 1)),
        ("io.debezium.time.NanoTime", None, 1, "00:00:00.000000001"),  # not whole microseconds: exact text
        ("io.debezium.time.Timestamp", None, 1_500, dt.datetime(1970, 1, 1, 0, 0, 1, 500_000)),
        ("io.debezium.time.MicroTimestamp", None, -1, dt.datetime(1969, 12, 31, 23, 59, 59, 999_999)),
        ("io.debezium.time.NanoTimestamp", None, 1_000_000_001, "1970-01-01T00:00:01.000000001"),
        ("io.debezium.data.VariableScaleDecimal", None, {"scale": 3, "value": b"\x30\x39"}, Decimal("12.345")),
        ("io.debezium.data.Json", None, '{"a": [1]}', {"a": [1]}),
    ],
)
def test_connect_types_become_the_values_they_stand_for(name: str, parameters: Any, raw: Any, expected: Any) -> None:
    conversion = connect.converter(name, parameters)
    assert conversion is not None
    assert conversion(raw) == expected


def test_names_loom_ray_does_not_convert_leave_the_value_as_it_is() -> None:
    assert connect.converter("io.debezium.time.ZonedTimestamp") is None
    assert connect.converter(None) is None


def test_a_time_of_day_outside_the_day_is_refused() -> None:
    conversion = connect.converter("io.debezium.time.MicroTime")
    assert conversion is not None
    with pytest.raises(ValueError, match="not a time of day"):
        conversion(86_400_000_000)


def test_the_json_converter_envelope_is_unwrapped_with_its_types() -> None:
    encoder = ChangeEncoder("envelope", "accounts", None)
    value = orjson.loads(encoder.value({"op": "c", "before": None, "after": row_image(7, 3), "source": {"lsn": 9}}))
    assert value["schema"] == ENVELOPE_SCHEMA
    event = debezium.change(value)
    assert isinstance(event, debezium.Change)
    assert (event.op, event.before, event.lsn, event.ts_ms) == ("c", None, 9, None)
    assert event.after == {
        "id": 7,
        "name": "account 7",
        "balance": str(row_image(7, 3)["balance"]),  # exact decimal text for the route
        "updated_at": "2025-01-01T00:00:00.003000",  # MicroTimestamp: a wall time
        "note": "note 3",
    }


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ({"hello": 1}, "op is None"),
        ([1, 2], "a JSON list, not an object"),
        ({"op": "u", "after": [1]}, "before and after must be objects"),
        (
            {"schema": {"type": "bytes", "name": connect.DECIMAL}, "payload": "not base64!"},
            "does not fit its Connect type",
        ),
    ],
)
def test_a_value_that_is_not_a_change_event_is_a_dead_letter(document: Any, words: str) -> None:
    found = debezium.change(document)
    assert isinstance(found, Rejection) and found.stage == "decode" and words in found.error_message


def test_the_position_is_the_lsn_else_the_commit_time_then_the_offset() -> None:
    assert debezium.position(debezium.Change("u", None, {}, 77, 5), 3) == 77
    assert debezium.position(debezium.Change("u", None, {}, None, 5), 3) == 5 * 10**19 + 3
    later = debezium.position(debezium.Change("u", None, {}, None, 6), 0)
    assert later is not None and later > debezium.position(debezium.Change("u", None, {}, None, 5), 2**63 - 1)
    assert debezium.position(debezium.Change("u", None, {}, None, None), 3) is None


def test_create_read_and_update_write_the_after_image_with_the_position() -> None:
    after = {"id": 7, "name": "ann", "balance": "12.50"}
    for op in ("c", "r", "u"):
        assert _values(debezium.Change(op, None, after, 100, None)) == (
            False,
            (7, "ann", Decimal("12.50"), Decimal(100)),
        )


def test_a_delete_deletes_by_the_before_image_or_the_kafka_key() -> None:
    before = {"id": 7, "name": None, "balance": None}
    assert _values(debezium.Change("d", before, None, 101, None)) == (True, (7, None, None, Decimal(101)))
    assert _values(debezium.Change("d", None, None, 102, None), key={"id": 8}) == (True, (8, None, None, Decimal(102)))
    found = _values(debezium.Change("d", None, None, 102, None))
    assert isinstance(found, Rejection) and "a delete without a before image" in found.error_message


def test_a_truncate_is_a_dead_letter_unless_the_route_ignores_it() -> None:
    truncate = debezium.Change("t", None, None, 5, None)
    found = _values(truncate)
    assert isinstance(found, Rejection) and found.error_class == "UnappliedChange"
    assert 'on_truncate = "ignore"' in found.error_message
    assert _values(truncate, extra='on_truncate = "ignore"') is None


def test_an_event_without_a_position_cannot_be_ordered() -> None:
    found = _values(debezium.Change("u", None, {"id": 7}, None, None))
    assert (
        isinstance(found, Rejection) and found.error_class == "MissingField" and "'src_position'" in found.error_message
    )


def test_the_position_column_is_the_routes_version() -> None:
    route = _route_set().routes[0]
    assert route.version == "src_position"


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ('mode = "upsert"\nkey = ["id"]\n', "", 'needs mode = "upsert" and a key'),
        (
            'envelope = "debezium"',
            'envelope = "debezium"\non_tombstone = "delete"',
            "the tombstone after it is ignored",
        ),
        ('position = "src_position"', 'position = "nope"', "position names nope"),
        ('src_position = { type = "numeric" }', 'src_position = { path = "lsn" }', "give it neither from nor path"),
    ],
    ids=["insert", "tombstone", "unknown-position", "position-path"],
)
def test_the_routes_file_says_what_a_debezium_route_needs(old: str, new: str, words: str, tmp_path: Any) -> None:
    text = ROUTE.format(extra="")
    assert old in text
    path = tmp_path / "routes.toml"
    path.write_text(text.replace(old, new))
    with pytest.raises(RoutesFileError, match=words):
        load_routes(path)


def test_position_and_on_truncate_belong_to_debezium_routes(tmp_path: Any) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(ROUTE.format(extra="").replace('envelope = "debezium"\n', ""))
    with pytest.raises(RoutesFileError, match='position is read with envelope = "debezium" only'):
        load_routes(path)


def test_the_example_replica_routes_file_is_valid() -> None:
    found = load_routes(Path(__file__).resolve().parents[2] / "examples" / "replica.toml")
    assert [(r.envelope, r.version, r.format) for r in found.routes] == [
        ("debezium", "src_lsn", None),
        ("debezium", "src_lsn", "avro"),
    ]
