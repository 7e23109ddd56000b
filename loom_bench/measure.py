"""CPU and memory of a run, sampled with psutil at 4 Hz in a background thread.

Three groups are tracked: the pipeline (the processes the harness started and all their descendants,
which includes every Ray process of a loom-ray run), PostgreSQL (the bench database's backends plus the
server's WAL writer, checkpointer, background writer and autovacuum) and the Kafka broker's JVM. PostgreSQL's
CPU is also kept per part (:func:`pg_part`): each backend under the client process it serves (a consumer
actor, the coordinator, B1's copier), autovacuum, and the WAL writer, checkpointer and background writer. CPU is kept as
cumulative series so that :func:`loom_bench.stats.window_delta` can cut out the drain window; a
process that exits keeps its last seen CPU time. The whole box's busy CPU is sampled too: what no group
explains is other work on the machine (noise).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

SAMPLE_INTERVAL_S = 0.25
_PG_WRITERS = ("checkpointer", "background writer", "walwriter")
_PG_BACKGROUND = (*_PG_WRITERS, "autovacuum")
PG_AUTOVACUUM = "autovacuum"
PG_WRITERS = "checkpoints and WAL"
PG_UNKNOWN_CLIENT = "backend of another client"
PG_UNSEEN = "exited between samples, other databases"  # server_cpu_seconds() less the processes sampled
_CLIENT_PORT = re.compile(r"\((\d+)\)")  # a backend's title: "postgres: user db 127.0.0.1(40132) idle"


@dataclass
class Series:
    """Cumulative CPU seconds per group over time, and the peak summed RSS of the pipeline."""

    pipeline: list[tuple[float, float]] = field(default_factory=list)
    postgres: list[tuple[float, float]] = field(default_factory=list)
    kafka: list[tuple[float, float]] = field(default_factory=list)
    box: list[tuple[float, float]] = field(default_factory=list)
    iowait: list[tuple[float, float]] = field(default_factory=list)  # the machine's idle time waiting on I/O
    pipeline_by_label: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # cumulative per label
    postgres_by_part: list[tuple[float, dict[str, float]]] = field(default_factory=list)  # cumulative, pg_part
    peak_rss_bytes: int = 0
    peak_rss_by_process: dict[str, float] = field(default_factory=dict)  # MiB per label at the peak
    own_peak_rss_by_process: dict[str, float] = field(default_factory=dict)  # MiB: each label's own peak
    processes_seen: int = 0


class _Group:
    """Cumulative CPU of a changing set of processes: a process that exits keeps its last value."""

    def __init__(self) -> None:
        self._cpu: dict[tuple[int, float], float] = {}  # (pid, create_time) -> cpu seconds
        self._label: dict[tuple[int, float], str] = {}

    def update(
        self, processes: Iterable[psutil.Process], labeller: Callable[[psutil.Process], str] | None = None
    ) -> dict[str, int]:
        """Record the processes' CPU; returns their RSS in bytes, summed per ``labeller`` (:func:`label`)."""
        rss: dict[str, int] = {}
        for process in processes:
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    key = (process.pid, process.create_time())
                    self._cpu[key] = times.user + times.system
                    name = self._label[key] = (labeller or label)(process)
                    rss[name] = rss.get(name, 0) + process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return rss

    @property
    def total(self) -> float:
        return sum(self._cpu.values())

    def by_label(self) -> dict[str, float]:
        """Cumulative CPU seconds summed per :func:`label` (the latest: a Ray worker takes its actor's name)."""
        found: dict[str, float] = {}
        for key, seconds in self._cpu.items():
            found[self._label[key]] = found.get(self._label[key], 0.0) + seconds
        return found

    @property
    def count(self) -> int:
        return len(self._cpu)


def label(process: psutil.Process) -> str:
    """A short name for a process: the Python module or script it runs, else its executable."""
    args: list[str] = process.cmdline()
    if args and Path(args[0]).name.startswith("python"):
        rest = [a for a in args[1:] if a != "-u"]
        if rest[:1] == ["-m"] and len(rest) > 1:
            return rest[1]
        if rest:
            return Path(rest[0]).name
    if args and args[0].startswith("ray::"):
        return args[0].split()[0]
    return str(process.name())


def tree(root: psutil.Process) -> list[psutil.Process]:
    """``root`` and all its descendants that are alive now."""
    try:
        return [root, *root.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return []


def postgres_processes(postmaster: psutil.Process | None, database: str) -> list[psutil.Process]:
    """Backends of ``database`` and the server's background writers (by process title)."""
    if postmaster is None:
        return []
    found = []
    marker = f" {database} "
    for child in tree(postmaster)[1:]:
        try:
            title = " ".join(child.cmdline()) + " "
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if marker in title or any(name in title for name in _PG_BACKGROUND):
            found.append(child)
    return found


def server_cpu_seconds(postmaster: psutil.Process | None) -> float | None:
    """The database server's CPU seconds so far: the postmaster, its children alive now, and the children it
    has reaped (a backend of a short connection, an autovacuum worker) that a sampler never saw end; the same
    for every client, whatever its connections' lifetimes. None without a postmaster."""
    if postmaster is None:
        return None
    try:
        times = postmaster.cpu_times()
        children = postmaster.children()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    total = float(times.user + times.system + times.children_user + times.children_system)
    for child in children:
        try:
            child_times = child.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # reaped since: counted in the postmaster's children times from now on
        total += child_times.user + child_times.system
    return total


def pg_part(title: str, clients: Callable[[int], str | None]) -> str:
    """The part of PostgreSQL a server process of this title is: autovacuum, the writers, or a backend named
    by its client (``clients``: the label of the process holding a client port, None if unknown)."""
    if PG_AUTOVACUUM in title:
        return PG_AUTOVACUUM
    if any(name in title for name in _PG_WRITERS):
        return PG_WRITERS
    port = _CLIENT_PORT.search(title)
    client = clients(int(port.group(1))) if port else None
    return f"backend: {client}" if client else PG_UNKNOWN_CLIENT


class _Clients:
    """The local process holding each client port of a connection to PostgreSQL, by its :func:`label`
    (None: not a local process); the machine's sockets are listed once per port not seen yet."""

    def __init__(self) -> None:
        self._by_port: dict[int, str | None] = {}

    def __call__(self, port: int) -> str | None:
        if port not in self._by_port:
            self._by_port[port] = None
            for conn in psutil.net_connections(kind="tcp"):
                if conn.laddr and conn.raddr and conn.pid is not None and conn.laddr.port == port:
                    try:
                        self._by_port[port] = label(psutil.Process(conn.pid))
                    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                        continue
        return self._by_port[port]


def find_postmaster(server_pid: int | None) -> psutil.Process | None:
    """The local PostgreSQL server, as the parent of one of its processes; None if it is remote."""
    if server_pid is None:
        return None
    try:
        server = psutil.Process(server_pid)
        return server.parent() if "postgres" in server.name() else None
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def kafka_process(pid_file: Path | None) -> psutil.Process | None:
    """The broker's JVM from its pid file (``.stack/kafka/pid``); None if unknown."""
    if pid_file is None or not pid_file.is_file():
        return None
    try:
        return psutil.Process(int(pid_file.read_text().strip()))
    except (ValueError, psutil.NoSuchProcess):
        return None


def box_iowait_seconds() -> float:
    """CPU seconds the whole machine sat idle with disk I/O outstanding since boot (0 where not reported)."""
    return float(getattr(psutil.cpu_times(), "iowait", 0.0))


def box_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle since boot."""
    times = psutil.cpu_times()
    extra = getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0) + getattr(times, "nice", 0.0)
    return float(times.user + times.system + extra)


class Sampler:
    """Samples the groups at 4 Hz until :meth:`stop`; use as a context manager."""

    def __init__(
        self,
        roots: list[psutil.Process],
        postmaster: psutil.Process | None,
        database: str,
        kafka: psutil.Process | None,
    ) -> None:
        self.roots = roots
        self._postmaster = postmaster
        self._database = database
        self._kafka = kafka
        self.series = Series()
        self._groups = {"pipeline": _Group(), "postgres": _Group(), "kafka": _Group()}
        self._clients = _Clients()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def add_root(self, process: psutil.Process) -> None:
        """Track another process started for the same run (e.g. a second B3 process)."""
        self.roots.append(process)

    def stop(self) -> None:
        """Take a last sample and end the thread."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            self.sample()

    def _pg_part(self, process: psutil.Process) -> str:
        return pg_part(" ".join(process.cmdline()), self._clients)

    def sample(self) -> None:
        """One sample of every group (also called at start and stop)."""
        now = time.time()
        pipeline = [p for root in list(self.roots) for p in tree(root)]
        by_label = self._groups["pipeline"].update(pipeline)
        rss = sum(by_label.values())
        self._groups["postgres"].update(postgres_processes(self._postmaster, self._database), self._pg_part)
        self._groups["kafka"].update([self._kafka] if self._kafka is not None else [])
        series = self.series
        if rss > series.peak_rss_bytes:
            series.peak_rss_bytes = rss
            series.peak_rss_by_process = {k: round(v / 2**20, 1) for k, v in sorted(by_label.items())}
        for name, value in by_label.items():
            mib = round(value / 2**20, 1)
            if mib > series.own_peak_rss_by_process.get(name, 0.0):
                series.own_peak_rss_by_process[name] = mib
        series.processes_seen = self._groups["pipeline"].count
        series.pipeline.append((now, self._groups["pipeline"].total))
        series.pipeline_by_label.append((now, self._groups["pipeline"].by_label()))
        server = server_cpu_seconds(self._postmaster)
        sampled = self._groups["postgres"].total
        parts = self._groups["postgres"].by_label()
        if server is not None:
            parts[PG_UNSEEN] = max(0.0, server - sampled)
        series.postgres.append((now, sampled if server is None else server))
        series.postgres_by_part.append((now, parts))
        series.kafka.append((now, self._groups["kafka"].total))
        series.box.append((now, box_busy_seconds()))
        series.iowait.append((now, box_iowait_seconds()))
