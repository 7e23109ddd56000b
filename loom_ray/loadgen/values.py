"""Message values for the load generator: valid JSON events, ten malformed kinds, and which is which."""

from __future__ import annotations

import functools
import hashlib
import math
import random
import time
from collections.abc import Sequence

import orjson

DEFAULT_OVERSIZE_BYTES = 300 * 1024
# The broker refuses records above message.max.bytes (default 1048588) and the producer refuses requests
# above its own message.max.bytes (default 1000000); stay well below both.
MAX_VALUE_BYTES = 900 * 1024

MALFORMED_KINDS: tuple[str, ...] = (
    "invalid_utf8",
    "truncated_json",
    "not_json",
    "nul_in_string",
    "deep_nesting",
    "huge_number",
    "oversize",
    "empty",
    "null_value",
    "lone_surrogate",
)

_NESTING_DEPTH = 100_000
_NESTED = b"[" * _NESTING_DEPTH + b"]" * _NESTING_DEPTH
_HUGE_DIGITS = 10_000
_HUGE_INT = b"1" + b"0" * (_HUGE_DIGITS - 1)
# A fixed, seeded block of filler; a pad is a slice of it starting at an offset chosen by seq, so pads
# differ between messages without calling random per message.
_FILLER_BLOCK_LEN = 4093
_FILLER_BLOCK = "".join(
    random.Random(20240901).choices(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", k=_FILLER_BLOCK_LEN
    )
).encode("ascii")
_FILLER = _FILLER_BLOCK * (MAX_VALUE_BYTES // _FILLER_BLOCK_LEN + 2)
# Deterministic timestamps (when no ts is given) start here: 2025-01-01T00:00:00Z, one millisecond per seq.
_EPOCH_S = 1_735_689_600
_TAGS = (("red",), ("red", "blue"), ("green",), ())
# Bytes that wrap the pad and sha: ',"pad":"' + pad + '","sha":"' + 64 hex chars + '"}' minus the '}'
# already counted in the serialised head.
_PAD_SHA_OVERHEAD = len(b',"pad":"') + len(b'","sha":"') + 64 + len(b'"')
_MASK64 = (1 << 64) - 1


@functools.lru_cache(maxsize=4)
def _utc_second(whole: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def utc_iso(t: float) -> str:
    """Format a Unix time as ISO-8601 UTC with milliseconds, e.g. ``2025-01-01T00:00:00.000Z``."""
    whole = int(t)
    return f"{_utc_second(whole)}.{min(999, int((t - whole) * 1000)):03d}Z"


def _pad(seq: int, length: int) -> bytes:
    """Return ``length`` filler bytes whose start depends on ``seq``; ValueError beyond MAX_VALUE_BYTES."""
    if length > MAX_VALUE_BYTES:
        raise ValueError(f"pad of {length} bytes exceeds MAX_VALUE_BYTES={MAX_VALUE_BYTES}")
    start = (seq * 7919) % _FILLER_BLOCK_LEN
    return _FILLER[start : start + length]


def valid_value(seq: int, size: int, *, ts: str | None = None, kind: str = "event") -> bytes:
    """Build a valid JSON event of ``size`` bytes (never smaller than its ~190-byte skeleton).

    ``ts`` defaults to a timestamp derived from ``seq``, so the result depends only on the arguments.
    """
    head = orjson.dumps(
        {
            "seq": seq,
            "ts": ts if ts is not None else utc_iso(_EPOCH_S + seq / 1000),
            "kind": kind,
            "user": f"u-{seq % 10007:05d}",
            "amount": ((seq * 7919) % 1_000_000) / 100,
            "tags": _TAGS[seq % len(_TAGS)],
        }
    )
    pad = _pad(seq, max(0, size - len(head) - _PAD_SHA_OVERHEAD))
    sha = hashlib.sha256(pad).hexdigest().encode("ascii")
    return b"".join((head[:-1], b',"pad":"', pad, b'","sha":"', sha, b'"}'))


def malformed_value(kind: str, seq: int, *, oversize_bytes: int = DEFAULT_OVERSIZE_BYTES) -> bytes | None:
    """Build the bad value of ``kind`` for message ``seq``; raise ValueError for an unknown kind."""
    if kind == "invalid_utf8":
        return b'\xff\xfe{"seq": %d, "kind": "invalid_utf8"}' % seq
    if kind == "truncated_json":
        whole = valid_value(seq, 200, kind=kind)
        return whole[: len(whole) // 2]
    if kind == "not_json":
        return b"not json: plain text message %d" % seq
    if kind == "nul_in_string":
        return b'{"seq": %d, "kind": "nul_in_string", "text": "before\\u0000after"}' % seq
    if kind == "deep_nesting":
        return b'{"seq": %d, "kind": "deep_nesting", "d": %s}' % (seq, _NESTED)
    if kind == "huge_number":
        return b'{"seq": %d, "kind": "huge_number", "n": %s}' % (seq, _HUGE_INT)
    if kind == "oversize":
        return valid_value(seq, oversize_bytes + 1024, kind=kind)
    if kind == "empty":
        return b""
    if kind == "null_value":
        return None
    if kind == "lone_surrogate":
        return b'{"seq": %d, "kind": "lone_surrogate", "text": "x\\ud800y"}' % seq
    raise ValueError(f"unknown malformed kind {kind!r}; expected one of {', '.join(MALFORMED_KINDS)}")


def _mix64(seed: int, k: int) -> int:
    """Hash (seed, k) to a well-spread 64-bit integer (splitmix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + k + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _window_start(k: int, ratio: float) -> int:
    return math.floor(k / ratio)


def plan(seq: int, ratio: float, seed: int, kinds: Sequence[str] = MALFORMED_KINDS) -> str | None:
    """Return the malformed kind message ``seq`` gets, or None if it is valid.

    Messages are split into consecutive windows of about 1/ratio messages; window k holds exactly one bad
    message, at a seeded position, of kind ``kinds[k % len(kinds)]``. So the bad fraction is ratio, the
    kinds cycle in order, and the positions (hence partitions) are spread by the seed.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be within [0, 1], got {ratio!r}")
    if ratio == 0.0 or not kinds:
        return None
    k = int(seq * ratio)
    while k > 0 and _window_start(k, ratio) > seq:
        k -= 1
    while _window_start(k + 1, ratio) <= seq:
        k += 1
    start = _window_start(k, ratio)
    width = _window_start(k + 1, ratio) - start
    if seq != start + _mix64(seed, k) % width:
        return None
    return kinds[k % len(kinds)]
