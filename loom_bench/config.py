"""What a run measures: workloads, sizes per mode, and loom-ray's two configurations (seed, tuned)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Mode = Literal["full", "quick", "smoke"]
PARTITIONS = 16


@dataclass(frozen=True, slots=True)
class Workload:
    """One topic shape: ``messages`` JSON values of about ``size`` bytes over 16 partitions."""

    name: str
    size: int
    messages: int
    malformed_ratio: float = 0.0

    def topic(self, prefix: str) -> str:
        bad = f"-bad{round(self.malformed_ratio * 100)}pct" if self.malformed_ratio else ""
        return f"{prefix}-{self.name.lower()}-{self.size}b-{self.messages}{bad}"

    def with_malformed(self, messages: int) -> Workload:
        """This shape with ``messages`` messages, 1 % of them malformed (loom_ray.loadgen's kinds)."""
        return Workload(self.name, self.size, messages, MALFORMED_RATIO)


@dataclass(frozen=True, slots=True)
class Window:
    """The timed part of a drain: ``seconds`` of commits after the first ``warmup_s`` past the first commit.

    A system is stopped once its window is over (or the topic is drained, whichever comes first), so the
    topic only has to be large enough for the fastest system. ``seconds`` 0 means: drain the whole topic.
    """

    warmup_s: float
    seconds: float

    @property
    def timed(self) -> bool:
        return self.seconds > 0

    @property
    def total_s(self) -> float:
        """Warm-up plus window: how long a system runs past its first commit."""
        return self.warmup_s + self.seconds


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes and durations of one mode."""

    mode: Mode
    workloads: tuple[Workload, ...]
    reps: int
    naive_seconds: float  # B2 is bounded by time
    live_systems: tuple[str, ...]  # systems measured under rate-limited load
    live_seconds: float  # per load level
    live_warmup_s: float  # left out of the latency percentiles
    window: Window = Window(0.0, 0.0)
    malformed_messages: int = 0  # the W1 run with 1 % malformed input (0: not run)
    live_loads: tuple[float, ...] = (0.25, 0.5, 0.8)  # fractions of B4_tuned's drain rate


# W3: loom_bench/w3.py (upsert by key, 1 % tombstones); W4: loom_bench/w4.py (W1's records as Avro, Protobuf)
_SIZES = {"W1": 200, "W2": 2048, "W3": 300, "W4": 200}
# Full mode times a 10 s window after 2 s of warm-up, so a topic must outlast the fastest sink for 12 s
# (B1 copies from memory in passes and B0 reads in passes, so they need no more than this).
_MESSAGES: dict[Mode, dict[str, int]] = {
    "full": {"W1": 3_000_000, "W2": 600_000, "W3": 2_000_000, "W4": 3_000_000},
    "quick": {"W1": 200_000, "W2": 100_000, "W3": 100_000, "W4": 200_000},
    "smoke": {"W1": 5_000, "W2": 5_000, "W3": 5_000, "W4": 5_000},
}
MALFORMED_RATIO = 0.01


def plan(mode: Mode, workloads: list[str], messages: int | None = None, reps: int | None = None) -> Plan:
    """The plan for ``mode``; ``messages`` and ``reps`` override the mode's defaults."""
    chosen = tuple(Workload(w, _SIZES[w], messages or _MESSAGES[mode][w]) for w in workloads)
    if mode == "full":
        return Plan(mode, chosen, reps or 3, 12.0, ("B4_tuned",), 20.0, 5.0, Window(2.0, 10.0), 50_000)
    if mode == "quick":
        return Plan(mode, chosen, reps or 1, 5.0, ("B4_tuned",), 15.0, 5.0, Window(1.0, 3.0), 20_000)
    return Plan(mode, chosen, reps or 1, 5.0, (), 10.0, 2.0, Window(0.0, 0.0), messages or 5_000)


# loom-ray's configurations. Both: synchronous_commit on (same durability as every other system), no
# dashboard, small actors so they fit on 2 cores, and one flush at a time per actor (pool of 2).
COMMON_ENV = {
    "LOOM_DB_SYNCHRONOUS_COMMIT": "on",
    "LOOM_RAY_DASHBOARD": "0",
    "LOOM_ACTOR_NUM_CPUS": "0.5",
    "LOOM_ACTOR_MEMORY_BYTES": "0",
    "LOOM_DB_MIN_POOL_SIZE": "1",
    "LOOM_DB_MAX_POOL_SIZE": "2",
}
# The seed's batching (200 messages or 0.5 s), loom-ray's other defaults (3 actors, 500 per consume()).
SEED_ENV = {"LOOM_KAFKA_BATCH_SIZE": "200", "LOOM_KAFKA_BATCH_TIMEOUT": "0.5"}
# Tuned for 2 cores: one actor per core, big consume() calls, large COPY batches; 4 MiB per partition batch
# (2 000 rows at 2 KB) so that 8 partitions of open batches stay well below the 64 MiB fetch-pause threshold.
# A backlog fills batches by count, so the timer only matters under live load: 0.25 s halves the wait
# (p50 ~ timer/2 + flush) and keeps p99 well inside 1 s.
TUNED_ENV = {
    "LOOM_KAFKA_BATCH_SIZE": "5000",
    "LOOM_KAFKA_BATCH_TIMEOUT": "0.25",
    "LOOM_KAFKA_MAX_POLL_RECORDS": "5000",
    "LOOM_BATCH_MAX_BYTES": str(4 * 1024 * 1024),
    "LOOM_MIN_ACTORS": "2",
    "LOOM_MAX_ACTORS": "2",
}
SEED_ACTORS = 3


def loom_env(tuned: bool) -> dict[str, str]:
    """``LOOM_*`` variables of the seed (B4) or tuned (B4_tuned, B5) configuration."""
    env = dict(COMMON_ENV)
    if tuned:
        env.update(TUNED_ENV)
    else:
        env.update(SEED_ENV)
        env.update({"LOOM_MIN_ACTORS": str(SEED_ACTORS), "LOOM_MAX_ACTORS": str(SEED_ACTORS)})
    return env
