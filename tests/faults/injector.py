"""A seeded fault injector: which process, when, and for how long all come from one ``random.Random(seed)``.

Targets: consumer actors (``kill -9``, SIGSTOP/SIGCONT), the coordinator actor (``kill -9``), PostgreSQL
(``pg_ctl restart -m fast``; ``stop -m immediate`` then start), the Kafka broker (``kill -9`` then restart;
SIGSTOP/SIGCONT), and the actor<->PostgreSQL network through :class:`tests.support.tcp_proxy.TcpProxy`
(latency with jitter, resets, blackhole, COMMITs left in doubt). Every fault is logged to ``faults.log`` in the
run's folder and kept as a :class:`Fault`, whose ``at`` is when the fault ended (the kill was dealt, the
service was back): recovery times are measured from there.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tests.faults.harness import Job
from tests.support.tcp_proxy import TcpProxy

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault."""

    at: float  # time.monotonic() when it ended
    kind: str  # e.g. "kill -9 consumer"
    target: str
    partitions: tuple[int, ...] | None  # partitions it hit; None: all
    down_s: float = 0.0


class Injector:
    """Injects faults into one :class:`Job`; see the module docstring."""

    def __init__(self, seed: int, job: Job, proxy: TcpProxy | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self._job = job
        self._proxy = proxy
        self.faults: list[Fault] = []
        self._log = job.workdir / "faults.log"

    def record(self, kind: str, target: str, partitions: tuple[int, ...] | None, down_s: float = 0.0) -> Fault:
        fault = Fault(time.monotonic(), kind, target, partitions, down_s)
        self.faults.append(fault)
        line = f"{time.strftime('%H:%M:%S')} seed={self.seed} {kind} target={target} partitions={partitions}"
        line += f" down={down_s:.1f}s"
        with Path(self._log).open("a") as out:
            out.write(line + "\n")
        log.info("%s", line)
        return fault

    def count(self, prefix: str = "") -> int:
        return sum(1 for f in self.faults if f.kind.startswith(prefix))

    # -- processes --------------------------------------------------------------------------------

    def pick_consumer(self, among: Iterable[str] | None = None) -> tuple[str, int] | None:
        """A consumer actor (name, pid) chosen by the seed, or None if none is connected right now.

        ``among`` narrows the choice to those names (when one of them is connected).
        """
        found = self._job.consumers()
        names = sorted(set(found) & set(among)) if among is not None else sorted(found)
        if not names:
            return None
        name = self.rng.choice(names)
        return name, found[name]

    def kill_consumer(self) -> Fault | None:
        """``kill -9`` of a consumer actor's process; its partitions are the ones hit."""
        victim = self.pick_consumer()
        if victim is None:
            return None
        name, pid = victim
        partitions = self._job.owned_partitions(name)
        self._job.signal(pid, signal.SIGKILL)
        return self.record("kill -9 consumer", f"{name} pid={pid}", partitions)

    def pause_consumer(self, name: str, pid: int, in_transaction: bool, timeout_s: float = 60) -> None:
        """SIGSTOP a consumer either between transactions or inside one (after the offset compare-and-set).

        Inside: the job must run with ``LOOM_TEST_STOP_DIR`` (see ``loom_ray.crashpoints``); the consumer stops
        itself right after the statement that locks its offset rows, and the stop is kept once a flush held
        all its partitions. Between: its PostgreSQL sessions tell when it is idle; the stop is kept only if
        they still are once it is stopped, else it is resumed and the next chance taken.
        """
        partitions = self._job.owned_partitions(name)
        if in_transaction:
            asyncio.run(self._pause_inside(name, pid, partitions, timeout_s))
        else:
            asyncio.run(self._pause_between(name, pid, timeout_s))

    async def _pause_inside(self, name: str, pid: int, partitions: tuple[int, ...], timeout_s: float) -> None:
        request = Path(self._job.env_extra["LOOM_TEST_STOP_DIR"]) / f"{pid}.after_offset_cas"
        conn = await asyncpg.connect(self._job.stack.dsn)
        deadline = time.monotonic() + timeout_s
        tries = 0
        try:
            while time.monotonic() < deadline:
                tries += 1
                request.touch()
                while time.monotonic() < deadline:
                    if not request.exists() and _stopped(pid):
                        break
                    await asyncio.sleep(0.01)
                else:
                    break
                if all([await _locked(conn, self._job.topic, p) for p in partitions]):
                    log.info("%s stopped inside a flush holding all of %s at try %d", name, partitions, tries)
                    return
                self._job.resume(pid)  # that flush held only some of its partitions
        finally:
            request.unlink(missing_ok=True)
            await conn.close()
        raise AssertionError(
            f"{name} did not stop inside a flush holding all of {partitions} within {timeout_s:.0f}s ({tries} tries)"
        )

    async def _pause_between(self, name: str, pid: int, timeout_s: float) -> None:
        conn = await asyncpg.connect(self._job.stack.dsn)
        application = f"loom-ray {name} pid={pid}"
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                self._job.pause(pid)
                await asyncio.sleep(0.2)  # let bytes it sent just before the stop reach the server
                if await _states(conn, application) <= {"idle"}:
                    return
                self._job.resume(pid)
                await asyncio.sleep(0.2)
        finally:
            await conn.close()
        raise AssertionError(f"could not stop {name} outside a transaction within {timeout_s:.0f}s")

    def kill_coordinator(self) -> Fault | None:
        """``kill -9`` of the coordinator actor; Ray restarts it, its consumers die with it: all are hit."""
        pid = self._job.coordinator_pid()
        if pid is None:
            return None
        self._job.signal(pid, signal.SIGKILL)
        return self.record("kill -9 coordinator", f"pid={pid}", None)

    def restart_job(self, *args: str) -> Fault:
        """SIGKILL the job's whole process group (driver, local Ray, every actor), then start it again."""
        self._job.kill()
        self._job.start(*args)
        return self.record("kill -9 job", "process group", None)

    # -- PostgreSQL -------------------------------------------------------------------------------

    def pg_restart_fast(self) -> Fault:
        started = time.monotonic()
        self._job.stack.pg_restart_fast()
        return self.record("pg restart -m fast", "postgresql", None, time.monotonic() - started)

    def pg_crash(self, down_s: float) -> Fault:
        """``pg_ctl stop -m immediate`` (no checkpoint, WAL recovery on start), ``down_s`` later start."""
        started = time.monotonic()
        self._job.stack.pg_stop_immediate()
        time.sleep(down_s)
        self._job.stack.pg_start()
        return self.record("pg stop -m immediate", "postgresql", None, time.monotonic() - started)

    def lose_last_commit(self, partition: int) -> Fault:
        """What a crash does to the last asynchronous commit (``synchronous_commit=off``) of a partition:
        its rows, dead letters, audit line and offset advance all vanish together; the epoch stays."""
        asyncio.run(_rewind(self._job.stack.dsn, self._job.topic, partition))
        return self.record(
            "last commit lost (as after a crash with synchronous_commit=off)", "postgresql", (partition,)
        )

    # -- Kafka ------------------------------------------------------------------------------------

    def kafka_kill(self, down_s: float) -> Fault:
        started = time.monotonic()
        self._job.stack.kafka_signal(signal.SIGKILL)
        time.sleep(down_s)
        self._job.stack.kafka_restart()
        return self.record("kill -9 broker", "kafka", None, time.monotonic() - started)

    def kafka_pause(self, pause_s: float) -> Fault:
        started = time.monotonic()
        self._job.stack.kafka_signal(signal.SIGSTOP)
        try:
            time.sleep(pause_s)
        finally:
            self._job.stack.kafka_signal(signal.SIGCONT)
        return self.record("SIGSTOP broker", "kafka", None, time.monotonic() - started)

    # -- network (actor <-> PostgreSQL) -------------------------------------------------------------

    def _net(self) -> TcpProxy:
        assert self._proxy is not None, "network faults need the job's DSN to go through a TcpProxy"
        return self._proxy

    def latency(self, mean_s: float, jitter_s: float, duration_s: float) -> Fault:
        net = self._net()
        net.latency_s, net.jitter_s = mean_s, jitter_s
        time.sleep(duration_s)
        net.latency_s = net.jitter_s = 0.0
        return self.record(f"latency {mean_s * 1000:.0f}+-{jitter_s * 1000:.0f}ms", "pg link", None, duration_s)

    def resets(self, every_s: float, duration_s: float) -> list[Fault]:
        """Reset every connection every ``every_s`` (reconnects are refused for a seeded 0-1 s)."""
        net, faults, end = self._net(), [], time.monotonic() + duration_s
        while time.monotonic() < end:
            net.cut()
            refused = self.rng.uniform(0.0, 1.0)
            time.sleep(refused)
            net.restore()
            faults.append(self.record("reset", "pg link", None, refused))
            time.sleep(max(0.0, every_s - refused))
        return faults

    def blackhole(self, duration_s: float) -> Fault:
        net = self._net()
        net.blackhole()
        time.sleep(duration_s)
        net.restore()
        return self.record("blackhole", "pg link", None, duration_s)

    def in_doubt(self, commits: int, timeout_s: float = 60) -> Fault:
        """The next ``commits`` COMMITs land on the server but their replies never reach the client."""
        net = self._net()
        target = net.in_doubt + commits
        net.arm_in_doubt(commits)
        deadline = time.monotonic() + timeout_s
        while net.in_doubt < target:
            assert time.monotonic() < deadline, f"only {net.in_doubt - target + commits} of {commits} COMMITs seen"
            time.sleep(0.1)
        return self.record(f"{commits} COMMIT replies swallowed, connection reset (in-doubt)", "pg link", None)

    # -- schedule ---------------------------------------------------------------------------------

    def every(
        self, low_s: float, high_s: float, action: Callable[[], object], until: Callable[[], bool], limit: int = 1000
    ) -> None:
        """Run ``action`` after seeded U(low_s, high_s) pauses until ``until()`` or ``limit`` actions."""
        done = 0
        while done < limit and self.pause(low_s, high_s, until):
            action()
            done += 1

    def pause(self, low_s: float, high_s: float, until: Callable[[], bool]) -> bool:
        """Sleep a seeded U(low_s, high_s); False (at once) if ``until()`` became true meanwhile."""
        deadline = time.monotonic() + self.rng.uniform(low_s, high_s)
        while time.monotonic() < deadline:
            if until():
                return False
            time.sleep(0.2)
        return not until()


async def _states(conn: asyncpg.Connection, application: str) -> set[str]:
    rows = await conn.fetch("SELECT state FROM pg_stat_activity WHERE application_name = $1", application)
    return {r["state"] for r in rows if r["state"]}


async def _rewind(dsn: str, topic: str, partition: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            where = 'topic = $1 AND "partition" = $2'
            row = await conn.fetchrow(
                f"SELECT next_offset FROM loom_offsets WHERE {where} FOR UPDATE", topic, partition
            )
            assert row is not None, f"{topic}[{partition}] has no offset row"
            start = await conn.fetchval(
                f"SELECT start_offset FROM loom_audit WHERE {where} AND end_offset = $3 ORDER BY txid DESC LIMIT 1",
                topic,
                partition,
                row["next_offset"],
            )
            assert start is not None, f"no audit line ends at {row['next_offset']}: is LOOM_AUDIT on?"
            for table in ("loom_messages", "loom_dead_letters"):
                await conn.execute(f'DELETE FROM {table} WHERE {where} AND "offset" >= $3', topic, partition, start)
            await conn.execute(f"DELETE FROM loom_audit WHERE {where} AND start_offset >= $3", topic, partition, start)
            await conn.execute(f"UPDATE loom_offsets SET next_offset = $3 WHERE {where}", topic, partition, start)
    finally:
        await conn.close()


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (state ``T`` in /proc/<pid>/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "T"


async def _locked(conn: asyncpg.Connection, topic: str, partition: int) -> bool:
    """Whether another transaction holds the partition's offset row (probed with FOR UPDATE NOWAIT)."""
    try:
        async with conn.transaction():
            await conn.execute(
                'SELECT 1 FROM loom_offsets WHERE topic = $1 AND "partition" = $2 FOR UPDATE NOWAIT', topic, partition
            )
    except asyncpg.LockNotAvailableError:
        return True
    return False
