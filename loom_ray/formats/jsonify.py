"""A decoded record (Avro, Protobuf, a Debezium event's Connect types) as JSON, exactly.

Runs on the consumer for every record of a registry format into the default table or through a route with a
model or a Debezium envelope, after its codec decoded it into Python values; a plain route converts the
decoded values (:func:`loom_ray.routes.types.native_converter`), each exactly as its JSON form written here.
JSON has no decimal, bytes or time, so each is written as follows, by orjson (one pass in C):

- a decimal: in the default table's jsonb a JSON number with every digit (:func:`text`; jsonb's numeric
  keeps them, ``12.50`` stays ``12.50``); for a route its decimal text (:func:`document`), because a JSON
  number would be read back as a double and a ``numeric`` column would lose digits;
- bytes: base64; a UUID: its text; a date ``YYYY-MM-DD``; a time ``HH:MM:SS[.ffffff]``; a timestamp ISO
  8601, with its offset when it has a zone (Avro's ``timestamp-millis``: ``+00:00``) and without one for a
  wall time (``local-timestamp-millis``, Debezium's ``MicroTimestamp``);
- a float that is not finite (NaN, Infinity), which JSON cannot hold, as the strings ``"NaN"``,
  ``"Infinity"``, ``"-Infinity"`` (protobuf's JSON mapping): the codecs replace them (:func:`finite`) before,
  as orjson would write ``null``.
"""

from __future__ import annotations

import base64
import math
from decimal import Decimal
from typing import Any

import orjson

from loom_ray.decode import VALIDATE, Rejection, contains_nul


def _bytes(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not a value a decoded record holds")


def _for_jsonb(value: Any) -> Any:
    if type(value) is Decimal:
        return orjson.Fragment(str(value))
    return _bytes(value)


def _for_route(value: Any) -> Any:
    if type(value) is Decimal:
        return str(value)
    return _bytes(value)


def text(value: Any) -> str | Rejection:
    """The decoded record as the JSON text of a ``loom_messages.payload``, or why jsonb cannot store it (a
    string holding U+0000)."""
    encoded = orjson.dumps(value, default=_for_jsonb).decode("utf-8")
    if "\\u0000" in encoded and contains_nul(value):
        return Rejection(
            "NulCharacter",
            "value: a string of the decoded record holds U+0000, which PostgreSQL jsonb cannot store",
            VALIDATE,
        )
    return encoded


def document(value: Any) -> Any:
    """The decoded record as the JSON values a route's columns read (decimals as their decimal text)."""
    return orjson.loads(orjson.dumps(value, default=_for_route))


def finite(number: float) -> float | str:
    """``number``, or its name when JSON cannot hold it."""
    if math.isfinite(number):
        return number
    return "NaN" if number != number else ("Infinity" if number > 0 else "-Infinity")
