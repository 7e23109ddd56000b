"""The end of every fault test: check the tables, build the figure line, record it, assert exactly once."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.faults.checker import CheckReport, check
from tests.faults.injector import Injector
from tests.faults.monitor import Monitor, percentiles
from tests.faults.producer import Producer
from tests.faults.stack import FaultStack
from tests.support.pipeline import high_watermarks


@dataclass
class Figure:
    """Inputs of one report line beyond the checker's counts."""

    test_id: str
    seed: int
    faults: str  # e.g. "6 (kill -9)"
    started: float  # time.monotonic() when production (or ingestion) began: throughput = messages / elapsed
    seconds: float = 0.0
    recovery: list[float] = field(default_factory=list)
    unrecovered: int = 0
    rss_max_mb: float = 0.0
    extra: str = ""

    def line(self, report: CheckReport, messages: int, partitions: int) -> str:
        """``T1 seed=7 msgs=150,000 partitions=12 faults=6 (kill -9) lost=0 ... PASS`` (reliability.md §7.1)."""
        p50, p99 = percentiles(self.recovery)
        recovery = f"recovery p50/p99={p50:.1f}/{p99:.1f}s" if self.recovery else "recovery n/a"
        if self.unrecovered:
            recovery += f" unrecovered={self.unrecovered}"
        parts = [
            f"{self.test_id} seed={self.seed} msgs={messages:,} partitions={partitions} faults={self.faults}",
            report.counts(),
            recovery,
            f"thr={messages / max(self.seconds, 1e-9):,.0f}/s",
            f"rssMax={self.rss_max_mb:.0f}MB" if self.rss_max_mb else "rssMax=n/a",
        ]
        if self.extra:
            parts.append(self.extra)
        parts.append("PASS" if report.ok else f"FAIL {report.violations}")
        return " ".join(parts)


def conclude(
    figure: Figure,
    stack: FaultStack,
    topic: str,
    producers: Sequence[Producer],
    logs: Sequence[Path],
    injector: Injector | None = None,
    monitor: Monitor | None = None,
    *,
    read_committed: bool = False,
    expected_gaps: int | None = None,
) -> tuple[CheckReport, str]:
    """Run the checker once the run drained and stopped; return the report and its figure line.

    ``read_committed`` and ``expected_gaps`` are passed to :func:`tests.faults.checker.check`.
    """
    figure.seconds = time.monotonic() - figure.started
    marks = high_watermarks(stack.kafka, topic)
    acks = [p.ack_log for p in producers]
    report = check(
        stack.dsn, stack.kafka, topic, acks, logs, read_committed=read_committed, expected_gaps=expected_gaps
    )
    if injector is not None and monitor is not None:
        highs = {p: high for p, (_, high) in marks.items()}
        times = [monitor.recovery_s(f, highs) for f in injector.faults]
        figure.recovery = [t for t in times if t is not None]
        figure.unrecovered = sum(1 for t in times if t is None)
    if monitor is not None:
        figure.rss_max_mb = monitor.rss_max_mb()
    messages = sum(high - low for low, high in marks.values())
    return report, figure.line(report, messages, len(marks))
