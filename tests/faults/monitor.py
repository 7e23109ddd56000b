"""Background sampling during a fault run: committed offsets per partition, and consumer-actor RSS.

The offsets give each fault's recovery time (how long until every partition it hit commits again); the
RSS samples give the memory figures. Samples taken while PostgreSQL is down are simply missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import asyncpg
import orjson
import psutil

from tests.faults.harness import Job
from tests.faults.injector import Fault

_SAMPLE_SQL = """
SELECT (SELECT coalesce(jsonb_object_agg("partition", next_offset), '{}') FROM loom_offsets WHERE topic = $1) AS o,
       (SELECT coalesce(array_agg(DISTINCT application_name), '{}') FROM pg_stat_activity
         WHERE application_name LIKE 'loom-ray %') AS names
"""


@dataclass(frozen=True, slots=True)
class RssSample:
    at: float
    pid: int
    rss: int


class Monitor:
    """Use as a context manager around the faulty part of a run."""

    def __init__(self, job: Job, interval_s: float = 0.5) -> None:
        self._job = job
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._loop()), name="fault-monitor", daemon=True)
        self.offsets: list[tuple[float, dict[int, int]]] = []
        self.rss: list[RssSample] = []
        self._pids: set[int] = set()

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _loop(self) -> None:
        conn: asyncpg.Connection | None = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.is_closed():
                    conn = await asyncpg.connect(self._job.stack.dsn, timeout=2)
                await self._sample(conn)
            except Exception:
                if conn is not None:
                    conn.terminate()
                conn = None
            self._sample_rss()
            await asyncio.sleep(self._interval_s)
        if conn is not None:
            await conn.close()

    async def _sample(self, conn: asyncpg.Connection) -> None:
        row = await conn.fetchrow(_SAMPLE_SQL, self._job.topic, timeout=2)
        assert row is not None
        offsets = {int(p): int(o) for p, o in orjson.loads(row["o"]).items()}
        self.offsets.append((time.monotonic(), offsets))
        sessions = {p.pid for p in self._job.groups}
        pids = {int(name.rsplit("pid=", 1)[1]) for name in row["names"] if "pid=" in name}
        self._pids = {pid for pid in pids if _sid(pid) in sessions}

    def _sample_rss(self) -> None:
        now = time.monotonic()
        for pid in list(self._pids):
            with contextlib.suppress(psutil.Error):
                self.rss.append(RssSample(now, pid, psutil.Process(pid).memory_info().rss))

    def recovery_s(self, fault: Fault, highs: dict[int, int]) -> float | None:
        """Seconds from the end of ``fault`` until every partition it hit committed again (None: never).

        The baseline is the first sample taken after the fault ended (a killed actor commits nothing
        more), so the resolution is the sampling interval.
        """
        after = [(t, o) for t, o in self.offsets if t >= fault.at]
        if not after:
            return None
        base = after[0][1]
        hit = fault.partitions if fault.partitions is not None else tuple(base)
        for t, offsets in after[1:]:
            if all(offsets.get(p, 0) > base.get(p, 0) or offsets.get(p, 0) >= highs.get(p, 0) for p in hit):
                return t - fault.at
        return None

    def rss_max_mb(self) -> float:
        return max((s.rss for s in self.rss), default=0) / 2**20

    def rss_growth(self, warmup_s: float) -> tuple[float, float]:
        """(MB, MB per minute): the largest RSS growth of one actor between warmup and the last sample."""
        if not self.rss:
            return 0.0, 0.0
        start = self.rss[0].at + warmup_s
        worst = (0.0, 0.0)
        for pid in {s.pid for s in self.rss}:
            series = [s for s in self.rss if s.pid == pid and s.at >= start]
            if len(series) < 2:
                continue
            grown = (series[-1].rss - series[0].rss) / 2**20
            minutes = (series[-1].at - series[0].at) / 60
            if grown > worst[0]:
                worst = (grown, grown / max(minutes, 1e-9))
        return worst


def percentiles(values: Sequence[float]) -> tuple[float, float]:
    """(p50, p99) of the recovery times; (0, 0) with none."""
    if not values:
        return 0.0, 0.0
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None
