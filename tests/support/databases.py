"""Throw-away PostgreSQL databases for tests that need a whole database of their own (schema history, views)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg


@contextlib.asynccontextmanager
async def scratch_database(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a new, empty database (``dsn``'s role must be allowed to CREATE DATABASE), dropped
    with everything in it afterwards."""
    name = f"loom_scratch_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            conn = await asyncpg.connect(dsn, database=name)
            try:
                yield conn
            finally:
                await conn.close()
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def schema_snapshot(conn: asyncpg.Connection) -> dict[str, Any]:
    """What a migrated schema holds, comparable across databases: each view's definition (``pg_get_viewdef``)
    and comment, each table's columns, each index's definition and each constraint's."""
    views = await conn.fetch(
        """SELECT c.relname, pg_get_viewdef(c.oid) AS definition, obj_description(c.oid, 'pg_class') AS comment
           FROM pg_class AS c WHERE c.relkind = 'v' AND c.relnamespace = 'public'::regnamespace ORDER BY 1"""
    )
    columns = await conn.fetch(
        """SELECT table_name, column_name, ordinal_position, data_type, is_nullable, column_default,
                  is_generated, generation_expression
           FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 3"""
    )
    indexes = await conn.fetch("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1")
    constraints = await conn.fetch(
        """SELECT conrelid::regclass::text AS "table", conname, pg_get_constraintdef(oid) AS definition
           FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2"""
    )
    return {
        "views": {r["relname"]: (r["definition"], r["comment"]) for r in views},
        "columns": [tuple(r) for r in columns],
        "indexes": [tuple(r) for r in indexes],
        "constraints": [tuple(r) for r in constraints],
    }
