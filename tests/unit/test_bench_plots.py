"""The benchmark's plots render from a small results JSON (Agg backend, no display, no services)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loom_bench import plots

RESULTS: dict[str, Any] = json.loads(
    """{
  "mode": "full",
  "workloads": {
    "W1": {
      "messages": 2000000, "size": 200,
      "systems": {
        "B0": {"variant": "B0", "msgs_per_s": 300000.0, "min": 290000.0, "max": 310000.0},
        "B2": null,
        "B4_tuned": {"variant": "B4_tuned", "msgs_per_s": 90000.0, "min": 80000.0, "max": 99000.0,
                     "live": {"levels": {"25": {"p50_ms": 150.0, "p90_ms": 300.0, "p99_ms": 600.0},
                                         "50": {"p50_ms": 400.0, "p90_ms": 900.0, "p99_ms": 3000.0}}}},
        "B6_tuned": {"variant": "B6_tuned", "msgs_per_s": null, "min": null, "max": null}
      }
    },
    "W2": {
      "messages": 600000, "size": 2048,
      "systems": {"B3": {"variant": "B3_ci05_2p", "msgs_per_s": 9000.0, "min": 8000.0, "max": 9500.0}}
    }
  }
}"""
)


def test_points_take_systems_with_a_rate_and_their_spread() -> None:
    points = plots.throughput_points(RESULTS["workloads"]["W1"])
    assert points == [("B0", 300000.0, 290000.0, 310000.0), ("B4_tuned", 90000.0, 80000.0, 99000.0)]
    assert plots.throughput_points(RESULTS["workloads"]["W2"])[0][0] == "B3\nB3_ci05_2p"


def test_latency_series_per_load_level_in_order() -> None:
    series = plots.latency_series(RESULTS["workloads"]["W1"])
    assert list(series) == ["B4_tuned"]
    assert [load for load, _ in series["B4_tuned"]] == [25, 50]
    assert series["B4_tuned"][1][1]["p99_ms"] == 3000.0


def test_render_all_writes_one_png_per_workload(tmp_path: Path) -> None:
    found = plots.render_all(RESULTS, tmp_path)
    assert set(found) == {"W1", "W2"}
    for path in found.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert found["W1"].name == "full-w1.png"
    assert found["W1"].stat().st_size > found["W2"].stat().st_size  # two panels against one
