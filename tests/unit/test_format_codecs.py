"""The registry formats' codecs (loom_ray.formats) against confluent-kafka's in-process mock registry: records
written by confluent-kafka's own serializers decode to exact JSON, the first record of a schema waits for it,
and every kind of bad record is a dead letter naming the schema id and why. The real registry:
tests/integration/test_formats.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

import orjson
import pytest
from confluent_kafka.schema_registry import topic_subject_name_strategy
from confluent_kafka.schema_registry._sync.mock_schema_registry_client import MockSchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2, wrappers_pb2

from loom_ray.decode import Rejection
from loom_ray.formats.avro import AvroCodec
from loom_ray.formats.avro_values import fixer
from loom_ray.formats.base import Codec, SchemaNotReady
from loom_ray.formats.json_schema import JsonSchemaCodec
from loom_ray.formats.protobuf import ProtobufCodec
from loom_ray.formats.registry import SchemaUnknownError

TOPIC = SerializationContext("orders", MessageField.VALUE)
CONF = {"auto.register.schemas": True, "subject.name.strategy": topic_subject_name_strategy}

AVRO = {
    "type": "record",
    "name": "Order",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 38, "scale": 18}},
        {"name": "placed", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "local", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "at", "type": {"type": "long", "logicalType": "time-micros"}},
        {"name": "ref", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "blob", "type": "bytes"},
        {"name": "ratio", "type": "double"},
        {"name": "tags", "type": {"type": "map", "values": "long"}},
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "seen", "type": ["null", {"type": "long", "connect.name": "io.debezium.time.MicroTimestamp"}]},
    ],
}
ORDER = {
    "id": 2**62,
    "amount": Decimal("12345678901234567890.123456789012345678"),
    "placed": dt.datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=dt.UTC),
    "local": dt.datetime(2024, 5, 1, 10, 0, 0, 123000),
    "day": dt.date(2024, 2, 29),
    "at": dt.time(23, 59, 59, 999999),
    "ref": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "blob": b"\x00\xff",
    "ratio": float("nan"),
    "tags": {"a": 1},
    "note": None,
    "seen": 1_714_557_600_000_001,
}


def _client() -> MockSchemaRegistryClient:
    return MockSchemaRegistryClient({"url": "mock://unit"})


def _ready(codec: Codec, value: bytes) -> None:
    """Fetch the schema ``value`` names, as the consumer does after SchemaNotReady."""
    with pytest.raises(SchemaNotReady) as pending:
        codec.text(value)
    asyncio.run(codec.prepare(pending.value.key, pending.value.schema_id))


def _avro(client: MockSchemaRegistryClient, record: dict[str, Any], schema: dict[str, Any] = AVRO) -> bytes:
    value: bytes = AvroSerializer(client, json.dumps(schema), conf=CONF)(record, TOPIC)
    return value


def test_avro_logical_types_land_exactly_in_jsonb_text_and_in_route_documents() -> None:
    client = _client()
    value = _avro(client, ORDER)
    codec = AvroCodec(lambda: client)
    _ready(codec, value)
    text, schema_id = codec.text(value)  # type: ignore[misc]
    assert schema_id == 1
    assert '"amount":12345678901234567890.123456789012345678' in text  # a JSON number, every digit
    stored = orjson.loads(text)
    assert stored["id"] == 2**62
    assert stored["placed"] == "2024-05-01T10:00:00.123456+00:00"
    assert stored["local"] == "2024-05-01T10:00:00.123000"  # a wall time: no zone
    assert (stored["day"], stored["at"], stored["ref"]) == ("2024-02-29", "23:59:59.999999", str(ORDER["ref"]))
    assert stored["blob"] == "AP8="  # base64
    assert stored["ratio"] == "NaN"  # JSON has no NaN; orjson alone would write null
    assert (stored["tags"], stored["note"]) == ({"a": 1}, None)
    assert stored["seen"] == "2024-05-01T10:00:00.000001"  # Debezium's MicroTimestamp (connect.name)
    document, _ = codec.document(value)  # type: ignore[misc]
    assert document["amount"] == "12345678901234567890.123456789012345678"  # a route's numeric gets every digit
    assert document["placed"] == stored["placed"]


def test_floats_inside_a_recursive_type_are_named_at_every_depth() -> None:
    node = {
        "type": "record",
        "name": "Node",
        "namespace": "tree",
        "fields": [
            {"name": "ratio", "type": "double"},
            {"name": "next", "type": ["null", "Node"], "default": None},
            {"name": "children", "type": {"type": "array", "items": "tree.Node"}},
        ],
    }
    leaf = {"ratio": float("-inf"), "next": None, "children": []}
    record = {"ratio": 0.5, "next": {"ratio": float("nan"), "next": leaf, "children": []}, "children": [leaf]}
    client = _client()
    value = _avro(client, record, node)
    codec = AvroCodec(lambda: client)
    _ready(codec, value)
    text, _ = codec.text(value)  # type: ignore[misc]
    stored = orjson.loads(text)
    assert stored["ratio"] == 0.5
    assert (stored["next"]["ratio"], stored["next"]["next"]["ratio"]) == ("NaN", "-Infinity")
    assert stored["children"][0]["ratio"] == "-Infinity"
    without_floats = {**node, "fields": [{"name": "next", "type": ["null", "Node"], "default": None}]}
    assert fixer(without_floats) is None  # nothing runs per record


def test_the_first_record_of_a_schema_id_waits_for_it_and_an_unknown_id_is_a_fetch_error() -> None:
    client = _client()
    value = _avro(client, ORDER)
    other = _client()
    codec = AvroCodec(lambda: other)  # a registry without the schema: as if the producer used another one
    with pytest.raises(SchemaNotReady) as pending:
        codec.document(value)
    assert (pending.value.key, pending.value.schema_id) == (1, 1)
    with pytest.raises(SchemaUnknownError) as failed:
        asyncio.run(codec.prepare(1, 1))
    assert failed.value.condition.sqlstate == "LR003"
    with pytest.raises(SchemaNotReady):  # still waiting: nothing was decided about the record
        codec.text(value)


@pytest.mark.parametrize(
    ("value", "error_class", "words"),
    [
        (b'{"id": 1}', "MissingMagicByte", "starts with 0x7b"),
        (b"\x00\x00\x00", "MissingMagicByte", "3 bytes, too short"),
        (b"\x00\x00\x00\x00\x01" + b"\xff" * 8, "Undecodable", "schema id 1"),
    ],
    ids=["json", "short", "garbage"],
)
def test_bad_bytes_are_dead_letters_naming_the_schema_id(value: bytes, error_class: str, words: str) -> None:
    client = _client()
    codec = AvroCodec(lambda: client)
    _ready(codec, _avro(client, ORDER))
    found = codec.text(value)
    assert isinstance(found, Rejection)
    assert (found.error_class, found.stage) == (error_class, "decode")
    assert found.error_message.startswith("value: ") and words in found.error_message


def test_bytes_left_after_the_record_mean_another_schema() -> None:
    client = _client()
    codec = AvroCodec(lambda: client)
    value = _avro(client, ORDER)
    _ready(codec, value)
    found = codec.text(value + b"\x02")
    assert isinstance(found, Rejection) and "1 bytes are left after the record" in found.error_message


def test_a_schema_of_another_type_is_a_dead_letter_saying_so() -> None:
    client = _client()
    value = JSONSerializer(json.dumps({"type": "object"}), client, conf=CONF)({"id": 1}, TOPIC)
    codec = AvroCodec(lambda: client)
    _ready(codec, value)
    found = codec.text(value)
    assert isinstance(found, Rejection) and found.error_class == "SchemaUnusable"
    assert "it is a JSON schema, and the topic's format is avro" in found.error_message


def test_evolved_schemas_each_read_with_their_writers_schema() -> None:
    client = _client()
    narrow = {"type": "record", "name": "O", "fields": [{"name": "id", "type": "long"}]}
    wide = {"type": "record", "name": "O", "fields": [*narrow["fields"], {"name": "new", "type": "string"}]}
    old, new = _avro(client, {"id": 1}, narrow), _avro(client, {"id": 2, "new": "x"}, wide)
    codec = AvroCodec(lambda: client)
    _ready(codec, old)
    _ready(codec, new)
    assert codec.document(old) == ({"id": 1}, 1)
    assert codec.document(new) == ({"id": 2, "new": "x"}, 2)


def test_a_string_with_nul_cannot_be_jsonb_but_reaches_a_route() -> None:
    client = _client()
    schema = {"type": "record", "name": "S", "fields": [{"name": "s", "type": "string"}]}
    value = _avro(client, {"s": "a\x00b"}, schema)
    codec = AvroCodec(lambda: client)
    _ready(codec, value)
    found = codec.text(value)
    assert isinstance(found, Rejection) and (found.error_class, found.stage) == ("NulCharacter", "validate")
    assert codec.document(value) == ({"s": "a\x00b"}, 1)  # the route's text column refuses it, naming itself


def _protobuf_type() -> Any:
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="unit/order.proto",
        package="unit",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto", "google/protobuf/wrappers.proto"],
    )
    status = proto.enum_type.add(name="Status")
    for number, name in enumerate(("NEW", "PAID")):
        status.value.add(name=name, number=number)
    order = proto.message_type.add(name="Order")
    entry = order.nested_type.add(name="QtyEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=field.TYPE_INT64, label=field.LABEL_OPTIONAL)
    specs: list[tuple[str, int, str | None, int]] = [
        ("id", field.TYPE_UINT64, None, field.LABEL_OPTIONAL),
        ("count", field.TYPE_INT32, None, field.LABEL_OPTIONAL),
        ("placed", field.TYPE_MESSAGE, ".google.protobuf.Timestamp", field.LABEL_OPTIONAL),
        ("discount", field.TYPE_MESSAGE, ".google.protobuf.Int64Value", field.LABEL_OPTIONAL),
        ("comment", field.TYPE_MESSAGE, ".google.protobuf.StringValue", field.LABEL_OPTIONAL),
        ("status", field.TYPE_ENUM, ".unit.Status", field.LABEL_OPTIONAL),
        ("blob", field.TYPE_BYTES, None, field.LABEL_OPTIONAL),
        ("skus", field.TYPE_STRING, None, field.LABEL_REPEATED),
        ("qty", field.TYPE_MESSAGE, ".unit.Order.QtyEntry", field.LABEL_REPEATED),
        ("ratio", field.TYPE_FLOAT, None, field.LABEL_OPTIONAL),
    ]
    for number, (name, kind, type_name, label) in enumerate(specs, 1):
        order.field.add(name=name, number=number, type=kind, type_name=type_name, label=label)
    pool = descriptor_pool.DescriptorPool()
    for known in (timestamp_pb2, wrappers_pb2):
        pool.AddSerializedFile(known.DESCRIPTOR.serialized_pb)
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("unit.Order"))


def test_protobuf_well_known_types_enums_maps_and_defaults() -> None:
    client = _client()
    order_type = _protobuf_type()
    order = order_type(id=2**64 - 1, status=1, blob=b"\x01", skus=["a", "b"], ratio=float("inf"))
    order.placed.FromDatetime(dt.datetime(2024, 5, 1, 10, 0, 0, 5))
    order.discount.value = 7
    order.qty["x"] = 3
    serializer = ProtobufSerializer(order_type, client, {**CONF, "use.deprecated.format": False})
    value = serializer(order, TOPIC)
    codec = ProtobufCodec(lambda: client)
    _ready(codec, value)
    document, schema_id = codec.document(value)  # type: ignore[misc]
    assert schema_id == 1
    assert document == {
        "id": 2**64 - 1,  # an integer, not protobuf's JSON string
        "count": 0,  # a proto3 scalar holding its default is there
        "placed": "2024-05-01T10:00:00.000005+00:00",
        "discount": 7,  # a wrapper is its value; an unset one (comment) is absent
        "status": "PAID",
        "blob": "AQ==",
        "skus": ["a", "b"],
        "qty": {"x": 3},
        "ratio": "Infinity",
    }
    found = codec.text(value[:6] + b"\xff\xff\xff")
    assert (
        isinstance(found, Rejection)
        and found.error_class == "Undecodable"
        and "PROTOBUF schema id 1" in found.error_message
    )


def test_json_schema_records_are_validated_and_stored_as_they_came() -> None:
    client = _client()
    schema = {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}
    serializer = JSONSerializer(json.dumps(schema), client, conf=CONF)
    value = serializer({"id": 1, "amount": 12.50}, TOPIC)
    codec = JsonSchemaCodec(lambda: client)
    _ready(codec, value)
    assert codec.text(value) == (value[5:].decode(), 1)
    assert codec.document(value) == ({"id": 1, "amount": 12.5}, 1)
    refused = codec.text(value[:5] + b'{"amount": 1}')
    assert isinstance(refused, Rejection) and refused.error_class == "Undecodable"
    assert "'id' is a required property" in refused.error_message
