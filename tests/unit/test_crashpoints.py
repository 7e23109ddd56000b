"""The test-only stop point: a process stops itself once per request file, at the named point only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

_LOOP = "from loom_ray.crashpoints import crash_point\nwhile True:\n    crash_point('after_commit')\n"


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def _wait(condition: object, timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.01)
    return False


def test_a_request_file_stops_the_process_once_at_its_point(tmp_path: Path) -> None:
    env = {**os.environ, "LOOM_TEST_STOP_DIR": str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-c", _LOOP], env=env)
    try:
        other_point = tmp_path / f"{process.pid}.after_poll"
        other_point.touch()
        request = tmp_path / f"{process.pid}.after_commit"
        request.touch()
        assert _wait(lambda: _state(process.pid) == "T"), "the process did not stop"
        assert not request.exists(), "the request was not consumed"
        assert other_point.exists(), "a request for another point was consumed"
        os.kill(process.pid, signal.SIGCONT)
        assert _wait(lambda: _state(process.pid) != "T")
        time.sleep(0.2)
        assert _state(process.pid) != "T", "it stopped again without a new request"
    finally:
        process.kill()
        process.wait()
