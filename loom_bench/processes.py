"""Starting and stopping a system's processes, each in its own session, always by process group id."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from loom_bench.systems import parse_result


@dataclass
class Running:
    """The processes of one run and their log files."""

    processes: list[subprocess.Popen[bytes]]
    logs: list[Path]

    @property
    def handles(self) -> list[psutil.Process]:
        return [psutil.Process(p.pid) for p in self.processes]

    def alive(self) -> bool:
        return any(p.poll() is None for p in self.processes)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to every process group this run started."""
        for process in self.processes:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass

    def results(self) -> list[dict[str, object]]:
        """Each process's ``BENCH-RESULT`` line (empty if it printed none)."""
        return [parse_result(log.read_text(errors="replace")) for log in self.logs]

    def exit_codes(self) -> list[int | None]:
        return [p.poll() for p in self.processes]


def start(commands: list[list[str]], env: dict[str, str], log_stem: Path) -> Running:
    """Start every command in a new session, output to ``<log_stem>-p<i>.log``."""
    log_stem.parent.mkdir(parents=True, exist_ok=True)
    processes, logs = [], []
    for index, command in enumerate(commands):
        log = log_stem.with_name(f"{log_stem.name}-p{index}.log")
        with log.open("wb") as out:
            processes.append(
                subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            )
        logs.append(log)
    return Running(processes, logs)


def wait(running: Running, timeout_s: float, done: Callable[[], bool] | None = None, poll_s: float = 0.5) -> bool:
    """Wait until every process exits, or until ``done()`` (then SIGTERM them); False on timeout."""
    deadline = time.monotonic() + timeout_s
    while running.alive():
        if time.monotonic() > deadline:
            return False
        if done is not None and done():
            return stop(running)
        time.sleep(poll_s)
    return True


def stop(running: Running, grace_s: float = 60.0) -> bool:
    """SIGTERM, wait up to ``grace_s`` for a clean exit; True if it was clean."""
    running.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while running.alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    clean = not running.alive()
    kill(running)
    return clean


def kill(running: Running) -> None:
    """SIGKILL whatever is left in the run's process groups (a local Ray's leftovers) and reap."""
    running.signal(signal.SIGKILL)
    for process in running.processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            pass
