"""W4's measured runs: loom-ray's insert route reading Avro (and Protobuf) through the Schema Registry
(B4_tuned with ``LOOM_ROUTES_FILE``), against Kafka Connect's Debezium JDBC sink reading the same Avro topic
through Apicurio's Kafka Connect converter (B6, B6_tuned), into the same table ``w4_events``; and PostgreSQL's
own limit for those rows (:mod:`loom_bench.w4_limit`).

Progress and rate are W3's (:mod:`loom_bench.w3_run`): committed offsets sampled every 0.5 s (loom-ray:
``loom_offsets``; Connect: its consumer group), over the same window as W1/W2. After each run the table must
hold exactly one row per committed offset, each the record at its coordinates (``correct``,
:data:`loom_bench.w4.WRONG_ROWS_SQL`). Apicurio's converter reads no Protobuf, so the Protobuf run is loom-ray's
alone (``B4_tuned_protobuf``), against the same limit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import time
from typing import Any

import asyncpg

from loom_bench import database, processes, runner, stats, summary, w3_run, w4, w4_limit
from loom_bench.config import Plan, Window
from loom_bench.launch import CONVERTER_DIR, launch

log = logging.getLogger(__name__)
# (variant as reported, system launched, format of the topic it reads)
VARIANTS: tuple[tuple[str, str, str], ...] = (
    ("B4_tuned", "B4_tuned", "avro"),
    ("B6", "B6", "avro"),
    ("B6_tuned", "B6_tuned", "avro"),
    ("B4_tuned_protobuf", "B4_tuned", "protobuf"),
)
LIMIT_CONNECTIONS = 2  # as B1 on W1/W2


async def _reset(dsn: str, schema: database.Schema) -> None:
    await database.reset(dsn, schema)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(w4.DDL)
    finally:
        await conn.close()


async def _table(dsn: str) -> tuple[dict[int, int], int]:
    """Rows per partition, and rows that are not the record at their coordinates."""
    conn = await asyncpg.connect(dsn)
    try:
        counts = await conn.fetch(f'SELECT "partition", count(*) AS n FROM {w4.TABLE} GROUP BY 1')
        wrong = await conn.fetchval(w4.WRONG_ROWS_SQL)
    finally:
        await conn.close()
    return {int(r["partition"]): int(r["n"]) for r in counts}, int(wrong)


def check(svc: runner.Services, system: str, topic: str, group: str) -> dict[str, Any]:
    """One row per committed offset, each the record at its coordinates."""
    offsets = w3_run.committed(svc, system, topic, group)
    rows, wrong = asyncio.run(_table(svc.dsn))
    lost = sum(max(n - rows.get(p, 0), 0) for p, n in offsets.items())
    extra = sum(max(n - offsets.get(p, 0), 0) for p, n in rows.items())
    consumed = sum(offsets.values())
    return {
        "consumed": consumed,
        "rows": sum(rows.values()),
        "lost": lost,
        "extra": extra,
        "wrong_rows": wrong,
        "correct": lost == 0 and extra == 0 and wrong == 0 and consumed > 0,
    }


def drain(
    svc: runner.Services,
    variant: str,
    registry: str,
    names: w4.Topics,
    messages: int,
    tag: str,
    window: Window,
) -> dict[str, Any]:
    """One run of ``variant``: its rate, and whether its table holds exactly the committed records."""
    reported, system, format_name = next(v for v in VARIANTS if v[0] == variant)
    topic = names.of(format_name)
    where = runner.target(svc, (topic,), messages, 0.0, follow=False)
    spec = launch(system, where)
    if system == "B4_tuned":
        routes = svc.raw_dir / f"{tag}-{variant}-routes.toml"
        routes.parent.mkdir(parents=True, exist_ok=True)
        routes.write_text(w4.routes_toml(topic, format_name))
        settings = {"LOOM_ROUTES_FILE": str(routes), "LOOM_SCHEMA_REGISTRY_URL": registry}
        spec = dataclasses.replace(spec, env={**spec.env, **settings})
    else:
        peer = ["--w4", "--registry", w4.native_api(registry), "--converter-dir", str(CONVERTER_DIR)]
        spec = dataclasses.replace(spec, commands=[[*spec.commands[0], *peer]])
    asyncio.run(_reset(svc.dsn, spec.schema))
    samples: w3_run.Progress = []

    def done() -> bool:
        now = time.time()
        total = sum(w3_run.committed(svc, system, topic, where.group).values())
        samples.append((now, total))
        first = next((t for t, n in samples if n > 0), None)
        over = window.timed and first is not None and now - first > window.total_s + runner.WINDOW_SLACK_S
        return total >= messages or over

    load_before = os.getloadavg()[0]
    started = time.monotonic()
    running = processes.start(spec.commands, spec.env, svc.raw_dir / f"{tag}-{variant}")
    with runner.sampler(svc, running) as sampling:
        finished = processes.wait(running, svc.timeout_s, done)
    processes.kill(running)
    result: dict[str, Any] = {
        "variant": reported,
        **runner.run_facts(running, started, load_before, finished, svc.timeout_s),
    }
    rate = w3_run.progress_rate(samples, window)
    short = None if rate is None else runner.short_window(rate, window)
    result["msgs_per_s"] = None if rate is None or short else rate.msgs_per_s
    result["window_s"] = None if rate is None else round(rate.seconds, 2)
    if short:
        result["error"] = short
    elif rate is not None and rate.msgs_per_s is not None:
        messages_in_window = round(rate.msgs_per_s * rate.seconds)
        result.update(runner.window_cpu(sampling.series, rate.first_commit, rate.last_commit, messages_in_window))
    result.update(check(svc, system, topic, where.group))
    log.info("%s %s: %s", tag, variant, {k: result.get(k) for k in ("msgs_per_s", "correct", "error")})
    return result


def run(svc: runner.Services, plan: Plan, selected: list[str], prefix: str, rng: random.Random) -> dict[str, Any]:
    """Preload W4's topics; ``plan.reps`` times, measure the limit, then run every selected variant in shuffled
    order. Needs LOOM_SCHEMA_REGISTRY_URL (the Confluent API of an Apicurio registry)."""
    registry = os.environ.get("LOOM_SCHEMA_REGISTRY_URL")
    if not registry:
        raise RuntimeError("W4 reads through a Schema Registry: set LOOM_SCHEMA_REGISTRY_URL (scripts/bench.sh does)")
    messages = plan.workloads[0].messages
    names = w4.topics(prefix, messages)
    chosen = [v for v, _, _ in VARIANTS if v in selected]
    preload_s = {f: w4.produce(svc.bootstrap, registry, names.of(f), f, messages) for f in w4.FORMATS}
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in chosen}
    windows: list[dict[str, Any]] = []
    order = []
    for rep in range(plan.reps):
        asyncio.run(_reset(svc.dsn, "none"))
        windows.append(asyncio.run(w4_limit.measure(svc.dsn, names.avro, messages, LIMIT_CONNECTIONS, plan.window)))
        log.info("W4-r%d PostgreSQL limit: %s", rep, windows[-1])
        sequence = list(chosen)
        rng.shuffle(sequence)
        order.append(sequence)
        for variant in sequence:
            runs[variant].append(drain(svc, variant, registry, names, messages, f"W4-r{rep}", plan.window))
    systems = {v: summary.aggregate(rs) for v, rs in runs.items()}
    loom, peer = (systems.get(v, {}).get("msgs_per_s") for v in ("B4_tuned", "B6_tuned"))
    limit = summary.limit_windows(windows)
    return {
        "topics": dataclasses.asdict(names),
        "messages": messages,
        "preload_s": preload_s,
        "window": dataclasses.asdict(plan.window),
        "systems": systems,
        "ratio": stats.ratio(loom, peer),
        "limit": {**limit, "loom_share": stats.ratio(loom, limit["msgs_per_s"])},
        "protobuf_share": stats.ratio(systems.get("B4_tuned_protobuf", {}).get("msgs_per_s"), limit["msgs_per_s"]),
        "order": order,
        "runs": runs,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
