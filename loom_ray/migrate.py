"""Versioned, idempotent migrations from ``sql/NNN_name.sql``, recorded in ``loom_migrations``.

Runs once at start from the driver (``python -m loom_ray.main``) and in tests. An advisory lock makes two
drivers starting at once apply each file once; a failed file rolls back whole and stops the start. When
nothing is pending it only reads, so a run-time role without DDL rights can start the pipeline.
"""

from __future__ import annotations

import logging
from pathlib import Path

import asyncpg

from loom_ray.db import quote_identifier

log = logging.getLogger(__name__)

_LOCK_KEY = 0x6C6F6F6D  # "loom"
SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


def migration_files(directory: Path = SQL_DIR) -> list[Path]:
    """The migration files in version order (their names start with a zero-padded number)."""
    return sorted(path for path in directory.glob("[0-9][0-9][0-9]_*.sql"))


async def migrate(conn: asyncpg.Connection, directory: Path = SQL_DIR, schema: str | None = None) -> list[str]:
    """Apply the files not yet recorded; return the names applied now.

    With ``schema`` (validated LOOM_DB_SCHEMA, on the connection's search_path) the schema is created first
    when it does not exist.
    """
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        if schema is not None and await conn.fetchval("SELECT to_regnamespace($1)", quote_identifier(schema)) is None:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(schema)}")
            log.info("created schema %s", schema)
        if await conn.fetchval("SELECT to_regclass('loom_migrations')") is None:
            # Only then: CREATE ... IF NOT EXISTS still needs CREATE on the schema, which a
            # least-privilege run-time role (sql/roles/least_privilege.sql) does not have.
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS loom_migrations (
                       name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"""
            )
        done = {row["name"] for row in await conn.fetch("SELECT name FROM loom_migrations")}
        for path in migration_files(directory):
            if path.name in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO loom_migrations (name) VALUES ($1)", path.name)
            log.info("applied migration %s", path.name)
            applied_now.append(path.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now
