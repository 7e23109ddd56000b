"""Topics as users run them, under faults: T12 transactions, T13 retention, T14 a recreated topic.

Each run is accounted by the checker with the outcomes beside rows and dead letters: offsets that hold no
record for a read_committed consumer (T12, read back with one) and recorded gaps (T13, T14, compared with
the gaps the test caused, range by range). Sizes are the quick CI ones; ``scripts/chaos.sh`` raises them
through the ``LOOM_FAULT_*`` variables.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

from tests.faults.checker import CheckReport
from tests.faults.conftest import Figures
from tests.faults.harness import Job, fetch, start_with
from tests.faults.injector import Injector
from tests.faults.monitor import Monitor
from tests.faults.producer import Producer, env_float, env_int
from tests.faults.scenario import Figure, conclude
from tests.faults.stack import FaultStack
from tests.faults.topics import delete_records, recreate_topic
from tests.faults.transactions import TransactionalProducer
from tests.support.pipeline import high_watermarks

# What an incarnation holds, as a digest per table: stored rows must not change once another one started.
_DIGEST_SQL = """
SELECT t, count(*) AS n, md5(string_agg(k, ',' ORDER BY k)) AS digest FROM (
    SELECT 'messages' AS t, format('%s:%s:%s', "partition", "offset", md5(payload::text)) AS k
    FROM loom_messages WHERE topic = $1 AND incarnation = $2
    UNION ALL
    SELECT 'dead_letters', format('%s:%s', "partition", "offset")
    FROM loom_dead_letters WHERE topic = $1 AND incarnation = $2
    UNION ALL
    SELECT 'audit', format('%s:%s:%s', "partition", start_offset, end_offset)
    FROM loom_audit WHERE topic = $1 AND incarnation = $2) AS x
GROUP BY t ORDER BY t
"""


def test_t12_transactions_with_aborts_while_consumers_are_killed(
    fault_stack: FaultStack, topic: str, tmp_path: Path, job_factory: Callable[..., Job], figures: Figures
) -> None:
    """A transactional producer (a seeded quarter of its transactions aborted, the last one on every
    partition) while consumer actors are killed with kill -9 every U(5, 15) s; read back read_committed.

    Every acknowledged record of a committed transaction is stored once; no aborted record and no marker
    is; the offsets nobody is handed are exactly the producer's aborted records plus its markers.
    """
    seed = env_int("LOOM_FAULT_SEED", 16)
    kills = env_int("LOOM_FAULT_T12_KILLS", 3)
    messages = env_int("LOOM_FAULT_MESSAGES", 10**8)
    rate = env_float("LOOM_FAULT_RATE", 2000)
    job = job_factory(settings={"kafka_batch_size": 100})
    producer, started = start_with(
        job, TransactionalProducer(fault_stack, topic, tmp_path, messages, rate=rate, seed=seed)
    )
    injector = Injector(seed, job)
    with Monitor(job) as monitor:
        injector.every(5, 15, injector.kill_consumer, until=lambda: injector.count() >= kills, limit=3 * kills)
        injector.pause(5, 5, until=lambda: False)  # the last victim's partitions are reclaimed while live
        producer.stop()
        job.finish()
    summary = producer.summary()
    extra = f"txns={summary.committed} committed/{summary.aborted} aborted"
    figure = Figure("T12", seed, f"{injector.count()} (kill -9 consumer, transactional producer)", started, extra=extra)
    report, line = conclude(figure, fault_stack, topic, [producer], [job.log], injector, monitor, read_committed=True)
    figures.add(line)
    assert report.ok, report.table()
    assert injector.count("kill -9 consumer") == kills
    assert summary.aborted >= 2 and summary.aborted_records > 0, summary  # a seeded abort and the final one
    assert report.total("no_record") == summary.no_record, (summary, report.table())


def _run_to_the_end(job: Job) -> None:
    """Start the job, wait until it committed everything in the topic, stop it (SIGTERM, exit 0)."""
    job.start()
    job.finish()


def _ingest_then_stop(job: Job, messages: int, seed: int, name: str) -> tuple[Producer, dict[int, int]]:
    """Produce ``messages`` with loadgen (ack log ``<name>.log``), run the job until it committed them all,
    stop it; returns the producer and each partition's committed offset."""
    producer = Producer(job.stack, job.topic, job.workdir, messages, seed=seed, name=name).fill()
    _run_to_the_end(job)
    return producer, {p: next_offset for p, (next_offset, _, _) in job.offsets().items()}


def _gaps(report: CheckReport) -> set[tuple[int, int, int, int | None, str]]:
    return {(g.partition, g.incarnation, g.from_offset, g.to_offset, g.reason) for g in report.gap_rows}


def test_t13_retention_while_the_job_is_down(
    fault_stack: FaultStack, topic: str, tmp_path: Path, job_factory: Callable[..., Job], figures: Figures
) -> None:
    """Ingest, stop the job, produce as much again, then DeleteRecords on two thirds of the partitions:
    past the committed offset on half of them (records never read: a gap each), below it on the other half
    (records already stored: no gap); start the job again.

    The gaps recorded are exactly the ones caused, ``[committed, new log start)`` each; every other
    acknowledged offset is stored once.
    """
    seed = env_int("LOOM_FAULT_SEED", 17)
    messages = env_int("LOOM_FAULT_T13_MESSAGES", 12_000)
    job = job_factory(settings={"kafka_batch_size": 100})
    started = time.monotonic()
    first, committed = _ingest_then_stop(job, messages, seed, "acks-first")
    second = Producer(fault_stack, topic, tmp_path, messages, seed=seed, name="acks-second").fill()
    highs = {p: high for p, (_, high) in high_watermarks(fault_stack.kafka, topic).items()}
    rng = random.Random(seed)
    order = rng.sample(sorted(highs), len(highs))
    third = len(order) // 3
    past = {p: rng.randint(committed[p] + 1, highs[p]) for p in order[:third]}
    read = {p: rng.randint(1, committed[p]) for p in order[third : 2 * third]}
    delete_records(fault_stack.kafka, topic, past | read)
    _run_to_the_end(job)
    faults = f"{len(past) + len(read)} (DeleteRecords while down: {len(past)} past the committed offset)"
    report, line = conclude(
        Figure("T13", seed, faults, started), fault_stack, topic, [first, second], [job.log], expected_gaps=len(past)
    )
    figures.add(line)
    assert report.ok, report.table()
    assert _gaps(report) == {(p, 0, committed[p], past[p], "offset_out_of_range") for p in past}
    assert report.total("gapped") == sum(past[p] - committed[p] for p in past)


def _digest(stack: FaultStack, topic: str, incarnation: int) -> list[tuple[str, int, str]]:
    rows = asyncio.run(fetch(stack.dsn, _DIGEST_SQL, topic, incarnation))
    return [(r["t"], r["n"], r["digest"]) for r in rows]


def test_t14_topic_recreated_while_the_job_is_down(
    fault_stack: FaultStack, topic: str, tmp_path: Path, job_factory: Callable[..., Job], figures: Figures
) -> None:
    """Ingest, stop the job, delete the topic and create it again (half as many records in the new one,
    so its logs end below the stored offsets), start the job again.

    The new incarnation is complete, the old one's rows, dead letters and audit ranges are unchanged, and
    every partition records one ``topic_recreated`` gap from its old committed offset (end unknown).
    """
    seed = env_int("LOOM_FAULT_SEED", 18)
    messages = env_int("LOOM_FAULT_T14_MESSAGES", 12_000)
    job = job_factory(settings={"kafka_batch_size": 100})
    started = time.monotonic()
    old, committed = _ingest_then_stop(job, messages, seed, "acks-old")
    before = _digest(fault_stack, topic, 0)
    recreate_topic(fault_stack.kafka, topic, old.partitions)
    new = Producer(fault_stack, topic, tmp_path, messages // 2, seed=seed, name="acks-new").fill()
    _run_to_the_end(job)
    figure = Figure("T14", seed, "1 (topic deleted and created again while down)", started)
    report, line = conclude(figure, fault_stack, topic, [new], [job.log], expected_gaps=old.partitions)
    figures.add(line)
    assert report.ok, report.table()
    assert {p.incarnation for p in report.partitions.values()} == {1}
    assert _gaps(report) == {(p, 0, committed[p], None, "topic_recreated") for p in committed}
    assert {table: n for table, n, _ in before}.get("messages") == messages  # the old incarnation was read
    assert _digest(fault_stack, topic, 0) == before
