"""Operating the data against a live job, on the real broker, PostgreSQL and a local Ray through the real driver:
``python -m loom_ray.ctl dead-letters|replay|rewind|skip|pause|resume`` as README's *Operations* tells it.

One job (module fixture) ingests three topics into a schema of its own: ``orders`` into an upsert route by the
Kafka key (no version: the source offset guards a replay), ``log`` into an insert route, ``raw`` into
``loom_messages``. The routes' ``note`` column is a ``varchar(8)`` too short for some notes, and the orders
route reads its amount from a wrong path (every amount NULL), and values over 500 bytes are dead letters.
The tests run in order, each on the state the previous left:

1. the dead letters are summarised by topic, route, class and stage; a dry replay changes nothing;
2. the column is widened while the job runs (its consumers take the wider table in by themselves, new long
   notes land), one ``replay`` lands the old ones: the orders table equals the fold of the topic (a replayed
   record that a later record of its key overwrote or deleted is stale, not written), the log table holds
   each good record once, ``raw``'s rows are there; every dead letter is resolved by the replay; a second
   replay changes nothing;
3. ``pause`` holds ``raw``'s place and lag while records arrive; ``skip`` of one partition writes its
   ``skipped`` gap (a ``gap`` alert); ``resume`` reads on;
4. the job is restarted with the routes file fixed; ``rewind`` of the orders topic (by time) converges its
   table to the fold with the amounts; a rewind of ``log`` and ``raw`` stores nothing twice (each record read
   again is skipped and counted);
5. every operation has its ``loom_operations`` row: who, why, when, what, how many.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from confluent_kafka import Producer

from loom_bench.topic_fold import Record
from loom_ray.loadgen.topic import ensure_topic
from tests.faults.route_checker import check_insert, check_upsert
from tests.support.pipeline import high_watermarks, pipeline_env, start_main, terminate_group, wait_until
from tests.support.services import ROOT, Endpoints

ROUTES = """
[[route]]
name = "orders"
topic = "{orders}"
table = "{schema}.orders"
mode = "upsert"
key = ["id"]
on_tombstone = "delete"
auto_create = true

[route.columns]
id = {{ type = "bigint", from = "key" }}
note = {{ type = "varchar(8)", required = true }}
amount = {{ type = "bigint", path = "{amount}" }}
src_partition = {{ type = "integer", from = "partition" }}
src_offset = {{ type = "bigint", from = "offset" }}

[[route]]
name = "log"
topic = "{log}"
table = "{schema}.log"
key = ["src_partition", "src_offset"]
auto_create = true

[route.columns]
src_partition = {{ type = "integer", from = "partition" }}
src_offset = {{ type = "bigint", from = "offset" }}
id = {{ type = "bigint", from = "key" }}
note = {{ type = "varchar(8)", required = true }}
amount = {{ type = "bigint", path = "amount" }}
"""

KEYS = 30
ROUNDS = 4
LONG = "a note too long for eight"


@dataclass
class Story:
    """The job, its topics and schema, and the operations' outputs the tests read."""

    endpoints: Endpoints
    workdir: Path
    name: str
    schema: str
    routes: Path
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    job: subprocess.Popen[bytes] | None = None
    operations: list[str] = field(default_factory=list)  # the kinds asked, in order

    @property
    def dsn(self) -> str:
        """The DSN with the job's schema on the search path (asyncpg passes other DSN parameters on as settings)."""
        return f"{self.endpoints.dsn}{'&' if '?' in self.endpoints.dsn else '?'}search_path={self.schema}"

    @property
    def orders(self) -> str:
        return f"{self.name}-orders"

    @property
    def log(self) -> str:
        return f"{self.name}-log"

    @property
    def raw(self) -> str:
        return f"{self.name}-raw"

    @property
    def topics(self) -> tuple[str, str, str]:
        return self.orders, self.log, self.raw

    def write_routes(self, amount_path: str) -> None:
        self.routes.write_text(ROUTES.format(orders=self.orders, log=self.log, schema=self.schema, amount=amount_path))

    def env(self, **overrides: Any) -> dict[str, str]:
        settings: dict[str, Any] = {
            "routes_file": self.routes,
            "db_schema": self.schema,
            "min_actors": 2,
            "max_actors": 2,
            "kafka_batch_size": 40,
            "max_message_bytes": 500,
            **overrides,
        }
        return pipeline_env(self.endpoints, ",".join(self.topics), **settings)

    def start(self) -> None:
        self.job = start_main(self.env(), log=self.workdir / "main.log")
        wait_until(
            lambda: self.claimed() == 7, 240, "every partition claimed", running=(self.job, self.workdir / "main.log")
        )

    def stop(self) -> None:
        assert self.job is not None
        terminate_group(self.job, grace_s=60)
        self.job = None

    def ctl(self, *args: str, **overrides: Any) -> str:
        """``python -m loom_ray.ctl ARGS`` with the job's environment; it must exit 0; its output."""
        done = subprocess.run(
            [sys.executable, "-m", "loom_ray.ctl", *args],
            env=self.env(**overrides),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"ctl {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        if args[0] != "dead-letters" and "--dry-run" not in args:
            self.operations.append(args[0])
        return done.stdout

    def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async def run() -> list[tuple[Any, ...]]:
            conn = await asyncpg.connect(self.endpoints.dsn, server_settings={"search_path": self.schema})
            try:
                return [tuple(r) for r in await conn.fetch(sql, *args)]
            finally:
                await conn.close()

        return asyncio.run(run())

    def claimed(self) -> int:
        try:
            return len(
                self.fetch("SELECT 1 FROM loom_offsets WHERE owner IS NOT NULL AND topic = ANY($1)", list(self.topics))
            )
        except asyncpg.UndefinedTableError:
            return 0

    def caught_up(self, *topics: str) -> bool:
        stored = {(t, p): n for t, p, n in self.fetch('SELECT topic, "partition", next_offset FROM loom_offsets')}
        return all(
            stored.get((topic, p)) == high
            for topic in topics or self.topics
            for p, (_, high) in high_watermarks(self.endpoints.kafka, topic).items()
        )

    def wait_caught_up(self, *topics: str) -> None:
        running = None if self.job is None else (self.job, self.workdir / "main.log")
        wait_until(lambda: self.caught_up(*topics), 240, f"{topics or 'every topic'} caught up", running=running)

    def open_dead_letters(self, topic: str) -> int:
        return len(self.fetch("SELECT 1 FROM loom_dead_letters WHERE topic = $1 AND resolved_at IS NULL", topic))


def _produce(story: Story, phase: int) -> None:
    """Orders and log: ROUNDS records per key, interleaved. Phase 1: keys 0-9 end with a long note (it lands on
    replay), keys 10-19 hold one in their middle (a later record overwrites it: stale on replay), key 15's last
    record is a tombstone (a replayed older record must not bring it back), keys 20-29 only short notes; raw:
    20 values, 4 of them over 500 bytes. Phase 2: keys 30-34, long notes only."""
    producer = Producer({"bootstrap.servers": story.endpoints.kafka, "enable.idempotence": True})
    keys = range(KEYS) if phase == 1 else range(KEYS, KEYS + 5)
    for round_ in range(ROUNDS):
        for key in keys:
            last = round_ == ROUNDS - 1
            long = (key < 10 and last) or (10 <= key < 20 and round_ == 1) or key >= KEYS
            value = {"note": LONG if long else f"n{round_}", "amount": 100 * phase + round_}
            for topic in (story.orders, story.log):
                tombstone = topic == story.orders and key == 15 and last
                producer.produce(topic, key=str(key).encode(), value=None if tombstone else orjson.dumps(value))
    for n in range(20 if phase == 1 else 0):
        pad = "x" * (600 if n % 5 == 0 else 10)
        producer.produce(story.raw, key=str(n).encode(), value=orjson.dumps({"n": n, "pad": pad}))
    assert producer.flush(30) == 0


def _nudge(story: Story) -> None:
    """A short record on every partition of the routed topics, flushed: the first write after a table was
    widened takes the new shape in, and the batch after it converts records for it."""
    producer = Producer({"bootstrap.servers": story.endpoints.kafka})
    for topic, partitions in ((story.orders, 3), (story.log, 2)):
        for partition in range(partitions):
            value = orjson.dumps({"note": "nudge", "amount": 7})
            producer.produce(topic, partition=partition, key=str(90 + partition).encode(), value=value)
    assert producer.flush(30) == 0
    story.wait_caught_up()


def _summary(text: str) -> dict[tuple[str, ...], tuple[int, int]]:
    """``dead-letters``' table: (topic, route, class, stage) -> (open, resolved)."""
    rows = [line.split() for line in text.splitlines()[1:-1]]
    return {tuple(row[:4]): (int(row[4]), int(row[5])) for row in rows}


def _fixed_order(record: Record) -> tuple[Any, ...] | None:
    """The orders row of a record with the routes file fixed and the column widened (every record fits)."""
    assert record.value is not None
    value = orjson.loads(record.value)
    return (int(record.key or b""), value["note"], value["amount"], record.partition, record.offset)


def _broken_order(record: Record) -> tuple[Any, ...] | None:
    """The orders row with the amount read from the wrong path (NULL)."""
    row = _fixed_order(record)
    assert row is not None
    return (row[0], row[1], None, *row[3:])


@pytest.fixture(scope="module")
def story(endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    name = f"ops-{uuid.uuid4().hex[:8]}"
    found = Story(endpoints, tmp_path_factory.mktemp("ops"), name, f"ops_{name[4:]}", Path())
    found.routes = found.workdir / "routes.toml"
    found.write_routes("amt")  # the bug the rewind test fixes
    ensure_topic(endpoints.kafka, found.orders, 3)
    ensure_topic(endpoints.kafka, found.log, 2)
    ensure_topic(endpoints.kafka, found.raw, 2)
    found.start()
    try:
        _produce(found, 1)
        found.wait_caught_up()
        yield found
    finally:
        if found.job is not None:
            found.stop()

        async def drop() -> None:
            conn = await asyncpg.connect(endpoints.dsn)
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {found.schema} CASCADE")
            finally:
                await conn.close()

        asyncio.run(drop())


def test_dead_letters_are_summarised_and_a_dry_replay_changes_nothing(story: Story) -> None:
    summary = story.ctl("dead-letters")
    assert _summary(summary) == {
        (story.orders, "orders", "TooLong", "validate"): (20, 0),
        (story.log, "log", "TooLong", "validate"): (20, 0),
        (story.raw, "loom_messages", "Oversize", "decode"): (4, 0),
    }, summary
    assert summary.splitlines()[0].split() == ["topic", "route", "class", "stage", "open", "resolved", "first",
                                               "failed", "last", "failed"]  # fmt: skip
    assert summary.splitlines()[-1] == "44 open, 0 resolved"
    only = story.ctl("dead-letters", "--route", "log", "--class", "TooLong", "--stage", "validate")
    assert only.splitlines()[-1] == "20 open, 0 resolved"
    assert story.ctl("dead-letters", "--since", "2999-01-01").strip() == "no dead letters match"
    dry = story.ctl("replay", "--dry-run")
    assert dry.splitlines()[-1].startswith("dry run, nothing changed: would resolve 0 of 44 dead letters"), dry
    assert "still failing: Oversize=4, TooLong=40" in dry, dry
    assert story.open_dead_letters(story.orders) == 20
    assert story.fetch("SELECT count(*) FROM loom_operations") == [(0,)]
    assert story.fetch("SELECT max(attempts) FROM loom_dead_letters") == [(0,)]


def test_a_widened_column_and_one_replay_land_the_dead_letters_exactly_once(story: Story) -> None:
    for table in ("orders", "log"):
        story.fetch(f"ALTER TABLE {story.schema}.{table} ALTER COLUMN note TYPE varchar(200)")
    _nudge(story)  # the running consumers take the wider tables in
    _nudge(story)
    _produce(story, 2)  # new long notes on keys 30-34 land at once
    story.wait_caught_up()
    assert story.open_dead_letters(story.orders) == 20 and story.open_dead_letters(story.log) == 20

    out = story.ctl("replay", "--reason", "note widened", max_message_bytes=1 << 20)
    # orders: keys 0-9 land; keys 10-19's long notes were overwritten later (key 15's deleted): stale.
    assert "resolved 44 of 44 dead letters selected (34 written, 10 stale" in out, out
    assert "still failing: none" in out

    upsert = check_upsert(
        story.dsn, story.endpoints.kafka, story.orders, "orders", f"{story.schema}.orders",
        "id, note, amount, src_partition, src_offset", _broken_order,
    )  # fmt: skip
    insert = check_insert(story.dsn, story.endpoints.kafka, story.log, "log", f"{story.schema}.log", _fixed_order)
    assert upsert.ok and upsert.rows == KEYS - 1 + 5 + 3, upsert.counts()  # key 15 deleted; keys 90-92 nudged
    assert insert.ok and insert.rows == (KEYS + 5) * ROUNDS + 2 * 2, insert.counts()
    raw = story.fetch(
        'SELECT count(*), count(DISTINCT ("partition", "offset")) FROM loom_messages WHERE topic = $1', story.raw
    )
    assert raw == [(20, 20)]
    [(operation,)] = story.fetch("SELECT id FROM loom_operations WHERE kind = 'replay'")
    assert story.fetch(
        "SELECT count(*), min(resolved_by), max(resolved_by), min(attempts) FROM loom_dead_letters "
        "WHERE topic = ANY($1)",
        list(story.topics),
    ) == [(44, operation, operation, 1)]
    # No resolved dead letter without its row.
    assert story.fetch(
        """SELECT count(*) FROM loom_dead_letters AS d WHERE d.resolved_at IS NOT NULL AND d.topic = $1 AND NOT EXISTS
           (SELECT 1 FROM log AS l WHERE l.src_partition = d."partition" AND l.src_offset = d."offset")""",
        story.log,
    ) == [(0,)]

    tables = story.fetch("SELECT * FROM orders ORDER BY id"), story.fetch("SELECT * FROM log ORDER BY 1, 2")
    again = story.ctl("replay", "--reason", "once more")
    assert "resolved 0 of 0 dead letters selected" in again, again
    assert (story.fetch("SELECT * FROM orders ORDER BY id"), story.fetch("SELECT * FROM log ORDER BY 1, 2")) == tables
    assert story.ctl("dead-letters").splitlines()[-1] == "0 open, 44 resolved"


def test_pause_holds_the_place_skip_writes_its_gap_and_resume_reads_on(story: Story) -> None:
    out = story.ctl("pause", "--topic", story.raw, "--reason", "poison upstream")
    assert f"paused {story.raw}" in out, out
    log = story.workdir / "main.log"
    wait_until(lambda: f"2 partitions paused ({story.raw} by " in log.read_text(), 60, "the progress line's note")
    wait_until(
        lambda: (
            story.fetch("SELECT count(*) FROM loom_offsets WHERE topic = $1 AND owner IS NOT NULL", story.raw) == [(0,)]
        ),
        60,
        "raw's partitions handed back",
    )
    held = story.fetch('SELECT "partition", next_offset FROM loom_offsets WHERE topic = $1 ORDER BY 1', story.raw)
    producer = Producer({"bootstrap.servers": story.endpoints.kafka})
    for n in range(10):
        producer.produce(story.raw, partition=n % 2, value=orjson.dumps({"poison": n}))
    assert producer.flush(30) == 0
    time.sleep(5)  # a few coordinator rounds: nothing is read meanwhile
    assert (
        story.fetch('SELECT "partition", next_offset FROM loom_offsets WHERE topic = $1 ORDER BY 1', story.raw) == held
    )
    alerts = [a for (a,) in story.fetch("SELECT alert_kind FROM v_consumer_alerts WHERE topic = $1", story.raw)]
    assert alerts.count("paused") == 2 and not {"stalled", "no_owner", "lag_stall"} & set(alerts), alerts
    health = story.fetch("SELECT DISTINCT status FROM v_consumer_lag_health WHERE topic = $1", story.raw)
    assert health == [("OK",)]

    dry = story.ctl("skip", f"{story.raw}[0]", "--to-end", "--dry-run")
    before = dict(held)[0]
    assert f"{story.raw}[0]: {before} -> {before + 5} (a skipped gap of 5 offsets)" in dry, dry
    out = story.ctl("skip", f"{story.raw}[0]", "--to-end", "--reason", "the poison burst")
    assert f"{story.raw}[0]: {before} -> {before + 5}, gap {before}..{before + 4} skipped" in out, out
    [(reason, detail)] = story.fetch("SELECT reason, detail FROM loom_gaps WHERE topic = $1", story.raw)
    assert reason == "skipped" and detail.endswith(": the poison burst"), detail
    assert ("gap",) in story.fetch("SELECT alert_kind FROM v_consumer_alerts WHERE topic = $1", story.raw)

    story.ctl("resume", "--topic", story.raw)
    story.wait_caught_up(story.raw)
    stored = story.fetch(
        "SELECT \"partition\", count(*) FROM loom_messages WHERE topic = $1 AND payload ? 'poison' GROUP BY 1",
        story.raw,
    )
    assert stored == [(1, 5)]  # partition 0's five were skipped


def test_a_rewind_after_a_routes_fix_converges_and_stores_nothing_twice(story: Story) -> None:
    story.stop()
    stopped = story.ctl("rewind", "--topic", story.log, "--topic", story.raw, "--to-offset", "0")  # ctl applies it
    assert "waiting for the coordinator" not in stopped and f"{story.log}[0]: " in stopped, stopped
    story.write_routes("amount")
    story.start()
    since = story.started.isoformat()
    dry = story.ctl("rewind", "--topic", story.orders, "--to-time", since, "--dry-run")
    assert dry.count("offsets again)") == 3, dry
    out = story.ctl("rewind", "--topic", story.orders, "--to-time", since, "--reason", "amount fixed")
    assert "waiting for the coordinator of" in out and "done" in out, out
    story.wait_caught_up()
    applied = story.fetch("SELECT applied_by FROM loom_operations WHERE kind = 'rewind' ORDER BY id")
    assert [a.split()[0] for (a,) in applied] == ["ctl", "coordinator"]
    upsert = check_upsert(
        story.dsn, story.endpoints.kafka, story.orders, "orders", f"{story.schema}.orders",
        "id, note, amount, src_partition, src_offset", _fixed_order,
    )  # fmt: skip
    insert = check_insert(story.dsn, story.endpoints.kafka, story.log, "log", f"{story.schema}.log", _fixed_order)
    assert upsert.ok, upsert.counts()
    assert insert.ok, insert.counts()
    assert story.fetch(
        'SELECT count(*), count(DISTINCT ("partition", "offset")) FROM loom_messages WHERE topic = $1', story.raw
    ) == [(25, 25)]
    rereads = dict(story.fetch("SELECT topic, sum(skipped + reapplied)::int FROM loom_rereads GROUP BY topic"))
    read_again = {t: sum(h for _, h in high_watermarks(story.endpoints.kafka, t).values()) for t in story.topics}
    assert rereads[story.orders] == read_again[story.orders]  # every record applied again
    assert rereads[story.log] == read_again[story.log]  # every record skipped: already stored
    assert rereads[story.raw] == read_again[story.raw]  # stored, or in the skipped gap: each stays as it was
    assert story.fetch("SELECT sum(skipped) FROM loom_rereads WHERE topic = $1", story.log) == [
        (read_again[story.log],)
    ]


def test_every_operation_has_its_audit_row(story: Story) -> None:
    rows = story.fetch(
        "SELECT kind, state, requested_by = current_user, reason, finished_at >= requested_at, records "
        "FROM loom_operations ORDER BY id"
    )
    assert [r[0] for r in rows] == story.operations
    assert all(state == "done" and by and finished for _, state, by, _, finished, _ in rows), rows
    reasons = {kind: reason for kind, _, _, reason, _, _ in rows}
    assert reasons["pause"] == "poison upstream" and reasons["skip"] == "the poison burst"
    assert [r[5] for r in rows if r[0] == "replay"] == [44, 0]
    assert [r[5] for r in rows if r[0] == "skip"] == [5]
