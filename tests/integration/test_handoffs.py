"""The worker and the coordinator in-process (no Ray) on the real broker and PostgreSQL: a partition handed
back while fetching was paused, the Kafka group's offset across a hand-over, and a coordinator that starts
while PostgreSQL is out of reach."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from loom_ray import offsets
from loom_ray.coordinator import Coordinator
from loom_ray.kafka.admin import KafkaMetadata
from loom_ray.migrate import migrate
from loom_ray.pipeline import IngestWorker
from loom_ray.policy.positions import BrokerPartition
from loom_ray.settings import Settings
from tests.support.pipeline import group_offsets
from tests.support.services import Endpoints
from tests.support.tcp_proxy import proxy


def _topic(endpoints: Endpoints, topic: str, partitions: int, records: int) -> None:
    admin = AdminClient({"bootstrap.servers": endpoints.kafka})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
    _produce(endpoints, topic, range(partitions), records)


def _produce(endpoints: Endpoints, topic: str, partitions: range | list[int], records: int) -> None:
    producer = Producer({"bootstrap.servers": endpoints.kafka})
    for partition in partitions:
        for i in range(records):
            producer.produce(topic, orjson.dumps({"i": i, "pad": "x" * 200}), partition=partition)
    assert producer.flush(30) == 0


async def _until(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def _claim(conn: asyncpg.Connection, settings: Settings, topic: str, partition: int) -> offsets.Claim:
    metadata = KafkaMetadata(settings)

    async def broker() -> BrokerPartition:
        low, high = (await asyncio.to_thread(metadata.watermarks, [(topic, partition)]))[(topic, partition)]
        return BrokerPartition(low, high, None)

    try:
        return await offsets.claim(conn, topic, partition, "test", broker, from_end=False)
    finally:
        metadata.close()


def _settings(endpoints: Endpoints, topic: str, **overrides: Any) -> Settings:
    """A worker's settings for ``topic`` on the test stack, with a small pool."""
    return Settings.from_env(
        kafka_bootstrap_servers=endpoints.kafka,
        db_dsn=endpoints.dsn,
        kafka_topics=(topic,),
        db_min_pool_size=1,
        db_max_pool_size=2,
        **overrides,
    )


def _committed(worker: IngestWorker, topic: str, partition: int) -> int | None:
    """The offset ``worker`` last committed for the partition, if it holds it."""
    committed: int | None = worker.stats()["committed"].get(f"{topic}[{partition}]")
    return committed


async def _paused_handback(endpoints: Endpoints, topic: str) -> None:
    settings = _settings(endpoints, topic, buffer_max_bytes=4096, batch_max_bytes=2048)  # fetching pauses at once
    conn = await asyncpg.connect(endpoints.dsn)
    blocker = await asyncpg.connect(endpoints.dsn)
    worker = IngestWorker(settings, "handback")
    try:
        await migrate(conn)
        await worker.start()
        for partition in (0, 1):
            await worker.assign(await _claim(conn, settings, topic, partition))
        # Hold both offset rows: the first flush waits, so the buffers stay full and fetching stays paused.
        holding = blocker.transaction()
        await holding.start()
        await blocker.execute("SELECT 1 FROM loom_offsets WHERE topic = $1 FOR UPDATE", topic)
        run = asyncio.create_task(worker.run())
        await _until(lambda: worker.stats()["paused"], 30, "fetching paused")
        release = asyncio.create_task(worker.release(topic, 0))  # autoscaling hands partition 0 away
        await asyncio.sleep(0.5)
        await holding.rollback()
        await asyncio.wait_for(release, 30)
        await _until(lambda: not worker.stats()["paused"], 30, "fetching resumed")
        # ... and back: it must be fetched again, although fetching was paused when it left.
        await worker.assign(await _claim(conn, settings, topic, 0))
        _produce(endpoints, topic, [0], 5)
        await _until(lambda: _committed(worker, topic, 0) == 55, 30, "partition 0 fetched again after the hand-back")
        await worker.stop(drain=True)
        await asyncio.wait_for(run, 10)
    finally:
        await worker.close()
        await blocker.close()
        await conn.close()


def test_a_partition_released_while_paused_is_fetched_again_when_it_comes_back(
    endpoints: Endpoints, topic_name: str
) -> None:
    _topic(endpoints, topic_name, 2, 50)
    asyncio.run(_paused_handback(endpoints, topic_name))


async def _handover_mirror(endpoints: Endpoints, topic: str) -> None:
    settings = _settings(
        endpoints,
        topic,
        kafka_group_id=f"loom-{topic}",
        kafka_auto_commit_interval_ms=600_000,  # no periodic mirror: only the ones a hand-over and a stop send
        kafka_batch_timeout=0.2,
    )
    conn = await asyncpg.connect(endpoints.dsn)
    first, second = IngestWorker(settings, "first"), IngestWorker(settings, "second")
    try:
        await migrate(conn)
        await first.start()
        await second.start()
        await first.assign(await _claim(conn, settings, topic, 0))
        first_run = asyncio.create_task(first.run())
        await _until(lambda: _committed(first, topic, 0) == 50, 30, "the first owner's commit")
        assert await first.release(topic, 0) == 50
        _produce(endpoints, topic, [0], 30)
        await second.assign(await _claim(conn, settings, topic, 0))
        second_run = asyncio.create_task(second.run())
        await _until(lambda: _committed(second, topic, 0) == 80, 30, "the second owner's commit")
        await second.stop(drain=True)
        await first.stop(drain=True)  # stopped last, it must not send the offset it committed before the hand-over
        await asyncio.wait_for(asyncio.gather(first_run, second_run), 10)
    finally:
        await first.close()
        await second.close()
        await conn.close()


def test_the_kafka_group_mirrors_the_last_owners_offset_after_a_hand_over(
    endpoints: Endpoints, topic_name: str
) -> None:
    _topic(endpoints, topic_name, 1, 50)
    asyncio.run(_handover_mirror(endpoints, topic_name))
    assert group_offsets(endpoints, topic_name, 1) == {0: 80}


async def _start_during_outage(endpoints: Endpoints, topic: str) -> None:
    host, port = endpoints.dsn.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)
    with proxy(host, int(port)) as pg:
        pg.cut()
        dsn = endpoints.dsn.replace(f"{host}:{port}", f"127.0.0.1:{pg.port}")
        settings = Settings.from_env(kafka_bootstrap_servers=endpoints.kafka, db_dsn=dsn, kafka_topics=(topic,))
        coordinator = Coordinator(settings, factory=lambda name: None)  # type: ignore[arg-type, return-value]
        start = asyncio.create_task(coordinator.start())
        await asyncio.sleep(3)
        assert not start.done(), start  # still retrying, not failed
        pg.restore()
        await asyncio.wait_for(start, 30)
        await coordinator.shutdown()


def test_a_coordinator_started_while_postgresql_is_down_waits_for_it(endpoints: Endpoints, topic_name: str) -> None:
    asyncio.run(_start_during_outage(endpoints, topic_name))
