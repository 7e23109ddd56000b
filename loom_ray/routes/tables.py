"""At start, from the driver: each route's table created (``auto_create``) or checked against the route, and
read from the catalog (:func:`prepare_tables`); at the end, the driver summary's counts per route.

Runs after the migrations, before any consumer starts. A table that does not fit stops the start with a
:class:`~loom_ray.errors.RouteTableError` naming the table, the column and the fix
(:func:`loom_ray.routes.fit.problems`); nothing is altered unless the route asks: ``add_columns = true``
adds the columns it lacks (nullable), never changes or drops one. The shapes read here travel to the
consumers inside the settings (:meth:`loom_ray.routes.model.RouteSet.with_tables`).
"""

from __future__ import annotations

import logging

import asyncpg

from loom_ray.errors import RouteTableError
from loom_ray.routes.catalog import TableShape, read_shape
from loom_ray.routes.fit import problems
from loom_ray.routes.model import Route, RouteSet
from loom_ray.routes.sql import add_columns_sql, create_table_sql
from loom_ray.sink.routed import RouteCounts

log = logging.getLogger(__name__)


async def prepare_tables(conn: asyncpg.Connection, routes: RouteSet, schema: str) -> dict[str, TableShape]:
    """Create the missing tables of routes with ``auto_create``, check every table against its route, and
    return each route's table as the catalog has it; raise :class:`RouteTableError` listing every misfit.
    ``schema`` is LOOM_DB_SCHEMA: it holds loom-ray's functions, and a route's table named without a schema."""
    shapes: dict[str, TableShape] = {}
    found: list[str] = []
    for route in routes.routes:
        shape, unfit = await _prepare(conn, route, schema)
        found += unfit
        if shape is not None and not unfit:
            shapes[route.name] = shape
    if found:
        raise RouteTableError("route tables do not fit their routes:\n  " + "\n  ".join(found))
    return shapes


async def _prepare(conn: asyncpg.Connection, route: Route, schema: str) -> tuple[TableShape | None, list[str]]:
    label = route.label(schema)
    declared, unknown = await _declared_types(conn, route)
    if unknown:
        return None, unknown
    untyped = [c.name for c in route.columns if c.type is None]
    shape = await read_shape(conn, label, schema)
    if shape is None:
        if not route.auto_create or untyped:
            return None, [_absent(route, label, schema, untyped)]
        for statement in create_table_sql(route, schema):
            await conn.execute(statement)
        log.info("route %s: created table %s", route.name, label)
        shape = await read_shape(conn, label, schema)
        assert shape is not None
    missing = [c for c in route.columns if c.name not in shape.columns]
    if route.add_columns and missing:
        untyped_missing = [c.name for c in missing if c.type is None]
        if untyped_missing:
            return shape, [
                f"route {route.name!r}: add_columns = true needs a type for the columns {label} lacks: declare "
                f'type = "..." for {", ".join(repr(n) for n in untyped_missing)}'
            ]
        for statement in add_columns_sql(route, schema, [c.name for c in missing]):
            await conn.execute(statement)
        log.info("route %s: added columns %s to %s (add_columns = true)", route.name, [c.name for c in missing], label)
        shape = await read_shape(conn, label, schema)
        assert shape is not None
    return shape, problems(route, shape, declared)


async def _declared_types(conn: asyncpg.Connection, route: Route) -> tuple[dict[str, int | None], list[str]]:
    """The oid of each declared ``type`` (``to_regtype``), and the problems of those PostgreSQL cannot read."""
    declared: dict[str, int | None] = {}
    unknown = []
    for column in route.columns:
        if column.type is None:
            continue
        try:
            declared[column.name] = await conn.fetchval("SELECT to_regtype($1)::oid", column.type)
        except asyncpg.PostgresError as exc:
            unknown.append(f"route {route.name!r}: column {column.name!r}: type {column.type!r} is not a type ({exc})")
            continue
        if declared[column.name] is None:
            unknown.append(f"route {route.name!r}: column {column.name!r}: PostgreSQL knows no type {column.type!r}")
    return declared, unknown


def _absent(route: Route, label: str, schema: str, untyped: list[str]) -> str:
    """The problem of a route whose table does not exist: the DDL to create it, or what it needs first."""
    if untyped:
        return (
            f"table {label} of route {route.name!r} does not exist; fix: create it, or declare a type for "
            f"{', '.join(repr(n) for n in untyped)} and set auto_create = true"
        )
    ddl = ";\n    ".join(create_table_sql(route, schema))
    return (
        f"table {label} of route {route.name!r} does not exist; fix: set auto_create = true in the route, or "
        f"create it:\n    {ddl}"
    )


async def route_counts(conn: asyncpg.Connection, topics: list[str]) -> dict[str, RouteCounts]:
    """Per route, the records applied, left out and dead-lettered so far for ``topics`` (loom_route_counts)."""
    rows = await conn.fetch(
        """SELECT route, sum(inserted) AS inserted, sum(upserted) AS upserted, sum(deleted) AS deleted,
                  sum(dead_letters) AS dead_letters, sum(stale) AS stale, sum(duplicates) AS duplicates
           FROM loom_route_counts WHERE topic = ANY($1) GROUP BY route""",
        topics,
    )
    return {
        row["route"]: RouteCounts(
            int(row["inserted"]),
            int(row["upserted"]),
            int(row["deleted"]),
            int(row["dead_letters"]),
            int(row["stale"]),
            int(row["duplicates"]),
        )
        for row in rows
    }


def summary_lines(routes: RouteSet, before: dict[str, RouteCounts], after: dict[str, RouteCounts]) -> list[str]:
    """The driver summary's line per route: what this run applied, left out and dead-lettered."""
    lines = []
    for route in routes.routes:
        then, now = before.get(route.name, RouteCounts()), after.get(route.name, RouteCounts())
        if route.mode == "insert":
            written = f"inserted={now.inserted - then.inserted}"
            if route.on_duplicate == "ignore":
                written += f" duplicates={now.duplicates - then.duplicates}"
        else:
            written = f"upserted={now.upserted - then.upserted} deleted={now.deleted - then.deleted}"
            if route.version is not None:
                written += f" stale={now.stale - then.stale}"
        lines.append(
            f"route {route.name} -> {route.table}: {written} dead_letters={now.dead_letters - then.dead_letters}"
        )
    return lines
