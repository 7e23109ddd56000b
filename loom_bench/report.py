"""``BENCHMARKS.md``, rendered from a results JSON (``python -m loom_bench --render FILE``)."""

from __future__ import annotations

from typing import Any

from loom_bench.measure import PG_AUTOVACUUM, PG_UNSEEN, PG_WRITERS
from loom_bench.stats import ratio
from loom_bench.summary import REPORTED, SPREAD_FLAG, is_quiet, outside_load

DESCRIPTIONS = {
    "B0": "Kafka only: confluent-kafka `consume(10000, 0.1)`, no parse, no DB, passes over the topic for >= 3 s",
    "B1": "PostgreSQL only: binary COPY from memory, 10 000 rows per transaction",
    "B2": "naive: `poll()` + `json.loads` + one autocommit INSERT per message",
    "B3": "quixstreams `PostgreSQLSink`, same schema",
    "B4": "loom-ray, seed config (batch 200 / 0.5 s, 3 actors)",
    "B4_tuned": "loom-ray, tuned config",
    "B5": "loom-ray's `IngestWorker` without Ray",
    "B6": "Kafka Connect standalone + Debezium JDBC sink, upsert, defaults (1 task, batch 500)",
    "B6_tuned": "Kafka Connect + Debezium JDBC sink, tuned (2 tasks, batch/poll 5000, reWriteBatchedInserts)",
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


def with_spread(row: dict[str, Any]) -> str:
    """``median (min–max, ±spread)``, flagged when the repetitions disagree by more than 15 %."""
    spread = row.get("spread")
    shown = "" if spread is None else f", {spread * 100:.0f} %"
    flag = " ⚠" if row.get("unsteady") else ""
    return f"{rate(row['msgs_per_s'])} ({rate(row['min'])}–{rate(row['max'])}{shown}){flag}"


def _exactness(row: dict[str, Any]) -> str:
    lost, duplicated = row.get("lost"), row.get("duplicated")
    if lost is None and duplicated is None:
        return "n/a"
    return f"{'—' if lost is None else lost} / {duplicated}"


def systems_table(workload: dict[str, Any]) -> list[str]:
    """The main table: one row per reported system."""
    lines = [
        "| System | What | msgs/s median (min–max, spread) | ÷ min(B0,B1) | ÷ L_shared | × B2 | × B3 | × B6_tuned "
        "| CPU-s/M pipeline (total) | peak RSS MiB | lost / dup | p50 / p99 ms @50 % |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in REPORTED:
        row = workload["systems"].get(name)
        if row is None:
            continue
        spread = with_spread(row)
        cpu = f"{number(row.get('cpu_s_per_million'))} ({number(row.get('cpu_s_per_million_total'))})"
        latency = f"{number(row.get('p50_ms'), 0)} / {number(row.get('p99_ms'), 0)}"
        what = f"{DESCRIPTIONS[name]} [{row.get('variant')}]"
        lines.append(
            f"| {name} | {what} | {spread} | {percent(row.get('efficiency'))} | "
            f"{percent(row.get('efficiency_shared'))} | {times(row.get('x_b2'))} | {times(row.get('x_b3'))} | "
            f"{times(row.get('x_b6'))} | "
            f"{cpu} | {number(row.get('peak_rss_mb'), 0)} | {_exactness(row)} | {latency} |"
        )
    return lines


_CPU_KEYS = ("cpu_s_per_million", "cpu_s_per_million_pg", "cpu_s_per_million_kafka")  # pipeline, PostgreSQL, Kafka


def variants_table(workload: dict[str, Any]) -> list[str]:
    """Every variant measured (the main table shows the fastest of each group)."""
    lines = [
        "| Variant | msgs/s median (min–max, spread) | timed s | CPU-s/M pipeline / PG / Kafka | other load (cores) "
        "| load 1 min before → after | peak RSS MiB | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in workload["variants"].items():
        cpu = "/".join(number(row.get(k)) for k in _CPU_KEYS)
        load = f"{number(row.get('load_1m_before'), 2)} → {number(row.get('load_1m_after'), 2)}"
        lines.append(
            f"| {name} | {with_spread(row)} | {number(row.get('window_s'), 1)} | {cpu} | "
            f"{number(row.get('other_cores'), 2)} | {load} | {number(row.get('peak_rss_mb'), 0)} | "
            f"{len(row.get('errors') or [])} |"
        )
    return lines


def cpu_split_table(workload: dict[str, Any]) -> list[str]:
    """Where each Ray-less and Ray variant's pipeline CPU goes, per process label (drain window)."""
    rows = []
    for name, row in workload["variants"].items():
        split: dict[str, float | None] = row.get("cpu_split") or {}
        if not split or not (name.startswith("B4") or name.startswith("B5")):
            continue
        workers = sum(v or 0.0 for k, v in split.items() if k.startswith("ray::") or k.startswith("loom_bench"))
        driver = split.get("loom_ray.main") or 0.0
        ray_own = sum(v or 0.0 for v in split.values()) - workers - driver
        largest = sorted(((v or 0.0, k) for k, v in split.items()), reverse=True)[:5]
        rows.append(
            f"| {name} | {number(row.get('cpu_s_per_million'))} | {number(workers)} | {number(driver)} | "
            f"{number(ray_own)} | " + ", ".join(f"`{k}` {number(v)}" for v, k in largest) + " |"
        )
    if not rows:
        return ["Not measured in this run."]
    header = [
        "| Variant | pipeline CPU-s/M | workers (actors, B5's processes) | driver | Ray's own processes "
        "| largest labels |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    return header + rows


def pg_split_table(workload: dict[str, Any]) -> list[str]:
    """Where PostgreSQL's CPU goes for each variant that has the split (:func:`loom_bench.measure.pg_part`):
    the backends by the client they serve, autovacuum, the WAL writer, checkpointer and background writer, and
    what no sample saw (processes that exited between two, such as the backends of short connections and
    autovacuum workers, and other databases' backends: ``measure.server_cpu_seconds`` less the rest)."""
    rows = []
    for name, row in workload["variants"].items():
        split: dict[str, float | None] = row.get("cpu_split_pg") or {}
        if not split:
            continue
        backends = sum(v or 0.0 for k, v in split.items() if k.startswith("backend"))
        largest = sorted(((v or 0.0, k) for k, v in split.items() if k.startswith("backend")), reverse=True)[:4]
        rows.append(
            f"| {name} | {number(row.get('cpu_s_per_million_pg'))} | {number(backends)} | "
            + ", ".join(f"`{k.removeprefix('backend: ')}` {number(v)}" for v, k in largest)
            + f" | {number(split.get(PG_AUTOVACUUM) or 0.0)} | {number(split.get(PG_WRITERS) or 0.0)} | "
            f"{number(split.get(PG_UNSEEN))} |"
        )
    if not rows:
        return ["Not measured in this run."]
    header = [
        "| Variant | PostgreSQL CPU-s/M | backends | backends by client | autovacuum | checkpoints and WAL "
        "| exited between samples, other databases |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    return header + rows


def cores_cell(level: dict[str, Any]) -> str:
    busy = level.get("cores_busy") or {}
    parts = "/".join(number(busy.get(k), 2) for k in ("pipeline", "postgres", "kafka", "producer"))
    return f"{number(busy.get('box'), 2)} ({parts}); I/O wait {number(busy.get('iowait'), 2)}"


def live_table(workload: dict[str, Any]) -> list[str]:
    """Latency under rate-limited load, per system and load level."""
    rows = []
    for name in REPORTED:
        system = workload["systems"].get(name) or {}
        for load, level in (system.get("live") or {}).get("levels", {}).items():
            rows.append(
                f"| {name} | {load} % | {rate(level.get('offered_per_s'))} | {rate(level.get('produced_per_s'))} | "
                f"{cores_cell(level)} | "
                f"{number(level.get('p50_ms'), 0)} | {number(level.get('p90_ms'), 0)} | "
                f"{number(level.get('p99_ms'), 0)} | {number(level.get('max_ms'), 0)} | "
                f"{number(level.get('drain_after_s'), 1) if level.get('kept_up') else 'no'} |"
            )
    if not rows:
        return ["Not measured in this run."]
    header = [
        "| System | load | offered msgs/s | produced msgs/s | cores busy (system/PG/Kafka/producer); I/O wait | p50 ms "
        "| p90 ms | p99 ms | max ms "
        "| caught up after s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    return header + rows


def malformed_table(found: dict[str, Any] | None) -> list[str]:
    """What each system did with 1 % malformed input."""
    if not found or not found.get("systems"):
        return ["Not measured in this run."]
    lines = [
        f"Topic: {found['messages']:,} W1 messages, {found['ratio'] * 100:.0f} % malformed (every kind of "
        "`loom_ray.loadgen`, in turn). Each system runs until drained, stopped, 20 s without a new row after its "
        "first, or 90 s without any row.",
        "",
        *(
            [f"Redone alone at {found['redone']['at']}: `{found['redone']['command']}`.", ""]
            if found.get("redone")
            else []
        ),
        "| System | variant | rows | dead letters | offsets accounted for | stopped | survives bad input |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in found["systems"].items():
        accounted = f"{row.get('accounted', 0):,} of {found['messages']:,}"
        lines.append(
            f"| {name} | {row['variant']} | {row.get('rows', 0):,} | {row.get('dead_letters', 0):,} | {accounted} "
            f"| {'yes' if row.get('stopped') else 'no'} | {'**yes**' if row.get('survives') else 'no'} |"
        )
    return lines


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


def _run_facts(results: dict[str, Any]) -> list[str]:
    machine = results["machine"]
    window = results.get("plan", {}).get("window") or {}
    typical = outside_load(results)
    if is_quiet(results):
        where = (
            f"Measured on a {machine.get('cores')}-core machine with nothing else running (busy CPU outside the "
            f"run's processes: median {typical:.2f} cores over the variants; per variant below)."
        )
    else:
        outside = "not measured" if typical is None else f"median {typical:.2f} cores over the variants"
        where = f"Measured on a **shared machine** ({machine.get('cores')} cores; work outside the run: {outside})."
    lines = [
        f"{where} 1-min load average {machine.get('load_average_at_start', ['?'])[0]} at the start and "
        f"{(machine.get('load_average_at_end') or ['?'])[0]} at the end; per variant before → after below."
    ]
    if window.get("seconds"):
        lines.append(
            f"Each drain is timed over a {window['seconds']:.0f} s window of commits that starts "
            f"{window['warmup_s']:.0f} s after the system's first commit (the system is stopped after it), "
            f"{results.get('plan', {}).get('reps')} repetitions; ⚠ marks a figure whose repetitions spread "
            f"more than {SPREAD_FLAG * 100:.0f} % of the median."
        )
    if results["mode"] != "full":
        lines.append(f"**{results['mode']} run: smoke figures, too short to compare systems.**")
    return [" ".join(lines), ""]


W3_TARGET = 3.0  # issue 11: routes in upsert mode at >= 3x the Debezium JDBC sink in upsert mode
W4_TARGET = 2.0  # issue 20: registry formats at >= 2x the Debezium JDBC sink through the registry's converter
W4_LIMIT_SHARE = 0.85  # issue 20: and >= 85 % of B1 for the same rows


def w3_section(results: dict[str, Any], source: str) -> str:
    """The W3 section (upsert by key, loom-ray against Kafka Connect + Debezium): medians, spread, ratio,
    whether each run's table equalled the fold, and the load average."""
    found = results["w3"]
    runs, systems = found["runs"], found["systems"]
    loads = [r["load_1m_before"] for rs in runs.values() for r in rs]
    lines = [
        f"## W3: upsert by key, {found['messages']:,} messages of ~300 B JSON, {found['keys']:,} keys, "
        "1 % tombstones, 16 partitions",
        "",
        f"From `{source}` ({results['mode']}, {results['started_at']}, `{results['command']}`), measured on a "
        f"2-core machine (1-minute load average {min(loads):.1f}–{max(loads):.1f} before the runs, "
        f"{found['load_average_at_end'][0]:.1f} at the end). Rate: committed offsets per second, sampled every "
        f"0.5 s, over {found['window']['seconds']:.0f} s after {found['window']['warmup_s']:.0f} s of warm-up past "
        "each system's first commit, as W1 and W2 are timed (Kafka Connect: its consumer group's offsets; "
        "loom-ray: `loom_offsets`, its rate from its first partition claim, start-up ramp included, is kept as "
        "`claim_msgs_per_s` in the results file). Correct: after each run the table equals the "
        "last-writer-wins fold by key of the records below the committed offsets, tombstoned keys absent.",
        "",
        "| System | msgs/s median (min–max, spread) | runs correct | rows / expected (last run) |",
        "| --- | --- | --- | --- |",
    ]
    for variant, reps in runs.items():
        correct = sum(1 for r in reps if r.get("correct"))
        last = f"{reps[-1]['rows']:,} / {reps[-1]['expected_rows']:,}"
        lines.append(f"| {variant} | {with_spread(systems[variant])} | {correct} / {len(reps)} | {last} |")
    found_ratio = found["ratio"]
    verdict = "—" if found_ratio is None else "met" if found_ratio >= W3_TARGET else "**not met**"
    lines += [
        "",
        f"loom-ray (B4_tuned) ÷ Kafka Connect (B6_tuned): **{times(found_ratio)}** (target ≥ 3×: {verdict}).",
        "",
    ]
    limit = found.get("limit")
    if limit:
        lines += [
            f"PostgreSQL's limit for these statements: **{rate(limit.get('msgs_per_s'))} msgs/s** "
            f"{_limit_windows(limit)} "
            f"(`loom_bench/w3_limit.py`: the route's staging COPY and upsert statement on records held in memory, "
            f"{limit['variant'].removeprefix('upsert_only_').removesuffix('conn')} connections, batches of 10 000); "
            f"loom-ray reaches {percent(limit.get('loom_share'))} of it. No system writing this table "
            f"this way can pass it, so on this machine the most loom-ray could be is "
            f"**{times(limit.get('peer_ceiling'))}** Kafka Connect's rate.",
            "",
        ]
    lines += [
        "loom-ray reads plain JSON (the route names 10 typed columns); the Debezium JDBC sink reads the same "
        "records in Connect's JSON-with-schema envelope (`JsonConverter`, `schemas.enable=true`, ~1 KB per "
        "value), the usual way to give it typed columns without a schema registry; `price` is a `double` there "
        "(a Connect `Decimal` in JSON is base64 bytes) bound into the same `numeric` column.",
        "",
    ]
    return "\n".join(lines)


def _limit_windows(limit: dict[str, Any]) -> str:
    """How a workload's PostgreSQL limit was measured: the median of its windows with their spread (one window
    in results from before it was measured once per repetition)."""
    windows = limit.get("windows")
    if not windows:
        return "(one window)"
    spread = limit.get("spread")
    shown = "" if spread is None else f", spread {spread * 100:.0f} %"
    flag = " ⚠" if limit.get("unsteady") else ""
    found = f"{rate(limit['min'])}–{rate(limit['max'])}{shown}"
    return f"(median of {len(windows)} windows, one per repetition: {found}){flag}"


def w4_section(results: dict[str, Any], source: str) -> str:
    """The W4 section (W1's records in the registry formats, into a typed table): medians, spread, ratio to Kafka
    Connect, share of PostgreSQL's limit, whether each run's table held exactly the committed records."""
    found = results["w4"]
    runs, systems, limit = found["runs"], found["systems"], found["limit"]
    loads = [r["load_1m_before"] for rs in runs.values() for r in rs]
    lines = [
        f"## W4: W1's {found['messages']:,} records as Avro (and Protobuf) through a Schema Registry, into a "
        "typed table, 16 partitions",
        "",
        f"From `{source}` ({results['mode']}, {results['started_at']}, `{results['command']}`), measured on a "
        f"2-core machine (1-minute load average {min(loads, default=0):.1f}–{max(loads, default=0):.1f} before the "
        f"runs, {found['load_average_at_end'][0]:.1f} at the end). Rate: committed offsets per second, as W3's, "
        f"over {found['window']['seconds']:.0f} s after {found['window']['warmup_s']:.0f} s of warm-up. Correct: "
        "after each run `w4_events` holds one row per committed offset, each the record at its coordinates.",
        "",
        "| System | msgs/s median (min–max, spread) | ÷ PostgreSQL's limit | CPU-s/M pipeline / PG / Kafka "
        "| runs correct | rows (last run) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for variant, reps in runs.items():
        correct = sum(1 for r in reps if r.get("correct"))
        system = systems[variant]
        share = percent(ratio(system.get("msgs_per_s"), limit.get("msgs_per_s")))
        cpu = " / ".join(number(system.get(k)) for k in _CPU_KEYS)
        lines.append(
            f"| {variant} | {with_spread(system)} | {share} | {cpu} | {correct} / {len(reps)} | {reps[-1]['rows']:,} |"
        )
    found_ratio = found["ratio"]
    verdict = "—" if found_ratio is None else "met" if found_ratio >= W4_TARGET else "**not met**"
    share = limit.get("loom_share")
    share_verdict = "—" if share is None else "met" if share >= W4_LIMIT_SHARE else "**not met**"
    lines += [
        "",
        f"loom-ray (B4_tuned, Avro) ÷ Kafka Connect (B6_tuned): **{times(found_ratio)}** (target ≥ 2×: {verdict}); "
        f"of PostgreSQL's limit for the same rows, **{percent(share)}** (target ≥ 85 %: {share_verdict}); on "
        f"Protobuf {percent(found.get('protobuf_share'))}.",
        "",
        f"PostgreSQL's limit: **{rate(limit.get('msgs_per_s'))} msgs/s** {_limit_windows(limit)} "
        "(`loom_bench/w4_limit.py`, B1 for these "
        f"rows: binary COPY of the typed rows from memory, {limit['variant'].removeprefix('copy_only_')}, batches of "
        "10 000). loom-ray reads each record with confluent-kafka's registry client (the schema fetched once per id) "
        "and fastavro (Protobuf: the message type built from the registry's schema), into an insert route; the "
        "Debezium JDBC sink reads them through Apicurio's Kafka Connect `AvroConverter` from the same registry and "
        "upserts by the Kafka coordinates. Apicurio's converter reads no Protobuf, so the Protobuf run has no peer.",
        "",
    ]
    return "\n".join(lines)


def render(
    results: dict[str, Any], source: str, notes: str = "", appendix: str = "", images: dict[str, str] | None = None
) -> str:
    """The whole ``BENCHMARKS.md``; ``notes`` (hand-written Markdown) follow the targets, ``appendix`` (the
    coordinator-at-scale section, ``bench-results/SCALE.md``) ends it; ``images`` are each workload's plot."""
    out = [
        "# Benchmarks",
        "",
        f"Generated by `python -m loom_bench` from `{source}` (mode **{results['mode']}**, "
        f"{results['started_at']}, {results['duration_s']:.0f} s). Do not edit by hand: rerun "
        "`python -m loom_bench --render <json>`.",
        "",
        *_run_facts(results),
        "## Targets (loom-ray = the faster of B4 and B4_tuned)",
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
            *([f"![{name}]({(images or {})[name]})", ""] if name in (images or {}) else []),
            *systems_table(workload),
            "",
            "### All variants",
            "",
            *variants_table(workload),
            "",
            "### Where the pipeline's CPU goes (CPU-s per million messages, drain window, median of the repetitions)",
            "",
            *cpu_split_table(workload),
            "",
            "### Where PostgreSQL's CPU goes (CPU-s per million messages, drain window, median of the repetitions)",
            "",
            *pg_split_table(workload),
            "",
            "### Latency under load (Kafka LogAppendTime → PostgreSQL commit)",
            "",
            *live_table(workload),
            "",
        ]
    out += ["## Bad input: W1 with 1 % malformed messages", "", *malformed_table(results.get("malformed")), ""]
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


MEANING = """
## What the numbers mean

- **msgs/s** is measured by PostgreSQL, not by the client: rows ÷ (last − first commit timestamp) over the
  timed window (full and quick runs: the commits from a warm-up after the first commit to the window's end),
  leaving out the window's first transaction (its rows were written before its timestamp). Start-up (Ray, the
  JVM of Kafka Connect, group joins) and the first seconds of draining are outside the window, the same for
  every system. B0 writes nothing and uses its own first/last batch times over passes of the topic; B1 copies
  passes of up to 100 000 rows held in memory. A smoke run (no window) drains the whole topic and times
  loom-ray from its first partition claim instead (it reads ahead of its first commit). "timed s" is the
  median length of the timed window.
- **÷ min(B0,B1)** compares with the slower stage measured alone, each using the whole machine; **÷ L_shared**
  compares with both stages sharing the same cores, 1/(1/B0 + 1/B1): the real ceiling on one box.
- **× B2** is against the naive consumer (per-message autocommit INSERT, bounded in time, rate extrapolated);
  **× B3** against quixstreams' PostgreSQL sink writing the same schema, best of its variants; **× B6_tuned**
  against Kafka Connect with Debezium's JDBC sink (upsert on (topic, partition, offset), at-least-once with
  idempotent writes; `key`/`headers` stay NULL, no stock transform copies them).
- **CPU-s/M** is CPU seconds per million messages inside the drain window: *pipeline* = every process the run
  started and their descendants (all of Ray for B4); *total* adds the bench database's backends, PostgreSQL's
  WAL writer/checkpointer and the Kafka JVM. *other load* is busy CPU nobody in the run explains: noise from
  other work on the machine (0 on a quiet machine).
- **peak RSS** is the largest sum of RSS over the run's process tree, sampled at 4 Hz (shared pages count once
  per process, so Ray's numbers are an upper bound).
- **latency** runs from the broker's append time (live topics use `LogAppendTime`, so the producer's own queueing
  on the shared cores is not counted) to the commit, leaving out each level's warm-up; the load generator runs on
  the same machine and its CPU is in the JSON (`producer_cpu_s`). A level the producer could not reach shows
  a lower "produced" than "offered". **cores busy** is the whole machine's busy CPU while the level's
  producer ran, in cores, then the part of it spent by the system, PostgreSQL, the broker and the producer: a
  level that keeps every core busy cannot keep up, whatever the pipeline's design, and its latency grows with
  the level's length. *I/O wait* is idle CPU time with disk I/O outstanding (in cores): a level that leaves
  cores idle while it waits on the disk is bound by the disk, not the CPU.
- **Where the pipeline's CPU goes** splits the pipeline's CPU by process: *workers* are the Ray actors
  (`ray::…`; B5's plain processes), *driver* is `loom_ray.main`, *Ray's own processes* the rest (raylet,
  GCS, dashboard and its agents, log monitor): what B4 pays over B5.
- **lost / dup**: offsets missing below each partition's highest written offset (a drain of the whole topic:
  offsets of the topic missing) / rows beyond distinct (partition, offset).
- Every system runs with `synchronous_commit = on` on a freshly created table (dropped, recreated, CHECKPOINT).
  The targets take loom-ray as the faster of B4 and B4_tuned; latency targets are B4_tuned's.
"""
