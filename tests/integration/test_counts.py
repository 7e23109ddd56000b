"""Honest counts: the driver's summary and progress lines count the records ingested, not the offsets moved."""

from __future__ import annotations

import re
from pathlib import Path

from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.support.pipeline import account, high_watermarks, pipeline_env, run_until_drained
from tests.support.services import Endpoints


def test_a_first_claim_at_a_high_low_watermark_counts_only_the_records_read(
    endpoints: Endpoints, topic_name: str, tmp_path: Path
) -> None:
    admin = AdminClient({"bootstrap.servers": endpoints.kafka})
    admin.create_topics([NewTopic(topic_name, 2, 1)])[topic_name].result(30)
    producer = Producer({"bootstrap.servers": endpoints.kafka, "linger.ms": 20})
    for partition, count in ((0, 30_000), (1, 1_000)):
        for i in range(count):
            producer.produce(topic_name, b'{"i": %d}' % i, partition=partition)
            producer.poll(0)
    assert producer.flush(60) == 0
    # Retention (here DeleteRecords) removed all but the last 500 records of partition 0 before loom-ray
    # first saw the topic: its first claim starts at the low watermark, 29 500.
    gone = TopicPartition(topic_name, 0, 29_500)
    admin.delete_records([gone])[gone].result(30)
    assert high_watermarks(endpoints.kafka, topic_name) == {0: (29_500, 30_000), 1: (0, 1_000)}

    lines = run_until_drained(pipeline_env(endpoints, topic_name), tmp_path / "main.log", 240).splitlines()
    assert account(endpoints, topic_name).exact
    [closing] = [line for line in lines if line.startswith("summary:")]
    assert "messages=1500 rows=1500 dead_letters=0 offsets=31000 " in closing, closing
    progress = [int(m.group(1)) for line in lines if (m := re.match(r"progress: (\d+) messages", line))]
    assert progress and max(progress) <= 1_500, progress
