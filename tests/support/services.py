"""Find a Kafka broker and a PostgreSQL server for the tests, in this order:

1. endpoints given in the environment (``LOOM_KAFKA_BOOTSTRAP_SERVERS`` and ``LOOM_DB_DSN``);
2. testcontainers (Kafka in KRaft mode and PostgreSQL 15) when a Docker engine answers;
3. the local stack, ``scripts/dev-stack.sh up`` (Apache Kafka jars + PostgreSQL binaries), stopped
   afterwards only if this session started it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEV_STACK = ROOT / "scripts" / "dev-stack.sh"


@dataclass(frozen=True)
class Endpoints:
    kafka: str
    dsn: str
    source: str  # "environment", "testcontainers" or "local stack"


def docker_answers() -> bool:
    """Whether a Docker engine responds (never true on the CI machine, which has none)."""
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


@contextlib.contextmanager
def _containers() -> Iterator[Endpoints]:
    from testcontainers.community.kafka import KafkaContainer
    from testcontainers.community.postgres import PostgresContainer

    with (
        KafkaContainer("confluentinc/cp-kafka:8.0.0").with_kraft() as kafka,
        PostgresContainer("postgres:15", username="loom", password="loom", dbname="loom", driver=None).with_command(
            "postgres -c track_commit_timestamp=on -c max_connections=200"
        ) as pg,
    ):
        yield Endpoints(kafka.get_bootstrap_server(), pg.get_connection_url(), "testcontainers")


@contextlib.contextmanager
def _local_stack() -> Iterator[Endpoints]:
    running = subprocess.run([DEV_STACK, "status"], capture_output=True, text=True, check=True).stdout
    started_here = "stopped" in running
    subprocess.run([DEV_STACK, "up"], check=True)
    exports = subprocess.run([DEV_STACK, "env"], capture_output=True, text=True, check=True).stdout
    values = dict(line.removeprefix("export ").split("=", 1) for line in exports.splitlines() if "=" in line)
    try:
        yield Endpoints(values["LOOM_KAFKA_BOOTSTRAP_SERVERS"], values["LOOM_DB_DSN"], "local stack")
    finally:
        if started_here:
            subprocess.run([DEV_STACK, "down"], check=False)


@contextlib.contextmanager
def services() -> Iterator[Endpoints]:
    """Kafka and PostgreSQL endpoints for one test session."""
    kafka, dsn = os.environ.get("LOOM_KAFKA_BOOTSTRAP_SERVERS"), os.environ.get("LOOM_DB_DSN")
    if kafka and dsn:
        yield Endpoints(kafka, dsn, "environment")
    elif docker_answers():
        with _containers() as endpoints:
            yield endpoints
    else:
        with _local_stack() as endpoints:
            yield endpoints
