"""B5, loom-ray's core without Ray: :class:`loom_ray.pipeline.IngestWorker` driven directly in one process.

Settings come from the same ``LOOM_*`` variables as B4. Process ``--index i`` of ``--of k`` claims the
partitions ``p % k == i`` with :func:`loom_ray.offsets.claim`, assigns them, runs the worker's loop, and
stops (draining) once ``loom_offsets`` reaches the high watermarks read at start, or on SIGTERM with
``--follow`` (live mode). The difference to B4 is what Ray costs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import signal

import asyncpg

from loom_bench.systems import report_result
from loom_ray import offsets
from loom_ray.kafka.admin import KafkaMetadata
from loom_ray.pipeline import IngestWorker
from loom_ray.policy.positions import BrokerPartition
from loom_ray.settings import Settings

POLL_S = 0.2
TopicPartition = tuple[str, int]


def my_partitions(settings: Settings, index: int, of: int) -> dict[TopicPartition, tuple[int, int]]:
    """This process's share of the partitions, with their (low, high) watermarks now."""
    metadata = KafkaMetadata(settings)
    try:
        return metadata.watermarks([tp for tp in metadata.partitions() if tp[1] % of == index])
    finally:
        metadata.close()


async def caught_up(conn: asyncpg.Connection, marks: dict[TopicPartition, tuple[int, int]]) -> bool:
    """Whether every partition's committed offset reached its high watermark."""
    stored = await offsets.committed(conn, sorted({t for t, _ in marks}))
    return all(stored.get(tp, (-1, 0, None))[0] >= high for tp, (_, high) in marks.items())


async def _as_read(partition: BrokerPartition) -> BrokerPartition:
    """The watermarks read before the run: the bench's topics do not change while it runs."""
    return partition


async def run(index: int, of: int, follow: bool) -> dict[str, int]:
    """Claim, ingest until caught up (or SIGTERM), drain; returns the worker's counts."""
    settings = Settings.from_env()
    marks = my_partitions(settings, index, of)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    conn = await asyncpg.connect(settings.dsn)
    worker = IngestWorker(settings, f"bench-core-{index}")
    await worker.start()
    for (topic, partition), (low, high) in sorted(marks.items()):
        broker = functools.partial(_as_read, BrokerPartition(low, high, None))
        await worker.assign(await offsets.claim(conn, topic, partition, worker.name, broker, from_end=False))
    loop_task = asyncio.create_task(worker.run())
    try:
        while not stop.is_set() and not loop_task.done():
            if not follow and await caught_up(conn, marks):
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_S)
        stats = worker.stats()["partitions"]
        await worker.stop(drain=True)
        await asyncio.wait_for(loop_task, 10)
    finally:
        await conn.close()
    return {"messages": sum(p["messages"] for p in stats.values()), "partitions": len(marks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--of", type=int, default=1)
    parser.add_argument("--follow", action="store_true", help="run until SIGTERM (live mode)")
    args = parser.parse_args()
    report_result(asyncio.run(run(args.index, args.of, args.follow)))


if __name__ == "__main__":
    main()
