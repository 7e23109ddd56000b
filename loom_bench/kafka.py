"""Kafka helpers for the harness: watermarks, topic deletion and a consumer group's committed progress."""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, ConsumerGroupState, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

Watermarks = dict[int, tuple[int, int]]  # partition -> (low, high)


def _metadata_consumer(bootstrap: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-meta-{uuid.uuid4().hex[:8]}"})


def watermarks(bootstrap: str, topic: str) -> Watermarks | None:
    """Low and high watermark of every partition; None if the topic does not exist."""
    consumer = _metadata_consumer(bootstrap)
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return None
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in sorted(meta.partitions)
        }
    finally:
        consumer.close()


def total(marks: Watermarks) -> int:
    """Messages the topic holds."""
    return sum(high - low for low, high in marks.values())


def create_log_append_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """A topic whose timestamps the broker sets on append (``LogAppendTime``), for live latency.

    Latency then runs from the broker's append to the PostgreSQL commit, so a producer that queues
    (it shares the 2 cores) does not count as sink latency.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    config = {"message.timestamp.type": "LogAppendTime"}
    admin.create_topics([NewTopic(topic, partitions, 1, config=config)])[topic].result(60)


def delete_topic(bootstrap: str, topic: str) -> None:
    """Delete a topic the harness created; a missing one is fine."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        admin.delete_topics([topic], operation_timeout=30)[topic].result(60)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if not isinstance(error, KafkaError) or error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise


def group_caught_up(bootstrap: str, group: str, marks_by_topic: dict[str, Watermarks]) -> bool:
    """Whether ``group`` committed every partition up to its high watermark (B3's end of drain)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        wanted = [TopicPartition(t, p) for t, marks in marks_by_topic.items() for p in marks]
        found = consumer.committed(wanted, timeout=10)
    except KafkaException:
        return False
    finally:
        consumer.close()
    return all(tp.offset >= marks_by_topic[tp.topic][tp.partition][1] for tp in found)


def group_stable(bootstrap: str, group: str, members: int) -> bool:
    """Whether ``group`` has ``members`` members and a finished rebalance (B3 is ready for live load)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        description = admin.describe_consumer_groups([group])[group].result(10)
    except KafkaException:
        return False
    return bool(description.state == ConsumerGroupState.STABLE and len(description.members) >= members)
