"""Routes into a table as applications have them: every type a route fills, NOT NULL, CHECK, a second unique
index, an exclusion constraint, a row trigger that raises, identity and default columns, a domain, an enum,
an array, mixed-case names in a mixed-case schema.

First the routed flush alone (real PostgreSQL, the real sink): each good value is read back equal to what
PostgreSQL itself makes of the same text (so a rounding or a cut is PostgreSQL's own, never loom-ray's), and
each bad one is a dead letter naming the column, constraint, domain or trigger. Then the whole job (real
Kafka, Ray and driver) on the same table: the same records, and not one consumer actor restarted.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from loom_ray.loadgen.topic import ensure_topic
from tests.support.pipeline import account, pipeline_env, run_until_drained, scalar
from tests.support.routed import Record, RoutedSink, routed_sink
from tests.support.services import Endpoints

SETUP = (
    """CREATE TYPE "{s}".status AS ENUM ('new', 'paid', 'shipped')""",
    """CREATE DOMAIN "{s}".positive_qty AS integer CHECK (VALUE > 0)""",
    """CREATE TABLE "{s}"."Orders" (
        "orderId"       bigint PRIMARY KEY,
        row_no          bigint GENERATED ALWAYS AS IDENTITY,
        created_at      timestamptz NOT NULL DEFAULT now(),
        "customerEmail" varchar(64) NOT NULL UNIQUE,
        country         char(2),
        amount          numeric(10,2) CHECK (amount >= 0),
        rounded         numeric(6,1),
        qty             "{s}".positive_qty,
        small           smallint,
        n               integer,
        ratio           real,
        score           double precision,
        peak            double precision,
        flag            boolean,
        note            text,
        "placedAt"      timestamp,
        placed_tz       timestamptz(3),
        day             date,
        at_time         time,
        ref             uuid,
        doc             json,
        meta            jsonb,
        blob            bytea,
        status          "{s}".status,
        tags            text[],
        scores          integer[],
        slot            integer,
        kafka_ts        timestamp,
        EXCLUDE USING btree (slot WITH =)
    )""",
    """CREATE FUNCTION "{s}".refuse_note() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
           IF NEW.note = 'refuse me' THEN
               RAISE EXCEPTION 'notes may not say %', NEW.note USING ERRCODE = 'U0001';
           END IF;
           RETURN NEW;
       END $$""",
    """CREATE TRIGGER refuse_note BEFORE INSERT OR UPDATE ON "{s}"."Orders"
       FOR EACH ROW EXECUTE FUNCTION "{s}".refuse_note()""",
)

ROUTES = """
[[route]]
name = "real"
topic = "{topic}"
table = '"{s}"."Orders"'
mode = "upsert"
key = ["orderId"]

[route.columns]
orderId = {{ from = "key" }}
customerEmail = {{ path = "email" }}
country = {{}}
amount = {{ type = "numeric" }}
rounded = {{ round = true }}
qty = {{}}
small = {{}}
n = {{}}
ratio = {{}}
score = {{}}
peak = {{}}
flag = {{}}
note = {{}}
placedAt = {{ path = "placed" }}
placed_tz = {{ round = true }}
day = {{}}
at_time = {{}}
ref = {{}}
doc = {{}}
meta = {{}}
blob = {{}}
status = {{}}
tags = {{}}
scores = {{}}
slot = {{}}
kafka_ts = {{ from = "timestamp" }}
"""

# A good record's fields, and how PostgreSQL itself reads each from text (the column's own input function).
GOOD: dict[str, Any] = {
    "email": "ann@example.com",
    "country": "N",  # char(2): PostgreSQL pads it
    "amount": "1234.5",
    "rounded": "12.25",  # round = true: half away from zero, as PostgreSQL
    "qty": 3,
    "small": -32768,
    "n": 2**31 - 1,
    "ratio": 0.5,
    "score": 1e-300,
    "peak": "-Infinity",  # JSON's name for a float it cannot hold
    "flag": True,
    "note": 'é ✓ \\ "',
    "placed": "2024-05-01T10:00:00+02:00",  # timestamp without time zone: converted to UTC
    "placed_tz": "2024-05-01T10:00:00.12345Z",  # timestamptz(3), round = true
    "day": "2024-02-29",
    "at_time": "23:59:59.999999",
    "ref": "12345678-1234-5678-1234-567812345678",
    "doc": {"z": 1, "a": [None, 1.5]},
    "meta": {"k": ["v", 2]},
    "blob": "AAH/",
    "status": "paid",
    "tags": ["a", None, "c"],
    "scores": [1, -2],
    "slot": 1,
}
AS_POSTGRESQL_READS = {
    "customerEmail": "'ann@example.com'::varchar(64)",
    "country": "'N'::char(2)",
    "amount": "'1234.5'::numeric(10,2)",
    "rounded": "'12.25'::numeric(6,1)",
    "qty": "3",
    "small": "(-32768)::smallint",
    "n": "2147483647",
    "ratio": "0.5::real",
    "score": "1e-300::float8",
    "peak": "'-Infinity'::float8",
    "flag": "true",
    "note": "E'é ✓ \\\\ \"'",
    "placedAt": "('2024-05-01T10:00:00+02:00'::timestamptz AT TIME ZONE 'UTC')",
    "placed_tz": "'2024-05-01T10:00:00.12345Z'::timestamptz(3)",
    "day": "'2024-02-29'::date",
    "at_time": "'23:59:59.999999'::time",
    "ref": "'12345678-1234-5678-1234-567812345678'::uuid",
    "doc": """'{"z":1,"a":[null,1.5]}'::json::text""",
    "meta": """'{"k": ["v", 2]}'::jsonb""",
    "blob": "decode('AAH/', 'base64')",
    "status": "'paid'",
    "tags": "ARRAY['a', NULL, 'c']",
    "scores": "ARRAY[1, -2]",
    "slot": "1",
}
# Bad records: the field that is bad, and what the dead letter must say (error class, words in the message).
BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"email": "x" * 65}, "TooLong", "column 'customerEmail': 65 characters, over character varying(64)"),
    ({"country": "NLD"}, "TooLong", "column 'country': 3 characters, over character(2)"),
    ({"amount": "1.234"}, "OutOfRange", "column 'amount': 1.234 has more decimals than numeric(10,2)"),
    ({"amount": "1e140000"}, "OutOfRange", "column 'amount': "),
    ({"small": 32768}, "OutOfRange", "column 'small': 32768 is outside smallint"),
    ({"status": "lost"}, "BadValue", "column 'status': 'lost' is not a label of"),
    ({"note": "nul \u0000 inside"}, "BadValue", "column 'note': holds U+0000, which PostgreSQL text cannot store"),
    ({"meta": {"k": "\u0000"}}, "BadValue", "column 'meta': holds U+0000, which PostgreSQL jsonb cannot store"),
    ({"tags": [["nested"]]}, "WrongType", "column 'tags': element 0 is an array"),
    ({"at_time": "10:00:00+02:00"}, "BadTimestamp", "column 'at_time': '10:00:00+02:00' has a time zone"),
    ({"ref": "not-a-uuid"}, "BadValue", "column 'ref': 'not-a-uuid' is not a UUID"),
    ({"amount": -1}, "CheckViolationError", "constraint 'Orders_amount_check'"),
    ({"qty": 0}, "CheckViolationError", "constraint 'positive_qty_check'"),
    ({"email": "ann@example.com"}, "UniqueViolationError", "constraint 'Orders_customerEmail_key'"),
    ({"slot": 1}, "ExclusionViolationError", "constraint 'Orders_slot_excl'"),
    ({"note": "refuse me"}, "UnknownPostgresError", "refuse_note() line 4 at RAISE"),
    ({"email": None}, "NotNullViolationError", "column 'customerEmail'"),
]


def _records() -> list[Record]:
    """Record 0 is the good one; each bad one is the good one with one field changed (and its own email and
    slot, so only the bad field can be refused)."""
    records = [Record(b"0", GOOD, ts_ms=1_700_000_000_123)]
    for n, (change, _, _) in enumerate(BAD, 1):
        value = {**GOOD, "email": f"{n}@example.com", "slot": 100 + n, **change}
        records.append(Record(str(n).encode(), value, ts_ms=1_700_000_000_123))
    return records


def _schema() -> str:
    return f"Real_{uuid.uuid4().hex[:8]}"


def _expected_dead_letters(found: list[tuple[int, str, str, str]]) -> None:
    assert [offset for offset, *_ in found] == list(range(1, len(BAD) + 1))
    for (offset, error_class, stage, message), (_, expected_class, words) in zip(found, BAD, strict=True):
        assert error_class == expected_class, (offset, message)
        assert message.startswith("route 'real'"), message
        assert words in message, message
        assert stage == ("db_row" if error_class.endswith("Error") else "validate")  # PostgreSQL's, or ours


async def _read_back(sink: RoutedSink, schema: str) -> tuple[list[Any], list[Any]]:
    """The stored good row, and the same fields as PostgreSQL reads them from text, column by column."""
    columns = list(AS_POSTGRESQL_READS)
    quoted = ", ".join(f'"{c}"' for c in columns)
    stored = await sink.fetch(f'SELECT {quoted} FROM "{schema}"."Orders" WHERE "orderId" = 0')
    expected = await sink.fetch("SELECT " + ", ".join(AS_POSTGRESQL_READS[c] for c in columns))
    return list(stored[0]), list(expected[0])


@pytest.mark.parametrize("mode", ["upsert", "insert"])  # through the staging table; COPYed straight into the table
def test_every_good_value_is_what_postgresql_reads_and_every_bad_one_a_named_dead_letter(
    endpoints: Endpoints, mode: str
) -> None:
    schema = _schema()
    routes = ROUTES.format(topic="t", s=schema).replace('mode = "upsert"', f'mode = "{mode}"')

    async def run() -> None:
        setup = (f'CREATE SCHEMA "{schema}"', *(s.format(s=schema) for s in SETUP))
        sink = await routed_sink(endpoints.dsn, "loom_" + schema.lower(), routes, *setup)
        try:
            result = await sink.write(sink.batch("t", _records()))
            assert (result.rows, result.dead_letters) == (1, len(BAD))
            _expected_dead_letters(await sink.dead_letters("t"))
            stored, expected = await _read_back(sink, schema)
            assert stored == expected
            extra = await sink.fetch(f'SELECT row_no > 0, created_at IS NOT NULL, kafka_ts FROM "{schema}"."Orders"')
            assert extra[0][:2] == (True, True)  # identity and default columns filled by the table
            assert extra[0][2].isoformat() == "2023-11-14T22:13:20.123000"  # the record's timestamp, UTC
        finally:
            async with sink.pool.acquire() as conn:
                await conn.execute(f'DROP SCHEMA "{schema}" CASCADE; DROP SCHEMA "{sink.schema}" CASCADE')
            await sink.pool.close()

    asyncio.run(run())


@pytest.fixture
def real_schema(endpoints: Endpoints) -> Iterator[str]:
    schema = _schema()
    for statement in (f'CREATE SCHEMA "{schema}"', *(s.format(s=schema) for s in SETUP)):
        scalar(endpoints, statement)
    try:
        yield schema
    finally:
        scalar(endpoints, f'DROP SCHEMA "{schema}" CASCADE')


def test_the_job_routes_into_the_real_table_without_restarting_an_actor(
    endpoints: Endpoints, real_schema: str, topic_name: str, tmp_path: Path
) -> None:
    ensure_topic(endpoints.kafka, topic_name, 2)
    producer = Producer({"bootstrap.servers": endpoints.kafka, "enable.idempotence": True})
    records = _records()
    for record in records:
        # Every record into partition 0, so the dead letters' offsets are the records' numbers.
        producer.produce(topic_name, key=record.key, value=orjson.dumps(record.value), partition=0)
    producer.produce(topic_name, key=b"0", value=orjson.dumps({**GOOD, "note": "again"}), partition=1)
    assert producer.flush(30) == 0
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES.format(topic=topic_name, s=real_schema))
    env = pipeline_env(endpoints, topic_name, routes_file=routes, min_actors=1, max_actors=1)
    log = run_until_drained(env, tmp_path / "main.log", 240)
    consumers = set(re.findall(r"^consumer (loom-consumer-\S+):", log, re.MULTILINE))
    assert len(consumers) == 1, consumers  # the one consumer was never replaced
    dead = scalar(
        endpoints,
        """SELECT json_agg(json_build_array("offset", error_class, stage, error_message) ORDER BY "offset")::text
           FROM loom_dead_letters WHERE topic = $1""",
        topic_name,
    )
    _expected_dead_letters([tuple(d) for d in orjson.loads(dead)])
    assert f'route real -> "{real_schema}"."Orders": upserted=2 deleted=0 dead_letters={len(BAD)}' in log
    note = scalar(endpoints, f'SELECT note FROM "{real_schema}"."Orders" WHERE "orderId" = 0')
    assert note in (GOOD["note"], "again")  # two partitions, no version: either may be the last writer
    assert account(endpoints, topic_name).offsets_at_end
    taken = scalar(
        endpoints, "SELECT sum(upserted + dead_letters)::int FROM loom_route_counts WHERE topic = $1", topic_name
    )
    assert taken == len(records) + 1  # every record once: a row written or a dead letter
