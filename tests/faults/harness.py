"""Run the real job and the load generator as users do, and find the processes a fault should hit.

:class:`Job` starts ``python -m loom_ray.main`` in a session of its own (``setsid``) with its own Ray temp
folder (``RAY_TMPDIR``: Ray's session logs and sockets stay apart from other runs on the machine), and only
ever signals processes of its own sessions. Consumer actors are found by their PostgreSQL
``application_name`` (``loom-ray <name> pid=<pid>``); the coordinator by ``loom-coordinator pid=<pid>``, or,
if its name carries no pid, by the local socket that owns its connection's ``client_port``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import psutil

from tests.faults.producer import Producer, env_float, env_int
from tests.faults.stack import FaultStack
from tests.support.pipeline import high_watermarks, pipeline_env, start_main, stop_group, wait_until
from tests.support.services import ROOT, Endpoints

P = TypeVar("P", bound=Producer)

_APP_PID = re.compile(r"^loom-ray (\S+) pid=(\d+)$")
_COORDINATOR_PID = re.compile(r"^loom-coordinator pid=(\d+)$")


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def start_live(job: Job, default_messages: int, seed: int, rate: float = 4000) -> tuple[Producer, float]:
    """Start the job on an empty topic, then loadgen once every partition is claimed.

    Returns the producer and the time it started (``time.monotonic()``), for the throughput figure.
    """
    messages = env_int("LOOM_FAULT_MESSAGES", default_messages)
    rate = env_float("LOOM_FAULT_RATE", rate)
    return start_with(job, Producer(job.stack, job.topic, job.workdir, messages, rate=rate, seed=seed))


def start_with(job: Job, producer: P) -> tuple[P, float]:
    """:func:`start_live` with a producer of any kind: its topic created empty, the job started, then the
    producer once every partition is claimed."""
    producer.create_topic()
    job.producers.append(producer)
    job.start()
    job.wait_running(producer.partitions)
    return producer.start(), time.monotonic()


@dataclass
class Job:
    """``python -m loom_ray.main`` against the fault stack; every start is a new process group."""

    stack: FaultStack
    topic: str
    workdir: Path
    settings: dict[str, Any] = field(default_factory=dict)
    env_extra: dict[str, str] = field(default_factory=dict)
    dsn: str | None = None
    name: str = "main"  # the log is <workdir>/<name>.log
    groups: list[subprocess.Popen[bytes]] = field(default_factory=list)
    producers: list[Producer] = field(default_factory=list)  # killed with the job at teardown

    def __post_init__(self) -> None:
        # Short: Ray's socket paths must stay under 107 bytes.
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="lrf-", dir="/tmp"))
        self.log = self.workdir / f"{self.name}.log"
        self._log_mark = 0  # the log's size when the current start began

    def env(self) -> dict[str, str]:
        endpoints = Endpoints(self.stack.kafka, self.dsn or self.stack.dsn, "fault stack")
        env = pipeline_env(endpoints, self.topic, **self.settings)
        env.update({"RAY_TMPDIR": str(self.ray_tmp), **self.env_extra})
        return env

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        self._log_mark = self.log.stat().st_size if self.log.exists() else 0
        process = start_main(self.env(), *args, log=self.log)
        self.groups.append(process)
        return process

    @property
    def current(self) -> subprocess.Popen[bytes]:
        return self.groups[-1]

    def own_pids(self) -> set[int]:
        """Every live process of this job's sessions: the driver, its local Ray and every actor.

        Each start is a new session (``setsid``); Ray puts each worker in a process group of its own, but
        within the driver's session.
        """
        sessions = {p.pid for p in self.groups}
        found = set()
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(OSError):
                if os.getsid(proc.pid) in sessions:
                    found.add(proc.pid)
        return found

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def consumers(self) -> dict[str, int]:
        """``name -> pid`` of the consumer actors connected to PostgreSQL now (only our own processes)."""
        names = asyncio.run(
            fetch(
                self.stack.dsn,
                "SELECT DISTINCT application_name AS n FROM pg_stat_activity WHERE application_name LIKE 'loom-ray %'",
            )
        )
        own = self.own_pids()
        found = {}
        for row in names:
            match = _APP_PID.match(row["n"])
            if match and int(match.group(2)) in own:
                found[match.group(1)] = int(match.group(2))
        return found

    def coordinator_pid(self) -> int | None:
        """The coordinator's pid: from ``loom-coordinator pid=N`` when its connection is named so, else the
        owner of the local socket behind its connection's ``client_port``."""
        rows = asyncio.run(
            fetch(
                self.stack.dsn,
                "SELECT application_name AS n, client_port FROM pg_stat_activity "
                "WHERE application_name LIKE 'loom-coordinator%'",
            )
        )
        own = self.own_pids()
        for row in rows:
            match = _COORDINATOR_PID.match(row["n"])
            if match and int(match.group(1)) in own:
                return int(match.group(1))
        ports = {r["client_port"] for r in rows}
        for conn in psutil.net_connections(kind="tcp"):
            if conn.pid in own and conn.laddr and conn.laddr.port in ports:
                return int(conn.pid)
        return None

    def offsets(self) -> dict[int, tuple[int, int, str | None]]:
        """``partition -> (next_offset, epoch, owner)`` as stored in loom_offsets."""
        rows = asyncio.run(
            fetch(
                self.stack.dsn,
                'SELECT "partition", next_offset, epoch, owner FROM loom_offsets WHERE topic = $1',
                self.topic,
            )
        )
        return {r["partition"]: (r["next_offset"], r["epoch"], r["owner"]) for r in rows}

    def owned_partitions(self, name: str) -> tuple[int, ...]:
        return tuple(sorted(p for p, (_, _, owner) in self.offsets().items() if owner == name))

    def gcs_address(self) -> str:
        """The GCS address of this job's local Ray (from its raylet's command line)."""
        for pid in self.own_pids():
            with contextlib.suppress(psutil.Error):
                for arg in psutil.Process(pid).cmdline():
                    if arg.startswith("--gcs-address="):
                        return str(arg.split("=", 1)[1])
        raise AssertionError("no raylet found in the job's sessions")

    def ctl(self, *args: str) -> subprocess.Popen[str]:
        """Start ``python -m loom_ray.ctl --address <this job's GCS> ARGS`` (a separate Ray driver)."""
        command = [sys.executable, "-m", "loom_ray.ctl", "--address", self.gcs_address(), *args]
        return subprocess.Popen(
            command, cwd=ROOT, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    def ctl_run(self, *args: str, timeout_s: float = 180) -> str:
        """Run ``loom_ray.ctl`` to the end; its output (fails on a non-zero exit)."""
        process = self.ctl(*args)
        output, _ = process.communicate(timeout=timeout_s)
        assert process.returncode == 0, f"loom_ray.ctl {' '.join(args)} exited {process.returncode}: {output[-2000:]}"
        return output

    def committed(self) -> int:
        rows = asyncio.run(
            fetch(
                self.stack.dsn,
                "SELECT coalesce(sum(next_offset), 0) AS n FROM loom_offsets WHERE topic = $1",
                self.topic,
            )
        )
        return int(rows[0]["n"])

    def caught_up(self) -> bool:
        """Every partition's committed offset is at its high watermark."""
        marks = high_watermarks(self.stack.kafka, self.topic)
        rows = asyncio.run(
            fetch(self.stack.dsn, 'SELECT "partition", next_offset FROM loom_offsets WHERE topic = $1', self.topic)
        )
        stored = {r["partition"]: r["next_offset"] for r in rows}
        return all(stored.get(p) == high for p, (_, high) in marks.items())

    def wait_running(self, partitions: int, timeout_s: float = 240) -> None:
        """Wait until the job's consumers hold a claim on every partition and the coordinator is settled (every
        consumer it asked for started, the partitions spread over them): consumers start as the node places
        them, so the first one may hold every partition for a while, and a fault aimed at an owner then would
        hit a partition about to move anyway."""

        def claimed() -> int:
            rows = asyncio.run(
                fetch(
                    self.stack.dsn,
                    "SELECT count(*) AS n FROM loom_offsets WHERE topic = $1 AND owner IS NOT NULL",
                    self.topic,
                )
            )
            return int(rows[0]["n"])

        self._wait(lambda: self._safe(claimed, 0) >= partitions, timeout_s, f"claims on {partitions} partitions")
        self._wait(lambda: self._safe(self.settled, False), timeout_s, "the coordinator to settle")

    def settled(self) -> bool:
        """Whether the coordinator says it is settled (``ctl status``)."""
        output = self.ctl_run("status", timeout_s=60)
        return bool(json.loads(output[output.index("\n{") :])["settled"])

    def wait_committed(self, at_least: int, timeout_s: float = 180) -> None:
        self._wait(lambda: self._safe(self.committed, 0) >= at_least, timeout_s, f"{at_least} offsets committed")

    def finish(self, timeout_s: float = 300) -> None:
        """Wait until everything produced is committed, then SIGTERM: the job must drain and exit 0."""
        self._wait(lambda: self._safe(self.caught_up, False), timeout_s, "the job to catch up with the topic")
        # main handles SIGTERM only once it is up (it prints progress from then on)
        self._wait(lambda: b"progress:" in self.log.read_bytes()[self._log_mark :], 120, "main to be up")
        process = self.current
        process.send_signal(signal.SIGTERM)
        code = process.wait(120)
        assert code == 0, f"main exited {code}: {self.log_text()[-3000:]}"

    def _wait(self, predicate: Any, timeout_s: float, what: str) -> None:
        def check() -> bool:
            assert self.current.poll() is None, f"main exited {self.current.returncode}: {self.log_text()[-3000:]}"
            return bool(predicate())

        wait_until(check, timeout_s, what, interval_s=1.0)

    @staticmethod
    def _safe(fn: Any, default: Any) -> Any:
        """``fn()``, or ``default`` while PostgreSQL or Kafka is down (faults are in progress)."""
        try:
            return fn()
        except Exception:
            return default

    def signal(self, pid: int, sig: signal.Signals) -> None:
        """Send ``sig`` to one of this job's processes (refuses any other pid)."""
        assert pid in self.own_pids(), f"pid {pid} is not part of this job"
        os.kill(pid, sig)

    def pause(self, pid: int) -> None:
        self.signal(pid, signal.SIGSTOP)

    def resume(self, pid: int) -> None:
        self.signal(pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the current start: the driver's process group, then whatever is left of its session."""
        self._kill_session(self.current)

    def _kill_session(self, process: subprocess.Popen[bytes]) -> None:
        stop_group(process, signal.SIGKILL)
        for pid in self.own_pids():
            with contextlib.suppress(OSError):
                if os.getsid(pid) == process.pid:
                    os.kill(pid, signal.SIGKILL)

    def close(self, keep_logs: bool = False) -> None:
        """Kill whatever still runs in any of this job's sessions (and its producers); drop Ray's temp folder."""
        for producer in self.producers:
            producer.kill()
        for process in self.groups:
            self._kill_session(process)
        if not keep_logs:
            shutil.rmtree(self.ray_tmp, ignore_errors=True)

    def ray_logs(self) -> Iterator[Path]:
        """Every file under this job's Ray temp folder (session logs of every start)."""
        return (p for p in self.ray_tmp.rglob("*") if p.is_file() and not p.is_socket())
