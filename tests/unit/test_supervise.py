"""The supervisor's rule (pure) and its loop against an in-memory Jobs API: one job per deployment, submitted
again whenever it ends, stopped (and waited for) when the supervisor is."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pytest

from loom_ray.supervise import QUICK_END_S, Look, Step, Supervisor, next_attempt, next_step


@pytest.mark.parametrize(
    ("look", "step"),
    [
        (Look(None), Step.SUBMIT),
        (Look("PENDING"), Step.WAIT),
        (Look("RUNNING"), Step.WAIT),
        (Look("FAILED", terminal=True, ran_s=3), Step.RESUBMIT),
        (Look("STOPPED", terminal=True, ran_s=500), Step.RESUBMIT),  # stopped by hand: it comes back
        (Look("SUCCEEDED", terminal=True, ran_s=500), Step.RESUBMIT),
    ],
)
def test_next_step(look: Look, step: Step) -> None:
    assert next_step(look) is step


def test_the_backoff_grows_while_the_job_keeps_ending_quickly_and_resets_after_a_long_run() -> None:
    assert next_attempt(0, 1.0) == 1
    assert next_attempt(3, QUICK_END_S - 1) == 4
    assert next_attempt(3, QUICK_END_S) == 0
    assert next_attempt(2, None) == 3  # no times: as a quick end


@dataclass
class _Job:
    submission_id: str
    status: str = "RUNNING"
    message: str = ""
    start_time: int = 0
    end_time: int | None = None


class FakeJobs:
    """A Jobs API in memory: one job per id, as Ray keeps them (an id is refused while a job has it)."""

    def __init__(self) -> None:
        self.jobs: dict[str, _Job] = {}
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def list_jobs(self) -> list[Any]:
        with self.lock:
            return list(self.jobs.values())

    def submit_job(self, *, entrypoint: str, submission_id: str, runtime_env: dict[str, Any] | None) -> str:
        with self.lock:
            self.calls.append(f"submit {entrypoint}")
            if submission_id in self.jobs:
                raise RuntimeError(f"Job with submission_id {submission_id} already exists")
            self.jobs[submission_id] = _Job(submission_id)
            return submission_id

    def stop_job(self, job_id: str) -> bool:
        with self.lock:
            self.calls.append("stop")
            self.jobs[job_id].status = "STOPPED"
            return True

    def delete_job(self, job_id: str) -> bool:
        with self.lock:
            self.calls.append("delete")
            assert self.jobs[job_id].status in ("SUCCEEDED", "FAILED", "STOPPED"), "Ray deletes finished jobs only"
            del self.jobs[job_id]
            return True

    def end(self, job_id: str, status: str) -> None:
        with self.lock:
            self.jobs[job_id].status, self.jobs[job_id].end_time = status, 120_000


def _wait(predicate: Any) -> None:
    for _ in range(500):
        if predicate():
            return
        threading.Event().wait(0.01)
    raise AssertionError("timed out")


def test_the_job_is_kept_running_and_stopped_with_the_supervisor() -> None:
    jobs = FakeJobs()
    supervisor = Supervisor(jobs, "loom-orders", "python -m loom_ray.main", None, poll_s=0.01, stop_timeout_s=5)
    thread = threading.Thread(target=supervisor.run)
    thread.start()
    try:
        _wait(lambda: "loom-orders" in jobs.jobs)
        jobs.end("loom-orders", "FAILED")  # the driver exited (it ran 120 s: no backoff)
        _wait(lambda: supervisor.submissions == 2 and jobs.jobs["loom-orders"].status == "RUNNING")
        jobs.end("loom-orders", "STOPPED")  # `ray job stop` by hand
        _wait(lambda: supervisor.submissions == 3 and jobs.jobs["loom-orders"].status == "RUNNING")
        assert len(jobs.jobs) == 1  # never two
    finally:
        supervisor.stopping = True
        thread.join(10)
    assert not thread.is_alive()
    assert jobs.jobs["loom-orders"].status == "STOPPED"
    assert jobs.calls == ["submit python -m loom_ray.main", "delete", "submit python -m loom_ray.main", "delete",
                          "submit python -m loom_ray.main", "stop"]  # fmt: skip


def test_a_job_submitted_by_another_supervisor_is_followed_not_duplicated() -> None:
    jobs = FakeJobs()
    supervisor = Supervisor(jobs, "loom-orders", "python -m loom_ray.main", None, poll_s=0.01, stop_timeout_s=5)
    jobs.submit_job(entrypoint="python -m loom_ray.main", submission_id="loom-orders", runtime_env=None)
    original = jobs.list_jobs
    looks = iter([False])  # the first look misses it (a race): the supervisor's own submit is refused

    def list_jobs() -> list[Any]:
        return original() if next(looks, True) else []

    jobs.list_jobs = list_jobs  # type: ignore[method-assign]
    thread = threading.Thread(target=supervisor.run)
    thread.start()
    try:
        _wait(lambda: jobs.calls.count("submit python -m loom_ray.main") == 2)
        threading.Event().wait(0.1)
        assert supervisor.submissions == 0 and len(jobs.jobs) == 1
    finally:
        supervisor.stopping = True
        thread.join(10)
