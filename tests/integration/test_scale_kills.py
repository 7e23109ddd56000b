"""Issue 12's correctness check at scale: 256 partitions over 4 consumer actors, two of them killed with
``kill -9`` while they drain, and the fault suite's checker accounting for every acknowledged offset.

Runs the real job (``python -m loom_ray.main``, a local Ray) and the real load generator against this test
session's own Kafka broker and PostgreSQL (the ``endpoints`` fixture, a local stack), never the fault stack:
the fault suite's :class:`~tests.faults.harness.Job`, :class:`~tests.faults.producer.Producer` and
:func:`~tests.faults.checker.check` are reused with a :class:`~tests.faults.stack.FaultStack` value that
points at those endpoints (nothing here starts, stops or signals a server).
"""

from __future__ import annotations

import signal
from pathlib import Path
from urllib.parse import urlsplit

from tests.faults.checker import check
from tests.faults.harness import Job
from tests.faults.producer import Producer
from tests.faults.stack import FaultStack
from tests.support.pipeline import wait_until
from tests.support.services import Endpoints

PARTITIONS = 256
CONSUMERS = 4
MESSAGES = 200_000  # about 780 per partition: backlog remains on every partition when the kills land
KILLS_AT = (20_000, 60_000)  # committed offsets at which one more consumer actor is killed


def _stack(endpoints: Endpoints, workdir: Path) -> FaultStack:
    """A FaultStack value naming this session's broker and PostgreSQL (both on 127.0.0.1 in the local stack)."""
    kafka_host, _, kafka_port = endpoints.kafka.rpartition(":")
    dsn = urlsplit(endpoints.dsn)
    assert kafka_host == "127.0.0.1" and dsn.hostname == "127.0.0.1" and dsn.port, (endpoints.kafka, endpoints.dsn)
    return FaultStack(workdir, int(kafka_port), dsn.port)


def test_kill_9_of_consumer_actors_at_256_partitions_loses_and_duplicates_nothing(
    endpoints: Endpoints, topic_name: str, tmp_path: Path
) -> None:
    stack = _stack(endpoints, tmp_path)
    settings = {"min_actors": CONSUMERS, "max_actors": CONSUMERS, "kafka_batch_size": 200}
    job = Job(stack, topic_name, tmp_path, settings=settings, dsn=endpoints.dsn)
    producer = Producer(stack, topic_name, tmp_path, MESSAGES, partitions=PARTITIONS, seed=12)
    try:
        producer.create_topic()
        job.start()
        job.wait_running(PARTITIONS)
        producer.start()
        killed = []
        for committed in KILLS_AT:
            job.wait_committed(committed)
            running = job.consumers()
            victim = sorted(set(running) - {name for name, _ in killed})[0]
            job.signal(running[victim], signal.SIGKILL)
            killed.append((victim, running[victim]))
        # The coordinator must notice both deaths and hand their partitions on before the drain may end.
        wait_until(lambda: job.log_text().count(" is gone ") >= len(KILLS_AT), 120, "both deaths noticed")
        producer.wait()
        job.finish(timeout_s=600)
    finally:
        job.close()
    report = check(endpoints.dsn, endpoints.kafka, topic_name, [producer.ack_log], [job.log])
    print(f"\n{len(killed)} consumer actors killed ({killed}): {report.counts()}")
    assert report.ok, report.table()
    assert report.total("lost") == 0 and report.total("duplicated") == 0
    assert len(report.partitions) == PARTITIONS and report.at_end
    assert all(f"consumer {name} is gone" in job.log_text() for name, _ in killed), killed
