"""The head's loss survived (issue 19): a two-node Ray cluster whose GCS keeps its state in a real Redis
(Debian's ``redis-server``, with a password), as ``kuberay/raycluster.yaml``'s ``gcsFaultToleranceOptions``
configure it. The supervisor keeps a driver running; mid-ingestion the head's processes are killed
(``SIGKILL`` of its process group) and a new head is started on the same Redis, as KubeRay starts a new head
pod. Without a person, ingestion resumes: the GCS restarts the coordinator on the new head, the coordinator
starts new consumers on the worker node, the supervisor submits a new driver, and every offset is stored
exactly once (the accounting of ``tests/support/pipeline.py``, duplicates counted from ``loom_audit``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import DASHBOARD_PORT, GCS_PORT, RAY_BIN, _start_head, _stop_head
from tests.support.pipeline import account, committed, fill, pipeline_env, terminate_group, wait_until
from tests.support.services import ROOT, Endpoints

REDIS_PORT = 26390
JOBS = f"http://127.0.0.1:{DASHBOARD_PORT}"


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[str]:
    """A Redis with a password, in memory only; its password."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (scripts/bootstrap.sh installs Debian's where it can)")
    password = secrets.token_hex(16)
    process = subprocess.Popen(
        [binary, "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--requirepass", password, "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=(tmp_path / "redis.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(
            lambda: subprocess.run(
                ["redis-cli", "-p", str(REDIS_PORT), "-a", password, "--no-auth-warning", "ping"],
                capture_output=True, text=True,
            ).stdout.strip() == "PONG",
            30, "Redis",
        )  # fmt: skip
        yield password
    finally:
        process.terminate()
        process.wait(30)


def _head(log: Path, password: str) -> subprocess.Popen[bytes]:
    """A head on the Redis, as a new head pod would start: its own temp dir, no CPU for consumers, the
    coordinator's resource, the Jobs API."""
    return _start_head(
        log,
        "--num-cpus=0",
        '--resources={"loom_coordinator": 1}',
        "--object-store-memory=100000000",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={DASHBOARD_PORT}",
        f"--redis-password={password}",
        env={"RAY_REDIS_ADDRESS": f"127.0.0.1:{REDIS_PORT}", "RAY_external_storage_namespace": "loom-head-loss"},
        temp_dir=tempfile.mkdtemp(prefix="lh-", dir="/tmp"),
    )


def _kill_pod(head: subprocess.Popen[bytes]) -> None:
    """SIGKILL the head and every process it started, by pid, as a pod's end kills its whole container (the
    job's driver runs in a session of its own, so its process group alone would not)."""
    import psutil

    for process in [*psutil.Process(head.pid).children(recursive=True), psutil.Process(head.pid)]:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    head.wait(30)


def _jobs_api_up(head: subprocess.Popen[bytes], log: Path) -> bool:
    from ray.job_submission import JobSubmissionClient

    assert head.poll() is None, log.read_text()[-3000:]
    try:
        JobSubmissionClient(JOBS).list_jobs()
    except Exception:
        return False
    return True


def test_the_heads_loss_is_survived_on_redis(endpoints: Endpoints, topic_name: str, redis: str, tmp_path: Path) -> None:
    head_log = tmp_path / "head.log"
    head = _head(head_log, redis)
    worker: subprocess.Popen[bytes] | None = None
    supervisor: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: _jobs_api_up(head, head_log), 120, "the head's Jobs API")
        with (tmp_path / "worker.log").open("wb") as out:
            worker = subprocess.Popen(
                [str(RAY_BIN), "start", "--block", f"--address=127.0.0.1:{GCS_PORT}", "--num-cpus=2",
                 "--object-store-memory=100000000", f"--temp-dir={tempfile.mkdtemp(prefix='lw-', dir='/tmp')}"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                # The worker waits this long for a GCS that went away before it gives up (KubeRay sets 600 s).
                env={**os.environ, "RAY_gcs_rpc_server_reconnect_timeout_s": "300"},
            )  # fmt: skip
        env = pipeline_env(endpoints, topic_name, min_actors=2, max_actors=2, actor_num_cpus=1, deployment="ha")
        job_env = {k: v for k, v in env.items() if k.startswith(("LOOM_", "RAY_AUTH")) or k == "PYTHONPATH"}
        log = tmp_path / "supervise.log"
        with log.open("wb") as out:
            supervisor = subprocess.Popen(
                [sys.executable, "-m", "loom_ray.supervise", "--address", JOBS, "--poll-interval", "0.5",
                 "--runtime-env-json", json.dumps({"env_vars": job_env})],
                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        running = (supervisor, log)
        fill(endpoints, topic_name, 4_000, partitions=4)
        wait_until(lambda: committed(endpoints, topic_name) >= 2_000, 240, "ingestion on the worker", running=running)
        fill(endpoints, topic_name, 4_000, partitions=4)  # a backlog while the head is gone

        _kill_pod(head)  # the head pod dies: every process in it, the job's driver too (in a session of its own)
        head = _head(head_log, redis)  # KubeRay starts a new one on the same Redis
        wait_until(lambda: _jobs_api_up(head, head_log), 180, "the new head's Jobs API")
        wait_until(lambda: log.read_text().count("submitted job") == 2, 180, "a new driver", running=running)
        wait_until(lambda: committed(endpoints, topic_name) == 8_000, 300, "ingestion to resume", running=running)
        fill(endpoints, topic_name, 1_000, partitions=4)
        wait_until(lambda: committed(endpoints, topic_name) == 9_000, 180, "ingestion after the loss", running=running)
        assert worker.poll() is None, "the worker node gave up on the GCS"
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(120) == 0, log.read_text()[-3000:]
    finally:
        if supervisor is not None:
            terminate_group(supervisor)
        if worker is not None:
            _stop_head(worker)
        _stop_head(head)
    result = account(endpoints, topic_name)
    assert result.exact, str(result)
    assert result.max_epoch >= 2  # claimed again after the loss, under a new epoch
