"""One PNG per workload, rendered from a results JSON: throughput per system with its spread, and latency
percentiles per load level. Called when BENCHMARKS.md is written (a run's end, or ``--render``).

matplotlib runs headless (Agg). A workload without live results gets the throughput panel only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from loom_bench.summary import REPORTED, is_quiet  # noqa: E402

PERCENTILES = (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"))


def throughput_points(workload: dict[str, Any]) -> list[tuple[str, float, float, float]]:
    """``(system [variant], median, min, max)`` msgs/s of every reported system that has a rate."""
    points = []
    for name in REPORTED:
        row = workload["systems"].get(name)
        if row is None or row.get("msgs_per_s") is None:
            continue
        label = name if row.get("variant") == name else f"{name}\n{row.get('variant')}"
        points.append((label, row["msgs_per_s"], row.get("min") or row["msgs_per_s"], row.get("max") or 0.0))
    return points


def latency_series(workload: dict[str, Any]) -> dict[str, list[tuple[int, dict[str, float | None]]]]:
    """Per live system: ``(load %, {p50/p90/p99: ms})`` in load order."""
    found = {}
    for name in REPORTED:
        levels = ((workload["systems"].get(name) or {}).get("live") or {}).get("levels") or {}
        if levels:
            found[name] = sorted((int(load), {k: v.get(k) for k, _ in PERCENTILES}) for load, v in levels.items())
    return found


def render(name: str, workload: dict[str, Any], path: Path, mode: str, quiet: bool = False) -> Path:
    """Draw ``workload``'s PNG at ``path``; the title names the mode (quick figures are labelled)."""
    points = throughput_points(workload)
    live = latency_series(workload)
    panels = 2 if live else 1
    figure, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    bars = axes[0][0]
    labels = [p[0] for p in points]
    medians = [p[1] for p in points]
    below = [p[1] - p[2] for p in points]
    above = [max(0.0, p[3] - p[1]) for p in points]
    bars.bar(range(len(points)), medians, yerr=[below, above], capsize=4, color="#4c72b0")
    bars.set_xticks(range(len(points)), labels, fontsize=7)
    bars.set_ylabel("msgs/s committed (median, min–max)")
    bars.set_title(f"{name}: throughput per system")
    bars.grid(axis="y", alpha=0.3)
    if live:
        lines = axes[0][1]
        for system, levels in live.items():
            loads = [load for load, _ in levels]
            for key, short in PERCENTILES:
                values = [v[key] if v[key] is not None else float("nan") for _, v in levels]
                lines.plot(loads, values, marker="o", label=f"{system} {short}")
        lines.set_xlabel("load (% of loom-ray's drain rate)")
        lines.set_ylabel("Kafka append → PostgreSQL commit (ms)")
        lines.set_yscale("log")
        lines.set_title(f"{name}: latency per load level")
        lines.legend(fontsize=7)
        lines.grid(alpha=0.3)
    label = "" if mode == "full" else f"\n{mode} run: smoke figures, not for comparison"
    machine = "a quiet machine" if quiet else "a shared machine"
    figure.suptitle(f"{workload['messages']:,} msgs of ~{workload['size']} B, on {machine}{label}", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def render_all(results: dict[str, Any], directory: Path) -> dict[str, Path]:
    """One ``<mode>-<workload>.png`` per workload in ``directory``."""
    mode = results["mode"]
    return {
        name: render(name, workload, directory / f"{mode}-{name.lower()}.png", mode, is_quiet(results))
        for name, workload in results["workloads"].items()
    }
