"""How each system is started: its processes, environment, table and end condition.

Every system runs in processes of its own (each in a new session, so the whole tree can be measured
and stopped by process group), reading the same topic from a fresh consumer position.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from loom_bench.config import loom_env
from loom_bench.database import Schema

ROOT = Path(__file__).resolve().parents[1]

# Variants measured per workload and repetition, and the name each is reported under.
SYSTEMS: dict[str, str] = {
    "B0": "B0",
    "B1_1conn": "B1",
    "B1_2conn": "B1",
    "B2": "B2",
    "B3_default_1p": "B3",
    "B3_default_2p": "B3",
    "B3_ci05_1p": "B3",
    "B3_ci05_2p": "B3",
    "B4": "B4",
    "B4_tuned": "B4_tuned",
    "B5_1p": "B5",
    "B5_2p": "B5",
    "B6": "B6",
    "B6_tuned": "B6_tuned",
}
# ``--systems all``: the fastest variant of B1, B3 and B5 in earlier runs (and both of B4 and B6), so that a
# full run with 10 s windows and three repetitions fits in an hour on a loaded 2-core machine; name the other
# variants to measure them too.
ALL = ("B0", "B1_2conn", "B2", "B3_ci05_2p", "B4", "B4_tuned", "B5_2p", "B6", "B6_tuned")
LIMITS = ("B0", "B1_1conn", "B1_2conn")  # measured first, in this order; the rest is shuffled
# A system named in --systems or live mode stands for these variants.
LIVE_VARIANT = {"B3": "B3_ci05_2p", "B4": "B4", "B4_tuned": "B4_tuned", "B5": "B5_2p"}
CONNECT_DIR = ROOT / ".cache" / "connect"  # B6's jars (loom_bench/connect/pom.xml, fetched by scripts/bench.sh)
CONVERTER_DIR = ROOT / ".cache" / "connect-converter"  # W4's converter plugin (loom_bench/connect/converter/pom.xml)


def variants(names: list[str]) -> list[str]:
    """Expand ``all``, reported names (``B3``) and variants (``B3_ci05_1p``) into variants, in table order."""
    wanted = set(ALL) if names == ["all"] else set(names)
    return [v for v, group in SYSTEMS.items() if v in wanted or (group in wanted and names != ["all"])]


def malformed_variants(selected: list[str]) -> list[str]:
    """One variant per reported system for the malformed-input run: the first selected of each group."""
    chosen: dict[str, str] = {}
    for variant in selected:
        chosen.setdefault(SYSTEMS[variant], variant)
    return list(chosen.values())


@dataclass(frozen=True, slots=True)
class Target:
    """Where a run reads and writes."""

    bootstrap: str
    dsn: str
    topics: tuple[str, ...]
    messages: int  # what the topics hold (drain) or 0 (live)
    group: str  # a fresh consumer group / name for this run
    naive_seconds: float
    bench_python: str
    follow: bool = False  # live mode: run until stopped
    min_seconds: float = 0.0  # B1 repeats passes over its rows for this long, B0 for this or 3 s
    synchronous_commit: str = "on"  # also pinned on the bench database; "off" runs are labelled


@dataclass(frozen=True, slots=True)
class Launch:
    """The processes of one run; ``finish`` says how the harness knows it is done."""

    commands: list[list[str]]
    env: dict[str, str]
    schema: Schema
    finish: Literal["exit", "group"]
    extra: dict[str, str] = field(default_factory=dict)


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOM_", "RAY_ADDRESS"))}
    env.update({"PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"})
    return env


def _shown(env: dict[str, str]) -> dict[str, str]:
    """The ``LOOM_*`` settings of a run, for the report (never the DSN)."""
    return {k: v for k, v in sorted(env.items()) if k.startswith("LOOM_") and k != "LOOM_DB_DSN"}


def _module(python: str, name: str, *args: str) -> list[str]:
    return [python, "-m", f"loom_bench.systems.{name}", *args]


def _loom(target: Target, tuned: bool) -> dict[str, str]:
    env = _base_env()
    env.update(loom_env(tuned))
    env.update(
        {
            "LOOM_KAFKA_BOOTSTRAP_SERVERS": target.bootstrap,
            "LOOM_DB_DSN": target.dsn,
            "LOOM_KAFKA_TOPICS": ",".join(target.topics),
            "LOOM_KAFKA_GROUP_ID": target.group,
            "LOOM_DB_SYNCHRONOUS_COMMIT": target.synchronous_commit,
        }
    )
    return env


def launch(variant: str, target: Target) -> Launch:
    """The processes that run ``variant`` against ``target``."""
    py, topic = sys.executable, target.topics[0]
    kafka = ["--bootstrap", target.bootstrap]
    if variant == "B0":
        return Launch(
            [
                _module(
                    py,
                    "kafka_only",
                    *kafka,
                    "--topic",
                    topic,
                    "--messages",
                    str(target.messages),
                    "--min-seconds",
                    str(max(3.0, target.min_seconds)),
                )
            ],
            _base_env(),
            "none",
            "exit",
        )
    if variant.startswith("B1_"):
        conns = variant.removeprefix("B1_").removesuffix("conn")
        args = [*kafka, "--dsn", target.dsn, "--topic", topic, "--messages", str(target.messages)]
        args += ["--connections", conns, "--min-seconds", str(target.min_seconds)]
        return Launch([_module(py, "copy_only", *args)], _base_env(), "events", "exit")
    if variant == "B2":
        args = [*kafka, "--dsn", target.dsn, "--topic", topic, "--group", target.group]
        args += ["--messages", str(target.messages), "--seconds", str(target.naive_seconds)]
        return Launch([_module(py, "naive", *args)], _base_env(), "events", "exit")
    if variant.startswith("B3_"):
        _, interval, procs = variant.split("_")
        args = [*kafka, "--dsn", target.dsn, "--topics", ",".join(target.topics), "--group", target.group]
        if interval == "ci05":
            args += ["--commit-interval", "0.5"]
        command = _module(target.bench_python, "quix", *args)
        return Launch([command] * int(procs.removesuffix("p")), _base_env(), "events", "group")
    if variant in ("B4", "B4_tuned"):
        command = [py, "-m", "loom_ray.main", "--progress-interval", "5"]
        if not target.follow:
            command.append("--exit-when-drained")
        env = _loom(target, tuned=variant == "B4_tuned")
        return Launch([command], env, "loom", "exit", _shown(env))
    if variant.startswith("B5_"):
        count = int(variant.removeprefix("B5_").removesuffix("p"))
        follow = ["--follow"] if target.follow else []
        commands = [_module(py, "core", "--index", str(i), "--of", str(count), *follow) for i in range(count)]
        env = _loom(target, tuned=True)
        return Launch(commands, env, "loom", "exit", _shown(env))
    if variant in ("B6", "B6_tuned"):
        args = [*kafka, "--dsn", target.dsn, "--topics", ",".join(target.topics), "--group", target.group]
        args += ["--variant", "tuned" if variant == "B6_tuned" else "default", "--connect-dir", str(CONNECT_DIR)]
        args += ["--work-dir", str(CONNECT_DIR / "runs" / target.group)]
        return Launch([_module(py, "connect", *args)], _base_env(), "events", "group")
    raise ValueError(f"unknown system {variant!r}; expected one of {', '.join(SYSTEMS)}")
