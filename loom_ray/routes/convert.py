"""A routed record into the typed values of its route's columns, or the rejection that becomes its dead letter.

Pure; runs on the consumer actor for every record of a routed topic (``IngestWorker._add_routed``), after
the value is parsed once (:func:`loom_ray.decode.decode_document`). Each column's value is looked up at its
source and converted by :mod:`loom_ray.routes.types`; the first column that does not fit rejects the record
with a message naming the route, the column and the reason (stage ``validate``). A tombstone (no value)
is a delete by key when the route says ``on_tombstone = "delete"``, else a dead letter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel, ValidationError

from loom_ray.decode import DECODE, VALIDATE, Rejection
from loom_ray.routes.model import Column, Route
from loom_ray.routes.models import load_model
from loom_ray.routes.types import FROM_BYTES, FROM_JSON, Converter, Unfit
from loom_ray.sink.codecs import kafka_ts_micros

_MISSING = object()
KafkaHeaders = list[tuple[str, bytes | str | None]] | None


class RoutedRecord(NamedTuple):
    """What a batch holds for one routed record (a tuple, as a batch's rows are): its values in the route's
    column order (key columns only for a delete), and the raw record for a dead letter should PostgreSQL
    refuse the row at write time."""

    offset: int
    delete: bool
    values: tuple[Any, ...]
    key: bytes | None
    value: bytes | None
    headers: str | None


@dataclass(frozen=True, slots=True)
class _ColumnPlan:
    name: str
    source: str
    path: tuple[str, ...]
    field: str | None  # the path's only step, for the common one-step lookup into a JSON object
    header: str | None
    refuses_null: bool  # required, or part of the key
    convert: Converter


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """A route made ready for the hot path: a converter per column (built once per partition assigned), and
    the route's pydantic model, if it names one."""

    route: Route
    columns: tuple[_ColumnPlan, ...]
    model: type[BaseModel] | None = None


def plan(route: Route) -> RoutePlan:
    """The conversion plan of ``route`` (imports its model: raises ValueError if that fails)."""
    columns = tuple(_column_plan(c, c.name in route.key) for c in route.columns)
    return RoutePlan(route, columns, None if route.model is None else load_model(route.model))


def _column_plan(column: Column, in_key: bool) -> _ColumnPlan:
    convert: Converter
    if column.source == "timestamp":
        convert = _record_timestamp
    elif column.source in ("topic", "partition", "offset"):
        convert = _same
    else:
        convert = FROM_BYTES[column.type] if column.reads_bytes else FROM_JSON[column.type]
    path = column.json_path if column.source == "value" else column.path
    field = path[0] if column.source == "value" and len(path) == 1 else None
    return _ColumnPlan(column.name, column.source, path, field, column.header, column.required or in_key, convert)


def tombstone(plan: RoutePlan, key: bytes | None) -> tuple[Any, ...] | Rejection:
    """The key values a tombstone deletes by, or why it is a dead letter."""
    route = plan.route
    if route.on_tombstone != "delete":
        return Rejection(
            "NullValue",
            f"route {route.name!r}: value: null (a tombstone); the route does not delete "
            '(set on_tombstone = "delete" with a key read from = "key")',
            DECODE,
        )
    values: list[Any] = [None] * len(plan.columns)
    for index, column in enumerate(plan.columns):
        if column.name in route.key:
            try:
                values[index] = _convert(column, _from_key(column, key))
            except Unfit as unfit:
                return _reject(plan, column, unfit)
    return tuple(values)


def convert(
    plan: RoutePlan,
    document: Any,
    key: bytes | None,
    headers: KafkaHeaders,
    timestamp: tuple[int, int],
    topic: str,
    partition: int,
    offset: int,
) -> tuple[Any, ...] | Rejection:
    """The record's values in column order, or the rejection naming the first column that does not fit.

    ``timestamp`` is confluent-kafka's ``(type, ms)``; type 0 means the record has none (NULL).
    """
    if plan.model is not None:
        try:
            document = plan.model.model_validate(document).model_dump(mode="json")
        except ValidationError as exc:
            return _model_rejection(plan, exc)
    values: list[Any] = []
    append = values.append
    is_object = type(document) is dict
    column = plan.columns[0]
    try:
        for column in plan.columns:
            field = column.field
            if field is not None and is_object:
                raw = document.get(field, _MISSING)
            else:
                raw = _raw(column, document, key, headers, timestamp, topic, partition, offset)
            if raw is None or raw is _MISSING:
                _check_null(column, raw)
                append(None)
            else:
                append(column.convert(raw))
    except Unfit as unfit:
        return _reject(plan, column, unfit)
    return tuple(values)


def _raw(
    column: _ColumnPlan,
    document: Any,
    key: bytes | None,
    headers: KafkaHeaders,
    timestamp: tuple[int, int],
    topic: str,
    partition: int,
    offset: int,
) -> Any:
    """The column's raw value at its source (a one-step field of a JSON object is read by the caller)."""
    source = column.source
    if source == "value":
        return _lookup(document, column.path)
    if source == "key":
        return _from_key(column, key)
    if source == "header":
        return _header(headers, column.header)
    if source == "timestamp":
        return None if timestamp[0] == 0 else timestamp[1]
    return {"topic": topic, "partition": partition, "offset": offset}[source]


def _convert(column: _ColumnPlan, raw: Any) -> Any:
    """``raw`` converted for the column; raises Unfit."""
    if raw is None or raw is _MISSING:
        _check_null(column, raw)
        return None
    return column.convert(raw)


def _check_null(column: _ColumnPlan, raw: Any) -> None:
    """A missing or null field is NULL, unless the column refuses it: raises Unfit then."""
    if column.refuses_null:
        what = "missing" if raw is _MISSING else "null"
        where = ".".join(column.path) if column.path else column.source
        raise Unfit("MissingField", f"required, but {where} is {what}")


def _reject(plan: RoutePlan, column: _ColumnPlan, unfit: Unfit) -> Rejection:
    return Rejection(unfit.error_class, f"route {plan.route.name!r}, column {column.name!r}: {unfit.reason}", VALIDATE)


def _model_rejection(plan: RoutePlan, exc: ValidationError) -> Rejection:
    """The first error the route's model found, naming its field (the column) and pydantic's reason."""
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"]) or "value"
    error_class = "MissingField" if error["type"] == "missing" else "ModelValidation"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return Rejection(
        error_class,
        f"route {plan.route.name!r}, column {field!r}: {error['msg']} (pydantic {error['type']}){more}",
        VALIDATE,
    )


def _lookup(document: Any, path: tuple[str, ...]) -> Any:
    """The JSON value at ``path``, or _MISSING where a step finds nothing."""
    for step in path:
        if type(document) is dict:
            document = document.get(step, _MISSING)
        elif type(document) is list and step.isdigit() and int(step) < len(document):
            document = document[int(step)]
        else:
            return _MISSING
    return document


def _from_key(column: _ColumnPlan, key: bytes | None) -> Any:
    """The whole key (bytes), or with a path the JSON value at it; raises Unfit for a key that is not JSON."""
    if key is None or not column.path:
        return key
    try:
        document = orjson.loads(key)
    except orjson.JSONDecodeError:
        raise Unfit("WrongType", f"the key {key[:40]!r} is not JSON, and the column reads a path in it") from None
    return _lookup(document, column.path)


def _header(headers: KafkaHeaders, name: str | None) -> bytes | None:
    """The last value of header ``name`` (Kafka allows repeats), as bytes."""
    found: bytes | str | None = None
    for key, value in headers or ():
        if key == name:
            found = value
    return found.encode("utf-8") if isinstance(found, str) else found


def _same(value: Any) -> Any:
    """topic, partition and offset: already what their column holds."""
    return value


def _record_timestamp(ts_ms: int) -> int:
    try:
        return kafka_ts_micros(ts_ms)
    except ValueError as exc:
        raise Unfit("BadTimestamp", f"the record's timestamp: {exc}") from None
