"""Bounded history and released partitions, on the real PostgreSQL (and the broker, for the coordinator's
metadata client), in-process without Ray: the coordinator prunes consumer_lag_history past the retention in
bounded batches, and a partition handed back cleanly loses its owner in loom_offsets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg
from confluent_kafka.admin import AdminClient, NewTopic

from loom_ray import lag_history, offsets
from loom_ray.coordinator import Coordinator
from loom_ray.settings import Settings
from tests.integration.conftest import Body
from tests.support.claims import claim_at
from tests.support.holders import Holder
from tests.support.services import Endpoints

HOUR_S = 3600.0

# 30 samples two hours old (past a one-hour retention), 5 ten minutes old and 3 new ones (kept).
_SAMPLES_SQL = """
INSERT INTO consumer_lag_history (sampled_at, topic, "partition", next_offset, high_watermark, owner)
SELECT now() - make_interval(secs => age), 'events', p, 0, 10, NULL
FROM (VALUES (7200, 30), (600, 5), (0, 3)) AS a(age, n), generate_series(1, a.n) AS p
"""
_AGES_SQL = """
SELECT array_agg(extract(epoch FROM now() - sampled_at)::int / 60 ORDER BY sampled_at) FROM consumer_lag_history
"""


def _settings(endpoints: Endpoints, schema: str, topic: str = "events", **overrides: Any) -> Settings:
    return Settings.from_env(
        kafka_bootstrap_servers=endpoints.kafka,
        db_dsn=endpoints.dsn,
        db_schema=schema,
        kafka_topics=(topic,),
        **overrides,
    )


def test_the_coordinator_prunes_samples_past_the_retention_once_per_interval(
    endpoints: Endpoints, in_schema: Callable[[Body], None]
) -> None:
    async def body(name: str, conn: asyncpg.Connection) -> None:
        await conn.execute(_SAMPLES_SQL)
        settings = _settings(endpoints, name, lag_history_retention_s=HOUR_S)
        coordinator = Coordinator(settings, factory=lambda _: None)  # type: ignore[arg-type, return-value]
        await coordinator.start()
        try:
            assert await coordinator.prune_lag_history() == 30
            assert await conn.fetchval(_AGES_SQL) == [10] * 5 + [0] * 3
            await conn.execute(_SAMPLES_SQL)
            assert await coordinator.prune_lag_history() == 0  # not due again within the interval
            assert await conn.fetchval("SELECT count(*) FROM consumer_lag_history") == 30 + 2 * 8
        finally:
            await coordinator.shutdown()

    in_schema(body)


def test_pruning_deletes_in_batches_and_says_when_older_samples_remain(in_schema: Callable[[Body], None]) -> None:
    async def body(_: str, conn: asyncpg.Connection) -> None:
        await conn.execute(_SAMPLES_SQL)
        # 30 old samples, 7 per statement, 2 statements per call: 14, 14, then the last 2.
        assert await lag_history.prune(conn, HOUR_S, batch_rows=7, max_batches=2) == (14, False)
        assert await lag_history.prune(conn, HOUR_S, batch_rows=7, max_batches=2) == (14, False)
        assert await lag_history.prune(conn, HOUR_S, batch_rows=7, max_batches=2) == (2, True)
        assert await conn.fetchval(_AGES_SQL) == [10] * 5 + [0] * 3

    in_schema(body)


def test_disown_clears_the_owner_only_under_the_released_epoch(in_schema: Callable[[Body], None]) -> None:
    async def body(_: str, conn: asyncpg.Connection) -> None:
        await claim_at(conn, "events", 0, "consumer-a")  # epoch 1
        await claim_at(conn, "events", 1, "consumer-a")  # epoch 1 ...
        await claim_at(conn, "events", 1, "consumer-b")  # ... then claimed again: epoch 2
        assert await offsets.disown(conn, {("events", 0): 1, ("events", 1): 1}) == 1
        rows = await conn.fetch('SELECT "partition", owner, epoch FROM loom_offsets ORDER BY "partition"')
        assert [tuple(r) for r in rows] == [(0, None, 1), (1, "consumer-b", 2)]

    in_schema(body)


def test_partitions_released_cleanly_are_disowned(
    endpoints: Endpoints, in_schema: Callable[[Body], None], topic_name: str
) -> None:
    in_schema(lambda name, conn: _hand_back_deleted_topic(endpoints, name, conn, topic_name))


async def _hand_back_deleted_topic(endpoints: Endpoints, name: str, conn: asyncpg.Connection, topic_name: str) -> None:
    """Claim a 2-partition topic for one holder, delete the topic, reconcile until it is handed back."""
    admin = AdminClient({"bootstrap.servers": endpoints.kafka})
    await asyncio.to_thread(admin.create_topics([NewTopic(topic_name, 2, 1)])[topic_name].result, 30)
    settings = _settings(endpoints, name, topic_name, min_actors=1, max_actors=1, scale_catchup_s=0)
    holders: list[Holder] = []

    def factory(consumer: str) -> Holder:
        holders.append(Holder(consumer, fenced={1}))
        return holders[-1]

    coordinator = Coordinator(settings, factory)
    await coordinator.start()
    owners_sql = 'SELECT array_agg(owner ORDER BY "partition") FROM loom_offsets WHERE topic = $1'
    try:
        await coordinator.reconcile()
        await coordinator.reconcile()  # a health report that lists the claims
        assert await conn.fetchval(owners_sql, topic_name) == [holders[0].name] * 2
        # A deleted topic's owners hand its partitions back: partition 0 cleanly, partition 1 fenced.
        await asyncio.to_thread(admin.delete_topics([topic_name])[topic_name].result, 30)
        deadline = time.monotonic() + 60
        while (await coordinator.status())["assigned"]:
            assert time.monotonic() < deadline, "the deleted topic was never handed back"
            await asyncio.sleep(0.5)
            await coordinator.reconcile()
        assert await conn.fetchval(owners_sql, topic_name) == [None, holders[0].name]
    finally:
        await coordinator.shutdown()
