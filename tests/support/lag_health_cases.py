"""The lag-health table: windows with the status Burrow's rules give them. Used by the unit tests of
``loom_ray.policy.lag_health`` and, through ``v_consumer_lag_health``, by the integration tests, so the pure
function and the SQL view are held to the same cases.

A case is ``(name, samples, current_lag, status)``; ``samples`` are ``(age_s, next_offset, lag)``, oldest first,
``age_s`` seconds before now.
"""

from __future__ import annotations

from loom_ray.policy.lag_health import PartitionStatus

Case = tuple[str, list[tuple[float, int, int]], int, PartitionStatus]

CASES: list[Case] = [
    ("no samples", [], 5, PartitionStatus.OK),
    ("two samples are too few to judge", [(20, 0, 50), (10, 0, 60)], 60, PartitionStatus.OK),
    ("caught up now", [(30, 0, 50), (20, 0, 60), (10, 0, 70)], 0, PartitionStatus.OK),
    ("lag was zero once in the window", [(30, 0, 50), (20, 50, 0), (10, 50, 70)], 70, PartitionStatus.OK),
    ("consuming, lag going down", [(30, 0, 50), (20, 20, 40), (10, 40, 30)], 30, PartitionStatus.OK),
    ("lag down once, up otherwise", [(40, 0, 50), (30, 10, 60), (20, 30, 55), (10, 40, 70)], 70, PartitionStatus.OK),
    ("offset went back", [(30, 100, 50), (20, 40, 110), (10, 60, 90)], 90, PartitionStatus.REWIND),
    ("rewind outranks stop", [(130, 100, 50), (120, 40, 110), (110, 60, 90)], 90, PartitionStatus.REWIND),
    ("no sample for longer than the window spans", [(60, 0, 50), (50, 10, 60), (40, 20, 70)], 70, PartitionStatus.STOP),
    ("stop outranks stall", [(60, 5, 50), (50, 5, 60), (40, 5, 70)], 70, PartitionStatus.STOP),
    ("offset unchanged, lag above zero", [(30, 5, 50), (20, 5, 50), (10, 5, 50)], 50, PartitionStatus.STALL),
    ("offset unchanged while lag grows", [(30, 5, 50), (20, 5, 60), (10, 5, 70)], 70, PartitionStatus.STALL),
    ("moving, lag never down", [(30, 0, 50), (20, 10, 60), (10, 20, 60)], 60, PartitionStatus.WARN),
    ("moving, lag growing", [(30, 0, 50), (20, 10, 60), (10, 20, 70)], 70, PartitionStatus.WARN),
]
