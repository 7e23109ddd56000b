"""kuberay/grafana-dashboard.json against what the actors export (actors/metrics.py): names, tags, windows,
the data-source variable. tests/integration/test_dashboard.py runs every expression on a real Prometheus."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from ray.util.metrics import Counter, Histogram, Metric

from actors.metrics import FlushMetrics, LagHealthMetrics, LagMetrics, ParkedMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "kuberay" / "grafana-dashboard.json"
# The Ray autoscaler's own metrics (its metrics port on the head), charted as active and pending nodes.
AUTOSCALER = {"autoscaler_active_nodes": {"NodeType"}, "autoscaler_pending_nodes": {"NodeType"}}


def exported() -> dict[str, set[str]]:
    """Prometheus name -> tag keys of every metric the actors create: Ray adds ``ray_``, OpenTelemetry
    ``_total`` on counters; histograms are queried through ``_bucket`` (with ``le``)."""
    names: dict[str, set[str]] = {}
    for owner in (FlushMetrics("c"), LagMetrics(), LagHealthMetrics(), ParkedMetrics()):
        for metric in vars(owner).values():
            if isinstance(metric, Metric):
                tags = set(metric._tag_keys)
                if isinstance(metric, Counter):
                    names[f"ray_{metric._name}_total"] = tags
                elif isinstance(metric, Histogram):
                    names[f"ray_{metric._name}_bucket"] = tags | {"le"}
                else:
                    names[f"ray_{metric._name}"] = tags
    return names


def dashboard() -> dict[str, Any]:
    with DASHBOARD.open(encoding="utf-8") as f:
        loaded: dict[str, Any] = json.load(f)
    return loaded


def expressions() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def test_every_exported_metric_is_charted_and_nothing_else() -> None:
    used = {name for expr in expressions() for name in re.findall(r"\b(?:ray_loom|autoscaler)_\w+", expr)}
    assert used == exported().keys() | AUTOSCALER.keys()  # no typo'd name (an empty panel), none left out


@pytest.mark.parametrize("expr", expressions())
def test_an_expression_filters_and_groups_only_by_tags_its_metrics_have(expr: str) -> None:
    known = exported() | AUTOSCALER
    metrics = re.findall(r"\b(?:ray_loom|autoscaler)_\w+", expr)
    for name, matchers in re.findall(r"\b((?:ray_loom|autoscaler)_\w+)\{([^}]*)\}", expr):
        labels = set(re.findall(r"(\w+)\s*=~?", matchers))
        assert labels <= known[name], f"{name} has no tag {labels - known[name]}: the panel would be empty"
    grouped = {label.strip() for clause in re.findall(r"\bby \(([^)]*)\)", expr) for label in clause.split(",")}
    available = set().union(*(known[name] for name in metrics))
    assert grouped <= available, f"grouped by {grouped - available}, which no metric here has"
    assert "WorkerId" not in expr  # by consumer (the actor's name), not Ray's opaque worker id


def test_windows_follow_grafana_not_fixed_durations() -> None:
    windows = {window for expr in expressions() for window in re.findall(r"\[([^\]]+)\]", expr)}
    assert windows <= {"$__rate_interval", "$__range"}


def test_the_data_source_is_a_dashboard_variable_every_query_uses() -> None:
    # A `datasource` variable, not an import input: `${DS_PROMETHEUS}` is filled in only by Grafana's import UI,
    # and a dashboard provisioned from a file (or a ConfigMap through Grafana's sidecar) would keep it literally.
    loaded = dashboard()
    assert "__inputs" not in loaded
    assert "${DS_" not in json.dumps(loaded)
    variables = loaded["templating"]["list"]
    [source] = [v for v in variables if v["type"] == "datasource"]
    assert (source["name"], source["query"]) == ("datasource", "prometheus")
    assert variables.index(source) == 0  # resolved before the query variables that use it
    uses = {"type": "prometheus", "uid": "${datasource}"}
    for panel in loaded["panels"]:
        assert panel["datasource"] == uses, panel["title"]
        assert all(target["datasource"] == uses for target in panel["targets"]), panel["title"]
    assert all(v["datasource"] == uses for v in variables if v["type"] == "query")


def test_throughput_lag_and_latency_are_charted_per_consumer_and_nodes_per_autoscaler_state() -> None:
    per_consumer = {
        name
        for expr in expressions()
        if re.search(r"by \((consumer|consumer, le)\)", expr)
        for name in re.findall(r"ray_loom_\w+", expr)
    }
    assert {
        "ray_loom_messages_total",
        "ray_loom_rows_total",
        "ray_loom_dead_letters_total",
        "ray_loom_partition_lag",
        "ray_loom_flush_seconds_bucket",
        "ray_loom_consumer_partitions",
        "ray_loom_fenced_flushes_total",
        "ray_loom_outages_total",
        "ray_loom_gap_offsets_total",
    } <= per_consumer
    [nodes] = [p for p in dashboard()["panels"] if "autoscaler_active_nodes" in json.dumps(p["targets"])]
    assert "autoscaler_pending_nodes" in json.dumps(nodes["targets"])
