"""SASL_SSL to Kafka: the pipeline reads a broker that only lets clients in with SCRAM over verified TLS.

The broker (:mod:`tests.support.sasl_broker`) also has a plaintext listener, used only by the test itself to
produce and to account for every offset; the job is given nothing but the SASL_SSL address.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pipeline import account, fill, pipeline_env, start_main
from tests.support.sasl_broker import SaslBroker, sasl_broker
from tests.support.services import Endpoints

EXIT_CONFIG = 2


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslBroker]:
    if shutil.which("java") is None:
        pytest.skip("the SASL_SSL broker runs from the Apache Kafka jars and needs Java")
    with sasl_broker(tmp_path_factory.mktemp("sasl-broker")) as started:
        yield started


def test_pipeline_reads_over_sasl_ssl_exactly_once(
    broker: SaslBroker, endpoints: Endpoints, topic_name: str, tmp_path: Path
) -> None:
    harness = Endpoints(broker.plaintext, endpoints.dsn, "SASL broker, plaintext listener")
    fill(harness, topic_name, 20_000, partitions=6)
    env = {**pipeline_env(harness, topic_name), **broker.loom_env(), "LOOM_MIN_ACTORS": "2", "LOOM_MAX_ACTORS": "2"}
    log = tmp_path / "main.log"
    assert start_main(env, "--exit-when-drained", log=log).wait(300) == 0, log.read_text()[-3000:]
    result = account(harness, topic_name)
    assert result.exact, str(result)
    assert result.expected == 20_000
    assert broker.password not in log.read_text()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("password", "Kafka refused the credentials"),
        ("ca", "TLS to Kafka failed"),
    ],
)
def test_bad_kafka_credentials_fail_at_start_with_a_clear_message(
    broker: SaslBroker, endpoints: Endpoints, topic_name: str, tmp_path: Path, change: str, expected: str
) -> None:
    harness = Endpoints(broker.plaintext, endpoints.dsn, "SASL broker, plaintext listener")
    fill(harness, topic_name, 10, partitions=1)
    wrong = "Wk" + broker.password[2:]
    env = {**pipeline_env(harness, topic_name), **broker.loom_env(password=wrong if change == "password" else None)}
    if change == "ca":
        env["LOOM_KAFKA_SSL_CA_LOCATION"] = str(broker.tls.wrong_ca)
    log = tmp_path / "main.log"
    assert start_main(env, "--exit-when-drained", log=log).wait(120) == EXIT_CONFIG, log.read_text()[-3000:]
    output = log.read_text()
    assert expected in output, output[-3000:]
    assert broker.password not in output and wrong not in output
