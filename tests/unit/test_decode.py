"""decode_value(): the JSON text jsonb will store, or the Rejection that becomes a dead letter; decode_document():
the routed path's parsed value, accepted and refused alike."""

from __future__ import annotations

import orjson
import pytest

from loom_ray.decode import (
    DECODE,
    EMPTY_VALUE,
    NULL_VALUE,
    VALIDATE,
    Rejection,
    capped,
    decode_document,
    decode_value,
    sha256,
)

LIMIT = 1024 * 1024


VALID = [
    '{"a": 1}',
    '[1, 2, {"b": [true, false, null]}]',
    '"just a string"',
    "123",
    "null",  # a JSON null document (not a tombstone): jsonb stores it
    '  {"padded": "with whitespace"}\n',
    '{"unicode": "é ✓ 😀"}',
    '{"escaped": "\\u00e9\\n\\t"}',
    '{"big": 123456789012345678901234567890}',  # beyond 64 bits but a finite double: jsonb keeps the digits
    '"\\\\u0000"',  # a literal backslash then "u0000": no NUL character
    '{"\\\\u0000": "\\\\u0000"}',  # the same, in a key and a value
    "[" * 1000 + "]" * 1000,  # deep, but within the parser's limit
]


@pytest.mark.parametrize("text", VALID)
def test_valid_json_returns_the_same_text(text: str) -> None:
    result = decode_value(text.encode("utf-8"), LIMIT)
    assert result == text
    assert isinstance(result, str)


def test_none_is_a_null_value() -> None:
    result = decode_value(None, LIMIT)
    assert result == NULL_VALUE
    assert isinstance(result, Rejection)
    assert (result.error_class, result.stage, result.sqlstate) == ("NullValue", DECODE, None)


def test_empty_is_an_empty_value() -> None:
    result = decode_value(b"", LIMIT)
    assert result == EMPTY_VALUE
    assert isinstance(result, Rejection)
    assert (result.error_class, result.stage) == ("EmptyValue", DECODE)


@pytest.mark.parametrize("value", [b'"' + b"x" * 99 + b'"', b"\xff" * 101, b"\x00" * 200])
def test_oversize_names_the_variable_and_sizes(value: bytes) -> None:
    # Size is checked first: even bytes that are not UTF-8 are reported as oversize.
    result = decode_value(value, 100)
    assert isinstance(result, Rejection)
    assert (result.error_class, result.stage) == ("Oversize", DECODE)
    assert "LOOM_MAX_MESSAGE_BYTES=100" in result.error_message
    assert str(len(value)) in result.error_message


def test_exactly_max_bytes_is_not_oversize() -> None:
    value = b'"' + b"x" * 98 + b'"'  # 100 bytes
    assert decode_value(value, 100) == value.decode()
    assert isinstance(decode_value(value, 99), Rejection)


INVALID_UTF8 = [b"\xff", b'{"a": "\xc3"}', b'"\xed\xa0\x80"', b'{"a": "\xe2\x82"}']


@pytest.mark.parametrize(
    "value", INVALID_UTF8, ids=["bad-byte", "truncated-sequence", "encoded-surrogate", "truncated-3-byte"]
)
def test_invalid_utf8(value: bytes) -> None:
    result = decode_value(value, LIMIT)
    assert isinstance(result, Rejection)
    assert (result.error_class, result.stage) == ("InvalidUtf8", DECODE)
    assert result.error_message.startswith("value: not UTF-8")


INVALID_JSON = [
    pytest.param('{"a": 1', id="truncated"),
    pytest.param("hello world", id="plain-text"),
    pytest.param(" ", id="whitespace-only"),
    pytest.param("[" * 5000 + "]" * 5000, id="5000-deep"),  # beyond the parser's nesting limit
    pytest.param("1" * 10_000, id="10000-digits"),  # overflows a double
    pytest.param("1e400", id="1e400"),  # overflows a double
    pytest.param("NaN", id="NaN"),
    pytest.param('{"a": NaN}', id="NaN-in-object"),
    pytest.param("Infinity", id="Infinity"),
    pytest.param('{"a": 1} trailing', id="trailing"),
    pytest.param("{'single': 'quotes'}", id="single-quotes"),
    pytest.param('"\\ud800"', id="lone-surrogate"),  # jsonb refuses it too
    pytest.param('"raw \x00 NUL byte"', id="raw-nul"),  # an unescaped control character is not JSON
    pytest.param("\ufeff{}", id="bom"),
]


@pytest.mark.parametrize("text", INVALID_JSON)
def test_invalid_json(text: str) -> None:
    result = decode_value(text.encode("utf-8"), LIMIT)
    assert isinstance(result, Rejection)
    assert (result.error_class, result.stage) == ("InvalidJson", DECODE)
    assert result.error_message.startswith("value: not JSON")


WITH_NUL = [
    '"\\u0000"',
    '{"a": "x\\u0000y"}',
    '{"k\\u0000": 1}',  # in a key
    '{"a": [1, {"b": ["ok", "deep\\u0000"]}]}',  # nested
    '["\\\\", "\\u0000"]',  # an escaped backslash elsewhere does not hide a real NUL
    '"\\\\\\u0000"',  # a literal backslash followed by a real NUL
]


@pytest.mark.parametrize("text", WITH_NUL)
def test_nul_character_is_a_validate_rejection(text: str) -> None:
    result = decode_value(text.encode("utf-8"), LIMIT)
    assert isinstance(result, Rejection)
    assert (result.error_class, result.stage) == ("NulCharacter", VALIDATE)
    assert "\\u0000" in result.error_message


def test_rejection_is_immutable() -> None:
    with pytest.raises(AttributeError):
        NULL_VALUE.stage = VALIDATE  # type: ignore[misc]


@pytest.mark.parametrize(
    ("value", "limit", "expected"),
    [(None, 10, None), (b"abcdef", 3, b"abc"), (b"abc", 10, b"abc"), (b"abc", 3, b"abc"), (b"abc", 0, b"")],
)
def test_capped(value: bytes | None, limit: int, expected: bytes | None) -> None:
    assert capped(value, limit) == expected


@pytest.mark.parametrize(
    ("value", "hex_digest"),
    [
        (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    ],
)
def test_sha256_is_the_digest_of_the_whole_value(value: bytes, hex_digest: str) -> None:
    digest = sha256(value)
    assert digest is not None
    assert len(digest) == 32
    assert digest.hex() == hex_digest


def test_sha256_of_none_is_none_and_ignores_capping() -> None:
    assert sha256(None) is None
    value = b"x" * 100
    assert sha256(value) != sha256(capped(value, 10))


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"x" * 101,
        *INVALID_UTF8,
        *(t.encode("utf-8") for t in VALID if len(t) < 1000),  # (the 1000-deep one is too deep for ==)
        *(p.values[0].encode("utf-8") for p in INVALID_JSON),
    ],
)
def test_decode_document_parses_what_decode_value_accepts_and_refuses_the_same(value: bytes | None) -> None:
    """The routed path's single parse (from bytes) accepts exactly what the default path accepts, and its
    rejections are the default path's."""
    expected = decode_value(value, 100 if value == b"x" * 101 else LIMIT)
    found = decode_document(value, 100 if value == b"x" * 101 else LIMIT)
    assert found == (expected if isinstance(expected, Rejection) else orjson.loads(expected))


@pytest.mark.parametrize("text", WITH_NUL)
def test_decode_document_leaves_nul_to_the_route_columns(text: str) -> None:
    """The default path refuses U+0000 anywhere (jsonb cannot store it); a route's record may hold it in a
    field no column reads, and a text or jsonb column refuses it naming the column (test_routes.py)."""
    assert isinstance(decode_value(text.encode("utf-8"), LIMIT), Rejection)
    assert decode_document(text.encode("utf-8"), LIMIT) == orjson.loads(text)
