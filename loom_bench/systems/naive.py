"""B2, the seed's "before": one ``poll()`` per message, ``json.loads``, one autocommit INSERT per message.

Kafka auto-commits its offsets (``enable.auto.commit=true``), as the seed did. The INSERT is a prepared
asyncpg statement; every message is its own transaction. It runs for ``--seconds`` after the first
message (or until the topic is drained) and the harness extrapolates its rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime

import asyncpg
from confluent_kafka import Consumer

from loom_bench.systems import report_result

INSERT = """INSERT INTO events (topic, "partition", "offset", key, payload, headers, kafka_ts)
            VALUES ($1, $2, $3, $4, $5, $6, $7)"""


async def run(args: argparse.Namespace) -> int:
    """Insert messages one by one until the time is up; returns how many."""
    conn = await asyncpg.connect(args.dsn)
    statement = await conn.prepare(INSERT)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "enable.auto.commit": True,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([args.topic])
    count = 0
    deadline = None
    try:
        while count < args.messages and (deadline is None or time.monotonic() < deadline):
            message = consumer.poll(1.0)
            if message is None or message.error() is not None:
                continue
            deadline = deadline or time.monotonic() + args.seconds
            document = json.loads(message.value() or b"null")
            kafka_ts = datetime.fromtimestamp(message.timestamp()[1] / 1000, UTC)
            await statement.fetch(
                message.topic(),
                message.partition(),
                message.offset(),
                message.key(),
                json.dumps(document),
                None,
                kafka_ts,
            )
            count += 1
    finally:
        consumer.close()
        await conn.close()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args()
    report_result({"messages": asyncio.run(run(args))})


if __name__ == "__main__":
    main()
