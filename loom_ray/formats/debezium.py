"""Debezium change events: the envelope read into a :class:`Change`, with Connect's types converted.

Runs on the consumer for every record of a route with ``envelope = "debezium"``, on the value as its format
decoded it (JSON parsed by orjson; Avro, Protobuf, JSON Schema through their codecs), and on the Kafka key
when a delete has no ``before`` image. Debezium writes, per change of a row, ``{"before", "after", "source",
"op", "ts_ms"}``: ``op`` is ``c`` (create), ``r`` (read, a snapshot), ``u`` (update), ``d`` (delete), ``t``
(truncate) or ``m`` (a logical decoding message). Kafka Connect's JsonConverter with ``schemas.enable=true``
wraps it as ``{"schema": ..., "payload": ...}``; the schema's type names then say what numbers and strings
stand for (a decimal's bytes, a date's days: :mod:`loom_ray.formats.connect`), and they are converted. An
Avro event's Connect types were converted by its codec; schemaless JSON carries no names and is taken as
it is. A value that is not a change event is a dead letter naming what is missing.

:func:`position` orders the events of one row: ``source.lsn`` (PostgreSQL's log position) when the event
has one, else ``source.ts_ms`` (the commit time; the envelope's ``ts_ms`` without it) and the Kafka offset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loom_ray.decode import DECODE, Rejection
from loom_ray.formats import connect, jsonify

OPS = frozenset({"c", "r", "u", "d", "t", "m"})
UPSERTS = frozenset({"c", "r", "u"})
_OFFSETS_PER_MS = 10**19  # above any Kafka offset (< 2**63): ts_ms * this + offset orders by time, then offset


@dataclass(frozen=True, slots=True)
class Change:
    """One change event: its op, the row's images (JSON values, None when absent) and where it came from."""

    op: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    lsn: int | None
    ts_ms: int | None


def change(document: Any) -> Change | Rejection:
    """The change event ``document`` holds (decoded JSON values, or the JSON converter's envelope)."""
    try:
        payload = unwrap(document)
    except (ValueError, TypeError) as exc:
        return Rejection("Undecodable", f"value: a value does not fit its Connect type ({exc})", DECODE)
    if not isinstance(payload, dict):
        return _not_an_event(f"a JSON {type(payload).__name__}, not an object")
    op = payload.get("op")
    if op not in OPS:
        return _not_an_event(f"op is {op!r}, not one of {', '.join(sorted(OPS))}")
    before, after = payload.get("before"), payload.get("after")
    if not isinstance(before, dict | None) or not isinstance(after, dict | None):
        return _not_an_event("before and after must be objects or null")
    source = payload.get("source")
    source = source if isinstance(source, dict) else {}
    lsn = source.get("lsn")
    ts_ms = source.get("ts_ms", payload.get("ts_ms"))
    return Change(op, before, after, lsn if type(lsn) is int else None, ts_ms if type(ts_ms) is int else None)


def unwrap(document: Any) -> Any:
    """The payload of a Kafka Connect ``{"schema", "payload"}`` envelope as JSON values, its Connect types
    converted; any other document as it is. Raises ValueError or TypeError for a value its type does not fit."""
    if isinstance(document, dict) and document.keys() == {"schema", "payload"}:
        return jsonify.document(_typed(document["schema"], document["payload"]))
    return document


def position(event: Change, offset: int) -> int | None:
    """Where ``event`` stands among the changes of its row (greater is newer), or None without a source
    position: ``source.lsn``, else ``ts_ms`` scaled above every offset plus the record's ``offset``."""
    if event.lsn is not None:
        return event.lsn
    if event.ts_ms is not None:
        return event.ts_ms * _OFFSETS_PER_MS + offset
    return None


def _typed(schema: Any, value: Any) -> Any:
    """``value`` with the Connect types its ``schema`` names converted (structs, arrays and maps walked)."""
    if value is None or not isinstance(schema, Mapping):
        return value
    conversion = connect.converter(schema.get("name"), schema.get("parameters"))
    if conversion is not None:
        return conversion(value)
    kind = schema.get("type")
    if kind == "struct" and isinstance(value, dict):
        fields = {f.get("field"): f for f in schema.get("fields") or () if isinstance(f, Mapping)}
        return {name: _typed(fields.get(name), item) for name, item in value.items()}
    if kind == "array" and isinstance(value, list):
        return [_typed(schema.get("items"), item) for item in value]
    if kind == "map" and isinstance(value, dict):
        return {name: _typed(schema.get("values"), item) for name, item in value.items()}
    return value


def _not_an_event(why: str) -> Rejection:
    return Rejection("NotAChangeEvent", f"value: not a Debezium change event: {why}", DECODE)
