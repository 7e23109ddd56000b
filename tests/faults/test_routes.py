"""T1r: kill -9 of consumer actors and live hand-overs under load, with routes: two upsert tables, an insert table.

A keyed producer writes the same stream of orders to three topics while consumers are killed every
U(5, 15) s and the job is resized twice (each old owner flushes and hands its partitions over): ``<topic>``
into an upsert route by the Kafka key (keys repeat, 2 % tombstones delete, 1 % bad amounts become dead
letters), ``<topic>-log`` into an insert route, and ``<topic>-v`` (4 partitions, no Kafka key, so every
account's records are spread over all of them) into an upsert route keyed by the account read from the
value, with the producer's sequence number as its ``version``. After the drain,
:mod:`tests.faults.route_checker` compares each table with what the topics say, read back with a
read_committed consumer: the versioned table must hold each account's highest sequence number.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer

from loom_bench.topic_fold import Record
from loom_ray import loadgen
from tests.faults.conftest import Figures
from tests.faults.harness import Job, fetch
from tests.faults.injector import Injector
from tests.faults.producer import env_int
from tests.faults.route_checker import check_insert, check_upsert, check_versioned
from tests.faults.stack import FaultStack
from tests.support.pipeline import high_watermarks, wait_until

PARTITIONS = 6
VERSIONED_PARTITIONS = 4
KEYS = 2000

ROUTES = """
[[route]]
name = "{name}"
topic = "{topic}"
table = "{schema}.orders"
mode = "upsert"
key = ["id"]
on_tombstone = "delete"
auto_create = true

[route.columns]
id = {{ type = "bigint", from = "key" }}
seq = {{ type = "bigint", required = true }}
amount = {{ type = "numeric", required = true }}
src_partition = {{ type = "integer", from = "partition" }}
src_offset = {{ type = "bigint", from = "offset" }}

[[route]]
name = "{name}-log"
topic = "{topic}-log"
table = "{schema}.order_log"
key = ["src_partition", "src_offset"]
auto_create = true

[route.columns]
src_partition = {{ type = "integer", from = "partition" }}
src_offset = {{ type = "bigint", from = "offset" }}
id = {{ type = "bigint", from = "key" }}
seq = {{ type = "bigint", required = true }}
amount = {{ type = "numeric", required = true }}

[[route]]
name = "{name}-v"
topic = "{topic}-v"
table = "{schema}.accounts"
mode = "upsert"
key = ["account"]
version = "seq"
auto_create = true

[route.columns]
account = {{ type = "bigint" }}
seq = {{ type = "bigint" }}
amount = {{ type = "numeric", required = true }}
src_partition = {{ type = "integer", from = "partition" }}
src_offset = {{ type = "bigint", from = "offset" }}
"""


class KeyedProducer:
    """Produces orders with repeated keys to the three topics at ``rate`` per second until stopped (to
    ``<topic>-v`` without a Kafka key and without tombstones: its key is the value's account)."""

    def __init__(self, bootstrap: str, topic: str, seed: int, rate: float) -> None:
        self._producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
        self._topics = (topic, f"{topic}-log")
        self._versioned = f"{topic}-v"
        self._rng = random.Random(seed)
        self._rate = rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sent = 0

    def start(self) -> KeyedProducer:
        self._thread.start()
        return self

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            key = str(self._rng.randrange(KEYS)).encode()
            draw = self._rng.random()
            amount: Any = "bad" if draw < 0.01 else self._rng.randrange(100_000) / 100
            value = None if 0.01 <= draw < 0.03 else orjson.dumps({"seq": self.sent, "amount": amount})
            for topic in self._topics:
                self._producer.produce(topic, key=key, value=value)
            if value is not None:
                account = orjson.dumps({"account": int(key), "seq": self.sent, "amount": amount})
                self._producer.produce(self._versioned, value=account)
            self.sent += 1
            self._producer.poll(0)
            ahead = self.sent / self._rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert self._producer.flush(60) == 0


def _expected(record: Record) -> tuple[Any, ...] | None:
    """What the upsert row of a record is (key first), or None for a bad amount; independent of loom_ray."""
    assert record.value is not None
    value = orjson.loads(record.value)
    if not isinstance(value["amount"], int | float):
        return None
    return (int(record.key or b""), value["seq"], Decimal(repr(value["amount"])), record.partition, record.offset)


def _expected_account(record: Record) -> tuple[Any, ...] | None:
    """The row of an account record (account first), or None for a bad amount; independent of loom_ray."""
    assert record.value is not None
    value = orjson.loads(record.value)
    if not isinstance(value["amount"], int | float):
        return None
    return (value["account"], value["seq"], Decimal(repr(value["amount"])), record.partition, record.offset)


def _caught_up(stack: FaultStack, topic: str) -> bool:
    """Every partition of ``topic`` committed up to its high watermark (the job's own check covers its first
    topic only); False while a service does not answer."""
    try:
        marks = high_watermarks(stack.kafka, topic)
        query = 'SELECT "partition", next_offset FROM loom_offsets WHERE topic = $1'
        stored = {r["partition"]: r["next_offset"] for r in asyncio.run(fetch(stack.dsn, query, topic))}
    except Exception:
        return False
    return all(stored.get(p) == high for p, (_, high) in marks.items())


def test_t1r_kill_9_of_consumers_with_routes(
    fault_stack: FaultStack, topic: str, tmp_path: Path, job_factory: Callable[..., Job], figures: Figures
) -> None:
    seed = env_int("LOOM_FAULT_SEED", 5)
    kills = env_int("LOOM_FAULT_T1R_KILLS", 3)
    rate = env_int("LOOM_FAULT_RATE", 1000)
    name = f"r{topic.replace('-', '_')}"
    schema = f"s_{topic.replace('-', '_')}"
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES.format(name=name, topic=topic, schema=schema))
    for each in (topic, f"{topic}-log"):
        loadgen.ensure_topic(fault_stack.kafka, each, PARTITIONS)
    loadgen.ensure_topic(fault_stack.kafka, f"{topic}-v", VERSIONED_PARTITIONS)
    topics = f"{topic},{topic}-log,{topic}-v"
    job = job_factory(settings={"kafka_batch_size": 100, "routes_file": routes, "kafka_topics": topics})
    job.start()
    job.wait_running(PARTITIONS)
    started = time.monotonic()
    producer = KeyedProducer(fault_stack.kafka, topic, seed, rate).start()
    injector = Injector(seed, job)
    try:
        injector.every(5, 15, injector.kill_consumer, until=lambda: injector.count() >= kills, limit=3 * kills)
        for actors in (4, 2):  # live hand-overs: each old owner flushes, releases, the new one claims
            injector.pause(3, 3, until=lambda: False)
            job.ctl_run("resize", str(actors))
        injector.pause(5, 5, until=lambda: False)
    finally:
        producer.stop()
    for each in (f"{topic}-log", f"{topic}-v"):
        wait_until(lambda each=each: _caught_up(fault_stack, each), 300, f"{each} to drain")
    job.finish()
    seconds = time.monotonic() - started

    upsert = check_upsert(
        fault_stack.dsn,
        fault_stack.kafka,
        topic,
        name,
        f"{schema}.orders",
        "id, seq, amount, src_partition, src_offset",
        _expected,
    )
    insert = check_insert(
        fault_stack.dsn, fault_stack.kafka, f"{topic}-log", f"{name}-log", f"{schema}.order_log", _expected
    )
    versioned = check_versioned(
        fault_stack.dsn,
        fault_stack.kafka,
        f"{topic}-v",
        f"{name}-v",
        f"{schema}.accounts",
        "account, seq, amount, src_partition, src_offset",
        _expected_account,
        lambda row: row[1],
    )
    ok = upsert.ok and insert.ok and versioned.ok
    line = (
        f"T1r seed={seed} msgs={producer.sent:,}x3 partitions={PARTITIONS}x2+{VERSIONED_PARTITIONS} "
        f"faults={injector.count()} (kill -9 consumer) + 2 resizes {upsert.counts()} | {insert.counts()} | "
        f"{versioned.counts()} thr={3 * producer.sent / max(seconds, 1e-9):,.0f}/s " + ("PASS" if ok else "FAIL")
    )
    figures.add(line)
    assert ok, line
    assert injector.count("kill -9 consumer") >= 2
    assert upsert.rows > KEYS // 2 and insert.rows > 0 and upsert.dead_letters > 0  # not vacuous
    stale = fetch(fault_stack.dsn, "SELECT sum(stale) AS n FROM loom_route_counts WHERE route = $1", f"{name}-v")
    assert versioned.rows > KEYS // 2 and asyncio.run(stale)[0]["n"] > 0  # older records did arrive after newer
