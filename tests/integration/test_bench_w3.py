"""W3 at a tiny size through the harness: loom-ray's upsert route and Kafka Connect's Debezium JDBC sink in
upsert mode drain the same keyed records (repeated keys, tombstones) on the real broker and PostgreSQL, and
each table is checked against the last-writer-wins fold of the topic; PostgreSQL's own limit for the route's
statements leaves the same fold; the report section renders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from loom_bench import fetch, w3
from tests.support.services import ROOT, Endpoints

MESSAGES = 3000


def test_w3_both_systems_leave_the_fold_of_the_topic(endpoints: Endpoints, tmp_path: Path) -> None:
    fetch.ensure()
    run = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    env.update({"LOOM_KAFKA_BOOTSTRAP_SERVERS": endpoints.kafka, "LOOM_DB_DSN": endpoints.dsn, "PYTHONPATH": str(ROOT)})
    command = [sys.executable, "-m", "loom_bench", "--smoke", "--workload", "W3", "--messages", str(MESSAGES)]
    command += ["--database", f"loom_bench_w3_{run}", "--drop-database", "--timeout", "60"]
    command += ["--topic-prefix", f"w3-{run}", "--output-dir", str(tmp_path)]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]

    (found,) = tmp_path.glob("*-smoke-w3.json")
    results = json.loads(found.read_text())["w3"]
    runs = results["runs"]
    limit = results["limit"]  # PostgreSQL alone applying the route's statements, a window per repetition
    (window,) = limit["windows"]
    assert limit["correct"] and window["applied"] >= MESSAGES and limit["msgs_per_s"] == window["msgs_per_s"] > 0
    keys = {w3.entity_key(seq) for seq in range(MESSAGES)}
    for variant in ("B4_tuned", "B6_tuned"):
        (rep,) = runs[variant]
        assert "error" not in rep, rep
        assert rep["consumed"] == MESSAGES, variant
        assert rep["correct"] and rep["wrong_rows"] == 0, rep
        assert rep["rows"] == rep["expected_rows"] < len(keys), variant  # tombstones removed some keys
    assert "| B6_tuned |" in (tmp_path / "W3.md").read_text()
