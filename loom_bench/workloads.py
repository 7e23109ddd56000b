"""Preloading a workload's topic once per run with the project's load generator.

A topic that already holds exactly the workload (same name, 16 partitions, same total) is reused, so
``--keep-topics`` saves the preload on the next run; anything else under that name is replaced.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

from loom_bench import kafka
from loom_bench.config import PARTITIONS, Workload
from loom_bench.launch import ROOT

log = logging.getLogger(__name__)


def loadgen_command(
    bootstrap: str,
    topic: str,
    messages: int,
    size: int,
    rate: float | None = None,
    partitions: int = PARTITIONS,
    malformed: float = 0.0,
) -> list[str]:
    """``python -m loom_ray.loadgen`` for ``messages`` events of ``size`` bytes over ``partitions``.

    All valid unless ``malformed`` > 0: then that fraction is malformed, cycling through every kind.
    """
    command = [sys.executable, "-m", "loom_ray.loadgen", "--topic", topic, "--partitions", str(partitions)]
    command += ["--messages", str(messages), "--size", str(size), "--bootstrap-servers", bootstrap]
    if malformed:
        command += ["--malformed-ratio", str(malformed)]
    if rate is not None:
        command += ["--rate", f"{rate:.1f}"]
    return command


def preload(bootstrap: str, workload: Workload, prefix: str, log_path: Path) -> tuple[str, float | None]:
    """The workload's topic, filled; and the seconds the preload took (None when reused)."""
    topic = workload.topic(prefix)
    marks = kafka.watermarks(bootstrap, topic)
    if marks is not None and len(marks) == PARTITIONS and kafka.total(marks) == workload.messages:
        log.info("reusing topic %s (%d messages)", topic, workload.messages)
        return topic, None
    if marks is not None:
        log.info("replacing topic %s (holds %d messages)", topic, kafka.total(marks))
        kafka.delete_topic(bootstrap, topic)
        time.sleep(2)  # the broker finishes the deletion asynchronously
    started = time.monotonic()
    command = loadgen_command(bootstrap, topic, workload.messages, workload.size, malformed=workload.malformed_ratio)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as out:
        subprocess.run(command, check=True, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    log.info("preloaded %s: %d messages of %d bytes in %.1fs", topic, workload.messages, workload.size, seconds)
    return topic, seconds
