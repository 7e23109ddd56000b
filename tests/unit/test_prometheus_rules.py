"""kuberay/prometheus-rules.yaml: Prometheus's own promtool checks the rules and evaluates them on synthetic
series (a stalled partition, a partition that keeps committing, lag that grows, a blocked sink, a parked partition)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

RULES = Path(__file__).resolve().parents[2] / "kuberay" / "prometheus-rules.yaml"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: scripts/bootstrap.sh installs Debian's prometheus package"
)


def _lag(partition: int, values: str) -> dict[str, str]:
    return {"series": f'ray_loom_partition_lag{{consumer="c1",topic="t",partition="{partition}"}}', "values": values}


def _messages(partition: int, values: str) -> dict[str, str]:
    return {"series": f'ray_loom_messages_total{{consumer="c1",topic="t",partition="{partition}"}}', "values": values}


CASES: list[dict[str, Any]] = [
    {
        # Partition 0: lag 50, its counter flat for 30 minutes; partition 1: lag 50, committing all along;
        # partition 2: lag 20 and never committed anything (no counter at all).
        "interval": "1m",
        "input_series": [
            _lag(0, "50x30"),
            _messages(0, "100x30"),
            _lag(1, "50x30"),
            _messages(1, "0+100x30"),
            _lag(2, "20x30"),
        ],
        "alert_rule_test": [
            {
                "eval_time": "25m",
                "alertname": "LoomPartitionStalled",
                "exp_alerts": [
                    {"exp_labels": {"severity": "critical", "topic": "t", "partition": "0"}},
                    {"exp_labels": {"severity": "critical", "topic": "t", "partition": "2"}},
                ],
            },
            {"eval_time": "5m", "alertname": "LoomPartitionStalled", "exp_alerts": []},  # not for 10 minutes yet
            {"eval_time": "25m", "alertname": "LoomLagGrowing", "exp_alerts": []},  # lag is steady
        ],
    },
    {
        # Lag of topic t grows by 10 a minute while the partition keeps committing: growing, not stalled.
        "interval": "1m",
        "input_series": [_lag(0, "0+10x60"), _messages(0, "0+100x60")],
        "alert_rule_test": [
            {
                "eval_time": "45m",
                "alertname": "LoomLagGrowing",
                "exp_alerts": [{"exp_labels": {"severity": "warning", "topic": "t"}}],
            },
            {"eval_time": "45m", "alertname": "LoomPartitionStalled", "exp_alerts": []},
        ],
    },
    {
        # Lag that falls back to zero does not alert.
        "interval": "1m",
        "input_series": [_lag(0, "0+10x20 200-10x20 0x20"), _messages(0, "0+100x60")],
        "alert_rule_test": [{"eval_time": "60m", "alertname": "LoomLagGrowing", "exp_alerts": []}],
    },
    {
        "interval": "1m",
        "input_series": [
            {"series": 'ray_loom_sink_blocked{consumer="c1",sqlstate="42501"}', "values": "1x10"},
            {"series": 'ray_loom_sink_blocked{consumer="c2",sqlstate="42804"}', "values": "0x10"},
        ],
        "alert_rule_test": [
            {
                "eval_time": "8m",
                "alertname": "LoomSinkBlocked",
                "exp_alerts": [{"exp_labels": {"severity": "critical", "consumer": "c1", "sqlstate": "42501"}}],
            }
        ],
    },
    {
        # Partition 3 parked from minute 2 on; partition 1 never; partition 5 parked for 5 minutes, then unparked.
        "interval": "1m",
        "input_series": [
            {"series": 'ray_loom_partition_parked{topic="t",partition="3"}', "values": "0 0 1x20"},
            {"series": 'ray_loom_partition_parked{topic="t",partition="1"}', "values": "0x22"},
            {"series": 'ray_loom_partition_parked{topic="t",partition="5"}', "values": "1x5 0x17"},
        ],
        "alert_rule_test": [
            {
                "eval_time": "10m",
                "alertname": "LoomPartitionParked",
                "exp_alerts": [{"exp_labels": {"severity": "critical", "topic": "t", "partition": "3"}}],
            },
            {
                # Partition 5 has been parked for 2 minutes; partition 3 only since now (pending for 1 minute).
                "eval_time": "2m",
                "alertname": "LoomPartitionParked",
                "exp_alerts": [{"exp_labels": {"severity": "critical", "topic": "t", "partition": "5"}}],
            },
        ],
    },
]


def _rule_file(tmp_path: Path, annotations: bool = True) -> Path:
    """The manifest's ``spec.groups`` as a plain rule file; without ``annotations``, alerts compare by labels."""
    manifest = yaml.safe_load(RULES.read_text())
    assert manifest["kind"] == "PrometheusRule" and manifest["apiVersion"] == "monitoring.coreos.com/v1"
    groups = manifest["spec"]["groups"]
    if not annotations:
        for group in groups:
            for rule in group["rules"]:
                rule.pop("annotations", None)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    return path


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


def test_the_rules_are_valid_prometheus_rules(tmp_path: Path) -> None:
    check = _promtool("check", "rules", str(_rule_file(tmp_path)))
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_rules_alert_on_a_stalled_partition_growing_lag_a_blocked_sink_and_a_parked_partition(
    tmp_path: Path,
) -> None:
    rules = _rule_file(tmp_path, annotations=False)
    tests = tmp_path / "tests.yaml"
    tests.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": CASES}))
    result = _promtool("test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
