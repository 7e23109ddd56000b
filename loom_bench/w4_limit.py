"""W4's PostgreSQL limit (B1 for W4's rows): binary COPY of the typed rows from memory, nothing else.

What the database alone takes of W4, the ceiling of any system writing ``w4_events``: the rows of the first
``ROWS_IN_MEMORY`` messages are built, untimed, as the table holds them (W1's events, at the Kafka coordinates
the load generator gives them), then ``connections`` connections COPY them at once in batches of ``BATCH``, one
transaction each, in passes until the window is over; pass ``k`` shifts every offset by ``k`` times its
partition's span (:func:`loom_bench.systems.copy_only.shifted`), so rows stay distinct. The rate is the
window's, from client-side commit times (:func:`loom_bench.stats.windowed`), as B1's is on W1.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from decimal import Decimal
from typing import Any

import asyncpg
import orjson

from loom_bench import w4
from loom_bench.config import PARTITIONS, Window
from loom_bench.stats import drain_rate, windowed
from loom_bench.systems.copy_only import BATCH, Row, shifted, spans
from loom_ray.loadgen.values import valid_value

ROWS_IN_MEMORY = 100_000
_COLUMNS = tuple(c for c, _ in w4.COORDINATES + w4.FIELDS)


def row(topic: str, seq: int) -> Row:
    """Message ``seq`` as a row of ``w4_events``."""
    event = orjson.loads(valid_value(seq, 200))
    values = {**event, "ts": dt.datetime.fromisoformat(event["ts"]), "amount": Decimal(repr(event["amount"]))}
    return (topic, seq % PARTITIONS, seq // PARTITIONS, *(values[c] for c, _ in w4.FIELDS))


async def measure(dsn: str, topic: str, messages: int, connections: int, window: Window) -> dict[str, Any]:
    """COPY W4's rows over ``connections`` until ``window`` is over; the rate and the rows written."""
    rows = [row(topic, seq) for seq in range(min(messages, ROWS_IN_MEMORY))]
    widths = spans(rows)
    commits: list[tuple[float, int]] = []
    deadline = time.monotonic() + window.total_s + 2.0
    passes = 0

    async def one(batches: list[list[Row]]) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            for batch in batches:
                await conn.copy_records_to_table(w4.TABLE, records=batch, columns=_COLUMNS)
                commits.append((time.time(), len(batch)))
        finally:
            await conn.close()

    while passes == 0 or time.monotonic() < deadline:
        current = shifted(rows, widths, passes)
        batches = [current[i : i + BATCH] for i in range(0, len(current), BATCH)]
        await asyncio.gather(*(one(batches[i::connections]) for i in range(connections)))
        passes += 1
    rate = windowed(commits, window.warmup_s, window.seconds) if window.timed else drain_rate(commits)
    return {
        "variant": f"copy_only_{connections}conn",
        "msgs_per_s": None if rate is None else rate.msgs_per_s,
        "window_s": None if rate is None else round(rate.seconds, 2),
        "rows": sum(n for _, n in commits),
        "passes": passes,
    }
