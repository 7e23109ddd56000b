"""Live mode: rate-limited load at 25/50/80 % of loom-ray's drain rate, latency from Kafka to commit.

One system start serves all load levels: each level writes its own fresh topic (created before the start,
so the system subscribes to all of them), one after the other, for ``live_seconds`` each. Latency per
message is PostgreSQL's commit timestamp minus the Kafka timestamp (same host clock), leaving out the
first ``live_warmup_s`` of each level. The topics stamp messages with the broker's ``LogAppendTime``, so
the producer's own queueing (it shares the cores) is not counted; the cores each part kept busy while the
producer ran (the system, PostgreSQL, the broker, the producer, the whole machine) are reported per level.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import subprocess
import time
import uuid
from dataclasses import asdict
from typing import Any

from loom_bench import database, kafka, processes
from loom_bench.config import PARTITIONS, Plan, Workload
from loom_bench.launch import LIVE_VARIANT, ROOT, Launch, Target, launch
from loom_bench.measure import Series
from loom_bench.runner import Services, sampler, target
from loom_bench.stats import window_delta
from loom_bench.workloads import loadgen_command

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 120.0


def live(
    services: Services, name: str, workload: Workload, drain_rate: float, plan: Plan, prefix: str
) -> dict[str, Any]:
    """Measure ``name`` (B3, B4, B4_tuned or B5) under each load level; a dict per level."""
    run_id = uuid.uuid4().hex[:6]
    topics = tuple(f"{prefix}-live-{workload.name}-{name}-{round(x * 100)}-{run_id}".lower() for x in plan.live_loads)
    for topic in topics:
        kafka.create_log_append_topic(services.bootstrap, topic, PARTITIONS)
    where = target(services, topics, 0, 0.0, follow=True)
    spec = launch(LIVE_VARIANT[name], where)
    asyncio.run(database.reset(services.dsn, spec.schema))
    running = processes.start(spec.commands, spec.env, services.raw_dir / f"live-{workload.name}-{name}")
    levels: dict[str, Any] = {}
    try:
        with sampler(services, running) as sampling:
            if not _wait(lambda: _ready(services, spec, where), READY_TIMEOUT_S):
                return {"variant": LIVE_VARIANT[name], "error": "not ready in time"}
            for load, topic in zip(plan.live_loads, topics, strict=True):
                level = _level(services, spec, where, workload, topic, load * drain_rate, plan)
                level["cores_busy"] = cores_busy(sampling.series, level.pop("produce_window"), level["producer_cpu_s"])
                levels[str(round(load * 100))] = level
        clean = processes.stop(running)
    finally:
        processes.kill(running)
        for topic in topics:
            kafka.delete_topic(services.bootstrap, topic)
    sink: database.Sink = "loom" if spec.schema == "loom" else "events"
    for (key, level), topic in zip(levels.items(), topics, strict=False):
        found = asyncio.run(database.latency(services.dsn, sink, topic, plan.live_warmup_s))
        level.update({k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(found).items()})
        log.info("live %s %s %s%%: %s", workload.name, name, key, level)
    return {
        "variant": LIVE_VARIANT[name],
        "clean_stop": clean,
        "peak_rss_mb": round(sampling.series.peak_rss_bytes / 2**20, 1),
        "levels": levels,
    }


def _level(
    services: Services, spec: Launch, where: Target, workload: Workload, topic: str, rate: float, plan: Plan
) -> dict[str, Any]:
    """Produce ``rate`` msgs/s into ``topic`` for ``live_seconds``, then wait until it is all committed.

    A producer that cannot keep the rate (it shares the cores) is stopped after 1.5 x ``live_seconds``.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started, started_at = time.monotonic(), time.time()
    command = loadgen_command(services.bootstrap, topic, max(1, round(rate * plan.live_seconds)), workload.size, rate)
    producer = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        producer.wait(1.5 * plan.live_seconds)
    except subprocess.TimeoutExpired:
        producer.send_signal(signal.SIGINT)  # loadgen flushes what it produced and exits
        producer.wait(60)
    produced, produced_at = time.monotonic(), time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    messages = kafka.total(kafka.watermarks(services.bootstrap, topic) or {})
    kept_up = _wait(lambda: _caught_up(services, spec, where, topic, messages), max(60.0, plan.live_seconds))
    return {
        "offered_per_s": round(rate, 1),
        "messages": messages,
        "produce_s": round(produced - started, 2),
        "producer_cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2),
        "drain_after_s": round(time.monotonic() - produced, 2),
        "kept_up": kept_up,
        "produce_window": (started_at, produced_at),
    }


def cores_busy(series: Series, window: tuple[float, float], producer_cpu_s: float) -> dict[str, float | None]:
    """Cores each part kept busy while a level's producer ran: the system, PostgreSQL, the broker, the
    producer, and the whole machine (``box``; with ``other`` the part no one here explains); ``iowait``: cores
    idle while the disk had I/O outstanding (PostgreSQL's WAL fsyncs, Kafka's log)."""
    start, end = window
    seconds = end - start
    found: dict[str, float | None] = {}
    for name in ("pipeline", "postgres", "kafka", "box", "iowait"):
        delta = window_delta(getattr(series, name), start, end)
        found[name] = None if delta is None or seconds <= 0 else round(delta / seconds, 2)
    found["producer"] = round(producer_cpu_s / seconds, 2) if seconds > 0 else None
    parts = [found[k] for k in ("pipeline", "postgres", "kafka", "producer")]
    box = found["box"]
    found["other"] = None if box is None or None in parts else round(max(0.0, box - sum(p or 0.0 for p in parts)), 2)
    return found


def _ready(services: Services, spec: Launch, where: Target) -> bool:
    if spec.schema == "loom":
        claimed, _ = asyncio.run(database.loom_progress(services.dsn, list(where.topics)))
        return claimed == PARTITIONS * len(where.topics)
    return kafka.group_stable(services.bootstrap, where.group, len(spec.commands))


def _caught_up(services: Services, spec: Launch, where: Target, topic: str, messages: int) -> bool:
    if spec.schema == "loom":
        return asyncio.run(database.loom_progress(services.dsn, [topic]))[1] >= messages
    marks = kafka.watermarks(services.bootstrap, topic) or {}
    return kafka.group_caught_up(services.bootstrap, where.group, {topic: marks})


def _wait(predicate: Any, timeout_s: float, poll_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True
