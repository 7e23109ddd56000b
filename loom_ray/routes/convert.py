"""A routed record into the typed values of its route's columns, or the rejection that becomes its dead letter.

Pure; runs on the consumer actor for every record of a routed topic (``IngestWorker._add_routed``), after
the value is parsed or decoded once (:func:`loom_ray.formats.read.route_document`). Each column's value is
looked up at its source and converted for the column's type as the table has it (:func:`plan` builds the converters from
the :class:`~loom_ray.routes.catalog.TableShape` once); the first column that does not fit rejects the
record with a message naming the route, the column and the reason (stage ``validate``). A tombstone (no
value) is a delete by key when the route says ``on_tombstone = "delete"``, else a dead letter. A route with
``envelope = "debezium"`` converts each change event (:func:`change_values`): its ``after`` image into a row,
or for a delete the key (and version) from its ``before`` image into a delete by key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel, ValidationError

from loom_ray.decode import DECODE, VALIDATE, Rejection
from loom_ray.formats.debezium import UPSERTS, Change, position
from loom_ray.routes.catalog import PgType, TableShape
from loom_ray.routes.model import Column, Route
from loom_ray.routes.models import load_model
from loom_ray.routes.types import Converter, Unfit, converter, native_converter

_MISSING = object()
POSITION = "position"  # the source of the column a Debezium route's ``position`` names
KafkaHeaders = list[tuple[str, bytes | str | None]] | None


class RoutedRecord(NamedTuple):
    """What a batch holds for one routed record (a tuple, as a batch's rows are): its values in the route's
    column order (for a delete, the columns a tombstone has: the key and the record's metadata), and the raw
    record for a dead letter should PostgreSQL refuse the row at write time."""

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
    refuses_null: bool  # required, part of the key, or the version
    convert: Converter
    native: Converter  # convert, for a record as its codec decoded it (routes.types.native_converter)
    validated: bool  # read from the route's model's validated value (else from the value as it came)
    type: PgType


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """A route made ready for the hot path against its table as the catalog described it: a converter per
    column (built once per route and table shape), the positions of the key and version columns, the
    route's pydantic model if it names one, and the staging table this shape's records go through."""

    route: Route
    table: TableShape
    columns: tuple[_ColumnPlan, ...]
    key_index: tuple[int, ...]
    version_index: int | None
    stage: str
    model: type[BaseModel] | None = None

    def key_of(self, values: tuple[Any, ...]) -> tuple[Any, ...]:
        """A record's key values, hashable (a list made a tuple), to find a key's records in a flush."""
        return tuple(tuple(v) if type(v) is list else v for v in (values[i] for i in self.key_index))


def plan(route: Route, table: TableShape) -> RoutePlan:
    """The conversion plan of ``route`` into ``table`` (imports its model: raises ValueError if that fails).

    The table fits the route (:func:`loom_ray.routes.fit.problems` found nothing), so every column exists
    with a type its source can fill."""
    validated = set(route.model_fields_read)
    columns = tuple(
        _column_plan(
            c, table, c.name in route.key or c.name == route.version, c.name in validated, c.name == route.position
        )
        for c in route.columns
    )
    names = [c.name for c in route.columns]
    digest = hashlib.sha256(f"{route.name}\x00{table.signature}".encode()).hexdigest()[:16]
    return RoutePlan(
        route,
        table,
        columns,
        tuple(names.index(k) for k in route.key),
        None if route.version is None else names.index(route.version),
        f"loom_stage_{digest}",
        None if route.model is None else load_model(route.model),
    )


def _column_plan(
    column: Column, table: TableShape, refuses_null: bool, validated: bool, holds_position: bool
) -> _ColumnPlan:
    pg = table.columns[column.name].type
    assert pg is not None  # fit.problems refuses a column of a type no route fills
    if column.source in ("value", "key", "header"):
        source = "bytes" if column.reads_bytes else "json"
    else:
        source = column.source
    convert = converter(pg, source, column.round)
    assert convert is not None  # fit.problems refuses a source that cannot fill the type
    if holds_position:  # a Debezium event's source position (an integer), not a path into its row
        return _ColumnPlan(column.name, POSITION, (), None, None, True, convert, convert, False, pg)
    path = column.json_path if column.source == "value" else column.path
    field = path[0] if column.source == "value" and len(path) == 1 else None
    native = native_converter(pg, column.round) if column.source == "value" and source == "json" else convert
    refuses_null = column.required or refuses_null
    return _ColumnPlan(
        column.name, column.source, path, field, column.header, refuses_null, convert, native, validated, pg
    )


def tombstone(
    plan: RoutePlan,
    key: bytes | None,
    headers: KafkaHeaders,
    timestamp: tuple[int, int],
    topic: str,
    partition: int,
    offset: int,
) -> tuple[Any, ...] | Rejection:
    """The values a tombstone deletes by (its key columns, and every column not read from the value, such as
    a version from the record's timestamp), or why it is a dead letter."""
    route = plan.route
    if route.on_tombstone != "delete":
        return Rejection(
            "NullValue",
            f"route {route.name!r}: value: null (a tombstone); the route does not delete "
            '(set on_tombstone = "delete" with a key read from = "key")',
            DECODE,
        )
    values: list[Any] = []
    for column in plan.columns:
        if column.source == "value":
            values.append(None)
            continue
        try:
            values.append(_convert(column, _raw(column, None, key, headers, timestamp, topic, partition, offset)))
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
    position: int | None = None,
    native: bool = False,
) -> tuple[Any, ...] | Rejection:
    """The record's values in column order, or the rejection naming the first column that does not fit.

    ``timestamp`` is confluent-kafka's ``(type, ms)``; type 0 means the record has none (NULL). ``position``:
    a Debezium event's source position, for the route's ``position`` column. ``native``: ``document`` is the
    record as its codec decoded it, not its JSON form (a route without a model only: a model validates JSON).
    """
    validated = document
    if plan.model is not None:
        try:
            validated = plan.model.model_validate(document).model_dump(mode="json")
        except ValidationError as exc:
            return _model_rejection(plan, exc)
    values: list[Any] = []
    append = values.append
    column = plan.columns[0]
    try:
        for column in plan.columns:
            source = validated if column.validated else document
            field = column.field
            if field is not None and type(source) is dict:
                raw = source.get(field, _MISSING)
            else:
                raw = _raw(column, source, key, headers, timestamp, topic, partition, offset, position)
            if raw is None or raw is _MISSING:
                _check_null(column, raw)
                append(None)
            else:
                append(column.native(raw) if native else column.convert(raw))
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
    position: int | None = None,
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
    return {"topic": topic, "partition": partition, "offset": offset, POSITION: position}[source]


def change_values(
    plan: RoutePlan,
    event: Change,
    key_document: Any,
    key: bytes | None,
    headers: KafkaHeaders,
    timestamp: tuple[int, int],
    topic: str,
    partition: int,
    offset: int,
) -> tuple[bool, tuple[Any, ...]] | Rejection | None:
    """``(is a delete, values)`` of a Debezium change event for its route, its rejection, or None for an event
    the route ignores (a truncate with ``on_truncate = "ignore"``).

    A create, read or update writes its ``after`` image; a delete deletes by the key columns (and carries the
    version) read from its ``before`` image, or from ``key_document`` (the Kafka key, decoded) when it has
    none. A truncate is a dead letter unless the route ignores it, and so is a message event (``m``): neither
    changes one row.
    """
    route = plan.route
    at = position(event, offset)
    if event.op in UPSERTS:
        if event.after is None:
            return _event_rejection(plan, f"op {event.op!r} without an after image")
        values = convert(plan, event.after, key, headers, timestamp, topic, partition, offset, at)
        return values if isinstance(values, Rejection) else (False, values)
    if event.op == "d":
        image = event.before if event.before is not None else key_document
        if not isinstance(image, dict):
            return _event_rejection(plan, "a delete without a before image, and a Kafka key that is no JSON object")
        return _delete_values(plan, image, key, headers, timestamp, topic, partition, offset, at)
    if event.op == "t" and route.on_truncate == "ignore":
        return None
    what = "a truncate" if event.op == "t" else "a logical decoding message"
    fix = ' (on_truncate = "ignore" skips them)' if event.op == "t" else ""
    return Rejection(
        "UnappliedChange", f"route {route.name!r}: {what} (op {event.op!r}) changes no single row{fix}", VALIDATE
    )


def _delete_values(
    plan: RoutePlan,
    image: dict[str, Any],
    key: bytes | None,
    headers: KafkaHeaders,
    timestamp: tuple[int, int],
    topic: str,
    partition: int,
    offset: int,
    at: int | None,
) -> tuple[bool, tuple[Any, ...]] | Rejection:
    """A delete's values: the key and version columns from the row's ``image`` (other columns of the value
    are NULL: the row goes), the rest from the record as for any record."""
    needed = {*plan.key_index, *(() if plan.version_index is None else (plan.version_index,))}
    values: list[Any] = []
    for index, column in enumerate(plan.columns):
        if column.source == "value" and index not in needed:
            values.append(None)
            continue
        try:
            values.append(_convert(column, _raw(column, image, key, headers, timestamp, topic, partition, offset, at)))
        except Unfit as unfit:
            return _reject(plan, column, unfit)
    return True, tuple(values)


def _event_rejection(plan: RoutePlan, why: str) -> Rejection:
    return Rejection("MissingField", f"route {plan.route.name!r}: {why}", VALIDATE)


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
    """The JSON value at ``path``, or _MISSING where a step finds nothing (or there is no document)."""
    if document is None:
        return _MISSING
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
