"""T10: memory under sustained load, and T10b: memory while a cold backlog drains.

T10: the producer runs at a steady rate for a while; the consumer actors' RSS is sampled every second.
Reported: peak RSS and the largest growth of one actor after a warm-up (flatness, as a figure). T10b: the
whole topic is produced first, then the job starts cold and drains it at full speed, so fetching runs ahead
of the database and only the buffer bound (LOOM_BUFFER_MAX_BYTES, fetching pauses) holds memory. Asserted
for both: the checker, and only a generous ceiling on the peak.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.faults.conftest import Figures
from tests.faults.harness import Job, start_live
from tests.faults.monitor import Monitor
from tests.faults.producer import Producer, env_float, env_int
from tests.faults.scenario import Figure, conclude
from tests.faults.stack import FaultStack

_PEAK_BOUND_MB = 1536


def test_t10_rss_stays_flat_under_sustained_load(
    fault_stack: FaultStack, topic: str, tmp_path: Path, job_factory: Callable[..., Job], figures: Figures
) -> None:
    seed = env_int("LOOM_FAULT_SEED", 13)
    rate = env_float("LOOM_FAULT_T10_RATE", 3000)
    seconds = env_float("LOOM_FAULT_T10_SECONDS", 30)  # chaos.sh: 240
    warmup_s = env_float("LOOM_FAULT_T10_WARMUP_S", 10)
    job = job_factory()
    with Monitor(job, interval_s=1.0) as monitor:
        producer, started = start_live(job, int(rate * seconds), seed, rate=rate)
        producer.wait()
        job.finish()
    grown_mb, per_min = monitor.rss_growth(warmup_s)
    figure = Figure("T10", seed, "0 (sustained load)", started)
    figure.extra = f"rate={rate:,.0f}/s for {seconds:.0f}s rssGrowth={grown_mb:+.1f}MB"
    figure.extra += f" ({per_min:+.1f}MB/min after {warmup_s:.0f}s)"
    report, line = conclude(figure, fault_stack, topic, [producer], [job.log], monitor=monitor)
    figures.add(line)
    assert report.ok, report.table()
    assert monitor.rss, "no consumer actor RSS was sampled"
    assert monitor.rss_max_mb() < _PEAK_BOUND_MB, f"peak consumer RSS {monitor.rss_max_mb():.0f} MB"


def test_t10b_cold_backlog_drains_in_bounded_memory(
    fault_stack: FaultStack, topic: str, tmp_path: Path, job_factory: Callable[..., Job], figures: Figures
) -> None:
    seed = env_int("LOOM_FAULT_SEED", 15)
    messages = env_int("LOOM_FAULT_T10B_MESSAGES", 300_000)  # chaos.sh: 2,000,000
    job = job_factory()
    producer = Producer(fault_stack, topic, tmp_path, messages, seed=seed).fill()
    with Monitor(job, interval_s=1.0) as monitor:
        started = time.monotonic()
        job.start()
        job.finish(timeout_s=1800)
    figure = Figure("T10b", seed, "0 (cold backlog)", started)
    figure.extra = f"backlog={messages:,} drained in {time.monotonic() - started:.0f}s"
    report, line = conclude(figure, fault_stack, topic, [producer], [job.log], monitor=monitor)
    figures.add(line)
    assert report.ok, report.table()
    assert monitor.rss, "no consumer actor RSS was sampled"
    assert monitor.rss_max_mb() < _PEAK_BOUND_MB, f"peak consumer RSS {monitor.rss_max_mb():.0f} MB"
