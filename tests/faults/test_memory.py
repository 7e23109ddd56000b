"""T10: memory under sustained load. The producer runs at a steady rate for a while; the consumer actors'
RSS is sampled every second. Reported: peak RSS and the largest growth of one actor after a warm-up
(flatness, as a figure); asserted: only a generous ceiling.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.faults.conftest import Figures
from tests.faults.harness import Job, start_live
from tests.faults.monitor import Monitor
from tests.faults.producer import env_float, env_int
from tests.faults.scenario import Figure, conclude
from tests.faults.stack import FaultStack

_PEAK_BOUND_MB = 1536


def test_t10_rss_stays_flat_under_sustained_load(
    fault_stack: FaultStack, topic: str, tmp_path: Path, job_factory: Callable[..., Job], figures: Figures
) -> None:
    seed = env_int("LOOM_FAULT_SEED", 13)
    rate = env_float("LOOM_FAULT_T10_RATE", 3000)
    seconds = env_float("LOOM_FAULT_T10_SECONDS", 45)
    warmup_s = env_float("LOOM_FAULT_T10_WARMUP_S", 15)
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
