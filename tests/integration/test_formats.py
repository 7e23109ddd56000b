"""Record formats on the real broker, PostgreSQL, Schema Registry and Ray: one run of the real driver drains
topics of every format into the default table and into routes, and Debezium-shaped topics into replicas.

- default table (``loom_messages``), filled by the load generator through the registry: Avro, Protobuf and JSON
  Schema, with undecodable records and records without the magic byte (dead letters naming the schema id),
  and for Avro two more schemas of the subject (a field added, a field removed): each row holds its record
  decoded exactly (the Avro decimal with every digit, the timestamp) and the id of its writer's schema;
- routes: Avro with every logical type into typed columns (a field added later is ignored, a required field
  removed later makes dead letters), Protobuf with well-known types, wrappers, an enum, bytes, a map and a
  repeated field, and JSON Schema;
- Debezium: the same source table's changes as JSON with Connect's schema envelope, as schemaless JSON and as
  Avro (creates, updates, deletes with and without a before image, tombstones, keys repeated across batches,
  truncates and values that are no event), each replicated into a table that must equal the source table's
  final state, folded from the topic without loom-ray's code (:mod:`tests.support.debezium`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient, topic_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2, wrappers_pb2

from loom_bench.topic_fold import read_topic
from loom_ray import loadgen
from loom_ray.loadgen.formats import AVRO_SCHEMA
from loom_ray.loadgen.topic import ensure_topic
from tests.support.debezium import EventReader, replica
from tests.support.pipeline import pipeline_env, run_until_drained
from tests.support.services import Endpoints

PARTITIONS = 2
MESSAGES = 200
RATIO = 0.05  # 10 bad records of each default-table topic
CONF = {"auto.register.schemas": True, "subject.name.strategy": topic_subject_name_strategy}
ENCODINGS = ("envelope", "json", "avro")

ROUTES = """
[[route]]
name = "payments"
topic = "{prefix}-payments"
table = "{schema}.payments"
key = ["id"]
auto_create = true

[route.columns]
id = {{ type = "bigint" }}
amount = {{ type = "numeric(20,4)", required = true }}
paid_at = {{ type = "timestamptz" }}
day = {{ type = "date" }}
at = {{ type = "time" }}
ref = {{ type = "uuid" }}
receipt = {{ type = "bytea" }}
tags = {{ type = "text[]" }}
attrs = {{ type = "jsonb" }}
note = {{ type = "text" }}

[[route]]
name = "shipments"
topic = "{prefix}-shipments"
table = "{schema}.shipments"
key = ["id"]
auto_create = true

[route.columns]
id = {{ type = "numeric" }}
shipped_at = {{ type = "timestamptz" }}
weight = {{ type = "bigint" }}
carrier = {{ type = "text" }}
status = {{ type = "text" }}
label = {{ type = "bytea" }}
items = {{ type = "jsonb" }}
stops = {{ type = "text[]" }}
cost = {{ type = "double precision" }}

[[route]]
name = "customers"
topic = "{prefix}-customers"
table = "{schema}.customers"
key = ["id"]
auto_create = true

[route.columns]
id = {{ type = "bigint" }}
name = {{ type = "text", required = true }}
credit = {{ type = "numeric" }}
"""
REPLICA_ROUTE = """
[[route]]
name = "replica-{encoding}"
topic = "{prefix}-dbz-{encoding}"
table = "{schema}.accounts_{encoding}"
mode = "upsert"
key = ["id"]
envelope = "debezium"
position = "src_lsn"
{format}auto_create = true

[route.columns]
id = {{ type = "bigint" }}
name = {{ type = "text" }}
balance = {{ type = "numeric(12,2)" }}
updated_at = {{ type = "timestamp" }}
note = {{ type = "text" }}
src_lsn = {{ type = "numeric" }}
"""

PAYMENT = {
    "type": "record",
    "name": "Payment",
    "namespace": "it",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 20, "scale": 4}},
        {"name": "paid_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "at", "type": {"type": "int", "logicalType": "time-millis"}},
        {"name": "ref", "type": {"type": "string", "logicalType": "uuid"}},
        {"name": "receipt", "type": "bytes"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {"name": "attrs", "type": {"type": "map", "values": "long"}},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}
# The same subject evolved: a field added (ignored, the route does not map it), then the required amount removed.
PAYMENT_ADDED = {**PAYMENT, "fields": [*PAYMENT["fields"], {"name": "channel", "type": "string", "default": "web"}]}
PAYMENT_REMOVED = {**PAYMENT, "fields": [f for f in PAYMENT["fields"] if f["name"] != "amount"]}


def _payment(n: int) -> dict[str, Any]:
    return {
        "id": n,
        "amount": Decimal(f"{n}12345678901234.5678"),
        "paid_at": dt.datetime(2024, 5, 1, 10, 0, 0, n, tzinfo=dt.UTC),
        "day": dt.date(2024, 2, 29),
        "at": dt.time(23, 59, 59, 999000),
        "ref": uuid.UUID(int=n),
        "receipt": bytes([n, 0, 255]),
        "tags": ["a", f"t{n}"],
        "attrs": {"k": n},
        "note": None if n % 2 else f"note {n}",
    }


def _shipment_type() -> Any:
    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="it/shipment.proto",
        package="it",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto", "google/protobuf/wrappers.proto"],
    )
    status = proto.enum_type.add(name="Status")
    for number, name in enumerate(("PACKED", "SHIPPED")):
        status.value.add(name=name, number=number)
    shipment = proto.message_type.add(name="Shipment")
    entry = shipment.nested_type.add(name="ItemsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=field.TYPE_INT64, label=field.LABEL_OPTIONAL)
    specs: list[tuple[str, int, str | None, int]] = [
        ("id", field.TYPE_UINT64, None, field.LABEL_OPTIONAL),
        ("shipped_at", field.TYPE_MESSAGE, ".google.protobuf.Timestamp", field.LABEL_OPTIONAL),
        ("weight", field.TYPE_MESSAGE, ".google.protobuf.Int64Value", field.LABEL_OPTIONAL),
        ("carrier", field.TYPE_MESSAGE, ".google.protobuf.StringValue", field.LABEL_OPTIONAL),
        ("status", field.TYPE_ENUM, ".it.Status", field.LABEL_OPTIONAL),
        ("label", field.TYPE_BYTES, None, field.LABEL_OPTIONAL),
        ("items", field.TYPE_MESSAGE, ".it.Shipment.ItemsEntry", field.LABEL_REPEATED),
        ("stops", field.TYPE_STRING, None, field.LABEL_REPEATED),
        ("cost", field.TYPE_DOUBLE, None, field.LABEL_OPTIONAL),
    ]
    for number, (name, kind, type_name, label) in enumerate(specs, 1):
        shipment.field.add(name=name, number=number, type=kind, type_name=type_name, label=label)
    pool = descriptor_pool.DescriptorPool()
    for known in (timestamp_pb2, wrappers_pb2):
        pool.AddSerializedFile(known.DESCRIPTOR.serialized_pb)
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("it.Shipment"))


@dataclass
class Run:
    """What the module's one run produced and where it wrote."""

    endpoints: Endpoints
    registry: str
    prefix: str
    schema: str
    log: str
    env: dict[str, str]
    routes: str  # the routes file's text

    def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async def fetch() -> list[tuple[Any, ...]]:
            conn = await asyncpg.connect(self.endpoints.dsn)
            try:
                return [tuple(r) for r in await conn.fetch(sql, *args)]
            finally:
                await conn.close()

        return asyncio.run(fetch())

    def dead_letters(self, topic: str) -> list[tuple[str, str, str]]:
        """(error_class, stage, error_message) of ``topic``'s dead letters."""
        found = self.rows(
            'SELECT error_class, stage, error_message FROM loom_dead_letters WHERE topic = $1 ORDER BY "offset"', topic
        )
        return [(r[0], r[1], r[2]) for r in found]


def _fill(endpoints: Endpoints, registry: str, topic: str, fmt: str, *extra: str) -> None:
    argv = ["--topic", topic, "--partitions", str(PARTITIONS), "--messages", str(MESSAGES), "--size", "200"]
    argv += ["--bootstrap-servers", endpoints.kafka, "--schema-registry-url", registry, "--format", fmt, *extra]
    assert loadgen.main(argv) == 0


def _produce_routed(endpoints: Endpoints, registry: str, prefix: str) -> None:
    client = SchemaRegistryClient({"url": registry})
    producer = Producer({"bootstrap.servers": endpoints.kafka, "enable.idempotence": True})

    def send(topic: str, value: bytes, n: int) -> None:
        producer.produce(topic, value=value, key=str(n).encode(), partition=n % PARTITIONS)

    payments = SerializationContext(f"{prefix}-payments", MessageField.VALUE)
    for schema, numbers in ((PAYMENT, range(0, 20)), (PAYMENT_ADDED, range(20, 30)), (PAYMENT_REMOVED, range(30, 35))):
        serialize = AvroSerializer(client, json.dumps(schema), conf=CONF)
        for n in numbers:
            record = _payment(n)
            if schema is PAYMENT_ADDED:
                record["channel"] = "shop"
            if schema is PAYMENT_REMOVED:
                del record["amount"]
            send(payments.topic, serialize(record, payments), n)
    shipment_type = _shipment_type()
    shipments = SerializationContext(f"{prefix}-shipments", MessageField.VALUE)
    serialize = ProtobufSerializer(shipment_type, client, {**CONF, "use.deprecated.format": False})
    for n in range(20):
        shipment = shipment_type(id=2**64 - 1 - n, status=n % 2, label=b"\x00" + bytes([n]), stops=["x", "y"])
        shipment.shipped_at.FromDatetime(dt.datetime(2024, 5, 1, 10, 0, n))
        shipment.items["box"] = n
        if n % 2:
            shipment.weight.value = 0  # set to zero: a value, not a missing one
            shipment.carrier.value = "dhl"
        shipment.cost = n / 4
        send(shipments.topic, serialize(shipment, shipments), n)
    customers = SerializationContext(f"{prefix}-customers", MessageField.VALUE)
    schema = {
        "type": "object",
        "properties": {"id": {"type": "integer"}, "name": {"type": "string"}},
        "required": ["id"],
    }
    serialize = JSONSerializer(json.dumps(schema), client, conf=CONF)
    for n in range(10):
        customer = {"id": n, "credit": 0.1 * n} if n == 9 else {"id": n, "name": f"c{n}", "credit": 0.1 * n}
        send(customers.topic, serialize(customer, customers), n)
    assert producer.flush(30) == 0


@pytest.fixture(scope="module")
def run(endpoints: Endpoints, schema_registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """Fill every topic, then drain them all with one run of the real driver."""
    prefix = f"f-{uuid.uuid4().hex[:8]}"
    schema = f"fmt_{prefix[2:]}"
    work = tmp_path_factory.mktemp("formats")
    defaults = {fmt: f"{prefix}-{fmt}" for fmt in ("avro", "protobuf", "json_schema")}
    for fmt, topic in defaults.items():
        _fill(endpoints, schema_registry, topic, fmt, "--malformed-ratio", str(RATIO))
    added = {**AVRO_SCHEMA, "fields": [*AVRO_SCHEMA["fields"], {"name": "region", "type": "string", "default": "eu"}]}
    removed = {**AVRO_SCHEMA, "fields": [f for f in AVRO_SCHEMA["fields"] if f["name"] != "tags"]}
    producer = Producer({"bootstrap.servers": endpoints.kafka, "enable.idempotence": True})
    client = SchemaRegistryClient({"url": schema_registry})
    context = SerializationContext(defaults["avro"], MessageField.VALUE)
    for n, schema_v in ((0, added), (1, removed)):
        record = {"seq": 1000 + n, "ts": dt.datetime(2025, 1, 1, tzinfo=dt.UTC), "kind": "evolved", "user": "u"}
        record.update({"amount": Decimal("1.50"), "tags": [], "pad": "", "sha": "", "region": "us"})
        value = AvroSerializer(client, json.dumps(schema_v), conf=CONF)(record, context)
        producer.produce(defaults["avro"], value=value, key=b"evolved", partition=n)
    assert producer.flush(30) == 0
    for name in ("payments", "shipments", "customers"):
        ensure_topic(endpoints.kafka, f"{prefix}-{name}", PARTITIONS)
    _produce_routed(endpoints, schema_registry, prefix)
    for encoding in ENCODINGS:
        extra = ["--debezium-encoding", encoding, "--keys", "30", "--malformed-ratio", "0.03"]
        _fill(endpoints, schema_registry, f"{prefix}-dbz-{encoding}", "debezium", *extra)
    routes = work / "routes.toml"
    replicas = "".join(
        REPLICA_ROUTE.format(
            encoding=e, prefix=prefix, schema=schema, format='format = "avro"\n' if e == "avro" else ""
        )
        for e in ENCODINGS
    )
    routes.write_text(ROUTES.format(prefix=prefix, schema=schema) + replicas)
    topics = [*defaults.values(), *(f"{prefix}-{n}" for n in ("payments", "shipments", "customers"))]
    topics += [f"{prefix}-dbz-{e}" for e in ENCODINGS]
    formats = f"{defaults['avro']}=avro,{defaults['protobuf']}=protobuf,{defaults['json_schema']}=json_schema"
    formats += f",{prefix}-payments=avro,{prefix}-shipments=protobuf,{prefix}-customers=json_schema"
    env = pipeline_env(
        endpoints,
        ",".join(topics),
        routes_file=routes,
        formats=formats,
        schema_registry_url=schema_registry,
        min_actors=2,
        max_actors=2,
        kafka_batch_size=25,  # the Debezium keys repeat inside batches and across them
    )
    log = run_until_drained(env, work / "driver.log", 300)
    yield Run(endpoints, schema_registry, prefix, schema, log, env, routes.read_text())


def test_registry_formats_land_in_the_default_table_exactly_with_their_schema_ids(run: Run) -> None:
    for fmt in ("avro", "protobuf", "json_schema"):
        topic = f"{run.prefix}-{fmt}"
        evolved = 2 if fmt == "avro" else 0
        rows = run.rows(
            "SELECT payload, schema_id FROM loom_messages WHERE topic = $1 ORDER BY (payload->>'seq')::bigint", topic
        )
        dead = run.dead_letters(topic)
        assert len(rows) + len(dead) == MESSAGES + evolved, fmt
        assert len(dead) == MESSAGES * RATIO, fmt
        assert {c for c, _, _ in dead} == {"MissingMagicByte", "Undecodable"}, fmt
        assert all(stage == "decode" and message.startswith("value: ") for _, stage, message in dead)
        assert all(" schema id " in m for c, _, m in dead if c == "Undecodable")  # names the schema id
        first = orjson.loads(rows[0][0])
        assert first["seq"] == 0 and len(first["sha"]) == 64 and first["tags"] == ["red"], fmt
        ids = {schema_id for _, schema_id in rows}
        assert len(ids) == 1 + evolved and None not in ids, fmt
    evolved_rows = run.rows(
        "SELECT payload::text FROM loom_messages WHERE topic = $1 AND payload->>'kind' = 'evolved' ORDER BY 1",
        f"{run.prefix}-avro",
    )
    assert [orjson.loads(r[0])["amount"] for r in evolved_rows] == [1.5, 1.5]
    assert '"amount": 1.50' in evolved_rows[0][0]  # the decimal as jsonb numeric: its scale kept
    assert {("region" in r[0], "tags" in r[0]) for r in evolved_rows} == {(True, True), (False, False)}


def test_avro_logical_types_land_in_typed_columns_and_evolution_adds_nothing_silently(run: Run) -> None:
    stored = run.rows(f"SELECT * FROM {run.schema}.payments ORDER BY id")
    assert [r[0] for r in stored] == list(range(30))  # the records with amount removed are dead letters
    for row in stored:
        expected = _payment(row[0])
        assert row == (
            expected["id"],
            expected["amount"],
            expected["paid_at"],
            expected["day"],
            expected["at"],
            expected["ref"],
            expected["receipt"],
            expected["tags"],
            json.dumps(expected["attrs"]),
            expected["note"],
        )
    assert "channel" not in {
        c
        for (c,) in run.rows(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'payments'",
            run.schema,
        )
    }
    dead = run.dead_letters(f"{run.prefix}-payments")
    assert [(c, s) for c, s, _ in dead] == [("MissingField", "validate")] * 5
    assert all(m.startswith("route 'payments', column 'amount': required, but amount is missing") for *_, m in dead)


def test_protobuf_well_known_types_wrappers_enums_maps_and_repeated_fields_land_in_typed_columns(run: Run) -> None:
    stored = run.rows(f"SELECT * FROM {run.schema}.shipments ORDER BY id DESC")
    assert len(stored) == 20 and not run.dead_letters(f"{run.prefix}-shipments")
    for n, row in enumerate(stored):
        assert row == (
            Decimal(2**64 - 1 - n),
            dt.datetime(2024, 5, 1, 10, 0, n, tzinfo=dt.UTC),
            0 if n % 2 else None,
            "dhl" if n % 2 else None,
            "SHIPPED" if n % 2 else "PACKED",
            b"\x00" + bytes([n]),
            json.dumps({"box": n}),
            ["x", "y"],
            n / 4,
        )


def test_json_schema_records_are_validated_into_a_route(run: Run) -> None:
    stored = run.rows(f"SELECT id, name, credit FROM {run.schema}.customers ORDER BY id")
    assert stored == [(n, f"c{n}", Decimal(repr(0.1 * n))) for n in range(9)]
    dead = run.dead_letters(f"{run.prefix}-customers")
    assert [(c, s) for c, s, _ in dead] == [("MissingField", "validate")]  # no name: the route's required column


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_debezium_changes_replicate_the_source_table(run: Run, encoding: str) -> None:
    topic = f"{run.prefix}-dbz-{encoding}"
    records = read_topic(run.endpoints.kafka, topic)
    expected, refused = replica(records, EventReader(encoding, run.registry))
    stored = run.rows(f"SELECT id, name, balance, updated_at, note FROM {run.schema}.accounts_{encoding} ORDER BY id")
    assert stored == sorted(expected.values())
    assert len(stored) > 5
    dead = run.dead_letters(topic)
    assert len(dead) == len(refused) > 0
    assert {c for c, _, _ in dead} <= {"NotAChangeEvent", "UnappliedChange", "MissingMagicByte"}
    tombstones = sum(1 for r in records if r.value is None)
    counts = run.rows(
        "SELECT sum(upserted + stale)::int, sum(deleted)::int FROM loom_route_counts WHERE route = $1 AND topic = $2",
        f"replica-{encoding}",
        topic,
    )
    deletes = tombstones  # every delete is followed by its tombstone, which is committed without a row
    assert counts == [(len(records) - tombstones - deletes - len(refused), deletes)]
    positions = run.rows(f"SELECT count(*) FROM {run.schema}.accounts_{encoding} WHERE src_lsn IS NULL")
    assert positions == [(0,)]


def test_a_replay_after_the_routes_are_fixed_decodes_through_the_registry(run: Run, tmp_path: Path) -> None:
    """Runs last: it changes what the tests above read. The payments without ``amount`` (Avro) and the Avro
    replica's truncates were dead letters; once ``amount`` may be missing and truncates are ignored,
    ``ctl replay`` reads them again through the registry (a fresh process: every schema fetched anew) and
    lands them: the payments as rows with no amount, the truncates committed without a row."""
    fixed = run.routes.replace(
        'amount = { type = "numeric(20,4)", required = true }', 'amount = { type = "numeric(20,4)" }'
    )
    fixed = fixed.replace('name = "replica-avro"', 'name = "replica-avro"\non_truncate = "ignore"')
    assert fixed.count("required = true") == 1 and "on_truncate" in fixed  # customers' name stays required
    routes = tmp_path / "routes.toml"
    routes.write_text(fixed)
    run.rows(f"ALTER TABLE {run.schema}.payments ALTER COLUMN amount DROP NOT NULL")
    replica_before = run.rows(f"SELECT * FROM {run.schema}.accounts_avro ORDER BY id")
    topics = [f"{run.prefix}-payments", f"{run.prefix}-dbz-avro"]
    done = subprocess.run(
        [sys.executable, "-m", "loom_ray.ctl", "replay", *(a for t in topics for a in ("--topic", t))],
        env={**run.env, "LOOM_ROUTES_FILE": str(routes)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    payments = run.rows(f"SELECT id, amount, note FROM {run.schema}.payments WHERE id >= 30 ORDER BY id")
    assert payments == [(n, None, _payment(n)["note"]) for n in range(30, 35)]
    open_by_class = dict(
        run.rows(
            """SELECT error_class, count(*) FILTER (WHERE resolved_at IS NULL)::int FROM loom_dead_letters
               WHERE topic = ANY($1::text[]) GROUP BY error_class""",
            topics,
        )
    )
    assert open_by_class.pop("MissingField") == 0 and open_by_class.pop("UnappliedChange") == 0
    assert open_by_class and all(n > 0 for n in open_by_class.values())  # not events: dead letters still
    assert run.rows(f"SELECT * FROM {run.schema}.accounts_avro ORDER BY id") == replica_before
