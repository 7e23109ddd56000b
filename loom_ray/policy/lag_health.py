"""Lag health of a partition by Burrow's rules (linkedin/Burrow, ``core/internal/evaluator``): no thresholds,
only the shape of a sliding window of the last :data:`WINDOW_SAMPLES` lag samples.

A sample is one row of ``consumer_lag_history``: the committed ``next_offset`` and the lag the coordinator saw
at ``sampled_at``. Samples play the part of Burrow's offset commits: the coordinator writes one per partition
every ``LOOM_LAG_SAMPLE_INTERVAL_S`` whether the offset moved or not, so samples that stop arriving mean the
deployment (its coordinator) stopped, and samples with an unchanged offset mean nobody is consuming.

The rules, checked in this order (:func:`evaluate`):

1. fewer than :data:`MIN_SAMPLES` samples, the current lag is 0, or the lag was 0 in any sample of the window:
   ``OK``;
2. the committed offset went down between two samples: ``REWIND`` (an error);
3. the time since the newest sample exceeds the window's span (newest minus oldest): ``STOP`` (an error:
   sampling stopped, the coordinator or the job is gone);
4. the committed offset never changed over the window: ``STALL`` (an error: the partition is not consumed);
5. the offset moves but the lag never went down between two samples: ``WARN`` (consumers too slow);
6. otherwise ``OK``.

Burrow judges any window, even of one commit; here a window needs :data:`MIN_SAMPLES`: samples are taken in
health-check rounds, up to ``LOOM_HEALTH_CHECK_INTERVAL_S`` late, and with one or two samples that jitter alone
would read as STOP while the deployment starts.

``sql/views/v_consumer_lag_health.sql`` computes the same rules in SQL for ``v_consumer_lag_health`` and
``v_consumer_alerts``; ``tests/integration/test_lag_health.py`` runs this module's unit-test table through the
view, so the two agree. The whole deployment's status is the worst partition's, with STOP, STALL and REWIND
all counted as ``ERR`` (:func:`overall`), which is what ``scripts/monitor-consumer-lag.sh`` turns into its exit
code.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

WINDOW_SAMPLES = 10  # Burrow's default window (`intervals`); sql/views/v_consumer_lag_health.sql uses it too
MIN_SAMPLES = 3


class PartitionStatus(enum.IntEnum):
    """One partition's status; the value is the ``ray_loom_lag_health`` gauge (2 and above are errors)."""

    OK = 0
    WARN = 1
    STOP = 2
    STALL = 3
    REWIND = 4


class Health(enum.IntEnum):
    """The deployment's status; the value is ``scripts/monitor-consumer-lag.sh``'s exit code."""

    OK = 0
    WARN = 1
    ERR = 2


@dataclass(frozen=True, slots=True)
class Sample:
    """One partition's committed offset and lag at ``sampled_at`` (seconds since the epoch)."""

    sampled_at: float
    next_offset: int
    lag: int


def evaluate(window: Sequence[Sample], current_lag: int, now: float) -> PartitionStatus:
    """The status of one partition from its window (oldest first, at most :data:`WINDOW_SAMPLES`), its lag
    now and the time now (seconds since the epoch); see the module docstring for the rules."""
    if len(window) < MIN_SAMPLES or current_lag == 0 or any(s.lag == 0 for s in window):
        return PartitionStatus.OK
    samples = list(window)
    pairs = list(zip(samples, samples[1:], strict=False))
    if any(b.next_offset < a.next_offset for a, b in pairs):
        return PartitionStatus.REWIND
    if now - samples[-1].sampled_at > samples[-1].sampled_at - samples[0].sampled_at:
        return PartitionStatus.STOP
    if all(b.next_offset == a.next_offset for a, b in pairs):
        return PartitionStatus.STALL
    if all(b.lag >= a.lag for a, b in pairs):
        return PartitionStatus.WARN
    return PartitionStatus.OK


def overall(statuses: Iterable[PartitionStatus]) -> Health:
    """The deployment's status: the worst partition's, where STOP, STALL and REWIND are ``ERR``; ``OK`` for
    no partitions."""
    worst = max(statuses, default=PartitionStatus.OK)
    if worst >= PartitionStatus.STOP:
        return Health.ERR
    return Health.WARN if worst == PartitionStatus.WARN else Health.OK
