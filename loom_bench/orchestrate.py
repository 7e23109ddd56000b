"""The order of a run: per workload, preload, the limits (B0, B1) first, the rest shuffled per repetition,
then live mode at fractions of loom-ray's (B4_tuned) median drain rate."""

from __future__ import annotations

import asyncio
import os
import random
import shlex
import sys
from pathlib import Path
from typing import Any

from loom_bench import database, kafka, live, measure, runner, summary
from loom_bench.config import Plan, Workload
from loom_bench.launch import LIMITS, LIVE_VARIANT, ROOT, SYSTEMS, Target, launch, malformed_variants
from loom_bench.stats import median_or_none
from loom_bench.workloads import preload

DSN_PLACEHOLDER = "$BENCH_DSN"


def services(
    bootstrap: str, dsn: str, database_name: str, bench_python: str, raw_dir: Path, timeout_s: float, sync: str
) -> runner.Services:
    """Create the bench database, and find the local PostgreSQL server and Kafka JVM (for their CPU)."""
    asyncio.run(database.ensure_database(dsn, database_name, sync))
    bench_dsn = database.with_database(dsn, database_name)
    postmaster = measure.find_postmaster(asyncio.run(database.checkpointer_pid(bench_dsn)))
    stack = Path(os.environ.get("LOOM_STACK_DIR", ROOT / ".stack"))
    kafka = measure.kafka_process(stack / "kafka" / "pid")
    return runner.Services(
        bootstrap, bench_dsn, database_name, postmaster, kafka, bench_python, raw_dir, timeout_s, sync
    )


def commands(variants: list[str], bench_python: str, naive_s: float) -> dict[str, str]:
    """The command line of every variant, with placeholders for the per-run topic, group and DSN; paths
    relative to the repository."""
    where = Target("$KAFKA", DSN_PLACEHOLDER, ("<topic>",), 0, "<fresh-group>", naive_s, bench_python)
    found = {}
    for variant in variants:
        spec = launch(variant, where)
        env = " ".join(f"{k}={v}" for k, v in spec.extra.items())
        line = shlex.join(spec.commands[0]).replace(sys.executable, "python").replace(f"{ROOT}/", "")
        count = f" (x{len(spec.commands)} processes)" if len(spec.commands) > 1 else ""
        found[variant] = f"{env} {line}{count}".strip()
    return found


def run_workload(
    svc: runner.Services, plan: Plan, workload: Workload, selected: list[str], prefix: str, rng: random.Random
) -> dict[str, Any]:
    """Preload, drain with every selected variant ``plan.reps`` times, then live mode."""
    topic, preload_s = preload(svc.bootstrap, workload, prefix, svc.raw_dir / f"preload-{workload.name}.log")
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in selected}
    order = []
    for rep in range(plan.reps):
        rest = [v for v in selected if v not in LIMITS]
        rng.shuffle(rest)
        sequence = [v for v in LIMITS if v in selected] + rest
        order.append(sequence)
        for variant in sequence:
            tag = f"{workload.name}-r{rep}"
            drained = runner.drain(svc, variant, topic, workload.messages, plan.naive_seconds, tag, plan.window)
            runs[variant].append(drained)
    loom_rate = median_or_none([r.get("msgs_per_s") for r in runs.get("B4_tuned", [])])
    lived: dict[str, Any] = {}
    for name in plan.live_systems:
        if loom_rate and LIVE_VARIANT[name] in selected:
            lived[name] = live.live(svc, name, workload, loom_rate, plan, prefix)
    table = summary.systems_table(runs, lived)
    return {
        "topic": topic,
        "messages": workload.messages,
        "size": workload.size,
        "preload_s": preload_s,
        **table,
        "targets": summary.targets(workload.name, table),
        "order": order,
        "runs": runs,
    }


def run_malformed(
    svc: runner.Services, plan: Plan, workload: Workload, selected: list[str], prefix: str
) -> dict[str, Any]:
    """Every selected system (one variant each, not the limits B0/B1) once over 1 % malformed input."""
    bad = workload.with_malformed(plan.malformed_messages)
    topic, _ = preload(svc.bootstrap, bad, prefix, svc.raw_dir / f"preload-{workload.name}-malformed.log")
    found: dict[str, Any] = {}
    for variant in malformed_variants(selected):
        if SYSTEMS[variant] not in ("B0", "B1"):
            found[SYSTEMS[variant]] = runner.malformed(svc, variant, topic, bad.messages, plan.naive_seconds)
    return {
        "workload": workload.name,
        "topic": topic,
        "messages": bad.messages,
        "ratio": bad.malformed_ratio,
        **{"systems": found},
    }


def delete_topics(bootstrap: str, chosen: Plan, prefix: str) -> None:
    """Delete the preloaded topics (unless ``--keep-topics``)."""
    for workload in chosen.workloads:
        kafka.delete_topic(bootstrap, workload.topic(prefix))
        if chosen.malformed_messages:
            kafka.delete_topic(bootstrap, workload.with_malformed(chosen.malformed_messages).topic(prefix))
