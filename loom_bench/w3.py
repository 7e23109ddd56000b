"""Workload W3: keyed entity events for upsert sinks, the table they go to, and how each system reads them.

Message ``seq`` is an update of entity ``entity_key(seq)`` (one of 100 000 keys, drawn by a hash of ``seq``, so
keys repeat from the first thousand messages on), or, for 1 % of messages, a tombstone (null value) of the
entity a message ``TOMBSTONE_LAG`` earlier updated (so a delete usually finds its row). The Kafka record key
is the entity key, so all of an entity's records are in one partition, in order. Two topics hold the same
records: ``<topic>`` plain JSON of ~300 bytes for loom-ray's route, and ``<topic>-connect`` the same
values in Kafka Connect's JSON-with-schema envelope, because Debezium's JDBC sink needs a schema for typed
columns and a Connect user without a schema registry ships one inline (``JsonConverter`` with
``schemas.enable=true``). The entity key travels as the record key only in the envelope (the sink takes the
primary key from the record key); everything else is the same data.

Pure functions except :func:`produce`, which fills both topics once per run (run by the harness).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Producer

from loom_bench import kafka
from loom_bench.config import PARTITIONS

log = logging.getLogger(__name__)

KEYS = 100_000
TOMBSTONE_EVERY = 100  # 1 %
TOMBSTONE_LAG = 7
TABLE = "w3_entities"
CONNECT_SUFFIX = "-connect"
_GOLDEN = 0x9E3779B97F4A7C15  # Fibonacci hashing: the high bits of seq * this are well spread
_MASK64 = (1 << 64) - 1
_EPOCH = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
_NOTE_CHARS = 120

# (column, PostgreSQL type, Connect schema type); ``id`` is the primary key and comes from the record key.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("id", "text", "string"),
    ("seq", "bigint", "int64"),
    ("qty", "integer", "int32"),
    ("score", "bigint", "int64"),
    ("price", "numeric", "double"),
    ("ratio", "double precision", "double"),
    ("active", "boolean", "boolean"),
    ("updated_at", "timestamptz", "int64"),
    ("name", "text", "string"),
    ("note", "text", "string"),
)
DDL = f"CREATE TABLE {TABLE} (" + ", ".join(f"{c} {t} NOT NULL" for c, t, _ in COLUMNS) + ", PRIMARY KEY (id))"
_TIMESTAMP = "org.apache.kafka.connect.data.Timestamp"


def entity_key(seq: int) -> str:
    """The entity message ``seq`` updates, or for a tombstone deletes."""
    drawn = seq - TOMBSTONE_LAG if is_tombstone(seq) and seq >= TOMBSTONE_LAG else seq
    return f"e{(((drawn * _GOLDEN) & _MASK64) >> 32) % KEYS:05d}"


def is_tombstone(seq: int) -> bool:
    """Whether message ``seq`` is a tombstone (1 % of messages)."""
    return seq % TOMBSTONE_EVERY == TOMBSTONE_EVERY // 2


def event(seq: int) -> dict[str, Any]:
    """The row message ``seq`` writes, by column (``updated_at`` as an aware datetime)."""
    key = entity_key(seq)
    return {
        "id": key,
        "seq": seq,
        "qty": seq % 1000,
        "score": (seq * 7919) % 10**12,
        "price": (seq * 104_729) % 10_000_000 / 100,
        "ratio": (seq % 997) / 997,
        "active": seq % 3 == 0,
        "updated_at": _EPOCH + dt.timedelta(milliseconds=seq),
        "name": f"entity {key}",
        "note": (f"note {seq} " * 20)[:_NOTE_CHARS],
    }


def row(seq: int) -> tuple[Any, ...]:
    """The table row message ``seq`` leaves, in column order, as :func:`stored` reads it back."""
    return tuple(event(seq).values())


def stored(found: Any) -> tuple[Any, ...]:
    """A row read from the table (an asyncpg Record) in :func:`row`'s form (``numeric`` read as a float)."""
    return tuple(float(found[c]) if t == "numeric" else found[c] for c, t, _ in COLUMNS)


def json_value(seq: int) -> bytes:
    """The plain JSON value loom-ray reads (``updated_at`` in ISO 8601 UTC)."""
    return orjson.dumps(event(seq))


_CONNECT_SCHEMA = {
    "type": "struct",
    "name": "w3.Entity",
    "optional": False,
    "fields": [
        {"field": c, "type": s, "optional": False, **({"name": _TIMESTAMP, "version": 1} if c == "updated_at" else {})}
        for c, _, s in COLUMNS
        if c != "id"
    ],
}


def connect_value(seq: int) -> bytes:
    """The same event in Connect's JSON-with-schema envelope, without ``id`` (it is the record key);
    ``updated_at`` as Connect's Timestamp (epoch milliseconds)."""
    row = event(seq)
    del row["id"]
    row["updated_at"] = int(row["updated_at"].timestamp() * 1000)
    return orjson.dumps({"schema": _CONNECT_SCHEMA, "payload": row})


def seq_of(value: bytes, connect: bool) -> int:
    """The ``seq`` a value (plain or enveloped) was made from."""
    parsed = orjson.loads(value)
    seq: int = (parsed["payload"] if connect else parsed)["seq"]
    return seq


def records(messages: int) -> Iterator[tuple[int, bytes, bytes | None, bytes | None]]:
    """``(seq, key, plain value, enveloped value)`` per message; both values None for a tombstone."""
    for seq in range(messages):
        key = entity_key(seq).encode()
        if is_tombstone(seq):
            yield seq, key, None, None
        else:
            yield seq, key, json_value(seq), connect_value(seq)


def routes_toml(topic: str) -> str:
    """loom-ray's routes file for W3: ``topic`` upserted into the existing table by the record key."""
    lines = [
        "[[route]]",
        'name = "w3"',
        f'topic = "{topic}"',
        f'table = "{TABLE}"',
        'mode = "upsert"',
        'key = ["id"]',
        'on_tombstone = "delete"',
        "",
        "[route.columns]",
        'id = { type = "text", from = "key" }',
    ]
    lines += [f'{c} = {{ type = "{t}", required = true }}' for c, t, _ in COLUMNS if c != "id"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Topics:
    """W3's two topics (same records): plain JSON for loom-ray, the Connect envelope for B6."""

    plain: str
    connect: str

    def for_variant(self, variant: str) -> str:
        return self.connect if variant.startswith("B6") else self.plain


def topics(prefix: str, messages: int) -> Topics:
    base = f"{prefix}-w3-{messages}"
    return Topics(base, base + CONNECT_SUFFIX)


def produce(bootstrap: str, names: Topics, messages: int) -> float | None:
    """Fill both topics (16 partitions, keys hashed by the default partitioner); reuse them when they already
    hold ``messages`` each. The seconds it took, or None when reused."""
    marks = [kafka.watermarks(bootstrap, t) for t in (names.plain, names.connect)]
    if all(m is not None and len(m) == PARTITIONS and kafka.total(m) == messages for m in marks):
        log.info("reusing W3 topics %s, %s", names.plain, names.connect)
        return None
    for topic, found in zip((names.plain, names.connect), marks, strict=True):
        if found is not None:
            kafka.delete_topic(bootstrap, topic)
    time.sleep(2 if any(m is not None for m in marks) else 0)  # the broker deletes asynchronously
    for topic in (names.plain, names.connect):
        kafka.create_log_append_topic(bootstrap, topic, PARTITIONS)
    started = time.monotonic()
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "compression.type": "none", "enable.idempotence": True}
    )
    for _, key, plain, enveloped in records(messages):
        for topic, value in ((names.plain, plain), (names.connect, enveloped)):
            while True:
                try:
                    producer.produce(topic, value, key)
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError(f"W3 preload: {len(producer)} messages not acknowledged after 60 s")
    seconds = time.monotonic() - started
    log.info("preloaded W3: 2 x %d messages in %.1fs", messages, seconds)
    return seconds
