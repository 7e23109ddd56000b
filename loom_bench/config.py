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

    def topic(self, prefix: str) -> str:
        return f"{prefix}-{self.name.lower()}-{self.size}b-{self.messages}"


@dataclass(frozen=True, slots=True)
class Plan:
    """Sizes and durations of one mode."""

    mode: Mode
    workloads: tuple[Workload, ...]
    reps: int
    naive_seconds: float  # B2 is bounded by time and extrapolated
    live_systems: tuple[str, ...]  # systems measured under rate-limited load
    live_seconds: float  # per load level
    live_warmup_s: float  # left out of the latency percentiles
    live_loads: tuple[float, ...] = (0.25, 0.5, 0.8)  # fractions of B4_tuned's drain rate


_SIZES = {"W1": 200, "W2": 2048}
_MESSAGES: dict[Mode, dict[str, int]] = {
    "full": {"W1": 1_000_000, "W2": 500_000},
    "quick": {"W1": 200_000, "W2": 100_000},
    "smoke": {"W1": 5_000, "W2": 5_000},
}


def plan(mode: Mode, workloads: list[str], messages: int | None = None, reps: int | None = None) -> Plan:
    """The plan for ``mode``; ``messages`` and ``reps`` override the mode's defaults."""
    chosen = tuple(Workload(w, _SIZES[w], messages or _MESSAGES[mode][w]) for w in workloads)
    if mode == "full":
        return Plan(mode, chosen, reps or 3, 120.0, ("B3", "B4", "B4_tuned", "B5"), 60.0, 10.0)
    if mode == "quick":
        return Plan(mode, chosen, reps or 1, 30.0, ("B4_tuned",), 20.0, 5.0)
    return Plan(mode, chosen, reps or 1, 5.0, (), 10.0, 2.0)


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
