"""Per-actor Prometheus metrics through ``ray.util.metrics`` (exported as ``ray_loom_*``)."""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge, Histogram

from loom_ray.sink.postgres import FlushResult

_TAGS = ("topic", "partition")


class FlushMetrics:
    """Counters a consumer actor updates after every committed flush, and its blocked-flush gauge."""

    def __init__(self, consumer: str) -> None:
        self._consumer = consumer
        self._blocked_sqlstate: str | None = None
        self.messages = Counter("loom_messages", "Messages committed (rows + dead letters).", _TAGS)
        self.rows = Counter("loom_rows", "Rows committed to the sink table.", _TAGS)
        self.dead_letters = Counter("loom_dead_letters", "Messages committed as dead letters.", _TAGS)
        self.batches = Counter("loom_batches", "Batches committed.", _TAGS)
        self.fenced = Counter("loom_fenced_flushes", "Batches rolled back because the claim was lost.", _TAGS)
        self.gap_offsets = Counter(
            "loom_gap_offsets", "Offsets skipped because the broker no longer had them (loom_gaps).", _TAGS
        )
        self.route_records = Counter(
            "loom_route_records",
            "Records of a routed topic committed, by route and outcome: inserted, upserted, deleted, dead_letter.",
            ("route", "outcome"),
        )
        self.flush_seconds = Histogram(
            "loom_flush_seconds",
            "Seconds per flush transaction.",
            [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
        )
        self.blocked = Gauge(
            "loom_sink_blocked",
            "1 while PostgreSQL refuses this consumer's flushes with this SQLSTATE (not an outage), else 0.",
            ("consumer", "sqlstate"),
        )

    def on_flush(self, result: FlushResult, seconds: float) -> None:
        """Record one flush (Ray refuses ``inc(0)``, so zero counts are skipped)."""
        for batch in result.committed:
            tags = {"topic": batch.topic, "partition": str(batch.partition)}
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
                ("dead_letter", counts.dead_letters),
            ):
                if value:
                    self.route_records.inc(value, {"route": route, "outcome": outcome})
        for batch in result.fenced:
            self.fenced.inc(1, {"topic": batch.topic, "partition": str(batch.partition)})
        if result.committed:
            self.flush_seconds.observe(seconds)

    def on_blocked(self, sqlstate: str | None) -> None:
        """Raise the gauge for the SQLSTATE that blocks flushes now (None: nothing), lower the previous one."""
        previous, self._blocked_sqlstate = self._blocked_sqlstate, sqlstate
        if previous is not None and previous != sqlstate:
            self.blocked.set(0, {"consumer": self._consumer, "sqlstate": previous})
        if sqlstate is not None:
            self.blocked.set(1, {"consumer": self._consumer, "sqlstate": sqlstate})


class LagMetrics:
    """The coordinator's per-partition lag gauge (high watermark minus committed offset)."""

    def __init__(self) -> None:
        self.lag = Gauge("loom_partition_lag", "Messages not yet committed to PostgreSQL.", _TAGS)

    def set(self, topic: str, partition: int, lag: int) -> None:
        """Publish one partition's lag."""
        self.lag.set(lag, {"topic": topic, "partition": str(partition)})


class LagHealthMetrics:
    """The coordinator's per-partition lag health gauge, ``ray_loom_lag_health``: the
    :class:`~loom_ray.policy.lag_health.PartitionStatus` value (0 OK, 1 WARN, 2 STOP, 3 STALL, 4 REWIND; 2 and
    above are errors), set after every lag sample."""

    def __init__(self) -> None:
        self.health = Gauge(
            "loom_lag_health", "Lag health: 0 OK, 1 WARN, 2 STOP, 3 STALL, 4 REWIND (Burrow's rules).", _TAGS
        )

    def set(self, topic: str, partition: int, status: int) -> None:
        """Publish one partition's status."""
        self.health.set(status, {"topic": topic, "partition": str(partition)})
