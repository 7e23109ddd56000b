"""Table shapes for unit tests: what :func:`loom_ray.routes.catalog.read_shape` would read, built by hand."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from loom_ray.routes.catalog import ARRAY, ENUM, PgType, TableColumn, TableShape, UniqueKey

_SQL = {
    "int2": "smallint",
    "int4": "integer",
    "int8": "bigint",
    "float4": "real",
    "float8": "double precision",
    "bool": "boolean",
    "varchar": "character varying",
    "bpchar": "character",
    "timestamp": "timestamp without time zone",
    "timestamptz": "timestamp with time zone",
    "time": "time without time zone",
}


def pg(
    kind: str,
    length: int | None = None,
    precision: int | None = None,
    scale: int | None = None,
    labels: Iterable[str] = (),
    element: PgType | None = None,
    domain: str | None = None,
) -> PgType:
    """A column type as the catalog would describe it (``kind`` as in :data:`loom_ray.routes.catalog.KINDS`,
    ``enum`` with ``labels``, or ``array`` of ``element``)."""
    if kind == ARRAY:
        assert element is not None
        return PgType(ARRAY, f"{element.sql}[]", f"{element.stage_sql}[]", element=element, domain=domain)
    if kind == ENUM:
        return PgType(ENUM, "status", "status", labels=tuple(labels), domain=domain)
    sql = _SQL.get(kind, kind)
    if length is not None:
        sql = f"{sql}({length})"
    elif kind == "numeric" and precision is not None:
        sql = f"numeric({precision},{scale})"
    elif precision is not None:
        head, _, tail = sql.partition(" ")
        sql = f"{head}({precision}) {tail}".strip()
    return PgType(kind, sql, sql, length, precision, scale, domain=domain)


def shape(
    columns: Mapping[str, PgType | None],
    keys: Iterable[tuple[str, ...]] = (),
    label: str = '"shop"."orders"',
    not_null: Iterable[str] = (),
    defaults: Iterable[str] = (),
    deferrable_keys: Iterable[tuple[str, ...]] = (),
    generated: Iterable[str] = (),
    signature: str = "s1",
) -> TableShape:
    """A table of ``columns`` (None: a type no route can fill, shown as ``inet``), unique ``keys``."""
    required, default, computed = set(not_null), set(defaults), set(generated)
    found = {
        name: TableColumn(
            name,
            "inet" if t is None else t.sql,
            hash(name) % 10_000 if t is None else hash(t.sql) % 10_000,
            t,
            name not in required,
            name in default or name in computed,
            name not in computed,
        )
        for name, t in columns.items()
    }
    unique = tuple(UniqueKey(frozenset(k), f"{'_'.join(k)}_key", True) for k in keys)
    unique += tuple(UniqueKey(frozenset(k), f"{'_'.join(k)}_key", False) for k in deferrable_keys)
    return TableShape(label, found, unique, False, signature)
