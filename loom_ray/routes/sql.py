"""The SQL of a route, built by pure functions: its table's DDL, its staging table, the set-based
statements that apply a staged batch, and the lock taken before a batch is COPYed straight into its table.

Every identifier is quoted exactly as the catalog spells it. The flush (:mod:`loom_ray.sink.routed`) COPYs a
batch's records into the route's staging table, each numbered by ``_loom_ord`` (offset order within each
partition), then applies the records it chose (:mod:`loom_ray.routes.reduce`) by their numbers, ``$1``:
the whole batch, or a part of it while a row PostgreSQL refuses is being isolated. Each statement checks
first that the table still has the shape the records were converted for (``loom_route_guard``, raising
SQLSTATE ``LR001`` otherwise), so no value is ever written under a type it was not converted for.
"""

from __future__ import annotations

from collections.abc import Iterable

from loom_ray.routes.catalog import quote_identifier
from loom_ray.routes.convert import RoutePlan
from loom_ray.routes.model import Route

ORD = "_loom_ord"  # the record's position in the flush: later records of a key win
DELETE = "_loom_delete"  # true for a tombstone that deletes by key
TABLE_CHANGED = "LR001"  # the SQLSTATE loom_route_guard() raises: the table is not the shape the plan read


def create_table_sql(route: Route, default_schema: str) -> list[str]:
    """The statements ``auto_create`` runs: the schema, then the table with its key as primary key (every
    column must declare its ``type``: :func:`loom_ray.routes.tables.prepare_tables` checks it first)."""
    columns = [
        f"{c.quoted} {c.type}{' NOT NULL' if c.required or c.name in route.key or c.name == route.version else ''}"
        for c in route.columns
    ]
    if route.key:
        columns.append(f"PRIMARY KEY ({_names(route.key)})")
    schema = quote_identifier(route.schema_name or default_schema)
    return [
        f"CREATE SCHEMA IF NOT EXISTS {schema}",
        f"CREATE TABLE IF NOT EXISTS {route.label(default_schema)} (\n    " + ",\n    ".join(columns) + "\n)",
    ]


def add_columns_sql(route: Route, default_schema: str, missing: Iterable[str]) -> list[str]:
    """``add_columns``: the statements that add the route's ``missing`` columns (each with its declared type)
    to its existing table, each nullable (rows already there have no value; the route itself still refuses
    nulls where required)."""
    types = {c.name: c.type for c in route.columns}
    target = route.label(default_schema)
    return [f"ALTER TABLE {target} ADD COLUMN IF NOT EXISTS {quote_identifier(n)} {types[n]}" for n in missing]


def stage_columns(plan: RoutePlan) -> tuple[str, ...]:
    """The staging table's columns, in the order of the records the flush COPYs into it."""
    return (ORD, DELETE, *(c.name for c in plan.columns))


def create_stage_sql(plan: RoutePlan) -> str:
    """The plan's temporary staging table, created once per connection; ON COMMIT DELETE ROWS empties it.
    Its columns have the table's types, a domain's as its base type (a tombstone's row holds NULLs that a
    NOT NULL domain would refuse; the domain's checks run when the row reaches the table)."""
    columns = [f"{ORD} int4 NOT NULL", f"{DELETE} boolean NOT NULL"]
    columns += [f"{quote_identifier(c.name)} {c.type.stage_sql}" for c in plan.columns]
    return f"CREATE TEMP TABLE IF NOT EXISTS {plan.stage} ({', '.join(columns)}) ON COMMIT DELETE ROWS"


def _chosen(column: str) -> str:
    """``column`` is one of the staged records numbered ``$1``: a semi-join on the array's elements, which
    PostgreSQL hashes. (``= ANY($1)`` searches the array for every staged row once the statement's plan is
    generic, after its fifth execution on a connection: a flush of n records then costs n² comparisons.)"""
    return f"{column} IN (SELECT unnest($1::int4[]))"


def _guard(loom_schema: str) -> str:
    """The one-time check, at the start of a statement, that ``$2`` (the table) still has signature ``$3``."""
    return f"(SELECT {quote_identifier(loom_schema)}.loom_route_guard($2::text::regclass, $3::text))"


def lock_sql(loom_schema: str) -> str:
    """For a route that COPYs into its table (``RouteTables.copy_target``): lock table ``$1`` as an INSERT
    would and check that it still has signature ``$2`` and takes a COPY as an INSERT (``loom_route_lock``: LR001
    if not), once per flush, before the COPY."""
    return f"SELECT {quote_identifier(loom_schema)}.loom_route_lock($1::text::regclass, $2::text)"


def insert_sql(plan: RoutePlan, loom_schema: str) -> str:
    """Append the staged records numbered ``$1``, in offset order. With ``on_duplicate = "ignore"``, a record
    whose key the table already holds is skipped: the statement returns the numbers of those skipped."""
    route = plan.route
    columns = _names(c.name for c in plan.columns)
    select = f"SELECT {columns} FROM {plan.stage} WHERE {_chosen(ORD)} AND {_guard(loom_schema)} ORDER BY {ORD}"
    target = plan.table.label
    if route.on_duplicate != "ignore":
        return f"INSERT INTO {target} ({columns})\n{select}"
    key = _names(route.key)
    return (
        f"WITH _loom_in AS (\n"
        f"    INSERT INTO {target} AS t ({columns})\n    {select}\n"
        f"    ON CONFLICT ({key}) DO NOTHING RETURNING {_qualified('t', route.key)}\n"
        f")\n"
        f"SELECT s.{ORD} FROM {plan.stage} AS s WHERE {_chosen(f's.{ORD}')}\n"
        f"  AND NOT EXISTS (SELECT 1 FROM _loom_in WHERE {_match('_loom_in', 's', route.key)})"
    )


def upsert_sql(plan: RoutePlan, loom_schema: str) -> str:
    """Insert, or overwrite every column the route names of, the staged records numbered ``$1`` (one per
    key; should two be equal for PostgreSQL, the later wins). With a ``version``, a row holding a greater
    version is kept (one inserted by another consumer since :func:`compare_sql` ran): the statement returns
    the numbers of the records that were not applied (stale)."""
    route = plan.route
    columns = _names(c.name for c in plan.columns)
    key = _names(route.key)
    others = [c.name for c in plan.columns if c.name not in route.key]
    target = plan.table.label
    on_conflict = (
        "DO UPDATE SET " + ", ".join(f"{quote_identifier(c)} = EXCLUDED.{quote_identifier(c)}" for c in others)
        if others
        else "DO NOTHING"
    )
    insert = (
        f"INSERT INTO {target} AS t ({columns})\n"
        f"SELECT DISTINCT ON ({key}) {columns} FROM {plan.stage}\n"
        f"WHERE {_chosen(ORD)} AND {_guard(loom_schema)}\n"
        f"ORDER BY {key}, {ORD} DESC\n"
        f"ON CONFLICT ({key}) {on_conflict}"
    )
    if route.version is None:
        return insert
    version = quote_identifier(route.version)
    return (
        f"WITH _loom_in AS (\n{insert}\n"
        f"WHERE t.{version} IS NULL OR t.{version} <= EXCLUDED.{version}\n"
        f"RETURNING {_qualified('t', route.key)}\n"
        f")\n"
        f"SELECT s.{ORD} FROM {plan.stage} AS s WHERE {_chosen(f's.{ORD}')}\n"
        f"  AND NOT EXISTS (SELECT 1 FROM _loom_in WHERE {_match('_loom_in', 's', route.key)})"
    )


def compare_sql(plan: RoutePlan, loom_schema: str) -> str:
    """For a route with a ``version``: lock the rows the table holds of the keys of the staged records numbered
    ``$1`` (in key order, so two consumers never wait on each other in a circle), and return for each record
    of such a key its number and whether it is older than that row (:func:`loom_ray.routes.reduce.upserts`)."""
    route = plan.route
    assert route.version is not None
    version = quote_identifier(route.version)
    return (
        f"SELECT s.{ORD}, (s.{version} IS NOT NULL AND t.{version} IS NOT NULL AND s.{version} < t.{version})\n"
        f"FROM {plan.stage} AS s JOIN {plan.table.label} AS t ON {_match('t', 's', route.key)}\n"
        f"WHERE {_chosen(f's.{ORD}')} AND {_guard(loom_schema)}\n"
        f"ORDER BY {_qualified('t', route.key)} FOR UPDATE OF t"
    )


def delete_sql(plan: RoutePlan, loom_schema: str) -> str:
    """Delete by key the rows of the staged tombstones numbered ``$1`` (those :mod:`loom_ray.routes.reduce`
    found to apply)."""
    match = _match("t", "d", plan.route.key)
    staged = f"SELECT * FROM {plan.stage} WHERE {_chosen(ORD)} AND {_guard(loom_schema)}"
    return f"DELETE FROM {plan.table.label} AS t USING ({staged}) AS d WHERE {match}"


def _names(names: Iterable[str]) -> str:
    return ", ".join(quote_identifier(n) for n in names)


def _qualified(alias: str, names: Iterable[str]) -> str:
    return ", ".join(f"{alias}.{quote_identifier(n)}" for n in names)


def _match(left: str, right: str, names: Iterable[str]) -> str:
    return " AND ".join(f"{left}.{quote_identifier(n)} = {right}.{quote_identifier(n)}" for n in names)
