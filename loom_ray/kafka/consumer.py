"""A confluent-kafka consumer driven from asyncio, with manual assignment and no group rebalancing.

Every librdkafka call runs on one dedicated thread, so ``consume()`` never blocks the actor's event loop
(ray-facts.md: a blocking poll froze health checks for seconds) and calls never overlap. Offsets are never
auto-committed or auto-stored: PostgreSQL holds the truth; :meth:`mirror` copies it to the group for lag
tools only. librdkafka never resets an offset by itself (``auto.offset.reset=error``): a fetch below the log
start or above its end is reported in :attr:`Fetched.out_of_range` for the caller to decide.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from loom_ray.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


def consumer_config(settings: Settings, client_id: str) -> dict[str, Any]:
    """librdkafka consumer options from the settings (the seed's tuning, never auto-commit)."""
    config: dict[str, Any] = settings.kafka_client_config()
    config.update(
        {
            "group.id": settings.kafka_group_id,
            "client.id": client_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            # Never jump silently: an offset out of range comes back as an error (Fetched.out_of_range) and the
            # worker records the skipped range; LOOM_KAFKA_AUTO_OFFSET_RESET applies at the first claim only.
            "auto.offset.reset": "error",
            "isolation.level": settings.kafka_isolation_level,
            "fetch.max.bytes": settings.kafka_fetch_max_bytes,
            # Bound prefetch (peak RSS): both limits are *per partition*, and librdkafka may hold one fetch
            # response beyond queued.max.messages.kbytes, so an actor's worst case is about
            # partitions x (2 + 1) MiB: 48 MiB for 16 partitions (the defaults are 64 + 1 MiB). A stopped
            # consume() (backpressure) leaves every queue full, so this is held while an actor waits on
            # PostgreSQL.
            "max.partition.fetch.bytes": min(settings.kafka_fetch_max_bytes, 1024 * 1024),
            "queued.max.messages.kbytes": 2 * 1024,
            # A partition whose queue is full is not fetched again for fetch.queue.backoff.ms (default
            # 1000): with a small queue and few partitions the queue drains well before that and the
            # consumer idles (one partition, ~100 k msg/s of 200 B: 19 k msg/s with 1000 ms, 35 k with 20,
            # the same as the old 16 MiB queue). librdkafka PR #4275 / issue #2879.
            "fetch.queue.backoff.ms": 20,
            "fetch.wait.max.ms": 100,
            "session.timeout.ms": settings.kafka_session_timeout_ms,
            "error_cb": _log_kafka_error,
        }
    )
    return config


def _log_kafka_error(error: KafkaError) -> None:
    log.warning("kafka: %s", error)


@dataclass(slots=True)
class Fetched:
    """One :meth:`PartitionConsumer.consume`: the messages, and what the caller must know beside them.

    ``positions``: where each partition will be read next, past any offsets that hold no record for this
    isolation level (transaction markers, aborted records, compacted offsets); read only when the fetch
    queue ran dry (fewer messages than asked for), since only then can the position lead the last message.
    ``out_of_range``: partitions whose fetch offset the broker no longer has (or not yet): nothing more is
    fetched for them until they are assigned again.
    """

    messages: list[Message] = field(default_factory=list)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    out_of_range: list[tuple[str, int]] = field(default_factory=list)


class PartitionConsumer:
    """One actor's Kafka consumer over the partitions the coordinator gave it."""

    def __init__(self, settings: Settings, client_id: str) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kafka-{client_id}")
        self._consumer = Consumer(consumer_config(settings, client_id))
        self._max_records = settings.kafka_max_poll_records

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def assign(self, topic: str, partition: int, offset: int) -> None:
        """Start reading ``topic[partition]`` at ``offset`` (added to the current assignment).

        librdkafka keeps a partition's pause flag across unassign and assign, so a partition released while
        it waited for a schema (:meth:`pause`) would never be fetched again: the flag is cleared explicitly.
        """
        await self._call(self._assign, TopicPartition(topic, partition, offset), False)

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        """Read an assigned partition from ``offset`` on (after an out-of-range fetch stopped it, or a schema
        wait paused it)."""
        await self._call(self._assign, TopicPartition(topic, partition, offset), True)

    def _assign(self, tp: TopicPartition, again: bool) -> None:
        if again:
            self._consumer.incremental_unassign([TopicPartition(tp.topic, tp.partition)])
        self._consumer.incremental_assign([tp])
        self._consumer.resume([tp])

    async def unassign(self, topic: str, partition: int) -> None:
        """Stop reading ``topic[partition]``; messages already fetched for it must be ignored by the caller."""
        await self._call(self._consumer.incremental_unassign, [TopicPartition(topic, partition)])

    async def consume(self, timeout_s: float, held: list[tuple[str, int]]) -> Fetched:
        """Up to ``LOOM_KAFKA_MAX_POLL_RECORDS`` messages of the ``held`` partitions (see :class:`Fetched`)."""
        return await self._call(self._consume, timeout_s, held)

    def _consume(self, timeout_s: float, held: list[tuple[str, int]]) -> Fetched:
        messages = self._consumer.consume(self._max_records, timeout_s)
        fetched = Fetched()
        for message in messages:
            error = message.error()
            if error is None:
                fetched.messages.append(message)
            elif error.code() == KafkaError._AUTO_OFFSET_RESET:
                fetched.out_of_range.append((message.topic(), message.partition()))  # type: ignore[arg-type]
            else:
                log.warning("kafka consume error on %s[%s]: %s", message.topic(), message.partition(), error)
        if len(messages) < self._max_records and held:
            for tp in self._consumer.position([TopicPartition(t, p) for t, p in held]):
                if tp.offset >= 0:
                    fetched.positions[(tp.topic, tp.partition)] = tp.offset
        return fetched

    async def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        """(low, high) watermark of one partition, asked of the broker now."""
        low, high = await self._call(self._consumer.get_watermark_offsets, TopicPartition(topic, partition), 10.0)
        return int(low), int(high)

    async def pause(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Stop fetching these partitions (while one waits for its schema), dropping what was prefetched;
        :meth:`seek` reads one again."""
        await self._call(self._consumer.pause, [TopicPartition(t, p) for t, p in partitions])

    async def mirror(self, offsets: dict[tuple[str, int], int]) -> None:
        """Copy offsets committed in PostgreSQL to the Kafka group (asynchronous, advisory only)."""
        if not offsets:
            return
        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            await self._call(lambda: self._consumer.commit(offsets=tps, asynchronous=True))
        except KafkaException as exc:
            log.info("offset mirror to the Kafka group failed (harmless, retried later): %s", exc)

    async def close(self) -> None:
        """Leave the broker and stop the thread; idempotent."""
        try:
            await self._call(self._consumer.close)
        except RuntimeError:
            pass  # already closed
        self._thread.shutdown(wait=False)
