"""The monitoring views of sql/views/ against a real PostgreSQL.

Self-contained: needs only ``LOOM_DB_DSN`` (a role allowed to CREATE DATABASE). The module creates a database
of its own, runs every ``sql/NNN_*.sql`` in order twice (to prove they are idempotent), then migrate() (the
files once more, and the views), writes fixture rows with timestamps relative to ``now()``, reads the three
views once and drops the database.

Fixture partitions of topic ``events``:
  0  healthy: owned, flushed 5 s ago, one fresh dead letter, lag falling (40 then 30 in the samples);
  1  stalled: owned, no flush for 3 minutes while the high watermark grows (lag 10 then 40);
  2  released: no owner, no lag samples;
  3  seen by the lag sampler only, never claimed; lag flat at 7 (not growing).
Consumer(a)'s flushes are refused now (disk full); Consumer(b)'s were, last reported 8 minutes ago.
Partition 3 is parked; partition 0 was parked and has been unparked.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest

from loom_ray.migrate import migrate, migration_files
from tests.support.databases import scratch_database

pytestmark = pytest.mark.integration

FIXTURE_SQL = """
INSERT INTO loom_offsets (topic, "partition", next_offset, epoch, owner, updated_at) VALUES
    ('events', 0, 105, 2, 'Consumer(a)', now() - interval '5 seconds'),
    ('events', 1, 50, 1, 'Consumer(b)', now() - interval '3 minutes'),
    ('events', 2, 10, 3, NULL, now() - interval '10 minutes');

INSERT INTO consumer_lag_history (sampled_at, topic, "partition", next_offset, high_watermark, owner) VALUES
    (now() - interval '6 minutes', 'events', 0, 20, 40, 'Consumer(a)'),
    (now() - interval '4 minutes', 'events', 0, 60, 100, 'Consumer(a)'),
    (now() - interval '10 seconds', 'events', 0, 100, 130, 'Consumer(a)'),
    (now() - interval '4 minutes', 'events', 1, 50, 60, 'Consumer(b)'),
    (now() - interval '10 seconds', 'events', 1, 50, 90, 'Consumer(b)'),
    (now() - interval '2 minutes', 'events', 3, 0, 7, NULL),
    (now() - interval '20 seconds', 'events', 3, 0, 7, NULL);

-- Partition 0: offsets 0-19 ten minutes ago, 20-69 three minutes ago, 70-103 thirty seconds ago.
INSERT INTO loom_messages (topic, "partition", "offset", payload, kafka_ts, ingested_at)
SELECT 'events', 0, g, '{}'::jsonb, now() - interval '1 hour', now() - interval '10 minutes'
FROM generate_series(0, 19) AS g;
INSERT INTO loom_messages (topic, "partition", "offset", payload, kafka_ts, ingested_at)
SELECT 'events', 0, g, '{}'::jsonb, now() - interval '182 seconds', now() - interval '3 minutes'
FROM generate_series(20, 69) AS g;
INSERT INTO loom_messages (topic, "partition", "offset", payload, kafka_ts, ingested_at)
SELECT 'events', 0, g, '{}'::jsonb, now() - interval '31 seconds', now() - interval '30 seconds'
FROM generate_series(70, 103) AS g;

INSERT INTO loom_dead_letters (topic, "partition", "offset", error_class, error_message, stage, failed_at) VALUES
    ('events', 0, 104, 'JSONDecodeError', 'Expecting value', 'decode', now() - interval '20 seconds'),
    ('events', 2, 9, 'Oversize', 'value of 300000 bytes', 'validate', now() - interval '10 minutes');

-- Partition 2 was recreated: its offset row is in incarnation 1; the row below is the old incarnation's.
UPDATE loom_offsets SET incarnation = 1 WHERE "partition" = 2;
UPDATE loom_dead_letters SET incarnation = 1 WHERE "partition" = 2;
INSERT INTO loom_messages (topic, "partition", "offset", payload, ingested_at, incarnation)
VALUES ('events', 2, 500, '{}'::jsonb, now() - interval '20 minutes', 0);
INSERT INTO loom_gaps (topic, "partition", incarnation, from_offset, to_offset, reason, detail, detected_at) VALUES
    ('events', 2, 0, 501, NULL, 'topic_recreated', 'the topic was deleted', now() - interval '10 minutes'),
    ('events', 0, 0, 0, 5, 'offset_out_of_range', 'long ago', now() - interval '2 hours');

-- Flushes refused: Consumer(a)'s now; Consumer(b)'s last reported 8 minutes ago (no coordinator since), and
-- Consumer(x), which holds no partition, cleared.
INSERT INTO loom_sink_errors (owner, sqlstate, condition, message, fix, first_seen, last_seen, cleared_at) VALUES
    ('Consumer(a)', '53100', 'disk_full', 'could not extend file', 'free disk space', now() - interval '1 minute',
     now() - interval '1 second', NULL),
    ('Consumer(b)', '42501', 'insufficient_privilege', 'permission denied', 'GRANT', now() - interval '9 minutes',
     now() - interval '8 minutes', NULL),
    ('Consumer(x)', '25006', 'read_only_sql_transaction', 'read-only', 'primary', now() - interval '9 minutes',
     now() - interval '8 minutes', now() - interval '8 minutes');

-- Partition 3 is parked; partition 0 was, and was unparked since.
INSERT INTO loom_parked (topic, "partition", error, faults, first_fault_at, parked_at, unparked_at, unparked_by)
VALUES
    ('events', 3, 'UniqueViolationError: duplicate key', 3, now() - interval '3 minutes', now() - interval '2 minutes',
     NULL, NULL),
    ('events', 0, 'AssertionError: broken', 3, now() - interval '1 hour', now() - interval '50 minutes',
     now() - interval '40 minutes', 'ops');
"""

VIEWS = ("v_consumer_performance_monitor", "v_consumer_alerts", "v_consumer_activity_monitoring")


async def _read_views(dsn: str) -> dict[str, list[dict[str, Any]]]:
    async with scratch_database(dsn) as conn:
        for _ in range(2):  # every migration is idempotent
            for path in migration_files():
                await conn.execute(path.read_text())
        await migrate(conn)
        await conn.execute(FIXTURE_SQL)
        return {
            view: [dict(r) for r in await conn.fetch(f'SELECT * FROM {view} ORDER BY topic, "partition"')]
            for view in VIEWS
        }


@pytest.fixture(scope="module")
def views() -> Iterator[dict[str, list[dict[str, Any]]]]:
    dsn = os.environ.get("LOOM_DB_DSN")
    if not dsn:
        pytest.skip("LOOM_DB_DSN is not set (e.g. eval $(scripts/dev-stack.sh env))")
    yield asyncio.run(_read_views(dsn))


def _by_partition(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {row["partition"]: row for row in rows}


def test_performance_lists_claimed_and_sampled_partitions(views: dict[str, list[dict[str, Any]]]) -> None:
    assert sorted(_by_partition(views["v_consumer_performance_monitor"])) == [0, 1, 2, 3]


def test_lag_uses_committed_offset_against_newest_high_watermark(views: dict[str, list[dict[str, Any]]]) -> None:
    perf = _by_partition(views["v_consumer_performance_monitor"])
    # 130 - 105: the commit after the newest sample (next_offset 100 there) already counts.
    assert (perf[0]["high_watermark"], perf[0]["next_offset"], perf[0]["lag"]) == (130, 105, 25)
    assert perf[1]["lag"] == 90 - 50
    assert perf[2]["high_watermark"] is None and perf[2]["lag"] is None  # unknown, not 0
    assert (perf[3]["next_offset"], perf[3]["lag"]) == (None, 7)  # never claimed: the sample's own offset


def test_recent_throughput(views: dict[str, list[dict[str, Any]]]) -> None:
    p0 = _by_partition(views["v_consumer_performance_monitor"])[0]
    assert (p0["owner"], p0["epoch"]) == ("Consumer(a)", 2)
    assert (p0["rows_1m"], p0["rows_5m"]) == (34, 84)  # 70-103, then also 20-69; not the 10-minute-old 0-19
    assert (p0["dead_letters_1m"], p0["dead_letters_5m"]) == (1, 1)
    assert float(p0["msgs_per_s"]) == round((34 + 1) / 60, 2)
    assert 4 <= float(p0["seconds_since_update"]) < 60


def test_alerts(views: dict[str, list[dict[str, Any]]]) -> None:
    alerts = {(a["partition"], a["alert_kind"]): a["detail"] for a in views["v_consumer_alerts"]}
    assert set(alerts) == {
        (0, "dead_letters"),
        (0, "sink_blocked"),
        (1, "lag_growing"),
        (1, "stalled"),
        (2, "no_owner"),
        (2, "gap"),
        (3, "no_owner"),
        (3, "parked"),
    }
    assert alerts[(2, "gap")] == (
        "topic_recreated: offsets 501..(end unknown) of incarnation 0 skipped: the topic was deleted"
    )
    assert alerts[(1, "lag_growing")].startswith("lag 10 -> 40 over ")
    assert "lag 40" in alerts[(1, "stalled")] and "Consumer(b)" in alerts[(1, "stalled")]
    assert "never claimed" in alerts[(3, "no_owner")]
    assert " after 3 faults (the first at " in alerts[(3, "parked")]
    assert alerts[(3, "parked")].endswith(
        ": UniqueViolationError: duplicate key; fix the cause, then python -m loom_ray.ctl unpark events[3]"
    )
    assert alerts[(0, "sink_blocked")].startswith("SQLSTATE 53100 (disk_full) since ")
    assert alerts[(0, "sink_blocked")].endswith("owner Consumer(a): could not extend file; fix: free disk space")


def test_activity(views: dict[str, list[dict[str, Any]]]) -> None:
    activity = _by_partition(views["v_consumer_activity_monitoring"])
    assert sorted(activity) == [0, 1, 2]  # claimed partitions only
    p0 = activity[0]
    assert p0["last_consumed_offset"] == 103
    assert (p0["last_consumed_ingested_at"] - p0["last_consumed_kafka_ts"]).total_seconds() == pytest.approx(1.0)
    assert float(p0["last_ingest_delay_s"]) == pytest.approx(1.0)
    assert p0["last_dead_letter_offset"] == 104
    assert p0["last_dead_letter_reason"] == "decode: JSONDecodeError: Expecting value"
    assert activity[1]["last_consumed_offset"] is None and activity[1]["last_dead_letter_at"] is None
    assert activity[2]["last_consumed_offset"] is None  # offset 500 is the old incarnation's
    assert (activity[2]["last_dead_letter_offset"], activity[2]["last_dead_letter_reason"]) == (
        9,
        "validate: Oversize: value of 300000 bytes",
    )
