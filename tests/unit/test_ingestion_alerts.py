"""kuberay/prometheus-rules.yaml when ingestion stops, with promtool on synthetic series: the lag series gone
(a dead coordinator or head), lag health 2+ (STOP, STALL, REWIND), the head's scrape down; each fires then and
stays quiet while ingestion runs. Also: how long after its event every rule fires, as kuberay/README.md states
it, and the labels that make the Prometheus operator load the rules and scope them to loom-ray's targets.
The series carry the labels the PodMonitor gives them (podmonitor.yaml)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_prometheus_rules import PROMTOOL, _promtool, _rule_file

KUBERAY = Path(__file__).resolve().parents[2] / "kuberay"
README = KUBERAY / "README.md"
JOB = "loom/loom-ray"  # prometheus-operator: job="<namespace>/<PodMonitor name>"

pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: scripts/bootstrap.sh installs Debian's prometheus package"
)


def _lag(partition: int, values: str, job: str = JOB, topic: str = "t") -> dict[str, str]:
    labels = f'job="{job}",consumer="c1",topic="{topic}",partition="{partition}"'
    return {"series": f"ray_loom_partition_lag{{{labels}}}", "values": values}


def _health(partition: int, values: str) -> dict[str, str]:
    return {"series": f'ray_loom_lag_health{{job="{JOB}",topic="t",partition="{partition}"}}', "values": values}


def _messages(partition: int, values: str) -> dict[str, str]:
    labels = f'job="{JOB}",consumer="c1",topic="t",partition="{partition}"'
    return {"series": f"ray_loom_messages_total{{{labels}}}", "values": values}


def _up(node_type: str, pod: str, values: str) -> dict[str, str]:
    labels = f'job="{JOB}",endpoint="metrics",ray_io_node_type="{node_type}",pod="{pod}",ray_io_cluster="loom-ray"'
    return {"series": f"up{{{labels}}}", "values": values}


def _quiet(alert: str, *minutes: int) -> list[dict[str, Any]]:
    return [{"eval_time": f"{m}m", "alertname": alert, "exp_alerts": []} for m in minutes]


def _fires(alert: str, minute: int, *labels: dict[str, str]) -> dict[str, Any]:
    return {
        "eval_time": f"{minute}m",
        "alertname": alert,
        "exp_alerts": [{"exp_labels": {"severity": "critical", **found}} for found in labels],
    }


NEW_RULES = ("LoomLagAbsent", "LoomTopicLagGone", "LoomLagHealthError", "LoomHeadScrapeDown")
HEAD_POD = "loom-ray-head-x7k2p"

CASES: list[dict[str, Any]] = [
    {
        # Ingestion running for an hour: lag reported, health OK and WARN, the head scraped; a consumer pod's
        # target goes down (the autoscaler removed it), which is not the head's.
        "interval": "1m",
        "input_series": [
            _lag(0, "50x60"),
            _lag(1, "0+10x60"),
            _messages(0, "0+100x60"),
            _health(0, "0x60"),
            _health(1, "1x60"),
            _up("head", HEAD_POD, "1x60"),
            _up("worker", "loom-ray-consumers-worker-abcde", "1x20 0x40"),
        ],
        "alert_rule_test": [q for alert in NEW_RULES for q in _quiet(alert, 5, 15, 30, 45, 60)],
    },
    {
        # The coordinator dies at minute 30: its lag series stops (a staleness marker, then nothing), and with
        # it lag health. The head's scrape still answers. Another cluster's lag does not keep this quiet.
        "interval": "1m",
        "input_series": [
            _lag(0, "50x30 stale"),
            _lag(1, "20x30 stale"),
            _lag(0, "7x60", job="other/loom-ray"),
            _health(0, "0x30 stale"),
            _up("head", HEAD_POD, "1x60"),
        ],
        "alert_rule_test": [
            *_quiet("LoomLagAbsent", 30, 35, 40),
            _fires("LoomLagAbsent", 41, {"job": JOB}),
            _fires("LoomLagAbsent", 60, {"job": JOB}),
            *_quiet("LoomHeadScrapeDown", 41, 60),
            *_quiet("LoomLagHealthError", 41, 60),
        ],
    },
    {
        # Two deployments on one cluster: the one ingesting topic "b" stops at minute 30 (its coordinator's
        # series go stale), the one ingesting "t" runs on, and one of its partitions goes away at minute 40
        # (the lag of the others still names the topic). Only "b" fires, and 6 hours after its last sample
        # it is quiet again; the cluster still reports lag, so LoomLagAbsent stays quiet.
        "interval": "1m",
        "input_series": [
            _lag(0, "50x420"),
            _lag(1, "50x40 stale"),
            _lag(0, "9x30 stale", topic="b"),
            _lag(1, "9x30 stale", topic="b"),
        ],
        "alert_rule_test": [
            *_quiet("LoomTopicLagGone", 30, 35, 6 * 60 + 31),
            _fires("LoomTopicLagGone", 36, {"topic": "b"}),
            _fires("LoomTopicLagGone", 60, {"topic": "b"}),
            _fires("LoomTopicLagGone", 6 * 60 + 29, {"topic": "b"}),
            *_quiet("LoomLagAbsent", 36, 60),
        ],
    },
    {
        # Never reported (the deployment never started, or Prometheus never scraped it).
        "interval": "1m",
        "input_series": [_up("head", HEAD_POD, "1x20")],
        "alert_rule_test": [*_quiet("LoomLagAbsent", 4), _fires("LoomLagAbsent", 5, {"job": JOB})],
    },
    {
        # Partition 0 STALLs (3) from minute 31 on; partition 1 is WARN (1) all along; partition 2 reads STOP (2)
        # for 3 minutes only (a coordinator restart's first samples): only partition 0 fires, 5 minutes on.
        "interval": "1m",
        "input_series": [
            _lag(0, "50x60"),
            _lag(1, "50x60"),
            _lag(2, "50x60"),
            _health(0, "0x30 3x30"),
            _health(1, "1x60"),
            _health(2, "0x10 2x3 0x47"),
        ],
        "alert_rule_test": [
            *_quiet("LoomLagHealthError", 20, 35),
            _fires("LoomLagHealthError", 36, {"topic": "t", "partition": "0"}),
            *_quiet("LoomLagAbsent", 36, 60),
        ],
    },
    {
        # The head's metrics endpoint stops answering at minute 31 (its pod still there); a worker's target
        # was down all along.
        "interval": "1m",
        "input_series": [
            _lag(0, "50x60"),
            _up("head", HEAD_POD, "1x30 0x30"),
            _up("worker", "loom-ray-consumers-worker-abcde", "0x60"),
        ],
        "alert_rule_test": [
            *_quiet("LoomHeadScrapeDown", 30, 35),
            _fires(
                "LoomHeadScrapeDown",
                36,
                {
                    "job": JOB,
                    "endpoint": "metrics",
                    "ray_io_node_type": "head",
                    "pod": HEAD_POD,
                    "ray_io_cluster": "loom-ray",
                },
            ),
        ],
    },
]


def _run(tmp_path: Path, cases: list[dict[str, Any]]) -> None:
    rules = _rule_file(tmp_path, annotations=False)
    tests = tmp_path / "tests.yaml"
    tests.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": cases}))
    result = _promtool("test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr


def test_ingestion_stopped_alerts_fire_and_stay_quiet_while_it_runs(tmp_path: Path) -> None:
    _run(tmp_path, CASES)


# How long after its event each rule fires, with samples and evaluations one minute apart: a rule with delay D
# fires D minutes after the minute of its event, and not a minute before. (alert, input series, minute of the
# event, D) -- kuberay/README.md's Alerts table states the same events and numbers.
DELAYS: list[tuple[str, list[dict[str, str]], int, int]] = [
    # The partition's last commit at minute 30: `increase(...[10m])` is 0 from minute 40 (the window no longer
    # holds an increase), then `for: 10m`.
    ("LoomPartitionStalled", [_lag(0, "50x80"), _messages(0, "0+100x30 3000x50")], 30, 20),
    # Lag flat, then rising from minute 31: the 15-minute trend (`deriv` over [15m:1m]) turns up at once,
    # then `for: 15m`.
    ("LoomLagGrowing", [_lag(0, "50x30 60+10x50"), _messages(0, "0+100x80")], 31, 15),
    # The gauge at 1 from minute 31, then `for: 5m`.
    (
        "LoomSinkBlocked",
        [{"series": 'ray_loom_sink_blocked{consumer="c1",sqlstate="42501"}', "values": "0x30 1x30"}],
        31,
        5,
    ),
    # The partition parked at minute 31 (the gauge at 1), then `for: 1m`.
    (
        "LoomPartitionParked",
        [{"series": 'ray_loom_partition_parked{topic="t",partition="0"}', "values": "0x30 1x30"}],
        31,
        1,
    ),
    # The first sample missing at minute 31: the 5-minute `absent_over_time` window, then `for: 5m`.
    ("LoomLagAbsent", [_lag(0, "50x30 stale")], 31, 10),
    # Topic "b"'s first sample missing at minute 31 while "t" is reported: at once, then `for: 5m`.
    ("LoomTopicLagGone", [_lag(0, "50x60"), _lag(0, "9x30 stale", topic="b")], 31, 5),
    # The gauge at 3 (STALL) from minute 31, then `for: 5m`.
    ("LoomLagHealthError", [_lag(0, "50x60"), _health(0, "0x30 3x30")], 31, 5),
    # The first failed scrape at minute 31, then `for: 5m`.
    ("LoomHeadScrapeDown", [_lag(0, "50x60"), _up("head", HEAD_POD, "1x30 0x30")], 31, 5),
]


@pytest.mark.parametrize(("alert", "series", "event", "delay"), DELAYS, ids=[d[0] for d in DELAYS])
def test_each_rule_fires_its_stated_delay_after_the_event(
    tmp_path: Path, alert: str, series: list[dict[str, str]], event: int, delay: int
) -> None:
    _run(tmp_path, [{"interval": "1m", "input_series": series, "alert_rule_test": _quiet(alert, event + delay - 1)}])
    assert _promtool_alerts(tmp_path, series, alert, event + delay), f"{alert} is not firing {delay} min after"


def _promtool_alerts(tmp_path: Path, series: list[dict[str, str]], alert: str, minute: int) -> bool:
    """Whether ``alert`` fires at ``minute``: promtool is asked for no alert and its refusal says it fired."""
    rules = _rule_file(tmp_path, annotations=False)
    tests = tmp_path / "fires.yaml"
    case = {"interval": "1m", "input_series": series, "alert_rule_test": _quiet(alert, minute)}
    tests.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": [case]}))
    result = _promtool("test", "rules", str(tests))
    return result.returncode != 0 and f"alertname: {alert}, time: {_duration(minute)}," in result.stdout + result.stderr


def _duration(minutes: int) -> str:
    """``minutes`` as promtool prints a time (Prometheus' model.Duration: 59m, 1h, 1h1m)."""
    hours, rest = divmod(minutes, 60)
    return (f"{hours}h" if hours else "") + (f"{rest}m" if rest or not hours else "")


def test_lag_growing_after_a_fall_takes_up_to_window_plus_for(tmp_path: Path) -> None:
    # Lag falling fast until minute 30, rising from 31: the 15-minute trend turns up only once enough of the
    # window rises, so the alert comes later than 15 minutes, and never later than 15 + 15.
    series = [_lag(0, "3500-100x30 510+10x50"), _messages(0, "0+100x80")]
    _run(tmp_path, [{"interval": "1m", "input_series": series, "alert_rule_test": _quiet("LoomLagGrowing", 46)}])
    assert _promtool_alerts(tmp_path, series, "LoomLagGrowing", 31 + 30)


def _readme_delays() -> dict[str, int]:
    """kuberay/README.md's Alerts table: alert -> the first number of minutes in its delay column."""
    found = {}
    for line in README.read_text().splitlines():
        row = re.match(r"\| `(Loom\w+)` \|.*\| (\d+) min", line)
        if row:
            found[row.group(1)] = int(row.group(2))
    return found


def test_the_readme_states_the_measured_delays() -> None:
    assert _readme_delays() == {alert: delay for alert, _, _, delay in DELAYS}


def _rules() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((KUBERAY / "prometheus-rules.yaml").read_text())
    return loaded


def test_the_operator_loads_the_rules_and_they_read_this_podmonitors_targets() -> None:
    monitor = yaml.safe_load((KUBERAY / "podmonitor.yaml").read_text())
    rules = _rules()
    # kube-prometheus-stack selects PrometheusRules by the release label, as it selects PodMonitors.
    assert rules["metadata"]["labels"]["release"] == monitor["metadata"]["labels"]["release"]
    job = f"{monitor['metadata']['namespace']}/{monitor['metadata']['name']}"
    assert job == JOB
    exprs = {r["alert"]: r["expr"] for group in rules["spec"]["groups"] for r in group["rules"]}
    for alert in NEW_RULES:
        assert f'job="{job}"' in exprs[alert], alert
    # LoomHeadScrapeDown picks the head by ray_io_node_type, which the PodMonitor copies from KubeRay's label,
    # on the endpoint named after the head's metrics port.
    relabels = monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert {
        "action": "replace",
        "sourceLabels": ["__meta_kubernetes_pod_label_ray_io_node_type"],
        "targetLabel": "ray_io_node_type",
    } in relabels
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert 'endpoint="metrics"' in exprs["LoomHeadScrapeDown"]
