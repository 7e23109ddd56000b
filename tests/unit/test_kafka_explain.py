"""The start-up message for a failed Kafka metadata request names the variables to check."""

from confluent_kafka import KafkaError, KafkaException

from loom_ray.kafka.admin import explain

TRANSPORT = KafkaException(KafkaError(KafkaError._TRANSPORT, "Failed to get metadata: Local: Broker transport failure"))
BOOTSTRAP = "kafka:9093"


def test_refused_credentials_name_the_sasl_variables() -> None:
    auth = KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: Authentication failed")
    message = explain(TRANSPORT, [auth, KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")], BOOTSTRAP)
    assert message.startswith("Kafka refused the credentials (SASL authentication error")
    assert "LOOM_KAFKA_SASL_PASSWORD" in message and "LOOM_KAFKA_SASL_USERNAME" in message


def test_tls_failure_names_the_ca_variable() -> None:
    message = explain(TRANSPORT, [KafkaError(KafkaError._SSL, "certificate verify failed")], BOOTSTRAP)
    assert "certificate verify failed" in message and "LOOM_KAFKA_SSL_CA_LOCATION" in message


def test_no_answer_names_the_bootstrap_servers() -> None:
    message = explain(TRANSPORT, [], BOOTSTRAP)
    assert message.startswith("Kafka at kafka:9093 did not answer (Failed to get metadata")
    assert "LOOM_KAFKA_BOOTSTRAP_SERVERS" in message
    timed_out = KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out"))
    last = KafkaError(KafkaError._TRANSPORT, "Connection refused")
    assert "last error: Connection refused" in explain(timed_out, [last], BOOTSTRAP)


def test_missing_topic_names_the_topics_variable() -> None:
    missing = KafkaException("topic 'orders' not found: Broker: Unknown topic or partition")
    assert explain(missing, [], BOOTSTRAP) == (
        "topic 'orders' not found: Broker: Unknown topic or partition; create the topic or fix LOOM_KAFKA_TOPICS"
    )


def test_only_no_answer_is_worth_waiting_for() -> None:
    from loom_ray.kafka.admin import unreachable

    assert unreachable(TRANSPORT, [])
    assert unreachable(KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out")), [])
    auth = KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error")
    assert not unreachable(TRANSPORT, [auth])  # refused credentials: fix them, waiting changes nothing
    assert not unreachable(TRANSPORT, [KafkaError(KafkaError._SSL, "certificate verify failed")])
    assert not unreachable(KafkaException("topic 'orders' not found"), [])
