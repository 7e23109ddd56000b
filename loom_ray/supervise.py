"""Keeps exactly one driver of a deployment running on a Ray cluster: ``python -m loom_ray.supervise``.

Runs as a process of its own (on Kubernetes, a one-replica Deployment beside the RayCluster: kuberay/). It
submits ``python -m loom_ray.main`` to the cluster's Jobs API under a fixed submission id, ``loom-<deployment>``
(LOOM_DEPLOYMENT, or the name derived from the settings), follows it, and when the job ends for any reason
(the driver exited, the head restarted, ``ray job stop`` by hand) deletes the finished job and submits it
again, waiting longer each time it ends again quickly. The fixed id means a second submission of the same
deployment is refused by Ray instead of starting a second driver. On SIGTERM or SIGINT it stops the job (the
driver drains within LOOM_SHUTDOWN_TIMEOUT_S and removes its coordinator), waits for it to end and exits 0:
stopping the supervisor stops ingestion.

The decision at each look is :func:`next_step` (pure); :class:`Supervisor` only asks the Jobs API and acts.
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
QUICK_END_S = 60.0  # a job that ends sooner than this after its submission counts towards the backoff


class Step(StrEnum):
    """What the supervisor does after a look at the job."""

    SUBMIT = "submit"  # no such job: submit it
    WAIT = "wait"  # pending or running: look again later
    RESUBMIT = "resubmit"  # it ended: delete it, then submit it again after the backoff


@dataclass(frozen=True, slots=True)
class Look:
    """What the Jobs API says of the job: None when it has none by that id; else its status, whether that is
    terminal, and how long it ran (seconds from submission to its end, when it ended)."""

    status: str | None
    terminal: bool = False
    ran_s: float | None = None


def next_step(look: Look) -> Step:
    """The step after ``look``."""
    if look.status is None:
        return Step.SUBMIT
    return Step.RESUBMIT if look.terminal else Step.WAIT


def next_attempt(attempt: int, ran_s: float | None) -> int:
    """The backoff attempt after a job ended: reset after a run of :data:`QUICK_END_S` or more, else one more."""
    return 0 if ran_s is not None and ran_s >= QUICK_END_S else attempt + 1


class JobsApi(Protocol):
    """What the supervisor needs of ``ray.job_submission.JobSubmissionClient``."""

    def list_jobs(self) -> list[Any]: ...
    def submit_job(self, *, entrypoint: str, submission_id: str, runtime_env: dict[str, Any] | None) -> str: ...
    def stop_job(self, job_id: str) -> bool: ...
    def delete_job(self, job_id: str) -> bool: ...


class Supervisor:
    """Follows one deployment's job; see the module docstring."""

    def __init__(
        self,
        jobs: JobsApi,
        submission_id: str,
        entrypoint: str,
        runtime_env: dict[str, Any] | None,
        poll_s: float,
        stop_timeout_s: float,
    ) -> None:
        self._jobs = jobs
        self.submission_id = submission_id
        self._entrypoint = entrypoint
        self._runtime_env = runtime_env
        self._poll_s = poll_s
        self._stop_timeout_s = stop_timeout_s
        self.stopping = False
        self._attempt = 0
        self._last_status: str | None = None
        self.submissions = 0

    def look(self) -> Look:
        """Ask the Jobs API about the job; raises ``RuntimeError``/``OSError`` when it does not answer."""
        info = next((job for job in self._jobs.list_jobs() if job.submission_id == self.submission_id), None)
        if info is None:
            return Look(None)
        status = str(info.status)
        terminal = status in ("SUCCEEDED", "FAILED", "STOPPED")
        ran = None
        if terminal and info.end_time and info.start_time:
            ran = (info.end_time - info.start_time) / 1000
        if status != self._last_status:
            log.info("job %s is %s%s", self.submission_id, status, f": {info.message}" if info.message else "")
            self._last_status = status
        return Look(status, terminal, ran)

    def run(self) -> None:
        """Keep the job running until :attr:`stopping`; then stop it and wait for its drain."""
        failures = 0
        while not self.stopping:
            try:
                look = self.look()
                step = next_step(look)
                if step is Step.RESUBMIT:
                    self._attempt = next_attempt(self._attempt, look.ran_s)
                    delay = backoff_delay(self._attempt - 1, base_s=1.0, cap_s=60.0) if self._attempt else 0.0
                    log.warning(
                        "job %s ended (%s); submitting it again in %.1fs", self.submission_id, look.status, delay
                    )
                    self._sleep(delay)
                    if self.stopping:
                        break
                    self._jobs.delete_job(self.submission_id)
                    self._submit()
                elif step is Step.SUBMIT:
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
        try:
            self._jobs.submit_job(
                entrypoint=self._entrypoint, submission_id=self.submission_id, runtime_env=self._runtime_env
            )
        except RuntimeError:
            if self.look().status is None:
                raise
            # Someone else (another supervisor of this deployment, in a rollout) submitted it first: follow it.
            log.warning("job %s was submitted by someone else; following it", self.submission_id)
            return
        self.submissions += 1
        self._last_status = None
        log.info("submitted job %s: %s", self.submission_id, self._entrypoint)

    def stop(self) -> None:
        """Stop the job (SIGTERM to the driver: it drains) and wait up to the stop timeout for it to end."""
        log.info("stopping job %s", self.submission_id)
        deadline = time.monotonic() + self._stop_timeout_s
        try:
            self._jobs.stop_job(self.submission_id)
            while time.monotonic() < deadline:
                look = self.look()
                if look.status is None or look.terminal:
                    log.info("job %s ended: %s", self.submission_id, look.status)
                    return
                time.sleep(min(1.0, self._poll_s))
        except (RuntimeError, OSError) as exc:
            log.warning("could not stop job %s (%s: %s)", self.submission_id, type(exc).__name__, exc)
            return
        log.warning("job %s did not end within %.0fs", self.submission_id, self._stop_timeout_s)

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

    from ray.job_submission import JobSubmissionClient

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
        _LazyClient(address, JobSubmissionClient),
        f"loom-{settings.deployment_name}",
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
    log.info("supervising job %s on %s", supervisor.submission_id, address)
    supervisor.run()
    return 0


class _LazyClient:
    """The Jobs API client, made at the first call and made again after a failure (the client checks the
    cluster when it is made, so it cannot exist while the head is down)."""

    def __init__(self, address: str, factory: Any) -> None:
        self._address = address
        self._factory = factory
        self._client: Any = None

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self._client is None:
                try:
                    self._client = self._factory(self._address)
                except Exception as exc:  # the client raises plain exceptions for an unreachable head
                    raise OSError(f"cannot reach the Jobs API at {self._address}: {exc}") from exc
            try:
                return getattr(self._client, name)(*args, **kwargs)
            except (ConnectionError, OSError):
                self._client = None
                raise

        return call


if __name__ == "__main__":
    raise SystemExit(main())
