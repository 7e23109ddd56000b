"""Topic creation for the load generator (replication factor 1, waits for partition leaders)."""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

_LOG = logging.getLogger(__name__)


class LoadgenError(RuntimeError):
    """Raised when the load cannot be produced: broker unreachable, wrong topic shape, bad arguments."""


def _topic_partition_count(admin: AdminClient, topic: str, timeout_s: float) -> int | None:
    """Return the topic's partition count, or None if the broker does not know the topic."""
    try:
        metadata = admin.list_topics(timeout=max(timeout_s, 0.1))
    except KafkaException as exc:
        raise LoadgenError(f"cannot reach Kafka within {timeout_s:.0f} s: {exc.args[0]}") from exc
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        return None
    return len(found.partitions)


def _wait_for_leaders(admin: AdminClient, topic: str, partitions: int, deadline: float) -> None:
    """Block until metadata shows every partition with a leader; LoadgenError at the deadline."""
    while True:
        remaining = deadline - time.monotonic()
        try:
            found = admin.list_topics(topic=topic, timeout=max(remaining, 0.1)).topics.get(topic)
        except KafkaException:
            found = None
        if (
            found is not None
            and found.error is None
            and len(found.partitions) == partitions
            and all(p.leader >= 0 for p in found.partitions.values())
        ):
            return
        if remaining <= 0:
            raise LoadgenError(f"topic {topic} was created but its {partitions} partitions have no leaders yet")
        time.sleep(0.1)


def ensure_topic(bootstrap: str, topic: str, partitions: int, timeout_s: float = 30) -> None:
    """Create ``topic`` with ``partitions`` partitions (replication factor 1) unless it already exists.

    Runs before producing. Raises LoadgenError if the broker cannot be reached within ``timeout_s`` or the
    topic exists with a different partition count; returns once every partition has a leader.
    """
    deadline = time.monotonic() + timeout_s
    admin = AdminClient({"bootstrap.servers": bootstrap}, logger=_LOG)
    existing = _topic_partition_count(admin, topic, timeout_s)
    if existing is None:
        _LOG.info("creating topic=%s partitions=%d replication_factor=1", topic, partitions)
        futures = admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)],
            request_timeout=timeout_s,
        )
        try:
            futures[topic].result(timeout=timeout_s)
        except KafkaException as exc:
            error = exc.args[0]
            if not isinstance(error, KafkaError) or error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise LoadgenError(f"cannot create topic {topic}: {error}") from exc
            existing = _topic_partition_count(admin, topic, deadline - time.monotonic())
    if existing is not None and existing != partitions:
        raise LoadgenError(
            f"topic {topic} already exists with {existing} partitions but {partitions} were requested; "
            f"pass --partitions {existing} or delete the topic"
        )
    _wait_for_leaders(admin, topic, partitions, deadline)
