"""PNG plots of a scale run, rendered from its JSON (:mod:`loom_bench.scale` writes both).

``scale-coordinator-<date>.png``: steady round time (median, max) and first-assignment time against the
partition count, with issue 12's targets. ``scale-throughput-<date>.png``: drain rate against the partition
count, with the line at 90 % of the best, when the run measured throughput. Runs after every scale run, and
on demand with ``python -m loom_bench.scale --plot bench-results/scale-<date>.json``. Targets come from the
JSON's ``target_limits``; the load average from its ``machine``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen before pyplot is imported)
from matplotlib.ticker import ScalarFormatter  # noqa: E402


def _date(results: dict[str, Any]) -> str:
    return str(results["started_at"])[:10]


def _caption(results: dict[str, Any]) -> str:
    machine = results.get("machine", {})
    load = [machine[k][0] for k in ("load_average_at_start", "load_average_at_end") if machine.get(k)]
    text = f"{_date(results)}, {machine.get('cores', '?')} cores shared with other work"
    return text + (f", load average {min(load):.1f}–{max(load):.1f}" if load else "")


def coordinator(results: dict[str, Any], path: Path) -> Path:
    """Round and first-assignment seconds against partitions (log-log), targets as dashed lines."""
    sizes = results["sizes"]
    n = [s["partitions"] for s in sizes]
    fig, (rounds, first) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    rounds.plot(n, [s["round_median_s"] for s in sizes], "o-", label="steady round, median")
    rounds.plot(n, [s["round_max_s"] for s in sizes], "s--", label="steady round, max")
    rounds.plot(n, [s["reclaim_s"] for s in sizes], "^:", label="reclaim of a dead handle")
    limits = results["target_limits"]
    limit = limits["round_max_s"]
    rounds.axhline(limit, color="grey", linestyle="--", linewidth=1, label=f"target: round ≤ {limit:g} s")
    first.plot(n, [s["first_assignment_s"] for s in sizes], "o-", color="C3", label="first full assignment")
    limit = limits["first_assignment_s"]
    first.axhline(limit, color="grey", linestyle="--", linewidth=1, label=f"target: ≤ {limit:g} s")
    handles = sizes[0]["handles"] if sizes else 0
    for axes, title in ((rounds, "coordinator round"), (first, "first assignment")):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xticks(n, [f"{x:,}" for x in n])
        axes.yaxis.set_major_formatter(ScalarFormatter())
        axes.set_xlabel("partitions")
        axes.set_ylabel("seconds")
        axes.set_title(f"{title}, {handles} {results['settings'].get('handle_kind', 'local')} handles")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    fig.suptitle(f"loom-ray coordinator at scale ({_caption(results)})", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def throughput(results: dict[str, Any], path: Path) -> Path:
    """Drain rate against partitions (log x), 90 % of the best as a dashed line, and on the right the consumer
    actors' RSS at the moment the run's total RSS peaked (the sampler's breakdown, not each actor's own peak)."""
    section = results["throughput"]
    runs = [r for r in section["runs"] if r.get("msgs_per_s")]
    n = [r["partitions"] for r in runs]
    fig, rate = plt.subplots(figsize=(6, 4), constrained_layout=True)
    rate.plot(n, [r["msgs_per_s"] for r in runs], "o-", label="drain rate (msg/s)")
    if section.get("best_msgs_per_s"):
        rate.axhline(0.9 * section["best_msgs_per_s"], color="grey", linestyle="--", linewidth=1, label="90 % of best")
    rate.set_xscale("log", base=2)
    rate.set_xticks(n, [str(x) for x in n])
    rate.set_xlabel("partitions")
    rate.set_ylabel("messages per second")
    rate.set_ylim(bottom=0)
    rate.grid(True, which="both", alpha=0.3)
    memory = rate.twinx()
    label = "consumer actors' RSS at the run's RSS peak (MiB)"
    memory.plot(n, [r.get("consumer_rss_mb") for r in runs], "s:", color="C2", label=label)
    memory.set_ylabel("MiB")
    memory.set_ylim(bottom=0)
    lines = rate.get_legend_handles_labels()
    more = memory.get_legend_handles_labels()
    rate.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="lower left")
    variant = runs[0]["variant"] if runs else "?"
    rate.set_title(f"W1 drain, {variant} ({_caption(results)})", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(results: dict[str, Any], output: Path) -> list[Path]:
    """Every plot the results hold data for, written under ``output``; their paths."""
    date = _date(results)
    paths = []
    if results["sizes"]:
        paths.append(coordinator(results, output / f"scale-coordinator-{date}.png"))
    if results.get("throughput", {}).get("runs"):
        paths.append(throughput(results, output / f"scale-throughput-{date}.png"))
    return paths
