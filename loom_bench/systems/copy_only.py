"""B1, the PostgreSQL limit: binary COPY of the topic's rows from memory, 10 000 per transaction.

First reads up to ``ROWS_IN_MEMORY`` of the topic's messages into the tuples loom-ray would write (not
timed: the rate comes from commit timestamps), then ``copy_records_to_table`` into ``events`` over
``--connections`` connections at once, each taking every k-th batch. Passes over those rows repeat until
``--min-seconds`` have gone by (a window long enough to time); pass k writes each partition's offsets
shifted by k times that partition's span, so every row stays distinct and each partition gap-free.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from loom_bench.database import EVENT_COLUMNS
from loom_bench.systems import report_result

BATCH = 10_000
ROWS_IN_MEMORY = 100_000
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


def shifted(rows: list[Row], spans: dict[int, int], k: int) -> list[Row]:
    """``rows`` of pass ``k``: each offset moved up by ``k`` times its partition's span."""
    if k == 0:
        return rows
    return [(t, p, o + k * spans[p], *rest) for t, p, o, *rest in rows]


def spans(rows: list[Row]) -> dict[int, int]:
    """Per partition, one more than the highest offset read (where the next pass starts)."""
    found: dict[int, int] = {}
    for _, partition, offset, *_rest in rows:
        found[partition] = max(found.get(partition, 0), offset + 1)
    return found


async def copy_rows(dsn: str, rows: list[Row], connections: int, min_seconds: float) -> int:
    """COPY ``rows`` in batches of 10 000, ``connections`` at a time, in passes for ``min_seconds``."""
    widths = spans(rows)
    started = time.monotonic()
    written = k = 0
    while k == 0 or time.monotonic() - started < min_seconds:
        current = shifted(rows, widths, k)
        batches = [current[i : i + BATCH] for i in range(0, len(current), BATCH)]

        async def one(index: int, batches: list[list[Row]] = batches) -> None:
            conn = await asyncpg.connect(dsn)
            try:
                for batch in batches[index::connections]:
                    await conn.copy_records_to_table("events", records=batch, columns=EVENT_COLUMNS)
            finally:
                await conn.close()

        await asyncio.gather(*(one(i) for i in range(connections)))
        written += len(current)
        k += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--min-seconds", type=float, default=0.0, help="repeat passes for at least this long")
    args = parser.parse_args()
    rows = load_rows(args.bootstrap, args.topic, min(args.messages, ROWS_IN_MEMORY))
    written = asyncio.run(copy_rows(args.dsn, rows, args.connections, args.min_seconds))
    report_result({"messages": written})


if __name__ == "__main__":
    main()
