"""Burrow's lag rules as a pure function: each status from a table of windows, and the deployment's status."""

from __future__ import annotations

import pytest

from loom_ray.policy.lag_health import Health, PartitionStatus, Sample, evaluate, overall
from tests.support.lag_health_cases import CASES

NOW = 1_800_000_000.0


@pytest.mark.parametrize(("samples", "current_lag", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_status(samples: list[tuple[float, int, int]], current_lag: int, expected: PartitionStatus) -> None:
    window = [Sample(NOW - age, offset, lag) for age, offset, lag in samples]
    assert evaluate(window, current_lag, NOW) == expected


def test_the_table_covers_every_status() -> None:
    assert {case[3] for case in CASES} == set(PartitionStatus)


def test_stop_is_strictly_longer_than_the_span() -> None:
    # Samples 10 s apart, the newest 20 s old: the span is 20 s, silence 20 s is not yet longer.
    window = [Sample(NOW - 40, 0, 50), Sample(NOW - 30, 10, 40), Sample(NOW - 20, 20, 30)]
    assert evaluate(window, 30, NOW) == PartitionStatus.OK
    assert evaluate(window, 30, NOW + 0.1) == PartitionStatus.STOP


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([], Health.OK),
        ([PartitionStatus.OK, PartitionStatus.OK], Health.OK),
        ([PartitionStatus.OK, PartitionStatus.WARN], Health.WARN),
        ([PartitionStatus.WARN, PartitionStatus.STOP], Health.ERR),
        ([PartitionStatus.STALL], Health.ERR),
        ([PartitionStatus.OK, PartitionStatus.REWIND, PartitionStatus.WARN], Health.ERR),
    ],
)
def test_overall_is_the_worst_partition(statuses: list[PartitionStatus], expected: Health) -> None:
    assert overall(statuses) == expected
