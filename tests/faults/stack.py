"""A dedicated Kafka + PostgreSQL stack for fault tests, and the controls that break it.

It is ``scripts/dev-stack.sh`` with its own folder and ports (``LOOM_FAULT_STACK_DIR``,
``LOOM_FAULT_KAFKA_PORT``, ``LOOM_FAULT_PG_PORT``; defaults ``.stack-faults``, 49092, 45432), so that
restarting PostgreSQL or killing the broker never touches the shared stack other tests use.
PostgreSQL is driven through ``pg_ctl`` on its data folder (as the ``postgres`` user when we are root),
the broker through the pid in ``<stack>/kafka/pid``.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from tests.support.pipeline import scalar_at
from tests.support.services import DEV_STACK, ROOT

log = logging.getLogger(__name__)


def _pg_bindir() -> Path:
    """The PostgreSQL server binaries, found the way dev-stack.sh finds them."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip())
        if (found / "initdb").exists():
            return found
    return Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])


@dataclass(frozen=True)
class FaultStack:
    """One Kafka broker and one PostgreSQL server that fault tests may kill, pause and restart."""

    directory: Path
    kafka_port: int
    pg_port: int

    @classmethod
    def from_env(cls) -> FaultStack:
        return cls(
            Path(os.environ.get("LOOM_FAULT_STACK_DIR", ROOT / ".stack-faults")),
            int(os.environ.get("LOOM_FAULT_KAFKA_PORT", "49092")),
            int(os.environ.get("LOOM_FAULT_PG_PORT", "45432")),
        )

    @property
    def kafka(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def dsn(self) -> str:
        """The owner's DSN (trust authentication on loopback)."""
        return f"postgresql://loom@127.0.0.1:{self.pg_port}/loom"

    @property
    def pg_data(self) -> Path:
        return self.directory / "pg" / "data"

    # -- lifecycle through dev-stack.sh -----------------------------------------------------------

    def _dev_stack(self, command: str) -> str:
        env = {
            **os.environ,
            "LOOM_STACK_DIR": str(self.directory),
            "LOOM_STACK_KAFKA_PORT": str(self.kafka_port),
            "LOOM_STACK_PG_PORT": str(self.pg_port),
            "LOOM_STACK_REGISTRY_PORT": "0",  # no fault test needs a Schema Registry
        }
        done = subprocess.run([DEV_STACK, command], env=env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"dev-stack.sh {command} failed: {done.stderr[-2000:]}")
        return done.stdout

    def running(self) -> bool:
        """Whether both services run (as dev-stack.sh status sees them)."""
        return "stopped" not in self._dev_stack("status")

    def up(self) -> None:
        """Start whatever is not running and wait until both answer (idempotent)."""
        self._dev_stack("up")

    def down(self) -> None:
        self._dev_stack("down")

    # -- PostgreSQL -------------------------------------------------------------------------------

    def _pg_ctl(self, *args: str, timeout_s: float = 120) -> None:
        command = [str(_pg_bindir() / "pg_ctl"), "-D", str(self.pg_data), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {done.stdout[-1000:]} {done.stderr[-1000:]}")

    def pg_restart_fast(self) -> None:
        """``pg_ctl restart -m fast``: sessions are terminated, the server comes back at once."""
        self._pg_ctl("-l", str(self.directory / "pg" / "postgres.log"), "-m", "fast", "-w", "restart")

    def pg_stop_immediate(self) -> None:
        """``pg_ctl stop -m immediate``: a crash; the next start runs WAL recovery."""
        self._pg_ctl("-m", "immediate", "-w", "stop")

    def pg_start(self) -> None:
        self._pg_ctl(
            "-l",
            str(self.directory / "pg" / "postgres.log"),
            "-o",
            f"-p {self.pg_port} -k {self.directory / 'pg'}",
            "-w",
            "-t",
            "60",
            "start",
        )

    def pg_reload(self) -> None:
        """Re-read postgresql.conf and pg_hba.conf."""
        self._pg_ctl("reload")

    def execute(self, sql: str, *args: Any) -> Any:
        """Run one statement as the owner; returns the first column of the first row (or None)."""
        return scalar_at(self.dsn, sql, *args)

    def run_script(self, sql: str) -> None:
        """Run several statements (no parameters) as the owner."""
        asyncio.run(_script(self.dsn, sql))

    # -- Kafka ------------------------------------------------------------------------------------

    def kafka_pid(self) -> int:
        return int((self.directory / "kafka" / "pid").read_text().strip())

    def kafka_signal(self, sig: signal.Signals) -> None:
        """SIGKILL (crash), SIGSTOP (pause) or SIGCONT (resume) the broker, by its pid file."""
        os.kill(self.kafka_pid(), sig)
        log.info("kafka broker pid %d <- %s", self.kafka_pid(), sig.name)

    def kafka_restart(self) -> None:
        """Start the broker again after a kill (``dev-stack.sh up`` sees its pid gone)."""
        pid = self.kafka_pid()
        _wait_gone(pid)
        self.up()


def _wait_gone(pid: int, timeout_s: float = 30) -> None:
    """Wait until ``pid`` has exited (a zombie counts as gone: only its parent can reap it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} still alive after {timeout_s:.0f}s")


async def _script(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
