"""The negative control (T1c): the consumer loom-ray replaced, written the naive way on purpose.

It subscribes with ``enable.auto.commit=true`` (every 100 ms), keeps a batch in memory and writes it every
``--flush-every-s`` into ``loom_messages`` (``ON CONFLICT DO NOTHING``, the usual "idempotent" upsert)
plus one ``loom_audit`` range per partition run, exactly as loom-ray's audit does. Kafka commits offsets of
messages that are only in memory, so a ``kill -9`` mid-batch loses them, and offsets not yet auto-committed
when it dies are consumed twice after a restart. A checker that passes this consumer proves nothing.

``python -m tests.faults.negative_control --bootstrap B --dsn D --topic T [--idle-exit-s S]``
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

import asyncpg
from confluent_kafka import Consumer, Message

log = logging.getLogger("negative_control")

_INSERT = """
INSERT INTO loom_messages (topic, "partition", "offset", key, payload)
VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT DO NOTHING
"""
_AUDIT = """
INSERT INTO loom_audit (topic, "partition", start_offset, end_offset, rows, dead_letters, epoch, owner)
VALUES ($1, $2, $3, $4, $5, 0, 0, 'negative-control')
"""


def runs(batch: list[Message]) -> list[tuple[str, int, int, int]]:
    """``(topic, partition, start, end)`` for each run of consecutive offsets in the batch."""
    found: list[tuple[str, int, int, int]] = []
    for message in sorted(batch, key=lambda m: (m.topic(), m.partition(), m.offset())):
        topic, partition, offset = str(message.topic()), message.partition() or 0, message.offset() or 0
        if found and found[-1][:2] == (topic, partition) and found[-1][3] == offset:
            found[-1] = (topic, partition, found[-1][2], offset + 1)
        else:
            found.append((topic, partition, offset, offset + 1))
    return found


async def flush(conn: asyncpg.Connection, batch: list[Message]) -> None:
    async with conn.transaction():
        await conn.executemany(
            _INSERT, [(m.topic(), m.partition(), m.offset(), m.key(), bytes(m.value() or b"").decode()) for m in batch]
        )
        await conn.executemany(_AUDIT, [(t, p, s, e, e - s) for t, p, s, e in runs(batch)])


async def consume(args: argparse.Namespace) -> None:
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"naive-{args.topic}",
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 100,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,  # the broker's minimum: a killed member leaves the group sooner
        }
    )
    consumer.subscribe([args.topic])
    conn = await asyncpg.connect(args.dsn)
    batch: list[Message] = []
    last_flush = last_message = time.monotonic()
    try:
        while True:
            messages = [m for m in consumer.consume(500, 0.2) if m.error() is None]
            now = time.monotonic()
            batch.extend(messages)
            if messages:
                last_message = now
            if batch and now - last_flush >= args.flush_every_s:
                await flush(conn, batch)
                log.info("flushed %d messages", len(batch))
                batch, last_flush = [], now
            if not batch and now - last_message > args.idle_exit_s:
                return
    finally:
        consumer.close()
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.negative_control", description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--flush-every-s", type=float, default=1.0)
    parser.add_argument("--idle-exit-s", type=float, default=3600.0, help="exit after this long without messages")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(consume(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
