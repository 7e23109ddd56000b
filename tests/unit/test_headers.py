"""encode_headers(): Kafka headers as the JSON array stored in the jsonb ``headers`` column."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from loom_ray.pipeline import encode_headers


@pytest.mark.parametrize("headers", [None, [], {}])
def test_no_headers_is_none(headers: Any) -> None:
    assert encode_headers(headers) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("trace", b"abc-123")], [["trace", "abc-123"]]),
        ([("name", "é ✓ 😀".encode())], [["name", "é ✓ 😀"]]),  # UTF-8 bytes become text
        ([("already", "text")], [["already", "text"]]),
        ([("tombstone", None)], [["tombstone", None]]),
        ([("empty", b"")], [["empty", ""]]),
        ([("dup", b"1"), ("dup", b"2")], [["dup", "1"], ["dup", "2"]]),  # Kafka allows repeated keys; order kept
        ([("b", b"2"), ("a", b"1")], [["b", "2"], ["a", "1"]]),
        ([("bin", b"\xff\xfe\x00")], [["bin", {"base64": "//4A"}]]),
        ([("half", b"ok\xc3")], [["half", {"base64": base64.b64encode(b"ok\xc3").decode()}]]),  # truncated UTF-8
        ({"x": b"1", "y": None, "z": b"\x80"}, [["x", "1"], ["y", None], ["z", {"base64": "gA=="}]]),  # dict input
    ],
    ids=["ascii", "utf8", "str", "none", "empty-bytes", "duplicates", "order", "binary", "truncated", "dict"],
)
def test_encoding(headers: Any, expected: list[list[Any]]) -> None:
    encoded = encode_headers(headers)
    assert encoded is not None
    assert orjson.loads(encoded) == expected


def test_base64_round_trips_the_exact_bytes() -> None:
    raw = bytes(range(128, 256))
    encoded = encode_headers([("blob", raw)])
    assert encoded is not None
    [[key, value]] = orjson.loads(encoded)
    assert key == "blob"
    assert base64.b64decode(value["base64"]) == raw


@pytest.mark.parametrize("value", [b"\x00\x00\x00\x01", b"a\x00b"])
def test_nul_bytes_are_kept_as_base64_because_jsonb_refuses_u0000(value: bytes) -> None:
    encoded = encode_headers([("id", value)])
    assert encoded is not None
    assert "\\u0000" not in encoded
    [[_, stored]] = orjson.loads(encoded)
    assert base64.b64decode(stored["base64"]) == value
