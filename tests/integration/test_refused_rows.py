"""The sink's bisection: a row PostgreSQL refuses, or asyncpg's encoder cannot send, becomes a dead letter
(stage db_row) and the rest of the flush commits; a unique violation still stops the flush."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from loom_ray.batch import PartitionBatch
from loom_ray.errors import ColumnTypeChangedError
from loom_ray.migrate import migrate
from loom_ray.policy.sink_errors import Kind, classify
from loom_ray.sink.codecs import install_codecs
from loom_ray.sink.postgres import PostgresSink
from tests.support.claims import claim_at
from tests.support.services import Endpoints

PG_TIMESTAMP_END = 9_223_371_331_200_000_000  # microseconds since 2000: 294277-01-01, just past timestamptz's range


async def _write(dsn: str, topic: str, rows: dict[int, dict[str, Any]], *setup: str) -> Any:
    """Write one batch of ``rows`` (offset -> the fields that differ from a good row) through the real sink, on
    connections set up as a consumer's are, to loom-ray's tables in a schema of its own after the ``setup``
    statements; return what the tables hold afterwards."""
    schema = f"loom_{topic.replace('-', '_')}"
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=2, init=install_codecs, server_settings={"search_path": schema}
    )
    assert pool is not None
    try:
        async with pool.acquire() as conn:
            await migrate(conn, schema=schema)
            for statement in setup:
                await conn.execute(statement)
            claim = await claim_at(conn, topic, 0, "refused-rows")
        batch = PartitionBatch(topic, 0, claim.epoch, 0)
        for offset, fields in sorted(rows.items()):
            good = {"key": b"k", "payload": f'{{"n": {offset}}}', "headers": None, "kafka_ts": 0}
            row = {**good, **fields}
            batch.add_row(
                offset, (topic, 0, offset, row["key"], row["payload"], row["headers"], row["kafka_ts"], 0, None), 1, 0
            )
        try:
            result: Any = await PostgresSink(pool, "refused-rows", 1024).write([batch])
        except Exception as exc:
            result = exc
        async with pool.acquire() as conn:
            stored = [
                r["offset"] for r in await conn.fetch('SELECT "offset" FROM loom_messages WHERE topic = $1', topic)
            ]
            dead = await conn.fetch(
                """SELECT "offset", error_class, error_message, stage, sqlstate, raw_value FROM loom_dead_letters
                   WHERE topic = $1 ORDER BY "offset\"""",
                topic,
            )
            next_offset = await conn.fetchval("SELECT next_offset FROM loom_offsets WHERE topic = $1", topic)
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        return result, sorted(stored), dead, next_offset
    finally:
        await pool.close()


def test_rows_refused_by_postgresql_or_the_encoder_become_dead_letters(endpoints: Endpoints, topic_name: str) -> None:
    rows: dict[int, dict[str, Any]] = {
        0: {},
        1: {"kafka_ts": 2**63},  # wider than the int64 the timestamptz encoder packs
        2: {"payload": '{"s": "\ud800"}'},  # a lone surrogate: not encodable as UTF-8
        3: {"payload": '{"s": "\\u0000"}'},  # jsonb refuses \u0000 (22P05)
        4: {"kafka_ts": PG_TIMESTAMP_END},  # an int64, but past timestamptz's range (22008)
        5: {},
    }
    result, stored, dead, next_offset = asyncio.run(_write(endpoints.dsn, topic_name, rows))
    assert not isinstance(result, Exception), result
    assert (result.rows, result.dead_letters) == (2, 4)
    assert stored == [0, 5]
    assert next_offset == 6
    assert [(d["offset"], d["error_class"], d["stage"], d["sqlstate"]) for d in dead] == [
        (1, "Unencodable", "db_row", None),
        (2, "Unencodable", "db_row", None),
        (3, "UntranslatableCharacterError", "db_row", "22P05"),
        (4, "DatetimeFieldOverflowError", "db_row", "22008"),
    ]
    messages = {d["offset"]: d["error_message"] for d in dead}
    assert messages[1].startswith("COPY loom_messages: asyncpg cannot encode a value of the row")
    assert "UnicodeEncodeError" in messages[2]
    assert "COPY loom_messages, line 1, column payload" in messages[3]
    assert "COPY loom_messages, line 1, column kafka_ts" in messages[4]
    assert dead[1]["raw_value"] == '{"s": "\ud800"}'.encode("utf-8", "surrogatepass")


def test_a_unique_violation_still_stops_the_flush(endpoints: Endpoints, topic_name: str) -> None:
    stored_before = (
        f"""INSERT INTO loom_messages (topic, "partition", "offset", payload) VALUES ('{topic_name}', 0, 1, '{{}}')"""
    )
    result, stored, dead, next_offset = asyncio.run(
        _write(endpoints.dsn, topic_name, {0: {}, 1: {}, 2: {}}, stored_before)
    )
    assert isinstance(result, asyncpg.UniqueViolationError), result
    assert stored == [1]  # only the row that was there: the flush rolled back whole
    assert dead == []
    assert next_offset == 0


def test_a_column_whose_type_changed_stops_the_flush(endpoints: Endpoints, topic_name: str) -> None:
    # The encoder then refuses every row alike (a TypeError): a person must fix the table
    # (loom_ray.policy.sink_errors); dead-lettering every record would hide it.
    altered = "ALTER TABLE loom_messages ALTER COLUMN key TYPE text USING encode(key, 'hex')"
    result, stored, dead, next_offset = asyncio.run(_write(endpoints.dsn, topic_name, {0: {}, 1: {}}, altered))
    assert isinstance(result, ColumnTypeChangedError), result
    assert classify(result).kind is Kind.NEEDS_PERSON  # flushes retry and report it; the consumer stays
    assert (stored, dead, next_offset) == ([], [], 0)
