"""``loom_operations``: one row per operation a person asked for, with who, why, when, what and how many.

Written by ``python -m loom_ray.ctl`` when an operation is asked (``--dry-run`` writes nothing), by the replay
with each chunk it commits (so a replay killed half-way says how far it got), and by whoever applies a
rewind or skip: the coordinator at its next round, or ctl while no coordinator runs. The database role is
who asked (``current_user``); ``--reason`` says why.

Why a table of its own and not ``loom_audit``: ``loom_audit`` is an append-only record of the offset range
each flush committed, with no key, which the fault checker reads to count offsets committed twice. An
operation is not an offset range and has a life (pending, running, done, failed) that its row follows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

REPLAY = "replay"
REWIND = "rewind"
SKIP = "skip"
PAUSE = "pause"
RESUME = "resume"

PENDING = "pending"
RUNNING = "running"
DONE = "done"
FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Operation:
    """One ``loom_operations`` row."""

    id: int
    kind: str
    topics: tuple[str, ...]
    selection: dict[str, Any]
    reason: str | None
    requested_by: str
    state: str
    records: int
    result: dict[str, Any]


_COLUMNS = "id, kind, topics, selection, reason, requested_by, state, records, result"


def _operation(row: asyncpg.Record) -> Operation:
    return Operation(
        row["id"],
        row["kind"],
        tuple(row["topics"]),
        orjson.loads(row["selection"]),
        row["reason"],
        row["requested_by"],
        row["state"],
        row["records"],
        orjson.loads(row["result"]),
    )


async def record(
    conn: asyncpg.Connection,
    kind: str,
    topics: Sequence[str],
    selection: dict[str, Any],
    reason: str | None,
    state: str,
    applied_by: str | None = None,
) -> Operation:
    """Insert an operation (``state`` pending, running, or done for one ctl does at once)."""
    row = await conn.fetchrow(
        f"""INSERT INTO loom_operations (kind, topics, selection, reason, state, applied_by, finished_at)
            VALUES ($1, $2, $3::jsonb, $4, $5, $6, CASE WHEN $5 IN ('done', 'failed') THEN now() END)
            RETURNING {_COLUMNS}""",
        kind,
        list(topics),
        orjson.dumps(selection).decode(),
        reason,
        state,
        applied_by,
    )
    assert row is not None
    return _operation(row)


async def progress(conn: asyncpg.Connection, operation: int, records: int, result: dict[str, Any]) -> None:
    """Set how many records the operation handled so far and its counts (in the caller's transaction)."""
    await conn.execute(
        "UPDATE loom_operations SET records = $2, result = $3::jsonb WHERE id = $1",
        operation,
        records,
        orjson.dumps(result).decode(),
    )


async def finish(
    conn: asyncpg.Connection,
    operation: int,
    state: str,
    applied_by: str,
    records: int,
    result: dict[str, Any],
) -> None:
    """Close the operation: done or failed, by whom, how many and what came of it."""
    await conn.execute(
        """UPDATE loom_operations SET state = $2, applied_by = $3, records = $4, result = $5::jsonb,
                                      finished_at = now()
           WHERE id = $1""",
        operation,
        state,
        applied_by,
        records,
        orjson.dumps(result).decode(),
    )


async def fetch(conn: asyncpg.Connection, operation: int) -> Operation | None:
    """The operation as it stands now."""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM loom_operations WHERE id = $1", operation)
    return None if row is None else _operation(row)


async def take_pending(conn: asyncpg.Connection, operation: int) -> Operation | None:
    """Lock a pending operation for the caller's transaction to apply (None: not pending any more, or being
    applied by someone else right now)."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM loom_operations WHERE id = $1 AND state = 'pending' FOR UPDATE SKIP LOCKED",
        operation,
    )
    return None if row is None else _operation(row)


async def pending(conn: asyncpg.Connection, topics: Sequence[str]) -> list[Operation]:
    """The rewinds and skips waiting for a coordinator of ``topics``, oldest first."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM loom_operations WHERE state = 'pending' AND topics && $1::text[] ORDER BY id",
        list(topics),
    )
    return [_operation(row) for row in rows]


async def role(conn: asyncpg.Connection) -> str:
    """The database role operations are recorded under."""
    found: str = await conn.fetchval("SELECT current_user")
    return found
