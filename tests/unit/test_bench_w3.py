"""Workload W3's generator, its routes file (read by loom-ray's own loader), the Connect envelope and
connector, the rate over a window of progress samples, and the fold the tables are checked against."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from loom_bench import report, stats, summary, w3, w3_limit
from loom_bench.config import Window
from loom_bench.summary import aggregate
from loom_bench.systems import connect
from loom_bench.topic_fold import Record
from loom_bench.w3_run import claim_rate, expected_table, progress_rate
from loom_ray.routes import convert
from loom_ray.routes.model import load_routes
from tests.support.shapes import pg, shape


def test_keys_repeat_over_100k_entities_and_1_percent_are_tombstones_of_earlier_keys() -> None:
    keys = [w3.entity_key(seq) for seq in range(400_000)]
    assert 95_000 < len(set(keys)) <= w3.KEYS
    assert len(set(keys[:3000])) < 3000  # repeats even in a smoke-sized topic
    tombstones = [seq for seq in range(10_000) if w3.is_tombstone(seq)]
    assert len(tombstones) == 100
    assert all(keys[seq] == keys[seq - w3.TOMBSTONE_LAG] for seq in tombstones)


def test_plain_value_is_about_300_bytes_with_ten_typed_fields() -> None:
    value = w3.json_value(12_345)
    assert 250 <= len(value) <= 350
    parsed = orjson.loads(value)
    assert list(parsed) == [c for c, _, _ in w3.COLUMNS]
    assert parsed["id"] == w3.entity_key(12_345) and parsed["seq"] == 12_345
    assert dt.datetime.fromisoformat(parsed["updated_at"]) == w3.event(12_345)["updated_at"]


def test_records_carry_the_entity_key_and_null_values_for_tombstones() -> None:
    found = list(w3.records(200))
    assert all(key == w3.entity_key(seq).encode() for seq, key, _, _ in found)
    tombstones = [seq for seq, _, plain, enveloped in found if plain is None and enveloped is None]
    assert tombstones == [50, 150]


def test_connect_envelope_has_a_schema_for_every_column_but_the_key() -> None:
    envelope = orjson.loads(w3.connect_value(7))
    fields = {f["field"]: f for f in envelope["schema"]["fields"]}
    assert list(fields) == [c for c, _, _ in w3.COLUMNS if c != "id"]
    assert fields["updated_at"]["name"] == "org.apache.kafka.connect.data.Timestamp"
    assert {f["type"] for f in fields.values()} <= {"int32", "int64", "double", "boolean", "string"}
    assert envelope["payload"]["updated_at"] == int(w3.event(7)["updated_at"].timestamp() * 1000)
    assert w3.seq_of(w3.connect_value(7), connect=True) == w3.seq_of(w3.json_value(7), connect=False) == 7


def test_routes_file_is_an_upsert_by_key_that_deletes_on_tombstones(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(w3.routes_toml("bench-w3"))
    (route,) = load_routes(path).routes
    assert (route.topic, route.mode, route.on_tombstone, route.key) == ("bench-w3", "upsert", "delete", ("id",))
    assert [(column.name, column.type) for column in route.columns] == [(c, t) for c, t, _ in w3.COLUMNS]
    assert route.columns[0].source == "key" and all(c.required for c in route.columns[1:])


def test_w3_connector_upserts_by_record_key_and_deletes_tombstones() -> None:
    props = connect.w3_connector_properties("tuned", "n", "t-connect", "g", "postgresql://u:p@h:5/db")
    assert props["insert.mode"] == "upsert" and props["delete.enabled"] == "true"
    assert (props["primary.key.mode"], props["primary.key.fields"]) == ("record_key", "id")
    assert props["collection.name.format"] == w3.TABLE and props["tasks.max"] == "2"
    assert props["transforms"] == "key" and "transforms.wrap.type" not in props
    assert connect.W3_WORKER["value.converter.schemas.enable"] == "true"


def test_progress_rate_counts_offsets_inside_the_window_only() -> None:
    samples = [(0.0, 0), (1.0, 100), (2.0, 100), (3.0, 300), (8.0, 1300), (13.0, 2300), (20.0, 9999)]
    rate = progress_rate(samples, Window(2.0, 10.0))
    assert rate is not None  # from t=3 (1 s + 2 s warm-up) to the first sample 10 s later, t=13
    assert (rate.msgs_per_s, rate.seconds, rate.rows) == (2000 / 10.0, 10.0, 2200)
    untimed = progress_rate(samples, Window(0.0, 0.0))
    assert untimed is not None and (untimed.msgs_per_s, untimed.seconds) == ((9999 - 100) / 19.0, 19.0)
    assert progress_rate([(0.0, 0), (1.0, 0)], Window(2.0, 10.0)) is None
    assert progress_rate([(0.0, 0), (1.0, 50)], Window(2.0, 10.0)) == stats.DrainRate(50, 1.0, 1.0, None, None)


def test_claim_rate_runs_from_the_first_claim_to_the_highest_progress() -> None:
    samples = [(10.0, 0), (11.0, 0), (12.0, 50_000), (13.0, 100_000), (14.0, 100_000)]
    assert claim_rate(samples, 8.0) == (100_000 / 5.0, 5.0)
    assert claim_rate(samples, None) is None
    assert claim_rate([(10.0, 0)], 8.0) is None


def test_expected_table_folds_the_committed_records_last_writer_wins() -> None:
    key = w3.entity_key(1).encode()
    found = [
        Record(0, 0, key, w3.json_value(1)),
        Record(0, 1, key, w3.json_value(4)),
        Record(0, 2, key, None),
        Record(1, 0, w3.entity_key(2).encode(), w3.json_value(2)),
    ]
    assert expected_table(found, {0: 2, 1: 1}, connect=False) == {
        w3.entity_key(1): w3.row(4),
        w3.entity_key(2): w3.row(2),
    }
    assert expected_table(found, {0: 3}, connect=False) == {}  # tombstoned, and partition 1 not committed


def test_stored_rows_compare_numeric_as_floats() -> None:
    row = w3.event(5)
    stored = w3.stored({**row, "price": Decimal(str(row["price"]))})
    assert stored == w3.row(5)
    assert Counter(type(v).__name__ for v in stored)["float"] == 2


def _w3_results(loom: float, peer: float) -> dict[str, Any]:
    rep = {"load_1m_before": 4.0, "rows": 90, "expected_rows": 90, "correct": True}
    runs = {"B4_tuned": [{**rep, "msgs_per_s": loom}], "B6_tuned": [{**rep, "msgs_per_s": peer, "correct": False}]}
    return {
        "mode": "full",
        "started_at": "2026-11-29T12:00:00+00:00",
        "command": "python -m loom_bench --workload W3",
        "w3": {
            "messages": 400_000,
            "keys": w3.KEYS,
            "window": {"warmup_s": 2.0, "seconds": 10.0},
            "load_average_at_end": [4.5, 4.0, 3.0],
            "runs": runs,
            "systems": {v: aggregate(r) for v, r in runs.items()},
            "ratio": loom / peer,
        },
    }


def test_w3_section_shows_rates_correct_runs_ratio_and_verdict() -> None:
    text = report.w3_section(_w3_results(60_000.0, 25_000.0), "bench-results/x.json")
    assert "| B4_tuned | 60\u202f000 (60\u202f000–60\u202f000, 0 %) | 1 / 1 | 90 / 90 |" in text
    assert "| B6_tuned | 25\u202f000 (25\u202f000–25\u202f000, 0 %) | 0 / 1 |" in text
    assert "**2.40×** (target ≥ 3×: **not met**)" in text and "2-core machine" in text
    assert "(target ≥ 3×: met)" in report.w3_section(_w3_results(90_000.0, 25_000.0), "x")
    assert "PostgreSQL's limit" not in text  # results from before the limit was measured


def test_w3_section_sets_the_ratio_against_postgresqls_own_limit() -> None:
    results = _w3_results(60_000.0, 25_000.0)
    results["w3"]["limit"] = {
        "variant": "upsert_only_2conn",
        "msgs_per_s": 66_000.0,
        "loom_share": 60_000 / 66_000,
        "peer_ceiling": 66_000 / 25_000,
    }
    text = report.w3_section(results, "x")
    assert "PostgreSQL's limit for these statements: **66\u202f000 msgs/s**" in text
    assert "2 connections" in text and "loom-ray reaches 91 % of it" in text
    assert "the most loom-ray could be is **2.64×** Kafka Connect's rate" in text
    assert "(one window)" in text  # results from before it was measured per repetition


def test_the_limit_is_the_median_of_its_windows_with_their_spread() -> None:
    windows = [
        {"variant": "upsert_only_2conn", "msgs_per_s": r, "correct": True} for r in (62_000.0, 66_000.0, 70_000.0)
    ]
    limit = summary.limit_windows(windows)
    assert (limit["msgs_per_s"], limit["min"], limit["max"]) == (66_000.0, 62_000.0, 70_000.0)
    assert limit["spread"] == pytest.approx(8_000 / 66_000) and limit["correct"] and not limit["unsteady"]
    assert not summary.limit_windows([*windows, {"variant": "upsert_only_2conn", "msgs_per_s": 1.0, "correct": False}])[
        "correct"
    ]
    results = _w3_results(60_000.0, 25_000.0)
    results["w3"]["limit"] = {**limit, "loom_share": 60_000 / 66_000, "peer_ceiling": 66_000 / 25_000}
    text = report.w3_section(results, "x")
    assert (
        "**66\u202f000 msgs/s** (median of 3 windows, one per repetition: 62\u202f000–70\u202f000, spread 12 %)" in text
    )


_KINDS = {"text": "text", "bigint": "int8", "integer": "int4", "numeric": "numeric", "double precision": "float8"}


def test_the_limit_stages_what_loom_rays_route_stages() -> None:
    route = w3_limit.route("t")
    kinds = {**_KINDS, "boolean": "bool", "timestamptz": "timestamptz"}
    plan = convert.plan(route, shape({c: pg(kinds[t]) for c, t, _ in w3.COLUMNS}, keys=[("id",)]))
    update, gone = w3_limit.staged(plan, "t", 3), w3_limit.staged(plan, "t", 50)
    assert w3.is_tombstone(50) and not w3.is_tombstone(3)
    assert update.delete is False and update.values[:2] == (w3.entity_key(3), 3)
    assert len(update.values) == len(route.columns)
    assert gone.delete is True and gone.values[0] == w3.entity_key(50) and set(gone.values[1:]) == {None}
    split = w3_limit.shares([w3_limit.staged(plan, "t", seq) for seq in range(2000)], 2)
    assert sum(map(len, split)) == 2000 and all(split)
    assert not {r.values[0] for r in split[0]} & {r.values[0] for r in split[1]}  # a key on one connection only
    records = [w3_limit.staged(plan, "t", seq) for seq in range(100)]
    assert w3_limit.expected_rows(records) == len({w3.entity_key(s) for s in range(100)}) - 1  # seq 50 deletes
