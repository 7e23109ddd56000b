"""B0, the Kafka-from-Python limit: ``consume(10000, 0.1)`` in a loop, touching each message, nothing else.

Run by the harness as ``python -m loom_bench.systems.kafka_only``; prints one ``BENCH-RESULT`` line.
No parsing and no database, so the rate is measured on the client: messages after the first batch over
the time from the first batch to the last. One pass over a quick-size topic takes a fraction of a second,
too short a window to time (it moved B0 between 155 k and 1.1 M msgs/s from run to run), so the topic is
read again from the start until at least ``--min-seconds`` have passed. ``fetch.queue.backoff.ms`` is
20 ms, as in loom-ray: librdkafka's default (1 s) idles the fetcher whenever its prefetch queue is full,
which cut this loop to about a fifth of its rate (185 k vs 900 k msgs/s of 200 B here).
"""

from __future__ import annotations

import argparse
import time
import uuid

from confluent_kafka import Consumer, TopicPartition

from loom_bench.systems import report_result


def drain(bootstrap: str, topic: str, messages: int, min_seconds: float = 3.0) -> dict[str, float | int]:
    """Consume ``messages`` from the start of every partition of ``topic``, in passes for ``min_seconds``."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-b0-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.queue.backoff.ms": 20,
        }
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    # Explicit start offsets: a pass restarts without an offset lookup per partition.
    lows = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0] for p in partitions]
    starts = [TopicPartition(topic, p, low) for p, low in zip(partitions, lows, strict=True)]
    consumer.assign(starts)
    count = first_batch = in_pass = 0
    first = 0.0
    while count < messages or time.time() - first < min_seconds:
        if in_pass >= messages:
            for start in starts:  # another pass from the start: a longer window to time
                consumer.seek(start)
            in_pass = 0
        batch = consumer.consume(num_messages=10000, timeout=0.1)
        for message in batch:
            message.value()
            message.partition()
            message.offset()
            message.timestamp()
        if batch and not first:
            first, first_batch = time.time(), len(batch)
        count += len(batch)
        in_pass += len(batch)
    last = time.time()
    consumer.close()
    return {"messages": count, "first": first, "last": last, "first_batch": first_batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--messages", type=int, required=True, help="messages in the topic (one pass)")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="read in passes for at least this long")
    args = parser.parse_args()
    report_result(drain(args.bootstrap, args.topic, args.messages, args.min_seconds))


if __name__ == "__main__":
    main()
