"""From per-repetition measurements to the reported table: medians, limits, efficiency, ratios, targets.

Pure functions over plain dicts (the JSON's shapes), so the report can be rebuilt and tested offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loom_bench.launch import SYSTEMS
from loom_bench.stats import median_or_none, ratio, relative_spread, shared_limit, spread

REPORTED = ("B0", "B1", "B2", "B3", "B4", "B4_tuned", "B5", "B6", "B6_tuned")
LOOM = ("B4", "B4_tuned")  # loom-ray in the targets: the better of these two
RSS_LIMIT_MB = 1536.0
SPREAD_FLAG = 0.15  # (max - min) / median above this: the figure does not hold still
QUIET_OTHER_CORES = 0.25  # busy CPU outside the run (median over the variants) up to which the box is quiet
_MEDIANS = (
    "steady_msgs_per_s",
    "commit_window_msgs_per_s",
    "cpu_s_per_million",
    "cpu_s_per_million_pg",
    "cpu_s_per_million_kafka",
    "cpu_s_per_million_total",
    "other_cores",
    "window_s",
    "load_1m_before",
    "load_1m_after",
)


def _worst(values: Sequence[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _rates(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """The median rate of ``reps`` with its min-max, spread, and whether that spread is past SPREAD_FLAG."""
    rates = spread([r.get("msgs_per_s") for r in reps])
    disagree = None if rates is None else relative_spread(rates.median, rates.low, rates.high)
    return {
        "msgs_per_s": None if rates is None else rates.median,
        "min": None if rates is None else rates.low,
        "max": None if rates is None else rates.high,
        "spread": disagree,
        "unsteady": disagree is not None and disagree > SPREAD_FLAG,
    }


def aggregate(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant over its repetitions: median (min-max) rate, median CPU, worst RSS and exactness."""
    found: dict[str, Any] = {**_rates(reps), "reps": len(reps)}
    for key in _MEDIANS:
        found[key] = median_or_none([r.get(key) for r in reps])
    rss = [r["peak_rss_mb"] for r in reps if r.get("peak_rss_mb") is not None]
    found["peak_rss_mb"] = max(rss) if rss else None
    found["lost"] = _worst([r.get("lost") for r in reps])
    found["duplicated"] = _worst([r.get("duplicated") for r in reps])
    found["errors"] = [r["error"] for r in reps if r.get("error")]
    for split in ("cpu_split", "cpu_split_pg"):
        labels = sorted({name for r in reps for name in r.get(split) or {}})
        found[split] = {
            name: median_or_none([r[split].get(name, 0.0) if r.get(split) else None for r in reps]) for name in labels
        }
    found["p50_ms"] = found["p99_ms"] = None
    return found


def limit_windows(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """A PostgreSQL limit measured over several windows (one per repetition, between the systems' runs): the
    median rate with its min-max and spread, as a system's; ``correct`` only when every window's table was."""
    return {
        "variant": windows[0]["variant"],
        **_rates(windows),
        "correct": all(w.get("correct", True) for w in windows),
        "windows": windows,
    }


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
        row["x_b6"] = ratio(rate, _rate(systems, "B6_tuned"))
    for name, result in live.items():
        if systems.get(name) is not None:
            middle = result.get("levels", {}).get("50", {})
            systems[name].update({"p50_ms": middle.get("p50_ms"), "p99_ms": middle.get("p99_ms"), "live": result})
    return {"systems": systems, "variants": variants, "limits": limits}


def _rate(systems: dict[str, Any], name: str) -> float | None:
    row = systems.get(name)
    return None if row is None else row.get("msgs_per_s")


def loom_row(systems: dict[str, Any]) -> dict[str, Any]:
    """loom-ray as the targets see it: the faster (median) of B4 and B4_tuned, with its name."""
    rows = [{**systems[n], "name": n} for n in LOOM if systems.get(n) is not None]
    return max(rows, key=lambda r: r.get("msgs_per_s") or 0.0, default={})


def targets(workload: str, table: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 10's targets for loom-ray on one workload: value, threshold, met (None: unknown)."""
    systems = table["systems"]
    loom = loom_row(systems)
    rate = loom.get("msgs_per_s")
    tuned = systems.get("B4_tuned") or {}
    live = (tuned.get("live") or {}).get("levels", {})
    rss = [r["peak_rss_mb"] for r in (systems.get(n) for n in LOOM) if r and r.get("peak_rss_mb") is not None]
    times = 3.0 if workload == "W1" else 2.0
    rows = [
        (
            f"throughput >= {times:.0f}x B6_tuned (Kafka Connect JDBC sink)",
            ratio(rate, _rate(systems, "B6_tuned")),
            times,
            ">=",
        ),
        (f"throughput >= {times:.0f}x best quixstreams (B3)", ratio(rate, _rate(systems, "B3")), times, ">="),
        ("throughput >= 85 % of L_shared", loom.get("efficiency_shared"), 0.85, ">="),
        ("B4_tuned p99 <= 1 s at 50 % load (ms)", live.get("50", {}).get("p99_ms"), 1000.0, "<="),
        ("B4_tuned p99 <= 1 s at 80 % load (ms)", live.get("80", {}).get("p99_ms"), 1000.0, "<="),
        ("B4_tuned >= 0.9 x B5 (Ray's cost)", ratio(tuned.get("msgs_per_s"), _rate(systems, "B5")), 0.9, ">="),
        ("pipeline peak RSS <= 1.5 GiB (MiB, B4 and B4_tuned)", max(rss) if rss else None, RSS_LIMIT_MB, "<="),
    ]
    return [_check(name, value, threshold, op) for name, value, threshold, op in rows]


def _check(name: str, value: float | None, threshold: float, op: str) -> dict[str, Any]:
    met = None if value is None else (value >= threshold if op == ">=" else value <= threshold)
    return {"target": name, "value": value, "threshold": threshold, "op": op, "met": met}


def outside_load(results: dict[str, Any]) -> float | None:
    """Busy CPU no process of the run explains, in cores: the median over every variant of every workload."""
    return median_or_none(
        [
            row["other_cores"]
            for workload in results["workloads"].values()
            for row in workload.get("variants", {}).values()
            if row.get("other_cores") is not None
        ]
    )


def is_quiet(results: dict[str, Any]) -> bool:
    """Whether the run had the machine to itself (:data:`QUIET_OTHER_CORES`); unmeasured counts as shared."""
    load = outside_load(results)
    return load is not None and load <= QUIET_OTHER_CORES
