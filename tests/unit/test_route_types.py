"""The conversion of a field into the column's real type (:mod:`loom_ray.routes.types`): what fits, what is
refused, and which PostgreSQL rules (rounding, cutting trailing spaces, UTC) apply."""

from __future__ import annotations

import datetime
import math
import uuid
from datetime import date, time
from decimal import Decimal
from typing import Any

import orjson
import pytest

from loom_ray.formats import jsonify
from loom_ray.routes.catalog import PgType
from loom_ray.routes.types import Unfit, converter, native_converter, timestamp_micros
from loom_ray.sink.codecs import kafka_ts_micros
from tests.support.shapes import pg

STATUS = pg("enum", labels=("new", "paid"))


def _json(t: PgType, value: Any, rounds: bool = False) -> Any:
    convert = converter(t, "json", rounds)
    assert convert is not None
    return convert(value)


@pytest.mark.parametrize(
    ("t", "value", "expected"),
    [
        (pg("int2"), -32768, -32768),
        (pg("int4"), 2**31 - 1, 2**31 - 1),
        (pg("int8"), -(2**63), -(2**63)),
        (pg("numeric"), 10**30, Decimal(10**30)),
        (pg("numeric"), 0.1, Decimal("0.1")),  # a JSON number with a fraction: its shortest decimal form
        (pg("numeric"), "123.4500", Decimal("123.4500")),
        (pg("numeric"), "1e131071", Decimal("1e131071")),  # the most digits before the point numeric holds
        (pg("numeric", precision=10, scale=2), "12.5", Decimal("12.50")),
        (pg("numeric", precision=10, scale=2), "12.500", Decimal("12.50")),  # trailing zeros lose nothing
        (pg("numeric", precision=10, scale=2), 99_999_999.99, Decimal("99999999.99")),
        (pg("numeric", precision=3, scale=-2), 12300, Decimal("1.23E+4")),  # PostgreSQL 15: a negative scale
        (pg("float8"), 2**53, float(2**53)),
        (pg("float8"), 1.5, 1.5),
        (pg("float4"), 1.5, 1.5),
        (pg("float8"), "Infinity", math.inf),  # JSON's names for the floats it cannot hold
        (pg("float4"), "-Infinity", -math.inf),
        (pg("bool"), False, False),
        (pg("text"), "é ✓", "é ✓"),
        (pg("varchar", length=3), "abc", "abc"),
        (pg("varchar", length=3), "abc   ", "abc"),  # PostgreSQL cuts trailing spaces beyond the length
        (pg("bpchar", length=2), "NL", "NL"),
        (pg("json"), {"b": [1, None]}, '{"b":[1,null]}'),
        (pg("json"), "a\x00b", '"a\\u0000b"'),  # json keeps the escape; jsonb cannot
        (pg("jsonb"), None, "null"),
        (pg("timestamptz"), "2000-01-01T00:00:01+00:00", 1_000_000),
        (pg("timestamptz"), "2000-01-01T02:00:00+02:00", 0),
        (pg("timestamp"), "2000-01-01T00:00:01", 1_000_000),  # no zone: as written
        (pg("timestamp"), "2000-01-01T02:00:01+02:00", 1_000_000),  # a zone: converted to UTC
        (pg("timestamp", precision=3), "2000-01-01T00:00:00.123", 123_000),
        (pg("timestamptz"), "2000-01-01T00:00:00.000001000Z", 1),  # nanoseconds that are whole microseconds
        (pg("date"), "2024-02-29", date(2024, 2, 29)),
        (pg("time"), "10:11:12.5", time(10, 11, 12, 500_000)),
        (pg("uuid"), "12345678-1234-5678-1234-567812345678", uuid.UUID("12345678-1234-5678-1234-567812345678")),
        (pg("bytea"), "AAH/", b"\x00\x01\xff"),
        (STATUS, "paid", "paid"),
        (pg("int4", domain="posint"), 3, 3),  # a domain converts as its base type; its CHECK is the table's
        (pg("array", element=pg("text")), ["a", None, "b"], ["a", None, "b"]),
        (pg("array", element=pg("int2")), [], []),
        (pg("array", element=STATUS), ["new"], ["new"]),
    ],
)
def test_json_values_that_fit(t: PgType, value: Any, expected: Any) -> None:
    assert _json(t, value) == expected


@pytest.mark.parametrize("kind", ["float4", "float8"])
def test_nan_reaches_a_float_column_from_its_json_name_and_as_decoded(kind: str) -> None:
    assert math.isnan(_json(pg(kind), "NaN"))
    assert math.isnan(native_converter(pg(kind))(math.nan))


@pytest.mark.parametrize(
    ("t", "value", "error_class", "reason"),
    [
        (pg("int2"), 32768, "OutOfRange", "outside smallint"),
        (pg("int4"), 1.0, "WrongType", "a JSON integer"),  # no float into an integer, even a whole one
        (pg("int4"), "1", "WrongType", "a JSON integer"),  # no string either
        (pg("int8"), True, "WrongType", "got boolean"),
        (pg("numeric"), "1e131072", "OutOfRange", "more digits before the point"),  # asyncpg would store 0
        (pg("numeric"), "1e140000", "OutOfRange", "more digits before the point"),
        (pg("numeric"), "-1e-16384", "OutOfRange", "16383 digits after the point"),
        (pg("numeric"), "Infinity", "OutOfRange", "not a finite number"),
        (pg("numeric", precision=10, scale=2), "1.234", "OutOfRange", "PostgreSQL would round it"),
        (pg("numeric", precision=10, scale=2), 100_000_000, "OutOfRange", "does not fit numeric(10,2)"),
        (pg("numeric", precision=10, scale=2), 0.1 + 0.2, "OutOfRange", "more decimals than numeric(10,2)"),
        (pg("float8"), 2**53 + 1, "OutOfRange", "exactly"),  # a double cannot hold it exactly
        (pg("float4"), 1e39, "OutOfRange", "real's range"),
        (pg("float8"), "nan", "WrongType", "a JSON number"),  # the three names only, as written
        (pg("float4"), "1.5", "WrongType", "a JSON number"),
        (pg("bool"), 1, "WrongType", "true or false"),
        (pg("text"), 12, "WrongType", "a JSON string"),
        (pg("text"), "a\x00", "BadValue", "U+0000"),
        (pg("varchar", length=3), "abcd", "TooLong", "4 characters, over character varying(3)"),
        (pg("varchar", length=3), "abc d", "TooLong", "over character varying(3)"),
        (pg("bpchar", length=2), "NLD", "TooLong", "over character(2)"),
        (pg("jsonb"), {"k": "\x00"}, "BadValue", "jsonb"),
        (pg("timestamptz"), "2024-05-01T10:00:00", "BadTimestamp", "has no time zone"),
        (pg("timestamptz"), "yesterday", "BadTimestamp", "not an ISO 8601 time"),
        (pg("timestamptz"), 1_700_000_000_000, "WrongType", "a JSON string"),
        (pg("timestamp", precision=0), "2000-01-01T00:00:00.5", "BadTimestamp", "more fractional digits"),
        # Nanoseconds (Protobuf Timestamp, Debezium's nano types): Python's parser would drop them silently.
        (pg("timestamptz"), "2024-05-01T10:00:00.123456789Z", "BadTimestamp", "microseconds at most"),
        (pg("time"), "10:00:00.0000001", "BadTimestamp", "microseconds at most"),
        (pg("time"), "10:00:00+02:00", "BadTimestamp", "has a time zone"),
        (pg("time"), "25:00", "BadTimestamp", "not a time"),
        (pg("date"), "2024-02-30", "BadValue", "not a date"),
        (pg("date"), "20240201", "BadValue", "not a date"),
        (pg("uuid"), "not-a-uuid", "BadValue", "not a UUID"),
        (pg("bytea"), "***", "BadValue", "not base64"),
        (STATUS, "lost", "BadValue", "not a label of status (new, paid)"),
        (STATUS, 1, "WrongType", "a JSON string"),
        (pg("array", element=pg("int4")), [[1]], "WrongType", "element 0 is an array"),
        (pg("array", element=pg("int4")), [1, "2"], "WrongType", "element 1: expected a JSON integer"),
        (pg("array", element=pg("int4")), {"a": 1}, "WrongType", "a JSON array"),
    ],
)
def test_json_values_that_do_not_fit(t: PgType, value: Any, error_class: str, reason: str) -> None:
    with pytest.raises(Unfit) as caught:
        _json(t, value)
    assert caught.value.error_class == error_class
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    ("t", "value", "expected"),
    [
        (pg("numeric", precision=10, scale=2), "1.235", Decimal("1.24")),  # half away from zero, as PostgreSQL
        (pg("numeric", precision=10, scale=2), "-1.235", Decimal("-1.24")),
        (pg("numeric", precision=10, scale=2), 0.1 + 0.2, Decimal("0.30")),
        (pg("timestamp", precision=0), "2000-01-01T00:00:00.5", 1_000_000),
        # Before 2000 (PostgreSQL's epoch) a tie rounds towards the past: away from zero, as PostgreSQL does.
        (pg("timestamptz", precision=1), "1999-12-31T23:59:59.95Z", -100_000),
        (pg("timestamptz", precision=1), "2000-01-01T00:00:00.05Z", 100_000),
        (pg("time", precision=0), "10:00:00.4", time(10, 0, 0)),
        (pg("timestamp"), "2000-01-01T00:00:00.0000015", 2),
        (pg("timestamp"), "2000-01-01T00:00:00.0000014999", 1),
        (pg("timestamptz"), "1999-12-31T23:59:59.9999995Z", -1),  # -0.5 µs: away from zero
        (pg("timestamptz"), "1999-12-31T23:59:59.99999951Z", 0),
        (pg("time"), "10:00:00.1234565", time(10, 0, 0, 123457)),
    ],
)
def test_round_true_rounds_as_postgresql_does(t: PgType, value: Any, expected: Any) -> None:
    assert _json(t, value, rounds=True) == expected


def test_rounding_never_makes_a_value_fit_that_does_not() -> None:
    with pytest.raises(Unfit, match="does not fit numeric"):
        _json(pg("numeric", precision=4, scale=2), "99.999", rounds=True)  # 100.00 needs 3 integer digits
    with pytest.raises(Unfit, match="rounds to 24:00:00"):
        _json(pg("time", precision=0), "23:59:59.7", rounds=True)


def test_bytes_sources() -> None:
    def from_bytes(t: PgType, raw: bytes) -> Any:
        convert = converter(t, "bytes")
        assert convert is not None
        return convert(raw)

    assert from_bytes(pg("int4"), b"-12") == -12
    assert from_bytes(pg("bytea"), b"\xff\x00") == b"\xff\x00"
    assert from_bytes(pg("text"), b"order-1") == "order-1"
    assert from_bytes(pg("numeric", precision=5, scale=1), b"12.5") == Decimal("12.5")
    assert from_bytes(STATUS, b"new") == "new"
    with pytest.raises(Unfit, match="not UTF-8"):
        from_bytes(pg("text"), b"\xff")
    with pytest.raises(Unfit, match="expected decimal digits"):
        from_bytes(pg("int8"), b"1.0")
    with pytest.raises(Unfit, match="over character varying"):
        from_bytes(pg("varchar", length=2), b"abc")
    assert converter(pg("jsonb"), "bytes") is None  # a JSON key needs a path
    assert converter(pg("array", element=pg("text")), "bytes") is None


def test_metadata_sources() -> None:
    ts = converter(pg("timestamp"), "timestamp")
    assert ts is not None and ts(1_700_000_000_000) == kafka_ts_micros(1_700_000_000_000)  # the UTC wall time
    assert ts(1_700_000_000_000) == timestamp_micros("2023-11-14T22:13:20", zone_required=False)
    offset = converter(pg("numeric"), "offset")
    assert offset is not None and offset(41) == Decimal(41)
    partition = converter(pg("int2"), "partition")
    assert partition is not None and partition(3) == 3
    topic = converter(pg("varchar", length=3), "topic")
    assert topic is not None
    with pytest.raises(Unfit, match="over character varying"):
        topic("orders")
    assert converter(pg("text"), "timestamp") is None
    assert converter(pg("timestamptz"), "offset") is None


def _exact(value: Any) -> Any:
    """The value with its type and form: Decimal("12.50") is not Decimal("12.5"), 1 is not 1.0 nor True."""
    if type(value) is list:
        return [_exact(item) for item in value]
    return (type(value).__name__, repr(value))


def _outcome(convert: Any, value: Any) -> tuple[Any, ...]:
    try:
        return ("fits", _exact(convert(value)))
    except Unfit as unfit:
        return ("unfit", unfit.error_class, unfit.reason)
    except orjson.JSONEncodeError as exc:  # no JSON form (a time with a zone): the record's conversion fails
        return ("no JSON form", str(exc))


_UTC = datetime.UTC
_DECODED = [
    Decimal("12.50"),
    Decimal("-0.005"),
    Decimal("1E+2"),
    Decimal("123456789012345678901234567890.123456789"),
    Decimal("NaN"),
    Decimal("Infinity"),
    datetime.datetime(2026, 12, 7, 10, 11, 12, 345000, tzinfo=_UTC),
    datetime.datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=datetime.timezone(datetime.timedelta(hours=-5))),
    datetime.datetime(2026, 12, 7, 10, 11, 12, 1),  # a wall time (Avro local-timestamp-micros)
    datetime.datetime(1, 1, 1, tzinfo=_UTC),
    datetime.date(2024, 2, 29),
    datetime.date(1, 1, 1),
    datetime.time(10, 11, 12, 500),
    datetime.time(0, 0),
    datetime.time(10, 0, tzinfo=_UTC),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    b"\x00\x01\xff",
    b"",
    bytearray(b"ab"),
    [Decimal("1.5"), None, Decimal("2")],
    [datetime.datetime(2026, 1, 1, tzinfo=_UTC)],
    [b"ab", None],
    {"amount": Decimal("3.10"), "at": datetime.datetime(2026, 1, 1, tzinfo=_UTC), "raw": b"\x00", "n": [1, None]},
    "12.5",
    12,
    1.25,
    True,
]
_KINDS = [
    pg("numeric"),
    pg("numeric", precision=10, scale=2),
    pg("numeric", precision=4, scale=1),
    pg("int2"),
    pg("int4"),
    pg("int8"),
    pg("float4"),
    pg("float8"),
    pg("text"),
    pg("varchar", length=4),
    pg("bool"),
    pg("timestamptz"),
    pg("timestamp"),
    pg("timestamptz", precision=3),
    pg("date"),
    pg("time"),
    pg("time", precision=0),
    pg("uuid"),
    pg("bytea"),
    pg("json"),
    pg("jsonb"),
    STATUS,
    pg("array", element=pg("numeric", precision=6, scale=2)),
    pg("array", element=pg("timestamptz")),
    pg("array", element=pg("bytea")),
    pg("array", element=pg("text")),
]


@pytest.mark.parametrize("t", _KINDS, ids=lambda t: t.sql)
@pytest.mark.parametrize("rounds", [False, True])
def test_a_decoded_value_converts_as_its_json_form(t: PgType, rounds: bool) -> None:
    # A registry format's route converts the record as its codec decoded it: every value and every refusal is
    # the one the record's JSON form gets (loom_ray.formats.jsonify.document, what replay and earlier versions read).
    as_json = converter(t, "json", rounds)
    assert as_json is not None
    native = native_converter(t, rounds)
    for value in _DECODED:
        try:
            expected = _outcome(as_json, jsonify.document(value))
        except orjson.JSONEncodeError as exc:
            expected = ("no JSON form", str(exc))
        assert _outcome(native, value) == expected, (t.sql, value)
