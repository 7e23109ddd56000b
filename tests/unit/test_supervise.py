"""The supervisor's rule (pure) and its loop against an in-memory Jobs API: one running job per deployment,
a new one whenever it ends, extra ones stopped, all stopped (and waited for) when the supervisor is."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from loom_ray.supervise import (
    DEPLOYMENT_KEY,
    KEEP_ENDED,
    QUICK_END_S,
    Look,
    Step,
    Supervisor,
    next_attempt,
    next_step,
    read_jobs,
)

_clock = itertools.count(1)


@dataclass
class _Job:
    submission_id: str
    status: str = "RUNNING"
    metadata: dict[str, str] = field(default_factory=lambda: {DEPLOYMENT_KEY: "orders"})
    start_time: int = field(default_factory=lambda: next(_clock) * 1000)
    end_time: int | None = None
    driver_node_id: str | None = "head-1"


def test_read_jobs_follows_the_oldest_running_job_of_the_deployment() -> None:
    jobs = [
        _Job("a", "STOPPED", end_time=10**9),
        _Job("other", metadata={DEPLOYMENT_KEY: "payments"}),
        _Job("b"),
        _Job("c", "PENDING"),
        _Job("untagged", metadata={}),
    ]
    look = read_jobs(jobs, "orders")
    assert (look.job, look.status, look.extra) == ("b", "RUNNING", ("c",))
    assert next_step(look) is Step.WAIT
    assert next_step(read_jobs(jobs[:1], "orders")) is Step.SUBMIT


def test_a_job_whose_drivers_node_is_dead_is_over_whatever_ray_says() -> None:
    lost = _Job("lost")  # RUNNING, as Ray 2.60 keeps calling it after the head that ran its driver was lost
    assert read_jobs([lost], "orders", frozenset({"head-1"})).job is None
    assert read_jobs([lost], "orders", frozenset({"worker-7"})).job == "lost"


def test_finished_jobs_beyond_the_last_few_expire() -> None:
    ended = [_Job(str(n), "FAILED", end_time=0) for n in range(KEEP_ENDED + 2)]
    assert read_jobs(ended, "orders").expired == ("0", "1")


@pytest.mark.parametrize(
    ("attempt", "ran_s", "after"), [(0, 1.0, 1), (3, QUICK_END_S - 1, 4), (3, QUICK_END_S, 0), (2, None, 3)]
)
def test_the_backoff_grows_while_jobs_keep_ending_quickly(attempt: int, ran_s: float | None, after: int) -> None:
    assert next_attempt(attempt, ran_s) == after


class FakeJobs:
    """A Jobs API in memory."""

    def __init__(self) -> None:
        self.jobs: dict[str, _Job] = {}
        self.lock = threading.Lock()
        self.stops: list[str] = []

    def list_jobs(self) -> list[Any]:
        with self.lock:
            return list(self.jobs.values())

    def dead_nodes(self) -> frozenset[str]:
        return frozenset()

    def submit_job(
        self, *, entrypoint: str, submission_id: str, runtime_env: dict[str, Any] | None, metadata: dict[str, str]
    ) -> str:
        with self.lock:
            assert submission_id not in self.jobs
            self.jobs[submission_id] = _Job(submission_id, metadata=metadata)
            return submission_id

    def stop_job(self, job_id: str) -> bool:
        with self.lock:
            self.stops.append(job_id)
            self.end(job_id, "STOPPED")
            return True

    def delete_job(self, job_id: str) -> bool:
        with self.lock:
            assert self.jobs[job_id].status in ("SUCCEEDED", "FAILED", "STOPPED"), "Ray deletes finished jobs only"
            del self.jobs[job_id]
            return True

    def end(self, job_id: str, status: str) -> None:
        job = self.jobs[job_id]
        job.status, job.end_time = status, job.start_time + 120_000  # it ran 120 s: no backoff

    def live(self) -> list[str]:
        with self.lock:
            return [j.submission_id for j in self.jobs.values() if j.status in ("RUNNING", "PENDING")]


def _wait(predicate: Any) -> None:
    for _ in range(1000):
        if predicate():
            return
        threading.Event().wait(0.01)
    raise AssertionError("timed out")


def test_one_job_is_kept_running_and_stopped_with_the_supervisor() -> None:
    jobs = FakeJobs()
    supervisor = Supervisor(jobs, "orders", "python -m loom_ray.main", None, poll_s=0.01, stop_timeout_s=5)
    thread = threading.Thread(target=supervisor.run)
    thread.start()
    try:
        _wait(lambda: len(jobs.live()) == 1)
        with jobs.lock:
            jobs.end(next(iter(jobs.jobs)), "FAILED")  # the driver exited
        _wait(lambda: supervisor.submissions == 2 and len(jobs.live()) == 1)
        first = jobs.live()[0]
        jobs.stop_job(first)  # `ray job stop` by hand
        _wait(lambda: supervisor.submissions == 3 and len(jobs.live()) == 1)
        # A second supervisor's job appears beside it: the newer one is stopped.
        jobs.submit_job(entrypoint="x", submission_id="intruder", runtime_env=None, metadata={DEPLOYMENT_KEY: "orders"})
        _wait(lambda: "intruder" in jobs.stops)
        assert len(jobs.live()) == 1
    finally:
        supervisor.stopping = True
        thread.join(10)
    assert not thread.is_alive()
    assert jobs.live() == []


def test_a_look_for_an_empty_api_submits_without_waiting() -> None:
    look = Look(None)
    assert next_step(look) is Step.SUBMIT
