"""The conversions of a record's field into the type its column really has (:class:`~loom_ray.routes.catalog.PgType`).

Built once per route and table shape (:func:`converter`), run on the consumer actor for every routed record.
A conversion returns what asyncpg's binary COPY sends for the column, or raises :class:`Unfit` with the
reason; the caller makes that a dead letter naming the route and the column. Nothing is coerced that would
change the data, and nothing is rounded or cut unless PostgreSQL's own rule says so and the message below
says it:

- integers (``smallint``/``integer``/``bigint``): JSON integers in range only (``true``, ``1.0`` and ``"1"``
  are refused);
- ``numeric(p,s)``/``numeric``: a JSON integer exactly, a number with a fraction through its shortest decimal
  form (send a string such as ``"12.50"`` to keep every digit), a string holding a finite decimal. A value
  with more decimals than ``s`` is refused (PostgreSQL would round it), unless the column says
  ``round = true``: then it is rounded half away from zero, as PostgreSQL does; one whose integer part has
  more than ``p - s`` digits, or beyond what PostgreSQL's numeric holds (131072 digits before the point,
  16383 after), is refused;
- ``real``/``double precision``: numbers (a double only if it holds the integer exactly; real's range), and the
  strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (how JSON, and the codecs, write those floats);
- ``boolean``: ``true``/``false``; ``text``: JSON strings; ``varchar(n)``/``char(n)``: strings of at most
  ``n`` characters (longer ones are refused, except that trailing spaces beyond ``n`` are cut, as
  PostgreSQL cuts them; ``char(n)`` pads shorter ones, as PostgreSQL does);
- ``timestamptz``: an ISO 8601 string with a time zone (``Z`` or ``+02:00``); ``timestamp`` (without time
  zone): an ISO 8601 string, stored as written when it has no zone and converted to UTC when it has one;
  ``date``: ``YYYY-MM-DD``; ``time``: ``HH:MM[:SS[.ffffff]]`` without a zone. A time with more fractional
  digits than the column keeps (``timestamp(3)``) is refused unless ``round = true``;
- ``uuid``: its text form; ``bytea``: base64 text; ``json``: any JSON value; ``jsonb``: any JSON value
  without U+0000; an enum: one of its labels; a domain: its base type's conversion (its CHECK constraints are
  the table's: a refused row is isolated at write time); a one-dimensional array of any of these: a JSON
  array (``null`` elements allowed);
- from bytes (the whole Kafka key, a header): the text types (UTF-8), ``bytea`` as is, the integers and
  ``numeric`` from their decimal text, ``uuid``, an enum's label;
- from the record's metadata: its timestamp into ``timestamptz`` or ``timestamp`` (UTC), its topic into a
  text type, its partition and offset into an integer or ``numeric``;
- a JSON ``null`` and a missing field are SQL NULL; a column marked ``required`` refuses both.

Strings holding U+0000 are refused for the text types and ``jsonb``: PostgreSQL cannot store that character.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from typing import Any

import orjson

from loom_ray.decode import contains_nul
from loom_ray.formats import jsonify
from loom_ray.routes.catalog import ARRAY, ENUM, PgType
from loom_ray.sink.codecs import PG_EPOCH, kafka_ts_micros

Converter = Callable[[Any], Any]

_INT_BOUNDS = {"int2": 2**15, "int4": 2**31, "int8": 2**63}
_INTEGERS = frozenset(_INT_BOUNDS)
_TEXTS = frozenset({"text", "varchar", "bpchar"})
_TIMES = frozenset({"timestamp", "timestamptz"})
_REAL_MAX = 3.4028234663852886e38
_NUMERIC_MAX_ADJUSTED = 131071  # the most significant digit's exponent PostgreSQL's numeric holds
_NUMERIC_MIN_EXPONENT = -16383  # digits after the point
_DECIMALS = Context(prec=1_000_000, Emax=1_000_000, Emin=-1_000_000)  # exact arithmetic for the checks
_DIGITS = re.compile(r"^[+-]?[0-9]+$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_MICROSECOND = timedelta(microseconds=1)
_SUB_MICROS = re.compile(r"(:[0-9]{2}[.,][0-9]{6})([0-9]+)")  # seconds with digits past the sixth

# What each source may fill, by PgType.kind (arrays from JSON only).
BYTES_KINDS = frozenset({*_TEXTS, "bytea", *_INTEGERS, "numeric", "uuid", ENUM})
METADATA_KINDS = {
    "timestamp": frozenset(_TIMES),
    "topic": frozenset(_TEXTS),
    "partition": frozenset({*_INTEGERS, "numeric"}),
    "offset": frozenset({*_INTEGERS, "numeric"}),
}
# Kinds a route's version may have: ordered, and compared the same way in Python and PostgreSQL.
VERSION_KINDS = frozenset({*_INTEGERS, "numeric", "timestamp", "timestamptz", "date"})


class Unfit(Exception):
    """A field that does not fit its column: ``error_class`` (MissingField, WrongType, OutOfRange, TooLong,
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


def converter(pg: PgType, source: str, rounds: bool = False) -> Converter | None:
    """The conversion of a field from ``source`` (``json``, ``bytes``, or a metadata source: ``timestamp``,
    ``topic``, ``partition``, ``offset``) into a column of type ``pg``; None if that source cannot fill that
    type. ``rounds``: the column's ``round = true``."""
    if source == "json":
        return _json(pg, rounds)
    if source == "bytes":
        return _from_bytes(pg, rounds) if pg.kind in BYTES_KINDS else None
    if pg.kind not in METADATA_KINDS[source]:
        return None
    if source == "timestamp":
        return _kafka_timestamp(pg, rounds)
    if source == "topic":
        return _text(pg)
    bound = _INT_BOUNDS.get(pg.kind)
    return Decimal if bound is None else _integer(pg, bound)


def native_converter(pg: PgType, rounds: bool = False) -> Converter:
    """The conversion of a field from a record as its codec decoded it (:meth:`Codec.decode
    <loom_ray.formats.base.Codec.decode>`: JSON values beside Decimal, datetime, date, time, UUID, bytes) into
    a column of type ``pg``: the value, or the refusal, :func:`converter` gives for the field's JSON form
    (:func:`loom_ray.formats.jsonify.document`). The decoded types a column of the same kind holds exactly
    (a Decimal into ``numeric``, a datetime into a timestamp of microseconds, ...) are taken as they are; any
    other is written as JSON first and converted as such."""
    as_json = _json(pg, rounds)
    fast: dict[type, Converter]
    if pg.kind == ARRAY:
        assert pg.element is not None
        fast = {list: _array(pg, native_converter(pg.element, rounds))}
    else:
        fast = _native_fast(pg, rounds)

    def convert(value: Any) -> Any:
        kind = type(value)
        if kind in _JSON_SCALARS:
            return as_json(value)
        taken = fast.get(kind)
        if taken is not None:
            found = taken(value)
            if found is not _AS_JSON:
                return found
        return as_json(jsonify.document(value))

    return convert


_JSON_SCALARS = frozenset({str, int, float, bool})
_AS_JSON = object()  # a native conversion's answer: convert this value through its JSON form


def _native_fast(pg: PgType, rounds: bool) -> dict[type, Converter]:
    """The decoded types that ``pg``'s kind takes as they are (each the value its JSON form converts to)."""
    kind = pg.kind
    if kind == "numeric":
        return {Decimal: _numeric(pg, rounds, _finite_decimal)}
    if kind in _TIMES and _fraction_step(pg) == 1:
        zone_required = kind == "timestamptz"

        def moment(value: datetime) -> Any:
            if value.tzinfo is None:
                if zone_required:
                    return _AS_JSON  # refused, with the message its text gets
                value = value.replace(tzinfo=UTC)
            return (value - PG_EPOCH) // _MICROSECOND

        return {datetime: moment}
    if kind == "time" and _fraction_step(pg) == 1:
        return {time: lambda value: value if value.tzinfo is None else _AS_JSON}
    if kind == "date":
        return {date: _same}
    if kind == "uuid":
        return {uuid.UUID: _same}
    if kind == "bytea":
        return {bytes: _same}
    return {}


def _finite_decimal(value: Decimal) -> Decimal:
    return value if value.is_finite() else _decimal_text(str(value))


def _json(pg: PgType, rounds: bool) -> Converter:
    kind = pg.kind
    if kind in _INT_BOUNDS:
        return _json_integer(pg, _INT_BOUNDS[kind])
    if kind == ARRAY:
        assert pg.element is not None
        return _array(pg, _json(pg.element, rounds))
    simple: dict[str, Converter] = {
        "float4": _json_real,
        "float8": _json_double,
        "bool": _json_boolean,
        "uuid": _json_uuid,
        "json": _json_json,
        "jsonb": _json_jsonb,
        "bytea": _json_bytea,
        "date": _json_date,
    }
    if kind in simple:
        return simple[kind]
    if kind == "numeric":
        return _numeric(pg, rounds, _json_decimal)
    if kind in _TEXTS:
        return _json_string(_text(pg))
    if kind == ENUM:
        return _json_string(_enum(pg))
    if kind == "time":
        return _json_string(_time(pg, rounds))
    return _json_string(_timestamp(pg, rounds))


def _from_bytes(pg: PgType, rounds: bool) -> Converter:
    if pg.kind == "bytea":
        return _same
    if pg.kind in _INT_BOUNDS:
        to_int = _integer(pg, _INT_BOUNDS[pg.kind])
        return lambda raw: to_int(_digits(_utf8(raw)))
    if pg.kind == "numeric":
        return _numeric(pg, rounds, lambda raw: _decimal_text(_utf8(raw)))
    if pg.kind == "uuid":
        return lambda raw: _uuid(_utf8(raw))
    finish = _text(pg) if pg.kind in _TEXTS else _enum(pg)
    return lambda raw: finish(_utf8(raw))


# --- numbers -------------------------------------------------------------------------------------------------


def _integer(pg: PgType, bound: int) -> Converter:
    def convert(value: int) -> int:
        if not -bound <= value < bound:
            raise Unfit("OutOfRange", f"{value} is outside {pg.describe()} ({-bound} to {bound - 1})")
        return value

    return convert


def _json_integer(pg: PgType, bound: int) -> Converter:
    """A JSON integer into an integer column: one call per value, the range check inlined."""
    in_range = _integer(pg, bound)

    def convert(value: Any) -> Any:
        if type(value) is not int:
            raise _wrong("a JSON integer", value)
        if not -bound <= value < bound:
            in_range(value)  # raises OutOfRange
        return value

    return convert


def _digits(text: str) -> int:
    if not _DIGITS.match(text):
        raise Unfit("WrongType", f"expected decimal digits, got {text[:60]!r}")
    return int(text)


def _json_decimal(value: Any) -> Decimal:
    if type(value) is int:
        return Decimal(value)
    if type(value) is float:
        return Decimal(repr(value))
    if type(value) is str:
        return _decimal_text(value)
    raise _wrong("a JSON number or a string holding a decimal number", value)


def _decimal_text(text: str) -> Decimal:
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise Unfit("WrongType", f"expected a decimal number, got {describe(text)}") from None
    if not number.is_finite():
        raise Unfit("OutOfRange", f"{text[:60]!r} is not a finite number")
    return number


def _numeric(pg: PgType, rounds: bool, read: Converter) -> Converter:
    """``read`` (a field into a Decimal), then the checks of ``numeric(p,s)`` or of numeric's own limits."""
    name = pg.describe()
    if pg.precision is None:

        def unconstrained(value: Any) -> Decimal:
            number: Decimal = read(value)
            if number and number.adjusted() > _NUMERIC_MAX_ADJUSTED:
                raise Unfit("OutOfRange", f"{_short(number)} has more digits before the point than numeric holds")
            exponent = number.as_tuple().exponent
            assert isinstance(exponent, int)  # finite
            if exponent < _NUMERIC_MIN_EXPONENT:
                raise Unfit("OutOfRange", f"{_short(number)} has more than 16383 digits after the point")
            return number

        return unconstrained
    assert pg.scale is not None
    step = Decimal(1).scaleb(-pg.scale)
    digits = pg.precision - pg.scale
    bound = Decimal(1).scaleb(digits)

    def constrained(value: Any) -> Decimal:
        number: Decimal = read(value)
        rounded = number.quantize(step, rounding=ROUND_HALF_UP, context=_DECIMALS)
        if rounded != number and not rounds:
            raise Unfit(
                "OutOfRange",
                f"{_short(number)} has more decimals than {name} keeps ({pg.scale}); PostgreSQL would round it: "
                "send it rounded, or set round = true on the column",
            )
        if abs(rounded) >= bound:
            raise Unfit("OutOfRange", f"{_short(number)} does not fit {name} (below 10^{digits})")
        return rounded

    return constrained


def _short(number: Decimal) -> str:
    text = str(number)
    return text if len(text) <= 60 else f"{text[:40]}...e{number.adjusted()}"


# The floats JSON cannot hold, as protobuf's JSON mapping names them (and loom-ray's codecs write them,
# loom_ray.formats.jsonify.finite): a real or double precision column holds each.
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_A_FLOAT = 'a JSON number (or "NaN", "Infinity", "-Infinity")'


def _json_double(value: Any) -> float:
    if type(value) is float:
        return value
    if type(value) is int:
        as_float = float(value)  # orjson gives ints within 64 bits only: no overflow
        if as_float != value:
            raise Unfit("OutOfRange", f"{value} cannot be held exactly by a double precision")
        return as_float
    if type(value) is str and value in _NON_FINITE:
        return _NON_FINITE[value]
    raise _wrong(_A_FLOAT, value)


def _json_real(value: Any) -> float:
    if type(value) is float:
        number = value
    elif type(value) is int:
        number = float(value)
    elif type(value) is str and value in _NON_FINITE:
        return _NON_FINITE[value]
    else:
        raise _wrong(_A_FLOAT, value)
    if abs(number) > _REAL_MAX:
        raise Unfit("OutOfRange", f"{value} is outside real's range (about 3.4e38)")
    return number


def _json_boolean(value: Any) -> bool:
    if type(value) is not bool:
        raise _wrong("true or false", value)
    return value


# --- text --------------------------------------------------------------------------------------------------


def _json_string(then: Callable[[str], Any]) -> Converter:
    """A converter that takes JSON strings only and hands them to ``then``."""

    def convert(value: Any) -> Any:
        if type(value) is not str:
            raise _wrong("a JSON string", value)
        return then(value)

    return convert


def _text(pg: PgType) -> Callable[[str], str]:
    """A string into a text type: no U+0000, and at most ``n`` characters for ``varchar(n)``/``char(n)``."""
    limit = pg.length

    def convert(text: str) -> str:
        if "\x00" in text:
            raise Unfit("BadValue", "holds U+0000, which PostgreSQL text cannot store")
        if limit is not None and len(text) > limit:
            if text[limit:].strip(" "):
                raise Unfit("TooLong", f"{len(text)} characters, over {pg.describe()}")
            return text[:limit]  # PostgreSQL cuts trailing spaces beyond the length the same way
        return text

    return convert


def _enum(pg: PgType) -> Callable[[str], str]:
    labels = frozenset(pg.labels)
    shown = ", ".join(pg.labels[:10]) + (", ..." if len(pg.labels) > 10 else "")

    def convert(text: str) -> str:
        if text not in labels:
            raise Unfit("BadValue", f"{text[:60]!r} is not a label of {pg.describe()} ({shown})")
        return text

    return convert


def _utf8(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Unfit("BadValue", f"{raw[:30]!r} is not UTF-8") from None
    if "\x00" in text:
        raise Unfit("BadValue", "holds U+0000, which PostgreSQL text cannot store")
    return text


def _json_json(value: Any) -> str:
    return orjson.dumps(value).decode("utf-8")


def _json_jsonb(value: Any) -> str:
    if contains_nul(value):
        raise Unfit("BadValue", "holds U+0000, which PostgreSQL jsonb cannot store")
    return orjson.dumps(value).decode("utf-8")


def _json_uuid(value: Any) -> uuid.UUID:
    if type(value) is not str:
        raise _wrong("a UUID string", value)
    return _uuid(value)


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise Unfit("BadValue", f"{text[:60]!r} is not a UUID") from None


def _json_bytea(value: Any) -> bytes:
    if type(value) is not str:
        raise _wrong("a base64 string", value)
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise Unfit("BadValue", f"{value[:60]!r} is not base64") from None


# --- times ---------------------------------------------------------------------------------------------------


def _json_date(value: Any) -> date:
    if type(value) is not str:
        raise _wrong("a date string YYYY-MM-DD", value)
    try:
        if not _DATE.match(value):
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise Unfit("BadValue", f"{value[:60]!r} is not a date YYYY-MM-DD") from None


def _fraction_step(pg: PgType) -> int:
    """Microseconds per step of the column's fractional precision (1 for the default, 6 digits)."""
    return 1 if pg.precision is None else 10 ** (6 - min(pg.precision, 6))


def _round_micros(micros: int, step: int, pg: PgType, rounds: bool, text: str) -> int:
    """``micros`` at the column's precision: refused with more digits, unless ``rounds`` (half away from zero,
    as PostgreSQL rounds)."""
    if step == 1 or micros % step == 0:
        return micros
    if not rounds:
        raise Unfit(
            "BadTimestamp",
            f"{text[:60]!r} has more fractional digits than {pg.describe()} keeps; PostgreSQL would round it: "
            "send it rounded, or set round = true on the column",
        )
    half = step // 2
    return (micros + half) // step * step if micros >= 0 else -((-micros + half) // step * step)


def _to_micros(text: str, pg: PgType, rounds: bool) -> tuple[str, str]:
    """``text`` with its fraction of a second cut to microseconds (Python's parsers drop finer digits without
    a word), and the digits cut (for :func:`_add_finer`): digits past the sixth that are not all zero (a
    nanosecond time) are refused, as PostgreSQL would round them, unless ``rounds``."""
    found = _SUB_MICROS.search(text)
    if found is None:
        return text, ""
    finer = found.group(2).rstrip("0")
    if finer and not rounds:
        raise Unfit(
            "BadTimestamp",
            f"{text[:60]!r} has more fractional digits than {pg.describe()} keeps (microseconds at most); "
            "PostgreSQL would round it: send it rounded, or set round = true on the column",
        )
    return text[: found.end(1)] + text[found.end(2) :], finer


def _add_finer(micros: int, finer: str) -> int:
    """``micros`` (cut towards the past) plus the cut digits ``finer``, rounded to a microsecond half away
    from zero, as PostgreSQL rounds: a tie goes up after 2000-01-01 and stays (towards the past) before it."""
    if not finer or finer[0] < "5":
        return micros
    return micros + 1 if micros >= 0 or finer != "5" else micros


def timestamp_micros(text: str, zone_required: bool = True) -> int:
    """An ISO 8601 time (at most microseconds: :func:`_to_micros` first) as the int microseconds since
    2000-01-01 (UTC) the timestamp codecs send: with a zone, converted to UTC; without one, as written
    (refused when ``zone_required``)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Unfit("BadTimestamp", f"{text[:60]!r} is not an ISO 8601 time (e.g. 2024-05-01T12:00:00Z)") from None
    if moment.tzinfo is None:
        if zone_required:
            raise Unfit("BadTimestamp", f"{text[:60]!r} has no time zone: add Z or an offset such as +02:00")
        moment = moment.replace(tzinfo=UTC)
    return (moment - PG_EPOCH) // _MICROSECOND


def _timestamp(pg: PgType, rounds: bool) -> Callable[[str], int]:
    zone_required = pg.kind == "timestamptz"
    step = _fraction_step(pg)

    def convert(text: str) -> int:
        cut, finer = _to_micros(text, pg, rounds)
        return _round_micros(_add_finer(timestamp_micros(cut, zone_required), finer), step, pg, rounds, text)

    return convert


def _time(pg: PgType, rounds: bool) -> Callable[[str], time]:
    step = _fraction_step(pg)

    def convert(text: str) -> time:
        cut, finer = _to_micros(text, pg, rounds)
        try:
            moment = time.fromisoformat(cut)
        except ValueError:
            raise Unfit("BadTimestamp", f"{text[:60]!r} is not a time HH:MM[:SS[.ffffff]]") from None
        if moment.tzinfo is not None:
            raise Unfit("BadTimestamp", f"{text[:60]!r} has a time zone, which {pg.describe()} does not keep")
        micros = ((moment.hour * 60 + moment.minute) * 60 + moment.second) * 1_000_000 + moment.microsecond
        micros = _add_finer(micros, finer)
        micros = _round_micros(micros, step, pg, rounds, text)
        if micros == 86_400_000_000:
            raise Unfit("BadTimestamp", f"{text[:60]!r} rounds to 24:00:00")
        seconds, micro = divmod(micros, 1_000_000)
        return time(seconds // 3600, seconds // 60 % 60, seconds % 60, micro)

    return convert


def _kafka_timestamp(pg: PgType, rounds: bool) -> Converter:
    """The record's timestamp (ms since 1970) into ``timestamptz`` or ``timestamp`` (its UTC wall time)."""
    step = _fraction_step(pg)

    def convert(ts_ms: int) -> int:
        try:
            micros = kafka_ts_micros(ts_ms)
        except ValueError as exc:
            raise Unfit("BadTimestamp", f"the record's timestamp: {exc}") from None
        return _round_micros(micros, step, pg, rounds, f"{ts_ms} ms")

    return convert


# --- composites ----------------------------------------------------------------------------------------------


def _array(pg: PgType, element: Converter) -> Converter:
    """A JSON array into a one-dimensional array; ``null`` elements are NULL."""

    def convert(value: Any) -> list[Any]:
        if type(value) is not list:
            raise _wrong(f"a JSON array ({pg.describe()})", value)
        out: list[Any] = []
        for index, item in enumerate(value):
            if item is None:
                out.append(None)
                continue
            if type(item) is list:
                raise Unfit("WrongType", f"element {index} is an array: {pg.describe()} takes one dimension")
            try:
                out.append(element(item))
            except Unfit as unfit:
                raise Unfit(unfit.error_class, f"element {index}: {unfit.reason}") from None
        return out

    return convert


def _same(value: Any) -> Any:
    """Raw bytes into ``bytea``, or a decoded value its column holds: as they are."""
    return value
