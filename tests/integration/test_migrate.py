"""loom_ray/migrate.py on a real PostgreSQL, each case in a database of its own: a database migrated by the
files of the last commit whose versioned migrations created the views ends, after today's migrate, exactly as
a fresh one; a session that may not write, and a role without DDL rights, start when nothing changed; a view
replaced behind migrate()'s back is created again; a view whose columns change is dropped and created again
with the views that read it and their grants."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from loom_ray.migrate import SQL_DIR, migrate, migration_files
from tests.support.databases import schema_snapshot, scratch_database
from tests.support.pipeline import scalar
from tests.support.services import ROOT, Endpoints

# The last commit whose sql/NNN_*.sql created the views themselves (sql/003_views.sql redefined by 005-007).
VIEWS_IN_MIGRATIONS = "b25fe951c09bf908645fc418bb8477b0ff141a47"


def _files_of(commit: str, target: Path) -> Path:
    """sql/NNN_*.sql as they were at ``commit``, written into ``target``."""
    found = subprocess.run(["git", "cat-file", "-e", commit], cwd=ROOT, capture_output=True)
    if found.returncode != 0:
        pytest.skip(f"needs commit {commit} (a full clone of the repository)")
    listed = subprocess.run(
        ["git", "ls-tree", "--name-only", commit, "sql/"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in (Path(p).name for p in listed if p.endswith(".sql")):
        shown = subprocess.run(["git", "show", f"{commit}:sql/{name}"], cwd=ROOT, capture_output=True, check=True)
        (target / name).write_bytes(shown.stdout)
    return target


async def _migrate_as_then(conn: asyncpg.Connection, directory: Path) -> None:
    """What migrate() did at that commit: each file in order, recorded in loom_migrations."""
    await conn.execute(
        "CREATE TABLE loom_migrations (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for path in migration_files(directory):
        async with conn.transaction():
            await conn.execute(path.read_text())
            await conn.execute("INSERT INTO loom_migrations (name) VALUES ($1)", path.name)


def test_an_existing_database_ends_with_the_same_views_and_tables_as_a_fresh_one(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    old = _files_of(VIEWS_IN_MIGRATIONS, tmp_path)

    async def run() -> None:
        async with scratch_database(endpoints.dsn) as fresh, scratch_database(endpoints.dsn) as existing:
            await migrate(fresh)
            await _migrate_as_then(existing, old)
            before = await schema_snapshot(existing)
            applied = await migrate(existing)
            assert set(before["views"]) <= set(applied)  # every view the old files made was created again
            expected = await schema_snapshot(fresh)
            assert await schema_snapshot(existing) == expected
            assert len(expected["views"]) == len(list((SQL_DIR / "views").glob("*.sql")))

    asyncio.run(run())


def test_a_role_that_may_not_change_anything_starts_when_nothing_changed(endpoints: Endpoints, tmp_path: Path) -> None:
    changed = shutil.copytree(SQL_DIR, tmp_path / "sql")
    alerts = changed / "views" / "v_consumer_alerts.sql"
    alerts.write_text(alerts.read_text().replace("Active alerts per partition", "Alerts per partition"))

    async def run() -> None:
        async with scratch_database(endpoints.dsn) as conn:
            assert await migrate(conn)
            await conn.execute("SET default_transaction_read_only = on")  # any write fails now
            assert await migrate(conn) == []
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await migrate(conn, changed)  # the check has teeth: a changed view must be written

    asyncio.run(run())


def test_a_view_replaced_behind_its_back_is_created_again(endpoints: Endpoints) -> None:
    # What an older loom-ray does when it runs its own view migrations on a database this one created.
    route_counts = (SQL_DIR / "views" / "v_route_counts.sql").read_text()
    older = route_counts.replace("count(DISTINCT topic)", "count(topic)")
    assert older != route_counts

    async def run() -> None:
        async with scratch_database(endpoints.dsn) as conn:
            await migrate(conn)
            expected = await schema_snapshot(conn)
            await conn.execute(older)
            assert await schema_snapshot(conn) != expected
            assert await migrate(conn) == ["v_route_counts"]
            assert await schema_snapshot(conn) == expected
            await conn.execute("DROP VIEW v_consumer_activity_monitoring")
            assert await migrate(conn) == ["v_consumer_activity_monitoring"]
            assert await migrate(conn) == []

    asyncio.run(run())


def test_a_role_without_ddl_rights_starts_unless_a_view_file_changed(
    endpoints: Endpoints, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    changed = shutil.copytree(SQL_DIR, tmp_path / "sql")
    alerts = changed / "views" / "v_consumer_alerts.sql"
    alerts.write_text(alerts.read_text().replace("Active alerts per partition", "Alerts per partition"))
    role = f"loom_migrate_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(endpoints.dsn)

    async def run() -> None:
        async with scratch_database(endpoints.dsn) as conn:
            await migrate(conn)
            await conn.execute(f"CREATE ROLE {role} LOGIN")
            await conn.execute(f"GRANT SELECT ON loom_migrations, loom_views TO {role}")
            database = await conn.fetchval("SELECT current_database()")
            netloc = f"{role}@{parts.netloc.rsplit('@', 1)[-1]}"
            runtime = await asyncpg.connect(urlunsplit(parts._replace(netloc=netloc, path=f"/{database}")))
            try:
                assert await migrate(runtime) == []
                await conn.execute((SQL_DIR / "views" / "v_route_counts.sql").read_text().replace("DISTINCT ", ""))
                with caplog.at_level(logging.WARNING, logger="loom_ray.migrate"):
                    assert await migrate(runtime) == []  # a view changed by hand: logged, not a reason to stop
                assert "v_route_counts are not as sql/views/ defines them" in caplog.text
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await migrate(runtime, changed)  # a file changed: the owner must migrate first
            finally:
                await runtime.close()

    try:
        asyncio.run(run())
    finally:
        scalar(endpoints, f"DROP ROLE IF EXISTS {role}")


_BASE = "CREATE OR REPLACE VIEW toy_base AS SELECT 1 AS x, {} 2 AS y;\n"
_TOP = "-- Reads views: toy_base\nCREATE OR REPLACE VIEW toy_top AS SELECT x{} FROM toy_base;\n"
_PUBLIC_SELECT = """
SELECT count(*) FROM pg_class AS c, aclexplode(c.relacl) AS a
WHERE c.relname = $1 AND a.grantee = 0 AND a.privilege_type = 'SELECT'
"""


def test_a_view_whose_columns_change_is_created_again_with_what_reads_it(endpoints: Endpoints, tmp_path: Path) -> None:
    views = tmp_path / "views"
    views.mkdir()

    def write(base: str, top: str) -> None:
        (views / "toy_base.sql").write_text(_BASE.format(base))
        (views / "toy_top.sql").write_text(_TOP.format(top))

    async def run() -> None:
        async with scratch_database(endpoints.dsn) as conn:
            write("", "")
            assert await migrate(conn, tmp_path) == ["toy_base", "toy_top"]
            await conn.execute("GRANT SELECT ON toy_top TO PUBLIC")
            oid = await conn.fetchval("SELECT 'toy_top'::regclass::oid")
            assert await migrate(conn, tmp_path) == []
            write("", ", y")  # a column added: replaced in place
            assert await migrate(conn, tmp_path) == ["toy_top"]
            assert await conn.fetchval("SELECT 'toy_top'::regclass::oid") == oid
            write("", "")  # a column dropped: toy_top is dropped and created again
            assert await migrate(conn, tmp_path) == ["toy_top"]
            assert await conn.fetchval(_PUBLIC_SELECT, "toy_top") == 1
            write("-1 AS w,", "")  # toy_base's column y moves: toy_top goes with it and comes back
            assert await migrate(conn, tmp_path) == ["toy_base", "toy_top"]
            assert await conn.fetchval("SELECT w FROM toy_base") == -1
            assert await conn.fetchval("SELECT x FROM toy_top") == 1
            assert await conn.fetchval(_PUBLIC_SELECT, "toy_top") == 1

    asyncio.run(run())


def test_the_view_files_are_applied_in_the_configured_schema(endpoints: Endpoints) -> None:
    async def run() -> None:
        async with scratch_database(endpoints.dsn) as conn:
            await conn.execute("SET search_path = loom_elsewhere")
            await migrate(conn, schema="loom_elsewhere")
            found = await conn.fetchval(
                "SELECT count(*) FROM pg_views WHERE schemaname = 'loom_elsewhere' AND viewname LIKE 'v\\_%'"
            )
            assert found == len(list((SQL_DIR / "views").glob("*.sql")))

    asyncio.run(run())
