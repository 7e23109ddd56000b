"""Partition hand-overs while batches are in flight: T3 resizes, T4 a zombie paused across a hand-over.

Both resize the running job with ``python -m loom_ray.ctl resize N`` (a second Ray driver on the job's
cluster). In T4 the old owner is SIGSTOPped first, so its release times out (``LOOM_SHUTDOWN_TIMEOUT_S``)
and the coordinator claims the partition for the new owner anyway; once the new owner has committed, the
old one is resumed with its buffers full: its commit must be fenced by the epoch check.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from loom_ray.policy.assignment import assign
from tests.faults.conftest import Figures
from tests.faults.harness import Job, start_live
from tests.faults.injector import Injector
from tests.faults.monitor import Monitor
from tests.faults.producer import env_int
from tests.faults.scenario import Figure, conclude
from tests.faults.stack import FaultStack
from tests.support.pipeline import wait_until

_UNTIL_STOPPED = 10**8  # the producer runs until the faults are done, then Producer.stop()
# Batches stay open for seconds, so a moved partition nearly always has messages buffered or in flight.
_MAX_ACTORS = 6
_SLOW_BATCHES = {"kafka_batch_size": 100_000, "kafka_batch_timeout": 3, "min_actors": 2, "max_actors": _MAX_ACTORS}


def _moves(job: Job) -> int:
    found = re.search(r'"moves": (\d+)', job.ctl_run("status"))
    assert found, "no moves count in loom_ray.ctl status"
    return int(found.group(1))


def test_t3_partition_moves_with_batches_in_flight(
    fault_stack: FaultStack, topic: str, tmp_path: Path, job_factory: Callable[..., Job], figures: Figures
) -> None:
    """Resize to a seeded actor count (2..5) every U(4, 8) s while the producer runs."""
    seed = env_int("LOOM_FAULT_SEED", 4)
    resizes = env_int("LOOM_FAULT_T3_RESIZES", 3)
    job = job_factory(settings=_SLOW_BATCHES)
    producer, started = start_live(job, _UNTIL_STOPPED, seed, rate=3000)
    injector = Injector(seed, job)
    actors = 2
    with Monitor(job) as monitor:
        for _ in range(resizes):
            injector.pause(4, 8, until=lambda: False)
            actors = injector.rng.choice([n for n in range(2, 6) if n != actors])
            job.ctl_run("resize", str(actors))
        producer.stop()
        moves = _moves(job)
        job.finish()
    released = job.log_text().count(" released ")
    figure = Figure("T3", seed, f"{resizes} (resize)", started, extra=f"moves={moves} released={released}")
    report, line = conclude(figure, fault_stack, topic, [producer], [job.log], monitor=monitor)
    figures.add(line)
    assert report.ok, report.table()
    assert moves > 0, "no partition moved"


def _losers(job: Job, actors: int) -> set[str]:
    """The consumers the coordinator's sticky assignment takes a partition from when resizing to ``actors``.

    Growing by one does not take from every consumer (those holding the larger quota keep it), so the
    zombie must be one of these for the hand-over to reach it. A new actor holds nothing, so its name
    (unknown yet) does not change what the others keep.
    """
    owners = {("t", p): owner for p, (_, _, owner) in job.offsets().items() if owner is not None}
    names = sorted(set(owners.values()))
    target = assign(list(owners), names + [f"~new-{n}" for n in range(actors - len(names))], owners)
    return {owners[tp] for tp in owners if target[tp] != owners[tp]}


def _zombie_round(job: Job, injector: Injector, actors: int, in_transaction: bool, within_s: float) -> None:
    """SIGSTOP an owner mid-batch, resize so its partitions move, and require the new owners to commit
    within ``within_s`` while it is still stopped; then SIGCONT it: its stale commit must be fenced."""
    victim = injector.pick_consumer(among=_losers(job, actors))
    assert victim is not None, f"no connected consumer loses a partition when resizing to {actors}"
    name, pid = victim
    mine = job.owned_partitions(name)
    start = job.offsets()
    wait_until(lambda: all(job.offsets()[p][0] > start[p][0] for p in mine), 60, f"{name} to commit")
    injector.pause(0.5, 2.5, until=lambda: False)  # into its next batch: it now holds messages in memory
    fenced_before = job.log_text().count("fenced on ")
    injector.pause_consumer(name, pid, in_transaction)
    before = job.offsets()
    resize = job.ctl("resize", str(actors))
    moved: list[int] = []

    def handed_over() -> bool:
        now = job.offsets()
        moved[:] = [p for p in mine if now[p][2] != name]
        return bool(moved) and all(now[p][0] > before[p][0] for p in moved)

    try:
        wait_until(handed_over, within_s, f"{name}'s partitions to move and commit while it is stopped")
    finally:
        job.resume(pid)
        output, _ = resize.communicate(timeout=180)
    assert resize.returncode == 0, output[-2000:]
    where = "inside a transaction" if in_transaction else "between transactions"
    injector.record(f"SIGSTOP consumer {where} across a hand-over", f"{name} pid={pid}", tuple(moved))
    wait_until(lambda: job.log_text().count("fenced on ") > fenced_before, 60, f"{name}'s stale commit to be fenced")


# A paused actor must not be declared gone (Ray would SIGKILL it, and there would be no zombie): a long
# session timeout; and a short release timeout, so that the hand-over goes on without the paused owner.
_ZOMBIE = {**_SLOW_BATCHES, "kafka_session_timeout_ms": 120_000, "shutdown_timeout_s": 3}


def test_t4_zombie_paused_across_a_handover(
    fault_stack: FaultStack, topic: str, tmp_path: Path, job_factory: Callable[..., Job], figures: Figures
) -> None:
    seed = env_int("LOOM_FAULT_SEED", 5)
    rounds = env_int("LOOM_FAULT_T4_ROUNDS", 2)
    job = job_factory(settings=_ZOMBIE)
    producer, started = start_live(job, _UNTIL_STOPPED, seed, rate=2000)
    injector = Injector(seed, job)
    actors = 2
    with Monitor(job) as monitor:
        for _ in range(rounds):
            if actors == _MAX_ACTORS - 1:
                job.ctl_run("resize", "2", "--wait")  # back down, without a zombie, so that the next resize moves some
                actors = 2
            actors += 1
            _zombie_round(job, injector, actors, in_transaction=False, within_s=60)
        producer.stop()
        job.finish()
    figure = Figure("T4", seed, f"{rounds} (SIGSTOP between transactions across a hand-over)", started)
    report, line = conclude(figure, fault_stack, topic, [producer], [job.log], injector, monitor)
    figures.add(line)
    assert report.ok, report.table()
    assert report.fenced >= rounds, f"expected >= {rounds} fenced commits, saw {report.fenced}"


def test_t4b_zombie_holding_the_row_lock(
    fault_stack: FaultStack,
    topic: str,
    tmp_path: Path,
    job_factory: Callable[..., Job],
    figures: Figures,
) -> None:
    """SIGSTOP right after the flush's offset compare-and-set (offset rows locked), then hand over.

    The pipeline's ``idle_in_transaction_session_timeout`` (LOOM_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS, 10 s)
    ends the zombie's session, which frees the rows for the coordinator's claim.
    """
    seed = env_int("LOOM_FAULT_SEED", 6)
    stops = tmp_path / "stops"
    stops.mkdir()
    job = job_factory(settings={**_ZOMBIE, "kafka_batch_timeout": 0.5}, env_extra={"LOOM_TEST_STOP_DIR": str(stops)})
    producer, started = start_live(job, _UNTIL_STOPPED, seed, rate=2000)
    injector = Injector(seed, job)
    with Monitor(job) as monitor:
        try:
            _zombie_round(job, injector, actors=3, in_transaction=True, within_s=30)
        finally:
            producer.stop()
        job.finish()
    figure = Figure("T4b", seed, "1 (SIGSTOP inside the flush transaction, pipeline defaults)", started)
    report, line = conclude(figure, fault_stack, topic, [producer], [job.log], injector, monitor)
    figures.add(line)
    assert report.ok, report.table()
    assert report.fenced >= 1
