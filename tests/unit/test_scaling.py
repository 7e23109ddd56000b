"""clamp_actors() and desired_actors(): up at once, down one at a time with hysteresis, always within bounds."""

from __future__ import annotations

import itertools

import pytest

from loom_ray.policy.scaling import ScalingBounds, clamp_actors, desired_actors

BOUNDS = ScalingBounds(min_actors=3, max_actors=10)
RATE = 100.0  # messages per second per actor
CATCHUP = 60.0  # seconds; one actor clears RATE * CATCHUP = 6000 messages per catch-up window


@pytest.mark.parametrize(
    ("wanted", "partitions", "expected"),
    [
        (5, 12, 5),  # within bounds
        (1, 12, 3),  # raised to min_actors
        (50, 12, 10),  # lowered to max_actors
        (50, 6, 6),  # never more actors than partitions
        (1, 2, 2),  # min_actors (3) capped at the partition count (2)
        (5, 1, 1),
        (5, 0, 1),  # no partitions yet: still one actor
        (0, 12, 3),
    ],
)
def test_clamp_actors(wanted: int, partitions: int, expected: int) -> None:
    assert clamp_actors(wanted, BOUNDS, partitions) == expected


@pytest.mark.parametrize(
    ("current", "lag", "expected"),
    [
        # Up at once: needed = ceil(lag / 6000).
        (3, 42_000, 7),  # ceil(42000 / 6000) = 7 > 3: straight to 7, not 4
        (3, 42_001, 8),  # ceil(7.0002) = 8
        (3, 600_000, 10),  # ceil(100) = 100, capped at max_actors 10
        # Down by one, only when the lag would clear in CATCHUP / 4 with one actor fewer:
        # fewer * 6000 / 4 = fewer * 1500.
        (8, 0, 7),  # no lag: one fewer, not straight to min_actors
        (8, 10_500, 7),  # 10500 <= 7 * 1500 = 10500: one fewer
        (8, 10_501, 8),  # 10501 > 10500: hysteresis holds at 8 although ceil(10501 / 6000) = 2 actors would do
        (8, 48_000, 8),  # needed = 8 = current: stay
        (4, 0, 3),  # 3 * 1500 >= 0: down to min_actors
        (3, 0, 3),  # already at min_actors: stay
    ],
)
def test_desired_actors(current: int, lag: int, expected: int) -> None:
    assert desired_actors(current, lag, RATE, CATCHUP, BOUNDS, partitions=12) == expected


@pytest.mark.parametrize(
    ("current", "lag", "partitions", "expected"),
    [
        (3, 600_000, 5, 5),  # ceil(100) = 100 actors wanted, only 5 partitions
        (8, 10_501, 5, 5),  # holding at 8 is still capped at the 5 partitions
        (3, 0, 2, 2),  # min_actors 3 but only 2 partitions
        (1, 0, 12, 3),  # below min_actors (e.g. bounds raised): back up to 3
        (15, 10**9, 12, 10),  # above max_actors (e.g. bounds lowered): down to 10 at once
    ],
)
def test_desired_actors_limits(current: int, lag: int, partitions: int, expected: int) -> None:
    assert desired_actors(current, lag, RATE, CATCHUP, BOUNDS, partitions) == expected


@pytest.mark.parametrize("rate", [0.0, -1.0])
@pytest.mark.parametrize(("current", "expected"), [(5, 5), (1, 3), (20, 10)])
def test_unknown_rate_keeps_the_current_count_clamped(rate: float, current: int, expected: int) -> None:
    assert desired_actors(current, 10**9, rate, CATCHUP, BOUNDS, partitions=12) == expected


def test_draining_backlog_steps_down_one_actor_at_a_time() -> None:
    current, seen = 10, []
    for lag in [60_000, 30_000, 0, 0, 0, 0, 0, 0, 0, 0]:
        current = desired_actors(current, lag, RATE, CATCHUP, BOUNDS, partitions=12)
        seen.append(current)
    # 60000 <= 9 * 1500? no: stay 10. 30000 <= 9 * 1500 = 13500? no: stay 10. Then one fewer per round down to 3.
    assert seen == [10, 10, 9, 8, 7, 6, 5, 4, 3, 3]


@pytest.mark.parametrize(
    ("current", "lag", "partitions", "min_actors", "max_actors"),
    list(itertools.product([1, 2, 5, 9, 14], [0, 1, 5000, 10**5, 10**8], [0, 1, 3, 8, 20], [1, 3], [3, 10])),
)
def test_desired_actors_always_within_bounds(
    current: int, lag: int, partitions: int, min_actors: int, max_actors: int
) -> None:
    bounds = ScalingBounds(min_actors, max_actors)
    result = desired_actors(current, lag, RATE, CATCHUP, bounds, partitions)
    assert 1 <= result <= max(1, min(max_actors, partitions))
    assert result >= min(min_actors, max(partitions, 1))
    if current <= result:
        return
    # Scaling down never drops more than one actor, unless the bounds themselves force it.
    assert result >= current - 1 or result == max(1, min(max_actors, partitions))


def test_no_backlog_and_no_rate_steps_down_one_actor() -> None:
    # Idle consumers commit nothing (rate 0); with lag 0 one can go: 5 -> 4, never below min_actors.
    assert desired_actors(5, 0, 0.0, CATCHUP, BOUNDS, partitions=12) == 4
    assert desired_actors(BOUNDS.min_actors, 0, 0.0, CATCHUP, BOUNDS, partitions=12) == BOUNDS.min_actors
