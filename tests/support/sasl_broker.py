"""A second Apache Kafka broker that only lets clients in over SASL_SSL (SCRAM-SHA-512, TLS verified).

Started from the jars ``scripts/dev-stack.sh jars`` resolves, in KRaft combined mode, on free loopback
ports: ``SASL_SSL`` for clients, ``PLAINTEXT`` for the test's own producer and checks (inter-broker), and
the controller. The SCRAM credential is written into the metadata when the storage is formatted
(``--add-scram``); the server's key and certificate are PEM files from :mod:`tests.support.tls`. It is
stopped by its pid when the context exits.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from tests.support.services import DEV_STACK
from tests.support.tls import TlsFiles, make_tls_files

USERNAME = "loom-sasl"


@dataclass(frozen=True)
class SaslBroker:
    sasl_ssl: str  # host:port clients must use
    plaintext: str  # host:port for the test harness only
    username: str
    password: str
    tls: TlsFiles

    def loom_env(self, password: str | None = None) -> dict[str, str]:
        """The ``LOOM_KAFKA_*`` variables a pipeline needs to reach this broker."""
        return {
            "LOOM_KAFKA_BOOTSTRAP_SERVERS": self.sasl_ssl,
            "LOOM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "LOOM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "LOOM_KAFKA_SASL_USERNAME": self.username,
            "LOOM_KAFKA_SASL_PASSWORD": self.password if password is None else password,
            "LOOM_KAFKA_SSL_CA_LOCATION": str(self.tls.ca),
        }


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _properties(directory: Path, tls: TlsFiles, client: int, internal: int, controller: int) -> Path:
    (directory / "server.pem").write_text(tls.server_key.read_text() + tls.server_cert.read_text())
    lines = [
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller}",
        f"listeners=SASL_SSL://127.0.0.1:{client},PLAINTEXT://127.0.0.1:{internal},CONTROLLER://127.0.0.1:{controller}",
        f"advertised.listeners=SASL_SSL://127.0.0.1:{client},PLAINTEXT://127.0.0.1:{internal}",
        "listener.security.protocol.map=SASL_SSL:SASL_SSL,PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={directory / 'server.pem'}",
        f"log.dirs={directory / 'data'}",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=2",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
    ]
    path = directory / "server.properties"
    path.write_text("\n".join(lines) + "\n")
    return path


def _java(libs: str, *args: str) -> list[str]:
    return ["java", "-Xms256m", "-Xmx256m", "-cp", f"{libs}/*", *args]


def _wait_ready(process: subprocess.Popen[bytes], log: Path, plaintext: str, timeout_s: float = 120) -> None:
    """Until the broker answers a metadata request on its plaintext listener."""
    admin = AdminClient({"bootstrap.servers": plaintext})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the SASL broker exited: {log.read_text()[-3000:]}"
        with contextlib.suppress(KafkaException):
            if admin.list_topics(timeout=2).brokers:
                return
        time.sleep(0.5)
    raise AssertionError(f"the SASL broker did not answer in {timeout_s:.0f}s: {log.read_text()[-3000:]}")


@contextlib.contextmanager
def sasl_broker(directory: Path) -> Iterator[SaslBroker]:
    """Start the broker under ``directory``; stop it (by pid) on exit."""
    libs = subprocess.run([DEV_STACK, "jars"], capture_output=True, text=True, check=True).stdout.strip()
    tls = make_tls_files(directory / "tls")
    client, internal, controller = _free_ports(3)
    properties = _properties(directory, tls, client, internal, controller)
    password = "Kp" + secrets.token_urlsafe(24)
    cluster = subprocess.run(
        _java(libs, "kafka.tools.StorageTool", "random-uuid"), capture_output=True, text=True, check=True
    ).stdout.strip()
    subprocess.run(
        _java(libs, "kafka.tools.StorageTool", "format", "-t", cluster, "-c", str(properties),
              "--add-scram", f"SCRAM-SHA-512=[name={USERNAME},password={password}]"),
        capture_output=True, check=True,
    )  # fmt: skip
    log = directory / "kafka.log"
    with log.open("wb") as out:
        process = subprocess.Popen(_java(libs, "kafka.Kafka", str(properties)), stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(process, log, f"127.0.0.1:{internal}")
        yield SaslBroker(f"127.0.0.1:{client}", f"127.0.0.1:{internal}", USERNAME, password, tls)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)
