"""What happens to a topic behind the job's back: retention (DeleteRecords) and deletion plus re-creation."""

from __future__ import annotations

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from loom_ray import loadgen
from tests.support.pipeline import wait_until


def delete_records(bootstrap: str, topic: str, before: dict[int, int]) -> None:
    """Move each partition's log start to ``before[partition]``, as retention would (AdminClient.delete_records).

    Fails if the broker refuses any of them (e.g. an offset above the high watermark).
    """
    requests = [TopicPartition(topic, partition, offset) for partition, offset in sorted(before.items())]
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the futures resolve
    for request, future in admin.delete_records(requests).items():
        low, wanted = future.result(30).low_watermark, before[request.partition]
        assert low == wanted, f"{topic}[{request.partition}]: log start {low}, not {wanted}"


def recreate_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Delete ``topic``, wait until the broker no longer lists it, and create it again, empty.

    Creating it while the deletion is still under way would find the old topic and keep it.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.delete_topics([topic])[topic].result(30)
    wait_until(lambda: topic not in admin.list_topics(timeout=10).topics, 60, f"topic {topic} deleted")
    loadgen.ensure_topic(bootstrap, topic, partitions)
