"""A decoded Protobuf message as plain values, exactly: what :mod:`loom_ray.formats.jsonify` writes.

protobuf's own JSON mapping (``json_format.MessageToDict``) writes 64-bit integers as strings and leaves
out fields holding their default value, so a route's ``bigint`` column would refuse ``"7"`` and a ``0``
would read as missing. This reads a message field by field instead, compiled once per message type
(:func:`reader`):

- every field without presence (a proto3 scalar) has its value, ``0`` and ``""`` included; a field with
  presence (a message, ``optional``, a ``oneof`` member) is left out when it is not set (a route reads it as
  NULL);
- integers of every width are integers; ``bytes`` are bytes (base64 in JSON); an enum is its value's name (its
  number when the schema does not name it); a float that JSON cannot hold is named (:func:`~jsonify.finite`);
- a map is an object (keys as text), a repeated field an array;
- well-known types: ``google.protobuf.Timestamp`` an aware datetime (ISO 8601 text with nine digits when
  it holds nanoseconds), the wrappers (``Int64Value``, ``StringValue``, ...) their value, ``Duration``,
  ``Struct``, ``Value``, ``ListValue``, ``Any``, ``FieldMask`` and ``Empty`` protobuf's JSON mapping;
  ``google.type.Date`` a date, ``google.type.TimeOfDay`` a time, and ``confluent.type.Decimal`` (Confluent's
  decimal: the unscaled bytes and a scale) and ``google.type.Decimal`` (text) a Decimal.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from loom_ray.formats.jsonify import finite

Read = Callable[[Any], Any]
_WRAPPERS = frozenset(
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)
_JSON_MAPPED = frozenset(
    f"google.protobuf.{name}" for name in ("Duration", "Struct", "Value", "ListValue", "Any", "FieldMask", "Empty")
)
_FLOATS = frozenset({FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE})
_UTC_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def reader(descriptor: Descriptor) -> Read:
    """The function that reads messages of ``descriptor``'s type into a dict (see the module docstring)."""
    return _Compiler().message(descriptor)


def _timestamp(message: Any) -> Any:
    seconds, nanos = message.seconds, message.nanos
    if nanos % 1000 == 0:
        return _UTC_EPOCH + dt.timedelta(seconds=seconds, microseconds=nanos // 1000)
    return message.ToJsonString()


def _date(message: Any) -> Any:
    return dt.date(message.year, message.month, message.day)


def _time_of_day(message: Any) -> Any:
    nanos = message.nanos
    moment = dt.time(message.hours, message.minutes, message.seconds, nanos // 1000)
    return moment if nanos % 1000 == 0 else f"{moment.isoformat(timespec='seconds')}.{nanos:09d}"


def _confluent_decimal(message: Any) -> Decimal:
    return Decimal(int.from_bytes(message.value, "big", signed=True)).scaleb(-message.scale)


def _google_decimal(message: Any) -> Decimal:
    return Decimal(message.value)


def _json_mapped(message: Any) -> Any:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


_WELL_KNOWN: dict[str, Read] = {
    "google.protobuf.Timestamp": _timestamp,
    "google.type.Date": _date,
    "google.type.TimeOfDay": _time_of_day,
    "confluent.type.Decimal": _confluent_decimal,
    "google.type.Decimal": _google_decimal,
    **dict.fromkeys(_JSON_MAPPED, _json_mapped),
}


class _Compiler:
    """Builds readers per message type, once each (a recursive type reuses the reader being built)."""

    def __init__(self) -> None:
        self._messages: dict[str, Read] = {}

    def message(self, descriptor: Descriptor) -> Read:
        name = descriptor.full_name
        if name in self._messages:
            return self._messages[name]
        known = _WELL_KNOWN.get(name)
        if known is not None:
            return known
        if name in _WRAPPERS:
            return self._wrapper(descriptor)
        fields: list[tuple[str, bool, Read | None]] = []

        def read(message: Any) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for field_name, presence, convert in fields:
                if presence and not message.HasField(field_name):
                    continue
                value = getattr(message, field_name)
                out[field_name] = value if convert is None else convert(value)
            return out

        self._messages[name] = read
        for field in descriptor.fields:
            fields.append((field.name, field.has_presence, self._field(field)))
        return read

    def _wrapper(self, descriptor: Descriptor) -> Read:
        inner = self._scalar(descriptor.fields_by_name["value"])
        if inner is None:
            return lambda message: message.value
        return lambda message: inner(message.value)

    def _field(self, field: FieldDescriptor) -> Read | None:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key = self._scalar(field.message_type.fields_by_name["key"])
            value = self._single(field.message_type.fields_by_name["value"])
            return lambda entries: {
                str(k if key is None else key(k)): (v if value is None else value(v)) for k, v in entries.items()
            }
        single = self._single(field)
        if not field.is_repeated:
            return single
        if single is None:
            return list
        return lambda items: [single(item) for item in items]

    def _single(self, field: FieldDescriptor) -> Read | None:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            return self.message(field.message_type)
        return self._scalar(field)

    @staticmethod
    def _scalar(field: FieldDescriptor) -> Read | None:
        if field.type in _FLOATS:
            return finite
        if field.type == FieldDescriptor.TYPE_ENUM:
            names = {value.number: value.name for value in field.enum_type.values}
            return lambda number: names.get(number, number)
        return None
