"""The coordinator scale benchmark end to end at a tiny size: every field written, the resize check held."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from tests.support.services import ROOT, Endpoints

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


def test_scale_bench_writes_every_field_and_owns_each_partition_once(endpoints: Endpoints, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    env.update({"LOOM_KAFKA_BOOTSTRAP_SERVERS": endpoints.kafka, "LOOM_DB_DSN": endpoints.dsn, "PYTHONPATH": str(ROOT)})
    command = [sys.executable, "-m", "loom_bench.scale", "--partitions", "20", "--per-topic", "10"]
    command += ["--handles", "5", "--rounds", "3", "--topic-prefix", f"scale-smoke-{uuid.uuid4().hex[:8]}"]
    command += ["--output-dir", str(tmp_path)]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]

    (path,) = tmp_path.glob("scale-*.json")
    results = json.loads(path.read_text())
    assert results["failed"] is None
    (size,) = results["sizes"]
    assert SIZE_FIELDS <= size.keys()
    assert (size["partitions"], size["topics"], len(size["rounds"])) == (20, 2, 3)
    assert PER_ROUND <= size["per_round"].keys()
    assert size["resize"]["owned_once"] and size["resize"]["owners"] == 3
    assert [step["to"] for step in size["resize"]["steps"]] == [3, 10, 3]
    assert {t["target"] for t in results["targets"]} >= {"steady round <= 1 s"}
    assert "| 20 |" in done.stdout
