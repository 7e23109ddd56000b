"""B1, the PostgreSQL limit: binary COPY of the topic's rows from memory, 10 000 per transaction.

First reads the whole topic into the tuples loom-ray would write (not timed: the rate comes from commit
timestamps), then ``copy_records_to_table`` into ``events`` over ``--connections`` connections at once,
each taking every k-th batch.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from loom_bench.database import EVENT_COLUMNS
from loom_bench.systems import report_result

BATCH = 10_000
Row = tuple[Any, ...]


def load_rows(bootstrap: str, topic: str, messages: int) -> list[Row]:
    """The topic's messages as ``events`` rows, in memory."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"bench-b1-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
    )
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    rows: list[Row] = []
    while len(rows) < messages:
        for m in consumer.consume(num_messages=10000, timeout=0.5):
            value = m.value()
            ts = datetime.fromtimestamp(m.timestamp()[1] / 1000, UTC)
            rows.append((topic, m.partition(), m.offset(), m.key(), value.decode() if value else "{}", None, ts))
    consumer.close()
    return rows


async def copy_rows(dsn: str, rows: list[Row], connections: int) -> None:
    """COPY ``rows`` in batches of 10 000, ``connections`` at a time."""
    batches = [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]

    async def one(index: int) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            for batch in batches[index::connections]:
                await conn.copy_records_to_table("events", records=batch, columns=EVENT_COLUMNS)
        finally:
            await conn.close()

    await asyncio.gather(*(one(i) for i in range(connections)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--connections", type=int, default=1)
    args = parser.parse_args()
    rows = load_rows(args.bootstrap, args.topic, args.messages)
    asyncio.run(copy_rows(args.dsn, rows, args.connections))
    report_result({"messages": len(rows)})


if __name__ == "__main__":
    main()
