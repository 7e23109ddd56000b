"""What a record off the default path becomes, whatever the topic's format: a ``loom_messages`` row of a
registry format (:func:`registry_row`), or a route's record (:func:`routed_record`, through
:mod:`loom_ray.routes.convert`), or the :class:`~loom_ray.decode.Rejection` that makes it a dead letter.

The consumer calls these for each such record it reads, and a replay (:mod:`loom_ray.ops.records`) for each
dead letter it reads again, so a replayed record becomes exactly what the consumer would make of it today.
Each raises :class:`~loom_ray.formats.base.SchemaNotReady` while the record's schema is not fetched yet.
"""

from __future__ import annotations

from typing import Any

import orjson
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from loom_ray.batch import Row
from loom_ray.decode import Rejection, decode_document, size_rejection
from loom_ray.formats import debezium
from loom_ray.formats.base import Codec
from loom_ray.routes.convert import RoutedRecord, RoutePlan, change_values, convert, tombstone
from loom_ray.sink.codecs import kafka_ts_micros


def registry_row(
    codec: Codec, message: Message, headers: str | None, incarnation: int, max_bytes: int
) -> Row | Rejection:
    """The ``loom_messages`` row of a record of a registry format (its value as JSON, with its schema id), or
    why it has none. ``headers`` are the record's headers as stored (JSON text)."""
    value: bytes = message.value()  # type: ignore[assignment]
    decoded = size_rejection(value, max_bytes) or codec.text(value)
    if isinstance(decoded, Rejection):
        return decoded
    text, schema_id = decoded
    ts_type, ts_ms = message.timestamp()
    kafka_ts = None if ts_type == TIMESTAMP_NOT_AVAILABLE else kafka_ts_micros(ts_ms)
    return (message.topic(), message.partition(), message.offset(), message.key(), text, headers, kafka_ts,
            incarnation, schema_id)  # fmt: skip


def routed_record(
    plan: RoutePlan, codec: Codec | None, message: Message, raw_headers: Any, headers: str | None, max_bytes: int
) -> RoutedRecord | Rejection | None:
    """A record of a routed topic as its route's columns (a row, or a delete by key for a tombstone), or why
    it is none, or None when the route commits it without a row (a Debezium route's tombstone after a
    delete; an event it ignores, such as a truncate with ``on_truncate = "ignore"``). ``raw_headers`` are the
    headers as read (a route's columns may take them), ``headers`` as stored."""
    value, key = message.value(), message.key()
    topic: str = message.topic()  # type: ignore[assignment]
    partition: int = message.partition()  # type: ignore[assignment]
    offset: int = message.offset()  # type: ignore[assignment]
    debezium_route = plan.route.envelope == "debezium"
    values: tuple[Any, ...] | Rejection
    if value is None:
        if debezium_route:
            return None
        values = tombstone(plan, key, raw_headers, message.timestamp(), topic, partition, offset)
    else:
        native = codec is not None and not debezium_route and plan.model is None
        document = route_document(codec, value, max_bytes, native)
        if isinstance(document, Rejection):
            return document
        if debezium_route:
            return _change(plan, codec, message, document, raw_headers, headers)
        timestamp = message.timestamp()
        values = convert(plan, document, key, raw_headers, timestamp, topic, partition, offset, native=native)
    if isinstance(values, Rejection):
        return values
    return RoutedRecord(offset, value is None, values, key, value, headers)


def _change(
    plan: RoutePlan, codec: Codec | None, message: Message, document: Any, raw_headers: Any, headers: str | None
) -> RoutedRecord | Rejection | None:
    """A Debezium change event as its route's row or delete (:func:`loom_ray.routes.convert.change_values`)."""
    event = debezium.change(document)
    if isinstance(event, Rejection):
        return event
    key = message.key()
    key_values = None
    if event.op == "d" and event.before is None and key is not None:
        key_values = key_document(codec, key)
    topic: str = message.topic()  # type: ignore[assignment]
    partition: int = message.partition()  # type: ignore[assignment]
    offset: int = message.offset()  # type: ignore[assignment]
    found = change_values(plan, event, key_values, key, raw_headers, message.timestamp(), topic, partition, offset)
    if found is None or isinstance(found, Rejection):
        return found
    delete, values = found
    return RoutedRecord(offset, delete, values, key, message.value(), headers)


def route_document(codec: Codec | None, value: bytes, max_bytes: int, native: bool = False) -> Any:
    """The value as JSON values, or the :class:`Rejection` saying why it has none. Format json (``codec``
    None) parses it (:func:`loom_ray.decode.decode_document`); a registry format decodes it, and with
    ``native`` leaves it as its codec decoded it (for :func:`loom_ray.routes.convert.convert`'s ``native``).
    Raises :class:`~loom_ray.formats.base.SchemaNotReady`."""
    if codec is None:
        return decode_document(value, max_bytes)
    found = size_rejection(value, max_bytes) or (codec.decode(value) if native else codec.document(value))
    return found if isinstance(found, Rejection) else found[0]


def key_document(codec: Codec | None, key: bytes) -> Any:
    """A Debezium key (``{"id": 7}``, or its Connect envelope) as JSON values, or None when it does not decode.
    Raises :class:`~loom_ray.formats.base.SchemaNotReady` for a key in a registry format whose schema is not
    fetched yet."""
    if codec is None:
        try:
            document = orjson.loads(key)
        except orjson.JSONDecodeError:
            return None
    else:
        found = codec.document(key)
        if isinstance(found, Rejection):
            return None
        document = found[0]
    try:
        return debezium.unwrap(document)
    except (ValueError, TypeError):
        return None
