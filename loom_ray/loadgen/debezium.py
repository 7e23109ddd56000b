"""Debezium-shaped change events of one source table (``--format debezium``), as Debezium's PostgreSQL
connector writes them.

The source table is ``accounts(id bigint primary key, name text, balance numeric(12,2), updated_at timestamp,
note text)``. Message ``seq`` changes row ``id`` (one of ``keys``, drawn by a seeded generator): a create when
the row does not exist, else an update or, one time in seven, a delete followed by its tombstone (a null value
with the same key, for log compaction). A delete's ``before`` holds the key only (``REPLICA IDENTITY DEFAULT``),
or every third one is null (then the key says which row). ``source.lsn`` grows with ``seq``; the record key is
the row's key and goes to partition ``id % P``, so the events of a row are in order. Encodings
(``--debezium-encoding``):

- ``envelope`` (default): Kafka Connect's JsonConverter with schemas, ``{"schema", "payload"}``: ``balance`` the
  Connect ``Decimal``'s bytes (base64), ``updated_at`` Debezium's ``MicroTimestamp`` (microseconds);
- ``json``: schemaless JSON, ``balance`` as text and ``updated_at`` ISO 8601 (``decimal.handling.mode=string``
  and a time converter);
- ``avro``: Confluent's AvroConverter through the Schema Registry (``<topic>-key`` and ``<topic>-value``).

Malformed kinds: ``not_an_event`` (JSON without ``op``) and ``truncate`` (an event with op ``t``).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
from decimal import Decimal
from typing import Any

import orjson
from confluent_kafka.schema_registry import SchemaRegistryClient, topic_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

ENCODINGS = ("envelope", "json", "avro")
DEBEZIUM_MALFORMED_KINDS = ("not_an_event", "truncate")
_EPOCH = dt.datetime(2025, 1, 1)
_EPOCH_MICROS = 1_735_689_600_000_000
_FIRST_LSN = 24_000_000
_DELETE_ONE_IN = 7
_DECIMAL = "org.apache.kafka.connect.data.Decimal"
_MICRO_TIMESTAMP = "io.debezium.time.MicroTimestamp"
_SOURCE = {"version": "3.6.0.Final", "connector": "postgresql", "name": "loadgen", "db": "app", "table": "accounts"}

Message = tuple[bytes, bytes | None]  # (key, value)


def row_image(key: int, seq: int) -> dict[str, Any]:
    """The row ``key`` as change ``seq`` leaves it (``balance`` a Decimal, ``updated_at`` microseconds)."""
    return {
        "id": key,
        "name": f"account {key}",
        "balance": Decimal((seq * 7919) % 10_000_000).scaleb(-2),
        "updated_at": _EPOCH_MICROS + seq * 1000,
        "note": None if seq % 3 else f"note {seq}",
    }


class ChangeStream:
    """The source table's changes, in order (deterministic for a ``seed``)."""

    def __init__(self, keys: int, seed: int) -> None:
        self._keys = keys
        self._rng = random.Random(seed)
        self._rows: dict[int, dict[str, Any]] = {}
        self._deletes = 0

    def change(self, seq: int) -> tuple[str, int, dict[str, Any] | None, dict[str, Any] | None]:
        """``(op, key, before, after)`` of change ``seq``."""
        key = self._rng.randrange(self._keys)
        if key not in self._rows:
            self._rows[key] = row_image(key, seq)
            return "c", key, None, self._rows[key]
        if self._rng.randrange(_DELETE_ONE_IN) == 0:
            del self._rows[key]
            self._deletes += 1
            before = None if self._deletes % 3 == 0 else {"id": key, "name": None, "balance": None, "updated_at": None}
            return "d", key, before, None
        self._rows[key] = row_image(key, seq)
        return "u", key, None, self._rows[key]

    def rows(self) -> dict[int, dict[str, Any]]:
        """The source table now, by key."""
        return dict(self._rows)


def _payload(op: str, before: Any, after: Any, seq: int) -> dict[str, Any]:
    source = {**_SOURCE, "ts_ms": _EPOCH_MICROS // 1000 + seq, "lsn": _FIRST_LSN + 16 * seq}
    return {"before": before, "after": after, "source": source, "op": op, "ts_ms": _EPOCH_MICROS // 1000 + seq}


def _unscaled(value: Decimal) -> bytes:
    unscaled = int(value.scaleb(2))
    return unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)


_ROW_FIELDS = [
    {"field": "id", "type": "int64", "optional": False},
    {"field": "name", "type": "string", "optional": True},
    {
        "field": "balance",
        "type": "bytes",
        "optional": True,
        "name": _DECIMAL,
        "version": 1,
        "parameters": {"scale": "2", "connect.decimal.precision": "12"},
    },  # fmt: skip
    {"field": "updated_at", "type": "int64", "optional": True, "name": _MICRO_TIMESTAMP, "version": 1},
    {"field": "note", "type": "string", "optional": True},
]
_ROW_SCHEMA = {"type": "struct", "fields": _ROW_FIELDS, "optional": True, "name": "loadgen.public.accounts.Value"}
ENVELOPE_SCHEMA = {
    "type": "struct",
    "name": "loadgen.public.accounts.Envelope",
    "optional": False,
    "fields": [
        {**_ROW_SCHEMA, "field": "before"},
        {**_ROW_SCHEMA, "field": "after"},
        {
            "type": "struct",
            "field": "source",
            "name": "io.debezium.connector.postgresql.Source",
            "optional": False,
            "fields": [{"field": name, "type": "string", "optional": False} for name in _SOURCE]
            + [{"field": "ts_ms", "type": "int64"}, {"field": "lsn", "type": "int64", "optional": True}],
        },
        {"field": "op", "type": "string", "optional": False},
        {"field": "ts_ms", "type": "int64", "optional": True},
    ],
}
_KEY_SCHEMA = {
    "type": "struct",
    "name": "loadgen.public.accounts.Key",
    "optional": False,
    "fields": [{"field": "id", "type": "int64", "optional": False}],
}
AVRO_VALUE = {
    "type": "record",
    "name": "Value",
    "namespace": "loadgen.public.accounts",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "name", "type": ["null", "string"], "default": None},
        {
            "name": "balance",
            "default": None,
            "type": [
                "null",
                {
                    "type": "bytes",
                    "logicalType": "decimal",
                    "precision": 12,
                    "scale": 2,
                    "connect.name": _DECIMAL,
                    "connect.version": 1,
                    "connect.parameters": {"scale": "2", "connect.decimal.precision": "12"},
                },
            ],
        },  # fmt: skip
        {
            "name": "updated_at",
            "default": None,
            "type": ["null", {"type": "long", "connect.version": 1, "connect.name": _MICRO_TIMESTAMP}],
        },  # fmt: skip
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}
AVRO_ENVELOPE = {
    "type": "record",
    "name": "Envelope",
    "namespace": "loadgen.public.accounts",
    "fields": [
        {"name": "before", "type": ["null", AVRO_VALUE], "default": None},
        {"name": "after", "type": ["null", "Value"], "default": None},
        {
            "name": "source",
            "type": {
                "type": "record",
                "name": "Source",
                "namespace": "io.debezium.connector.postgresql",
                "fields": [{"name": name, "type": "string"} for name in _SOURCE]
                + [{"name": "ts_ms", "type": "long"}, {"name": "lsn", "type": ["null", "long"], "default": None}],
            },
        },
        {"name": "op", "type": "string"},
        {"name": "ts_ms", "type": ["null", "long"], "default": None},
    ],
}
AVRO_KEY = {
    "type": "record",
    "name": "Key",
    "namespace": "loadgen.public.accounts",
    "fields": [{"name": "id", "type": "long"}],
}


class ChangeEncoder:
    """Writes the change events of ``topic`` in one encoding (see the module docstring)."""

    def __init__(self, encoding: str, topic: str, registry_url: str | None) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding {encoding!r}: choose one of {', '.join(ENCODINGS)}")
        self.encoding = encoding
        if encoding == "avro":
            if registry_url is None:
                raise ValueError("the avro encoding needs a Schema Registry (--schema-registry-url)")
            client = SchemaRegistryClient({"url": registry_url})
            conf = {"auto.register.schemas": True, "subject.name.strategy": topic_subject_name_strategy}
            self._value = AvroSerializer(client, json.dumps(AVRO_ENVELOPE), conf=conf)
            self._key = AvroSerializer(client, json.dumps(AVRO_KEY), conf=conf)
            self._value_context = SerializationContext(topic, MessageField.VALUE)
            self._key_context = SerializationContext(topic, MessageField.KEY)

    def messages(self, op: str, key: int, before: Any, after: Any, seq: int) -> list[Message]:
        """The messages of one change: the event, and after a delete its tombstone."""
        encoded_key = self.key(key)
        event = (encoded_key, self.value(_payload(op, before, after, seq)))
        return [event, (encoded_key, None)] if op == "d" else [event]

    def malformed(self, kind: str, key: int, seq: int) -> Message:
        """A bad value of ``kind`` for row ``key``."""
        if kind == "not_an_event":
            return self.key(key), orjson.dumps({"hello": seq})
        if kind == "truncate":
            return self.key(key), self.value(_payload("t", None, None, seq))
        raise ValueError(f"unknown malformed kind {kind!r}; expected one of {', '.join(DEBEZIUM_MALFORMED_KINDS)}")

    def key(self, key: int) -> bytes:
        if self.encoding == "avro":
            encoded: bytes = self._key({"id": key}, self._key_context)
            return encoded
        if self.encoding == "envelope":
            return orjson.dumps({"schema": _KEY_SCHEMA, "payload": {"id": key}})
        return orjson.dumps({"id": key})

    def value(self, payload: dict[str, Any]) -> bytes:
        if self.encoding == "avro":
            encoded: bytes = self._value(payload, self._value_context)
            return encoded
        images = {name: _image(payload[name], self.encoding) for name in ("before", "after")}
        if self.encoding == "envelope":
            return orjson.dumps({"schema": ENVELOPE_SCHEMA, "payload": {**payload, **images}})
        return orjson.dumps({**payload, **images})


def _image(row: dict[str, Any] | None, encoding: str) -> dict[str, Any] | None:
    """A row image as the JSON converter writes it: Connect's types (envelope), or text (schemaless)."""
    if row is None:
        return None
    balance, micros = row.get("balance"), row.get("updated_at")
    if encoding == "envelope":
        return {**row, "balance": None if balance is None else base64.b64encode(_unscaled(balance)).decode()}
    moment = None if micros is None else (_EPOCH + dt.timedelta(microseconds=micros - _EPOCH_MICROS)).isoformat()
    return {**row, "balance": None if balance is None else str(balance), "updated_at": moment}
