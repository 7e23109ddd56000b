"""Positions the broker moves under us, on the real PostgreSQL (and broker, for the coordinator): the two
found in review that the unit table (tests/unit/test_positions.py) cannot show end to end.

- a log truncated below the offset being read and written again before the consumer looked: the consumer
  must not read on over the rewritten offsets without a gap row; it records a new incarnation under its claim
  (fencing itself) and hands the partition back;
- a topic deleted and created again between two runs: the first round claims its partitions as a new
  incarnation, and the coordinator must not call them drained on the old incarnation's offsets, read in the
  same round before the claim (``--exit-when-drained`` exited with half of the new records stored).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg

from loom_ray.coordinator import Coordinator
from loom_ray.kafka.consumer import Fetched
from loom_ray.loadgen.topic import ensure_topic
from loom_ray.offsets import Claim
from loom_ray.pipeline import IngestWorker
from loom_ray.settings import Settings
from tests.integration.conftest import Body
from tests.support.holders import Holder
from tests.support.pipeline import fill
from tests.support.services import Endpoints


class RewrittenLog:
    """The Kafka side of a consumer whose partition was truncated below 1000 and written again up to 1100."""

    def __init__(self) -> None:
        self.seeks: list[int] = []
        self.assigned: set[tuple[str, int]] = set()

    async def assign(self, topic: str, partition: int, offset: int) -> None:
        self.assigned.add((topic, partition))

    async def seek(self, topic: str, partition: int, offset: int) -> None:
        self.seeks.append(offset)

    async def unassign(self, topic: str, partition: int) -> None:
        self.assigned.discard((topic, partition))

    async def watermarks(self, topic: str, partition: int) -> tuple[int, int]:
        return 0, 1_100

    async def consume(self, timeout_s: float, held: list[tuple[str, int]]) -> Fetched:
        return Fetched()

    async def close(self) -> None:
        return None


def test_a_log_written_again_below_the_read_offset_starts_a_new_incarnation_with_a_gap(
    endpoints: Endpoints, in_schema: Callable[[Body], None], topic_name: str
) -> None:
    async def body(schema: str, conn: asyncpg.Connection) -> None:
        await conn.execute(
            'INSERT INTO loom_offsets (topic, "partition", next_offset, epoch, owner) VALUES ($1, 0, 960, 4, $2)',
            topic_name,
            "c1",
        )
        settings = Settings.from_env(
            kafka_bootstrap_servers=endpoints.kafka, db_dsn=endpoints.dsn, db_schema=schema, kafka_topics=(topic_name,)
        )
        worker = IngestWorker(settings, "c1")
        await worker.start()
        assert worker._kafka is not None
        await worker._kafka.close()
        kafka = RewrittenLog()
        worker._kafka = kafka  # type: ignore[assignment]
        try:
            await worker.assign(Claim(topic_name, 0, 4, 960))
            worker._parts[(topic_name, 0)].open.skip_to(1_000, 0.0)  # read (buffered) up to 1000
            await worker._out_of_range((topic_name, 0), worker._assignments)  # the fetch at 1000 was out of range
            row = await conn.fetchrow(
                'SELECT next_offset, epoch, incarnation, owner FROM loom_offsets WHERE topic = $1 AND "partition" = 0',
                topic_name,
            )
            gaps = await conn.fetch(
                "SELECT incarnation, from_offset, to_offset, reason FROM loom_gaps WHERE topic = $1", topic_name
            )
            assert kafka.seeks == [], "read on over the rewritten offsets"
            assert dict(row) == {"next_offset": 960, "epoch": 5, "incarnation": 1, "owner": None}
            assert [tuple(g) for g in gaps] == [(1, 0, 960, "log_rewritten")]
            assert worker.stats()["partitions"] == {} and kafka.assigned == set()
        finally:
            await worker.close()

    in_schema(body)


def test_a_recreated_topic_is_not_drained_on_the_old_incarnations_offsets(
    endpoints: Endpoints, in_schema: Callable[[Body], None], topic_name: str
) -> None:
    ensure_topic(endpoints.kafka, topic_name, 2)
    fill(endpoints, topic_name, 10, partitions=2)  # the new incarnation: 5 records a partition

    async def body(schema: str, conn: asyncpg.Connection) -> None:
        # What the old incarnation left: 100 records a partition read, its id another one.
        await conn.execute(
            'INSERT INTO loom_offsets (topic, "partition", next_offset, epoch, topic_id) '
            "SELECT $1, p, 100, 3, 'an-older-topic-id' FROM generate_series(0, 1) AS p",
            topic_name,
        )
        settings = Settings.from_env(
            kafka_bootstrap_servers=endpoints.kafka,
            db_dsn=endpoints.dsn,
            db_schema=schema,
            kafka_topics=(topic_name,),
            min_actors=1,
            max_actors=1,
            scale_catchup_s=0,
        )
        holders: list[Holder] = []

        def factory(name: str) -> Holder:
            holders.append(Holder(name, fenced=set()))
            return holders[-1]

        coordinator = Coordinator(settings, factory)
        await coordinator.start()
        try:
            statuses: list[dict[str, Any]] = []
            for _ in range(2):
                await coordinator.reconcile()
                statuses.append(await coordinator.status())
            claims = {p: c for (_, p), c in holders[0].claims.items()}
            assert {p: (c.incarnation, c.next_offset) for p, c in claims.items()} == {0: (1, 0), 1: (1, 0)}
            assert statuses[0]["assigned"] == 2
            assert not statuses[0]["drained"], "drained on offsets read before the claim"
            assert not statuses[1]["drained"] and statuses[1]["lag"] == 10
        finally:
            await coordinator.shutdown()

    in_schema(body)
