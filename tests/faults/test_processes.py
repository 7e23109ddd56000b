"""Process faults while a producer is live: T1 kill -9 of actors, T1b crash points, T2 cold restarts.

Sizes are the quick CI ones; ``scripts/chaos.sh`` raises them through the ``LOOM_FAULT_*`` variables.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from tests.faults.conftest import Figures
from tests.faults.harness import Job, start_live
from tests.faults.injector import Injector
from tests.faults.monitor import Monitor
from tests.faults.producer import env_int
from tests.faults.scenario import Figure, conclude
from tests.faults.stack import FaultStack

CRASH_POINTS = "after_poll:0.002,after_offset_cas:0.01,after_data_copy:0.01,after_commit:0.01"


def test_t1_kill_9_of_actors(
    fault_stack: FaultStack, topic: str, tmp_path: Path, job_factory: Callable[..., Job], figures: Figures
) -> None:
    """kill -9 of a consumer actor every U(5, 15) s while ingesting; the second kill hits the coordinator."""
    seed = env_int("LOOM_FAULT_SEED", 1)
    kills = env_int("LOOM_FAULT_T1_KILLS", 4)
    job = job_factory(settings={"kafka_batch_size": 100})
    producer, started = start_live(job, 10**8, seed, rate=3000)
    injector = Injector(seed, job)
    with Monitor(job) as monitor:
        injector.every(5, 15, lambda: _kill(injector), until=lambda: injector.count() >= kills, limit=3 * kills)
        injector.pause(5, 5, until=lambda: False)  # the last victim's partitions are reclaimed while live
        producer.stop()
        job.finish()
    faults = f"{injector.count()} (kill -9: {injector.count('kill -9 consumer')} consumer, "
    faults += f"{injector.count('kill -9 coordinator')} coordinator)"
    report, line = conclude(
        Figure("T1", seed, faults, started), fault_stack, topic, [producer], [job.log], injector, monitor
    )
    figures.add(line)
    assert report.ok, report.table()
    assert injector.count("kill -9 coordinator") == 1 and injector.count("kill -9 consumer") >= 2


def _kill(injector: Injector) -> None:
    if injector.count() == 1:
        injector.kill_coordinator()
    else:
        injector.kill_consumer()


def test_t1b_crash_points(
    fault_stack: FaultStack, topic: str, tmp_path: Path, job_factory: Callable[..., Job], figures: Figures
) -> None:
    """os._exit(137) at the four points of the commit path; the coordinator replaces the dead actor."""
    seed = env_int("LOOM_FAULT_SEED", 2)
    points = os.environ.get("LOOM_FAULT_CRASH_AT", CRASH_POINTS)
    job = job_factory(settings={"kafka_batch_size": 100}, env_extra={"LOOM_TEST_CRASH_AT": points})
    producer, started = start_live(job, 50_000, seed)
    with Monitor(job) as monitor:
        producer.wait()
        job.finish()
    crashes = job.log_text().count(" is gone ")
    report, line = conclude(
        Figure("T1b", seed, f"{crashes} (os._exit at {points})", started),
        fault_stack,
        topic,
        [producer],
        [job.log],
        monitor=monitor,
    )
    figures.add(line)
    assert report.ok, report.table()
    assert crashes >= 1, "no crash point fired: raise the probabilities"


def test_t2_cold_restart(
    fault_stack: FaultStack, topic: str, tmp_path: Path, job_factory: Callable[..., Job], figures: Figures
) -> None:
    """SIGKILL of the job's whole process group at ~30 % and ~70 %, restarted each time."""
    seed = env_int("LOOM_FAULT_SEED", 3)
    job = job_factory(settings={"kafka_batch_size": 100})
    producer, started = start_live(job, 50_000, seed)
    injector = Injector(seed, job)
    with Monitor(job) as monitor:
        for share in (0.3, 0.7):
            job.wait_committed(int(producer.messages * share), timeout_s=300)
            injector.restart_job()
        producer.wait()
        job.finish()
    report, line = conclude(
        Figure("T2", seed, "2 (kill -9 of the process group, restart)", started),
        fault_stack,
        topic,
        [producer],
        [job.log],
        injector,
        monitor,
    )
    figures.add(line)
    assert report.ok, report.table()
