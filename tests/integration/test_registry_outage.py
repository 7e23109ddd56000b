"""A schema loom-ray cannot get yet, on the real stack: records naming a schema id the registry does not know,
then a registry stopped mid-run and started again. Either way the partition holding such a record waits at
it (nothing dead-lettered, nothing skipped) while the other partition flows, the wait shows like a blocked
sink (the ``loom_sink_errors`` row behind the ``sink_blocked`` alert, the progress line), and once the schema
can be fetched the partition reads on from that record and every record lands exactly once.

The test runs a registry of its own (the session's stays up) with its schemas in a new database, so ids are
handed out from 1 and the test knows the next one before it exists.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from fastavro import parse_schema, schemaless_writer

from loom_ray.loadgen.topic import ensure_topic
from tests.support.pipeline import pipeline_env, scalar, start_main, terminate_group, wait_until
from tests.support.registry import RegistryProcess, free_port
from tests.support.services import Endpoints

BASE = {"type": "record", "name": "Reading", "namespace": "it", "fields": [{"name": "n", "type": "long"}]}


def _schema(extra: str | None) -> dict[str, Any]:
    """The subject's schema, with one more field (a new schema id) when ``extra`` names it."""
    if extra is None:
        return BASE
    return {**BASE, "fields": [*BASE["fields"], {"name": extra, "type": "string", "default": ""}]}


def _framed(schema_id: int, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    """A record in the Confluent wire format with ``schema_id``, whether or not the registry knows that id."""
    out = io.BytesIO()
    schemaless_writer(out, parse_schema(schema), record)
    return b"\x00" + schema_id.to_bytes(4, "big") + out.getvalue()


async def _database(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def registry(endpoints: Endpoints, tmp_path: Path) -> Iterator[RegistryProcess]:
    """A registry of this test's own, its schemas in a database dropped afterwards."""
    server = RegistryProcess(endpoints.dsn, free_port(), tmp_path / "registry.log", f"loom_reg_{uuid.uuid4().hex[:8]}")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        asyncio.run(_database(endpoints.dsn, f'DROP DATABASE IF EXISTS "{server.database}"'))


def _committed(endpoints: Endpoints, topic: str, partition: int) -> int:
    sql = 'SELECT coalesce(max(next_offset), 0) FROM loom_offsets WHERE topic = $1 AND "partition" = $2'
    return int(scalar(endpoints, sql, topic, partition))


def _blocked(endpoints: Endpoints, topic: str) -> set[tuple[str, bool]]:
    """(sqlstate, cleared) of the loom_sink_errors rows of the consumers holding ``topic``."""
    rows = scalar(
        endpoints,
        """SELECT coalesce(json_agg(json_build_array(sqlstate, cleared_at IS NOT NULL)), '[]')::text
           FROM loom_sink_errors WHERE owner IN (SELECT owner FROM loom_offsets WHERE topic = $1)""",
        topic,
    )
    return {(state, cleared) for state, cleared in json.loads(rows)}


def test_an_unknown_schema_id_and_a_registry_outage_make_the_partition_wait_then_nothing_is_lost(
    endpoints: Endpoints, registry: RegistryProcess, topic_name: str, tmp_path: Path
) -> None:
    client = SchemaRegistryClient({"url": registry.url})
    subject = f"{topic_name}-value"
    assert client.register_schema(subject, Schema(json.dumps(_schema(None)), "AVRO")) == 1
    ensure_topic(endpoints.kafka, topic_name, 2)
    producer = Producer({"bootstrap.servers": endpoints.kafka, "enable.idempotence": True})
    sent = 0

    def produce(partition: int, schema_id: int, extra: str | None, count: int) -> None:
        nonlocal sent
        for _ in range(count):
            record = {"n": sent, **({extra: "x"} if extra else {})}
            producer.produce(topic_name, _framed(schema_id, _schema(extra), record), key=b"k", partition=partition)
            sent += 1
        assert producer.flush(30) == 0

    produce(0, 1, None, 50)
    produce(1, 1, None, 50)
    env = pipeline_env(
        endpoints, topic_name, formats="avro", schema_registry_url=registry.url, min_actors=1, max_actors=1
    )
    log = tmp_path / "driver.log"
    job = start_main(env, log=log)
    running = (job, log)
    try:
        wait_until(lambda: _committed(endpoints, topic_name, 1) == 50, 120, "the first records", running=running)

        # Schema id 2 does not exist yet: partition 0 waits at its first record, partition 1 flows on.
        produce(0, 2, "unit", 10)
        produce(1, 1, None, 10)
        wait_until(lambda: _committed(endpoints, topic_name, 1) == 60, 60, "partition 1", running=running)
        wait_until(lambda: ("LR003", False) in _blocked(endpoints, topic_name), 60, "LR003", running=running)
        assert _committed(endpoints, topic_name, 0) == 50
        assert client.register_schema(subject, Schema(json.dumps(_schema("unit")), "AVRO")) == 2
        wait_until(lambda: _committed(endpoints, topic_name, 0) == 60, 90, "partition 0 to read on", running=running)

        # The registry stops: a schema the consumer has fetched (id 1) still decodes, a new one (id 3) waits.
        assert client.register_schema(subject, Schema(json.dumps(_schema("site")), "AVRO")) == 3
        registry.stop()
        produce(1, 3, "site", 10)
        produce(0, 1, None, 10)
        wait_until(lambda: _committed(endpoints, topic_name, 0) == 70, 60, "partition 0", running=running)
        wait_until(lambda: ("LR002", False) in _blocked(endpoints, topic_name), 60, "LR002", running=running)
        assert _committed(endpoints, topic_name, 1) == 60
        registry.start()
        wait_until(lambda: _committed(endpoints, topic_name, 1) == 70, 90, "partition 1 to read on", running=running)
        wait_until(lambda: _blocked(endpoints, topic_name) == {("LR002", True)}, 30, "the blocker cleared")
    finally:
        terminate_group(job, grace_s=30)
    assert "SQLSTATE LR002 (schema_registry_unreachable" in log.read_text()

    stored = scalar(
        endpoints,
        """SELECT json_build_array(count(*), count(DISTINCT payload->>'n'), array_agg(DISTINCT schema_id ORDER BY
           schema_id))::text FROM loom_messages WHERE topic = $1""",
        topic_name,
    )
    assert json.loads(stored) == [sent, sent, [1, 2, 3]]
    assert scalar(endpoints, "SELECT count(*) FROM loom_dead_letters WHERE topic = $1", topic_name) == 0
