"""PostgreSQL refusing flushes for reasons other than an outage (issue 9, case 7).

Each test runs the job in a schema of its own (LOOM_DB_SCHEMA), so its tables can be refused, revoked or
altered without touching anyone else's. While PostgreSQL refuses the flushes, the job keeps running, the
same consumer actor (same name, same pid) keeps retrying, and the refusal shows in ``v_consumer_alerts``
and the progress line; once fixed, the partitions drain with every offset exactly once.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from loom_ray.migrate import migrate
from tests.support.pipeline import account, fill, pids_of, pipeline_env, scalar, start_main, stop_group, wait_until
from tests.support.services import Endpoints

MESSAGES = 2_000
PARTITIONS = 2
LEAST_PRIVILEGE_SQL = Path(__file__).resolve().parents[2] / "sql" / "roles" / "least_privilege.sql"


async def _script(dsn: str, text: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(text)
    finally:
        await conn.close()


@dataclass(frozen=True)
class Schema:
    """A schema of one test: its name, the services, and the same with the schema on the DSN's search_path."""

    name: str
    services: Endpoints
    endpoints: Endpoints

    def scalar(self, sql: str, *args: object) -> Any:
        return scalar(self.endpoints, sql, *args)

    def execute(self, *statements: str) -> None:
        """Run statements without parameters in this schema, one by one."""
        for statement in statements:
            self.scalar(statement)

    def start_main(self, topic: str, tmp_path: Path, db_dsn: str | None = None) -> tuple[subprocess.Popen[bytes], Path]:
        """Start the job on ``topic`` with one consumer, its tables in this schema; the process and its log."""
        log = tmp_path / "main.log"
        env = pipeline_env(self.services, topic, db_schema=self.name, min_actors=1, max_actors=1)
        env["LOOM_DB_DSN"] = db_dsn or env["LOOM_DB_DSN"]
        return start_main(env, log=log), log


def _with_search_path(dsn: str, schema: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}search_path={schema}"


async def _migrate(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, schema=schema)
    finally:
        await conn.close()


@pytest.fixture
def schema(endpoints: Endpoints, topic_name: str) -> Iterator[Schema]:
    """loom-ray's tables, migrated, in a new schema; dropped afterwards."""
    name = f"loom_{topic_name.replace('-', '_')}"
    found = Schema(name, endpoints, replace(endpoints, dsn=_with_search_path(endpoints.dsn, name)))
    asyncio.run(_migrate(found.endpoints.dsn, name))
    try:
        yield found
    finally:
        scalar(endpoints, f"DROP SCHEMA IF EXISTS {name} CASCADE")


def _refuse_rows(sqlstate: str) -> tuple[str, str]:
    """A row trigger on loom_messages that raises ``sqlstate``, as PostgreSQL would when it refuses the write."""
    return (
        """CREATE FUNCTION refuse_rows() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               RAISE EXCEPTION 'simulated SQLSTATE % for this test', TG_ARGV[0] USING ERRCODE = TG_ARGV[0];
           END $$""",
        "CREATE TRIGGER refuse_rows BEFORE INSERT ON loom_messages FOR EACH ROW "
        f"EXECUTE FUNCTION refuse_rows('{sqlstate}')",
    )


def _owners(schema: Schema, topic: str) -> list[str]:
    found = schema.scalar("SELECT array_agg(DISTINCT owner ORDER BY owner) FROM loom_offsets WHERE topic = $1", topic)
    return list(found or [])


def _consumer_pids(endpoints: Endpoints, owners: list[str]) -> list[int]:
    return sorted(pid for owner in owners for pid in pids_of(endpoints, f"loom-ray {owner}"))


def _committed(schema: Schema, topic: str) -> int:
    return int(schema.scalar("SELECT coalesce(sum(next_offset), 0) FROM loom_offsets WHERE topic = $1", topic))


def run_blocked(
    endpoints: Endpoints,
    schema: Schema,
    topic: str,
    tmp_path: Path,
    sqlstate: str,
    condition: str,
    fix: Callable[[], None],
    db_dsn: str | None = None,
) -> str:
    """Run the job while PostgreSQL refuses its flushes with ``sqlstate``; check it stays up with the same
    consumer and reports the refusal; ``fix`` it; check everything drains exactly once. Returns the job's log."""
    fill(endpoints, topic, MESSAGES, partitions=PARTITIONS)
    process, log = schema.start_main(topic, tmp_path, db_dsn)
    running = (process, log)
    progress = re.compile(
        rf"^progress: .*, flushes of 1 actors blocked for \d+s by SQLSTATE {sqlstate} \({condition}: ", re.MULTILINE
    )
    try:
        wait_until(
            lambda: (
                schema.scalar(
                    "SELECT count(*) FROM v_consumer_alerts WHERE topic = $1 AND alert_kind = 'sink_blocked' "
                    "AND detail LIKE $2",
                    topic,
                    f"SQLSTATE {sqlstate} ({condition})%",
                )
                == PARTITIONS
            ),
            120,
            f"a sink_blocked alert with SQLSTATE {sqlstate} on every partition",
            running=running,
        )
        owners = _owners(schema, topic)
        pids = _consumer_pids(endpoints, owners)
        # Health checks run every second: a consumer that died on the refusal would have been replaced
        # many times over by the time the coordinator has reported the same blocker for 5 s.
        wait_until(
            lambda: (
                schema.scalar(
                    "SELECT extract(epoch FROM last_seen - first_seen) >= 5 FROM loom_sink_errors WHERE owner = $1",
                    owners[0],
                )
                is True
            ),
            60,
            "the blocker reported over 5 s of health checks",
            running=running,
        )
        wait_until(lambda: len(progress.findall(log.read_text())) >= 2, 60, "the progress line", running=running)
        assert process.poll() is None
        assert len(owners) == 1 and owners == _owners(schema, topic), "the blocked consumer was replaced"
        assert pids and pids == _consumer_pids(endpoints, owners), "the blocked consumer's process changed"
        assert _committed(schema, topic) == 0
        fix()
        wait_until(lambda: _committed(schema, topic) == MESSAGES, 120, "the partitions drained", running=running)
        wait_until(
            lambda: schema.scalar("SELECT count(*) FROM loom_sink_errors WHERE cleared_at IS NULL") == 0,
            60,
            "the blocker cleared",
            running=running,
        )
        assert schema.scalar("SELECT count(*) FROM v_consumer_alerts WHERE alert_kind = 'sink_blocked'") == 0
        assert owners == _owners(schema, topic)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()[-3000:]
    finally:
        stop_group(process)
    result = account(schema.endpoints, topic)
    assert result.exact, str(result)
    assert result.max_epoch == 1, "a partition was claimed again: its consumer was replaced"
    text = log.read_text()
    assert "is gone" not in text
    # Logged when it starts, not at every retry.
    assert len(re.findall(rf"flushes blocked: PostgreSQL refuses them with SQLSTATE {sqlstate}", text)) == 1, text
    assert "flushes go through again" in text
    return text


@pytest.mark.parametrize(
    ("sqlstate", "condition"),
    [("53100", "disk_full"), ("25006", "read_only_sql_transaction"), ("42501", "insufficient_privilege")],
)
def test_refused_flushes_are_retried_in_place_reported_and_resume_once_fixed(
    endpoints: Endpoints, schema: Schema, topic_name: str, tmp_path: Path, sqlstate: str, condition: str
) -> None:
    schema.execute(*_refuse_rows(sqlstate))
    run_blocked(
        endpoints,
        schema,
        topic_name,
        tmp_path,
        sqlstate,
        condition,
        fix=lambda: schema.execute("DROP TRIGGER refuse_rows ON loom_messages"),
    )


def test_a_revoked_insert_privilege_blocks_until_granted_again(
    endpoints: Endpoints, schema: Schema, topic_name: str, tmp_path: Path
) -> None:
    role = f"loom_sinkerr_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(endpoints.dsn)
    role_dsn = urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rsplit('@', 1)[-1]}"))
    # sql/roles/least_privilege.sql for a role of this test on this test's schema, then INSERT on loom_messages
    # revoked.
    grants = (
        LEAST_PRIVILEGE_SQL.read_text().replace("loom_ingest", role).replace("SCHEMA public", f"SCHEMA {schema.name}")
    )
    try:
        asyncio.run(_script(schema.endpoints.dsn, grants + f"REVOKE INSERT ON loom_messages FROM {role};"))
        text = run_blocked(
            endpoints,
            schema,
            topic_name,
            tmp_path,
            "42501",
            "insufficient_privilege",
            fix=lambda: schema.execute(f"GRANT INSERT ON loom_messages TO {role}"),
            db_dsn=role_dsn,
        )
        assert "permission denied for table loom_messages" in text
    finally:
        scalar(endpoints, f"DROP SCHEMA IF EXISTS {schema.name} CASCADE")
        scalar(endpoints, f"DROP OWNED BY {role}")
        scalar(endpoints, f"DROP ROLE {role}")


def test_an_altered_column_type_does_not_wedge_the_flush_on_a_stale_statement(
    endpoints: Endpoints, schema: Schema, topic_name: str, tmp_path: Path
) -> None:
    # asyncpg caches a COPY's column types per connection: after loom_audit.rows becomes bigint, a COPY on a
    # connection from before sends 4-byte integers and PostgreSQL rejects the message (08P01, an outage)
    # however often it is retried on that connection.
    fill(endpoints, topic_name, MESSAGES // 2, partitions=PARTITIONS)
    process, log = schema.start_main(topic_name, tmp_path)
    running = (process, log)
    try:
        wait_until(lambda: _committed(schema, topic_name) == MESSAGES // 2, 120, "the first half", running=running)
        schema.execute("ALTER TABLE loom_audit ALTER COLUMN rows TYPE bigint")
        fill(endpoints, topic_name, MESSAGES // 2, partitions=PARTITIONS)
        wait_until(lambda: _committed(schema, topic_name) == MESSAGES, 120, "the second half", running=running)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()[-3000:]
    finally:
        stop_group(process)
    result = account(schema.endpoints, topic_name)
    assert result.exact, str(result)
    assert result.dead_letters == 0


def test_a_column_of_loom_messages_altered_to_another_type_blocks_until_restored(
    endpoints: Endpoints, schema: Schema, topic_name: str, tmp_path: Path
) -> None:
    # The encoder then refuses every row alike (asyncpg's TypeError, ColumnTypeChangedError): a person must fix
    # the table. The consumer is not restarted (it once died on it, and its replacement on the same record).
    schema.execute("ALTER TABLE loom_messages ALTER COLUMN key TYPE text USING encode(key, 'hex')")
    run_blocked(
        endpoints,
        schema,
        topic_name,
        tmp_path,
        "42804",
        "datatype_mismatch",
        fix=lambda: schema.execute("ALTER TABLE loom_messages ALTER COLUMN key TYPE bytea USING decode(key, 'hex')"),
    )
