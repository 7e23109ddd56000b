"""Service and network faults mid-run: T5 PostgreSQL, T6 the Kafka broker, T7 the actor<->PostgreSQL link.

The producer stays live through every fault (it only counts what the broker acknowledged). Recovery is
measured from the moment the service was back (or the network healed) to the next commit on every
partition.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.faults.conftest import Figures
from tests.faults.harness import Job, start_live
from tests.faults.injector import Injector
from tests.faults.monitor import Monitor
from tests.faults.producer import env_float, env_int
from tests.faults.scenario import Figure, conclude
from tests.faults.stack import FaultStack
from tests.support.tcp_proxy import proxy


def _at_share(job: Job, messages: int, share: float) -> None:
    job.wait_committed(int(messages * share), timeout_s=300)


def test_t5_postgres_restart_and_crash(
    fault_stack: FaultStack, topic: str, tmp_path: Path, job_factory: Callable[..., Job], figures: Figures
) -> None:
    """``pg_ctl restart -m fast`` at ~30 %, ``stop -m immediate`` at ~60 % and start again after a pause.

    Pipeline defaults (``synchronous_commit=off``): the crash may lose the last commits, rows and offsets
    together; the consumers that made them are fenced by their next compare-and-set and the partitions
    are claimed again from what the database kept.
    """
    seed = env_int("LOOM_FAULT_SEED", 7)
    job = job_factory(settings={"kafka_batch_size": 100})
    producer, started = start_live(job, 50_000, seed)
    injector = Injector(seed, job)
    with Monitor(job) as monitor:
        _at_share(job, producer.messages, 0.3)
        injector.pg_restart_fast()
        _at_share(job, producer.messages, 0.6)
        injector.pg_crash(down_s=env_float("LOOM_FAULT_PG_DOWN_S", 5))
        producer.wait()
        job.finish()
    log = job.log_text()
    extra = f"retried_flushes={log.count(' failed (')} in_doubt_resolved={log.count('in-doubt batches had committed')}"
    figure = Figure("T5", seed, "2 (pg restart -m fast, stop -m immediate)", started, extra=extra)
    report, line = conclude(figure, fault_stack, topic, [producer], [job.log], injector, monitor)
    figures.add(line)
    assert report.ok, report.table()
    assert " failed (" in log, "no flush ever saw the outage: the faults missed the run"


def test_t5c_lost_asynchronous_commit(
    fault_stack: FaultStack, topic: str, tmp_path: Path, job_factory: Callable[..., Job], figures: Figures
) -> None:
    """The last commit of one partition vanishes (rows, audit line and offset advance together).

    What a PostgreSQL crash may do with ``synchronous_commit=off`` (the default): the consumer's next
    compare-and-set fails, it drops the partition, and the coordinator must claim it again.
    """
    seed = env_int("LOOM_FAULT_SEED", 10)
    job = job_factory(settings={"kafka_batch_size": 100})
    producer, started = start_live(job, 40_000, seed)
    injector = Injector(seed, job)
    with Monitor(job) as monitor:
        _at_share(job, producer.messages, 0.3)
        injector.lose_last_commit(injector.rng.randrange(producer.partitions))
        producer.wait()
        job.finish(timeout_s=20)
    figure = Figure("T5c", seed, "1 (lost asynchronous commit)", started)
    report, line = conclude(figure, fault_stack, topic, [producer], [job.log], injector, monitor)
    figures.add(line)
    assert report.ok, report.table()


def test_t6_broker_kill_and_pause(
    fault_stack: FaultStack, topic: str, tmp_path: Path, job_factory: Callable[..., Job], figures: Figures
) -> None:
    """Broker ``kill -9`` at ~30 % (restarted after a pause), SIGSTOP at ~60 % (then SIGCONT)."""
    seed = env_int("LOOM_FAULT_SEED", 8)
    job = job_factory(settings={"kafka_batch_size": 100})
    producer, started = start_live(job, 50_000, seed)
    injector = Injector(seed, job)
    with Monitor(job) as monitor:
        _at_share(job, producer.messages, 0.3)
        injector.kafka_kill(down_s=env_float("LOOM_FAULT_KAFKA_DOWN_S", 5))
        _at_share(job, producer.messages, 0.6)
        injector.kafka_pause(pause_s=env_float("LOOM_FAULT_KAFKA_PAUSE_S", 10))
        producer.wait()
        job.finish()
    figure = Figure("T6", seed, "2 (broker kill -9, broker SIGSTOP)", started)
    report, line = conclude(figure, fault_stack, topic, [producer], [job.log], injector, monitor)
    figures.add(line)
    assert report.ok, report.table()


def test_t7_network_faults_between_actors_and_postgres(
    fault_stack: FaultStack, topic: str, tmp_path: Path, job_factory: Callable[..., Job], figures: Figures
) -> None:
    """Through a TCP proxy: latency 200 +- 50 ms, resets, a blackhole, then COMMITs left in doubt."""
    seed = env_int("LOOM_FAULT_SEED", 9)
    scale = env_float("LOOM_FAULT_T7_SCALE", 1.0)  # chaos.sh: 3 = the plan's durations
    with proxy("127.0.0.1", fault_stack.pg_port, seed) as pg:
        job = job_factory(settings={"kafka_batch_size": 100}, dsn=f"postgresql://loom@127.0.0.1:{pg.port}/loom")
        producer, started = start_live(job, 10**8, seed, rate=2000)
        injector = Injector(seed, job, pg)
        with Monitor(job) as monitor:
            injector.latency(0.2, 0.05, duration_s=10 * scale)
            injector.resets(every_s=5, duration_s=15 * scale)
            injector.blackhole(duration_s=10 * scale)
            injector.in_doubt(commits=2)
            producer.stop()
            job.finish()
    log = job.log_text()
    in_doubt = log.count("in-doubt batches had committed")
    figure = Figure("T7", seed, f"{injector.count()} (latency, resets, blackhole, in-doubt)", started)
    figure.extra = f"in_doubt_resolved={in_doubt}"
    report, line = conclude(figure, fault_stack, topic, [producer], [job.log], injector, monitor)
    figures.add(line)
    assert report.ok, report.table()
    assert in_doubt >= 1, "no in-doubt COMMIT was resolved from the offset row"
