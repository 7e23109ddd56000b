"""backoff_ceiling(): min(cap, base * 2**attempt); backoff_delay(): full jitter below it, with a seeded rng."""

from __future__ import annotations

import random

import pytest

from loom_ray.policy.backoff import backoff_ceiling, backoff_delay


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "ceiling"),
    [
        (0, 0.2, 10.0, 0.2),  # 0.2 * 2**0
        (1, 0.2, 10.0, 0.4),
        (3, 0.2, 10.0, 1.6),  # 0.2 * 8
        (5, 0.2, 10.0, 6.4),  # 0.2 * 32
        (6, 0.2, 10.0, 10.0),  # 0.2 * 64 = 12.8, capped at 10
        (2, 1.0, 3.0, 3.0),  # 1 * 4 = 4, capped at 3
        (2, 0.5, 60.0, 2.0),
    ],
)
def test_delays_stay_within_the_ceiling_and_fill_it(attempt: int, base: float, cap: float, ceiling: float) -> None:
    rng = random.Random(attempt)
    delays = [backoff_delay(attempt, base, cap, rng) for _ in range(500)]
    assert all(0 <= d <= ceiling for d in delays)
    # Full jitter: the draws spread over the whole interval, from near 0 to near the ceiling.
    assert min(delays) < 0.05 * ceiling
    assert max(delays) > 0.95 * ceiling


@pytest.mark.parametrize("attempt", [31, 100, 10_000, 10**9])
def test_large_attempts_are_capped_without_overflow(attempt: int) -> None:
    rng = random.Random(1)
    delays = [backoff_delay(attempt, rng=rng) for _ in range(200)]
    assert all(0 <= d <= 10.0 for d in delays)
    assert max(delays) > 9.0  # the cap (10 s) is the ceiling, not something smaller


def test_same_seed_same_delays() -> None:
    first = [backoff_delay(a, rng=random.Random(42)) for a in range(10)]
    second = [backoff_delay(a, rng=random.Random(42)) for a in range(10)]
    third = [backoff_delay(a, rng=random.Random(43)) for a in range(10)]
    assert first == second
    assert first != third


def test_without_rng_uses_the_random_module(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[float, float]] = []

    def fake_uniform(low: float, high: float) -> float:
        calls.append((low, high))
        return 0.123

    monkeypatch.setattr(random, "uniform", fake_uniform)
    assert backoff_delay(2, base_s=0.5, cap_s=100.0) == 0.123
    assert calls == [(0, 2.0)]


@pytest.mark.parametrize(
    ("attempt", "base", "cap", "ceiling"),
    [
        (0, 5.0, 300.0, 5.0),  # 5 * 2**0
        (1, 5.0, 300.0, 10.0),
        (5, 5.0, 300.0, 160.0),  # 5 * 32
        (6, 5.0, 300.0, 300.0),  # 5 * 64 = 320, capped at 300
        (10**9, 5.0, 300.0, 300.0),  # the exponent stops at 30: no overflow
    ],
)
def test_the_ceiling_is_the_delay_without_jitter(attempt: int, base: float, cap: float, ceiling: float) -> None:
    assert backoff_ceiling(attempt, base, cap) == ceiling
