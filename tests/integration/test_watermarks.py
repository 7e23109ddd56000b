"""KafkaMetadata's watermarks on a real broker: the values the broker reports, partitions added after the
client cached the topic's metadata, the last stable offset under read_committed, and a missing topic that
leaves out only its own partitions (the coordinator asks for every topic's watermarks in one request)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions

from loom_ray.kafka.admin import KafkaMetadata
from loom_ray.loadgen import ensure_topic
from loom_ray.settings import Settings
from tests.support.pipeline import wait_until
from tests.support.services import Endpoints


@pytest.fixture
def topics(endpoints: Endpoints, topic_name: str) -> list[str]:
    """Two topics of 3 partitions; partition p of each holds p + 2 records."""
    names = [f"{topic_name}-a", f"{topic_name}-b"]
    producer = Producer({"bootstrap.servers": endpoints.kafka})
    for name in names:
        ensure_topic(endpoints.kafka, name, 3)
        for partition in range(3):
            for _ in range(partition + 2):
                producer.produce(name, b"x", partition=partition)
    assert producer.flush(30) == 0
    return names


def _metadata(endpoints: Endpoints, topics: list[str], isolation: str = "read_committed") -> Iterator[KafkaMetadata]:
    metadata = KafkaMetadata(
        Settings.from_env(
            kafka_bootstrap_servers=endpoints.kafka,
            db_dsn=endpoints.dsn,
            kafka_topics=tuple(topics),
            kafka_isolation_level=isolation,
        )
    )
    try:
        yield metadata
    finally:
        metadata.close()


def _leaders(admin: AdminClient, topic: str) -> int:
    """How many of the topic's partitions have a leader (new ones have none for a moment)."""
    return sum(1 for p in admin.list_topics(topic, timeout=10).topics[topic].partitions.values() if p.leader >= 0)


def test_watermarks_are_the_brokers(endpoints: Endpoints, topics: list[str]) -> None:
    wanted = [(t, p) for t in topics for p in range(3)]
    for metadata in _metadata(endpoints, topics):
        assert metadata.high_watermarks(wanted) == {(t, p): p + 2 for t, p in wanted}
        assert metadata.watermarks(wanted) == {(t, p): (0, p + 2) for t, p in wanted}
        assert metadata.high_watermarks([]) == {}


def test_a_missing_topic_leaves_out_only_its_partitions(endpoints: Endpoints, topics: list[str]) -> None:
    missing = f"{topics[0]}-never-created"
    wanted = [(t, p) for t in topics for p in range(3)] + [(missing, 0), (missing, 1)]
    for metadata in _metadata(endpoints, [*topics, missing]):
        assert metadata.high_watermarks(wanted) == {(t, p): p + 2 for t in topics for p in range(3)}
        assert metadata.high_watermarks([(missing, 0)]) == {}


def test_partitions_added_since_the_clients_last_metadata_are_answered(endpoints: Endpoints, topics: list[str]) -> None:
    topic = topics[0]
    admin = AdminClient({"bootstrap.servers": endpoints.kafka})
    for metadata in _metadata(endpoints, topics):
        assert metadata.high_watermarks([(topic, 0)]) == {(topic, 0): 2}  # the client has the topic's metadata now
        admin.create_partitions([NewPartitions(topic, 5)])[topic].result(30)
        wait_until(lambda: _leaders(admin, topic) == 5, 30, "5 partitions with a leader")
        added = [(topic, 3), (topic, 4)]
        # Their leaders answer "not leader" for a moment after the metadata shows them; the client's own
        # metadata cache is refreshed once by the call that meets them (it never would be within the wait).
        expected = {(topic, 3): (0, 0), (topic, 4): (0, 0)}
        wait_until(lambda m=metadata, a=added, e=expected: m.watermarks(a) == e, 30, "the added partitions' watermarks")
        assert metadata.high_watermarks([(topic, p) for p in range(5)]) == {(topic, p): p + 2 for p in range(3)} | {
            (topic, 3): 0,
            (topic, 4): 0,
        }


def test_read_committed_high_watermark_is_the_last_stable_offset(endpoints: Endpoints, topics: list[str]) -> None:
    topic = topics[0]
    transactional = Producer({"bootstrap.servers": endpoints.kafka, "transactional.id": f"{topic}-tx"})
    transactional.init_transactions(30)
    transactional.begin_transaction()
    for _ in range(5):
        transactional.produce(topic, b"open", partition=0)
    assert transactional.flush(30) == 0
    try:
        for metadata in _metadata(endpoints, topics):
            assert metadata.high_watermarks([(topic, 0)]) == {(topic, 0): 2}  # below the open transaction
        for metadata in _metadata(endpoints, topics, isolation="read_uncommitted"):
            assert metadata.high_watermarks([(topic, 0)]) == {(topic, 0): 7}
    finally:
        transactional.abort_transaction(30)
    reader = Consumer({"bootstrap.servers": endpoints.kafka, "group.id": f"{topic}-check"})
    try:
        # After the abort the broker's own watermark counts the 5 aborted records and the abort marker (which
        # the transaction coordinator writes after it has answered the abort).
        wait_until(lambda: reader.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, 8), 30, "marker")
    finally:
        reader.close()
