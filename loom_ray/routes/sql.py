"""The SQL of a route, built by pure functions: its table's DDL, its staging table, the one set-based
statement that applies a staged batch, and the check of an existing table against the route.

Every identifier is validated by :mod:`loom_ray.routes.model` and quoted here. The flush
(:mod:`loom_ray.sink.routed`) COPYs a batch's records into the staging table, numbered by ``_loom_ord``
(offset order within each partition), then runs :func:`apply_sql` once over an ``_loom_ord`` range: the
whole batch, or a half of it while a row PostgreSQL refuses is being isolated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from loom_ray.db import quote_identifier
from loom_ray.routes.model import Route
from loom_ray.routes.types import DDL_NAMES

ORD = "_loom_ord"  # the record's position in the flush: later records of a key win
DELETE = "_loom_delete"  # true for a tombstone that deletes by key
_LAST = "_loom_last"


@dataclass(frozen=True, slots=True)
class TableColumn:
    """One column of an existing table, as information_schema describes it."""

    data_type: str
    nullable: bool
    has_default: bool  # a DEFAULT, an identity or a generated column: an INSERT may leave it out


def table_name(route: Route, default_schema: str) -> str:
    """The route's table, schema-qualified and quoted."""
    return f"{quote_identifier(route.schema_name or default_schema)}.{quote_identifier(route.table_name)}"


def create_table_sql(route: Route, default_schema: str) -> list[str]:
    """The statements ``auto_create`` runs: the schema, then the table with its key as primary key."""
    columns = [
        f"{quote_identifier(c.name)} {DDL_NAMES[c.type]}{' NOT NULL' if c.required or c.name in route.key else ''}"
        for c in route.columns
    ]
    if route.key:
        columns.append(f"PRIMARY KEY ({_names(route.key)})")
    schema = quote_identifier(route.schema_name or default_schema)
    return [
        f"CREATE SCHEMA IF NOT EXISTS {schema}",
        f"CREATE TABLE IF NOT EXISTS {table_name(route, default_schema)} (\n    " + ",\n    ".join(columns) + "\n)",
    ]


def add_columns_sql(route: Route, default_schema: str, missing: Iterable[str]) -> list[str]:
    """``add_columns``: the statements that add the route's ``missing`` columns to its existing table, each
    nullable (rows already there have no value; the route itself still refuses nulls where required)."""
    types = {c.name: DDL_NAMES[c.type] for c in route.columns}
    target = table_name(route, default_schema)
    return [f"ALTER TABLE {target} ADD COLUMN IF NOT EXISTS {quote_identifier(n)} {types[n]}" for n in missing]


def stage_name(route: Route) -> str:
    """The route's temporary staging table (one per connection, emptied at each commit)."""
    return "loom_stage_" + hashlib.sha256(route.name.encode("utf-8")).hexdigest()[:16]


def stage_columns(route: Route) -> tuple[str, ...]:
    """The staging table's columns, in the order of the records the flush COPYs into it."""
    return (ORD, DELETE, *(c.name for c in route.columns))


def create_stage_sql(route: Route) -> str:
    """The staging table, created on first use by each connection; ON COMMIT DELETE ROWS empties it."""
    columns = [f"{ORD} bigint NOT NULL", f"{DELETE} boolean NOT NULL"]
    columns += [f"{quote_identifier(c.name)} {DDL_NAMES[c.type]}" for c in route.columns]
    return f"CREATE TEMP TABLE IF NOT EXISTS {stage_name(route)} ({', '.join(columns)}) ON COMMIT DELETE ROWS"


def apply_sql(route: Route, default_schema: str) -> str:
    """One statement that applies the staged records with ``$1 <= _loom_ord < $2`` to the route's table.

    insert: every record, in offset order. upsert: per key, only the record with the highest ``_loom_ord``
    (the last writer): a tombstone deletes the row, anything else inserts it or overwrites every column the
    route names; both in one statement, so an upsert and a delete of the same key in one batch end as the
    later of the two.
    """
    target = table_name(route, default_schema)
    stage = stage_name(route)
    columns = _names(c.name for c in route.columns)
    in_range = f"{ORD} >= $1 AND {ORD} < $2"
    if route.mode == "insert":
        return f"INSERT INTO {target} ({columns})\nSELECT {columns} FROM {stage} WHERE {in_range} ORDER BY {ORD}"
    key = _names(route.key)
    matches = " AND ".join(f"t.{quote_identifier(k)} = {_LAST}.{quote_identifier(k)}" for k in route.key)
    others = [c.name for c in route.columns if c.name not in route.key]
    on_conflict = (
        "DO UPDATE SET " + ", ".join(f"{quote_identifier(c)} = EXCLUDED.{quote_identifier(c)}" for c in others)
        if others
        else "DO NOTHING"
    )
    return (
        f"WITH {_LAST} AS (\n"
        f"    SELECT DISTINCT ON ({key}) * FROM {stage} WHERE {in_range} ORDER BY {key}, {ORD} DESC\n"
        f"), _loom_deleted AS (\n"
        f"    DELETE FROM {target} AS t USING {_LAST} WHERE {_LAST}.{DELETE} AND {matches}\n"
        f")\n"
        f"INSERT INTO {target} AS t ({columns})\n"
        f"SELECT {columns} FROM {_LAST} WHERE NOT {_LAST}.{DELETE}\n"
        f"ON CONFLICT ({key}) {on_conflict}"
    )


def check_table(
    route: Route, label: str, found: Mapping[str, TableColumn], unique_keys: Sequence[frozenset[str]]
) -> list[str]:
    """What makes an existing table unfit for the route, each with its fix; empty when it fits.

    ``found`` are the table's columns, ``unique_keys`` the column sets of its primary key and unique
    indexes (full, not partial, no expressions).
    """
    problems = []
    for column in route.columns:
        ddl = DDL_NAMES[column.type]
        have = found.get(column.name)
        if have is None:
            problems.append(
                f"table {label}: column {column.name} is missing; fix: ALTER TABLE {label} ADD COLUMN "
                f"{quote_identifier(column.name)} {ddl}, set add_columns = true in route {route.name!r}, "
                "or remove the column from it"
            )
        elif have.data_type != column.type:
            problems.append(
                f"table {label}: column {column.name} is {have.data_type} but route {route.name!r} says {ddl}; "
                f"fix: ALTER TABLE {label} ALTER COLUMN {quote_identifier(column.name)} TYPE {ddl}, "
                f'or declare type = "{have.data_type}" in the route if it is one of its types'
            )
    named = {c.name for c in route.columns}
    for name, have in found.items():
        if name not in named and not have.nullable and not have.has_default:
            problems.append(
                f"table {label}: column {name} is NOT NULL without a default and route {route.name!r} gives it "
                f"no value; fix: add {name} to the route's columns, or ALTER TABLE {label} ALTER COLUMN "
                f"{quote_identifier(name)} SET DEFAULT ..."
            )
    if route.mode == "upsert" and frozenset(route.key) not in unique_keys:
        problems.append(
            f"table {label}: no primary key or unique index on ({', '.join(route.key)}), which upsert needs; "
            f"fix: CREATE UNIQUE INDEX ON {label} ({_names(route.key)})"
        )
    return problems


def _names(names: Iterable[str]) -> str:
    return ", ".join(quote_identifier(n) for n in names)
