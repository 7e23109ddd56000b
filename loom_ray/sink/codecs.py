"""Cheap binary COPY encoding for ``kafka_ts``: a timestamptz sent as int64 microseconds since 2000-01-01.

asyncpg's default timestamptz encoder takes a ``datetime``: building one per message
(``datetime.fromtimestamp``) and encoding it (two comparisons with infinity, ``astimezone``, a subtraction)
was about a quarter of the pipeline's CPU in py-spy profiles (COPY alone: ~2.1 us per row with it, ~0.6
without). Here a row carries the timestamp as an ``int`` and the binary codec's encoder is a C function,
``struct.Struct("!q").pack``: no Python code runs per value, and the row tuple holds only atomic values
(the cyclic GC untracks it at once).

PostgreSQL's binary timestamptz *is* that int64, so the rows are the same bit for bit:
:func:`kafka_ts_micros` gives the value the old ``datetime.fromtimestamp(ms / 1000, UTC)`` gave.

Which timestamps are stored: 0001-01-01 up to 9999-12-31 (UTC), the range Python's ``datetime`` reads back
(asyncpg's and psycopg's decoders, :func:`decode_timestamptz`). PostgreSQL's timestamptz reaches 294276 AD,
but a row holding such a time could not be read by a Python client, and a time past it does not fit the
int64 the encoder sends (a failure of the whole COPY, not of one row). A record whose timestamp is outside
the range is refused before COPY: the consume loop makes it a dead letter (``loom_ray.fields``).

The codec is per connection: the consumer's pool installs it on every new connection
(``db.create_pool(init=install_codecs)``), for ``timestamptz`` and ``timestamp`` (a route's column without
time zone: its UTC wall time, the same int). Every such parameter on such a connection must then be an
``int`` (``loom_messages.kafka_ts`` and the routes' staging COPY: the sink's other statements bind none).
Results are decoded back to the ``datetime`` asyncpg would have returned.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import asyncpg

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
PG_EPOCH_MICROS = 946_684_800_000_000  # 2000-01-01T00:00:00Z in microseconds since 1970-01-01
_ONE_MICROSECOND = timedelta(microseconds=1)
_INT64 = struct.Struct("!q")  # network order, as PostgreSQL's binary format
# Within [1970, 2100) the float ``ms / 1000`` is within 0.12 us of the exact value, so the old
# ``fromtimestamp`` rounded to the exact millisecond and the integer formula gives the same timestamp;
# outside it (rare producer clocks, within years 1 to 9999) the old expression is kept, rounding included.
FAST_MS_END = 4_102_444_800_000  # 2100-01-01T00:00:00Z
KAFKA_TS_MIN_MS = -62_135_596_800_000  # 0001-01-01T00:00:00Z, datetime.min
KAFKA_TS_END_MS = 253_402_300_800_000  # 10000-01-01T00:00:00Z, just past datetime.max

# What asyncpg's timestamptz decoder returns for PostgreSQL's +/-infinity (int64 max/min).
_PG_INFINITY = 0x7FFF_FFFF_FFFF_FFFF
_PG_NEGATIVE_INFINITY = -0x8000_0000_0000_0000
_INFINITY = datetime.max
_NEGATIVE_INFINITY = datetime.min
_INFINITY_MICROS = (_INFINITY.replace(tzinfo=UTC) - PG_EPOCH) // _ONE_MICROSECOND
_NEGATIVE_INFINITY_MICROS = (_NEGATIVE_INFINITY.replace(tzinfo=UTC) - PG_EPOCH) // _ONE_MICROSECOND


def kafka_ts_micros(ts_ms: int) -> int:
    """A Kafka timestamp (ms since 1970) as the microseconds since 2000 the timestamptz codec sends.

    Equal to ``datetime.fromtimestamp(ts_ms / 1000, UTC)`` as PostgreSQL would store it. Raises ValueError,
    naming the range, for a time before year 1 or after year 9999 (see the module docstring).
    """
    if 0 <= ts_ms < FAST_MS_END:
        return ts_ms * 1000 - PG_EPOCH_MICROS
    if not KAFKA_TS_MIN_MS <= ts_ms < KAFKA_TS_END_MS:
        raise ValueError(f"{ts_ms} ms since 1970 is outside years 1 to 9999, the range a Python client can read back")
    micros = (datetime.fromtimestamp(ts_ms / 1000, UTC) - PG_EPOCH) // _ONE_MICROSECOND
    # asyncpg's datetime encoder sent datetime.min / datetime.max (as UTC) as -infinity / infinity.
    if micros == _NEGATIVE_INFINITY_MICROS:
        return _PG_NEGATIVE_INFINITY
    if micros == _INFINITY_MICROS:
        return _PG_INFINITY
    return micros


def decode_timestamptz(value: bytes) -> datetime:
    """The ``datetime`` asyncpg's default codec returns for a binary timestamptz."""
    (micros,) = _INT64.unpack(value)
    if micros == _PG_INFINITY:
        return _INFINITY
    if micros == _PG_NEGATIVE_INFINITY:
        return _NEGATIVE_INFINITY
    return PG_EPOCH + timedelta(microseconds=micros)


def decode_timestamp(value: bytes) -> datetime:
    """The naive ``datetime`` asyncpg's default codec returns for a binary timestamp (without time zone)."""
    moment = decode_timestamptz(value)
    return moment if moment.tzinfo is None else moment.replace(tzinfo=None)


async def install_codecs(conn: asyncpg.Connection) -> None:
    """Put the int-microseconds codecs of timestamptz and timestamp on ``conn`` (a pool's ``init``)."""
    await conn.set_type_codec(
        "timestamptz", schema="pg_catalog", encoder=_INT64.pack, decoder=decode_timestamptz, format="binary"
    )
    await conn.set_type_codec(
        "timestamp", schema="pg_catalog", encoder=_INT64.pack, decoder=decode_timestamp, format="binary"
    )
