"""A/B of loom-ray's default path (no routes file): single-actor drains of one topic by two checkouts, alternating.

Usage, from the repository root, with the stack's variables set (``eval "$(./scripts/dev-stack.sh env)"``)::

    git worktree add --detach /tmp/loom-base <commit>
    .venv/bin/python scripts/ab-default-path.py --base /tmp/loom-base --head . --logs /tmp/loom-ab \\
        [--messages 300000] [--reps 5]

Fills one topic of 200-byte JSON messages over 16 partitions once (``loom_ray.loadgen``, from ``--head``), then
per repetition drains it once with each checkout, in alternating order (AB, BA, ...): a fresh schema, a new
consumer group, ``python -m loom_ray.main --exit-when-drained`` run from the checkout with one actor and the
benchmark's tuned settings (``loom_bench.config.loom_env``). A run's rate is the benchmark's drain rate from
PostgreSQL's commit timestamps (:func:`loom_bench.stats.drain_rate`: rows after the first transaction over the
time from the first to the last commit), so Ray's start-up is not counted. Prints each run, then per checkout the
median rate with its minimum and maximum. Exits 1 if a run did not store every message.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loom_bench.config import loom_env  # noqa: E402
from loom_bench.stats import drain_rate, spread  # noqa: E402

PARTITIONS = 16


async def _commits(dsn: str, schema: str) -> list[tuple[float, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 AS ts, count(*) AS n "
            f'FROM "{schema}".loom_messages GROUP BY 1'
        )
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await conn.close()
    return [(float(r["ts"]), int(r["n"])) for r in rows]


def drain(checkout: Path, topic: str, messages: int, log: Path) -> tuple[float | None, int]:
    """One drain of ``topic`` by ``checkout``'s loom-ray: (msgs/s, rows stored)."""
    schema = f"ab_{uuid.uuid4().hex[:10]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOM_", "RAY_ADDRESS")) or k == "LOOM_DB_DSN"}
    env.update(loom_env(tuned=True))
    env.update(
        {
            "PYTHONPATH": str(checkout),
            "LOOM_KAFKA_BOOTSTRAP_SERVERS": os.environ["LOOM_KAFKA_BOOTSTRAP_SERVERS"],
            "LOOM_KAFKA_TOPICS": topic,
            "LOOM_KAFKA_GROUP_ID": schema,
            "LOOM_DB_SCHEMA": schema,
            "LOOM_MIN_ACTORS": "1",
            "LOOM_MAX_ACTORS": "1",
        }
    )
    with log.open("w") as out:
        subprocess.run(
            [sys.executable, "-m", "loom_ray.main", "--exit-when-drained"],
            cwd=checkout,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=900,
            check=False,
        )
    commits = asyncio.run(_commits(os.environ["LOOM_DB_DSN"], schema))
    rate = drain_rate(commits)
    return (None if rate is None else rate.msgs_per_s), (0 if rate is None else rate.rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="checkout A (e.g. main before the routes work)")
    parser.add_argument("--head", type=Path, required=True, help="checkout B")
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--logs", type=Path, required=True, help="directory for the runs' logs")
    args = parser.parse_args()
    args.logs.mkdir(parents=True, exist_ok=True)
    topic = f"loom-ab-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [sys.executable, "-m", "loom_ray.loadgen", "--topic", topic, "--partitions", str(PARTITIONS)]
        + ["--messages", str(args.messages), "--size", "200"]
        + ["--bootstrap-servers", os.environ["LOOM_KAFKA_BOOTSTRAP_SERVERS"]],
        cwd=args.head,
        check=True,
    )
    checkouts = {"base": args.base.resolve(), "head": args.head.resolve()}
    rates: dict[str, list[float | None]] = {name: [] for name in checkouts}
    complete = True
    for rep in range(args.reps):
        order = list(checkouts) if rep % 2 == 0 else list(reversed(checkouts))
        for name in order:
            rate, rows = drain(checkouts[name], topic, args.messages, args.logs / f"{rep}-{name}.log")
            complete = complete and rows == args.messages
            rates[name].append(rate)
            shown = "none" if rate is None else f"{rate:,.0f}"
            print(f"rep {rep} {name}: {shown} msgs/s, {rows:,} rows, load {os.getloadavg()[0]:.1f}", flush=True)
    for name, found in rates.items():
        summary = spread(found)
        if summary is not None:
            print(f"{name}: median {summary.median:,.0f} msgs/s (min {summary.low:,.0f}, max {summary.high:,.0f})")
    return 0 if complete else 1


if __name__ == "__main__":
    raise SystemExit(main())
