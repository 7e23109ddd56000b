"""Protobuf in the Confluent wire format: the message indexes read by confluent-kafka, the writer's message
type built from the registry's schema by its ProtobufDeserializer.

A record's framing (the schema id, then the indexes of its message type in the schema, as varints) is read
by confluent-kafka's ``SchemaId``; the reader of a (schema id, indexes) pair is built once on a worker
thread, with the ProtobufDeserializer's own steps (the schema with its references into a descriptor pool,
the indexes into a message type), and each record is parsed into that type and read field by field
(:mod:`loom_ray.formats.protobuf_values`). A consumer needs no generated classes.
"""

from __future__ import annotations

import io
from collections.abc import Hashable
from typing import Any

from confluent_kafka.schema_registry.common.serde import SchemaId
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
from google.protobuf import empty_pb2
from google.protobuf.message_factory import GetMessageClass

from loom_ray.decode import DECODE, Rejection
from loom_ray.formats.base import NO_SUBJECT, Codec, Registry
from loom_ray.formats.protobuf_values import Read, reader


class ProtobufCodec(Codec):
    """Protobuf records of any schema id and message type, each read as its writer's type."""

    format = "protobuf"
    schema_type = "PROTOBUF"

    def __init__(self, registry: Registry) -> None:
        super().__init__(registry)
        self._deserializer: ProtobufDeserializer | None = None  # made with the client, on a worker thread

    def _frame(self, value: bytes) -> tuple[Hashable, int, Any] | Rejection:
        schema_id = self._frame_id(value)
        if isinstance(schema_id, Rejection):
            return schema_id
        framing = SchemaId(self.schema_type)
        try:
            payload = framing.from_bytes(io.BytesIO(value))
        except Exception as exc:
            return Rejection(
                "Undecodable",
                f"value: the message indexes after schema id {schema_id} cannot be read ({type(exc).__name__}: {exc})",
                DECODE,
            )
        return (schema_id, tuple(framing.message_indexes or (0,))), schema_id, payload

    def _build(self, key: Hashable, schema_id: int) -> tuple[type[Any], Read]:
        assert isinstance(key, tuple)
        schema = self._schema(schema_id, fmt="serialized")
        if self._deserializer is None:  # its message type is not used: its steps resolve the writer's type
            self._deserializer = ProtobufDeserializer(empty_pb2.Empty, NO_SUBJECT, self._registry())
        deserializer = self._deserializer
        file_proto, pool = deserializer._get_parsed_schema(schema)
        descriptor = deserializer._get_message_desc(pool, pool.FindFileByName(file_proto.name), list(key[1]))
        return GetMessageClass(descriptor), reader(descriptor)

    def _read(self, reader: tuple[type[Any], Read], payload: io.BytesIO) -> Any:
        message_type, read = reader
        message = message_type()
        message.ParseFromString(payload.read())
        return read(message)
