"""Integration fixtures: every test here is marked `integration`; some start a Ray head of their own."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from loom_ray.migrate import migrate
from tests.support.pipeline import wait_until
from tests.support.services import Endpoints

RAY_BIN = Path(sys.executable).with_name("ray")
GCS_PORT = 26379
DASHBOARD_PORT = 28265
METRICS_PORT = 28080


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.integration)


def _start_head(
    log: Path, *args: str, env: dict[str, str] | None = None, port: int = GCS_PORT, temp_dir: str | None = None
) -> subprocess.Popen[bytes]:
    """`ray start --head --block` in its own process group (so it is stopped with everything it spawned).
    ``temp_dir`` is Ray's temp dir (default: a new one); its path must stay short (Ray's socket paths)."""
    temp_dir = temp_dir or tempfile.mkdtemp(prefix="lr-", dir="/tmp")
    return subprocess.Popen(
        [str(RAY_BIN), "start", "--head", "--block", f"--port={port}", f"--temp-dir={temp_dir}", *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # Job drivers run `python` from PATH: the cluster's, as in a Ray image with loom-ray installed.
        env={**os.environ, "PATH": f"{RAY_BIN.parent}{os.pathsep}{os.environ['PATH']}", **(env or {})},
    )


def _stop_head(head: subprocess.Popen[bytes]) -> None:
    """SIGTERM the head's process group, wait 2 s, then SIGKILL what is left of it (by process group, never by
    name). Runs at the teardown of every fixture that started a head."""
    for sig, grace in ((signal.SIGTERM, 2), (signal.SIGKILL, 30)):
        try:
            os.killpg(head.pid, sig)
            head.wait(grace)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_for(head: subprocess.Popen[bytes], log: Path, ready: str) -> None:
    def up() -> bool:
        assert head.poll() is None, log.read_text()[-3000:]
        return (
            subprocess.run(
                [str(RAY_BIN), "status", f"--address=127.0.0.1:{GCS_PORT}"], capture_output=True, text=True
            ).stdout.find(ready)
            >= 0
        )

    wait_until(up, 120, "the Ray head")


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `ray start --head` cluster with the job server and metrics port; yields the job server's address.
    One per test module (its start and the job agent's readiness are most of a test that uses it); a module
    puts the tests that use it last, so that no local Ray of another test runs beside it. Each job on it
    removes its own coordinator when it ends."""
    from ray.job_submission import JobSubmissionClient

    log = tmp_path_factory.mktemp("ray-head") / "head.log"
    head = _start_head(
        log,
        f"--dashboard-port={DASHBOARD_PORT}",
        "--dashboard-host=127.0.0.1",
        "--num-cpus=4",
        "--object-store-memory=200000000",
        "--include-dashboard=true",
        f"--metrics-export-port={METRICS_PORT}",
    )
    address = f"http://127.0.0.1:{DASHBOARD_PORT}"

    def up() -> bool:
        assert head.poll() is None, log.read_text()[-3000:]
        try:
            JobSubmissionClient(address).list_jobs()
        except Exception:
            return False
        return True

    try:
        wait_until(up, 120, "the Ray head's job server")
        yield address
    finally:
        _stop_head(head)


@pytest.fixture
def autoscaling_cluster(tmp_path: Path) -> Iterator[str]:
    """A fake multi-node Ray cluster whose autoscaler launches 1-CPU `consumers` nodes on demand (at most 3)
    and removes them after 6 s idle: KubeRay's autoscaler on one machine (ray-facts.md §1). Yields the GCS
    address. The worker "pods" are raylets in the head's process group, stopped with it."""
    config = {
        "cluster_name": "fake_multinode",
        "max_workers": 3,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"127.0.0.1:{GCS_PORT}",
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "consumers": {
                "resources": {"CPU": 1, "object_store_memory": 100 * 1024**2},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 3,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,
        "file_mounts_sync_continuously": False,
        **{
            key: []
            for key in (
                "initialization_commands",
                "setup_commands",
                "head_setup_commands",
                "worker_setup_commands",
                "head_start_ray_commands",
                "worker_start_ray_commands",
                "cluster_synced_files",
                "rsync_exclude",
                "rsync_filter",
            )
        },
    }
    config_file = tmp_path / "autoscaling.json"
    config_file.write_text(json.dumps(config))
    log = tmp_path / "head.log"
    head = _start_head(
        log,
        "--num-cpus=0",
        "--object-store-memory=100000000",
        "--include-dashboard=false",
        f"--autoscaling-config={config_file}",
        env={"AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1"},
    )
    try:
        _wait_for(head, log, "ray.head.default")
        yield f"127.0.0.1:{GCS_PORT}"
    finally:
        _stop_head(head)


def active_nodes(address: str, node_type: str) -> int:
    """How many nodes of ``node_type`` the autoscaler reports active (`ray status`)."""
    status = subprocess.run([str(RAY_BIN), "status", f"--address={address}"], capture_output=True, text=True).stdout
    active = status.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return sum(int(line.split()[0]) for line in active.splitlines() if line.strip().endswith(f" {node_type}"))


Body = Callable[[str, asyncpg.Connection], Awaitable[None]]


@pytest.fixture
def in_schema(endpoints: Endpoints) -> Iterator[Callable[[Body], None]]:
    """Runs ``body(schema, conn)`` in a new schema with loom-ray's tables (``conn`` has it on its search_path);
    the schemas are dropped afterwards."""
    names: list[str] = []

    async def run(body: Body) -> None:
        names.append(f"loom_test_{uuid.uuid4().hex[:10]}")
        conn = await asyncpg.connect(endpoints.dsn, server_settings={"search_path": names[-1]})
        try:
            await migrate(conn, schema=names[-1])
            await body(names[-1], conn)
        finally:
            await conn.close()

    yield lambda body: asyncio.run(run(body))

    async def drop() -> None:
        conn = await asyncpg.connect(endpoints.dsn)
        try:
            for name in names:
                await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        finally:
            await conn.close()

    asyncio.run(drop())
