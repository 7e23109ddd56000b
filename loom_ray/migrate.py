"""The schema: versioned migrations for tables, then one repeatable definition per view.

Tables come from ``sql/NNN_name.sql``, applied once each in version order and recorded in
``loom_migrations``. Each view's text lives once, in ``sql/views/<view>.sql``: after the migrations, a view
whose file's SHA-256 differs from the one recorded in ``loom_views``, or that is not the view migrate()
created (missing, or replaced since), is created again, in an order where every view comes after the views
it reads (its file's ``-- Reads views:`` line).

Runs once at start from the driver (``python -m loom_ray.main``) and in tests. An advisory lock makes two
drivers starting at once apply each change once; a failed file rolls back whole (the views roll back
together) and stops the start. When nothing changed it only reads, so a run-time role without DDL rights
(``sql/roles/least_privilege.sql``) can start the pipeline.
"""

from __future__ import annotations

import graphlib
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from loom_ray.db import quote_identifier

log = logging.getLogger(__name__)

_LOCK_KEY = 0x6C6F6F6D  # "loom"
SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
_READS = re.compile(r"^-- Reads views: (.+)$", re.MULTILINE)

# migrate()'s own bookkeeping, created when missing (only then: CREATE ... IF NOT EXISTS still needs CREATE on
# the schema, which a least-privilege run-time role does not have).
_BOOKKEEPING = {
    "loom_migrations": """CREATE TABLE IF NOT EXISTS loom_migrations (
        name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())""",
    "loom_views": """CREATE TABLE IF NOT EXISTS loom_views (
        name text PRIMARY KEY, sha256 text NOT NULL, rendered text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now())""",
}

# Per view migrate() created: its file's SHA-256 then, and whether the view is still the one it created:
# ``rendered`` is the md5 of pg_get_viewdef right after, so a view missing, or replaced by anything else (an
# older loom-ray running its own view migrations, a person), is not ``intact``.
_RECORDED_SQL = """
SELECT name, sha256, rendered IS NOT DISTINCT FROM md5(pg_get_viewdef(to_regclass(quote_ident(name)))) AS intact
FROM loom_views
"""

_RECORD_SQL = """
INSERT INTO loom_views (name, sha256, rendered)
SELECT name, sha256, md5(pg_get_viewdef(to_regclass(quote_ident(name))))
FROM unnest($1::text[], $2::text[]) AS v(name, sha256)
ON CONFLICT (name) DO UPDATE SET sha256 = EXCLUDED.sha256, rendered = EXCLUDED.rendered, applied_at = now()
"""

_GRANTS_SQL = """
SELECT c.relname AS view,
       format('GRANT %s ON %I TO %s%s', a.privilege_type, c.relname,
              CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
              CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END) AS statement
FROM pg_class AS c CROSS JOIN LATERAL aclexplode(c.relacl) AS a
WHERE c.oid = ANY (SELECT to_regclass(quote_ident(v)) FROM unnest($1::text[]) AS v) AND a.grantee <> c.relowner
"""


@dataclass(frozen=True, slots=True)
class ViewFile:
    """One view's definition: ``sql/views/<name>.sql`` creates the view ``name`` (CREATE OR REPLACE VIEW,
    then its COMMENT)."""

    name: str
    text: str
    reads: tuple[str, ...]  # the other views it selects from, from its ``-- Reads views:`` line

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def migration_files(directory: Path = SQL_DIR) -> list[Path]:
    """The migration files in version order (their names start with a zero-padded number)."""
    return sorted(path for path in directory.glob("[0-9][0-9][0-9]_*.sql"))


def view_files(directory: Path = SQL_DIR / "views") -> list[ViewFile]:
    """Every ``<view>.sql`` of ``directory``, each after the views it reads; raises ValueError when a file
    reads a view no file defines, or graphlib.CycleError when views read each other in a circle."""
    views = {}
    for path in sorted(directory.glob("*.sql")):
        text = path.read_text()
        found = _READS.search(text)
        reads = tuple(name.strip() for name in found.group(1).split(",")) if found else ()
        views[path.stem] = ViewFile(path.stem, text, reads)
    for view in views.values():
        unknown = sorted(set(view.reads) - views.keys())
        if unknown:
            raise ValueError(f"{directory / view.name}.sql reads {unknown}, which no file in {directory} defines")
    order = graphlib.TopologicalSorter({name: view.reads for name, view in views.items()}).static_order()
    return [views[name] for name in order]


async def migrate(conn: asyncpg.Connection, directory: Path = SQL_DIR, schema: str | None = None) -> list[str]:
    """Apply the migration files not yet recorded, then the views whose definition changed; return the names
    applied now (``NNN_name.sql`` files, then view names).

    With ``schema`` (validated LOOM_DB_SCHEMA, on the connection's search_path) the schema is created first
    when it does not exist.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        if schema is not None and await conn.fetchval("SELECT to_regnamespace($1)", quote_identifier(schema)) is None:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(schema)}")
            log.info("created schema %s", schema)
        for table, ddl in _BOOKKEEPING.items():
            if await conn.fetchval("SELECT to_regclass($1)", table) is None:
                await conn.execute(ddl)
        applied = await _apply_migrations(conn, migration_files(directory))
        return applied + await _apply_views(conn, view_files(directory / "views"))
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def _apply_migrations(conn: asyncpg.Connection, files: list[Path]) -> list[str]:
    """Each file not in ``loom_migrations``, in its own transaction with its record."""
    done = {row["name"] for row in await conn.fetch("SELECT name FROM loom_migrations")}
    applied = []
    for path in files:
        if path.name in done:
            continue
        async with conn.transaction():
            await conn.execute(path.read_text())
            await conn.execute("INSERT INTO loom_migrations (name) VALUES ($1)", path.name)
        log.info("applied migration %s", path.name)
        applied.append(path.name)
    return applied


async def _apply_views(conn: asyncpg.Connection, views: list[ViewFile]) -> list[str]:
    """Create again every view whose file changed since ``loom_views`` recorded it, or that is not the view
    migrate() created (missing, or replaced by anything else); nothing (one read) when all are as recorded.

    A role that may not create views (a least-privilege run-time role) still starts when no file changed:
    a view changed outside loom-ray (or rendered anew by another PostgreSQL version) is then logged, for the
    owner to run the migrations.
    """
    recorded = {row["name"]: (row["sha256"], row["intact"]) for row in await conn.fetch(_RECORDED_SQL)}
    stale = {view.name for view in views if recorded.get(view.name) != (view.sha256, True)}
    if not stale:
        return []
    try:
        return await _create_views(conn, views, stale)
    except asyncpg.InsufficientPrivilegeError:
        if any(recorded.get(view.name, ("",))[0] != view.sha256 for view in views):
            raise
        log.warning(
            "views %s are not as sql/views/ defines them (changed outside loom-ray, or rendered anew by another "
            "PostgreSQL version), and this role may not create them: run the migrations as their owner",
            ", ".join(sorted(stale)),
        )
        return []


async def _create_views(conn: asyncpg.Connection, views: list[ViewFile], stale: set[str]) -> list[str]:
    """In one transaction, create the ``stale`` views and any a drop took along, in ``views``' order; record
    every view in ``loom_views``. The names created.

    CREATE OR REPLACE keeps the view, its grants and what reads it; PostgreSQL refuses it when a column is
    dropped, renamed or retyped (42P16). Then the old view is dropped with the views that read it (CASCADE),
    and those are created again later in the order, each with the grants it had.
    """
    names = [view.name for view in views]
    async with conn.transaction():
        grants = await conn.fetch(_GRANTS_SQL, names)
        applied, recreated = [], set()
        for view in views:
            present = await conn.fetchval("SELECT to_regclass(quote_ident($1)) IS NOT NULL", view.name)
            if present and view.name not in stale:
                continue
            if not present:
                await conn.execute(view.text)
                recreated.add(view.name)
            elif await _replace_or_recreate(conn, view):
                recreated.add(view.name)
            applied.append(view.name)
        for grant in grants:
            if grant["view"] in recreated:
                await conn.execute(grant["statement"])
        await conn.execute(_RECORD_SQL, names, [view.sha256 for view in views])
    log.info("applied views %s", ", ".join(applied))
    return applied


async def _replace_or_recreate(conn: asyncpg.Connection, view: ViewFile) -> bool:
    """Run the view's file; where PostgreSQL cannot replace the view in place, drop it (with the views that
    read it) and run the file again. True when the view was dropped."""
    try:
        async with conn.transaction():  # a savepoint: the refusal must not abort the whole transaction
            await conn.execute(view.text)
        return False
    except asyncpg.InvalidTableDefinitionError as exc:
        reason = (str(exc).splitlines() or [""])[0]
        log.info("view %s cannot be replaced in place (%s): dropping it and what reads it", view.name, reason)
        await conn.execute(f"DROP VIEW {quote_identifier(view.name)} CASCADE")
        await conn.execute(view.text)
        return True
