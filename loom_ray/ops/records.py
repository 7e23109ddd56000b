"""Records read back from Kafka for a replay, and converted as the consumer converts them today.

A dead letter keeps at most ``LOOM_DEAD_LETTER_MAX_BYTES`` of its value and not its timestamp, so a replay
reads the record itself from the broker (its offset, under the deployment's isolation level) and checks it
is the one dead-lettered (the SHA-256 of its value). A record the broker no longer has (retention, an older
incarnation) cannot be replayed: its dead letter stays as it is.

:class:`RecordReader` is a blocking Kafka client (run it in a thread). :class:`Conversion` turns a record into
what the consume loop (:meth:`loom_ray.pipeline.IngestWorker._add_all` and :mod:`loom_ray.formats.read`) makes
of it: a ``loom_messages`` row, a route's record, or the rejection that keeps it a dead letter; a registry
format's schema is fetched when a record first needs it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, Message, TopicPartition

from loom_ray.batch import Row
from loom_ray.decode import Rejection, decode_value
from loom_ray.fields import UnreadableHeaders, read_headers, timestamp_rejection, unencodable_headers
from loom_ray.formats import read
from loom_ray.formats.base import SchemaNotReady
from loom_ray.formats.codecs import Codecs
from loom_ray.pipeline import encode_headers
from loom_ray.routes.convert import RoutedRecord, RoutePlan
from loom_ray.settings import Settings
from loom_ray.sink.codecs import kafka_ts_micros

_JUMP = 500  # offsets apart beyond which reading seeks instead of reading through
_POLL_S = 1.0
_IDLE_POLLS = 30  # consume() calls in a row without a record or the end: the broker does not answer


class RecordReader:
    """Reads records of one partition at a time from the broker (a consumer with no group, never committing)."""

    def __init__(self, settings: Settings) -> None:
        self._consumer = Consumer(
            {
                **settings.kafka_client_config(),
                "group.id": f"{settings.kafka_group_id}-ops-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "error",
                "isolation.level": settings.kafka_isolation_level,
            }
        )

    def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        """(low, high) watermark of the partition, asked of the broker now."""
        low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), 10.0)
        return int(low), int(high)

    def read(self, topic: str, partition: int, offsets: Sequence[int]) -> dict[int, Message]:
        """The records at ``offsets`` the broker still has (an offset missing from the answer: it has not)."""
        wanted = sorted(set(offsets))
        found: dict[int, Message] = {}
        stretch: list[int] = []
        for offset in wanted:
            if stretch and offset - stretch[-1] > _JUMP:
                found.update(self._pick(topic, partition, stretch))
                stretch = []
            stretch.append(offset)
        if stretch:
            found.update(self._pick(topic, partition, stretch))
        return found

    def _pick(self, topic: str, partition: int, offsets: list[int]) -> dict[int, Message]:
        wanted = set(offsets)
        found = {}
        for message in self.scan(topic, partition, offsets[0], offsets[-1] + 1):
            offset: int = message.offset()  # type: ignore[assignment]
            if offset in wanted:
                found[offset] = message
        return found

    def scan(self, topic: str, partition: int, start: int, end: int) -> Iterator[Message]:
        """Every record of ``[start, end)`` the broker has, in offset order (from its log start if ``start`` is
        below it)."""
        low, high = self.watermarks(topic, partition)
        start, end = max(start, low), min(end, high)
        if start >= end:
            return
        self._consumer.assign([TopicPartition(topic, partition, start)])
        idle = 0
        try:
            while True:
                messages = self._consumer.consume(500, _POLL_S)
                idle = 0 if messages else idle + 1
                if idle >= _IDLE_POLLS:
                    raise TimeoutError(f"{topic}[{partition}]: no record from the broker for {idle * _POLL_S:.0f}s")
                for message in messages:
                    error = message.error()
                    if error is not None:
                        if error.code() in (KafkaError._PARTITION_EOF, KafkaError._AUTO_OFFSET_RESET):
                            return
                        raise RuntimeError(f"{topic}[{partition}]: {error}")
                    offset: int = message.offset()  # type: ignore[assignment]
                    if offset >= end:
                        return
                    yield message
                (position,) = self._consumer.position([TopicPartition(topic, partition)])
                if position.offset >= end:
                    return
        finally:
            self._consumer.unassign()

    def close(self) -> None:
        """Leave the broker."""
        self._consumer.close()


def _headers(message: Message) -> tuple[Any, str | None] | Rejection:
    """The record's headers as read (for a route's columns) and as stored (JSON text), or why they cannot be."""
    (raw,) = read_headers([message])
    if isinstance(raw, UnreadableHeaders):
        return raw.rejection()
    try:
        return raw, encode_headers(raw) if raw else None
    except Exception as exc:
        return unencodable_headers(exc)


_T = TypeVar("_T")


class Conversion:
    """Records converted as the consumer converts them today, with the deployment's formats. Its methods block
    (run them in a thread): a registry format's schema not fetched yet is fetched on ``loop`` first."""

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
        self._settings = settings
        self._codecs = Codecs(settings)
        self._loop = loop

    def message_row(self, message: Message, incarnation: int) -> Row | Rejection:
        """The ``loom_messages`` row of a record of a topic no route takes, or why it is none."""
        headers = _headers(message)
        if isinstance(headers, Rejection):
            return headers
        timestamp = message.timestamp()
        refused = timestamp_rejection(timestamp)
        if refused is not None:
            return refused
        codec = self._codecs.for_topic(message.topic())  # type: ignore[arg-type]
        max_bytes = self._settings.max_message_bytes
        if codec is not None:
            return self._with_schema(lambda: read.registry_row(codec, message, headers[1], incarnation, max_bytes))
        decoded = decode_value(message.value(), max_bytes)
        if isinstance(decoded, Rejection):
            return decoded
        kafka_ts = None if timestamp[0] == TIMESTAMP_NOT_AVAILABLE else kafka_ts_micros(timestamp[1])
        return (message.topic(), message.partition(), message.offset(), message.key(), decoded, headers[1],
                kafka_ts, incarnation, None)  # fmt: skip

    def routed_record(self, plan: RoutePlan, message: Message) -> RoutedRecord | Rejection | None:
        """The route's record (its columns' values, or a delete by key) of a record of a routed topic, why it is
        none, or None for a record the route commits without a row (:func:`loom_ray.formats.read.routed_record`)."""
        headers = _headers(message)
        if isinstance(headers, Rejection):
            return headers
        raw, stored = headers
        codec = self._codecs.for_topic(message.topic())  # type: ignore[arg-type]
        max_bytes = self._settings.max_message_bytes
        return self._with_schema(lambda: read.routed_record(plan, codec, message, raw, stored, max_bytes))

    def _with_schema(self, convert: Callable[[], _T]) -> _T:
        """``convert()``, after fetching the schemas it asks for. Raises
        :class:`~loom_ray.formats.registry.SchemaFetchError` while the registry does not give one."""
        while True:
            try:
                return convert()
            except SchemaNotReady as pending:
                fetch = pending.codec.prepare(pending.key, pending.schema_id)
                asyncio.run_coroutine_threadsafe(fetch, self._loop).result()
