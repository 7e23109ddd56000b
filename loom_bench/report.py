"""``BENCHMARKS.md``, rendered from a results JSON (``python -m loom_bench --render FILE``)."""

from __future__ import annotations

from typing import Any

from loom_bench.summary import LOOM, REPORTED

DESCRIPTIONS = {
    "B0": "Kafka only: confluent-kafka `consume(10000, 0.1)`, no parse, no DB, passes over the topic for >= 3 s",
    "B1": "PostgreSQL only: binary COPY from memory, 10 000 rows per transaction",
    "B2": "naive: `poll()` + `json.loads` + one autocommit INSERT per message",
    "B3": "quixstreams `PostgreSQLSink`, same schema",
    "B4": "loom-ray, seed config (batch 200 / 0.5 s, 3 actors)",
    "B4_tuned": "loom-ray, tuned config",
    "B5": "loom-ray's `IngestWorker` without Ray",
}


def rate(value: float | None) -> str:
    """Messages per second with thin-space thousands, or an em dash."""
    return "—" if value is None else f"{value:,.0f}".replace(",", "\u202f")


def times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×" if value < 10 else f"{value:.0f}×"


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f} %"


def number(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _exactness(row: dict[str, Any]) -> str:
    lost, duplicated = row.get("lost"), row.get("duplicated")
    if lost is None and duplicated is None:
        return "n/a"
    return f"{'—' if lost is None else lost} / {duplicated}"


def systems_table(workload: dict[str, Any]) -> list[str]:
    """The main table: one row per reported system."""
    lines = [
        "| System | What | msgs/s median (min–max) | ÷ min(B0,B1) | ÷ L_shared | × B2 | × B3 "
        "| CPU-s/M pipeline (total) | peak RSS MiB | lost / dup | p50 / p99 ms @50 % |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in REPORTED:
        row = workload["systems"].get(name)
        if row is None:
            continue
        spread = f"{rate(row['msgs_per_s'])} ({rate(row['min'])}–{rate(row['max'])})"
        cpu = f"{number(row.get('cpu_s_per_million'))} ({number(row.get('cpu_s_per_million_total'))})"
        latency = f"{number(row.get('p50_ms'), 0)} / {number(row.get('p99_ms'), 0)}"
        what = f"{DESCRIPTIONS[name]} [{row.get('variant')}]"
        lines.append(
            f"| {name} | {what} | {spread} | {percent(row.get('efficiency'))} | "
            f"{percent(row.get('efficiency_shared'))} | {times(row.get('x_b2'))} | {times(row.get('x_b3'))} | "
            f"{cpu} | {number(row.get('peak_rss_mb'), 0)} | {_exactness(row)} | {latency} |"
        )
    return lines


def variants_table(workload: dict[str, Any]) -> list[str]:
    """Every variant measured (the main table shows the fastest of each group)."""
    lines = [
        "| Variant | msgs/s median (min–max) | steady 10–90 % | CPU-s/M pipeline / PG / Kafka | other load (cores) "
        "| peak RSS MiB | errors |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in workload["variants"].items():
        cpu = "/".join(
            number(row.get(k)) for k in ("cpu_s_per_million", "cpu_s_per_million_pg", "cpu_s_per_million_kafka")
        )
        lines.append(
            f"| {name} | {rate(row['msgs_per_s'])} ({rate(row['min'])}–{rate(row['max'])}) | "
            f"{rate(row.get('steady_msgs_per_s'))} | {cpu} | {number(row.get('other_cores'), 2)} | "
            f"{number(row.get('peak_rss_mb'), 0)} | {len(row.get('errors') or [])} |"
        )
    return lines


def live_table(workload: dict[str, Any]) -> list[str]:
    """Latency under rate-limited load, per system and load level."""
    rows = []
    for name in REPORTED:
        live = (workload["systems"].get(name) or {}).get("live")
        for load, level in (live or {}).get("levels", {}).items():
            rows.append(
                f"| {name} | {load} % | {rate(level.get('offered_per_s'))} | {rate(level.get('produced_per_s'))} | "
                f"{number(level.get('p50_ms'), 0)} | {number(level.get('p90_ms'), 0)} | "
                f"{number(level.get('p99_ms'), 0)} | {number(level.get('max_ms'), 0)} | "
                f"{number(level.get('drain_after_s'), 1) if level.get('kept_up') else 'no'} |"
            )
    if not rows:
        return ["Not measured in this run."]
    header = [
        "| System | load | offered msgs/s | produced msgs/s | p50 ms | p90 ms | p99 ms | max ms | caught up after s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    return header + rows


def targets_table(results: dict[str, Any]) -> list[str]:
    lines = ["| Workload | Target | Value | Met |", "| --- | --- | --- | --- |"]
    for name, workload in results["workloads"].items():
        for target in workload.get("targets", []):
            met = {True: "met", False: "**not met**", None: "n/a"}[target["met"]]
            lines.append(f"| {name} | {target['target']} | {number(target['value'], 2)} | {met} |")
    return lines


def _limits(workload: dict[str, Any]) -> str:
    limits = workload["limits"]
    return (
        f"Limits: B0 = {rate(limits['B0'])}, B1 = {rate(limits['B1'])}, min = {rate(limits['min'])}, "
        f"L_shared = 1/(1/B0 + 1/B1) = {rate(limits['L_shared'])} msgs/s."
    )


def _mapping(title: str, values: dict[str, Any]) -> list[str]:
    return [f"### {title}", "", *(f"- {k}: `{v}`" for k, v in values.items()), ""]


def render(results: dict[str, Any], source: str, notes: str = "", appendix: str = "") -> str:
    """The whole ``BENCHMARKS.md``; ``notes`` (hand-written Markdown) follow the targets, ``appendix`` (the
    coordinator-at-scale section, ``bench-results/SCALE.md``) ends it."""
    out = [
        "# Benchmarks",
        "",
        f"Generated by `python -m loom_bench` from `{source}` (mode **{results['mode']}**, "
        f"{results['started_at']}, {results['duration_s']:.0f} s). Do not edit by hand: rerun "
        "`python -m loom_bench --render <json>`.",
        "",
        "## Targets (loom-ray = B4_tuned)",
        "",
        *targets_table(results),
        "",
    ]
    if notes.strip():
        out += [notes.strip(), ""]
    for name, workload in results["workloads"].items():
        out += [
            f"## {name}: {workload['messages']:,} messages of ~{workload['size']} B JSON, 16 partitions",
            "",
            _limits(workload),
            "",
            *systems_table(workload),
            "",
            "### All variants",
            "",
            *variants_table(workload),
            "",
            "### Latency under load (Kafka LogAppendTime → PostgreSQL commit)",
            "",
            *live_table(workload),
            "",
        ]
    out += ["## Commands", "", *(f"- {k}: `{v}`" for k, v in results["commands"].items()), ""]
    out += ["## Configuration of loom-ray", ""]
    for name, env in results.get("config", {}).items():
        out += [f"- {name}: " + " ".join(f"`{k}={v}`" for k, v in env.items())]
    out += ["", "## Machine and versions", ""]
    out += _mapping("Machine", results["machine"]) + _mapping("PostgreSQL", results.get("postgres", {}))
    out += _mapping("Versions", results["versions"])
    out += [MEANING.strip(), ""]
    if appendix.strip():
        out += [appendix.strip(), ""]
    return "\n".join(out)


MEANING = f"""
## What the numbers mean

- **msgs/s** is measured by PostgreSQL, not by the client: rows ÷ (last − first commit timestamp), leaving out
  the first transaction's rows (they were written before the first timestamp). B0 writes nothing and uses its own
  first/last batch times. Start-up (Ray, group joins) is outside the window. loom-ray (B4, B5) reads and decodes
  ahead of its first commit, which that window would not see: its rate counts all rows from its first partition
  claim (recorded by a trigger in the bench database) to its last commit, which can only lower it; the commit
  window rate is kept in the JSON as `commit_window_msgs_per_s`. "steady" is the 10–90 % commit window (for
  loom-ray it flatters the same way).
- **÷ min(B0,B1)** compares with the slower stage measured alone, each using the whole machine; **÷ L_shared**
  compares with both stages sharing the same cores, 1/(1/B0 + 1/B1): the real ceiling on one box.
- **× B2** is against the naive consumer (per-message autocommit INSERT, bounded in time, rate extrapolated);
  **× B3** against quixstreams' PostgreSQL sink writing the same schema, best of its variants.
- **CPU-s/M** is CPU seconds per million messages inside the drain window: *pipeline* = every process the run
  started and their descendants (all of Ray for B4); *total* adds the bench database's backends, PostgreSQL's
  WAL writer/checkpointer and the Kafka JVM. *other load* is busy CPU nobody in the run explains: noise from
  other work on the machine (0 on a quiet machine).
- **peak RSS** is the largest sum of RSS over the run's process tree, sampled at 4 Hz (shared pages count once
  per process, so Ray's numbers are an upper bound).
- **latency** runs from the broker's append time (live topics use `LogAppendTime`, so the producer's own queueing
  on the shared cores is not counted) to the commit, leaving out each level's warm-up; the load generator runs on
  the same machine and its CPU is in the JSON (`producer_cpu_s`). A level the producer could not reach shows
  a lower "produced" than "offered".
- **lost / dup**: offsets of the topic missing from the table / rows beyond distinct (partition, offset). B2 is
  stopped early, so only duplicates apply.
- Every system runs with `synchronous_commit = on` on a freshly created table (dropped, recreated, CHECKPOINT).
  The {LOOM} row is the configuration the targets are checked on.
"""
