"""Partition discovery and watermarks, for the coordinator and the drain check."""

from __future__ import annotations

from confluent_kafka import Consumer, KafkaException, TopicPartition

from loom_ray.settings import Settings


class KafkaMetadata:
    """A metadata-only client (never assigned, never commits). Blocking calls: run them in a thread."""

    def __init__(self, settings: Settings) -> None:
        config = settings.kafka_client_config()
        config.update({"group.id": f"{settings.kafka_group_id}-metadata", "enable.auto.commit": False})
        self._client = Consumer(config)
        self._topics = settings.kafka_topics

    def partitions(self, timeout_s: float = 10.0) -> list[tuple[str, int]]:
        """Every partition of the configured topics; a missing topic raises KafkaException."""
        metadata = self._client.list_topics(timeout=timeout_s)
        found: list[tuple[str, int]] = []
        for topic in self._topics:
            info = metadata.topics.get(topic)
            if info is None or info.error is not None:
                raise KafkaException(f"topic {topic!r} not found: {info.error if info else 'no metadata'}")
            found.extend((topic, p) for p in info.partitions)
        return sorted(found)

    def watermarks(self, topic: str, partition: int, timeout_s: float = 10.0) -> tuple[int, int]:
        """(low, high) watermark of one partition."""
        low, high = self._client.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
        return int(low), int(high)

    def close(self) -> None:
        """Release the client."""
        self._client.close()
