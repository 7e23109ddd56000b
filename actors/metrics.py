"""Prometheus metrics of the actors, through ``ray.util.metrics`` (exported as ``ray_loom_*``).

Every series names the consumer actor it describes (tag ``consumer``, the actor's Ray name, e.g.
``loom-consumer-2``), and per-partition series also ``topic`` and ``partition``, so a dashboard can chart
throughput and lag by consumer instead of by Ray's opaque ``WorkerId``. Ray exports a counter only after its
first increment: the event counters (fenced flushes, gaps, outages) appear with their first event.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from ray.util.metrics import Counter, Gauge, Histogram

from loom_ray.sink.postgres import FlushResult

_PARTITION_TAGS = ("consumer", "topic", "partition")
UNOWNED = "none"  # the ``consumer`` tag of a partition's lag while no consumer holds it


class GaugeSink(Protocol):
    """What :class:`LagMetrics` needs of a gauge: ``ray.util.metrics.Gauge.set``."""

    def set(self, value: int | float | None, tags: dict[str, str] | None = None) -> None: ...


class FlushMetrics:
    """The metrics one consumer actor updates after every flush, outage and change of blocker."""

    def __init__(self, consumer: str) -> None:
        self._consumer = consumer
        self._blocked_sqlstate: str | None = None
        self.messages = Counter("loom_messages", "Messages committed (rows + dead letters).", _PARTITION_TAGS)
        self.rows = Counter("loom_rows", "Rows committed to the sink table.", _PARTITION_TAGS)
        self.dead_letters = Counter("loom_dead_letters", "Messages committed as dead letters.", _PARTITION_TAGS)
        self.batches = Counter("loom_batches", "Batches committed.", _PARTITION_TAGS)
        self.fenced = Counter("loom_fenced_flushes", "Batches rolled back because the claim was lost.", _PARTITION_TAGS)
        self.gap_offsets = Counter(
            "loom_gap_offsets", "Offsets skipped because the broker no longer had them (loom_gaps).", _PARTITION_TAGS
        )
        self.outages = Counter(
            "loom_outages", "Flushes that failed because PostgreSQL was out of reach, and were retried.", ("consumer",)
        )
        self.route_records = Counter(
            "loom_route_records",
            "Records of a routed topic committed, by route and outcome: inserted, upserted, deleted, stale (older "
            "than the key's row), duplicate (a key the table held, ignored), dead_letter.",
            ("route", "outcome"),
        )
        self.flush_seconds = Histogram(
            "loom_flush_seconds",
            "Seconds per flush transaction.",
            [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
            ("consumer",),
        )
        self.blocked = Gauge(
            "loom_sink_blocked",
            "1 while PostgreSQL refuses this consumer's flushes with this SQLSTATE (not an outage), else 0.",
            ("consumer", "sqlstate"),
        )

    def _tags(self, topic: str, partition: int) -> dict[str, str]:
        return {"consumer": self._consumer, "topic": topic, "partition": str(partition)}

    def on_flush(self, result: FlushResult, seconds: float) -> None:
        """Record one flush (Ray refuses ``inc(0)``, so zero counts are skipped)."""
        for batch in result.committed:
            tags = self._tags(batch.topic, batch.partition)
            for counter, value in (
                (self.messages, batch.count),
                (self.rows, len(batch.rows)),
                (self.dead_letters, len(batch.dead_letters)),
                (self.batches, 1),
                (self.gap_offsets, sum(g.to_offset - g.from_offset for g in batch.gaps)),
            ):
                if value:
                    counter.inc(value, tags)
        for (route, _, _), counts in result.routes.items():
            for outcome, value in (
                ("inserted", counts.inserted),
                ("upserted", counts.upserted),
                ("deleted", counts.deleted),
                ("stale", counts.stale),
                ("duplicate", counts.duplicates),
                ("dead_letter", counts.dead_letters),
            ):
                if value:
                    self.route_records.inc(value, {"route": route, "outcome": outcome})
        for batch in result.fenced:
            self.fenced.inc(1, self._tags(batch.topic, batch.partition))
        if result.committed:
            self.flush_seconds.observe(seconds, {"consumer": self._consumer})

    def on_outage(self) -> None:
        """Count one flush attempt that failed for an outage (it is retried)."""
        self.outages.inc(1, {"consumer": self._consumer})

    def on_blocked(self, sqlstate: str | None) -> None:
        """Raise the gauge for the SQLSTATE that blocks flushes now (None: nothing), lower the previous one."""
        previous, self._blocked_sqlstate = self._blocked_sqlstate, sqlstate
        if previous is not None and previous != sqlstate:
            self.blocked.set(0, {"consumer": self._consumer, "sqlstate": previous})
        if sqlstate is not None:
            self.blocked.set(1, {"consumer": self._consumer, "sqlstate": sqlstate})


class LagMetrics:
    """The coordinator's gauges: each partition's lag under the consumer holding it, and the partitions each
    consumer holds. Updated at every lag sample (``LOOM_LAG_SAMPLE_INTERVAL_S``).

    Ray keeps exporting a gauge's last value for every tag set it has seen, so when a partition changes hands
    (or a consumer goes away) the series under the previous consumer is set to 0: summing by consumer, or
    taking the max per partition, stays true.
    """

    def __init__(self, lag: GaugeSink | None = None, held: GaugeSink | None = None) -> None:
        """Ray's gauges, unless others are given (unit tests record what is set)."""
        self.lag = lag or Gauge("loom_partition_lag", "Messages not yet committed to PostgreSQL.", _PARTITION_TAGS)
        self.held = held or Gauge("loom_consumer_partitions", "Partitions this consumer holds.", ("consumer",))
        self._owners: dict[tuple[str, int], str] = {}
        self._consumers: set[str] = set()

    def publish(self, rows: Iterable[tuple[str, int, int, str | None]]) -> None:
        """Publish one sample: ``(topic, partition, lag, owner or None)`` for every partition."""
        held: dict[str, int] = {}
        for topic, partition, lag, owner in rows:
            consumer = owner or UNOWNED
            previous = self._owners.get((topic, partition))
            if previous is not None and previous != consumer:
                self.lag.set(0, {"consumer": previous, "topic": topic, "partition": str(partition)})
            self._owners[(topic, partition)] = consumer
            self.lag.set(lag, {"consumer": consumer, "topic": topic, "partition": str(partition)})
            if owner is not None:
                held[owner] = held.get(owner, 0) + 1
        for gone in self._consumers - held.keys():
            self.held.set(0, {"consumer": gone})
        for consumer, count in held.items():
            self.held.set(count, {"consumer": consumer})
        self._consumers = set(held)


class LagHealthMetrics:
    """The coordinator's per-partition lag health gauge, ``ray_loom_lag_health``: the
    :class:`~loom_ray.policy.lag_health.PartitionStatus` value (0 OK, 1 WARN, 2 STOP, 3 STALL, 4 REWIND; 2 and
    above are errors), set after every lag sample."""

    def __init__(self) -> None:
        self.health = Gauge(
            "loom_lag_health",
            "Lag health: 0 OK, 1 WARN, 2 STOP, 3 STALL, 4 REWIND (Burrow's rules).",
            ("topic", "partition"),
        )

    def set(self, topic: str, partition: int, status: int) -> None:
        """Publish one partition's status."""
        self.health.set(status, {"topic": topic, "partition": str(partition)})


class PartitionFlagMetrics:
    """A coordinator's per-partition gauge, 1 while the partition is in some state and 0 otherwise; set when
    the state changes and for every partition at each lag sample, so the series exists (at 0) before any
    partition enters the state."""

    def __init__(self, name: str, description: str) -> None:
        self.gauge = Gauge(name, description, ("topic", "partition"))

    def set(self, topic: str, partition: int, on: bool) -> None:
        """Publish one partition's state."""
        self.gauge.set(1 if on else 0, {"topic": topic, "partition": str(partition)})


class ParkedMetrics(PartitionFlagMetrics):
    """``ray_loom_partition_parked``: the partition is parked (not read after repeated faults with one error,
    :mod:`loom_ray.policy.parking`)."""

    def __init__(self) -> None:
        super().__init__(
            "loom_partition_parked",
            "1 while the partition is parked after repeated faults (python -m loom_ray.ctl unpark), else 0.",
        )


class PausedMetrics(PartitionFlagMetrics):
    """``ray_loom_partition_paused``: the partition's topic is paused (``python -m loom_ray.ctl pause``: not
    fetched nor flushed, its place kept)."""

    def __init__(self) -> None:
        super().__init__(
            "loom_partition_paused",
            "1 while the partition's topic is paused (python -m loom_ray.ctl pause; resume reads it again), else 0.",
        )


class ConsumerCountMetrics:
    """The coordinator's gauge ``ray_loom_consumers`` (tag ``state``): consumers ``running``, and ``pending``
    (asked of Ray and not started yet: waiting for a node to place them on). Set at every round."""

    def __init__(self) -> None:
        self.consumers = Gauge(
            "loom_consumers",
            "Consumer actors running, and pending (waiting to be placed on a node).",
            ("state",),
        )

    def set(self, running: int, pending: int) -> None:
        """Publish the counts of this round."""
        self.consumers.set(running, {"state": "running"})
        self.consumers.set(pending, {"state": "pending"})
