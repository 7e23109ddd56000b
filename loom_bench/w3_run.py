"""W3's measured runs: loom-ray's upsert route (B4_tuned with ``LOOM_ROUTES_FILE``) against Kafka Connect's
Debezium JDBC sink in upsert mode (B6, B6_tuned), into the same table ``w3_entities``.

An upsert overwrites rows, so rows and their commit times cannot count messages: progress is the offsets a
system committed (loom-ray: ``loom_offsets``, written in the transaction of its rows; B6: its consumer
group, committed by Connect after the sink wrote), sampled every 0.5 s. Both systems' rates are their
progress over the same window as W1/W2 (:func:`loom_bench.stats.windowed`: 10 s after a 2 s warm-up past the
first progress), so neither's start-up counts; a window the topic ran out in is an error, not a rate
(:func:`loom_bench.runner.short_window`). loom-ray's rate from its first partition claim to its last
progress (start-up ramp included) is kept too, as ``claim_msgs_per_s``. After each run the table must equal
the last-writer-wins fold, by key, of the topic's records below the committed offsets (tombstoned keys
absent), read back from Kafka with a ``read_committed`` reader. PostgreSQL's own limit for
the route's statements is measured at the start of each repetition (:mod:`loom_bench.w3_limit`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import random
import time
from typing import Any

import asyncpg
from confluent_kafka import Consumer, TopicPartition

from loom_bench import database, processes, runner, stats, summary, w3, w3_limit
from loom_bench.config import Plan, Window
from loom_bench.launch import launch
from loom_bench.stats import DrainRate
from loom_bench.topic_fold import Record, last_writer_fold, read_topic

log = logging.getLogger(__name__)
VARIANTS = ("B4_tuned", "B6", "B6_tuned")
LIMIT_CONNECTIONS = 2  # as B1 on W1/W2, and as loom-ray's two tuned actors
Progress = list[tuple[float, int]]


def claim_rate(samples: Progress, claimed_at: float | None) -> tuple[float, float] | None:
    """``(msgs/s, seconds)`` from ``claimed_at`` to the first sample holding the highest progress."""
    if claimed_at is None or not samples:
        return None
    top = max(n for _, n in samples)
    reached = next(t for t, n in samples if n == top)
    return (top / (reached - claimed_at), reached - claimed_at) if top and reached > claimed_at else None


def progress_rate(samples: Progress, window: Window) -> DrainRate | None:
    """The rate over ``window`` from ``(time, committed offsets)`` samples, timed as W1/W2 time commits: each
    sample that moved counts as a commit of the offsets gained since the previous one (the first left out).
    The whole span from the first progress when untimed; None without two samples that moved."""
    commits = [(t1, n1 - n0) for (_, n0), (t1, n1) in itertools.pairwise([(0.0, 0), *samples]) if n1 > n0]
    return stats.windowed(commits, window.warmup_s, window.seconds) if window.timed else stats.drain_rate(commits)


def expected_table(found: list[Record], committed: dict[int, int], connect: bool) -> dict[str, tuple[Any, ...]]:
    """The fold of the records below ``committed`` (per partition): entity key -> the row it must hold."""
    below = [r for r in found if r.offset < committed.get(r.partition, 0)]
    folded = last_writer_fold(below, lambda r: w3.row(w3.seq_of(r.value or b"", connect)))
    return {(key or b"").decode(): row for key, row in folded.items()}


async def _table(dsn: str) -> dict[str, tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f"SELECT * FROM {w3.TABLE}")
    finally:
        await conn.close()
    return {r["id"]: w3.stored(r) for r in rows}


async def _reset(dsn: str, schema: database.Schema) -> None:
    await database.reset(dsn, schema)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(w3.DDL)
    finally:
        await conn.close()


def _group_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: max(tp.offset, 0) for tp in found}


async def _loom_offsets(dsn: str, topic: str) -> dict[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch('SELECT "partition", next_offset FROM loom_offsets WHERE topic = $1', topic)
    except asyncpg.UndefinedTableError:
        return {}
    finally:
        await conn.close()
    return {int(r["partition"]): int(r["next_offset"]) for r in rows}


def committed(svc: runner.Services, variant: str, topic: str, group: str) -> dict[int, int]:
    """Per partition, the next offset ``variant`` committed for ``topic``."""
    if variant.startswith("B6"):
        return _group_offsets(svc.bootstrap, group, topic, 16)
    return asyncio.run(_loom_offsets(svc.dsn, topic))


def drain(
    svc: runner.Services, variant: str, topic: str, messages: int, found: list[Record], tag: str, window: Window
) -> dict[str, Any]:
    """One run of ``variant`` over ``topic``: its rate, and whether the table equals the fold."""
    where = runner.target(svc, (topic,), messages, 0.0, follow=False)
    spec = launch(variant, where)
    routes = svc.raw_dir / f"{tag}-routes.toml"
    if variant == "B4_tuned":
        routes.parent.mkdir(parents=True, exist_ok=True)
        routes.write_text(w3.routes_toml(topic))
        spec = dataclasses.replace(spec, env={**spec.env, "LOOM_ROUTES_FILE": str(routes)})
    if variant.startswith("B6"):
        spec = dataclasses.replace(spec, commands=[[*spec.commands[0], "--w3"]])
    asyncio.run(_reset(svc.dsn, spec.schema))
    samples: Progress = []

    def done() -> bool:
        now = time.time()  # epoch seconds: comparable with PostgreSQL's clock for loom-ray's first claim
        total = sum(committed(svc, variant, topic, where.group).values())
        samples.append((now, total))
        first = next((t for t, n in samples if n > 0), None)
        over = window.timed and first is not None and now - first > window.total_s + runner.WINDOW_SLACK_S
        return total >= messages or over

    load_before = os.getloadavg()[0]
    started = time.monotonic()
    running = processes.start(spec.commands, spec.env, svc.raw_dir / f"{tag}-{variant}")
    finished = processes.wait(running, svc.timeout_s, done)
    processes.kill(running)
    result: dict[str, Any] = {
        "variant": variant,
        **runner.run_facts(running, started, load_before, finished, svc.timeout_s),
    }
    rate = progress_rate(samples, window)
    short = None if rate is None else runner.short_window(rate, window)
    result["msgs_per_s"] = None if rate is None or short else rate.msgs_per_s
    result["window_s"] = None if rate is None else round(rate.seconds, 2)
    if short:
        result["error"] = short
    if variant == "B4_tuned":
        ramp = claim_rate(samples, asyncio.run(database.first_claim(svc.dsn)))
        result["claim_msgs_per_s"] = None if ramp is None else ramp[0]
    result.update(check(svc, variant, topic, where.group, found))
    log.info("%s %s: %s", tag, variant, {k: result.get(k) for k in ("msgs_per_s", "correct", "error")})
    return result


def check(svc: runner.Services, variant: str, topic: str, group: str, found: list[Record]) -> dict[str, Any]:
    """The table against the fold of the committed records: rows, expected rows, rows that differ."""
    offsets = committed(svc, variant, topic, group)
    expected = expected_table(found, offsets, variant.startswith("B6"))
    table = asyncio.run(_table(svc.dsn))
    wrong = sum(1 for k in expected.keys() | table.keys() if expected.get(k) != table.get(k))
    return {
        "consumed": sum(offsets.values()),
        "rows": len(table),
        "expected_rows": len(expected),
        "wrong_rows": wrong,
        "correct": wrong == 0 and bool(expected),
    }


def run(svc: runner.Services, plan: Plan, selected: list[str], prefix: str, rng: random.Random) -> dict[str, Any]:
    """Preload W3's topics, run every selected W3 variant ``plan.reps`` times in shuffled order."""
    messages = plan.workloads[0].messages
    names = w3.topics(prefix, messages)
    preload_s = w3.produce(svc.bootstrap, names, messages)
    chosen = [v for v in VARIANTS if v in selected]
    records = {t: read_topic(svc.bootstrap, t, 300) for t in {names.for_variant(v) for v in chosen}}
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in chosen}
    windows: list[dict[str, Any]] = []
    order = []
    for rep in range(plan.reps):
        asyncio.run(_reset(svc.dsn, "loom"))
        windows.append(asyncio.run(w3_limit.measure(svc.dsn, names.plain, messages, LIMIT_CONNECTIONS, plan.window)))
        log.info("W3-r%d PostgreSQL limit: %s", rep, windows[-1])
        sequence = list(chosen)
        rng.shuffle(sequence)
        order.append(sequence)
        for variant in sequence:
            topic = names.for_variant(variant)
            runs[variant].append(drain(svc, variant, topic, messages, records[topic], f"W3-r{rep}", plan.window))
    systems = {v: summary.aggregate(rs) for v, rs in runs.items()}
    loom, peer = (systems.get(v, {}).get("msgs_per_s") for v in ("B4_tuned", "B6_tuned"))
    limit = summary.limit_windows(windows)
    limit.update(
        {"loom_share": stats.ratio(loom, limit["msgs_per_s"]), "peer_ceiling": stats.ratio(limit["msgs_per_s"], peer)}
    )
    return {
        "topics": dataclasses.asdict(names),
        "messages": messages,
        "keys": w3.KEYS,
        "preload_s": preload_s,
        "window": dataclasses.asdict(plan.window),
        "systems": systems,
        "ratio": stats.ratio(loom, peer),
        "limit": limit,
        "order": order,
        "runs": runs,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
