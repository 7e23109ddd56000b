"""JSON Schema in the Confluent wire format, read and validated by confluent-kafka's JSONDeserializer.

The JSON after the framing is parsed by orjson (as the default format parses a value) and validated against
its writer's schema; a record its schema refuses is a dead letter saying why. The default table stores the
JSON text as it came (jsonb keeps every digit of its numbers); a route reads the parsed values, as for
format json.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import orjson
from confluent_kafka.schema_registry.json_schema import JSONDeserializer

from loom_ray.decode import VALIDATE, Rejection, contains_nul
from loom_ray.formats.base import NO_SUBJECT, Codec, Registry

_PAYLOAD = 5  # after the magic byte and the schema id


class JsonSchemaCodec(Codec):
    """JSON records of any schema id, each validated against its writer's schema."""

    format = "json_schema"
    schema_type = "JSON"

    def __init__(self, registry: Registry) -> None:
        super().__init__(registry)
        self._deserializer: JSONDeserializer | None = None  # made with the client, on a worker thread

    def text(self, value: bytes) -> tuple[str, int] | Rejection:
        decoded = self.decode(value)
        if isinstance(decoded, Rejection):
            return decoded
        record, schema_id = decoded
        text = value[_PAYLOAD:].decode("utf-8")  # orjson read it: UTF-8
        if "\\u0000" in text and contains_nul(record):
            return Rejection(
                "NulCharacter", "value: a JSON string holds \\u0000, which PostgreSQL jsonb cannot store", VALIDATE
            )
        return text, schema_id

    def document(self, value: bytes) -> tuple[Any, int] | Rejection:
        return self.decode(value)

    def _frame(self, value: bytes) -> tuple[Hashable, int, Any] | Rejection:
        schema_id = self._frame_id(value)
        return schema_id if isinstance(schema_id, Rejection) else (schema_id, schema_id, value)

    def _build(self, key: Hashable, schema_id: int) -> JSONDeserializer:
        schema = self._schema(schema_id)
        if self._deserializer is None:
            self._deserializer = JSONDeserializer(
                None, schema_registry_client=self._registry(), conf=NO_SUBJECT, json_decode=orjson.loads
            )
        self._deserializer._get_parsed_schema(schema)
        return self._deserializer

    def _read(self, reader: JSONDeserializer, payload: bytes) -> Any:
        return reader(payload, None)
