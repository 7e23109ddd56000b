"""Workload W4: W1's records in the Confluent wire format, into a typed table, through a Schema Registry.

Message ``seq`` is W1's event ``seq`` (:func:`loom_ray.loadgen.values.valid_value`, ~200 B as JSON) written by
the load generator as Avro (``ts`` a ``timestamp-millis``, ``amount`` a ``decimal(12,2)``) or, for one run,
Protobuf (``ts`` a ``google.protobuf.Timestamp``, ``amount`` a double), its schema registered in the registry
(:mod:`loom_ray.loadgen.formats`); 16 partitions, message ``seq`` in partition ``seq % 16`` at offset
``seq // 16``. Every system writes each record as one row of ``w4_events``, its Kafka coordinates the
primary key: loom-ray through an insert route (``format = "avro"``), Kafka Connect's Debezium JDBC sink through
Apicurio's Kafka Connect converter reading the same registry (upsert by the coordinates, its idempotent mode).

Pure functions except :func:`produce`, which fills a topic once per run (run by the harness).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from loom_bench import kafka
from loom_bench.config import PARTITIONS
from loom_ray import loadgen

log = logging.getLogger(__name__)

TABLE = "w4_events"
FORMATS = ("avro", "protobuf")
# (column, PostgreSQL type): the record's fields after its Kafka coordinates.
FIELDS: tuple[tuple[str, str], ...] = (
    ("seq", "bigint"),
    ("ts", "timestamptz"),
    ("kind", "text"),
    ("user", "text"),
    ("amount", "numeric(12,2)"),
    ("tags", "text[]"),
    ("pad", "text"),
    ("sha", "text"),
)
COORDINATES = (("topic", "text"), ("partition", "integer"), ("offset", "bigint"))
DDL = (
    f"CREATE TABLE {TABLE} ("
    + ", ".join(f'"{c}" {t} NOT NULL' for c, t in COORDINATES + FIELDS)
    + ', PRIMARY KEY (topic, "partition", "offset")) WITH (autovacuum_enabled = false)'
)
# Rows that are not the record their coordinates name: message seq is at offset seq // 16 of partition seq % 16,
# and every value is the one the load generator wrote for it.
WRONG_ROWS_SQL = f"""
SELECT count(*) FROM {TABLE}
WHERE seq <> "offset" * {PARTITIONS} + "partition"
   OR amount <> ((seq * 7919) % 1000000) / 100.0
   OR sha <> encode(sha256(convert_to(pad, 'UTF8')), 'hex')
   OR kind <> 'event'
   OR "user" <> 'u-' || lpad((seq % 10007)::text, 5, '0')
   OR cardinality(tags) <> (ARRAY[1, 2, 1, 0])[seq % 4 + 1]
"""


def routes_toml(topic: str, format_name: str) -> str:
    """loom-ray's routes file for W4: ``topic`` inserted into the existing table, keyed by its coordinates."""
    lines = [
        "[[route]]",
        'name = "w4"',
        f'topic = "{topic}"',
        f'table = "{TABLE}"',
        f'format = "{format_name}"',
        'key = ["topic", "partition", "offset"]',
        "",
        "[route.columns]",
        'topic = { from = "topic" }',
        'partition = { from = "partition" }',
        'offset = { from = "offset" }',
    ]
    lines += [f"{c} = {{ required = true }}" for c, _ in FIELDS]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Topics:
    """W4's topics: the same records as Avro and as Protobuf."""

    avro: str
    protobuf: str

    def of(self, format_name: str) -> str:
        return self.avro if format_name == "avro" else self.protobuf


def topics(prefix: str, messages: int) -> Topics:
    return Topics(f"{prefix}-w4-avro-{messages}", f"{prefix}-w4-protobuf-{messages}")


def produce(bootstrap: str, registry: str, topic: str, format_name: str, messages: int) -> float | None:
    """Fill ``topic`` through the load generator (16 partitions); reuse it when it already holds ``messages``.
    The seconds it took, or None when reused."""
    found = kafka.watermarks(bootstrap, topic)
    if found is not None and len(found) == PARTITIONS and kafka.total(found) == messages:
        log.info("reusing W4 topic %s", topic)
        return None
    if found is not None:
        kafka.delete_topic(bootstrap, topic)
        time.sleep(2)  # the broker deletes asynchronously
    kafka.create_log_append_topic(bootstrap, topic, PARTITIONS)
    started = time.monotonic()
    argv = ["--topic", topic, "--partitions", str(PARTITIONS), "--messages", str(messages), "--size", "200"]
    argv += ["--bootstrap-servers", bootstrap, "--format", format_name, "--schema-registry-url", registry]
    if loadgen.main(argv) != 0:
        raise RuntimeError(f"W4 preload of {topic} failed (see the load generator's log above)")
    seconds = time.monotonic() - started
    log.info("preloaded W4 %s: %d messages in %.1fs", format_name, messages, seconds)
    return seconds


def native_api(registry: str) -> str:
    """Apicurio's own API (which its Kafka Connect converter reads) from the Confluent API's URL."""
    return registry.removesuffix("/").replace("/apis/ccompat/v7", "/apis/registry/v2")
