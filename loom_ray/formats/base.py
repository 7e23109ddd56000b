"""What every registry format shares: the Confluent framing, a reader per schema fetched once, and the answers
a record gets (JSON for the default table or a route, a dead letter, or "wait for the schema").

A :class:`Codec` lives on a consumer, one per format. For each record of a registry-format topic the consumer
calls :meth:`Codec.text` (the default table), :meth:`Codec.document` (a route with a model or a Debezium
envelope) or :meth:`Codec.decode` (any other route: its columns take the decoded values). The first record of
a schema id raises :class:`SchemaNotReady`: the consumer stops reading that partition at that record, awaits
:meth:`Codec.prepare` (the registry asked on a worker thread, retried with backoff while
:class:`~loom_ray.formats.registry.SchemaFetchError` says it cannot answer) and reads the record again. Every
later record of the id is decoded on the event loop from the cached reader, with no request.

A record that is not framed (no magic byte, too short) or whose bytes do not decode with its schema is a
dead letter (stage ``decode``) naming the schema id and why; so is one whose schema came but cannot be used
(another schema type than the topic's format, a schema its library cannot parse), since asking again would
give the same schema.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from typing import Any, ClassVar

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from loom_ray.decode import DECODE, Rejection
from loom_ray.errors import LoomError
from loom_ray.formats import jsonify
from loom_ray.formats.registry import fetch_error

# The deserializers' subject name strategy: none. A subject is only needed for rules, migrations and the
# "latest version" reader schema, which loom-ray does not use (it reads each record with its writer's schema),
# and the default strategy would ask the registry for subject associations on every first record.
NO_SUBJECT: dict[str, Any] = {"subject.name.strategy": lambda ctx, record_name: None}
_HEADER_BYTES = 5  # the magic byte and the 4-byte schema id
Registry = Callable[[], SchemaRegistryClient]  # the consumer's client, made on first use (it reads TLS files)


class SchemaNotReady(LoomError):
    """Raised by :meth:`Codec.text` and :meth:`Codec.document` for a record whose schema is not fetched yet;
    the consumer awaits :meth:`Codec.prepare` and reads the record again. ``key`` identifies the reader to
    fetch (a schema id; for Protobuf with the message indexes)."""

    def __init__(self, codec: Codec, key: Hashable, schema_id: int) -> None:
        super().__init__(f"{codec.format} schema id {schema_id} is not fetched yet")
        self.codec = codec
        self.key = key
        self.schema_id = schema_id


class UnusableSchema(LoomError):
    """The registry gave the schema, and it cannot read this topic's records (raised while preparing it)."""


class Codec(ABC):
    """One registry format's decoding on one consumer; subclasses say how a record is framed, how a schema
    becomes a reader, and how a reader reads a record. ``registry`` gives the Schema Registry client; it is
    first called on a worker thread, while preparing a schema, so that a client that cannot be made (a TLS file
    missing) is a reason to wait, like a registry that does not answer."""

    format: ClassVar[str]  # as LOOM_FORMATS names it
    schema_type: ClassVar[str]  # as the registry names it

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._readers: dict[Hashable, Any] = {}
        self._unusable: dict[Hashable, str] = {}  # key -> why its schema cannot read records
        self._fetching: dict[Hashable, asyncio.Task[None]] = {}

    def text(self, value: bytes) -> tuple[str, int] | Rejection:
        """The record as the JSON text of a ``loom_messages`` row and its schema id, or its dead letter's
        reason. Raises :class:`SchemaNotReady`."""
        decoded = self.decode(value)
        if isinstance(decoded, Rejection):
            return decoded
        record, schema_id = decoded
        written = jsonify.text(record)
        return written if isinstance(written, Rejection) else (written, schema_id)

    def document(self, value: bytes) -> tuple[Any, int] | Rejection:
        """The record as the JSON values a route reads and its schema id, or its dead letter's reason. Raises
        :class:`SchemaNotReady`."""
        decoded = self.decode(value)
        if isinstance(decoded, Rejection):
            return decoded
        record, schema_id = decoded
        return jsonify.document(record), schema_id

    def decode(self, value: bytes) -> tuple[Any, int] | Rejection:
        """The record's value as its library decodes it, with its schema id. Raises :class:`SchemaNotReady`."""
        framed = self._frame(value)
        if isinstance(framed, Rejection):
            return framed
        key, schema_id, payload = framed
        reader = self._readers.get(key)
        if reader is None:
            why = self._unusable.get(key)
            if why is None:
                raise SchemaNotReady(self, key, schema_id)
            return Rejection(
                "SchemaUnusable", f"value: {self.schema_type} schema id {schema_id} cannot read it: {why}", DECODE
            )
        try:
            return self._read(reader, payload), schema_id
        except Exception as exc:  # any failure to read these bytes with this schema is the record's
            return Rejection(
                "Undecodable",
                f"value: does not decode with {self.schema_type} schema id {schema_id} ({type(exc).__name__}: {exc})",
                DECODE,
            )

    async def prepare(self, key: Hashable, schema_id: int) -> None:
        """Fetch and parse the schema of ``key`` (on a worker thread; one fetch per key at a time), so that its
        records decode, or are dead letters saying why the schema cannot read them. Raises
        :class:`~loom_ray.formats.registry.SchemaFetchError` while the registry does not give it."""
        if key in self._readers or key in self._unusable:
            return
        task = self._fetching.get(key)
        if task is None:
            task = self._fetching[key] = asyncio.get_running_loop().create_task(self._fetch(key, schema_id))
            task.add_done_callback(lambda _: self._fetching.pop(key, None))
        await asyncio.shield(task)

    async def _fetch(self, key: Hashable, schema_id: int) -> None:
        try:
            self._readers[key] = await asyncio.to_thread(self._build, key, schema_id)
        except UnusableSchema as exc:
            self._unusable[key] = str(exc)
        except Exception as exc:
            failed = fetch_error(exc, schema_id)
            if failed is None:
                self._unusable[key] = f"{type(exc).__name__}: {exc}"
                return
            raise failed from exc

    def _schema(self, schema_id: int, fmt: str | None = None) -> Schema:
        """The schema ``schema_id`` from the registry (cached by the client), checked to be of this format."""
        schema = self._registry().get_schema(schema_id, fmt=fmt)
        kind = schema.schema_type or "AVRO"  # Confluent's default type
        if kind != self.schema_type:
            raise UnusableSchema(f"it is a {kind} schema, and the topic's format is {self.format}")
        return schema

    def _frame_id(self, value: bytes) -> int | Rejection:
        """The schema id of a record framed as a magic byte 0 and a 4-byte big-endian id."""
        if len(value) < _HEADER_BYTES or value[0] != 0:
            return self._unframed(value)
        return int.from_bytes(value[1:_HEADER_BYTES], "big")

    def _unframed(self, value: bytes) -> Rejection:
        """A record without the Confluent framing."""
        if len(value) < _HEADER_BYTES:
            found = f"{len(value)} bytes, too short for"
        else:
            found = f"starts with 0x{value[0]:02x}, not"
        return Rejection(
            "MissingMagicByte",
            f"value: {found} the Confluent wire format of format {self.format} (a 0x00 magic byte, then a 4-byte "
            "schema id)",
            DECODE,
        )

    @abstractmethod
    def _frame(self, value: bytes) -> tuple[Hashable, int, Any] | Rejection:
        """``(reader key, schema id, payload as _read takes it)``, or why the record is not framed."""

    @abstractmethod
    def _build(self, key: Hashable, schema_id: int) -> Any:
        """The reader of ``key`` (runs on a worker thread). Raises UnusableSchema, or what the registry raised."""

    @abstractmethod
    def _read(self, reader: Any, payload: Any) -> Any:
        """The record decoded by ``reader``; raises whatever its library raises on bytes it cannot read."""
