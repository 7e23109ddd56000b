"""Integration fixtures: every test here is marked `integration` and may start a Ray head."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pipeline import wait_until


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.integration)


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[str]:
    """A `ray start --head --block` cluster, stopped by its pid; yields the job server's address."""
    from ray.job_submission import JobSubmissionClient

    ray_bin = Path(sys.executable).with_name("ray")
    temp_dir = tempfile.mkdtemp(prefix="lr-", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    dashboard_port = 28265
    head = subprocess.Popen(
        [
            str(ray_bin),
            "start",
            "--head",
            "--block",
            "--port=26379",
            f"--dashboard-port={dashboard_port}",
            "--dashboard-host=127.0.0.1",
            "--num-cpus=4",
            "--object-store-memory=200000000",
            "--include-dashboard=true",
            "--metrics-export-port=28080",
            f"--temp-dir={temp_dir}",
        ],
        stdout=(tmp_path / "head.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # Job drivers run `python` from PATH: the cluster's, as in a Ray image with loom-ray installed.
        env={**os.environ, "PATH": f"{ray_bin.parent}{os.pathsep}{os.environ['PATH']}"},
    )
    address = f"http://127.0.0.1:{dashboard_port}"

    def up() -> bool:
        assert head.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
        try:
            JobSubmissionClient(address).list_jobs()
        except Exception:
            return False
        return True

    try:
        wait_until(up, 120, "the Ray head's job server")
        yield address
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(30)
