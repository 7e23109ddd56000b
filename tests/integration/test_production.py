"""Kept running without a person, and kept apart (issue 19), each mechanism with the real processes.

One ``ray start --head`` with 2 CPUs and the Jobs API serves the module's tests, in order:

- the supervisor (``python -m loom_ray.supervise``) keeps one driver running: started while PostgreSQL does
  not answer (the driver waits for it), the job stopped by hand, the driver killed: each time one driver comes
  back, joining the one coordinator; SIGTERM to the supervisor stops ingestion;
- two deployments on one head: each stores exactly its own records and stopping one leaves the other; a third
  whose topic another live deployment ingests is refused; a driver started while the previous one of its
  deployment drains ends with one live coordinator;
- coordination never waits on placement: three consumers of 1 CPU on a head of 2, two run and take every
  partition, the third is shown pending, and the drain finishes in time;
- a node going away (a worker pod's ``preStop``, ``ctl release-node``) hands its consumers' partitions over;
- last, SIGTERM as a kubelet sends it: the head pod's ``preStop`` (``python -m loom_ray.ctl stop-jobs --wait``)
  drains the job and its summary is printed, then the head is stopped.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import DASHBOARD_PORT, GCS_PORT, _start_head, _stop_head
from tests.support.pipeline import (
    account,
    committed,
    fill,
    pipeline_env,
    start_main,
    stop_group,
    terminate_group,
    wait_until,
)
from tests.support.services import ROOT, Endpoints
from tests.support.tcp_proxy import TcpProxy

JOBS = f"http://127.0.0.1:{DASHBOARD_PORT}"


@dataclass
class Head:
    """The module's Ray head: its GCS address (drivers, ctl) and Jobs API."""

    gcs: str
    jobs: str
    process: subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    """``ray start --head --block`` with 2 CPUs and the dashboard (the Jobs API), as KubeRay runs a head."""
    from ray.job_submission import JobSubmissionClient

    log = tmp_path_factory.mktemp("prod-head") / "head.log"
    process = _start_head(
        log,
        "--num-cpus=2",
        "--object-store-memory=100000000",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={DASHBOARD_PORT}",
    )

    def up() -> bool:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            JobSubmissionClient(JOBS).list_jobs()
        except Exception:
            return False
        return True

    try:
        wait_until(up, 120, "the Ray head's Jobs API")
        yield Head(f"127.0.0.1:{GCS_PORT}", JOBS, process, log)
    finally:
        _stop_head(process)


def _job_env(env: dict[str, str]) -> dict[str, str]:
    """What a job submitted to the head needs of a test's environment: the LOOM_* settings and the checkout."""
    return {k: v for k, v in env.items() if k.startswith(("LOOM_", "RAY_AUTH")) or k == "PYTHONPATH"}


def _ctl(head: Head, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_ADDRESS": head.gcs, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "loom_ray.ctl", *args], env=env, capture_output=True, text=True, timeout=timeout_s
    )


def _coordinators(head: Head) -> list[str]:
    """The deployments whose coordinator runs on the head, as ``ctl deployments`` lists them."""
    answer = _ctl(head, "deployments")
    assert answer.returncode == 0, answer.stderr[-2000:]
    return answer.stdout.split()


def _jobs(head: Head) -> list[Any]:
    from ray.job_submission import JobSubmissionClient

    return list(JobSubmissionClient(head.jobs).list_jobs())


def _live(head: Head, deployment: str) -> str | None:
    """The job of ``deployment`` that runs (or is pending), as the supervisor sees it."""
    from loom_ray.supervise import read_jobs

    return read_jobs(_jobs(head), deployment).job


def _logs(head: Head, job: str | None) -> str:
    from ray.job_submission import JobSubmissionClient

    return "" if job is None else JobSubmissionClient(head.jobs).get_job_logs(job)


def _driver_pid(head: Head, deployment: str) -> int | None:
    """The pid the running driver of ``deployment`` logged, once it logged it."""
    found = re.search(r"driver pid=(\d+)", _logs(head, _live(head, deployment)))
    return None if found is None else int(found.group(1))


def test_the_supervisor_keeps_one_driver_running_and_stops_it(
    endpoints: Endpoints, topic_name: str, head: Head, tmp_path: Path
) -> None:
    host, port = endpoints.dsn.rsplit("@", 1)[1].split("/", 1)[0].split(":")
    proxy = TcpProxy(host, int(port)).start()
    proxy.cut()  # PostgreSQL does not answer when the first driver starts
    dsn = endpoints.dsn.replace(f"{host}:{port}", f"127.0.0.1:{proxy.port}")
    env = pipeline_env(endpoints, topic_name, db_dsn=dsn, min_actors=1, max_actors=1, deployment="supervised")
    fill(endpoints, topic_name, 2_000, partitions=4)
    log = tmp_path / "supervise.log"
    runtime_env = json.dumps({"env_vars": _job_env(env)})
    with log.open("wb") as out:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "loom_ray.supervise", "--address", head.jobs, "--poll-interval", "0.5",
             "--runtime-env-json", runtime_env],
            env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    running = (supervisor, log)
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(head.jobs)
    try:
        wait_until(lambda: _live(head, "supervised") is not None, 180, "the job to run", running=running)
        wait_until(
            lambda: "PostgreSQL does not answer" in _logs(head, _live(head, "supervised")), 120, "the driver to wait"
        )
        proxy.restore()
        wait_until(lambda: committed(endpoints, topic_name) == 2_000, 180, "the backlog", running=running)

        first = _live(head, "supervised")
        assert first is not None
        client.stop_job(first)  # by hand: another one comes
        wait_until(lambda: log.read_text().count("submitted job") == 2, 120, "a second submission", running=running)
        fill(endpoints, topic_name, 1_000, partitions=4)
        wait_until(lambda: committed(endpoints, topic_name) == 3_000, 180, "the second batch", running=running)

        wait_until(lambda: _driver_pid(head, "supervised") is not None, 120, "the second driver's pid")
        os.kill(_driver_pid(head, "supervised") or 0, signal.SIGKILL)  # the driver killed: another one joins
        wait_until(lambda: log.read_text().count("submitted job") == 3, 120, "a third submission", running=running)
        wait_until(
            lambda: "coordinator loom-coordinator-supervised attached" in _logs(head, _live(head, "supervised")),
            120,
            "the third driver to join the coordinator",
        )
        fill(endpoints, topic_name, 1_000, partitions=4)
        wait_until(lambda: committed(endpoints, topic_name) == 4_000, 180, "the third batch", running=running)
        assert _coordinators(head) == ["supervised"]  # one coordinator all along: joined by each driver
        assert str(client.get_job_status(first)) == "STOPPED"
        last = _live(head, "supervised")

        supervisor.send_signal(signal.SIGTERM)  # stopping the supervisor stops ingestion
        assert supervisor.wait(120) == 0, log.read_text()[-3000:]
    finally:
        terminate_group(supervisor)
        proxy.stop()
    assert last is not None and str(client.get_job_status(last)) == "STOPPED"
    assert "summary: " in client.get_job_logs(last)  # the driver drained
    assert _live(head, "supervised") is None
    wait_until(lambda: _coordinators(head) == [], 60, "the coordinator to be removed")
    result = account(endpoints, topic_name)
    assert result.exact, str(result)


def _env(endpoints: Endpoints, head: Head, topics: str, **overrides: Any) -> dict[str, str]:
    """A driver's environment on the module's head: one small consumer unless said otherwise."""
    env = pipeline_env(endpoints, topics, **{"min_actors": 1, "max_actors": 1, **overrides})
    env["RAY_ADDRESS"] = head.gcs
    return env


def _exit_code(process: subprocess.Popen[bytes], log: Path, timeout_s: float = 180) -> int:
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the driver did not exit:\n{log.read_text()[-3000:]}") from None


def test_deployments_on_one_head_are_each_their_own(
    endpoints: Endpoints, topic_name: str, head: Head, tmp_path: Path
) -> None:
    a, b = f"{topic_name}-a", f"{topic_name}-b"
    fill(endpoints, a, 1_000, partitions=2)
    fill(endpoints, b, 500, partitions=2)
    first = start_main(_env(endpoints, head, a), log=tmp_path / "a.log")
    try:
        wait_until(lambda: committed(endpoints, a) == 1_000, 180, "deployment a", running=(first, tmp_path / "a.log"))
        # b beside it, to the end: it stores its own records and its exit stops its own coordinator only.
        second = start_main(_env(endpoints, head, b), "--exit-when-drained", log=tmp_path / "b.log")
        assert _exit_code(second, tmp_path / "b.log") == 0
        assert "summary: messages=500 " in (tmp_path / "b.log").read_text()
        fill(endpoints, a, 500, partitions=2)
        wait_until(
            lambda: committed(endpoints, a) == 1_500, 180, "a still ingesting", running=(first, tmp_path / "a.log")
        )

        # A deployment whose topics overlap a live one's is refused, naming it.
        overlapping = start_main(_env(endpoints, head, f"{a},{b}"), log=tmp_path / "ab.log")
        assert _exit_code(overlapping, tmp_path / "ab.log") == 2
        refusal = (tmp_path / "ab.log").read_text()
        deployment_a = _coordinators(head)[0]
        assert f"deployment {deployment_a} (topics {a}" in refusal and f"already ingests {a}" in refusal

        # a's driver killed: its coordinator ingests on. Started again with a topic added (another deployment by
        # its derived name), it is refused rather than joining with the old settings; with its name given, it
        # replaces the coordinator after a drain, and reads the new topic too.
        stop_group(first)
        fill(endpoints, a, 100, partitions=2)
        wait_until(lambda: committed(endpoints, a) == 1_600, 120, "the orphaned coordinator ingesting")
        added = start_main(_env(endpoints, head, f"{a},{b}-new"), log=tmp_path / "added.log")
        assert _exit_code(added, tmp_path / "added.log") == 2
        fill(endpoints, f"{b}-new", 300, partitions=1)
        renamed = _env(endpoints, head, f"{a},{b}-new", deployment=deployment_a)
        replacing = start_main(renamed, "--exit-when-drained", log=tmp_path / "replace.log")
        assert _exit_code(replacing, tmp_path / "replace.log") == 0
        text = (tmp_path / "replace.log").read_text()
        assert f"deployment {deployment_a} runs with other settings" in text, text[-3000:]
        assert committed(endpoints, f"{b}-new") == 300
        assert _coordinators(head) == []
    finally:
        stop_group(first)
    for topic in (a, b, f"{b}-new"):
        result = account(endpoints, topic)
        assert result.exact, f"{topic}: {result}"


def test_a_driver_started_while_the_previous_one_drains_ends_with_one_live_coordinator(
    endpoints: Endpoints, topic_name: str, head: Head, tmp_path: Path
) -> None:
    fill(endpoints, topic_name, 1_000, partitions=2)
    env = _env(endpoints, head, topic_name)
    old = start_main(env, log=tmp_path / "old.log")
    new: subprocess.Popen[bytes] | None = None
    try:
        wait_until(
            lambda: committed(endpoints, topic_name) == 1_000, 180, "the backlog", running=(old, tmp_path / "old.log")
        )
        old.send_signal(signal.SIGTERM)  # it drains and removes its coordinator ...
        new = start_main(env, log=tmp_path / "new.log")  # ... while the next one starts (a quick re-apply)
        assert _exit_code(old, tmp_path / "old.log") == 0
        fill(endpoints, topic_name, 500, partitions=2)
        wait_until(
            lambda: committed(endpoints, topic_name) == 1_500,
            180,
            "the new driver ingesting",
            running=(new, tmp_path / "new.log"),
        )
        assert len(_coordinators(head)) == 1
        assert "coordinator not answering" not in (tmp_path / "new.log").read_text()
        new.send_signal(signal.SIGTERM)
        assert _exit_code(new, tmp_path / "new.log") == 0
    finally:
        stop_group(old)
        if new is not None:
            stop_group(new)
    assert _coordinators(head) == []
    result = account(endpoints, topic_name)
    assert result.exact, str(result)


def test_coordination_never_waits_on_placement(
    endpoints: Endpoints, topic_name: str, head: Head, tmp_path: Path
) -> None:
    """Three consumers of 1 CPU asked of a head with 2: two run and take every partition, the third waits to
    be placed, shown as pending, and neither holds the rounds nor the drain."""
    fill(endpoints, topic_name, 3_000, partitions=4)
    env = _env(endpoints, head, topic_name, min_actors=3, max_actors=3, actor_num_cpus=1, shutdown_timeout_s=15)
    log = tmp_path / "main.log"
    process = start_main(env, log=log)
    try:
        wait_until(
            lambda: committed(endpoints, topic_name) == 3_000, 180, "every partition drained", running=(process, log)
        )
        wait_until(
            lambda: "2 actors, 1 actors pending (waiting" in log.read_text(),
            60,
            "the pending consumer shown",
            running=(process, log),
        )
        status = json.loads(_ctl(head, "status").stdout)
        assert len(status["actors"]) == 2 and len(status["pending"]) == 1 and status["assigned"] == 4
        assert "failed to start" not in log.read_text()  # not killed and asked for again in a loop
        process.send_signal(signal.SIGTERM)
        assert _exit_code(process, log, 15 + 30) == 0
    finally:
        stop_group(process)
    assert "summary: " in log.read_text()
    assert "did not drain in time" not in log.read_text()
    result = account(endpoints, topic_name)
    assert result.exact, str(result)


def test_a_node_going_away_hands_its_consumers_partitions_over(
    endpoints: Endpoints, topic_name: str, head: Head, tmp_path: Path
) -> None:
    """A worker pod's preStop (``ctl release-node``): the consumers on this node flush and release their
    partitions, stop, and the next round starts others; nothing is fenced, nothing read twice."""
    fill(endpoints, topic_name, 2_000, partitions=4)
    log = tmp_path / "main.log"
    process = start_main(_env(endpoints, head, topic_name, min_actors=2, max_actors=2), log=log)
    try:
        wait_until(lambda: committed(endpoints, topic_name) == 2_000, 180, "the backlog", running=(process, log))
        released = _ctl(head, "release-node")
        assert released.returncode == 0, released.stderr[-2000:]
        assert re.search(r"2 consumers on node \S+ handed over and stopped", released.stdout), released.stdout
        fill(endpoints, topic_name, 1_000, partitions=4)
        wait_until(lambda: committed(endpoints, topic_name) == 3_000, 180, "new consumers", running=(process, log))
        process.send_signal(signal.SIGTERM)
        assert _exit_code(process, log) == 0
    finally:
        stop_group(process)
    text = log.read_text()
    assert "fenced" not in text, "a clean hand-over must not need fencing"
    result = account(endpoints, topic_name)
    assert result.exact, str(result)


def test_sigterm_as_a_kubelet_sends_it_drains_through_the_head_prestop(
    endpoints: Endpoints, topic_name: str, head: Head, tmp_path: Path
) -> None:
    """The head pod's preStop (``ctl stop-jobs --wait``) stops the job, which drains and prints its summary;
    then the head gets SIGTERM. Last in the module: it stops the module's head."""
    from ray.job_submission import JobSubmissionClient

    fill(endpoints, topic_name, 2_000, partitions=2)
    client = JobSubmissionClient(head.jobs)
    job = client.submit_job(
        entrypoint="python -m loom_ray.main", runtime_env={"env_vars": _job_env(_env(endpoints, head, topic_name))}
    )
    wait_until(lambda: committed(endpoints, topic_name) == 2_000, 180, "the job ingesting")
    pre_stop = _ctl(head, "stop-jobs", "--jobs-address", head.jobs, "--wait", "--timeout", "60")
    assert pre_stop.returncode == 0, pre_stop.stderr[-2000:]
    assert f"stopping job {job}" in pre_stop.stdout
    assert str(client.get_job_status(job)) == "STOPPED"
    assert "summary: messages=2000 " in client.get_job_logs(job)
    _stop_head(head.process)  # the kubelet's SIGTERM, then its SIGKILL: nothing is left to drain by then
    result = account(endpoints, topic_name)
    assert result.exact, str(result)
