"""B6 from scratch at a tiny size: fetch Kafka Connect and Debezium's JDBC sink with mvn (once per pom), run
both variants through the harness against the real broker and PostgreSQL, and check every row landed once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from loom_bench import fetch
from tests.support.services import ROOT, Endpoints

# More than one poll of B6_tuned's two tasks (max.poll.records 5000 each): a rate needs two commits or more, and
# at 3000 messages each task could take its share in one transaction (CI saw "no rate" from one commit).
MESSAGES = 12_000


def test_b6_variants_upsert_every_offset_once(endpoints: Endpoints, tmp_path: Path) -> None:
    connect_dir = fetch.ensure()
    assert any((connect_dir / "libs").glob("connect-runtime-*.jar"))
    assert (connect_dir / "plugins" / "debezium-connector-jdbc").is_dir()

    run = uuid.uuid4().hex[:8]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    env.update({"LOOM_KAFKA_BOOTSTRAP_SERVERS": endpoints.kafka, "LOOM_DB_DSN": endpoints.dsn, "PYTHONPATH": str(ROOT)})
    command = [sys.executable, "-m", "loom_bench", "--smoke", "--workload", "W1", "--systems", "B6,B6_tuned"]
    command += ["--messages", str(MESSAGES), "--database", f"loom_bench_b6_{run}", "--drop-database", "--no-malformed"]
    command += ["--timeout", "60"]
    command += ["--topic-prefix", f"b6-{run}", "--output-dir", str(tmp_path), "--markdown", str(tmp_path / "B.md")]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    workload = json.loads((tmp_path / "latest.json").read_text())["workloads"]["W1"]
    for variant in ("B6", "B6_tuned"):
        (rep,) = workload["runs"][variant]
        assert "error" not in rep, rep
        assert (rep["rows"], rep["lost"], rep["duplicated"]) == (MESSAGES, 0, 0), variant
        assert rep["peak_rss_mb"] > 50 and rep["processes"] >= 1  # the JVM was sampled
        assert workload["systems"][variant]["variant"] == variant
    assert "| B6_tuned | Kafka Connect + Debezium JDBC sink" in (tmp_path / "B.md").read_text()
