"""What the numbers were measured on: CPU, memory, kernel, load, and the versions of everything involved."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import psutil

PACKAGES = ("asyncpg", "confluent-kafka", "orjson", "pydantic", "ray", "psutil")
BENCH_PACKAGES = ("quixstreams", "confluent-kafka", "psycopg2-binary")


def machine() -> dict[str, Any]:
    """CPU model and count, memory, kernel, and the load average when called."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        model = next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def versions(bench_python: str | None, kafka_libs: Path | None) -> dict[str, str | None]:
    """Installed versions: ours, the bench venv's (quixstreams), librdkafka and the broker's jars."""
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    import confluent_kafka

    found["librdkafka"] = confluent_kafka.libversion()[0]
    found.update(_bench_versions(bench_python))
    found["kafka_broker"] = _broker_version(kafka_libs)
    return found


def _bench_versions(bench_python: str | None) -> dict[str, str | None]:
    if not bench_python:
        return {}
    script = "import importlib.metadata as m, sys\nfor n in sys.argv[1:]: print(n, m.version(n))"
    try:
        out = subprocess.run(
            [bench_python, "-c", script, *BENCH_PACKAGES], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {f"bench venv {name}": version for name, version in (line.split() for line in out.splitlines())}


def _broker_version(libs: Path | None) -> str | None:
    """The Kafka version from the broker's jar names (``kafka_2.13-4.1.0.jar``), if the jars are local."""
    if libs is None or not libs.is_dir():
        return None
    for jar in sorted(libs.glob("kafka_2.*-*.jar")):
        return jar.stem.split("-", 1)[1]
    return None
