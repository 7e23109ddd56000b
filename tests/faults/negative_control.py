"""The negative control (T1c): the consumers loom-ray replaced, written the two usual naive ways on purpose.

Both keep a batch in memory for ``--flush-every-s`` and write it in one transaction into ``loom_messages``
(``ON CONFLICT DO NOTHING``, the usual "idempotent" insert) plus one ``loom_audit`` range per partition run,
exactly as loom-ray's audit does. They differ in where the Kafka offset is committed (``--commit``):

- ``auto``: ``enable.auto.commit=true`` every 100 ms. Kafka commits offsets of messages that are only in
  memory, so a ``kill -9`` before the batch is written loses them.
- ``after-write``: the offsets are committed (synchronously) after the batch's transaction, in a second
  store. A ``kill -9`` between the two leaves the rows written and the offsets not: the next consumer reads
  and writes the batch again. The primary key absorbs the repeated rows; the audit does not.

``--hold`` stops the consumer inside that window on its first batch, so that a test's ``kill -9`` lands
there every time: ``auto`` once Kafka has committed the whole batch, before writing it; ``after-write``
once the batch is written, before committing it. It then logs ``holding N messages: ...`` and waits to be
killed. A checker that passes either consumer proves nothing.

``python -m tests.faults.negative_control --bootstrap B --dsn D --topic T [--commit auto|after-write]
[--hold] [--idle-exit-s S]``
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

import asyncpg
from confluent_kafka import Consumer, Message, TopicPartition

log = logging.getLogger("negative_control")

_INSERT = """
INSERT INTO loom_messages (topic, "partition", "offset", key, payload)
VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT DO NOTHING
"""
_AUDIT = """
INSERT INTO loom_audit (topic, "partition", start_offset, end_offset, rows, dead_letters, epoch, owner)
VALUES ($1, $2, $3, $4, $5, 0, 0, 'negative-control')
"""
_COMMIT_WAIT_S = 30.0


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


def collect(consumer: Consumer, seconds: float, idle_exit_s: float) -> list[Message]:
    """The messages consumed within ``seconds`` of the first one; empty if none comes within ``idle_exit_s``
    of holding partitions (while the group waits for a killed member to time out, nothing is idle)."""
    batch: list[Message] = []
    deadline = time.monotonic() + idle_exit_s
    while time.monotonic() < deadline:
        messages = [m for m in consumer.consume(500, 0.2) if m.error() is None]
        if messages and not batch:
            deadline = time.monotonic() + seconds
        elif not batch and not consumer.assignment():
            deadline = time.monotonic() + idle_exit_s
        batch.extend(messages)
    return batch


def wait_committed(consumer: Consumer, batch: list[Message]) -> None:
    """Wait until Kafka's committed offset of each of the batch's partitions is past its last message there
    (auto-commit runs every 100 ms; AssertionError if it has not after ``_COMMIT_WAIT_S``)."""
    ends = {(t, p): e for t, p, _, e in runs(batch)}
    deadline = time.monotonic() + _COMMIT_WAIT_S
    while not all(
        tp.offset >= ends[tp.topic, tp.partition]
        for tp in consumer.committed([TopicPartition(t, p) for t, p in ends], timeout=10)
    ):
        assert time.monotonic() < deadline, f"auto-commit did not commit the batch within {_COMMIT_WAIT_S:.0f} s"
        time.sleep(0.1)


def hold(what: str, batch: list[Message]) -> None:
    """Log ``holding N messages: what`` and wait to be killed."""
    log.info("holding %d messages: %s", len(batch), what)
    while True:
        time.sleep(3600)


async def consume(args: argparse.Namespace) -> None:
    auto = args.commit == "auto"
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": f"naive-{args.topic}",
            "enable.auto.commit": auto,
            "auto.commit.interval.ms": 100,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,  # the broker's minimum: a killed member leaves the group sooner
        }
    )
    consumer.subscribe([args.topic])
    conn = await asyncpg.connect(args.dsn)
    try:
        while batch := collect(consumer, args.flush_every_s, args.idle_exit_s):
            if auto and args.hold:
                wait_committed(consumer, batch)
                hold("offsets committed to Kafka, rows not written", batch)
            await flush(conn, batch)
            log.info("flushed %d messages", len(batch))
            if not auto:
                if args.hold:
                    hold("rows written, offsets not committed to Kafka", batch)
                consumer.commit(asynchronous=False)
    finally:
        consumer.close()
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.negative_control", description=__doc__)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--commit", choices=("auto", "after-write"), default="auto")
    parser.add_argument("--hold", action="store_true", help="wait to be killed inside the window of the first batch")
    parser.add_argument("--flush-every-s", type=float, default=1.0)
    parser.add_argument("--idle-exit-s", type=float, default=3600.0, help="exit after this long without messages")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(consume(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
