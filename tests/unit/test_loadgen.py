"""Unit tests for the load generator's pure value and planning functions (no Kafka needed)."""

from __future__ import annotations

import hashlib
from collections import Counter

import orjson
import pytest

from loom_ray.loadgen import DEFAULT_OVERSIZE_BYTES, MALFORMED_KINDS, malformed_value, plan, valid_value
from loom_ray.loadgen.produce import TokenBucket


@pytest.mark.parametrize("size", [200, 2000])
@pytest.mark.parametrize("seq", [0, 7, 12_345, 199_999, 10_000_000])
def test_valid_value_size_parses_and_sha_matches(size: int, seq: int) -> None:
    value = valid_value(seq, size)
    assert abs(len(value) - size) <= size * 0.10
    doc = orjson.loads(value)
    assert doc["seq"] == seq
    assert doc["kind"] == "event"
    assert doc["ts"].endswith("Z")
    assert hashlib.sha256(doc["pad"].encode()).hexdigest() == doc["sha"]


def test_valid_value_is_deterministic_and_pads_differ() -> None:
    assert valid_value(42, 500) == valid_value(42, 500)
    assert orjson.loads(valid_value(1, 500))["pad"] != orjson.loads(valid_value(2, 500))["pad"]


def test_valid_value_uses_given_timestamp() -> None:
    assert orjson.loads(valid_value(1, 200, ts="2030-01-02T03:04:05.678Z"))["ts"] == "2030-01-02T03:04:05.678Z"


def test_invalid_utf8_is_not_utf8() -> None:
    value = malformed_value("invalid_utf8", 1)
    assert value is not None
    with pytest.raises(UnicodeDecodeError):
        value.decode("utf-8")


@pytest.mark.parametrize("kind", ["truncated_json", "not_json", "deep_nesting", "huge_number"])
def test_unparseable_kinds_fail_orjson(kind: str) -> None:
    value = malformed_value(kind, 3)
    assert value is not None
    value.decode("utf-8")  # these are text; only their JSON is broken
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(value)


def test_deep_nesting_and_huge_number_shapes() -> None:
    deep = malformed_value("deep_nesting", 3)
    huge = malformed_value("huge_number", 3)
    assert deep is not None and b"[" * 100_000 in deep
    assert huge is not None and b"1" + b"0" * 9_999 in huge


def test_nul_in_string_has_escape_and_is_otherwise_valid_json() -> None:
    value = malformed_value("nul_in_string", 5)
    assert value is not None
    assert b"\\u0000" in value
    assert "\x00" in orjson.loads(value)["text"]


def test_lone_surrogate_has_escape() -> None:
    value = malformed_value("lone_surrogate", 5)
    assert value is not None
    assert b"\\ud800" in value
    assert b"\\udc" not in value  # no low surrogate pairs it up


def test_oversize_is_valid_json_above_limit() -> None:
    value = malformed_value("oversize", 9)
    assert value is not None
    assert len(value) > 300 * 1024 == DEFAULT_OVERSIZE_BYTES
    assert orjson.loads(value)["kind"] == "oversize"
    bigger = malformed_value("oversize", 9, oversize_bytes=600 * 1024)
    assert bigger is not None and len(bigger) > 600 * 1024


def test_empty_and_null_value() -> None:
    assert malformed_value("empty", 1) == b""
    assert malformed_value("null_value", 1) is None


def test_truncated_json_is_a_prefix_of_a_valid_document() -> None:
    value = malformed_value("truncated_json", 11)
    assert value is not None
    assert valid_value(11, 200, kind="truncated_json").startswith(value)


def test_every_kind_is_buildable_and_unknown_kind_rejected() -> None:
    assert len(set(MALFORMED_KINDS)) == len(MALFORMED_KINDS) == 10
    for kind in MALFORMED_KINDS:
        malformed_value(kind, 0)
    with pytest.raises(ValueError, match="unknown malformed kind"):
        malformed_value("bogus", 0)


def test_plan_is_deterministic_for_a_seed() -> None:
    first = [plan(seq, 0.05, 7) for seq in range(5_000)]
    assert first == [plan(seq, 0.05, 7) for seq in range(5_000)]
    other_seed = [plan(seq, 0.05, 8) for seq in range(5_000)]
    assert first != other_seed


@pytest.mark.parametrize("ratio", [0.001, 0.05, 0.3, 0.5, 1.0])
def test_plan_gives_about_ratio(ratio: float) -> None:
    n = 20_000
    bad = sum(plan(seq, ratio, 3) is not None for seq in range(n))
    # One bad message per window of 1/ratio messages: exact up to the last partial window.
    assert abs(bad - n * ratio) <= 1


def test_plan_zero_ratio_and_bad_ratio() -> None:
    assert all(plan(seq, 0.0, 1) is None for seq in range(1_000))
    with pytest.raises(ValueError):
        plan(0, 1.5, 1)


def test_plan_cycles_through_all_kinds_in_order() -> None:
    kinds = [k for k in (plan(seq, 0.05, 11) for seq in range(4_000)) if k is not None]
    assert len(kinds) == 200
    assert kinds == [MALFORMED_KINDS[i % len(MALFORMED_KINDS)] for i in range(len(kinds))]
    assert Counter(kinds) == {kind: 20 for kind in MALFORMED_KINDS}


def test_plan_respects_restricted_kinds() -> None:
    chosen = ("empty", "not_json")
    kinds = {plan(seq, 0.1, 2, chosen) for seq in range(1_000)} - {None}
    assert kinds == set(chosen)


def test_plan_spreads_bad_messages_over_partitions() -> None:
    # Evenly spaced bad messages would all land on one partition of 4 (every 20th seq).
    partitions = Counter(seq % 4 for seq in range(8_000) if plan(seq, 0.05, 1) is not None)
    assert set(partitions) == {0, 1, 2, 3}
    assert min(partitions.values()) > 60


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_keeps_the_rate_and_never_asks_for_a_spin_wait() -> None:
    clock = _Clock()
    bucket = TokenBucket(50_000, clock=clock)
    taken = waits = 0
    while clock.now < 101.0:  # one simulated second, waiting exactly as asked
        wait = bucket.wait_s()
        if wait == 0:
            taken += 1
            continue
        assert wait >= TokenBucket.MIN_WAIT_S, "a wait poll() would round to 0 ms"
        waits += 1
        clock.now += wait
    assert 49_000 <= taken <= 51_000
    assert waits <= 1.1 / TokenBucket.MIN_WAIT_S  # a few hundred polls a second, not one per message
