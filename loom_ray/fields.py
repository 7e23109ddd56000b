"""Which field of a Kafka record cannot be stored, and why: the slow path of the consume loop.

The hot loop (:meth:`loom_ray.pipeline.IngestWorker._add_all`) reads a record's fields inside a ``try``,
which costs nothing while nothing raises (the headers of a whole consume() are read first, by
:func:`read_headers`). When something does, the functions here name the field at fault, and the record
becomes a dead letter whose ``error_message`` starts with that field (``headers: ...``, ``timestamp: ...``;
the value's own rejections come from :func:`loom_ray.decode.decode_value`). A record never escapes as an
exception: the actor would die, be replaced, and meet the same record again, for ever.

What each field may hold:

- key: any bytes, or none (``bytea``; Kafka's record size limit is far below PostgreSQL's 1 GB per value);
- value: see :mod:`loom_ray.decode`;
- headers: any keys and values (``pipeline.encode_headers``), except that confluent-kafka cannot read a
  header key that is not UTF-8 (see :func:`read_headers`): the record is a dead letter without its headers;
- timestamp: years 1 to 9999 (:func:`loom_ray.sink.codecs.kafka_ts_micros`), or none; otherwise a dead
  letter at stage ``validate``, decided before COPY.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, TIMESTAMP_NOT_AVAILABLE, Message

from loom_ray.decode import DECODE, VALIDATE, Rejection
from loom_ray.sink.codecs import kafka_ts_micros

UNSTORABLE = "Unstorable"  # error_class when no field was found at fault (a defect of ours, logged)


_HEADERS = Message.headers  # the method itself, for map(): see read_headers


class UnreadableHeaders:
    """Stands, in :func:`read_headers`' answer, for the headers of a message whose ``headers()`` raised.

    It is truthy and not iterable, so the hot loop's ``encode_headers`` fails on it and its slow path makes
    the record a dead letter: :meth:`rejection`.
    """

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error

    def rejection(self) -> Rejection:
        cause = self.error.__cause__ if self.error.__cause__ is not None else self.error
        return Rejection(
            "UnreadableHeaders",
            f"headers: confluent-kafka cannot read them ({type(cause).__name__}: {cause}); "
            "a header key that is not UTF-8 does this. The headers are not kept",
            DECODE,
        )


def read_headers(messages: list[Message]) -> list[Any]:
    """Each message's ``headers()``, in order, or an :class:`UnreadableHeaders` where it raised.

    For a header key that is not UTF-8, confluent-kafka's ``headers()`` returns a list holding a broken
    tuple *with an error set*: a call that CPython checks turns that into a SystemError (caused by the
    UnicodeDecodeError), but a method call in a hot loop (``message.headers()``) is specialised by the
    interpreter into one that does not check, and then the list crashes the process when read and the error
    surfaces in some later, unrelated call. ``map`` calls through the checked path. A message whose headers
    raised is never asked again: the second answer is the broken list, without an error.
    """
    found: list[Any] = []
    while True:
        try:
            found.extend(map(_HEADERS, messages[len(found) :] if found else messages))
        except Exception as exc:  # found holds the answers before the message that raised
            found.append(UnreadableHeaders(exc))
            continue
        return found


def unencodable_headers(exc: Exception) -> Rejection:
    """The headers were read but could not be turned into the JSON of the ``headers`` column."""
    return Rejection("UnencodableHeaders", f"headers: cannot be stored as JSON ({type(exc).__name__}: {exc})", VALIDATE)


def timestamp_rejection(timestamp: tuple[int, int]) -> Rejection | None:
    """Why a record's ``(type, ms)`` timestamp cannot be stored in ``kafka_ts``, or None if it can."""
    ts_type, ts_ms = timestamp
    if ts_type == TIMESTAMP_NOT_AVAILABLE:
        return None
    try:
        kafka_ts_micros(ts_ms)
    except ValueError as exc:
        kind = "LogAppendTime" if ts_type == TIMESTAMP_LOG_APPEND_TIME else "CreateTime"
        return Rejection("TimestampOutOfRange", f"timestamp: {kind} {exc}", VALIDATE)
    return None


def diagnose(message: Message, exc: Exception) -> Rejection:
    """Why the hot loop could not make ``message`` a row (it raised ``exc`` after reading the headers).

    Looks at the fields the hot loop reads after the headers, in turn; if none is at fault, the rejection
    names the whole record and the exception, so that nothing is ever left unexplained.
    """
    rejection = timestamp_rejection(message.timestamp())
    if rejection is not None:
        return rejection
    return Rejection(UNSTORABLE, f"record: no field was found at fault ({type(exc).__name__}: {exc})", DECODE)
