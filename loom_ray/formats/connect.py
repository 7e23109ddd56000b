"""Kafka Connect's and Debezium's logical types as the values they stand for.

A Connect converter writes a decimal as the bytes of its unscaled integer, a date as days since 1970, a
Debezium ``MicroTimestamp`` as microseconds: the number alone says nothing, the type's name says what it is
(the Connect schema's ``name``, inline in JSON's ``{"schema", "payload"}`` envelope, or ``connect.name`` in an
Avro schema written by Confluent's AvroConverter). :func:`converter` gives the conversion of a type name into
the Python value it stands for (:class:`~decimal.Decimal`, :class:`~datetime.date`, ...), which
:mod:`loom_ray.formats.jsonify` then writes exactly. Pure; built once per schema, run per value.

A value of the wrong shape raises :class:`ValueError` or :class:`TypeError`; the caller makes the record a
dead letter naming the field. A value already converted (an Avro decimal fastavro read as a Decimal) is
passed through.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import orjson

Conversion = Callable[[Any], Any]

_EPOCH_DATE = dt.date(1970, 1, 1)
_EPOCH = dt.datetime(1970, 1, 1)
_DAY_MICROS = 86_400_000_000


def _unscaled(value: Any) -> int:
    """A decimal's unscaled integer from its big-endian two's-complement bytes (base64 in JSON)."""
    raw = base64.b64decode(value, validate=True) if type(value) is str else value
    if not isinstance(raw, bytes | bytearray):
        raise TypeError(f"expected the bytes of a decimal, got {type(value).__name__}")
    return int.from_bytes(raw, "big", signed=True)


def _decimal(scale: int) -> Conversion:
    def convert(value: Any) -> Any:
        if isinstance(value, Decimal):
            return value
        if type(value) is int:  # JsonConverter's decimal.format=NUMERIC: the number itself
            return Decimal(value)
        if type(value) is float:
            return Decimal(repr(value))
        return Decimal(_unscaled(value)).scaleb(-scale)

    return convert


def _variable_scale_decimal(value: Any) -> Any:
    """Debezium's ``VariableScaleDecimal``: a struct of ``scale`` and ``value`` (the unscaled bytes)."""
    if not isinstance(value, Mapping):
        return value
    return Decimal(_unscaled(value["value"])).scaleb(-int(value["scale"]))


def _days(value: Any) -> Any:
    return _EPOCH_DATE + dt.timedelta(days=value) if type(value) is int else value


def _time_of_day(per_second: int) -> Conversion:
    """A time of day counted in 1/``per_second`` seconds since midnight; a nanosecond count that is not whole
    microseconds stays exact as text."""

    def convert(value: Any) -> Any:
        if type(value) is not int:
            return value
        micros, rest = divmod(value * 1_000_000, per_second)
        if not 0 <= micros < _DAY_MICROS:
            raise ValueError(f"{value} is not a time of day")
        moment = (_EPOCH + dt.timedelta(microseconds=micros)).time()
        return moment if rest == 0 else f"{moment.isoformat(timespec='seconds')}.{value % per_second:09d}"

    return convert


def _instant(per_second: int, zone: dt.tzinfo | None) -> Conversion:
    """A timestamp counted in 1/``per_second`` seconds since 1970: an instant in UTC (``zone``), or a wall time
    without a zone (Debezium's ``Timestamp`` types, for columns without a time zone)."""

    def convert(value: Any) -> Any:
        if type(value) is not int:
            return value
        micros, rest = divmod(value * 1_000_000, per_second)
        moment = (_EPOCH + dt.timedelta(microseconds=micros)).replace(tzinfo=zone)
        if rest == 0:
            return moment
        text = f"{moment.replace(microsecond=0, tzinfo=None).isoformat()}.{value % per_second:09d}"
        return text + ("Z" if zone is not None else "")

    return convert


def _json_text(value: Any) -> Any:
    """Debezium's ``Json``: a JSON document carried as a string."""
    return orjson.loads(value) if type(value) is str else value


_BY_NAME: dict[str, Conversion] = {
    "org.apache.kafka.connect.data.Date": _days,
    "org.apache.kafka.connect.data.Time": _time_of_day(1000),
    "org.apache.kafka.connect.data.Timestamp": _instant(1000, dt.UTC),
    "io.debezium.time.Date": _days,
    "io.debezium.time.Time": _time_of_day(1000),
    "io.debezium.time.MicroTime": _time_of_day(1_000_000),
    "io.debezium.time.NanoTime": _time_of_day(1_000_000_000),
    "io.debezium.time.Timestamp": _instant(1000, None),
    "io.debezium.time.MicroTimestamp": _instant(1_000_000, None),
    "io.debezium.time.NanoTimestamp": _instant(1_000_000_000, None),
    "io.debezium.data.VariableScaleDecimal": _variable_scale_decimal,
    "io.debezium.data.Json": _json_text,
}
DECIMAL = "org.apache.kafka.connect.data.Decimal"


def converter(name: str | None, parameters: Mapping[str, Any] | None = None) -> Conversion | None:
    """The conversion of a value of the Connect type ``name`` (with its schema ``parameters``), or None when
    the value is what it says (a string, a number, or a type loom-ray does not know)."""
    if name == DECIMAL:
        return _decimal(int((parameters or {}).get("scale", 0)))
    return _BY_NAME.get(name or "")
