"""Keeps exactly one driver of a deployment running on a Ray cluster: ``python -m loom_ray.supervise``.

Runs as a process of its own (on Kubernetes, a one-replica Deployment beside the RayCluster: kuberay/). It
submits ``python -m loom_ray.main`` to the cluster's Jobs API, tagged with the deployment (LOOM_DEPLOYMENT, or
the name derived from the settings) in the job's metadata, follows it, and when it ends for any reason (the
driver exited, the head restarted, ``ray job stop`` by hand) submits a new one, waiting longer each time one
ends again quickly. Should two jobs of the deployment run at once (two supervisors during a rollout), every
supervisor stops all but the oldest, so one driver remains. On SIGTERM or SIGINT it stops the job (the driver
drains within LOOM_SHUTDOWN_TIMEOUT_S and removes its coordinator), waits for it to end and exits 0: stopping
the supervisor stops ingestion.

Each job gets a new submission id (``loom-<deployment>-<n>``): Ray 2.60 keeps a finished job's internal
supervisor actor name for a while, so an id submitted again right after its job ended is refused. The
decision at each look is :func:`next_step` (pure); :class:`Supervisor` only asks the Jobs API and acts.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass
from enum import StrEnum
from types import FrameType
from typing import Any, Protocol

from loom_ray.errors import ConfigError
from loom_ray.policy.backoff import backoff_delay
from loom_ray.settings import Settings

log = logging.getLogger("loom_ray.supervise")

EXIT_CONFIG = 2
DEPLOYMENT_KEY = "loom_deployment"  # the job metadata that names the deployment
QUICK_END_S = 60.0  # a job that ends sooner than this after its start counts towards the backoff
KEEP_ENDED = 5  # finished jobs of the deployment kept (their logs); older ones are deleted
_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class Step(StrEnum):
    """What the supervisor does after a look at the deployment's jobs."""

    SUBMIT = "submit"  # none runs: submit one (after the backoff, if the last one ended quickly)
    WAIT = "wait"  # one is pending or running: look again later


@dataclass(frozen=True, slots=True)
class Look:
    """What the Jobs API says of the deployment's jobs: the one to follow (the oldest not finished; None when
    all finished) with its status, the newer ones running beside it (to stop), how long the last finished one
    ran (seconds, when known), and the finished ones beyond :data:`KEEP_ENDED` (to delete)."""

    job: str | None
    status: str | None = None
    extra: tuple[str, ...] = ()
    last_ran_s: float | None = None
    expired: tuple[str, ...] = ()


def next_step(look: Look) -> Step:
    """The step after ``look``."""
    return Step.WAIT if look.job is not None else Step.SUBMIT


def next_attempt(attempt: int, ran_s: float | None) -> int:
    """The backoff attempt after a job ended: reset after a run of :data:`QUICK_END_S` or more, else one more."""
    return 0 if ran_s is not None and ran_s >= QUICK_END_S else attempt + 1


def read_jobs(jobs: list[Any], deployment: str, dead_nodes: frozenset[str] = frozenset()) -> Look:
    """A :class:`Look` at ``deployment``'s jobs among ``jobs`` (``JobDetails`` of the Jobs API). A job whose
    driver ran on a node in ``dead_nodes`` is over, whatever status Ray gives it: after a head is lost and a new
    one starts on the GCS's Redis, Ray 2.60 keeps calling the lost head's jobs RUNNING."""
    mine = sorted(
        (j for j in jobs if (j.metadata or {}).get(DEPLOYMENT_KEY) == deployment and j.submission_id),
        key=lambda j: (j.start_time or 0, j.submission_id),
    )
    live = [j for j in mine if str(j.status) not in _TERMINAL and j.driver_node_id not in dead_nodes]
    ended = [j for j in mine if str(j.status) in _TERMINAL]
    last = ended[-1] if ended else None
    ran = (last.end_time - last.start_time) / 1000 if last and last.end_time and last.start_time else None
    expired = tuple(j.submission_id for j in ended[:-KEEP_ENDED])
    if not live:
        return Look(None, None, (), ran, expired)
    return Look(live[0].submission_id, str(live[0].status), tuple(j.submission_id for j in live[1:]), ran, expired)


class JobsApi(Protocol):
    """What the supervisor needs of ``ray.job_submission.JobSubmissionClient``."""

    def list_jobs(self) -> list[Any]: ...
    def dead_nodes(self) -> frozenset[str]: ...
    def submit_job(
        self, *, entrypoint: str, submission_id: str, runtime_env: dict[str, Any] | None, metadata: dict[str, str]
    ) -> str: ...
    def stop_job(self, job_id: str) -> bool: ...
    def delete_job(self, job_id: str) -> bool: ...


class Supervisor:
    """Follows one deployment's jobs; see the module docstring."""

    def __init__(
        self,
        jobs: JobsApi,
        deployment: str,
        entrypoint: str,
        runtime_env: dict[str, Any] | None,
        poll_s: float,
        stop_timeout_s: float,
    ) -> None:
        self._jobs = jobs
        self.deployment = deployment
        self._entrypoint = entrypoint
        self._runtime_env = runtime_env
        self._poll_s = poll_s
        self._stop_timeout_s = stop_timeout_s
        self.stopping = False
        self._attempt = 0
        self._followed: tuple[str | None, str | None] = (None, None)
        self.submissions = 0

    def look(self) -> Look:
        """Ask the Jobs API about the deployment's jobs, stop the extra ones and delete the expired ones;
        raises ``RuntimeError``/``OSError`` when it does not answer."""
        look = read_jobs(self._jobs.list_jobs(), self.deployment, self._jobs.dead_nodes())
        for job in look.extra:
            log.warning("a second job of deployment %s runs (%s): stopping it", self.deployment, job)
            self._jobs.stop_job(job)
        for job in look.expired:
            self._jobs.delete_job(job)
        if (look.job, look.status) != self._followed and look.job is not None:
            log.info("job %s of deployment %s is %s", look.job, self.deployment, look.status)
        self._followed = (look.job, look.status)
        return look

    def run(self) -> None:
        """Keep one job running until :attr:`stopping`; then stop it and wait for its drain."""
        failures = 0
        while not self.stopping:
            try:
                look = self.look()
                if next_step(look) is Step.SUBMIT:
                    if self.submissions:
                        self._attempt = next_attempt(self._attempt, look.last_ran_s)
                        delay = backoff_delay(self._attempt - 1, base_s=1.0, cap_s=60.0) if self._attempt else 0.0
                        log.warning("no job of deployment %s runs; submitting one in %.1fs", self.deployment, delay)
                        self._sleep(delay)
                        if self.stopping or self.look().job is not None:
                            continue
                    self._submit()
                else:
                    self._sleep(self._poll_s)
                failures = 0
            except (RuntimeError, OSError) as exc:
                delay = backoff_delay(failures)
                failures += 1
                log.warning("Jobs API: %s: %s; retrying in %.1fs", type(exc).__name__, exc, delay)
                self._sleep(delay)
        self.stop()

    def _submit(self) -> None:
        job = f"loom-{self.deployment}-{time.time_ns():x}"
        self._jobs.submit_job(
            entrypoint=self._entrypoint,
            submission_id=job,
            runtime_env=self._runtime_env,
            metadata={DEPLOYMENT_KEY: self.deployment},
        )
        self.submissions += 1
        log.info("submitted job %s: %s", job, self._entrypoint)

    def stop(self) -> None:
        """Stop the deployment's jobs (SIGTERM to the driver: it drains) and wait up to the stop timeout."""
        log.info("stopping the jobs of deployment %s", self.deployment)
        deadline = time.monotonic() + self._stop_timeout_s
        try:
            while time.monotonic() < deadline:
                look = self.look()
                if look.job is None:
                    log.info("no job of deployment %s runs", self.deployment)
                    return
                for job in (look.job, *look.extra):
                    self._jobs.stop_job(job)
                time.sleep(min(1.0, self._poll_s))
        except (RuntimeError, OSError) as exc:
            log.warning("could not stop the jobs (%s: %s)", type(exc).__name__, exc)
            return
        log.warning("the jobs of deployment %s did not end within %.0fs", self.deployment, self._stop_timeout_s)

    def _sleep(self, seconds: float) -> None:
        """Sleep, waking early when a stop is asked for."""
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.2, deadline - time.monotonic()))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loom_ray.supervise",
        description="Keep one loom-ray driver of this deployment running on a Ray cluster; stop it on SIGTERM.",
    )
    parser.add_argument(
        "--address", default=None, help="the cluster's Jobs API (default: RAY_ADDRESS, else http://127.0.0.1:8265)"
    )
    parser.add_argument("--entrypoint", default="python -m loom_ray.main", help="the driver's command")
    parser.add_argument(
        "--runtime-env-json",
        default=None,
        help="the job's runtime environment, as for ray job submit (e.g. env_vars); on KubeRay the head's "
        "environment has the LOOM_* variables instead",
    )
    parser.add_argument("--poll-interval", type=float, default=2.0, help="seconds between looks at the job")
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=None,
        help="seconds to wait for the job's drain on SIGTERM (default LOOM_SHUTDOWN_TIMEOUT_S + 15)",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import os

    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
        runtime_env = json.loads(args.runtime_env_json) if args.runtime_env_json else None
    except (ConfigError, ValueError) as exc:
        print(f"loom-ray supervise: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    address = args.address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"
    stop_timeout = args.stop_timeout if args.stop_timeout is not None else settings.shutdown_timeout_s + 15
    supervisor = Supervisor(
        RayJobs(address),
        settings.deployment_name,
        args.entrypoint,
        runtime_env,
        args.poll_interval,
        stop_timeout,
    )

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        supervisor.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("supervising deployment %s on %s", supervisor.deployment, address)
    supervisor.run()
    return 0


class RayJobs:
    """:class:`JobsApi` on a cluster's dashboard: its Jobs API, and its state API for the dead nodes. The
    Jobs API client is made at the first call and again after a failure (it checks the cluster when it is
    made, so it cannot exist while the head is down)."""

    def __init__(self, address: str) -> None:
        self._address = address
        self._client: Any = None

    def _jobs(self) -> Any:
        from ray.job_submission import JobSubmissionClient

        if self._client is None:
            try:
                self._client = JobSubmissionClient(self._address)
            except Exception as exc:  # the client raises plain exceptions for an unreachable head
                raise OSError(f"cannot reach the Jobs API at {self._address}: {exc}") from exc
        return self._client

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._jobs(), method)(*args, **kwargs)
        except (ConnectionError, OSError):
            self._client = None
            raise

    def list_jobs(self) -> list[Any]:
        return list(self._call("list_jobs"))

    def submit_job(
        self, *, entrypoint: str, submission_id: str, runtime_env: dict[str, Any] | None, metadata: dict[str, str]
    ) -> str:
        return str(
            self._call(
                "submit_job",
                entrypoint=entrypoint,
                submission_id=submission_id,
                runtime_env=runtime_env,
                metadata=metadata,
            )
        )

    def stop_job(self, job_id: str) -> bool:
        return bool(self._call("stop_job", job_id))

    def delete_job(self, job_id: str) -> bool:
        return bool(self._call("delete_job", job_id))

    def dead_nodes(self) -> frozenset[str]:
        from ray.util.state import list_nodes

        try:
            found = list_nodes(address=self._address, limit=10_000, raise_on_missing_output=False)
        except Exception as exc:  # the state API raises its own client errors for an unreachable head
            raise OSError(f"cannot list the cluster's nodes at {self._address}: {exc}") from exc
        return frozenset(node.node_id for node in found if node.state == "DEAD")


if __name__ == "__main__":
    raise SystemExit(main())
