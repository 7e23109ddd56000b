"""One measured drain: fresh table, start the system, sample CPU and memory, read the numbers back.

The rate and the CPU window come from PostgreSQL's commit timestamps (B0, which writes nothing, reports
its own first and last batch times). CPU is counted inside that window only, so start-up (Ray's ~10 s)
does not dilute the per-message cost; the whole run's CPU is kept as ``cpu_s_run``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from loom_bench import database, kafka, processes
from loom_bench.config import Window
from loom_bench.launch import Launch, Target, launch
from loom_bench.measure import Sampler, Series
from loom_bench.stats import DrainRate, drain_rate, per_million, window_delta, windowed

log = logging.getLogger(__name__)
STALL_S = 20.0  # no new row for this long: a system stopped by bad input
SHORT_WINDOW = 0.8  # a timed window that ends before this share of its length measured a tail, not a rate
UNTIMED = Window(0.0, 0.0)  # drain the whole topic (the smoke run, the coordinator scale benchmark)
STARTUP_S = 90.0  # no first row for this long: a system that never writes (bad input in its first batch)
WINDOW_SLACK_S = 4.0


@dataclass(frozen=True, slots=True)
class Services:
    """The stack the harness measures against."""

    bootstrap: str
    dsn: str  # the bench database
    database: str
    postmaster: psutil.Process | None
    kafka: psutil.Process | None
    bench_python: str
    raw_dir: Path
    timeout_s: float
    synchronous_commit: str = "on"


def target(
    services: Services, topics: tuple[str, ...], messages: int, naive_s: float, follow: bool, min_seconds: float = 0.0
) -> Target:
    """Where a run reads and writes, with a consumer group nobody used before."""
    group = f"bench-{uuid.uuid4().hex[:10]}"
    return Target(
        services.bootstrap,
        services.dsn,
        topics,
        messages,
        group,
        naive_s,
        services.bench_python,
        follow,
        min_seconds,
        services.synchronous_commit,
    )


def sampler(services: Services, running: processes.Running) -> Sampler:
    """A sampler over the run's processes, PostgreSQL and the broker."""
    return Sampler(running.handles, services.postmaster, services.database, services.kafka)


def drain(
    services: Services,
    variant: str,
    topic: str,
    messages: int,
    naive_s: float,
    tag: str,
    window: Window = UNTIMED,
) -> dict[str, Any]:
    """Run ``variant`` over the preloaded ``topic`` once, until drained or past its window; a flat dict."""
    passes_s = window.total_s + WINDOW_SLACK_S if window.timed else 0.0  # B0/B1 must outlast the window too
    where = target(services, (topic,), messages, naive_s, follow=False, min_seconds=passes_s)
    plan = launch(variant, where)
    ended = _run(services, plan, where, f"{tag}-{variant}", _window_over(services, plan, window))
    result: dict[str, Any] = {"variant": variant, **ended.facts}
    outputs = ended.running.results()
    result.update(_rates(services, plan, topic, messages, variant, outputs, ended.series, window))
    if result.get("msgs_per_s") is None and "error" not in result:
        result["error"] = f"no rate: exit codes {result['exit_codes']} (log in {services.raw_dir})"
    log.info("%s %s: %s", tag, variant, _brief(result))
    return result


def malformed(services: Services, variant: str, topic: str, messages: int, naive_s: float) -> dict[str, Any]:
    """Run ``variant`` over a topic with malformed messages until drained, stopped or stalled for 20 s.

    What it did with the input: rows, dead letters, offsets accounted for, and whether it stopped short.
    """
    where = target(services, (topic,), messages, naive_s, follow=False)
    plan = launch(variant, where)
    ended = _run(services, plan, where, f"malformed-{variant}", _stalled(services))
    result: dict[str, Any] = {"variant": variant, **ended.facts, "messages": messages}
    if plan.schema != "none":
        found = asyncio.run(database.landed(services.dsn, plan.schema, topic))
        result.update({"rows": found.rows, "dead_letters": found.dead_letters, "accounted": found.distinct})
        survives = _b2_went_on(ended.running) if variant == "B2" else found.distinct >= messages
        result.update({"survives": survives, "stopped": not survives})
    log.info("malformed %s: %s", variant, result)
    return result


def _b2_went_on(running: processes.Running) -> bool:
    """B2 is bounded by time: it survived if it ended by itself with exit code 0."""
    return running.exit_codes() == [0]


@dataclass
class _Ended:
    running: processes.Running
    series: Series
    facts: dict[str, Any]


def _run(services: Services, plan: Launch, where: Target, name: str, stop_when: Callable[[], bool]) -> _Ended:
    """Fresh table, start, sample until the processes exit, the group caught up or ``stop_when()``; stop."""
    asyncio.run(database.reset(services.dsn, plan.schema))
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    running = processes.start(plan.commands, plan.env, services.raw_dir / name)
    caught_up = _group_done(services, where) if plan.finish == "group" else None

    def done() -> bool:
        return (caught_up is not None and caught_up()) or stop_when()

    with sampler(services, running) as sampling:
        finished = processes.wait(running, services.timeout_s, done)
    processes.kill(running)
    return _Ended(running, sampling.series, run_facts(running, started, load_before, finished, services.timeout_s))


def run_facts(
    running: processes.Running, started: float, load_before: float, finished: bool, timeout_s: float
) -> dict[str, Any]:
    """What every measured run records once its processes are gone: wall time (from ``started``, monotonic),
    exit codes, the 1-minute load average before and after, and a timeout as ``error``."""
    facts: dict[str, Any] = {
        "wall_s": round(time.monotonic() - started, 2),
        "exit_codes": running.exit_codes(),
        "load_1m_before": round(load_before, 2),
        "load_1m_after": round(os.getloadavg()[0], 2),
    }
    if not finished:
        facts["error"] = f"timed out after {timeout_s:.0f}s or did not stop cleanly"
    return facts


def _window_over(services: Services, plan: Launch, window: Window) -> Callable[[], bool]:
    """True once ``window.total_s`` + ``WINDOW_SLACK_S`` passed since the first committed row was seen.

    The slack lets a system that commits every few seconds close its window; never true if untimed.
    """
    seen: list[float] = []

    def over() -> bool:
        if not window.timed or plan.schema == "none":
            return False
        if not seen:
            if asyncio.run(database.has_rows(services.dsn, plan.schema)):
                seen.append(time.monotonic())
            return False
        return time.monotonic() - seen[0] > window.total_s + WINDOW_SLACK_S

    return over


def _stalled(services: Services, quiet_s: float = STALL_S, startup_s: float = STARTUP_S) -> Callable[[], bool]:
    """True once no row was inserted for ``quiet_s`` after the first one (a system stopped by bad input),
    or none at all within ``startup_s`` (Ray or a JVM can take a minute to start on a loaded machine).

    Counts are relative to the first poll: a fresh schema already holds rows of its own (migrations).
    """
    started = time.monotonic()
    baseline: list[int] = []
    last = [0, started]

    def stalled() -> bool:
        count = asyncio.run(database.inserted(services.dsn))
        now = time.monotonic()
        if not baseline:
            baseline.append(count)
            last[0] = count
        if count != last[0]:
            last[:] = [count, now]
        if count == baseline[0]:
            return now - started > startup_s
        return now - last[1] > quiet_s

    return stalled


def _group_done(services: Services, where: Target) -> Callable[[], bool]:
    """B3's and B6's end: the consumer group committed every partition to the high watermark read now."""
    marks = {t: kafka.watermarks(services.bootstrap, t) or {} for t in where.topics}

    def done() -> bool:
        return kafka.group_caught_up(services.bootstrap, where.group, marks)

    return done


def _rates(
    services: Services,
    plan: Launch,
    topic: str,
    messages: int,
    variant: str,
    outputs: list[dict[str, Any]],
    series: Series,
    window: Window,
) -> dict[str, Any]:
    found = _memory(series)
    start = None
    if plan.schema == "none":
        rate = _client_rate(outputs)
        found.update({"lost": None, "duplicated": None})
    else:
        commits = asyncio.run(database.commits(services.dsn, plan.schema, topic))
        rate = windowed(commits, window.warmup_s, window.seconds) if window.timed else drain_rate(commits)
        expected = None if variant == "B2" or window.timed or variant.startswith("B1_") else messages
        exact = asyncio.run(database.exactness(services.dsn, plan.schema, topic, expected))
        found.update({"rows": exact.rows, "lost": exact.lost, "duplicated": exact.duplicated})
        if plan.schema == "loom" and not window.timed:
            start = asyncio.run(database.first_claim(services.dsn))
    if rate is None or rate.msgs_per_s is None:
        found["msgs_per_s"] = None
        return found
    short = short_window(rate, window)
    if short is not None:
        found.update({"msgs_per_s": None, "error": short})
        return found
    found.update(
        {
            "msgs_per_s": rate.msgs_per_s,
            "steady_msgs_per_s": rate.steady_msgs_per_s,
            "messages": rate.rows,
            "drain_s": round(rate.seconds, 3),
            "window_s": round(rate.seconds, 3),
        }
    )
    if start is not None and rate.last_commit > start:
        # loom-ray reads and decodes ahead of its first commit, so the commit window flatters it: its rate,
        # time and CPU count from its first partition claim instead (all rows, no first transaction left out).
        found["commit_window_msgs_per_s"] = rate.msgs_per_s
        found["msgs_per_s"] = rate.rows / (rate.last_commit - start)
        found.update(window_cpu(series, start, rate.last_commit, rate.rows))
    else:
        found.update(window_cpu(series, rate.first_commit, rate.last_commit, round(rate.msgs_per_s * rate.seconds)))
    return found


def short_window(rate: DrainRate, window: Window) -> str | None:
    """Why a timed rate is no measurement: the topic ran out well before the window closed; None if it is."""
    if not window.timed or rate.seconds >= SHORT_WINDOW * window.seconds:
        return None
    return (
        f"the topic ran out {rate.seconds:.1f} s into the {window.seconds:.0f} s window: too few messages "
        "for this system's rate (raise --messages)"
    )


def _client_rate(outputs: list[dict[str, Any]]) -> DrainRate | None:
    """B0's rate from its own first/last batch times (same formula as the commit-based rate)."""
    if not outputs or not outputs[0].get("first"):
        return None
    out = outputs[0]
    first, last, count, first_batch = out["first"], out["last"], out["messages"], out["first_batch"]
    rate = (count - first_batch) / (last - first) if last > first and count > first_batch else None
    return DrainRate(count, first, last, rate, None)


def _memory(series: Series) -> dict[str, Any]:
    return {
        "peak_rss_mb": round(series.peak_rss_bytes / 2**20, 1),
        "peak_rss_by_process": series.peak_rss_by_process,
        "own_peak_rss_by_process": dict(sorted(series.own_peak_rss_by_process.items())),
        "processes": series.processes_seen,
        "cpu_s_run": _total(series.pipeline),
    }


def window_cpu(series: Series, start: float, end: float, messages: int) -> dict[str, Any]:
    """CPU per group between ``start`` and ``end`` per million ``messages`` (the pipeline's processes by label,
    PostgreSQL by part, Kafka); ``other_cores`` is noise. W1/W2's drains and W4's runs report it."""
    groups = {
        name: window_delta(getattr(series, name), start, end) for name in ("pipeline", "postgres", "kafka", "box")
    }
    measured = sum(v or 0.0 for k, v in groups.items() if k != "box")
    box = groups["box"]
    return {
        "cpu_s_per_million": per_million(groups["pipeline"], messages),
        "cpu_s_per_million_pg": per_million(groups["postgres"], messages),
        "cpu_s_per_million_kafka": per_million(groups["kafka"], messages),
        "cpu_s_per_million_total": per_million(measured, messages),
        "other_cores": None if box is None else round(max(0.0, box - measured) / (end - start), 2),
        "cpu_split": cpu_split(series.pipeline_by_label, start, end, messages),
        "cpu_split_pg": cpu_split(series.postgres_by_part, start, end, messages),
    }


def cpu_split(
    by_label: list[tuple[float, dict[str, float]]], start: float, end: float, messages: int
) -> dict[str, float]:
    """A group's CPU between ``start`` and ``end`` per label, in CPU-s per million ``messages``: the pipeline's
    per process label (its workers vs Ray's own processes), PostgreSQL's per part (backends by client,
    autovacuum, the writers: :func:`loom_bench.measure.pg_part`). Labels under 0.05 CPU-s per million are left
    out."""
    labels = {name for _, values in by_label for name in values}
    found: dict[str, float] = {}
    for name in sorted(labels):
        points = [(t, values.get(name, 0.0)) for t, values in by_label]
        value = per_million(window_delta(points, start, end), messages)
        if value is not None and value >= 0.05:
            found[name] = round(value, 2)
    return found


def _total(points: list[tuple[float, float]]) -> float | None:
    return round(points[-1][1] - points[0][1], 2) if points else None


def _brief(result: dict[str, Any]) -> str:
    keys = (
        "msgs_per_s",
        "commit_window_msgs_per_s",
        "cpu_s_per_million",
        "peak_rss_mb",
        "lost",
        "duplicated",
        "other_cores",
        "error",
    )
    return " ".join(f"{k}={_fmt(result.get(k))}" for k in keys if k in result)


def _fmt(value: Any) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)
