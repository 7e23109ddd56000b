"""W1's events in the registry formats (``--format avro|protobuf|json_schema``), and their malformed kinds.

Each valid message is the JSON event of :func:`loom_ray.loadgen.values.valid_value` written through
confluent-kafka's serializer of the format, its schema registered under ``<topic>-value`` in the Schema
Registry, so the bytes are what a Confluent producer writes: a zero byte, the schema id, (for Protobuf the
message indexes) and the payload. The Avro schema types ``ts`` as ``timestamp-millis`` and ``amount`` as
``decimal(12,2)``; the Protobuf message has ``ts`` as a ``google.protobuf.Timestamp`` (built at run time from
a descriptor: no generated code). Malformed kinds:

- ``no_magic_byte``: the event as plain JSON, without the framing;
- ``undecodable``: the framing of the valid schema id, then bytes that do not decode with it;
- ``unknown_schema_id``: the framing of schema id 2147483647, which a registry does not hand out soon, then
  a valid payload. loom-ray waits at such a record until the registry has that id: its partition stops there.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import orjson
from confluent_kafka.schema_registry import SchemaRegistryClient, topic_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

from loom_ray.loadgen.values import valid_value

REGISTRY_FORMATS = ("avro", "protobuf", "json_schema")
FORMAT_MALFORMED_KINDS = ("no_magic_byte", "undecodable", "unknown_schema_id")
DEFAULT_FORMAT_KINDS = ("no_magic_byte", "undecodable")  # unknown_schema_id stops a partition: ask for it
UNKNOWN_SCHEMA_ID = 2**31 - 1
_NOT_A_PAYLOAD = b"\xff" * 12  # an Avro long, a protobuf tag, or JSON, it decodes as none of them
_CENT = Decimal("0.01")

AVRO_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Event",
    "namespace": "loom.loadgen",
    "fields": [
        {"name": "seq", "type": "long"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "kind", "type": "string"},
        {"name": "user", "type": "string"},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "pad", "type": "string"},
        {"name": "sha", "type": "string"},
    ],
}
JSON_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Event",
    "type": "object",
    "properties": {
        "seq": {"type": "integer"},
        "ts": {"type": "string", "format": "date-time"},
        "kind": {"type": "string"},
        "user": {"type": "string"},
        "amount": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "pad": {"type": "string"},
        "sha": {"type": "string"},
    },
    "required": ["seq", "ts", "kind", "user", "amount", "tags", "pad", "sha"],
}
_SERIALIZER_CONF = {"auto.register.schemas": True, "subject.name.strategy": topic_subject_name_strategy}


def protobuf_event_type() -> type[Any]:
    """The Protobuf message of an event (``loom.loadgen.Event``), built from a descriptor in a pool of its own."""
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="loom/loadgen/event.proto",
        package="loom.loadgen",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )
    message = proto.message_type.add(name="Event")
    for number, (name, kind, type_name) in enumerate(
        (
            ("seq", field.TYPE_INT64, None),
            ("ts", field.TYPE_MESSAGE, ".google.protobuf.Timestamp"),
            ("kind", field.TYPE_STRING, None),
            ("user", field.TYPE_STRING, None),
            ("amount", field.TYPE_DOUBLE, None),
            ("tags", field.TYPE_STRING, None),
            ("pad", field.TYPE_STRING, None),
            ("sha", field.TYPE_STRING, None),
        ),
        1,
    ):
        label = field.LABEL_REPEATED if name == "tags" else field.LABEL_OPTIONAL
        message.field.add(name=name, number=number, type=kind, type_name=type_name, label=label)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(proto)
    event_type: type[Any] = message_factory.GetMessageClass(pool.FindMessageTypeByName("loom.loadgen.Event"))
    return event_type


class FormatEncoder:
    """W1's events of one topic in one registry format, serialized through the registry at ``registry_url``."""

    def __init__(self, format_name: str, topic: str, registry_url: str) -> None:
        self.format = format_name
        self._context = SerializationContext(topic, MessageField.VALUE)
        client = SchemaRegistryClient({"url": registry_url})
        if format_name == "avro":
            self._serialize = AvroSerializer(client, json.dumps(AVRO_SCHEMA), conf=_SERIALIZER_CONF)
        elif format_name == "json_schema":
            self._serialize = JSONSerializer(json.dumps(JSON_SCHEMA), client, conf=_SERIALIZER_CONF)
        else:
            self._event_type = protobuf_event_type()
            self._serialize = ProtobufSerializer(
                self._event_type, client, {**_SERIALIZER_CONF, "use.deprecated.format": False}
            )
        self._framing: bytes | None = None  # the magic byte, schema id (and message indexes) of valid values

    def valid(self, seq: int, size: int, ts: str | None = None) -> bytes:
        """The event ``seq`` (``size`` bytes as JSON) in this format."""
        event = orjson.loads(valid_value(seq, size, ts=ts))
        value: bytes = self._serialize(self._typed(event), self._context)
        if self._framing is None:
            self._framing = value[: 6 if self.format == "protobuf" else 5]
        return value

    def malformed(self, kind: str, seq: int, size: int) -> bytes:
        """The bad value of ``kind`` (see the module docstring) for message ``seq``."""
        if kind == "no_magic_byte":
            return valid_value(seq, size)
        valid = self.valid(seq, size)
        assert self._framing is not None
        if kind == "undecodable":
            return self._framing + _NOT_A_PAYLOAD
        if kind == "unknown_schema_id":
            return b"\x00" + UNKNOWN_SCHEMA_ID.to_bytes(4, "big") + valid[5:]
        raise ValueError(f"unknown malformed kind {kind!r}; expected one of {', '.join(FORMAT_MALFORMED_KINDS)}")

    def _typed(self, event: dict[str, Any]) -> Any:
        """The JSON event as the serializer takes it: Avro's timestamp and decimal, a Protobuf message."""
        if self.format == "json_schema":
            return event
        moment = dt.datetime.fromisoformat(event["ts"])
        if self.format == "avro":
            return {**event, "ts": moment, "amount": Decimal(repr(event["amount"])).quantize(_CENT)}
        message = self._event_type(**{k: v for k, v in event.items() if k != "ts"})
        message.ts.FromDatetime(moment)
        return message
