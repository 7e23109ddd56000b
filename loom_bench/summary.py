"""From per-repetition measurements to the reported table: medians, limits, efficiency, ratios, targets.

Pure functions over plain dicts (the JSON's shapes), so the report can be rebuilt and tested offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loom_bench.launch import SYSTEMS
from loom_bench.stats import median_or_none, ratio, shared_limit, spread

REPORTED = ("B0", "B1", "B2", "B3", "B4", "B4_tuned", "B5")
LOOM = "B4_tuned"  # the configuration the targets are checked on
RSS_LIMIT_MB = 1536.0
_MEDIANS = (
    "steady_msgs_per_s",
    "commit_window_msgs_per_s",
    "cpu_s_per_million",
    "cpu_s_per_million_pg",
    "cpu_s_per_million_kafka",
    "cpu_s_per_million_total",
    "other_cores",
)


def _worst(values: Sequence[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def aggregate(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant over its repetitions: median (min-max) rate, median CPU, worst RSS and exactness."""
    rates = spread([r.get("msgs_per_s") for r in reps])
    found: dict[str, Any] = {
        "msgs_per_s": None if rates is None else rates.median,
        "min": None if rates is None else rates.low,
        "max": None if rates is None else rates.high,
        "reps": len(reps),
    }
    for key in _MEDIANS:
        found[key] = median_or_none([r.get(key) for r in reps])
    rss = [r["peak_rss_mb"] for r in reps if r.get("peak_rss_mb") is not None]
    found["peak_rss_mb"] = max(rss) if rss else None
    found["lost"] = _worst([r.get("lost") for r in reps])
    found["duplicated"] = _worst([r.get("duplicated") for r in reps])
    found["errors"] = [r["error"] for r in reps if r.get("error")]
    found["p50_ms"] = found["p99_ms"] = None
    return found


def best_variant(variants: dict[str, dict[str, Any]], name: str) -> str | None:
    """The variant reported as ``name``: the fastest median among those in its group."""
    members = [v for v, group in SYSTEMS.items() if group == name and v in variants]
    if not members:
        return None
    return max(members, key=lambda v: variants[v]["msgs_per_s"] or 0.0)


def systems_table(runs: dict[str, list[dict[str, Any]]], live: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The workload's ``systems``, ``variants`` and ``limits``."""
    variants = {v: aggregate(reps) for v, reps in runs.items()}
    systems: dict[str, Any] = {}
    for name in REPORTED:
        chosen = best_variant(variants, name)
        systems[name] = None if chosen is None else {**variants[chosen], "variant": chosen}
    kafka_limit = _rate(systems, "B0")
    db_limit = _rate(systems, "B1")
    lowest = min((x for x in (kafka_limit, db_limit) if x), default=None)
    limits = {"B0": kafka_limit, "B1": db_limit, "min": lowest, "L_shared": shared_limit(kafka_limit, db_limit)}
    for row in filter(None, systems.values()):
        rate = row["msgs_per_s"]
        row["efficiency"] = ratio(rate, lowest)
        row["efficiency_shared"] = ratio(rate, limits["L_shared"])
        row["x_b2"] = ratio(rate, _rate(systems, "B2"))
        row["x_b3"] = ratio(rate, _rate(systems, "B3"))
    for name, result in live.items():
        if systems.get(name) is not None:
            middle = result.get("levels", {}).get("50", {})
            systems[name].update({"p50_ms": middle.get("p50_ms"), "p99_ms": middle.get("p99_ms"), "live": result})
    return {"systems": systems, "variants": variants, "limits": limits}


def _rate(systems: dict[str, Any], name: str) -> float | None:
    row = systems.get(name)
    return None if row is None else row.get("msgs_per_s")


def targets(workload: str, table: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for loom-ray (B4_tuned) on one workload: value, threshold, met (None: unknown)."""
    systems = table["systems"]
    loom = systems.get(LOOM) or {}
    seed = systems.get("B4") or {}
    core = _rate(systems, "B5")
    rss = [x for x in (loom.get("peak_rss_mb"), seed.get("peak_rss_mb")) if x is not None]
    b2_times = 30.0 if workload == "W1" else 10.0
    rows = [
        ("throughput >= 80 % of min(B0, B1)", loom.get("efficiency"), 0.8, ">="),
        ("throughput >= 80 % of L_shared", loom.get("efficiency_shared"), 0.8, ">="),
        (f"throughput >= {b2_times:.0f}x B2", loom.get("x_b2"), b2_times, ">="),
        ("throughput >= 3x B3", loom.get("x_b3"), 3.0, ">="),
        ("p99 <= 1 s at 50 % load (ms)", loom.get("p99_ms"), 1000.0, "<="),
        ("pipeline peak RSS <= 1.5 GiB (MiB, B4 and B4_tuned)", max(rss) if rss else None, RSS_LIMIT_MB, "<="),
        ("B4_tuned within 10 % of B5", ratio(loom.get("msgs_per_s"), core), 0.9, ">="),
    ]
    return [_check(name, value, threshold, op) for name, value, threshold, op in rows]


def _check(name: str, value: float | None, threshold: float, op: str) -> dict[str, Any]:
    met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
    return {"target": name, "value": value, "threshold": threshold, "op": op, "met": met}
