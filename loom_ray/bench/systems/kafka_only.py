"""B0, the Kafka-from-Python limit: ``consume(10000, 0.1)`` in a loop, touching each message, nothing else.

Run by the harness as ``python -m loom_ray.bench.systems.kafka_only``; prints one ``BENCH-RESULT`` line.
No parsing and no database, so the rate is measured on the client: messages after the first batch over
the time from the first batch to the last.
"""

from __future__ import annotations

import argparse
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from loom_ray.bench.systems import report_result


def drain(bootstrap: str, topic: str, messages: int) -> dict[str, float | int]:
    """Consume ``messages`` from the start of every partition of ``topic``."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-b0-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    count = first_batch = 0
    first = 0.0
    while count < messages:
        batch = consumer.consume(num_messages=10000, timeout=0.1)
        for message in batch:
            message.value()
            message.partition()
            message.offset()
            message.timestamp()
        if batch and not first:
            first, first_batch = time.time(), len(batch)
        count += len(batch)
    last = time.time()
    consumer.close()
    return {"messages": count, "first": first, "last": last, "first_batch": first_batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--messages", type=int, required=True)
    args = parser.parse_args()
    report_result(drain(args.bootstrap, args.topic, args.messages))


if __name__ == "__main__":
    main()
