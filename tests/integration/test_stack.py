"""The real services answer: a Kafka round trip, a PostgreSQL round trip, a local Ray up and down; the stack
script refuses a folder PostgreSQL could not use."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import asyncpg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from loom_ray.loadgen import ensure_topic
from tests.support.services import ROOT, Endpoints


def test_kafka_round_trip_over_partitions(endpoints: Endpoints, topic_name: str) -> None:
    ensure_topic(endpoints.kafka, topic_name, 6)
    producer = Producer({"bootstrap.servers": endpoints.kafka, "acks": "all"})
    sent = {(p, f"m{p}-{i}".encode()) for p in range(6) for i in range(50)}
    for partition, value in sent:
        producer.produce(topic_name, value, partition=partition)
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": endpoints.kafka, "group.id": topic_name, "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic_name, p, 0) for p in range(6)])
    received: set[tuple[int, bytes]] = set()
    for _ in range(100):
        for message in consumer.consume(500, 1.0):
            assert message.error() is None
            received.add((message.partition(), message.value()))
        if len(received) == len(sent):
            break
    consumer.close()
    assert received == sent


def test_postgres_round_trip(endpoints: Endpoints) -> None:
    async def round_trip() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(endpoints.dsn)
        try:
            await conn.execute("CREATE TEMP TABLE probe (id int PRIMARY KEY, doc jsonb)")
            await conn.copy_records_to_table("probe", records=[(1, '{"a": 1}'), (2, "[2]")])
            settings = await conn.fetchval("SHOW track_commit_timestamp")
            assert settings == "on"
            return await conn.fetch("SELECT id, doc FROM probe ORDER BY id")
        finally:
            await conn.close()

    rows = asyncio.run(round_trip())
    assert [(r["id"], r["doc"]) for r in rows] == [(1, '{"a": 1}'), (2, "[2]")]


def test_local_ray_starts_and_stops_with_the_test_settings() -> None:
    script = textwrap.dedent(
        """
        import os, ray
        ctx = ray.init(num_cpus=2, object_store_memory=100 * 1024**2, include_dashboard=False)
        @ray.remote
        def pid():
            return os.getpid()
        assert ray.get(pid.remote()) != os.getpid()
        print("resources", ray.cluster_resources()["CPU"], os.environ["RAY_AUTH_MODE"])
        ray.shutdown()
        print("stopped", ray.is_initialized())
        """
    )
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resources 2.0 disabled" in out.stdout
    assert "stopped False" in out.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="only as root does PostgreSQL run as another user (postgres)")
def test_dev_stack_refuses_a_folder_postgres_cannot_reach(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    stack = closed / "stack"
    env = {**os.environ, "LOOM_STACK_DIR": str(stack), "LOOM_STACK_KAFKA_PORT": "39092", "LOOM_STACK_PG_PORT": "35432"}
    done = subprocess.run(
        [str(ROOT / "scripts" / "dev-stack.sh"), "up"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done.stderr
    assert "the postgres user cannot reach" in done.stderr and "LOOM_STACK_DIR" in done.stderr
    assert not (stack / "kafka" / "pid").exists(), "nothing may be started before the check"
