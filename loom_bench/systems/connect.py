"""B6, the peer most teams pick: a Kafka Connect standalone worker running Debezium's JDBC sink connector.

Run by the harness as ``python -m loom_bench.systems.connect``: writes the worker's, the connector's and
log4j2's properties into ``--work-dir`` and replaces itself with the JVM (``ConnectStandalone``), which
runs until SIGTERM. The Java side comes from Maven Central (``loom_bench/connect/pom.xml``, fetched into
``.cache/connect`` by ``scripts/bench.sh``).

The topic holds plain JSON, and the sink needs a Struct with a schema, so stock pieces map it:
``StringConverter`` -> ``HoistField(payload)`` -> ``InsertField(topic, partition, offset, kafka_ts)``. The
table ``events`` (the shape of ``loom_messages``) exists in advance; the connector upserts on
(topic, partition, offset), its documented idempotent mode, and binds ``payload`` as ``cast(? as jsonb)``
because it reads the column's type from the table. ``key`` and ``headers`` stay NULL (no stock SMT
copies them). With ``--w3`` it runs workload W3 instead (``loom_bench/w3.py``): values in Connect's
JSON-with-schema envelope (``JsonConverter``, ``schemas.enable=true``), the record key a string, upserted
into ``w3_entities`` by that key (``HoistField$Key`` into a Struct, ``primary.key.mode=record_key``), tombstones deleted
(``delete.enabled=true``). With ``--w4`` it runs workload W4 (``loom_bench/w4.py``): Avro values read through the
Schema Registry by Apicurio's Kafka Connect converter (``--registry``, Apicurio's own API; its plugin in
``--converter-dir``, added to the plugin path), the Kafka coordinates added by ``InsertField`` and upserted by them into
``w4_events``, as W1's rows are. The consumer group is ``--group`` (``consumer.override.group.id``), so the harness
sees the connector's progress like B3's. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path
from urllib.parse import unquote, urlsplit

CONNECTOR = "io.debezium.connector.jdbc.JdbcSinkConnector"
# Kafka's bin/connect-standalone.sh heap (KAFKA_HEAP_OPTS' default there).
HEAP = ("-Xms256M", "-Xmx2G")
# The two variants, as for quixstreams: Connect's and Debezium's defaults, and tuned for throughput.
VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "tuned": {
        "tasks.max": "2",
        "batch.size": "5000",
        "consumer.override.max.poll.records": "5000",
    },
}
REWRITE_BATCHED = {"default": False, "tuned": True}  # PgJDBC reWriteBatchedInserts: multi-row INSERTs
LOG4J2 = """status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = STDOUT
logger.task.name = org.apache.kafka.connect.runtime.WorkerSinkTask
logger.task.level = INFO
"""


def jdbc_url(dsn: str, rewrite_batched: bool) -> tuple[str, str, str]:
    """``(jdbc:postgresql://host:port/db[?reWriteBatchedInserts=true], user, password)`` from a postgresql:// DSN."""
    parts = urlsplit(dsn)
    url = f"jdbc:postgresql://{parts.hostname or '127.0.0.1'}:{parts.port or 5432}{parts.path}"
    if rewrite_batched:
        url += "?reWriteBatchedInserts=true"
    return url, unquote(parts.username or ""), unquote(parts.password or "")


def connector_properties(variant: str, name: str, topics: str, group: str, dsn: str) -> dict[str, str]:
    """The sink connector's configuration for ``variant`` (``default`` or ``tuned``)."""
    url, user, password = jdbc_url(dsn, REWRITE_BATCHED[variant])
    return {
        "name": name,
        "connector.class": CONNECTOR,
        "topics": topics,
        "consumer.override.group.id": group,
        "connection.url": url,
        "connection.username": user,
        "connection.password": password,
        "insert.mode": "upsert",
        "primary.key.mode": "record_value",
        "primary.key.fields": "topic,partition,offset",
        "collection.name.format": "events",
        "schema.evolution": "none",
        "quote.identifiers": "true",  # "offset" is a reserved word
        "use.time.zone": "UTC",
        "transforms": "wrap,coords",
        "transforms.wrap.type": "org.apache.kafka.connect.transforms.HoistField$Value",
        "transforms.wrap.field": "payload",
        "transforms.coords.type": "org.apache.kafka.connect.transforms.InsertField$Value",
        "transforms.coords.topic.field": "topic!",
        "transforms.coords.partition.field": "partition!",
        "transforms.coords.offset.field": "offset!",
        "transforms.coords.timestamp.field": "kafka_ts",
        **VARIANTS[variant],
    }


# W3 (``--w3``): typed columns from the value's inline schema, upsert by the record key, tombstones delete.
W3_CONNECTOR = {
    "primary.key.mode": "record_key",
    "primary.key.fields": "id",
    "collection.name.format": "w3_entities",
    "delete.enabled": "true",
    "transforms": "key",  # the sink wants a Struct key: HoistField makes {id: <the string key>}
    "transforms.key.type": "org.apache.kafka.connect.transforms.HoistField$Key",
    "transforms.key.field": "id",
}
W3_WORKER = {
    "key.converter": "org.apache.kafka.connect.storage.StringConverter",
    "value.converter": "org.apache.kafka.connect.json.JsonConverter",
    "value.converter.schemas.enable": "true",
}


# W4 (``--w4``): W1's coordinates as the primary key, values typed by their Avro schema from the registry.
W4_CONNECTOR = {"collection.name.format": "w4_events", "transforms": "coords"}


def w4_worker(registry: str) -> dict[str, str]:
    """The worker's converters for W4: keys as bytes, values through Apicurio's converter (Confluent framing,
    ids are content ids, no schema id headers)."""
    converter = "value.converter.apicurio.registry"
    return {
        "value.converter": "io.apicurio.registry.utils.converter.AvroConverter",
        f"{converter}.url": registry,
        f"{converter}.as-confluent": "true",
        f"{converter}.use-id": "contentId",
        f"{converter}.headers.enabled": "false",
    }


def w3_connector_properties(variant: str, name: str, topics: str, group: str, dsn: str) -> dict[str, str]:
    """The connector for W3: W1/W2's, without their transforms, with W3's key and table."""
    base = connector_properties(variant, name, topics, group, dsn)
    kept = {k: v for k, v in base.items() if not k.startswith("transforms")}
    return {**kept, **W3_CONNECTOR}


def w4_connector_properties(variant: str, name: str, topics: str, group: str, dsn: str) -> dict[str, str]:
    """The connector for W4: W1's, without wrapping the value (it is a Struct already), into ``w4_events``."""
    base = connector_properties(variant, name, topics, group, dsn)
    dropped = ("transforms.wrap", "transforms.coords.timestamp")  # no payload column, no kafka_ts column
    kept = {k: v for k, v in base.items() if not k.startswith(dropped)}
    return {**kept, **W4_CONNECTOR}


def worker_properties(bootstrap: str, connect_dir: Path, work_dir: Path, rest_port: int) -> dict[str, str]:
    """The standalone worker: plain strings in, offsets committed every second, REST on ``rest_port``."""
    return {
        "bootstrap.servers": bootstrap,
        "key.converter": "org.apache.kafka.connect.converters.ByteArrayConverter",
        "value.converter": "org.apache.kafka.connect.storage.StringConverter",
        "offset.storage.file.filename": str(work_dir / "standalone.offsets"),  # required, used by sources only
        "offset.flush.interval.ms": "1000",  # the default (60 s) would hide the end of a drain from the harness
        "plugin.path": str(connect_dir / "plugins"),
        "plugin.discovery": "service_load",  # no class scan of the plugin's bundled drivers: start-up in ~2 s
        "listeners": f"http://127.0.0.1:{rest_port}",
        "consumer.auto.offset.reset": "earliest",
    }


def free_port() -> int:
    """A TCP port nobody listens on now (the worker's REST API must not collide with another engineer's)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def write_properties(path: Path, values: dict[str, str]) -> Path:
    """A Java properties file (backslashes and ``$`` kept as written: no value here needs escaping)."""
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def java_command(connect_dir: Path, work_dir: Path, worker: Path, connector: Path) -> list[str]:
    """``java ... ConnectStandalone worker.properties connector.properties``."""
    log4j = work_dir / "log4j2.properties"
    log4j.write_text(LOG4J2)
    classpath = str(connect_dir / "libs" / "*")
    return ["java", *HEAP, "-cp", classpath, f"-Dlog4j2.configurationFile={log4j}"] + [
        "org.apache.kafka.connect.cli.ConnectStandalone",
        str(worker),
        str(connector),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--topics", required=True, help="comma-separated")
    parser.add_argument("--group", required=True, help="the connector's name and consumer group")
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--connect-dir", type=Path, required=True, help="where pom.xml put libs/ and plugins/")
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--rest-port", type=int, default=0, help="0: a free port")
    workload = parser.add_mutually_exclusive_group()
    workload.add_argument("--w3", action="store_true", help="workload W3: enveloped JSON upserted by record key")
    workload.add_argument("--w4", action="store_true", help="workload W4: Avro through the registry (--registry)")
    parser.add_argument("--registry", help="W4: Apicurio's API, http://host:port/apis/registry/v2")
    parser.add_argument("--converter-dir", type=Path, help="W4: where loom_bench.fetch put the converter plugin")
    args = parser.parse_args()
    if args.w4 and not (args.registry and args.converter_dir):
        parser.error("--w4 needs --registry and --converter-dir")
    if not (args.connect_dir / "libs").is_dir() or not (args.connect_dir / "plugins").is_dir():
        raise SystemExit(f"{args.connect_dir}: no libs/ or plugins/; run scripts/bench.sh (it fetches them)")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    port = args.rest_port or free_port()
    workers = worker_properties(args.bootstrap, args.connect_dir.resolve(), args.work_dir.resolve(), port)
    if args.w3:
        connector_of, extra = w3_connector_properties, W3_WORKER
    elif args.w4:
        connector_of, extra = w4_connector_properties, w4_worker(args.registry)
        extra["plugin.path"] = f"{workers['plugin.path']},{args.converter_dir.resolve()}"
        extra["plugin.discovery"] = "hybrid_warn"  # the converter's jar declares no service: the classes are scanned
    else:
        connector_of, extra = connector_properties, {}
    worker = write_properties(args.work_dir / "worker.properties", {**workers, **extra})
    connector = write_properties(
        args.work_dir / "connector.properties",
        connector_of(args.variant, args.group, args.topics, args.group, args.dsn),
    )
    command = java_command(args.connect_dir.resolve(), args.work_dir.resolve(), worker, connector)
    os.execvp(command[0], command)  # noqa: S606 (the JVM replaces this process: the harness stops it)


if __name__ == "__main__":
    main()
