"""The benchmark harness end to end at a tiny size: B0, B1 and B5 on one workload (shape and exactness only),
and B5 over W1 with 1 % malformed input (every offset a row or a dead letter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from tests.support.services import ROOT, Endpoints

FIELDS = {"msgs_per_s", "cpu_s_per_million", "peak_rss_mb", "lost", "duplicated", "p50_ms", "p99_ms"}


def test_smoke_run_writes_results_with_every_offset_once(endpoints: Endpoints, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    env.update({"LOOM_KAFKA_BOOTSTRAP_SERVERS": endpoints.kafka, "LOOM_DB_DSN": endpoints.dsn, "PYTHONPATH": str(ROOT)})
    command = [sys.executable, "-m", "loom_bench", "--smoke", "--workload", "W1", "--systems", "B0,B1,B5"]
    command += ["--messages", "5000", "--database", f"loom_bench_smoke_{run}", "--drop-database"]
    command += ["--topic-prefix", f"smoke-{run}", "--output-dir", str(tmp_path), "--markdown", str(tmp_path / "B.md")]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads((tmp_path / "latest.json").read_text())
    assert {"machine", "versions", "workloads", "commands"} <= results.keys()
    workload = results["workloads"]["W1"]
    assert workload["messages"] == 5000
    systems = workload["systems"]
    assert set(systems) == {"B0", "B1", "B2", "B3", "B4", "B4_tuned", "B5", "B6", "B6_tuned"}
    for name in ("B0", "B1", "B5"):
        assert FIELDS <= systems[name].keys(), name
    assert all(systems[name] is None for name in ("B2", "B3", "B4", "B4_tuned", "B6", "B6_tuned"))
    for name in ("B1", "B5"):
        assert (systems[name]["lost"], systems[name]["duplicated"]) == (0, 0), name
    for variant in ("B1_1conn", "B1_2conn", "B5_1p", "B5_2p"):
        assert workload["runs"][variant][0]["rows"] == 5000, variant
    bad = results["malformed"]
    assert (bad["messages"], set(bad["systems"])) == (5000, {"B5"})  # the limits B0 and B1 are left out
    core = bad["systems"]["B5"]
    assert (core["rows"] + core["dead_letters"], core["accounted"], core["survives"]) == (5000, 5000, True)
    assert core["dead_letters"] == 50
    assert list(tmp_path.glob("*-smoke.json")) and "## W1" in (tmp_path / "B.md").read_text()
