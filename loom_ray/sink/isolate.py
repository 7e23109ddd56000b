"""Finding the rows PostgreSQL refuses in a batch: try the whole batch under a savepoint, bisect on failure.

Used inside the flush transaction by :mod:`loom_ray.sink.postgres` (COPY into ``loom_messages``) and
:mod:`loom_ray.sink.routed` (COPY into a route's staging table, and the statement that applies it). A
savepoint per attempt: a refused attempt rolls back only itself, and the rest of the flush commits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg

T = TypeVar("T")
R = TypeVar("R", bound=tuple[Any, ...])


async def isolate(
    conn: asyncpg.Connection,
    items: Sequence[T],
    attempt: Callable[[Sequence[T]], Awaitable[object]],
    refuses_row: Callable[[BaseException], bool],
) -> list[tuple[T, Exception]]:
    """Run ``attempt(items)`` under a savepoint; on an error ``refuses_row`` says is about one row's content
    (:mod:`loom_ray.policy.sink_errors`), bisect to find and return the refused items with their errors.
    Other errors propagate (and fail the flush)."""
    if not items:
        return []
    try:
        async with conn.transaction():
            await attempt(items)
        return []
    except Exception as exc:
        if not refuses_row(exc):
            raise
        if len(items) == 1:
            return [(items[0], exc)]
    middle = len(items) // 2
    return await isolate(conn, items[:middle], attempt, refuses_row) + await isolate(
        conn, items[middle:], attempt, refuses_row
    )


async def copy_isolating(
    conn: asyncpg.Connection,
    table: str,
    rows: Sequence[R],
    columns: Sequence[str],
    refuses_row: Callable[[BaseException], bool],
) -> list[tuple[R, Exception]]:
    """Binary COPY ``rows`` into ``table``; the rows it refused, with their errors."""

    async def copy(part: Sequence[R]) -> object:
        return await conn.copy_records_to_table(table, records=part, columns=columns)

    return await isolate(conn, rows, copy, refuses_row)
