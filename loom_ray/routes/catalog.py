"""A route's table as PostgreSQL's catalog describes it: each column's real type, the unique keys, the shape.

Read by the driver at start (:mod:`loom_ray.routes.tables`) and by a consumer when the table changed under
it (:mod:`loom_ray.sink.routed`): the conversions of :mod:`loom_ray.routes.types` are built from these types,
not from the routes file, so a value lands as the column holds it (``varchar(64)``, ``numeric(10,2)``, an
enum, a domain, an array). :class:`TableShape` is plain data (it travels to the consumer actors inside the
settings); :func:`read_shape` is the one query path.

A table's *signature* (``loom_route_shape()``, ``sql/010_route_tables.sql``) digests what the conversions
and the statements rely on: every column's name, type with modifiers, NOT NULL and default, enum labels, and
whether deferrable constraints touch the table. Every statement that writes a route's table checks it
(``loom_route_guard()``), so a table altered while loom-ray runs is noticed before a value is written under
a type it was not converted for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg

# Base types of pg_catalog a route can fill, by pg_type.typname: each is a conversion in routes/types.py.
KINDS = frozenset(
    {
        "int2",
        "int4",
        "int8",
        "numeric",
        "float4",
        "float8",
        "bool",
        "text",
        "varchar",
        "bpchar",
        "date",
        "time",
        "timestamp",
        "timestamptz",
        "uuid",
        "json",
        "jsonb",
        "bytea",
    }
)
ENUM = "enum"
ARRAY = "array"
_VARHDRSZ = 4


@dataclass(frozen=True, slots=True)
class PgType:
    """A column's type reduced to what converting a value needs.

    ``kind`` is a pg_catalog base type name (:data:`KINDS`), ``enum`` or ``array`` (then ``element``);
    ``sql`` is the type as ``format_type`` spells it (``character varying(64)``, ``"Sales".status[]``);
    ``stage_sql`` is what the staging table holds it as (a domain's base type: the domain's own checks run
    when the row reaches the table, where a refused row is isolated and named). ``length`` is ``n`` of
    ``varchar(n)``/``char(n)``; ``precision``/``scale`` those of ``numeric(p,s)`` or the fractional digits
    of a ``time``/``timestamp``; ``labels`` an enum's; ``domain`` the domain's name when the column's type
    is one.
    """

    kind: str
    sql: str
    stage_sql: str
    length: int | None = None
    precision: int | None = None
    scale: int | None = None
    labels: tuple[str, ...] = ()
    element: PgType | None = None
    domain: str | None = None

    def describe(self) -> str:
        """The type as the table declares it (a domain by its name)."""
        return self.domain or self.sql


@dataclass(frozen=True, slots=True)
class TableColumn:
    """One column of a route's table. ``type`` is None for a type no route can fill (``sql`` says which)."""

    name: str
    sql: str
    type_oid: int
    type: PgType | None
    nullable: bool
    has_default: bool  # a DEFAULT, an identity or a generated column: an INSERT may leave it out
    writable: bool = True  # False for a generated column or an identity GENERATED ALWAYS


@dataclass(frozen=True, slots=True)
class UniqueKey:
    """The columns of a primary key or unique index (full, no expressions); ``immediate`` unless DEFERRABLE."""

    columns: frozenset[str]
    name: str
    immediate: bool


@dataclass(frozen=True, slots=True)
class TableShape:
    """A route's table: ``label`` (schema-qualified, quoted), its columns by name, its unique keys, whether
    deferrable constraints touch it, and its :func:`signature <read_shape>`. ``copy_target`` is its
    ``(schema, name)`` as spelled when a COPY into it is what an INSERT is (a plain or partitioned table
    without rules), else None."""

    label: str
    columns: Mapping[str, TableColumn]
    unique_keys: tuple[UniqueKey, ...]
    deferrable: bool
    signature: str
    copy_target: tuple[str, str] | None = None

    def key_named(self, columns: frozenset[str]) -> UniqueKey | None:
        """The unique key on exactly ``columns``, an immediate one first."""
        found = sorted((k for k in self.unique_keys if k.columns == columns), key=lambda k: not k.immediate)
        return found[0] if found else None


def quote_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier, exactly as spelled (a double quote doubled)."""
    return '"' + name.replace('"', '""') + '"'


def decode_typmod(kind: str, typmod: int) -> tuple[int | None, int | None, int | None]:
    """``(length, precision, scale)`` of a type modifier (``atttypmod``; -1 means none).

    varchar/bpchar store ``n + 4``; numeric ``((p << 16) | (s & 0x7ff)) + 4``, the scale an 11-bit signed
    number since PostgreSQL 15; time and timestamp the fractional digits as they are.
    """
    if typmod < 0:
        return None, None, None
    if kind in ("varchar", "bpchar"):
        return typmod - _VARHDRSZ, None, None
    if kind == "numeric":
        packed = typmod - _VARHDRSZ
        return None, (packed >> 16) & 0xFFFF, ((packed & 0x7FF) ^ 1024) - 1024
    if kind in ("time", "timestamp", "timestamptz"):
        return None, typmod, None
    return None, None, None


_ATTRIBUTES_SQL = """
SELECT a.attname::text AS name, a.atttypid AS type_oid, a.atttypmod AS typmod,
       format_type(a.atttypid, a.atttypmod) AS sql, NOT a.attnotnull AS nullable,
       (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '') AS has_default,
       (a.attgenerated = '' AND a.attidentity <> 'a') AS writable
FROM pg_attribute a
WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
_TYPES_SQL = """
SELECT t.oid, t.typname::text AS name, n.nspname = 'pg_catalog' AS builtin, t.typtype::text AS typtype,
       t.typbasetype, t.typtypmod,
       t.typelem, t.typcategory::text AS typcategory, format_type(t.oid, NULL) AS sql,
       CASE WHEN t.typtype = 'e' THEN
           ARRAY(SELECT e.enumlabel::text FROM pg_enum e WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder)
       END AS labels
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE t.oid = ANY($1::oid[])
"""
_KEYS_SQL = """
SELECT array_agg(a.attname::text) AS columns, c.relname::text AS name, i.indimmediate AS immediate
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = $1::regclass AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
  AND k.ord <= i.indnkeyatts
GROUP BY i.indexrelid, c.relname, i.indimmediate
"""
_RELATION_SQL = """
SELECT n.nspname::text AS schema, c.relname::text AS name, c.relkind IN ('r', 'p') AND NOT c.relhasrules AS copies
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = $1::regclass
"""
_DEFERRABLE_SQL = """
SELECT EXISTS (SELECT 1 FROM pg_constraint c
               WHERE (c.conrelid = $1::regclass OR c.confrelid = $1::regclass) AND c.condeferrable)
    OR EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = $1::regclass AND t.tgdeferrable)
"""


async def read_shape(conn: asyncpg.Connection, label: str, loom_schema: str) -> TableShape | None:
    """The table ``label`` (quoted ``"schema"."table"``) as the catalog has it now, or None if it does not
    exist. ``loom_schema`` holds ``loom_route_shape()`` (the migrations create it there)."""
    if await conn.fetchval("SELECT to_regclass($1)", label) is None:
        return None
    attributes = await conn.fetch(_ATTRIBUTES_SQL, label)
    types = await _types(conn, {row["type_oid"] for row in attributes})
    columns = {}
    for row in attributes:
        columns[row["name"]] = TableColumn(
            row["name"],
            row["sql"],
            row["type_oid"],
            _pg_type(types, row["type_oid"], row["typmod"]),
            row["nullable"],
            row["has_default"],
            row["writable"],
        )
    keys = tuple(
        UniqueKey(frozenset(row["columns"]), row["name"], row["immediate"])
        for row in await conn.fetch(_KEYS_SQL, label)
    )
    deferrable = bool(await conn.fetchval(_DEFERRABLE_SQL, label))
    signature = await conn.fetchval(f"SELECT {quote_identifier(loom_schema)}.loom_route_shape($1::regclass)", label)
    relation = await conn.fetchrow(_RELATION_SQL, label)
    copy_target = (relation["schema"], relation["name"]) if relation["copies"] else None
    return TableShape(label, columns, keys, deferrable, signature, copy_target)


async def _types(conn: asyncpg.Connection, oids: set[int]) -> dict[int, asyncpg.Record]:
    """pg_type rows of ``oids`` and of every type they are built on (a domain's base, an array's element)."""
    found: dict[int, asyncpg.Record] = {}
    wanted = set(oids)
    while wanted:
        rows = await conn.fetch(_TYPES_SQL, sorted(wanted))
        found.update({row["oid"]: row for row in rows})
        wanted = {o for row in rows for o in (row["typbasetype"], row["typelem"]) if o and o not in found}
    return found


def _pg_type(types: Mapping[int, asyncpg.Record], oid: int, typmod: int) -> PgType | None:
    """The :class:`PgType` of type ``oid`` with modifier ``typmod``, or None if no route can fill it."""
    row = types.get(oid)
    if row is None:
        return None
    if row["typtype"] == "d":
        base_typmod = row["typtypmod"] if row["typtypmod"] >= 0 else typmod
        base = _pg_type(types, row["typbasetype"], base_typmod)
        if base is None:
            return None
        return PgType(
            base.kind,
            base.sql,
            base.stage_sql,
            base.length,
            base.precision,
            base.scale,
            base.labels,
            base.element,
            domain=row["sql"],
        )
    if row["typcategory"] == "A" and row["typelem"]:
        element = _pg_type(types, row["typelem"], typmod)
        if element is None or element.kind == ARRAY:
            return None
        return PgType(ARRAY, f"{element.sql}[]", f"{element.stage_sql}[]", element=element)
    if row["typtype"] == "e":
        return PgType(ENUM, row["sql"], row["sql"], labels=tuple(row["labels"]))
    if not (row["builtin"] and row["name"] in KINDS):
        return None
    length, precision, scale = decode_typmod(row["name"], typmod)
    sql = _with_typmod(row["sql"], row["name"], length, precision, scale)
    return PgType(row["name"], sql, sql, length, precision, scale)


def _with_typmod(sql: str, kind: str, length: int | None, precision: int | None, scale: int | None) -> str:
    """``format_type`` of a base type with its modifier (``character varying(64)``, ``numeric(10,2)``,
    ``timestamp(3) without time zone``)."""
    if length is not None:
        return f"{sql}({length})"
    if kind == "numeric" and precision is not None:
        return f"numeric({precision},{scale})"
    if precision is not None:
        head, _, tail = sql.partition(" ")
        return f"{head}({precision}) {tail}".strip()
    return sql


def widens(old: PgType, new: PgType) -> bool:
    """Whether every value converted for ``old`` is stored unchanged by a column of type ``new``: the same
    type, or one with more room (an integer into a wider integer or numeric, real into double, a longer or
    unbounded varchar, a numeric with at least as many digits on each side of the point, more fractional
    digits of a time, an enum with labels added). Decides whether a consumer takes in a table altered while
    it runs (:mod:`loom_ray.sink.routed`) or waits for a person."""
    if old == new:
        return True
    if old.domain != new.domain:
        return False
    if old.kind == ARRAY and new.kind == ARRAY:
        assert old.element is not None and new.element is not None
        return widens(old.element, new.element)
    integers = ("int2", "int4", "int8")
    if old.kind in integers and new.kind in integers:
        return integers.index(new.kind) >= integers.index(old.kind)
    if old.kind in integers and new.kind == "numeric":
        digits = {"int2": 5, "int4": 10, "int8": 19}[old.kind]
        return new.precision is None or (new.precision - (new.scale or 0)) >= digits
    if (old.kind, new.kind) == ("float4", "float8"):
        return True
    if old.kind in ("varchar", "text") and new.kind in ("varchar", "text"):
        if new.kind == "text" or new.length is None:
            return True
        return old.kind == "varchar" and old.length is not None and new.length >= old.length
    if old.kind != new.kind:
        return False
    if old.kind == "numeric":
        if new.precision is None:
            return True
        if old.precision is None:
            return False
        assert old.scale is not None and new.scale is not None
        return new.scale >= old.scale and new.precision - new.scale >= old.precision - old.scale
    if old.kind in ("time", "timestamp", "timestamptz"):
        return new.precision is None or (old.precision is not None and new.precision >= old.precision)
    if old.kind == ENUM:
        return old.sql == new.sql and set(old.labels) <= set(new.labels)
    return False
