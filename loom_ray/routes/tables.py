"""At start, from the driver: each route's table created (``auto_create``) or checked against the route;
at the end, the driver summary's counts per route.

Runs after the migrations, before any consumer starts. A table that does not fit stops the start with a
:class:`~loom_ray.errors.RouteTableError` naming the table, the column and the fix
(:func:`loom_ray.routes.sql.check_table`); nothing is altered unless the route asks: ``add_columns = true``
adds the columns it lacks (nullable), never changes or drops one.
"""

from __future__ import annotations

import logging

import asyncpg

from loom_ray.errors import RouteTableError
from loom_ray.routes.model import Route, RouteSet
from loom_ray.routes.sql import TableColumn, add_columns_sql, check_table, create_table_sql, table_name
from loom_ray.sink.routed import RouteCounts

log = logging.getLogger(__name__)

_COLUMNS_SQL = """
SELECT a.attname AS name, format_type(a.atttypid, NULL) AS data_type, NOT a.attnotnull AS nullable,
       (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '') AS has_default
FROM pg_attribute a
WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
"""
_UNIQUE_SQL = """
SELECT array_agg(a.attname::text) AS columns
FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = $1::regclass AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
GROUP BY i.indexrelid
"""


async def prepare_tables(conn: asyncpg.Connection, routes: RouteSet, default_schema: str) -> None:
    """Create the missing tables of routes with ``auto_create``; check every other one; raise if unfit."""
    problems: list[str] = []
    for route in routes.routes:
        problems += await _prepare(conn, route, default_schema)
    if problems:
        raise RouteTableError("route tables do not fit their routes:\n  " + "\n  ".join(problems))


async def _prepare(conn: asyncpg.Connection, route: Route, default_schema: str) -> list[str]:
    label = table_name(route, default_schema)
    if await conn.fetchval("SELECT to_regclass($1)", label) is None:
        if not route.auto_create:
            ddl = ";\n    ".join(create_table_sql(route, default_schema))
            return [
                f"table {label} of route {route.name!r} does not exist; fix: set auto_create = true in the "
                f"route, or create it:\n    {ddl}"
            ]
        for statement in create_table_sql(route, default_schema):
            await conn.execute(statement)
        log.info("route %s: created table %s", route.name, label)
        return []
    found = await _columns(conn, label)
    missing = [c.name for c in route.columns if c.name not in found]
    if route.add_columns and missing:
        for statement in add_columns_sql(route, default_schema, missing):
            await conn.execute(statement)
        log.info("route %s: added columns %s to %s (add_columns = true)", route.name, ", ".join(missing), label)
        found = await _columns(conn, label)
    unique = [frozenset(row["columns"]) for row in await conn.fetch(_UNIQUE_SQL, label)]
    return check_table(route, label, found, unique)


async def _columns(conn: asyncpg.Connection, label: str) -> dict[str, TableColumn]:
    return {
        row["name"]: TableColumn(row["data_type"], row["nullable"], row["has_default"])
        for row in await conn.fetch(_COLUMNS_SQL, label)
    }


async def route_counts(conn: asyncpg.Connection, topics: list[str]) -> dict[str, RouteCounts]:
    """Per route, the records applied and dead-lettered so far for ``topics`` (loom_route_counts)."""
    rows = await conn.fetch(
        """SELECT route, sum(inserted) AS inserted, sum(upserted) AS upserted, sum(deleted) AS deleted,
                  sum(dead_letters) AS dead_letters
           FROM loom_route_counts WHERE topic = ANY($1) GROUP BY route""",
        topics,
    )
    return {
        row["route"]: RouteCounts(
            int(row["inserted"]), int(row["upserted"]), int(row["deleted"]), int(row["dead_letters"])
        )
        for row in rows
    }


def summary_lines(routes: RouteSet, before: dict[str, RouteCounts], after: dict[str, RouteCounts]) -> list[str]:
    """The driver summary's line per route: what this run applied and dead-lettered."""
    lines = []
    for route in routes.routes:
        then, now = before.get(route.name, RouteCounts()), after.get(route.name, RouteCounts())
        written = (
            f"inserted={now.inserted - then.inserted}"
            if route.mode == "insert"
            else f"upserted={now.upserted - then.upserted} deleted={now.deleted - then.deleted}"
        )
        lines.append(
            f"route {route.name} -> {route.table}: {written} dead_letters={now.dead_letters - then.dead_letters}"
        )
    return lines
