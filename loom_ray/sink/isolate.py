"""Finding the rows PostgreSQL refuses in a batch: try the whole batch under a savepoint, bisect on failure.

Used inside the flush transaction by :mod:`loom_ray.sink.postgres` (COPY into ``loom_messages``) and
:mod:`loom_ray.sink.routed` (COPY into a route's staging table, and the statement that applies it). A
savepoint per attempt: a refused attempt rolls back only itself, and the rest of the flush commits.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg

# Errors about one row's content: isolate the row, dead-letter it, commit the rest. From PostgreSQL: a value
# it cannot take (class 22), a constraint on the row itself (CHECK, NOT NULL, a foreign key), a limit one row
# exceeds (54000, e.g. an index entry too large). From asyncpg's binary COPY encoder, a value it cannot encode
# (a str that is not UTF-8, an int wider than its column): it aborts the COPY, and the savepoint rolls that
# back as it does a server error.
# Not among them: a unique violation (after a successful offset CAS it would mean a duplicate write, which must
# stop the flush loudly rather than hide in the dead-letter table); a TypeError from the encoder (a value of
# the wrong type means a column's type changed: the same for every row, raised as ColumnTypeChangedError, a
# blocker the caller retries and reports); and whatever is
# about the database rather than the row (permissions, a missing table, an outage): it fails every row alike
# and is the caller's (loom_ray.policy.sink_errors).
ROW_ERRORS = (
    asyncpg.DataError,
    asyncpg.CheckViolationError,
    asyncpg.NotNullViolationError,
    asyncpg.ForeignKeyViolationError,
    asyncpg.ProgramLimitExceededError,
)
ENCODE_ERRORS = (ValueError, OverflowError, struct.error)

T = TypeVar("T")
R = TypeVar("R", bound=tuple[Any, ...])


async def isolate(
    conn: asyncpg.Connection, items: Sequence[T], attempt: Callable[[Sequence[T]], Awaitable[object]]
) -> list[tuple[T, Exception]]:
    """Run ``attempt(items)`` under a savepoint; on a row error, bisect to find and return the refused items
    with their errors. Other errors propagate (and fail the flush)."""
    if not items:
        return []
    try:
        async with conn.transaction():
            await attempt(items)
        return []
    except (*ROW_ERRORS, *ENCODE_ERRORS) as exc:
        if len(items) == 1:
            return [(items[0], exc)]
    middle = len(items) // 2
    return await isolate(conn, items[:middle], attempt) + await isolate(conn, items[middle:], attempt)


async def copy_isolating(
    conn: asyncpg.Connection, table: str, rows: Sequence[R], columns: Sequence[str]
) -> list[tuple[R, Exception]]:
    """Binary COPY ``rows`` into ``table``; the rows it refused, with their errors."""

    async def copy(part: Sequence[R]) -> object:
        return await conn.copy_records_to_table(table, records=part, columns=columns)

    return await isolate(conn, rows, copy)
