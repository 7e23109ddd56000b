"""T1d: kill -9 of consumer actors while a Debezium route replicates a source table.

The load generator writes a source table's change events (``--format debezium``: JSON with Kafka Connect's
schema envelope, creates, updates, deletes with and without a before image, each delete followed by its
tombstone, 1 % truncates and values that are no event) over 4 partitions, keyed by row, while consumers are
killed every U(5, 15) s. The route upserts ``after`` images and deletes by key, ordered by the events' source
position. After the drain, :mod:`tests.faults.replica_checker` compares the replica with the source table
folded from the topic: 0 missing, extra or stale rows, every change applied once, every bad record one dead
letter.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from tests.faults.conftest import Figures
from tests.faults.harness import Job, start_with
from tests.faults.injector import Injector
from tests.faults.producer import Producer, env_float, env_int
from tests.faults.replica_checker import check_replica
from tests.faults.stack import FaultStack
from tests.support.debezium import EventReader

PARTITIONS = 4
KEYS = 300

ROUTES = """
[[route]]
name = "{name}"
topic = "{topic}"
table = "{schema}.accounts"
mode = "upsert"
key = ["id"]
envelope = "debezium"
position = "src_lsn"
auto_create = true

[route.columns]
id = {{ type = "bigint" }}
name = {{ type = "text" }}
balance = {{ type = "numeric(12,2)" }}
updated_at = {{ type = "timestamp" }}
note = {{ type = "text" }}
src_lsn = {{ type = "numeric" }}
"""


@dataclass
class ChangeProducer(Producer):
    """The load generator writing change events (no ack log: the checker folds the topic itself)."""

    def start(self) -> Self:
        argv = [sys.executable, "-m", "loom_ray.loadgen", "--topic", self.topic, "--partitions", str(self.partitions)]
        argv += ["--messages", str(self.messages), "--size", "200", "--bootstrap-servers", self.stack.kafka]
        argv += ["--format", "debezium", "--keys", str(KEYS), "--malformed-ratio", str(self.ratio)]
        argv += ["--seed", str(self.seed), "--rate", str(self.rate)]
        self._spawn(argv)
        return self


def test_t1d_kill_9_of_consumers_while_replicating_debezium_changes(
    fault_stack: FaultStack, topic: str, tmp_path: Path, job_factory: Callable[..., Job], figures: Figures
) -> None:
    seed = env_int("LOOM_FAULT_SEED", 6)
    kills = env_int("LOOM_FAULT_T1D_KILLS", 2)
    messages = env_int("LOOM_FAULT_T1D_MESSAGES", 8000)
    rate = env_float("LOOM_FAULT_RATE", 400)
    name = f"d{topic.replace('-', '_')}"
    schema = f"s_{topic.replace('-', '_')}"
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES.format(name=name, topic=topic, schema=schema))
    job = job_factory(settings={"kafka_batch_size": 50, "routes_file": routes})
    producer = ChangeProducer(fault_stack, topic, tmp_path, messages, PARTITIONS, rate, 0.01, seed, "changes")
    producer, started = start_with(job, producer)
    injector = Injector(seed, job)
    injector.every(5, 15, injector.kill_consumer, until=lambda: injector.count() >= kills, limit=3 * kills)
    producer.wait()
    job.finish()
    seconds = time.monotonic() - started

    report = check_replica(
        fault_stack.dsn, fault_stack.kafka, topic, name, f"{schema}.accounts", EventReader("envelope")
    )
    line = (
        f"T1d seed={seed} msgs={report.records:,} partitions={PARTITIONS} keys={KEYS} "
        f"faults={injector.count()} (kill -9 consumer) {report.counts()} "
        f"thr={report.records / max(seconds, 1e-9):,.0f}/s " + ("PASS" if report.ok else "FAIL")
    )
    figures.add(line)
    assert report.ok, line
    assert injector.count("kill -9 consumer") >= 2
    assert report.rows > KEYS // 2 and report.dead_letters > 0  # not vacuous
