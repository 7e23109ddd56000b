"""Records processed (rows plus dead letters): the driver's progress line and summary, the autoscaler's rate.

Offsets are not records. A partition's committed offset also moves over offsets that hold none (transaction
markers, aborted or compacted records, recorded gaps), and a first claim starts at the log's low watermark,
which may be millions. So every figure that says how much was ingested counts rows and dead letters: each
consumer reports its cumulative totals with its stats, the coordinator sums them in a :class:`RecordTally`
that survives consumers being stopped or replaced, and the driver measures a rate over its samples of that
sum with an :class:`IngestWindow`. Pure: no I/O, no clock of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# A rate over a shorter window says more about when the samples fell than about ingestion.
MIN_RATE_WINDOW_S = 5.0


@dataclass(slots=True)
class RecordTally:
    """Records committed by every consumer a coordinator has run, from their cumulative reports.

    ``observe`` takes each health check's stats: a consumer's ``totals`` only grow while it lives, so the
    tally adds what each grew by since its previous report. A stopped or dead consumer's last report stays
    counted (what it committed after that report is not); a replacement starts from zero under a new name.
    """

    total: int = 0
    observed_at: float | None = None  # monotonic time of the latest observe()
    _reported: dict[str, int] = field(default_factory=dict)

    def observe(self, consumer: str, stats: Mapping[str, Any], now: float) -> None:
        """Take one consumer's stats (``stats["totals"]``: ``rows``, ``dead_letters``) seen at ``now``."""
        totals = stats.get("totals", {})
        reported = int(totals.get("rows", 0)) + int(totals.get("dead_letters", 0))
        previous = self._reported.get(consumer, 0)
        self._reported[consumer] = reported
        self.total += max(reported - previous, 0)
        self.observed_at = now


def records_per_consumer(previous: tuple[float, int], current: tuple[float, int], consumers: int) -> float:
    """Records per second per consumer between two ``(monotonic time, tally total)`` samples: the
    autoscaler's rate (a claim that starts at a high low watermark adds nothing to it)."""
    return (current[1] - previous[1]) / max(current[0] - previous[0], 1e-3) / consumers


@dataclass(slots=True)
class IngestWindow:
    """The driver's samples of a coordinator's :class:`RecordTally`: records processed during this run,
    and the time between the first and the last sample that saw records committed.

    The first sample is the baseline (a coordinator rejoined by name has counted earlier runs). A total
    below the previous one means the coordinator was restarted and counts again from zero.
    """

    processed: int = 0
    first: tuple[float, int] | None = None  # (when, processed) at the first sample that saw records committed
    last: tuple[float, int] | None = None  # the same, at the latest such sample
    _total: int | None = None

    def observe(self, when: float, total: int) -> None:
        """Take the tally's ``total`` as it was at ``when`` (monotonic seconds)."""
        if self._total is None:
            self._total = total
            return
        added = total - self._total if total >= self._total else total
        self._total = total
        if added > 0:
            self.processed += added
            self.last = (when, self.processed)
            if self.first is None:
                self.first = self.last

    @property
    def seconds(self) -> float:
        """Length of the window: from the first to the last sample that saw records committed."""
        if self.first is None or self.last is None:
            return 0.0
        return self.last[0] - self.first[0]

    def rate(self) -> float | None:
        """Records committed per second within the window, or None when it is shorter than
        :data:`MIN_RATE_WINDOW_S`. What the first sample saw was committed before the window opened."""
        if self.first is None or self.last is None or self.seconds < MIN_RATE_WINDOW_S:
            return None
        return (self.last[1] - self.first[1]) / self.seconds


# A consumer line lists at most this many partitions by name, then how many more it holds.
LISTED_PARTITIONS = 8


@dataclass(slots=True)
class ConsumerLines:
    """The driver's per-consumer lines in the job's log (the Ray dashboard's Jobs page shows that log): for
    each consumer actor, its messages/s and rows/s since the previous line, its dead letters, the lag of the
    partitions it holds and which they are.

    Rates come from the cumulative ``totals`` each consumer reports with its stats; a consumer seen for the
    first time has no rate yet (``-``).
    """

    _previous: dict[str, tuple[float, int, int]] = field(default_factory=dict)  # name -> (when, rows, dead)

    def lines(self, status: Mapping[str, Any], now: float) -> list[str]:
        """One line per consumer in the coordinator's ``status`` (``actors``: name -> stats; ``lags``:
        ``"topic[p]"`` -> lag), sampled at ``now`` (monotonic seconds)."""
        lags: Mapping[str, int] = status.get("lags", {})
        current: dict[str, tuple[float, int, int]] = {}
        out = []
        for name, stats in sorted(status["actors"].items()):
            totals = stats.get("totals", {})
            rows, dead = int(totals.get("rows", 0)), int(totals.get("dead_letters", 0))
            current[name] = (now, rows, dead)
            held = sorted(stats.get("partitions", {}))
            previous = self._previous.get(name)
            if previous is None or now <= previous[0]:
                rates = "- msg/s, - rows/s"
            else:
                seconds = now - previous[0]
                rates = (
                    f"{(rows + dead - previous[1] - previous[2]) / seconds:.0f} msg/s, "
                    f"{(rows - previous[1]) / seconds:.0f} rows/s"
                )
            listed = ",".join(held[:LISTED_PARTITIONS]) + (
                f",… (+{len(held) - LISTED_PARTITIONS})" if len(held) > LISTED_PARTITIONS else ""
            )
            out.append(
                f"consumer {name}: {rates}, {rows + dead} messages, {dead} dead letters, "
                f"lag {sum(lags.get(p, 0) for p in held)}, partitions held: {len(held)}"
                + (f" ({listed})" if held else "")
            )
        self._previous = current
        return out
