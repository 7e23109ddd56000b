"""Throughput against partition count, for :mod:`loom_bench.scale` (``--throughput``).

For each partition count: preload a W1 topic (200-byte JSON events) over that many partitions with the
project's load generator, drain it once with the peer benchmark's loom-ray run (``B4_tuned``: the real
``python -m loom_ray.main`` on a local Ray, two consumer actors; :func:`loom_bench.runner.drain` measures
it, lost and duplicated included), delete the topic. Memory: the consumer actors' RSS at its own peak over
the run's samples (``own_peak_rss_by_process``: the actors together, as one label), over the partitions they
held, and its growth per added partition against the smallest count.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from loom_bench import kafka, orchestrate, runner
from loom_bench.config import Workload
from loom_bench.launch import ROOT
from loom_bench.workloads import loadgen_command

log = logging.getLogger(__name__)

VARIANT = "B4_tuned"
CONSUMER_LABEL = "ray::ConsumerActor"  # loom_bench.measure.label() of a consumer actor's process
DATABASE = "loom_bench_scale"
_TIMEOUT_S = 1800.0


def services(bootstrap: str, dsn: str, raw_dir: Path) -> runner.Services:
    """The harness's view of the stack (a bench database of its own, created if missing)."""
    return orchestrate.services(bootstrap, dsn, DATABASE, sys.executable, raw_dir, _TIMEOUT_S, "on")


def preload(svc: runner.Services, topic: str, partitions: int, workload: Workload) -> None:
    """Fill a new ``topic`` of ``partitions`` partitions with the workload (an old one is replaced)."""
    if kafka.watermarks(svc.bootstrap, topic) is not None:
        kafka.delete_topic(svc.bootstrap, topic)
    command = loadgen_command(svc.bootstrap, topic, workload.messages, workload.size, partitions=partitions)
    log_path = svc.raw_dir / f"preload-{partitions}p.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as out:
        subprocess.run(command, check=True, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def drain(svc: runner.Services, partitions: int, messages: int, prefix: str) -> dict[str, Any]:
    """Preload, drain once, delete the topic; the run's figures with ``partitions`` and memory."""
    workload = Workload("W1", 200, messages)
    topic = f"{workload.topic(prefix)}-{partitions}p"
    preload(svc, topic, partitions, workload)
    try:
        result = runner.drain(svc, VARIANT, topic, messages, 0.0, f"throughput-{partitions}p")
    finally:
        kafka.delete_topic(svc.bootstrap, topic)
    consumers = result.get("own_peak_rss_by_process", {}).get(CONSUMER_LABEL)
    return {
        "partitions": partitions,
        "messages": messages,
        "variant": VARIANT,
        **{k: result.get(k) for k in ("msgs_per_s", "steady_msgs_per_s", "drain_s", "lost", "duplicated", "error")},
        "consumer_rss_mb": consumers,
        "consumer_rss_kb_per_partition": None if consumers is None else round(consumers * 1024 / partitions, 1),
        "peak_rss_mb": result.get("peak_rss_mb"),
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The best rate, the largest count's share of it, and the consumer RSS added per partition beyond
    the smallest count (KiB; None with fewer than two counts or a missing figure)."""
    rates = [r["msgs_per_s"] for r in runs if r.get("msgs_per_s")]
    if not rates:
        return {"best_msgs_per_s": None, "largest_of_best": None, "rss_kb_per_added_partition": None}
    largest, smallest = runs[-1], runs[0]
    best = max(rates)
    added = largest["partitions"] - smallest["partitions"]
    grew = (
        None
        if added <= 0 or largest.get("consumer_rss_mb") is None or smallest.get("consumer_rss_mb") is None
        else round((largest["consumer_rss_mb"] - smallest["consumer_rss_mb"]) * 1024 / added, 1)
    )
    return {
        "best_msgs_per_s": round(best, 1),
        "largest_of_best": None if not largest.get("msgs_per_s") else round(largest["msgs_per_s"] / best, 3),
        "rss_kb_per_added_partition": grew,
    }


def measure(bootstrap: str, dsn: str, counts: list[int], messages: int, prefix: str, raw_dir: Path) -> dict[str, Any]:
    """Every partition count in turn, ascending; the runs and their summary. A count whose preload or run
    raised is recorded with its error."""
    svc = services(bootstrap, dsn, raw_dir)
    runs = []
    for partitions in sorted(counts):
        log.info("throughput: %d partitions, %d messages", partitions, messages)
        try:
            runs.append(drain(svc, partitions, messages, prefix))
        except Exception as exc:  # recorded with the count; the other counts still run
            log.exception("throughput: %d partitions failed", partitions)
            runs.append({"partitions": partitions, "messages": messages, "error": f"{type(exc).__name__}: {exc}"})
        log.info("throughput: %s", runs[-1])
    return {"runs": runs, **summarise(runs)}
