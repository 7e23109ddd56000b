"""Pure arithmetic of the benchmark: drain rates from commit timestamps, medians, limits and ratios.

No I/O here, so every number in the report can be checked by unit tests.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DrainRate:
    """Rows per second between the first and the last commit, and over the 10-90 % window."""

    rows: int
    first_commit: float  # epoch seconds
    last_commit: float
    msgs_per_s: float | None
    steady_msgs_per_s: float | None

    @property
    def seconds(self) -> float:
        """Time between the first and the last commit."""
        return self.last_commit - self.first_commit


def drain_rate(commits: Sequence[tuple[float, int]]) -> DrainRate | None:
    """Rate from ``(commit time, rows in that transaction)`` pairs; None when nothing was written.

    The rows of the first transaction were produced before the first commit time, so they are left out:
    rate = (rows - first transaction's rows) / (last commit - first commit). With one transaction there
    is no interval, and the rate is None.
    """
    if not commits:
        return None
    ordered = sorted(commits)
    total = sum(n for _, n in ordered)
    t0, first_rows = ordered[0]
    t1 = ordered[-1][0]
    rate = (total - first_rows) / (t1 - t0) if t1 > t0 else None
    return DrainRate(total, t0, t1, rate, _steady(ordered, total))


def windowed(commits: Sequence[tuple[float, int]], warmup_s: float, seconds: float) -> DrainRate | None:
    """The rate over a window of at least ``seconds`` that opens ``warmup_s`` after the first commit.

    The window runs from the first commit at or after the warm-up to the first commit at least ``seconds``
    later (commits can be sparse, so it ends on a commit, never before ``seconds``); when no commit comes that
    late, to the last commit. Falls back to :func:`drain_rate` over every commit when fewer than two commits
    follow the warm-up (a topic drained before it ended); ``seconds`` of the result shows the timed span.
    """
    if not commits:
        return None
    ordered = sorted(commits)
    start = ordered[0][0] + warmup_s
    after = [(ts, n) for ts, n in ordered if ts >= start]
    if len(after) < 2:
        return drain_rate(ordered)
    end = next((i for i, (ts, _) in enumerate(after) if ts >= after[0][0] + seconds), len(after) - 1)
    return drain_rate(after[: end + 1])


def relative_spread(median: float | None, low: float | None, high: float | None) -> float | None:
    """(max - min) / median: how far the repetitions disagree; None without a median."""
    if not median or low is None or high is None:
        return None
    return (high - low) / median


def _steady(ordered: Sequence[tuple[float, int]], total: int) -> float | None:
    """Rows per second between the commits that reach 10 % and 90 % of the rows."""
    low_t = high_t = None
    low_rows = high_rows = 0
    done = 0
    for ts, n in ordered:
        done += n
        if low_t is None and done >= 0.1 * total:
            low_t, low_rows = ts, done
        if done >= 0.9 * total:
            high_t, high_rows = ts, done
            break
    if low_t is None or high_t is None or high_t <= low_t:
        return None
    return (high_rows - low_rows) / (high_t - low_t)


@dataclass(frozen=True, slots=True)
class Spread:
    """Median with min and max over repetitions."""

    median: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high}


def spread(values: Sequence[float | None]) -> Spread | None:
    """Median (min-max) of the values that are not None; None if there are none."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return Spread(statistics.median(present), min(present), max(present))


def median_or_none(values: Sequence[float | None]) -> float | None:
    """The median of the values that are not None."""
    found = spread(values)
    return None if found is None else found.median


def shared_limit(kafka_limit: float | None, db_limit: float | None) -> float | None:
    """``L_shared = 1 / (1/B0 + 1/B1)``: both stages on the same cores (performance.md)."""
    if not kafka_limit or not db_limit:
        return None
    return 1.0 / (1.0 / kafka_limit + 1.0 / db_limit)


def ratio(value: float | None, base: float | None) -> float | None:
    """``value / base``, or None when either is missing or the base is zero."""
    if value is None or not base:
        return None
    return value / base


def per_million(cpu_s: float | None, messages: int | None) -> float | None:
    """CPU-seconds per million messages."""
    if cpu_s is None or not messages:
        return None
    return cpu_s / messages * 1e6


def interpolate(series: Sequence[tuple[float, float]], at: float) -> float | None:
    """The value of a sampled, non-decreasing ``(time, value)`` series at ``at`` (linear; clamped)."""
    if not series:
        return None
    if at <= series[0][0]:
        return series[0][1]
    for (t_a, v_a), (t_b, v_b) in zip(series, series[1:], strict=False):
        if t_a <= at <= t_b:
            return v_a if t_b == t_a else v_a + (v_b - v_a) * (at - t_a) / (t_b - t_a)
    return series[-1][1]


def window_delta(series: Sequence[tuple[float, float]], start: float, end: float) -> float | None:
    """How much a cumulative series grew between ``start`` and ``end``."""
    low, high = interpolate(series, start), interpolate(series, end)
    if low is None or high is None:
        return None
    return high - low
