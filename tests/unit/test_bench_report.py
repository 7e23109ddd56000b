"""The benchmark's arithmetic and report, from fixed numbers (no services, no Ray)."""

from __future__ import annotations

from typing import Any

import pytest

from loom_bench import report, summary
from loom_bench.config import Window
from loom_bench.launch import malformed_variants, variants
from loom_bench.live import cores_busy
from loom_bench.measure import Series
from loom_bench.runner import cpu_split, short_window
from loom_bench.stats import (
    drain_rate,
    interpolate,
    median_or_none,
    per_million,
    ratio,
    relative_spread,
    shared_limit,
    spread,
    window_delta,
    windowed,
)


def test_drain_rate_leaves_out_the_first_transaction() -> None:
    # 300 rows, first commit at t=10 holds 100 of them: (300 - 100) / (12 - 10) = 100 rows/s
    found = drain_rate([(12.0, 100), (10.0, 100), (11.0, 100)])
    assert found is not None
    assert (found.rows, found.first_commit, found.last_commit) == (300, 10.0, 12.0)
    assert found.msgs_per_s == pytest.approx(100.0)
    assert found.seconds == pytest.approx(2.0)


def test_steady_rate_uses_the_10_to_90_percent_window() -> None:
    # 10 transactions of 10 rows, one per second, then a slow tail: 10 % is reached at t=0 (10 rows), 90 % at
    # t=8 (90 rows): (90 - 10) / 8 = 10 rows/s, while the first-to-last rate includes the tail.
    commits = [(float(t), 10) for t in range(9)] + [(100.0, 10)]
    found = drain_rate(commits)
    assert found is not None
    assert found.steady_msgs_per_s == pytest.approx(10.0)
    assert found.msgs_per_s == pytest.approx(90 / 100)


@pytest.mark.parametrize("commits", [[], [(5.0, 1000)]])
def test_no_interval_means_no_rate(commits: list[tuple[float, int]]) -> None:
    found = drain_rate(commits)
    assert found is None or found.msgs_per_s is None


def test_spread_and_median_skip_missing_values() -> None:
    found = spread([3.0, None, 1.0, 2.0])
    assert found is not None and found.as_dict() == {"median": 2.0, "min": 1.0, "max": 3.0}
    assert spread([None]) is None
    assert median_or_none([1.0, 2.0, 10.0, 11.0]) == pytest.approx(6.0)


def test_shared_limit_combines_both_stages() -> None:
    # performance.md: B0 = 400 k, B1 = 300 k -> 1 / (1/400k + 1/300k) = 171 428.6
    assert shared_limit(400_000, 300_000) == pytest.approx(171_428.571, rel=1e-6)
    assert shared_limit(None, 300_000) is None
    assert shared_limit(0.0, 300_000) is None


def test_ratio_and_per_million() -> None:
    assert ratio(90_000, 3_000) == pytest.approx(30.0)
    assert ratio(None, 3_000) is None and ratio(1.0, 0.0) is None and ratio(1.0, None) is None
    assert per_million(12.5, 2_500_000) == pytest.approx(5.0)
    assert per_million(None, 10) is None and per_million(1.0, 0) is None


def test_window_delta_interpolates_cumulative_series() -> None:
    series = [(0.0, 0.0), (1.0, 10.0), (2.0, 30.0)]
    assert interpolate(series, 1.5) == pytest.approx(20.0)
    assert interpolate(series, -1.0) == 0.0 and interpolate(series, 9.0) == 30.0
    assert window_delta(series, 0.5, 1.5) == pytest.approx(15.0)
    assert window_delta([], 0.0, 1.0) is None


def test_variants_expand_groups() -> None:
    assert variants(["B1", "B5"]) == ["B1_1conn", "B1_2conn", "B5_1p", "B5_2p"]
    assert variants(["B3_ci05_2p", "B0"]) == ["B0", "B3_ci05_2p"]


def _rep(rate: float | None, **extra: Any) -> dict[str, Any]:
    base = {"msgs_per_s": rate, "cpu_s_per_million": 10.0, "peak_rss_mb": 100.0, "lost": 0, "duplicated": 0}
    return {**base, **extra}


RUNS: dict[str, list[dict[str, Any]]] = {
    "B0": [_rep(400_000.0, lost=None, duplicated=None)],
    "B1_1conn": [_rep(200_000.0)],
    "B1_2conn": [_rep(300_000.0)],
    "B2": [_rep(3_000.0, lost=None)],
    "B3_default_1p": [_rep(20_000.0)],
    "B3_ci05_2p": [_rep(30_000.0)],
    "B4": [_rep(50_000.0, peak_rss_mb=1200.0)],
    "B4_tuned": [_rep(150_000.0), _rep(140_000.0), _rep(160_000.0, peak_rss_mb=1400.0)],
    "B5_2p": [_rep(160_000.0)],
    "B6": [_rep(10_000.0)],
    "B6_tuned": [_rep(40_000.0), _rep(60_000.0), _rep(50_000.0)],
}
LIVE = {
    "B4_tuned": {
        "levels": {"25": {"p99_ms": 300.0}, "50": {"p50_ms": 120.0, "p99_ms": 800.0}, "80": {"p99_ms": 2500.0}}
    }
}


def test_systems_table_picks_best_variants_and_computes_ratios() -> None:
    table = summary.systems_table(RUNS, LIVE)
    systems, limits = table["systems"], table["limits"]
    assert systems["B1"]["variant"] == "B1_2conn" and systems["B3"]["variant"] == "B3_ci05_2p"
    assert limits["min"] == 300_000.0
    assert limits["L_shared"] == pytest.approx(171_428.571, rel=1e-6)
    loom = systems["B4_tuned"]
    assert (loom["msgs_per_s"], loom["min"], loom["max"], loom["reps"]) == (150_000.0, 140_000.0, 160_000.0, 3)
    assert loom["efficiency"] == pytest.approx(0.5)
    assert loom["efficiency_shared"] == pytest.approx(150_000 / 171_428.571, rel=1e-6)
    assert loom["x_b2"] == pytest.approx(50.0) and loom["x_b3"] == pytest.approx(5.0)
    assert (loom["p50_ms"], loom["p99_ms"], loom["peak_rss_mb"]) == (120.0, 800.0, 1400.0)
    assert systems["B0"]["lost"] is None and systems["B2"]["p99_ms"] is None


def test_targets_met_and_not_met() -> None:
    found = {t["target"]: t for t in summary.targets("W1", summary.systems_table(RUNS, LIVE))}
    assert found["throughput >= 3x B6_tuned (Kafka Connect JDBC sink)"]["value"] == pytest.approx(3.0)  # 150k / 50k
    assert found["throughput >= 3x B6_tuned (Kafka Connect JDBC sink)"]["met"] is True
    assert found["throughput >= 3x best quixstreams (B3)"]["met"] is True  # 150k / 30k
    assert found["throughput >= 85 % of L_shared"]["met"] is True  # 0.875
    assert found["B4_tuned p99 <= 1 s at 50 % load (ms)"]["met"] is True
    assert found["B4_tuned p99 <= 1 s at 80 % load (ms)"]["met"] is False
    assert found["pipeline peak RSS <= 1.5 GiB (MiB, B4 and B4_tuned)"]["value"] == 1400.0
    assert found["B4_tuned >= 0.9 x B5 (Ray's cost)"]["value"] == pytest.approx(150 / 160)
    w2 = {t["target"] for t in summary.targets("W2", summary.systems_table(RUNS, {}))}
    assert "throughput >= 2x B6_tuned (Kafka Connect JDBC sink)" in w2


def test_loom_ray_is_the_faster_of_b4_and_b4_tuned() -> None:
    runs = {**RUNS, "B4": [_rep(200_000.0)]}
    found = {t["target"]: t for t in summary.targets("W1", summary.systems_table(runs, LIVE))}
    assert found["throughput >= 3x B6_tuned (Kafka Connect JDBC sink)"]["value"] == pytest.approx(4.0)
    assert summary.loom_row(summary.systems_table(runs, LIVE)["systems"])["name"] == "B4"


def test_spread_over_15_percent_is_flagged() -> None:
    variants_ = summary.systems_table(RUNS, LIVE)["variants"]
    assert variants_["B4_tuned"]["spread"] == pytest.approx(20_000 / 150_000)  # 13 %: holds still
    assert variants_["B4_tuned"]["unsteady"] is False
    assert variants_["B6_tuned"]["spread"] == pytest.approx(20_000 / 50_000)  # 40 %
    assert variants_["B6_tuned"]["unsteady"] is True
    assert report.with_spread(variants_["B6_tuned"]).endswith("40 %) ⚠")
    assert "⚠" not in report.with_spread(variants_["B4_tuned"])


def test_windowed_rate_times_only_the_window_after_the_warm_up() -> None:
    # first commit at t=100; warm-up 2 s, window 10 s: commits at 102..112 count, the slow start and the tail not.
    commits = [(100.0, 5), (101.0, 5)] + [(100.0 + t, 1000) for t in range(2, 16)] + [(120.0, 7)]
    found = windowed(commits, 2.0, 10.0)
    assert found is not None
    assert (found.first_commit, found.last_commit, found.seconds) == (102.0, 112.0, 10.0)
    assert found.msgs_per_s == pytest.approx(1000.0)  # (11 000 - 1 000) / 10


def test_windowed_rate_ends_on_a_commit_at_least_the_window_later() -> None:
    # sparse commits: 103, 107, 111.5, 114 -> the window closes on 114 (the first one >= 103 + 10 s)
    commits = [(100.0, 10), (103.0, 300), (107.0, 400), (111.5, 450), (114.0, 220), (118.0, 400)]
    found = windowed(commits, 2.0, 10.0)
    assert found is not None and (found.first_commit, found.last_commit) == (103.0, 114.0)
    assert found.msgs_per_s == pytest.approx((400 + 450 + 220) / 11.0)
    short = windowed(commits[:4], 2.0, 10.0)  # stopped before the window could close: up to the last commit
    assert short is not None and short.seconds == pytest.approx(8.5)


def test_windowed_rate_falls_back_to_the_whole_drain_when_the_window_is_empty() -> None:
    commits = [(100.0, 100), (100.5, 100)]  # drained before the warm-up ended
    found = windowed(commits, 2.0, 10.0)
    assert found is not None and found.seconds == pytest.approx(0.5) and found.msgs_per_s == pytest.approx(200.0)
    assert windowed([], 2.0, 10.0) is None


def test_relative_spread() -> None:
    assert relative_spread(100.0, 90.0, 120.0) == pytest.approx(0.3)
    assert relative_spread(None, 1.0, 2.0) is None and relative_spread(0.0, 1.0, 2.0) is None


def test_default_set_and_malformed_variants() -> None:
    chosen = variants(["all"])
    assert "B6" in chosen and "B6_tuned" in chosen and "B1_1conn" not in chosen
    assert malformed_variants(chosen) == [
        "B0",
        "B1_2conn",
        "B2",
        "B3_ci05_2p",
        "B4",
        "B4_tuned",
        "B5_2p",
        "B6",
        "B6_tuned",
    ]


def test_unknown_values_are_not_judged() -> None:
    found = summary.targets("W2", summary.systems_table({"B4_tuned": [_rep(None)]}, {}))
    assert all(t["met"] is None for t in found if t["target"] != "pipeline peak RSS <= 1.5 GiB (MiB, B4 and B4_tuned)")


def test_report_renders_tables_targets_and_commands() -> None:
    table = summary.systems_table(RUNS, LIVE)
    results = {
        "mode": "quick",
        "started_at": "2026-01-01T00:00:00+00:00",
        "duration_s": 600.0,
        "commands": {"run": "python -m loom_bench --quick"},
        "config": {"B4_tuned": {"LOOM_KAFKA_BATCH_SIZE": "5000"}},
        "machine": {"cores": 2},
        "postgres": {"server_version": "15.18"},
        "versions": {"ray": "2.60.0"},
        "workloads": {
            "W1": {"messages": 200_000, "size": 200, **table, "targets": summary.targets("W1", table)},
        },
    }
    text = report.render(results, "bench-results/x.json")
    assert "mode **quick**" in text and "`bench-results/x.json`" in text
    assert (
        "| B4_tuned | loom-ray, tuned config [B4_tuned] | 150\u202f000 (140\u202f000–160\u202f000, 13 %) "
        "| 50 % | 88 % |" in text
    )
    assert "L_shared = 1/(1/B0 + 1/B1) = 171\u202f429 msgs/s" in text
    assert "| W1 | B4_tuned p99 <= 1 s at 80 % load (ms) | 2500.00 | **not met** |" in text
    assert "| B6_tuned | Kafka Connect + Debezium JDBC sink" in text
    assert "**shared machine** (2 cores; work outside the run: not measured)" in text

    def with_other(cores: float) -> dict[str, Any]:
        w1 = results["workloads"]["W1"]
        variants = {name: {**row, "other_cores": cores} for name, row in w1["variants"].items()}
        return dict(results, workloads={"W1": {**w1, "variants": variants}})

    quiet = with_other(0.1)
    assert "2-core machine with nothing else running (busy CPU outside the run's processes: median 0.10" in (
        report.render(quiet, "x")
    )
    busy = with_other(1.3)
    assert "**shared machine** (2 cores; work outside the run: median 1.30 cores" in report.render(busy, "x")
    assert "**quick run: smoke figures, too short to compare systems.**" in text
    assert "| B4_tuned | 50 % |" in text and "`LOOM_KAFKA_BATCH_SIZE=5000`" in text
    assert "python -m loom_bench --quick" in text and "## What the numbers mean" in text
    assert "## Reading" not in text
    with_notes = report.render(results, "bench-results/x.json", "## Reading this run\n\nW1 is CPU-bound.\n")
    assert with_notes.index("**not met**") < with_notes.index("## Reading this run") < with_notes.index("## W1")
    with_scale = report.render(
        results, "bench-results/x.json", appendix="## Coordinator at scale\n\n10 000 partitions.\n"
    )
    assert with_scale.rstrip().endswith("## Coordinator at scale\n\n10 000 partitions.")
    assert "## Coordinator at scale" not in text


def test_malformed_table_says_who_survives() -> None:
    found = {
        "messages": 1000,
        "ratio": 0.01,
        "systems": {
            "B4_tuned": {"variant": "B4_tuned", "rows": 990, "dead_letters": 10, "accounted": 1000, "survives": True},
            "B6": {"variant": "B6", "rows": 0, "dead_letters": 0, "accounted": 0, "stopped": True, "survives": False},
        },
    }
    lines = report.malformed_table(found)
    assert "| B4_tuned | B4_tuned | 990 | 10 | 1,000 of 1,000 | no | **yes** |" in lines
    assert "| B6 | B6 | 0 | 0 | 0 of 1,000 | yes | no |" in lines
    assert report.malformed_table(None) == ["Not measured in this run."]


def test_cpu_split_per_label_inside_the_window() -> None:
    series = Series(
        pipeline_by_label=[
            (0.0, {"raylet": 0.0}),
            (1.0, {"raylet": 0.5, "ray::IDLE": 0.2}),
            (2.0, {"raylet": 1.0, "ray::Consumer": 3.0}),
            (3.0, {"raylet": 1.5, "ray::Consumer": 5.0, "dashboard.py": 0.00001}),
        ]
    )
    found = cpu_split(series.pipeline_by_label, 1.0, 3.0, 1_000_000)
    # ray::IDLE became ray::Consumer (its count fell) and dashboard.py is under 0.05 CPU-s/M: both left out
    assert found == {"raylet": 1.0, "ray::Consumer": 5.0}


def test_cpu_split_aggregates_as_medians_a_missing_label_counting_zero() -> None:
    reps = [
        _rep(1.0, cpu_split={"raylet": 2.0, "ray::Consumer": 10.0}),
        _rep(1.0, cpu_split={"ray::Consumer": 12.0}),
        _rep(1.0, cpu_split={"raylet": 4.0, "ray::Consumer": 11.0}),
        _rep(None, error="did not start"),
    ]
    assert summary.aggregate(reps)["cpu_split"] == {"ray::Consumer": 11.0, "raylet": 2.0}


def test_cpu_split_table_separates_workers_driver_and_ray() -> None:
    variants = {
        "B4_tuned": {
            "cpu_s_per_million": 10.0,
            "cpu_split": {"ray::Consumer": 6.0, "loom_ray.main": 1.0, "raylet": 2.0, "gcs_server": 1.0},
        },
        "B5_2p": {"cpu_s_per_million": 6.5, "cpu_split": {"loom_bench.systems.core": 6.5}},
        "B6_tuned": {"cpu_s_per_million": 40.0, "cpu_split": {"java": 40.0}},
    }
    lines = report.cpu_split_table({"variants": variants})
    assert lines[2] == (
        "| B4_tuned | 10.0 | 6.0 | 1.0 | 3.0 | "
        "`ray::Consumer` 6.0, `raylet` 2.0, `loom_ray.main` 1.0, `gcs_server` 1.0 |"
    )
    assert lines[3].startswith("| B5_2p | 6.5 | 6.5 | 0.0 | 0.0 |")
    assert len(lines) == 4  # Kafka Connect is neither loom-ray nor Ray-less loom-ray


def test_cores_busy_while_a_level_produces() -> None:
    series = Series(
        pipeline=[(0.0, 0.0), (10.0, 8.0)],
        postgres=[(0.0, 0.0), (10.0, 4.0)],
        kafka=[(0.0, 0.0), (10.0, 2.0)],
        box=[(0.0, 100.0), (10.0, 119.0)],
        iowait=[(0.0, 0.0), (10.0, 1.0)],
    )
    found = cores_busy(series, (5.0, 10.0), producer_cpu_s=2.5)
    assert found == {
        "pipeline": 0.8,
        "postgres": 0.4,
        "kafka": 0.2,
        "box": 1.9,
        "iowait": 0.1,
        "producer": 0.5,
        "other": 0.0,
    }
    level = {"offered_per_s": 1.0, "cores_busy": found}
    assert report.cores_cell(level) == "1.90 (0.80/0.40/0.20/0.50); I/O wait 0.10"
    assert cores_busy(Series(), (5.0, 10.0), 1.0)["other"] is None


def test_a_window_the_topic_ran_out_in_is_no_rate() -> None:
    tail = drain_rate([(100.0, 5000), (100.01, 5000), (100.02, 5000)])
    assert tail is not None and tail.msgs_per_s == pytest.approx(500_000.0)
    reason = short_window(tail, Window(2.0, 10.0))
    assert reason is not None and "ran out 0.0 s into the 10 s window" in reason
    full = drain_rate([(100.0, 5000), (105.0, 5000), (110.0, 5000)])
    assert full is not None and short_window(full, Window(2.0, 10.0)) is None
    assert short_window(tail, Window(0.0, 0.0)) is None  # a smoke run drains the whole topic: no window


def test_the_w4_section_shows_each_systems_cpu_per_million_by_group() -> None:
    rep = {"load_1m_before": 0.5, "rows": 1000, "correct": True}
    summary_of = {
        "B4_tuned": {"msgs_per_s": 60_000.0, "min": 55_000.0, "max": 65_000.0, "spread": 0.17},
        "B6_tuned": {"msgs_per_s": 50_000.0, "min": 50_000.0, "max": 50_000.0, "spread": 0.0},
    }
    summary_of["B4_tuned"].update(cpu_s_per_million=33.9, cpu_s_per_million_pg=3.4, cpu_s_per_million_kafka=2.1)
    results = {
        "mode": "full",
        "started_at": "2026-12-07T15:45:00+00:00",
        "command": "python -m loom_bench --workload W4",
        "w4": {
            "messages": 1000,
            "runs": {"B4_tuned": [rep], "B6_tuned": [rep]},
            "systems": summary_of,
            "limit": {"variant": "copy_only_2conn", "msgs_per_s": 120_000.0, "loom_share": 0.5},
            "ratio": 1.2,
            "protobuf_share": None,
            "window": {"warmup_s": 2.0, "seconds": 10.0},
            "load_average_at_end": [0.5, 0.5, 0.5],
        },
    }
    lines = report.w4_section(results, "w4.json").splitlines()
    assert "CPU-s/M pipeline / PG / Kafka" in next(line for line in lines if line.startswith("| System |"))
    (loom,) = (line for line in lines if line.startswith("| B4_tuned |"))
    assert "| 50 % | 33.9 / 3.4 / 2.1 | 1 / 1 |" in loom
    (peer,) = (line for line in lines if line.startswith("| B6_tuned |"))
    assert "| — / — / — |" in peer  # not measured is shown as such, never as 0
