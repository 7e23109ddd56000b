"""W4 at a tiny size through the harness: loom-ray's insert route reads W1's records as Avro through the real
Schema Registry (the Protobuf variant is left out here: its decoding is tests/integration/test_formats.py's), Kafka
Connect's Debezium JDBC sink reads the Avro topic through Apicurio's Kafka
Connect converter from the same registry, and each run's table holds exactly one row per committed offset, each
the record at its coordinates; PostgreSQL's own limit for the rows is measured; the report section renders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from loom_bench import fetch
from tests.support.services import ROOT, Endpoints

MESSAGES = 3000


def test_w4_every_system_writes_exactly_the_committed_records(
    endpoints: Endpoints, schema_registry: str, tmp_path: Path
) -> None:
    fetch.ensure()
    fetch.ensure_converter()
    run = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    env.update(
        {
            "LOOM_KAFKA_BOOTSTRAP_SERVERS": endpoints.kafka,
            "LOOM_DB_DSN": endpoints.dsn,
            "LOOM_SCHEMA_REGISTRY_URL": schema_registry,
            "PYTHONPATH": str(ROOT),
        }
    )
    command = [sys.executable, "-m", "loom_bench", "--smoke", "--workload", "W4", "--messages", str(MESSAGES)]
    command += ["--database", f"loom_bench_w4_{run}", "--drop-database", "--timeout", "90"]
    command += ["--topic-prefix", f"w4-{run}", "--output-dir", str(tmp_path), "--systems", "B4_tuned,B6_tuned"]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]

    (found,) = tmp_path.glob("*-smoke-w4.json")
    results = json.loads(found.read_text())["w4"]
    limit = results["limit"]  # PostgreSQL alone copying the same rows, a window per repetition
    (window,) = limit["windows"]
    assert window["rows"] >= MESSAGES and limit["msgs_per_s"] == window["msgs_per_s"] > 0, limit
    assert set(results["runs"]) == {"B4_tuned", "B6_tuned"}
    for variant, (rep,) in results["runs"].items():
        assert "error" not in rep, rep
        assert rep["consumed"] == rep["rows"] == MESSAGES, variant
        assert rep["correct"] and rep["wrong_rows"] == rep["lost"] == rep["extra"] == 0, rep
        if rep.get("msgs_per_s") is not None:  # a rate, and the CPU of each group over its window
            assert {"cpu_s_per_million", "cpu_s_per_million_pg", "cpu_s_per_million_kafka"} <= set(rep), rep
    assert "| B6_tuned |" in (tmp_path / "W4.md").read_text()
