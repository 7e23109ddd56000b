"""T15: ``ctl replay`` and ``ctl rewind`` under ``kill -9`` of consumer actors and of the ctl process itself.

A keyed producer writes the same stream to two topics of 4 partitions while consumers are killed every
U(5, 15) s: ``<topic>`` into an upsert route by the Kafka key without a version (the source offset guards a
replay; 2 % tombstones delete), ``<topic>-log`` into an insert route. Each record has a note, 4 % of them
longer than the routes' ``varchar(8)``, and 1 % an amount that is not a number (a dead letter for good).
While it runs:

1. the note columns are widened (the running consumers take the wider tables in);
2. ``ctl rewind`` of the upsert topic to the start runs to its end, and a consumer is killed while the topic is
   read again (its open dead letters are replayed as they are read);
3. ``ctl replay`` runs in chunks of 10 beside that re-read and is ``kill -9``ed once a chunk committed; a
   second replay runs to its end (after the rewind, so an older record written over a newer row would show);
4. ``ctl rewind`` of the log topic to offset 0 is ``kill -9``ed as soon as it asked: the coordinator applies
   it anyway; consumers keep being killed while it is read again;
5. once everything is read, a last ``ctl replay`` takes the long notes that consumers started after a kill
   converted for the narrow column before they saw the wider one.

:mod:`tests.faults.route_checker` then compares both tables with the topics (every note fits now): the upsert
table equals the fold, each good record is in the log table once, and per partition the records applied,
left out and dead-lettered add up to the records in the topic (a rewind's re-applications apart). Every open
dead letter is a bad amount or a tombstone of the insert route, and no resolved dead letter lacks its row.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
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
from tests.faults.route_checker import check_insert, check_upsert
from tests.faults.stack import FaultStack
from tests.support.pipeline import high_watermarks, wait_until

PARTITIONS = 4
KEYS = 500

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
note = {{ type = "varchar(8)", required = true }}
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
note = {{ type = "varchar(8)", required = true }}
amount = {{ type = "numeric", required = true }}
"""


class NotedProducer:
    """Orders with repeated keys and notes, the same stream to both topics, at ``rate`` per second."""

    def __init__(self, bootstrap: str, topic: str, seed: int, rate: float) -> None:
        self._producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
        self._topics = (topic, f"{topic}-log")
        self._rng = random.Random(seed)
        self._rate = rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sent = 0

    def start(self) -> NotedProducer:
        self._thread.start()
        return self

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            key = str(self._rng.randrange(KEYS)).encode()
            draw = self._rng.random()
            note = "a note longer than eight" if draw < 0.04 else f"n{self.sent % 1000}"
            amount: Any = "bad" if 0.04 <= draw < 0.05 else self._rng.randrange(100_000) / 100
            value = None if 0.05 <= draw < 0.07 else orjson.dumps({"seq": self.sent, "note": note, "amount": amount})
            for topic in self._topics:
                self._producer.produce(topic, key=key, value=value)
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
    """The row of a record once every note fits (key first), or None for a bad amount; independent of loom_ray."""
    assert record.value is not None
    value = orjson.loads(record.value)
    if not isinstance(value["amount"], int | float):
        return None
    amount = Decimal(repr(value["amount"]))
    return (int(record.key or b""), value["seq"], value["note"], amount, record.partition, record.offset)


def _rows(stack: FaultStack, sql: str, *args: Any) -> list[Any]:
    return asyncio.run(fetch(stack.dsn, sql, *args))


def _caught_up(stack: FaultStack, topic: str) -> bool:
    try:
        marks = high_watermarks(stack.kafka, topic)
        stored = dict(_rows(stack, 'SELECT "partition", next_offset FROM loom_offsets WHERE topic = $1', topic))
    except Exception:
        return False
    return all(stored.get(p) == high for p, (_, high) in marks.items())


def _kill_when(process: subprocess.Popen[str], ready: Callable[[], bool], what: str) -> None:
    """``kill -9`` of a ctl process of this test (by its pid) once ``ready()``; it must still run then."""
    wait_until(lambda: ready() or process.poll() is not None, 120, what, interval_s=0.05)
    assert process.poll() is None, f"ctl ended before it could be killed ({what}): {process.communicate()[0]}"
    process.send_signal(signal.SIGKILL)
    process.wait(30)


def test_t15_replay_and_rewind_under_kill_9_of_consumers_and_of_ctl(
    fault_stack: FaultStack, topic: str, tmp_path: Path, job_factory: Callable[..., Job], figures: Figures
) -> None:
    seed = env_int("LOOM_FAULT_SEED", 15)
    rate = env_int("LOOM_FAULT_RATE", 300)
    name = f"r{topic.replace('-', '_')}"
    schema = f"s_{topic.replace('-', '_')}"
    log_topic = f"{topic}-log"
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES.format(name=name, topic=topic, schema=schema))
    for each in (topic, log_topic):
        loadgen.ensure_topic(fault_stack.kafka, each, PARTITIONS)
    job = job_factory(settings={"kafka_batch_size": 50, "routes_file": routes, "kafka_topics": f"{topic},{log_topic}"})
    job.start()
    job.wait_running(PARTITIONS)
    started = time.monotonic()
    producer = NotedProducer(fault_stack.kafka, topic, seed, rate).start()
    injector = Injector(seed, job)
    try:
        injector.pause(8, 8, until=lambda: False)
        for table in ("orders", "order_log"):
            _rows(fault_stack, f"ALTER TABLE {schema}.{table} ALTER COLUMN note TYPE varchar(200)")
        injector.kill_consumer()
        job.ctl_run("rewind", "--topic", topic, "--to-offset", "0", "--reason", "T15 rewind")
        injector.kill_consumer()  # while the topic is read again

        replay = job.ctl("replay", "--chunk", "10", "--reason", "T15 replay, killed")
        committed = "SELECT records FROM loom_operations WHERE kind = 'replay' AND $1 = ANY(topics) ORDER BY id"
        _kill_when(replay, lambda: any(r["records"] for r in _rows(fault_stack, committed, topic)), "a replay chunk")
        job.ctl_run("replay", "--chunk", "10", "--reason", "T15 replay")

        asked = "SELECT state, applied_by FROM loom_operations WHERE kind = 'rewind' AND $1 = ANY(topics)"
        rewind = job.ctl("rewind", "--topic", log_topic, "--to-offset", "0", "--timeout", "120")
        _kill_when(rewind, lambda: bool(_rows(fault_stack, asked, log_topic)), "the rewind asked")
        injector.every(3, 8, injector.kill_consumer, until=lambda: injector.count() >= 4, limit=8)
    finally:
        producer.stop()
    for each in (topic, log_topic):
        wait_until(lambda each=each: _caught_up(fault_stack, each), 300, f"{each} to drain")
    job.ctl_run("replay", "--reason", "T15 last replay")
    job.finish()
    seconds = time.monotonic() - started

    upsert = check_upsert(
        fault_stack.dsn, fault_stack.kafka, topic, name, f"{schema}.orders",
        "id, seq, note, amount, src_partition, src_offset", _expected,
    )  # fmt: skip
    insert = check_insert(
        fault_stack.dsn, fault_stack.kafka, log_topic, f"{name}-log", f"{schema}.order_log", _expected
    )
    orphans = _rows(
        fault_stack,
        f"""SELECT count(*) AS n FROM loom_dead_letters AS d WHERE d.topic = $1 AND d.resolved_at IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM {schema}.order_log AS l
                            WHERE l.src_partition = d."partition" AND l.src_offset = d."offset")""",
        log_topic,
    )[0]["n"]
    operations = _rows(
        fault_stack,
        "SELECT kind, state, applied_by, records FROM loom_operations WHERE $1 = ANY(topics) OR $2 = ANY(topics) "
        "ORDER BY id",
        topic,
        log_topic,
    )
    resolved = _rows(
        fault_stack,
        "SELECT count(*) AS n FROM loom_dead_letters WHERE topic = ANY($1) AND resolved_at IS NOT NULL",
        [topic, log_topic],
    )[0]["n"]
    ok = upsert.ok and insert.ok and orphans == 0
    line = (
        f"T15 seed={seed} msgs={producer.sent:,}x2 partitions={PARTITIONS}x2 faults={injector.count()} (kill -9 "
        f"consumer) + 2 ctl kill -9 (replay, rewind) resolved={resolved} {upsert.counts()} | {insert.counts()} "
        f"resolved_without_row={orphans} thr={2 * producer.sent / max(seconds, 1e-9):,.0f}/s "
        + ("PASS" if ok else "FAIL")
    )
    figures.add(line)
    assert ok, line
    assert [(r["kind"], r["state"]) for r in operations] == [
        ("rewind", "done"),
        ("replay", "running"),  # killed: whole chunks only, and says so
        ("replay", "done"),
        ("rewind", "done"),
        ("replay", "done"),
    ], operations
    assert operations[1]["records"] > 0 and resolved > operations[1]["records"]  # the kill landed mid-replay
    assert all(operations[i]["applied_by"].startswith("coordinator ") for i in (0, 3))
    assert injector.count("kill -9 consumer") >= 3
    rereads = _rows(fault_stack, "SELECT topic, sum(skipped) AS s, sum(reapplied) AS r FROM loom_rereads "
                    "WHERE topic = ANY($1) GROUP BY topic", [topic, log_topic])  # fmt: skip
    read_again = {r["topic"]: (r["s"], r["r"]) for r in rereads}
    assert read_again[log_topic][0] > 0 and read_again[topic][1] > 0  # both rewinds did read again
