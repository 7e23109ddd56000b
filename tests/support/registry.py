"""A real Schema Registry for the tests: Apicurio Registry 2.4.2 (Confluent API), built by
``scripts/dev-stack.sh registry`` (from Maven Central, once per change of its pom) and run as a process of the
test session, its schemas kept in a database of the session's PostgreSQL.

The session uses ``LOOM_SCHEMA_REGISTRY_URL`` when it is set (``scripts/with-stack.sh`` sets it from the local
stack); otherwise it starts a registry of its own. A test that stops the registry (an outage) starts one of its
own on the same database: same schemas, same ids, and the session's registry stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.support.services import DEV_STACK, Endpoints

API = "/apis/ccompat/v7"
DATABASE = "loom_registry"


def free_port() -> int:
    """A TCP port below 32768 that nothing listens on now (Linux hands out ephemeral ports above it)."""
    for port in range(28100, 28600):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 28100-28599")


def registry_app() -> Path:
    """The folder of the built registry (``registry.jar`` and ``lib/``); builds it the first time."""
    done = subprocess.run([str(DEV_STACK), "registry"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(done.stdout.strip().splitlines()[-1])


async def _ensure_database(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def answers(url: str) -> bool:
    """Whether the registry at ``url`` (the Confluent API's root) answers."""
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=2) as response:  # noqa: S310 (a local http URL)
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class RegistryProcess:
    """One registry process on ``port``, its schemas in database ``database`` of ``dsn``'s server."""

    dsn: str
    port: int
    log: Path
    database: str = DATABASE
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{API}"

    def start(self) -> RegistryProcess:
        """Start it and wait until it answers (a few seconds)."""
        asyncio.run(_ensure_database(self.dsn, self.database))
        app = registry_app()
        parts = urlsplit(self.dsn)
        jdbc = urlunsplit(("jdbc:postgresql", f"{parts.hostname}:{parts.port or 5432}", f"/{self.database}", "", ""))
        env = {
            **os.environ,
            "REGISTRY_DATASOURCE_URL": jdbc,
            "REGISTRY_DATASOURCE_USERNAME": parts.username or "",
            "REGISTRY_DATASOURCE_PASSWORD": parts.password or "",
        }
        command = ["java", "-Xmx160m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
        command += ["-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={self.port}"]
        command += [f"-D%prod.quarkus.datasource.jdbc.{key}={n}" for key, n in (("min-size", 1), ("initial-size", 1))]
        command += ["-D%prod.quarkus.datasource.jdbc.max-size=4", "-jar", str(app / "registry.jar")]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while not answers(self.url):
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the schema registry did not answer in 90 s"
            time.sleep(0.25)
        return self

    def stop(self) -> None:
        """SIGTERM it (by pid) and wait; SIGKILL after 20 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(20)


@contextlib.contextmanager
def session_registry(endpoints: Endpoints, log: Path) -> Iterator[str]:
    """The URL of a running registry for the test session (see the module docstring)."""
    given = os.environ.get("LOOM_SCHEMA_REGISTRY_URL")
    if given:
        yield given
        return
    server = RegistryProcess(endpoints.dsn, free_port(), log).start()
    try:
        yield server.url
    finally:
        server.stop()
