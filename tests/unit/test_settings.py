"""Settings.from_env(): defaults, every LOOM_* variable, every validation rule, and secrets never shown."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from loom_ray.db import session_settings
from loom_ray.errors import ConfigError
from loom_ray.settings import Settings, env_name

EXAMPLE_ROUTES = Path(__file__).resolve().parents[2] / "examples" / "routes.toml"

MiB = 1024**2
SECRET = "hunter2"


def _error(monkeypatch: pytest.MonkeyPatch, **env: str) -> ConfigError:
    """Set ``env`` and return the ConfigError that Settings.from_env() must raise."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        Settings.from_env()
    return info.value


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings.from_env()


def _plain(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


# --- defaults -------------------------------------------------------------------------------------------------

SEED_DEFAULTS = {
    "kafka_batch_size": 200,
    "kafka_batch_timeout": 0.5,
    "kafka_max_poll_records": 500,
    "kafka_fetch_max_bytes": 52_428_800,  # 50 MiB
    "kafka_session_timeout_ms": 60_000,
    "kafka_auto_commit_interval_ms": 5000,
    "db_synchronous_commit": "off",
    "db_jit": "off",
    "min_actors": 3,
    "max_actors": 10,
    "kafka_topics": ("events",),
    "kafka_auto_offset_reset": "earliest",
    "kafka_isolation_level": "read_committed",
    "kafka_security_protocol": "PLAINTEXT",
    "kafka_sasl_password": None,
    "audit": False,
}


@pytest.mark.parametrize(("field", "expected"), SEED_DEFAULTS.items(), ids=list(SEED_DEFAULTS))
def test_defaults_match_the_seed(field: str, expected: Any) -> None:
    assert getattr(Settings.from_env(), field) == expected


def test_from_env_overrides_take_precedence_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOM_KAFKA_BATCH_SIZE", "300")
    assert Settings.from_env(kafka_batch_size=400).kafka_batch_size == 400


# --- every variable is read -----------------------------------------------------------------------------------

# field -> (text of LOOM_<FIELD>, parsed value); each value differs from the default and is valid on its own.
SAMPLES: dict[str, tuple[str, Any]] = {
    "kafka_bootstrap_servers": ("k1:9093,k2:9093", "k1:9093,k2:9093"),
    "kafka_topics": ("orders,payments", ("orders", "payments")),
    "kafka_group_id": ("grp-x", "grp-x"),
    "kafka_auto_offset_reset": ("latest", "latest"),
    "kafka_isolation_level": ("read_uncommitted", "read_uncommitted"),
    "kafka_batch_size": ("250", 250),
    "kafka_batch_timeout": ("1.5", 1.5),
    "kafka_max_poll_records": ("1000", 1000),
    "kafka_fetch_max_bytes": ("1048576", 1_048_576),
    "kafka_session_timeout_ms": ("30000", 30_000),
    "kafka_auto_commit_interval_ms": ("1000", 1000),
    "kafka_security_protocol": ("SSL", "SSL"),
    "kafka_sasl_mechanism": ("SCRAM-SHA-512", "SCRAM-SHA-512"),
    "kafka_sasl_username": ("alice", "alice"),
    "kafka_sasl_password": ("pw-sasl", "pw-sasl"),
    "kafka_ssl_ca_location": ("/etc/ca.pem", "/etc/ca.pem"),
    "kafka_ssl_certificate_location": ("/etc/cert.pem", "/etc/cert.pem"),
    "kafka_ssl_key_location": ("/etc/key.pem", "/etc/key.pem"),
    "kafka_ssl_key_password": ("pw-key", "pw-key"),
    "db_dsn": ("postgresql://u:pw@db:5432/x", "postgresql://u:pw@db:5432/x"),
    "db_schema": ("loom", "loom"),
    "db_min_pool_size": ("1", 1),
    "db_max_pool_size": ("20", 20),
    "db_synchronous_commit": ("on", "on"),
    "db_jit": ("on", "on"),
    "db_statement_timeout_ms": ("0", 0),
    "db_idle_in_transaction_timeout_ms": ("0", 0),
    "batch_max_bytes": ("4096", 4096),
    "buffer_max_bytes": (str(16 * MiB), 16 * MiB),
    "max_message_bytes": ("1000", 1000),
    "dead_letter_max_bytes": ("0", 0),
    "min_actors": ("2", 2),
    "max_actors": ("20", 20),
    "actor_num_cpus": ("0.5", 0.5),
    "actor_memory_bytes": ("536870912", 536_870_912),
    "ray_namespace": ("other", "other"),
    "health_check_interval_s": ("0.25", 0.25),
    "lag_sample_interval_s": ("30", 30.0),
    "lag_history_retention_s": ("86400", 86_400.0),
    "shutdown_timeout_s": ("12.5", 12.5),
    "scale_catchup_s": ("30", 30.0),
    "audit": ("true", True),
    "routes_file": (str(EXAMPLE_ROUTES), EXAMPLE_ROUTES),
    "deployment": ("orders-eu", "orders-eu"),
    "startup_timeout_s": ("30", 30.0),
    "driver_log_max_bytes": ("1048576", 1_048_576),
    "formats": ("json", ("json",)),
    "schema_registry_url": ("https://sr1:8081,https://sr2:8081", "https://sr1:8081,https://sr2:8081"),
    "schema_registry_username": ("reader", "reader"),
    "schema_registry_password": ("pw-registry", "pw-registry"),
    "schema_registry_ssl_ca_location": ("/etc/sr-ca.pem", "/etc/sr-ca.pem"),
    "schema_registry_ssl_certificate_location": ("/etc/sr-cert.pem", "/etc/sr-cert.pem"),
    "schema_registry_ssl_key_location": ("/etc/sr-key.pem", "/etc/sr-key.pem"),
    "schema_registry_ssl_key_password": ("pw-sr-key", "pw-sr-key"),
    "schema_registry_timeout_s": ("2.5", 2.5),
}


def test_samples_cover_every_field() -> None:
    # A field added to Settings must get a sample here, so the test below proves its variable is read.
    assert set(SAMPLES) == set(Settings.model_fields)


@pytest.mark.parametrize("field", SAMPLES)
def test_each_variable_is_read(field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    text, expected = SAMPLES[field]
    assert _plain(Settings.model_fields[field].default) != expected, "sample must differ from the default"
    settings = _settings(monkeypatch, **{env_name(field): text})
    assert _plain(getattr(settings, field)) == expected


def test_all_variables_together(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(monkeypatch, **{env_name(field): text for field, (text, _) in SAMPLES.items()})
    assert {field: _plain(getattr(settings, field)) for field in SAMPLES} == {
        field: expected for field, (_, expected) in SAMPLES.items()
    }


def test_env_name() -> None:
    assert env_name("kafka_batch_size") == "LOOM_KAFKA_BATCH_SIZE"


# --- topics -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("orders", ("orders",)),
        ("orders,payments", ("orders", "payments")),
        (" orders , payments ,refunds ", ("orders", "payments", "refunds")),
        ("orders,,payments,", ("orders", "payments")),  # empty segments are dropped
        ("a.b_c-D9", ("a.b_c-D9",)),
        ("t" * 249, ("t" * 249,)),  # Kafka's maximum length
    ],
)
def test_topics_split_on_commas_and_trimmed(
    text: str, expected: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _settings(monkeypatch, LOOM_KAFKA_TOPICS=text).kafka_topics == expected


@pytest.mark.parametrize("bad", ["bad topic", "a/b", "orders?", "tópico", "t" * 250])
def test_bad_topic_names_are_refused(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    message = str(_error(monkeypatch, LOOM_KAFKA_TOPICS=f"orders,{bad}"))
    assert "LOOM_KAFKA_TOPICS" in message
    assert "is not a Kafka topic name" in message


@pytest.mark.parametrize("bad", [".", ".."])
def test_dot_topic_names_are_refused(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "LOOM_KAFKA_TOPICS" in str(_error(monkeypatch, LOOM_KAFKA_TOPICS=bad))


@pytest.mark.parametrize("empty", ["", " ", ",", " , ,"])
def test_empty_topics_are_refused(empty: str, monkeypatch: pytest.MonkeyPatch) -> None:
    message = str(_error(monkeypatch, LOOM_KAFKA_TOPICS=empty))
    assert "LOOM_KAFKA_TOPICS" in message
    assert "at least one topic" in message


# --- numeric ranges, read from the field metadata so fields added later are covered ------------------------


def _bounds(field: str) -> dict[str, Any]:
    """{'ge'|'gt': low, 'le'|'lt': high} from the field's constraints."""
    found: dict[str, Any] = {}
    for constraint in Settings.model_fields[field].metadata:
        for kind in ("ge", "gt", "le", "lt"):
            if hasattr(constraint, kind):
                found[kind] = getattr(constraint, kind)
    return found


def _numeric_fields() -> list[str]:
    return [name for name, info in Settings.model_fields.items() if info.annotation in (int, float)]


def _out_of_range_cases() -> list[Any]:
    cases = []
    for field in _numeric_fields():
        bounds = _bounds(field)
        if "ge" in bounds:
            cases.append(pytest.param(field, bounds["ge"] - 1, id=f"{field}-below"))
        if "gt" in bounds:
            cases.append(pytest.param(field, bounds["gt"], id=f"{field}-at-exclusive-min"))
        if "le" in bounds:
            cases.append(pytest.param(field, bounds["le"] + 1, id=f"{field}-above"))
        if "lt" in bounds:
            cases.append(pytest.param(field, bounds["lt"], id=f"{field}-at-exclusive-max"))
    return cases


OUT_OF_RANGE = _out_of_range_cases()


def test_range_cases_are_generated_for_every_numeric_field() -> None:
    fields = {case.values[0] for case in OUT_OF_RANGE}
    assert "kafka_batch_size" in fields
    assert fields == set(_numeric_fields())
    assert len(OUT_OF_RANGE) == 2 * len(fields)  # every numeric field has a lower and an upper bound


@pytest.mark.parametrize(("field", "value"), OUT_OF_RANGE)
def test_out_of_range_value_names_variable_and_range(field: str, value: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    variable = env_name(field)
    message = str(_error(monkeypatch, **{variable: str(value)}))
    assert f"{variable}='{value}'" in message
    bounds = _bounds(field)
    low, high = bounds.get("ge", bounds.get("gt")), bounds.get("le", bounds.get("lt"))
    if "ge" in bounds and "le" in bounds:
        assert f"(accepted: {low} to {high})" in message
    else:  # an exclusive bound: its wording is left to the fix of the bug below, but both numbers are given
        assert "accepted:" in message
        assert str(low) in message
        assert f"{high})" in message


def test_batch_size_message_literally(monkeypatch: pytest.MonkeyPatch) -> None:
    message = str(_error(monkeypatch, LOOM_KAFKA_BATCH_SIZE="0"))
    assert message.startswith("invalid configuration:")
    assert "LOOM_KAFKA_BATCH_SIZE='0'" in message
    assert "accepted: 1 to 100000" in message


EXCLUSIVE_MIN = [f for f in _numeric_fields() if "gt" in _bounds(f)]


@pytest.mark.parametrize("field", EXCLUSIVE_MIN)
def test_accepted_text_does_not_claim_an_excluded_bound(field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    low = _bounds(field)["gt"]
    message = str(_error(monkeypatch, **{env_name(field): str(low)}))
    assert f"accepted: {low} to" not in message


# Relations between fields: when a field of a pair is set to a bound, its partner is set so the pair stays valid.
PAIRS = [
    ("db_min_pool_size", "db_max_pool_size"),
    ("min_actors", "max_actors"),
    ("batch_max_bytes", "buffer_max_bytes"),
]


def _inclusive_bound_cases() -> list[Any]:
    cases = []
    for field in _numeric_fields():
        bounds = _bounds(field)
        for kind in ("ge", "le"):
            if kind in bounds:
                cases.append(pytest.param(field, bounds[kind], id=f"{field}-{kind}"))
    return cases


@pytest.mark.parametrize(("field", "value"), _inclusive_bound_cases())
def test_inclusive_bounds_are_accepted(field: str, value: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {env_name(field): str(value)}
    for low_field, high_field in PAIRS:
        if field == low_field:
            env[env_name(high_field)] = str(_bounds(high_field)["le"])
        elif field == high_field:
            env[env_name(low_field)] = str(_bounds(low_field)["ge"])
    assert getattr(_settings(monkeypatch, **env), field) == value


@pytest.mark.parametrize("text", ["abc", "12abc", "nan", "inf"])
@pytest.mark.parametrize("field", _numeric_fields())
def test_non_numeric_text_is_refused(field: str, text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    variable = env_name(field)
    assert f"{variable}='{text}'" in str(_error(monkeypatch, **{variable: text}))


@pytest.mark.parametrize("field", [f for f in _numeric_fields() if Settings.model_fields[f].annotation is int])
def test_fractional_text_for_an_int_is_refused(field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert env_name(field) in str(_error(monkeypatch, **{env_name(field): "1.5"}))


# --- literals ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "bad", "accepted"),
    [
        ("LOOM_KAFKA_AUTO_OFFSET_RESET", "middle", ["earliest", "latest"]),
        ("LOOM_DB_SYNCHRONOUS_COMMIT", "maybe", ["on", "off", "local", "remote_write", "remote_apply"]),
        ("LOOM_KAFKA_SECURITY_PROTOCOL", "TLS", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]),
        ("LOOM_KAFKA_SASL_MECHANISM", "GSSAPI", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]),
        ("LOOM_DB_JIT", "yes", ["on", "off"]),
        ("LOOM_AUDIT", "maybe", []),
    ],
)
def test_bad_literal_is_refused(variable: str, bad: str, accepted: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    message = str(_error(monkeypatch, **{variable: bad}))
    assert f"{variable}='{bad}'" in message
    for option in accepted:
        assert f"'{option}'" in message


# --- relations between fields -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"LOOM_DB_MIN_POOL_SIZE": "9"}, ["LOOM_DB_MIN_POOL_SIZE", "LOOM_DB_MAX_POOL_SIZE"]),  # default max is 8
        (
            {"LOOM_DB_MIN_POOL_SIZE": "5", "LOOM_DB_MAX_POOL_SIZE": "4"},
            ["LOOM_DB_MIN_POOL_SIZE", "LOOM_DB_MAX_POOL_SIZE"],
        ),
        ({"LOOM_MIN_ACTORS": "5", "LOOM_MAX_ACTORS": "4"}, ["LOOM_MIN_ACTORS", "LOOM_MAX_ACTORS"]),
        ({"LOOM_MIN_ACTORS": "11"}, ["LOOM_MIN_ACTORS", "LOOM_MAX_ACTORS"]),  # default max is 10
        ({"LOOM_BATCH_MAX_BYTES": str(64 * MiB + 1)}, ["LOOM_BATCH_MAX_BYTES", "LOOM_BUFFER_MAX_BYTES"]),
        (
            {"LOOM_BATCH_MAX_BYTES": "4096", "LOOM_BUFFER_MAX_BYTES": "4095"},
            ["LOOM_BATCH_MAX_BYTES", "LOOM_BUFFER_MAX_BYTES"],
        ),
    ],
)
def test_min_above_max_is_refused(env: dict[str, str], named: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    message = str(_error(monkeypatch, **env))
    for variable in named:
        assert variable in message


@pytest.mark.parametrize(
    "env",
    [
        {"LOOM_DB_MIN_POOL_SIZE": "8", "LOOM_DB_MAX_POOL_SIZE": "8"},
        {"LOOM_MIN_ACTORS": "4", "LOOM_MAX_ACTORS": "4"},
        {"LOOM_BATCH_MAX_BYTES": "4096", "LOOM_BUFFER_MAX_BYTES": "4096"},
    ],
)
def test_equal_min_and_max_are_accepted(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    _settings(monkeypatch, **env)


SASL_CREDENTIALS = {
    "LOOM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
    "LOOM_KAFKA_SASL_USERNAME": "alice",
    "LOOM_KAFKA_SASL_PASSWORD": SECRET,
}


@pytest.mark.parametrize("missing", [*SASL_CREDENTIALS, "all"])
@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_without_credentials_is_refused(protocol: str, missing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: v for k, v in SASL_CREDENTIALS.items() if missing not in (k, "all")}
    message = str(_error(monkeypatch, LOOM_KAFKA_SECURITY_PROTOCOL=protocol, **env))
    assert f"LOOM_KAFKA_SECURITY_PROTOCOL={protocol}" in message
    assert (missing if missing != "all" else "LOOM_KAFKA_SASL_PASSWORD") in message
    assert SECRET not in message


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_with_credentials_is_accepted(protocol: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(monkeypatch, LOOM_KAFKA_SECURITY_PROTOCOL=protocol, **SASL_CREDENTIALS)
    assert settings.kafka_security_protocol == protocol


# --- DSN ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dsn", [f"mysql://u:{SECRET}@h/db", f"host=h password={SECRET} dbname=db", f"postgresql:/u:{SECRET}@h/db", SECRET]
)
def test_dsn_must_be_postgresql_and_is_hidden(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    error = _error(monkeypatch, LOOM_DB_DSN=dsn)
    message = str(error)
    assert "LOOM_DB_DSN=(hidden)" in message
    assert "postgresql://" in message
    assert SECRET not in message
    assert SECRET not in repr(error)
    # The pydantic error (which quotes the raw input) is not chained, so a logged traceback cannot leak it.
    assert SECRET not in "".join(traceback.format_exception(error))


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://u:{SECRET}@h:notaport/db",
        f"postgresql://u:{SECRET}@h:0/db",
        f"postgresql://u:{SECRET}@h:70000/db",
        f"postgresql://u:{SECRET}@a:5432,b:x/db",
    ],
)
def test_dsn_port_must_be_a_number_and_is_hidden(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    message = str(_error(monkeypatch, LOOM_DB_DSN=dsn))
    assert "LOOM_DB_DSN=(hidden)" in message
    assert "port" in message
    assert SECRET not in message


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:pw@h:5432/db",
        "postgres://u:pw@h/db?sslmode=verify-full",
        "postgresql://u:p:w@h/db",
        "postgresql://a:5432,b:5433/db",
        "postgresql://u@[::1]:5432/db",
        "postgresql://u@[::1]/db",
        "postgresql:///db?host=/run/postgresql",
    ],
)
def test_postgresql_dsns_are_accepted(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings(monkeypatch, LOOM_DB_DSN=dsn).dsn == dsn


# --- schema -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schema",
    ['loom"; DROP TABLE loom_offsets; --', "loom.public", "1loom", "", "a" * 64, "pg_catalog", "lo om", "loöm"],
)
def test_hostile_or_invalid_schema_is_refused_at_start(schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    message = str(_error(monkeypatch, LOOM_DB_SCHEMA=schema))
    assert "LOOM_DB_SCHEMA" in message and "plain SQL identifier" in message


@pytest.mark.parametrize("schema", ["loom", "Loom_2", "_x", "a" * 63])
def test_schema_goes_quoted_into_every_session(schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(monkeypatch, LOOM_DB_SCHEMA=schema)
    assert session_settings(settings, "x")["search_path"] == f'"{schema}"'


# --- secrets ------------------------------------------------------------------------------------------------------

SECRETS_ENV = {
    "LOOM_DB_DSN": "postgresql://loom:dsn-pass-123@db:5432/loom",
    "LOOM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "LOOM_KAFKA_SASL_MECHANISM": "PLAIN",
    "LOOM_KAFKA_SASL_USERNAME": "alice",
    "LOOM_KAFKA_SASL_PASSWORD": "sasl-pass-456",
    "LOOM_KAFKA_SSL_KEY_PASSWORD": "key-pass-789",
}
SECRET_TEXTS = ["dsn-pass-123", "sasl-pass-456", "key-pass-789"]


@pytest.mark.parametrize(
    "render",
    [repr, str, Settings.summary, Settings.model_dump_json, lambda s: str(s.model_dump()), lambda s: f"{s!r}"],
    ids=["repr", "str", "summary", "model_dump_json", "model_dump", "format"],
)
def test_secrets_never_rendered(render: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(monkeypatch, **SECRETS_ENV)
    # The secrets are really held (so their absence below means something) ...
    assert settings.dsn == SECRETS_ENV["LOOM_DB_DSN"]
    assert settings.kafka_client_config()["sasl.password"] == "sasl-pass-456"
    # ... and never rendered.
    text = render(settings)
    assert "kafka_batch_size" in text or "200" in text  # the rendering really shows the settings
    for secret in SECRET_TEXTS:
        assert secret not in text


def test_summary_is_one_line_of_key_values(monkeypatch: pytest.MonkeyPatch) -> None:
    summary = _settings(monkeypatch, **SECRETS_ENV).summary()
    assert "\n" not in summary
    assert "kafka_batch_size=200" in summary
    assert "kafka_sasl_username=alice" in summary


@pytest.mark.parametrize(
    "env",
    [
        {"LOOM_DB_DSN": f"mysql://u:{SECRET}@h/db"},
        {"LOOM_DB_DSN": f"postgresql://u:{SECRET}@h/db", "LOOM_KAFKA_BATCH_SIZE": "0"},
        {"LOOM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "LOOM_KAFKA_SASL_PASSWORD": SECRET},
        {"LOOM_KAFKA_SSL_KEY_PASSWORD": SECRET, "LOOM_MIN_ACTORS": "0", "LOOM_DB_DSN": f"x://{SECRET}"},
    ],
    ids=["bad-dsn", "valid-dsn-other-error", "sasl-incomplete", "several-errors"],
)
def test_secrets_never_in_config_errors(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    error = _error(monkeypatch, **env)
    assert SECRET not in str(error)
    assert SECRET not in "".join(traceback.format_exception(error))


def test_several_errors_are_all_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    message = str(_error(monkeypatch, LOOM_KAFKA_BATCH_SIZE="0", LOOM_MIN_ACTORS="0", LOOM_DB_JIT="x"))
    for variable in ("LOOM_KAFKA_BATCH_SIZE", "LOOM_MIN_ACTORS", "LOOM_DB_JIT"):
        assert variable in message


# --- frozen -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [("kafka_batch_size", 5), ("kafka_topics", ("x",)), ("db_jit", "on")])
def test_settings_are_frozen(field: str, value: Any) -> None:
    settings = Settings.from_env()
    before = getattr(settings, field)
    with pytest.raises(ValidationError, match="frozen"):
        setattr(settings, field, value)
    assert getattr(settings, field) == before


# --- librdkafka client config -------------------------------------------------------------------------------------


def test_kafka_client_config_default() -> None:
    assert Settings.from_env().kafka_client_config() == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "PLAINTEXT",
    }


def test_kafka_client_config_passes_security_through(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(
        monkeypatch,
        LOOM_KAFKA_BOOTSTRAP_SERVERS="k1:9093,k2:9093",
        LOOM_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        LOOM_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        LOOM_KAFKA_SASL_USERNAME="alice",
        LOOM_KAFKA_SASL_PASSWORD="sasl-pass",
        LOOM_KAFKA_SSL_CA_LOCATION="/etc/ca.pem",
        LOOM_KAFKA_SSL_CERTIFICATE_LOCATION="/etc/cert.pem",
        LOOM_KAFKA_SSL_KEY_LOCATION="/etc/key.pem",
        LOOM_KAFKA_SSL_KEY_PASSWORD="key-pass",
    )
    assert settings.kafka_client_config() == {
        "bootstrap.servers": "k1:9093,k2:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": "sasl-pass",
        "ssl.ca.location": "/etc/ca.pem",
        "ssl.certificate.location": "/etc/cert.pem",
        "ssl.key.location": "/etc/key.pem",
        "ssl.key.password": "key-pass",
    }


def test_kafka_client_config_ssl_without_sasl_has_no_sasl_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _settings(
        monkeypatch, LOOM_KAFKA_SECURITY_PROTOCOL="SSL", LOOM_KAFKA_SSL_CA_LOCATION="/etc/ca.pem"
    ).kafka_client_config()
    assert config["security.protocol"] == "SSL"
    assert config["ssl.ca.location"] == "/etc/ca.pem"
    assert not [key for key in config if key.startswith("sasl.")]
    assert "ssl.key.password" not in config


# --- routes -----------------------------------------------------------------------------------------------------


def test_routes_file_is_parsed_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(monkeypatch, LOOM_ROUTES_FILE=str(EXAMPLE_ROUTES))
    assert [r.name for r in settings.routes.routes] == ["orders", "clicks"]


def test_no_routes_file_means_no_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOOM_ROUTES_FILE", raising=False)
    assert Settings.from_env().routes.routes == ()


def test_a_bad_routes_file_fails_at_start_naming_variable_file_and_route(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bad = tmp_path / "routes.toml"
    bad.write_text(EXAMPLE_ROUTES.read_text().replace('mode = "upsert"', 'mode = "merge"'))
    message = str(_error(monkeypatch, LOOM_ROUTES_FILE=str(bad)))
    assert "LOOM_ROUTES_FILE" in message
    assert f"routes file {bad}" in message
    assert "route 'orders': mode: Input should be 'insert' or 'upsert'" in message
    missing = str(_error(monkeypatch, LOOM_ROUTES_FILE=str(tmp_path / "nope.toml")))
    assert f"routes file {tmp_path / 'nope.toml'}: cannot be read" in missing


def test_routes_travel_with_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    settings = _settings(monkeypatch, LOOM_ROUTES_FILE=str(EXAMPLE_ROUTES))
    assert pickle.loads(pickle.dumps(settings)).routes == settings.routes  # the actors need no file


def test_the_deployment_is_named_by_what_it_ingests_and_where_unless_named() -> None:
    one = Settings(kafka_topics="orders,payments", db_dsn="postgresql://u:secret@db:5432/app")
    assert one.deployment_name.startswith("orders-")
    # The same topics in another order, another password: the same deployment.
    same = Settings(kafka_topics="payments,orders", db_dsn="postgresql://u:other@db:5432/app")
    assert same.deployment_name == one.deployment_name
    others = [
        Settings(kafka_topics="orders", db_dsn="postgresql://u:secret@db:5432/app"),
        Settings(kafka_topics="orders,payments", db_dsn="postgresql://u:secret@db2:5432/app"),
        Settings(kafka_topics="orders,payments", db_dsn="postgresql://u:secret@db:5432/app", db_schema="loom"),
    ]
    assert len({one.deployment_name, *(s.deployment_name for s in others)}) == 4
    assert "secret" not in one.deployment_name
    assert Settings(deployment="backfill-1").deployment_name == "backfill-1"


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 41, "ü"])
def test_a_deployment_name_is_a_short_plain_name(name: str) -> None:
    with pytest.raises(ConfigError, match="LOOM_DEPLOYMENT"):
        Settings.from_env(deployment=name)
