"""What a Debezium-replicated table must hold, computed from the topic alone, without loom-ray's code.

Each record is read as its producer wrote it (JSON with Kafka Connect's schema envelope, schemaless JSON, or
Avro through confluent-kafka's own deserializer) and the change events are folded per row key in offset
order: a create, read or update writes the ``after`` image, a delete removes the row, and everything else (a
tombstone, a truncate, a value that is not a change event) changes nothing. The rows are those of
``loom_ray.loadgen.debezium``'s ``accounts`` table: ``(id, name, balance, updated_at, note)``.
"""

from __future__ import annotations

import base64
import datetime as dt
from decimal import Decimal
from typing import Any

import orjson
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer

from loom_bench.topic_fold import Record

Row = tuple[int, str | None, Decimal | None, dt.datetime | None, str | None]
_EPOCH = dt.datetime(1970, 1, 1)


class EventReader:
    """Reads the change events of one encoding (``envelope``, ``json``, ``avro``) into plain dicts."""

    def __init__(self, encoding: str, registry_url: str | None = None) -> None:
        self.encoding = encoding
        self._avro = None
        if encoding == "avro":
            assert registry_url is not None
            self._avro = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))

    def event(self, value: bytes) -> dict[str, Any] | None:
        """The change event ``value`` holds, or None if it holds none."""
        if self._avro is not None:
            if value[:1] != b"\x00":
                return None
            found: dict[str, Any] = self._avro(value, None)
            return found
        parsed = orjson.loads(value)
        if self.encoding == "envelope" and isinstance(parsed, dict) and "payload" in parsed:
            parsed = parsed["payload"]
        return parsed if isinstance(parsed, dict) and "op" in parsed else None

    def row(self, image: dict[str, Any]) -> Row:
        """A row image as the table holds it."""
        balance, moment = image.get("balance"), image.get("updated_at")
        if self.encoding == "envelope" and balance is not None:
            balance = Decimal(int.from_bytes(base64.b64decode(balance), "big", signed=True)).scaleb(-2)
        elif self.encoding == "json" and balance is not None:
            balance = Decimal(balance)
        if self.encoding == "json" and moment is not None:
            moment = dt.datetime.fromisoformat(moment)
        elif moment is not None:
            moment = _EPOCH + dt.timedelta(microseconds=moment)
        return (image["id"], image.get("name"), balance, moment, image.get("note"))


def replica(records: list[Record], reader: EventReader) -> tuple[dict[int, Row], list[Record]]:
    """The table the topic's changes leave, by key, and the records that change no one row (they must be dead
    letters: values that are not change events, truncates)."""
    table: dict[int, Row] = {}
    refused: list[Record] = []
    for record in records:
        if record.value is None:
            continue  # the tombstone after a delete
        event = reader.event(record.value)
        if event is None or event["op"] not in ("c", "r", "u", "d"):
            refused.append(record)
            continue
        if event["op"] == "d":
            before = event["before"]
            table.pop(before["id"] if before else _key_id(record.key, reader), None)
        else:
            row = reader.row(event["after"])
            table[row[0]] = row
    return table, refused


def _key_id(key: bytes | None, reader: EventReader) -> int:
    """The row id of a record's Kafka key (a delete without a before image)."""
    assert key is not None
    if reader._avro is not None:
        found: int = reader._avro(key, None)["id"]
        return found
    parsed = orjson.loads(key)
    return int(parsed["payload"]["id"] if "payload" in parsed else parsed["id"])
