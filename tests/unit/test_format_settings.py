"""The record-format settings: LOOM_FORMATS per topic, a route's format, the Schema Registry's URL and
credentials (secrets never shown)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loom_ray.errors import ConfigError
from loom_ray.formats.registry import client
from loom_ray.settings import Settings

REGISTRY = "http://registry:8081/apis/ccompat/v7"
ROUTE = """
[[route]]
name = "orders"
topic = "orders"
table = "orders"
format = "protobuf"

[route.columns]
id = { type = "bigint" }
"""


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings.from_env()


def _error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    with pytest.raises(ConfigError) as info:
        _settings(monkeypatch, **env)
    return str(info.value)


@pytest.mark.parametrize(
    ("formats", "expected"),
    [
        ("", {"orders": "json", "clicks": "json"}),
        ("avro", {"orders": "avro", "clicks": "avro"}),
        ("orders=protobuf", {"orders": "protobuf", "clicks": "json"}),
        ("avro, clicks=json", {"orders": "avro", "clicks": "json"}),
        ("clicks=json_schema,orders=avro", {"orders": "avro", "clicks": "json_schema"}),
    ],
)
def test_each_topic_gets_its_format(formats: str, expected: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(
        monkeypatch, LOOM_KAFKA_TOPICS="orders,clicks", LOOM_FORMATS=formats, LOOM_SCHEMA_REGISTRY_URL=REGISTRY
    )
    assert {topic: settings.format_of(topic) for topic in ("orders", "clicks")} == expected


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"LOOM_FORMATS": "orders=xml"}, "the format must be one of json, avro, protobuf, json_schema"),
        ({"LOOM_FORMATS": "avro,json"}, "one bare format"),
        ({"LOOM_FORMATS": "orders=avro,orders=json"}, "named twice"),
        (
            {"LOOM_FORMATS": "refunds=avro", "LOOM_SCHEMA_REGISTRY_URL": REGISTRY},
            "refunds, not among LOOM_KAFKA_TOPICS",
        ),
        (
            {"LOOM_FORMATS": "orders=avro"},
            "format avro reads schemas from a Schema Registry: set LOOM_SCHEMA_REGISTRY_URL",
        ),
        ({"LOOM_SCHEMA_REGISTRY_URL": "registry:8081"}, "must be http(s)://host"),
        ({"LOOM_SCHEMA_REGISTRY_URL": "http://u:secret-pw@registry:8081"}, "holds credentials"),
        (
            {"LOOM_SCHEMA_REGISTRY_URL": REGISTRY, "LOOM_SCHEMA_REGISTRY_SSL_KEY_PASSWORD": "secret-pw"},
            "set LOOM_SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION",
        ),
    ],
)
def test_format_mistakes_stop_the_start_saying_what_to_write(
    env: dict[str, str], words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = _error(monkeypatch, LOOM_KAFKA_TOPICS="orders", **env)
    assert words in message
    assert "secret-pw" not in message


def test_a_routes_format_wins_and_must_agree_with_loom_formats(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTE)
    env = {"LOOM_KAFKA_TOPICS": "orders", "LOOM_ROUTES_FILE": str(routes), "LOOM_SCHEMA_REGISTRY_URL": REGISTRY}
    assert _settings(monkeypatch, **env).format_of("orders") == "protobuf"
    assert _settings(monkeypatch, **env, LOOM_FORMATS="avro").format_of("orders") == "protobuf"  # the route's topic
    assert "LOOM_FORMATS says avro but route 'orders' says format = \"protobuf\"" in _error(
        monkeypatch, **env, LOOM_FORMATS="orders=avro"
    )
    monkeypatch.delenv("LOOM_FORMATS")
    monkeypatch.delenv("LOOM_SCHEMA_REGISTRY_URL")
    assert "format protobuf reads schemas" in _error(
        monkeypatch, LOOM_KAFKA_TOPICS="orders", LOOM_ROUTES_FILE=str(routes)
    )


def test_registry_secrets_reach_the_client_and_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(
        monkeypatch,
        LOOM_KAFKA_TOPICS="orders",
        LOOM_FORMATS="avro",
        LOOM_SCHEMA_REGISTRY_URL="https://registry:8081",
        LOOM_SCHEMA_REGISTRY_USERNAME="reader",
        LOOM_SCHEMA_REGISTRY_PASSWORD="registry-pw-1",
    )
    for rendered in (repr(settings), settings.summary(), settings.model_dump_json()):
        assert "registry-pw-1" not in rendered
    registry = client(settings)
    assert registry._rest_client.auth == ("reader", "registry-pw-1")
    assert registry._rest_client.max_retries == 0  # the consumer retries with backoff, never blocking a request
    message = _error(monkeypatch, LOOM_SCHEMA_REGISTRY_TIMEOUT_S="0")
    assert "registry-pw-1" not in message and "LOOM_SCHEMA_REGISTRY_TIMEOUT_S" in message
