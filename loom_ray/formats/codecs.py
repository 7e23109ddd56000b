"""The codecs of one consumer: one per registry format, sharing one Schema Registry client, made when a
partition of that format is first assigned.
"""

from __future__ import annotations

import threading

from confluent_kafka.schema_registry import SchemaRegistryClient

from loom_ray.formats import registry
from loom_ray.formats.avro import AvroCodec
from loom_ray.formats.base import Codec
from loom_ray.formats.json_schema import JsonSchemaCodec
from loom_ray.formats.names import JSON
from loom_ray.formats.protobuf import ProtobufCodec
from loom_ray.settings import Settings

_CODECS: dict[str, type[Codec]] = {c.format: c for c in (AvroCodec, ProtobufCodec, JsonSchemaCodec)}


class Codecs:
    """A consumer's codecs by format (json has none: :mod:`loom_ray.decode` reads it)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: SchemaRegistryClient | None = None
        self._making = threading.Lock()  # codecs ask for the client from worker threads
        self._codecs: dict[str, Codec] = {}

    def for_topic(self, topic: str) -> Codec | None:
        """The codec of ``topic``'s format, or None for json."""
        name = self._settings.format_of(topic)
        if name == JSON:
            return None
        found = self._codecs.get(name)
        if found is None:
            found = self._codecs[name] = _CODECS[name](self._registry)
        return found

    def _registry(self) -> SchemaRegistryClient:
        """The consumer's one registry client, made on first use."""
        with self._making:
            if self._client is None:
                self._client = registry.client(self._settings)
            return self._client
