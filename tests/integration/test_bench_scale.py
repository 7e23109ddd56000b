"""The coordinator scale benchmark end to end at a tiny size: every field written, the resize check held, the
plots rendered; with Ray actor handles and the pipeline throughput drains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tests.support.services import ROOT, Endpoints  # noqa: E402

SIZE_FIELDS = {
    "partitions",
    "topics",
    "handles",
    "topic_create_s",
    "topic_leaders_s",
    "first_assignment_s",
    "first_assignment_rounds",
    "first_assignment_requests",
    "round_median_s",
    "round_max_s",
    "per_round",
    "rounds",
    "rss_mb",
    "reclaim_s",
    "reclaimed_partitions",
    "resize",
}
PER_ROUND = {"admin_requests", "statements", "transactions", "calls_discover", "calls_high_watermarks"}


def _run(endpoints: Endpoints, output: Path, *args: str, timeout_s: float) -> tuple[dict[str, Any], str]:
    """``python -m loom_bench.scale`` at 20 partitions and 5 handles with ``args``; its JSON and stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    env.update({"LOOM_KAFKA_BOOTSTRAP_SERVERS": endpoints.kafka, "LOOM_DB_DSN": endpoints.dsn, "PYTHONPATH": str(ROOT)})
    command = [sys.executable, "-m", "loom_bench.scale", "--partitions", "20", "--per-topic", "10"]
    command += ["--handles", "5", "--rounds", "3", "--topic-prefix", f"scale-smoke-{uuid.uuid4().hex[:8]}"]
    command += ["--output-dir", str(output), *args]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = output.glob("scale-*.json")
    return json.loads(path.read_text()), done.stdout


def _assert_sizes(results: dict[str, Any], stdout: str) -> None:
    assert results["failed"] is None
    (size,) = results["sizes"]
    assert SIZE_FIELDS <= size.keys()
    assert (size["partitions"], size["topics"], len(size["rounds"])) == (20, 2, 3)
    assert PER_ROUND <= size["per_round"].keys()
    assert size["resize"]["owned_once"] and size["resize"]["owners"] == 3
    assert [step["to"] for step in size["resize"]["steps"]] == [3, 10, 3]
    assert size["reclaimed_partitions"] == 4  # 20 over 5 handles: the victim held 4
    assert {t["target"] for t in results["targets"]} >= {"steady round <= 1 s"}
    assert "| 20 |" in stdout


def _assert_png(path: Path) -> None:
    image = plt.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0  # a picture, not a blank


def test_scale_bench_writes_every_field_and_owns_each_partition_once(endpoints: Endpoints, tmp_path: Path) -> None:
    results, stdout = _run(endpoints, tmp_path, "--throughput", "", timeout_s=120)
    _assert_sizes(results, stdout)
    assert results["settings"]["handle_kind"] == "local" and "throughput" not in results
    (png,) = tmp_path.glob("scale-*.png")
    assert png.name.startswith("scale-coordinator-")
    _assert_png(png)


def test_scale_bench_with_ray_actor_handles_and_pipeline_throughput(endpoints: Endpoints, tmp_path: Path) -> None:
    """Handles as num_cpus=0 Ray actors (the reclaim kills one for real), then two W1 drains with the real
    pipeline, every message accounted for, and both plots."""
    args = ["--handle-kind", "ray", "--throughput", "4,8", "--throughput-messages", "3000"]
    results, stdout = _run(endpoints, tmp_path, *args, timeout_s=900)
    _assert_sizes(results, stdout)
    assert results["settings"]["handle_kind"] == "ray"
    runs = results["throughput"]["runs"]
    assert [r["partitions"] for r in runs] == [4, 8]
    for run in runs:
        assert run["error"] is None and run["msgs_per_s"] > 0, run
        assert (run["lost"], run["duplicated"]) == (0, 0), run
        assert run["consumer_rss_mb"] > 0 and run["consumer_rss_kb_per_partition"] > 0, run
    assert 0 < results["throughput"]["largest_of_best"] <= 1
    assert "| 8 | 3,000 |" in stdout
    pngs = sorted(p.name.split("-")[1] for p in tmp_path.glob("scale-*.png"))
    assert pngs == ["coordinator", "throughput"]
    for png in tmp_path.glob("scale-*.png"):
        _assert_png(png)
