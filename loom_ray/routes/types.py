"""The PostgreSQL types a route's column may have, and the pure conversions of a record's field into each.

Runs on the consumer actor for every routed record, inside the decode step. A conversion returns the value
asyncpg's binary COPY sends for the column, or raises :class:`Unfit` with the reason; the caller makes that
a dead letter naming the route and the column. Nothing is coerced that would change the data:

- from JSON (a value field, or a key read with a ``path``): integers only into ``smallint``/``integer``/
  ``bigint`` (in range; ``true``, ``1.0`` and ``"1"`` are refused); a JSON integer into ``numeric``
  exactly, a JSON number with a fraction through its shortest decimal form (send a JSON string, e.g.
  ``"12.50"``, to keep every digit; a string must hold a finite decimal number); any JSON number into
  ``double precision`` if the double holds it exactly; ``real`` rounds to single precision and refuses what
  is beyond its range; ``boolean`` from ``true``/``false``; ``text`` from a JSON string only; ``jsonb``
  from any JSON value; ``timestamptz`` from an ISO 8601 string with a time zone (``Z`` or ``+02:00``);
  ``date`` from ``YYYY-MM-DD``; ``uuid`` from its text form; ``bytea`` from base64 text;
- from bytes (the whole Kafka key, a header): ``bytea`` as is; ``text`` from UTF-8; ``smallint``/
  ``integer``/``bigint`` from decimal digits; ``uuid`` from its text form;
- a JSON ``null`` and a missing field are SQL NULL; a column marked ``required`` refuses both;
- the JSON parser (orjson) reads integers outside 64 bits, and so beyond ``bigint``, as doubles: into
  ``numeric`` they keep 17 significant digits. Send such numbers as strings to keep every digit.

Strings holding U+0000 are refused for ``text`` and ``jsonb``: PostgreSQL cannot store that character.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any

import orjson

from loom_ray.decode import contains_nul
from loom_ray.sink.codecs import PG_EPOCH

# Canonical names, as information_schema.columns.data_type spells them, and the aliases a file may use.
TYPE_ALIASES = {
    "text": "text",
    "boolean": "boolean",
    "bool": "boolean",
    "smallint": "smallint",
    "int2": "smallint",
    "integer": "integer",
    "int": "integer",
    "int4": "integer",
    "bigint": "bigint",
    "int8": "bigint",
    "real": "real",
    "float4": "real",
    "double precision": "double precision",
    "float8": "double precision",
    "numeric": "numeric",
    "decimal": "numeric",
    "timestamptz": "timestamp with time zone",
    "timestamp with time zone": "timestamp with time zone",
    "date": "date",
    "uuid": "uuid",
    "jsonb": "jsonb",
    "bytea": "bytea",
}
# Types a column read from raw bytes (the whole key, a header) may have.
BYTES_TYPES = frozenset({"text", "bytea", "smallint", "integer", "bigint", "uuid"})
# What each canonical type is called in DDL.
DDL_NAMES = {name: "timestamptz" if name == "timestamp with time zone" else name for name in TYPE_ALIASES.values()}

_INT_RANGES = {"smallint": 2**15, "integer": 2**31, "bigint": 2**63}
_REAL_MAX = 3.4028234663852886e38
_DIGITS = re.compile(r"^[+-]?[0-9]+$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_MICROSECOND = timedelta(microseconds=1)

Converter = Callable[[Any], Any]


class Unfit(Exception):
    """A field that does not fit its column: ``error_class`` (MissingField, WrongType, OutOfRange,
    BadTimestamp, BadValue) and the reason, which the dead letter's message carries."""

    def __init__(self, error_class: str, reason: str) -> None:
        super().__init__(reason)
        self.error_class = error_class
        self.reason = reason


def describe(value: Any) -> str:
    """A JSON value's kind and (shortened) text, for a reason."""
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )
    text = orjson.dumps(value).decode("utf-8") if kind != type(value).__name__ else repr(value)
    return f"{kind} {text[:60]}{'...' if len(text) > 60 else ''}"


def _wrong(expected: str, value: Any) -> Unfit:
    return Unfit("WrongType", f"expected {expected}, got {describe(value)}")


def _integer(pg_type: str, value: int) -> int:
    bound = _INT_RANGES[pg_type]
    if not -bound <= value < bound:
        raise Unfit("OutOfRange", f"{value} is outside {pg_type} ({-bound} to {bound - 1})")
    return value


def _json_integer(pg_type: str) -> Converter:
    """The converter of a JSON integer into ``pg_type``: one call per value, the range check inlined."""
    bound = _INT_RANGES[pg_type]

    def convert(value: Any) -> int:
        if type(value) is not int:
            raise _wrong("a JSON integer", value)
        if not -bound <= value < bound:
            return _integer(pg_type, value)  # raises OutOfRange
        return value

    return convert


def _json_numeric(value: Any) -> Decimal:
    if type(value) is int:
        return Decimal(value)
    if type(value) is float:
        return Decimal(repr(value))
    if type(value) is str:
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise Unfit("WrongType", f"expected a decimal number, got {describe(value)}") from None
        if not number.is_finite():
            raise Unfit("OutOfRange", f"{value!r} is not a finite number")
        return number
    raise _wrong("a JSON number or a string holding a decimal number", value)


def _json_double(value: Any) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        as_float = float(value)  # orjson gives ints within 64 bits only: no overflow
        if as_float != value:
            raise Unfit("OutOfRange", f"{value} cannot be held exactly by a double precision")
        return as_float
    raise _wrong("a JSON number", value)


def _json_real(value: Any) -> float:
    if type(value) is float:
        number = value
    elif type(value) is int:
        number = float(value)
    else:
        raise _wrong("a JSON number", value)
    if abs(number) > _REAL_MAX:
        raise Unfit("OutOfRange", f"{value} is outside real's range (about 3.4e38)")
    return number


def _json_boolean(value: Any) -> bool:
    if type(value) is not bool:
        raise _wrong("true or false", value)
    return value


def _json_text(value: Any) -> str:
    if type(value) is not str:
        raise _wrong("a JSON string", value)
    if "\x00" in value:
        raise Unfit("BadValue", "holds U+0000, which PostgreSQL text cannot store")
    return value


def _json_jsonb(value: Any) -> str:
    if contains_nul(value):
        raise Unfit("BadValue", "holds U+0000, which PostgreSQL jsonb cannot store")
    return orjson.dumps(value).decode("utf-8")


def timestamp_micros(text: str) -> int:
    """An ISO 8601 time with a time zone as the int microseconds since 2000 the timestamptz codec sends."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Unfit("BadTimestamp", f"{text[:60]!r} is not an ISO 8601 time (e.g. 2024-05-01T12:00:00Z)") from None
    if moment.tzinfo is None:
        raise Unfit("BadTimestamp", f"{text[:60]!r} has no time zone: add Z or an offset such as +02:00")
    return (moment - PG_EPOCH) // _MICROSECOND


def _json_timestamptz(value: Any) -> int:
    if type(value) is not str:
        raise _wrong("an ISO 8601 string with a time zone", value)
    return timestamp_micros(value)


def _json_date(value: Any) -> date:
    if type(value) is not str:
        raise _wrong("a date string YYYY-MM-DD", value)
    try:
        if not _DATE.match(value):
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise Unfit("BadValue", f"{value[:60]!r} is not a date YYYY-MM-DD") from None


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise Unfit("BadValue", f"{text[:60]!r} is not a UUID") from None


def _json_uuid(value: Any) -> uuid.UUID:
    if type(value) is not str:
        raise _wrong("a UUID string", value)
    return _uuid(value)


def _json_bytea(value: Any) -> bytes:
    if type(value) is not str:
        raise _wrong("a base64 string", value)
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise Unfit("BadValue", f"{value[:60]!r} is not base64") from None


def _utf8(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Unfit("BadValue", f"{raw[:30]!r} is not UTF-8") from None
    if "\x00" in text:
        raise Unfit("BadValue", "holds U+0000, which PostgreSQL text cannot store")
    return text


def _bytes_integer(pg_type: str, raw: bytes) -> int:
    text = _utf8(raw)
    if not _DIGITS.match(text):
        raise Unfit("WrongType", f"expected decimal digits, got {text[:60]!r}")
    return _integer(pg_type, int(text))


def _bytes_text(raw: bytes) -> str:
    return _utf8(raw)


def _bytes_bytea(raw: bytes) -> bytes:
    return raw


def _bytes_uuid(raw: bytes) -> uuid.UUID:
    return _uuid(_utf8(raw))


FROM_JSON: dict[str, Converter] = {
    "text": _json_text,
    "boolean": _json_boolean,
    "smallint": _json_integer("smallint"),
    "integer": _json_integer("integer"),
    "bigint": _json_integer("bigint"),
    "real": _json_real,
    "double precision": _json_double,
    "numeric": _json_numeric,
    "timestamp with time zone": _json_timestamptz,
    "date": _json_date,
    "uuid": _json_uuid,
    "jsonb": _json_jsonb,
    "bytea": _json_bytea,
}
FROM_BYTES: dict[str, Converter] = {
    "text": _bytes_text,
    "bytea": _bytes_bytea,
    "smallint": partial(_bytes_integer, "smallint"),
    "integer": partial(_bytes_integer, "integer"),
    "bigint": partial(_bytes_integer, "bigint"),
    "uuid": _bytes_uuid,
}
