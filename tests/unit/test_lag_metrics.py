"""The coordinator's lag gauges: a partition's lag under its current owner, the previous owner's series
zeroed, and the partitions each consumer holds (a consumer that holds none any more at 0)."""

from __future__ import annotations

from actors.metrics import UNOWNED, LagMetrics


class RecordingGauge:
    """Keeps the last value set per tag set, as Ray exports a gauge."""

    def __init__(self) -> None:
        self.values: dict[tuple[tuple[str, str], ...], float | None] = {}

    def set(self, value: int | float | None, tags: dict[str, str] | None = None) -> None:
        self.values[tuple(sorted((tags or {}).items()))] = value

    def get(self, **tags: str) -> float | None:
        return self.values[tuple(sorted(tags.items()))]


def test_a_partition_that_changes_hands_keeps_one_nonzero_series_and_held_counts_follow() -> None:
    lag, held = RecordingGauge(), RecordingGauge()
    metrics = LagMetrics(lag, held)
    metrics.publish([("t", 0, 40, "c1"), ("t", 1, 7, "c1"), ("t", 2, 3, None)])
    assert lag.get(consumer="c1", topic="t", partition="0") == 40
    assert lag.get(consumer=UNOWNED, topic="t", partition="2") == 3
    assert held.get(consumer="c1") == 2
    metrics.publish([("t", 0, 30, "c2"), ("t", 1, 5, "c2"), ("t", 2, 1, "c2")])
    assert lag.get(consumer="c1", topic="t", partition="0") == 0  # the old owner's series no longer counts
    assert lag.get(consumer="c2", topic="t", partition="0") == 30
    assert lag.get(consumer=UNOWNED, topic="t", partition="2") == 0
    assert (held.get(consumer="c1"), held.get(consumer="c2")) == (0, 3)
    series = {tags: value for tags, value in lag.values.items() if dict(tags)["partition"] == "0"}
    assert sorted(v for v in series.values() if v) == [30]  # summing by consumer or max by partition stays true
