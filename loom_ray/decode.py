"""Decode and validate one Kafka value into the text PostgreSQL's jsonb will store, or a rejection.

Runs on the consumer actor for every message, so it is pure and cheap: one UTF-8 decode, one orjson parse
(which also enforces a nesting limit of 1024 and refuses numbers that overflow a double), and a scan for
the ``\\u0000`` escape only when the text contains it. A rejection is never raised: it becomes a dead-letter
row, and the pipeline goes on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

# Stages, as stored in loom_dead_letters.stage.
DECODE = "decode"  # the bytes are not a JSON document we can read
VALIDATE = "validate"  # a JSON document, but one PostgreSQL's jsonb cannot store
DB_ROW = "db_row"  # PostgreSQL refused the row at write time


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a record cannot be stored as a row; becomes a dead letter. ``error_message`` starts with the
    field at fault (``value: ...``, ``headers: ...``, ``timestamp: ...``)."""

    error_class: str
    error_message: str
    stage: str
    sqlstate: str | None = None


NULL_VALUE = Rejection(
    "NullValue", "value: null (a tombstone): the default sink stores JSON documents, so it is kept here", DECODE
)
EMPTY_VALUE = Rejection("EmptyValue", "value: empty, not a JSON document", DECODE)


def decode_value(value: bytes | None, max_bytes: int) -> str | Rejection:
    """The value as JSON text ready for jsonb, or why it cannot be."""
    if value is None:
        return NULL_VALUE
    size = len(value)
    if size > max_bytes:
        return Rejection("Oversize", f"value: {size} bytes, over LOOM_MAX_MESSAGE_BYTES={max_bytes}", DECODE)
    if size == 0:
        return EMPTY_VALUE
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection("InvalidUtf8", f"value: not UTF-8: {exc}", DECODE)
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return Rejection("InvalidJson", f"value: not JSON: {exc}", DECODE)
    if "\\u0000" in text and contains_nul(document):
        return Rejection(
            "NulCharacter", "value: a JSON string holds \\u0000, which PostgreSQL jsonb cannot store", VALIDATE
        )
    return text


def size_rejection(value: bytes | None, max_bytes: int) -> Rejection | None:
    """Why a value cannot be a row whatever its format (null, empty, over LOOM_MAX_MESSAGE_BYTES), or None."""
    if value is None or not 0 < len(value) <= max_bytes:
        rejection = decode_value(value, max_bytes)
        assert isinstance(rejection, Rejection)
        return rejection
    return None


def decode_document(value: bytes | None, max_bytes: int) -> Any:
    """The parsed JSON value of a routed record (:mod:`loom_ray.routes`), or the :class:`Rejection` saying why
    there is none: :func:`decode_value`'s checks but the one for ``\\u0000``, which the route's columns make
    (a text or jsonb column refuses it and names the column; a field no column reads does not matter).

    The routed path needs the document, not the text, so an accepted value is parsed once, from its bytes
    (orjson refuses bytes that are not UTF-8, as the decode in :func:`decode_value` does). A value refused
    here goes through :func:`decode_value`, which says why in the same words as the default path.
    """
    if value is None or not 0 < len(value) <= max_bytes:
        return decode_value(value, max_bytes)
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return decode_value(value, max_bytes)


def contains_nul(document: Any) -> bool:
    """Whether any key or string in the parsed document holds U+0000 (iterative: depth is bounded)."""
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def capped(value: bytes | None, limit: int) -> bytes | None:
    """The first ``limit`` bytes of a bad value, as kept in the dead-letter table."""
    return None if value is None else value[:limit]


def sha256(value: bytes | None) -> bytes | None:
    """Digest of the whole original value, so a capped dead letter can still be matched to its source."""
    return None if value is None else hashlib.sha256(value).digest()
