"""loom_ray.fields: the field at fault when a record cannot be a row, named in its dead letter."""

from __future__ import annotations

import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_LOG_APPEND_TIME, TIMESTAMP_NOT_AVAILABLE, Message

from loom_ray import fields
from loom_ray.decode import DECODE, VALIDATE
from loom_ray.fields import (
    UNSTORABLE,
    UnreadableHeaders,
    diagnose,
    read_headers,
    timestamp_rejection,
    unencodable_headers,
)

YEAR_1_MS = -62_135_596_800_000  # 0001-01-01T00:00:00Z
YEAR_10000_MS = 253_402_300_800_000  # 10000-01-01T00:00:00Z
INT64_MAX = 2**63 - 1


@pytest.mark.parametrize(
    "ts_ms",
    [0, 1, 1_700_000_000_123, YEAR_10000_MS - 1, YEAR_1_MS, -1],
    ids=["epoch", "one", "now", "last-ms-of-9999", "first-ms-of-year-1", "before-1970"],
)
def test_storable_timestamps_pass(ts_ms: int) -> None:
    assert timestamp_rejection((TIMESTAMP_CREATE_TIME, ts_ms)) is None


@pytest.mark.parametrize(
    "ts_ms",
    [YEAR_10000_MS, 6_000_000_000_000_000, INT64_MAX, YEAR_1_MS - 1, -(2**63)],
    ids=["year-10000", "year-190000-within-postgresql", "int64-max", "before-year-1", "int64-min"],
)
def test_timestamps_outside_years_1_to_9999_are_refused_before_copy(ts_ms: int) -> None:
    rejection = timestamp_rejection((TIMESTAMP_CREATE_TIME, ts_ms))
    assert rejection is not None
    assert (rejection.error_class, rejection.stage) == ("TimestampOutOfRange", VALIDATE)
    assert rejection.error_message.startswith(f"timestamp: CreateTime {ts_ms} ms")


def test_the_timestamp_type_is_named() -> None:
    rejection = timestamp_rejection((TIMESTAMP_LOG_APPEND_TIME, INT64_MAX))
    assert rejection is not None and rejection.error_message.startswith("timestamp: LogAppendTime")


def test_no_timestamp_is_stored_as_null_whatever_the_number() -> None:
    assert timestamp_rejection((TIMESTAMP_NOT_AVAILABLE, INT64_MAX)) is None


def _headers_error() -> SystemError:
    """What ``Message.headers()`` raises for a header key that is not UTF-8 (confluent-kafka 2.x)."""
    try:
        try:
            b"k\xff".decode("utf-8")
        except UnicodeDecodeError as cause:
            raise SystemError("<method 'headers'> returned a result with an exception set") from cause
    except SystemError as exc:
        return exc
    raise AssertionError("unreachable")


def test_unreadable_headers_name_the_field_and_the_cause() -> None:
    rejection = UnreadableHeaders(_headers_error()).rejection()
    assert (rejection.error_class, rejection.stage) == ("UnreadableHeaders", DECODE)
    assert rejection.error_message.startswith("headers: ")
    assert "UnicodeDecodeError" in rejection.error_message and "0xff" in rejection.error_message


def test_read_headers_answers_for_every_message_and_asks_each_once(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []

    def headers(message: Message) -> object:
        offset = message.offset()
        asked.append(offset)
        if offset in (0, 3, 4, 7):  # one at each end, two in a row
            raise _headers_error()
        return [("h", str(offset).encode())]

    monkeypatch.setattr(fields, "_HEADERS", headers)
    messages = [Message(topic="t", partition=0, offset=o, value=b"{}") for o in range(8)]
    found = read_headers(messages)
    assert [isinstance(h, UnreadableHeaders) for h in found] == [True, False, False, True, True, False, False, True]
    assert [h for h in found if not isinstance(h, UnreadableHeaders)] == [
        [("h", str(o).encode())] for o in (1, 2, 5, 6)
    ]
    assert asked == list(range(8))


def test_read_headers_through_confluent_kafka() -> None:
    messages = [
        Message(topic="t", partition=0, offset=0, value=b"{}", headers=[("a", b"1")]),
        Message(topic="t", partition=0, offset=1, value=b"{}"),
    ]
    assert read_headers(messages) == [[("a", b"1")], None]


def test_unencodable_headers_name_the_field() -> None:
    rejection = unencodable_headers(TypeError("Type is not JSON serializable: object"))
    assert (rejection.error_class, rejection.stage) == ("UnencodableHeaders", VALIDATE)
    assert rejection.error_message.startswith("headers: ") and "TypeError" in rejection.error_message


def test_diagnose_finds_the_timestamp() -> None:
    message = Message(topic="t", partition=0, offset=0, value=b"{}", timestamp=(TIMESTAMP_CREATE_TIME, INT64_MAX))
    rejection = diagnose(message, ValueError("year 292278994 is out of range"))
    assert rejection.error_message.startswith("timestamp: ")


def test_diagnose_without_a_field_at_fault_names_the_record_and_the_error() -> None:
    message = Message(topic="t", partition=0, offset=0, value=b"{}", timestamp=(TIMESTAMP_CREATE_TIME, 1))
    rejection = diagnose(message, RuntimeError("a defect of ours"))
    assert (rejection.error_class, rejection.stage) == (UNSTORABLE, DECODE)
    assert (
        rejection.error_message.startswith("record: ") and "RuntimeError: a defect of ours" in rejection.error_message
    )
