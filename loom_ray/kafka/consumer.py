"""A confluent-kafka consumer driven from asyncio, with manual assignment and no group rebalancing.

Every librdkafka call runs on one dedicated thread, so ``consume()`` never blocks the actor's event loop
(ray-facts.md: a blocking poll froze health checks for seconds) and calls never overlap. Offsets are never
auto-committed or auto-stored: PostgreSQL holds the truth; :meth:`mirror` copies it to the group for lag
tools only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
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
            "auto.offset.reset": settings.kafka_auto_offset_reset,
            "fetch.max.bytes": settings.kafka_fetch_max_bytes,
            # Bound prefetch (peak RSS): both limits are *per partition*, and librdkafka may hold one fetch
            # response beyond queued.max.messages.kbytes, so an actor's worst case is about
            # partitions x (4 + 1) MiB: 80 MiB for 16 partitions (it was 16 + 8 MiB each, 384 MiB; the
            # defaults are 64 + 1). B5_1p W1 peak RSS went from ~400 MB to ~200-260 MB.
            "max.partition.fetch.bytes": min(settings.kafka_fetch_max_bytes, 1024 * 1024),
            "queued.max.messages.kbytes": 4 * 1024,
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


class PartitionConsumer:
    """One actor's Kafka consumer over the partitions the coordinator gave it."""

    def __init__(self, settings: Settings, client_id: str) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kafka-{client_id}")
        self._consumer = Consumer(consumer_config(settings, client_id))
        self._max_records = settings.kafka_max_poll_records

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def assign(self, topic: str, partition: int, offset: int) -> None:
        """Start reading ``topic[partition]`` at ``offset`` (added to the current assignment)."""
        await self._call(self._consumer.incremental_assign, [TopicPartition(topic, partition, offset)])

    async def unassign(self, topic: str, partition: int) -> None:
        """Stop reading ``topic[partition]``; messages already fetched for it must be ignored by the caller."""
        await self._call(self._consumer.incremental_unassign, [TopicPartition(topic, partition)])

    async def consume(self, timeout_s: float) -> list[Message]:
        """Up to ``LOOM_KAFKA_MAX_POLL_RECORDS`` messages; error events are logged and left out."""
        messages = await self._call(self._consumer.consume, self._max_records, timeout_s)
        good = []
        for message in messages:
            error = message.error()
            if error is None:
                good.append(message)
            else:
                log.warning("kafka consume error on %s[%s]: %s", message.topic(), message.partition(), error)
        return good

    async def pause(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Stop fetching these partitions (buffers are full); :meth:`resume` restarts them."""
        await self._call(self._consumer.pause, [TopicPartition(t, p) for t, p in partitions])

    async def resume(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Fetch these partitions again."""
        await self._call(self._consumer.resume, [TopicPartition(t, p) for t, p in partitions])

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
