"""Whether a table fits its route, and what to change when it does not: one pure rule for the start and for a
consumer that finds the table altered while it runs.

The driver calls :func:`problems` for every route at start (:mod:`loom_ray.routes.tables`): a problem stops
the start with exit code 2 and the message names the table, the column and the fix. A consumer calls it
again when a flush finds the table's signature changed (:mod:`loom_ray.sink.routed`): a table that still
fits, and whose route columns only gained room (:func:`loom_ray.routes.catalog.widens`), is taken in at
once; otherwise the route waits for a person, with these problems as the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from loom_ray.routes.catalog import TableShape, quote_identifier, widens
from loom_ray.routes.model import Route
from loom_ray.routes.types import VERSION_KINDS, converter

# What each source fills, in words, for the fix of a column whose type it cannot fill.
_SOURCE_FILLS = {
    "bytes": "text, varchar, char, bytea, an integer, numeric, uuid or an enum",
    "timestamp": "timestamptz or timestamp",
    "topic": "text, varchar or char",
    "partition": "an integer or numeric",
    "offset": "an integer or numeric",
}
ROUTE_TYPES = (
    "smallint, integer, bigint, numeric(p,s), real, double precision, boolean, text, varchar(n), char(n), date, "
    "time, timestamp, timestamptz, uuid, json, jsonb, bytea, an enum, a domain over one of these, or a "
    "one-dimensional array of one of these"
)


def problems(route: Route, table: TableShape, declared: Mapping[str, int | None] | None = None) -> list[str]:
    """What makes ``table`` unfit for ``route``, each with its fix; empty when it fits.

    ``declared`` maps each column that gives a ``type`` to that type's oid (``to_regtype``; None if PostgreSQL
    knows no such type), read at start; a consumer re-checking passes None (the start checked them)."""
    label = table.label
    found = []
    for column in route.columns:
        have = table.columns.get(column.name)
        if have is None:
            found.append(_missing(route, table, column.name, column.type))
            continue
        if not have.writable:
            found.append(
                f"table {label}: column {column.name!r} is generated (or an identity GENERATED ALWAYS), so no "
                f"row can give it a value; fix: remove it from route {route.name!r}"
            )
            continue
        if have.type is None:
            found.append(
                f"table {label}: column {column.name!r} is {have.sql}, which a route cannot fill; fix: remove it "
                f"from route {route.name!r}, or ALTER TABLE {label} ALTER COLUMN {column.quoted} TYPE one of: "
                f"{ROUTE_TYPES}"
            )
            continue
        if declared is not None and column.type is not None:
            oid = declared.get(column.name)
            if oid is None:
                found.append(f"route {route.name!r}: column {column.name!r}: PostgreSQL knows no type {column.type!r}")
                continue
            if oid != have.type_oid:
                found.append(
                    f"table {label}: column {column.name!r} is {have.sql} but route {route.name!r} says "
                    f'{column.type}; fix: declare type = "{have.sql}" (or leave type out: the table\'s type is '
                    f"used), or ALTER TABLE {label} ALTER COLUMN {column.quoted} TYPE {column.type}"
                )
                continue
        source = "bytes" if column.reads_bytes else ("json" if column.source in ("value", "key") else column.source)
        if converter(have.type, source, column.round) is None:
            found.append(
                f'table {label}: column {column.name!r} is {have.sql}, but from = "{column.source}"'
                f"{'' if column.path else ' (without a path)'} gives {_SOURCE_FILLS[source]}; fix: change the "
                "column's type"
                + (", or give a path into a JSON key" if column.source == "key" else "")
                + f", or its source in route {route.name!r}"
            )
    named = {c.name for c in route.columns}
    for name, have in table.columns.items():
        if name not in named and not have.nullable and not have.has_default:
            found.append(
                f"table {label}: column {name!r} is NOT NULL without a default and route {route.name!r} gives it "
                f"no value; fix: add {quote_identifier(name)} to the route's columns, or ALTER TABLE {label} "
                f"ALTER COLUMN {quote_identifier(name)} SET DEFAULT ..."
            )
    found += _key_problems(route, table)
    found += _version_problems(route, table)
    return found


def _missing(route: Route, table: TableShape, name: str, declared: str | None) -> str:
    """A route column the table lacks: the fix, and the column the route may have meant (other case)."""
    near = [have for have in table.columns if have.lower() == name.lower()]
    if near:
        return (
            f"table {table.label}: no column {name!r}, but there is {near[0]!r}; fix: name the column as the "
            f"table spells it in route {route.name!r} ({quote_identifier(near[0])} = {{ ... }})"
        )
    add = f"ALTER TABLE {table.label} ADD COLUMN {quote_identifier(name)} {declared or '<type>'}"
    return (
        f"table {table.label}: column {name!r} is missing; fix: {add}, set add_columns = true in route "
        f"{route.name!r}{'' if declared else ' (with a type for the column)'}, or remove the column from it"
    )


def _key_problems(route: Route, table: TableShape) -> list[str]:
    """An upsert, and an insert with a key, need an immediate unique key on exactly the route's key."""
    if not route.key:
        return []
    unique = table.key_named(frozenset(route.key))
    columns = ", ".join(quote_identifier(k) for k in route.key)
    does = "upsert needs" if route.mode == "upsert" else "on_duplicate acts on"
    if unique is None:
        return [
            f"table {table.label}: no primary key or unique index on ({', '.join(route.key)}), which {does}; "
            f"fix: CREATE UNIQUE INDEX ON {table.label} ({columns})"
            + ("" if route.mode == "upsert" else ", or remove key from the route")
        ]
    if not unique.immediate:
        return [
            f"table {table.label}: the unique key {unique.name!r} on ({', '.join(route.key)}) is DEFERRABLE, and "
            "INSERT ... ON CONFLICT cannot use a deferrable key; fix: ALTER TABLE ... ALTER CONSTRAINT "
            f"{quote_identifier(unique.name)} NOT DEFERRABLE, or CREATE UNIQUE INDEX ON {table.label} ({columns})"
        ]
    return []


def _version_problems(route: Route, table: TableShape) -> list[str]:
    if route.version is None:
        return []
    have = table.columns.get(route.version)
    if have is None or have.type is None:
        return []  # reported as the column's own problem
    if have.type.kind not in VERSION_KINDS:
        return [
            f"table {table.label}: version column {route.version!r} is {have.sql}; a version must be an integer, "
            f"numeric, timestamp, timestamptz or date; fix: name such a column as version in route {route.name!r}"
        ]
    return []


def unchanged_or_wider(route: Route, before: TableShape, after: TableShape) -> bool:
    """Whether every column of ``route`` has in ``after`` the type it had in ``before``, or one with more room:
    values converted for ``before`` are then stored unchanged (the check of a table altered while running)."""
    for column in route.columns:
        old, new = before.columns.get(column.name), after.columns.get(column.name)
        if old is None or new is None or old.type is None or new.type is None:
            return False
        if not widens(old.type, new.type):
            return False
    return True


def upsert_order_warnings(route: Route, partitions: Mapping[str, int], topics: Iterable[str]) -> list[str]:
    """Why ``route``'s upserts may apply an older record over a newer one, when it names no ``version``: its
    key is not the Kafka key while its topics have more than one partition, or it matches several topics.
    ``partitions`` maps each configured topic to its partition count; ``topics`` are the configured ones."""
    if route.mode != "upsert" or route.version is not None:
        return []
    mine = [t for t in topics if route.matches(t)]
    by_name = {c.name: c for c in route.columns}
    from_kafka_key = all(by_name[k].source == "key" for k in route.key)
    reasons = []
    if len(mine) > 1:
        reasons.append(f"it matches {len(mine)} topics ({', '.join(sorted(mine))})")
    if not from_kafka_key:
        wide = [t for t in mine if partitions.get(t, 1) > 1]
        if wide:
            reasons.append(
                f"its key is not read from the Kafka key and {', '.join(sorted(wide))} has more than one partition"
            )
    if not reasons:
        return []
    return [
        f"route {route.name!r}: {' and '.join(reasons)}, so two records of one key may be applied in another "
        "order than they were produced (offset order holds within a partition only) and an older one may "
        'overwrite a newer one; set version = "<column>" (a column that grows with each change of a key, such as '
        "an updated_at or a sequence number) to keep the newest"
    ]
