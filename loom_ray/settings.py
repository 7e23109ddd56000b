"""One frozen settings object, built once from ``LOOM_*`` environment variables.

The driver builds :class:`Settings` at start (``Settings.from_env()``) and passes it to every actor, so a
bad value fails before anything connects, with a message naming the variable and what it accepts.
Names and meanings follow the seed system (``LOOM_KAFKA_BATCH_SIZE``, ``LOOM_DB_MAX_POOL_SIZE``, ...).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from loom_ray.errors import ConfigError, RoutesFileError
from loom_ray.formats.names import parse_formats
from loom_ray.routes.catalog import TableShape
from loom_ray.routes.model import RouteSet, load_routes

_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_DEPLOYMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
_GiB = 1024**3
_MiB = 1024**2


class Settings(BaseSettings):
    """Every knob of loom-ray. Each field reads ``LOOM_<FIELD NAME IN CAPITALS>``."""

    model_config = SettingsConfigDict(env_prefix="LOOM_", frozen=True, extra="ignore", case_sensitive=False)

    # Kafka: where and what.
    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,...].")
    kafka_topics: Annotated[tuple[str, ...], NoDecode] = Field(
        ("events",), description="Comma-separated topics to ingest."
    )
    kafka_group_id: str = Field(
        "loom-ray", min_length=1, description="Consumer group that mirrors progress for lag tools (never read back)."
    )
    kafka_auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest",
        description="Where a topic's partitions start when loom-ray first sees the topic; partitions added "
        "later and a recreated topic always start at their first offset.",
    )
    kafka_isolation_level: Literal["read_committed", "read_uncommitted"] = Field(
        "read_committed",
        description="Records of aborted Kafka transactions are skipped (read_committed) or stored "
        "(read_uncommitted); a partition is drained at its last stable offset under read_committed.",
    )
    # Kafka: the seed's consumer tuning.
    kafka_batch_size: int = Field(200, ge=1, le=100_000, description="Messages per partition that trigger a flush.")
    kafka_batch_timeout: float = Field(
        0.5, gt=0, le=60, description="Seconds a buffered message may wait before its batch is flushed."
    )
    kafka_max_poll_records: int = Field(500, ge=1, le=100_000, description="Messages taken per consume() call.")
    kafka_fetch_max_bytes: int = Field(
        50 * _MiB, ge=1024, le=2**31 - 1, description="librdkafka fetch.max.bytes (bytes per fetch response)."
    )
    kafka_session_timeout_ms: int = Field(
        60_000,
        ge=1000,
        le=3_600_000,
        description="A consumer actor that misses health checks this long is fenced and its partitions reclaimed.",
    )
    kafka_auto_commit_interval_ms: int = Field(
        5000,
        ge=100,
        le=3_600_000,
        description="How often offsets committed in PostgreSQL are mirrored to the Kafka group (never auto-commit).",
    )
    # Kafka: security, passed through to librdkafka.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="librdkafka security.protocol."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="librdkafka sasl.mechanism."
    )
    kafka_sasl_username: str | None = Field(None, description="librdkafka sasl.username.")
    kafka_sasl_password: SecretStr | None = Field(None, description="librdkafka sasl.password (secret).")
    kafka_ssl_ca_location: str | None = Field(None, description="librdkafka ssl.ca.location (CA bundle path).")
    kafka_ssl_certificate_location: str | None = Field(None, description="librdkafka ssl.certificate.location.")
    kafka_ssl_key_location: str | None = Field(None, description="librdkafka ssl.key.location.")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="librdkafka ssl.key.password (secret).")

    # PostgreSQL.
    db_dsn: SecretStr = Field(
        SecretStr("postgresql://loom@127.0.0.1:5432/loom"),
        description="PostgreSQL DSN (secret: never printed). TLS via ?sslmode=verify-full&sslrootcert=...",
    )
    db_schema: str = Field(
        "public",
        description="Schema of loom-ray's tables, created by the migrations if missing (a plain identifier, quoted).",
    )
    db_min_pool_size: int = Field(2, ge=1, le=100, description="asyncpg pool minimum, per consumer actor.")
    db_max_pool_size: int = Field(8, ge=1, le=100, description="asyncpg pool maximum, per consumer actor.")
    db_synchronous_commit: Literal["on", "off", "local", "remote_write", "remote_apply"] = Field(
        "off", description="Session synchronous_commit (off keeps exactly-once: offsets roll back with rows)."
    )
    db_jit: Literal["on", "off"] = Field("off", description="Session jit.")
    db_statement_timeout_ms: int = Field(
        60_000, ge=0, le=3_600_000, description="Session statement_timeout for ingest queries (0 = none)."
    )
    db_idle_in_transaction_timeout_ms: int = Field(
        10_000,
        ge=0,
        le=3_600_000,
        description="Session idle_in_transaction_session_timeout: a stalled flush frees its offset rows (0 = none).",
    )

    # Batching and bad input.
    batch_max_bytes: int = Field(
        8 * _MiB, ge=1024, le=1024 * _MiB, description="Bytes per partition batch that trigger a flush."
    )
    buffer_max_bytes: int = Field(
        64 * _MiB,
        ge=1024,
        le=16 * 1024 * _MiB,
        description="Per actor: fetching pauses while buffered records take more (values plus ~256 bytes each).",
    )
    max_message_bytes: int = Field(
        256 * 1024, ge=1, le=1024 * _MiB, description="A larger value becomes a dead letter (Oversize)."
    )
    dead_letter_max_bytes: int = Field(
        64 * 1024, ge=0, le=1024 * _MiB, description="Bytes of a bad value kept in loom_dead_letters.raw_value."
    )

    # Actors and scaling.
    min_actors: int = Field(3, ge=1, le=1000, description="Fewest consumer actors (capped at the partition count).")
    max_actors: int = Field(10, ge=1, le=1000, description="Most consumer actors.")
    actor_num_cpus: float = Field(1.0, ge=0, le=64, description="Ray num_cpus per consumer actor (drives autoscaling).")
    actor_memory_bytes: int = Field(
        _GiB, ge=0, le=1024 * _GiB, description="Ray memory per consumer actor in bytes (drives autoscaling)."
    )
    scale_catchup_s: float = Field(
        60.0,
        ge=0,
        le=86_400,
        description="Autoscaling: add consumers until the backlog would clear within this many seconds at the "
        "observed rate (0 = off; `loom_ray.ctl resize` pins the count).",
    )
    ray_namespace: str = Field("loom", min_length=1, description="Ray namespace of the named coordinator.")
    deployment: str | None = Field(
        None,
        description="Name of this deployment: its coordinator, its supervised job and its registration in "
        "loom_deployments. Unset: derived from the topics, the database and LOOM_DB_SCHEMA, so two deployments "
        "with other topics never share a coordinator.",
    )
    health_check_interval_s: float = Field(2.0, gt=0, le=300, description="Seconds between actor health checks.")
    lag_sample_interval_s: float = Field(
        10.0, gt=0, le=3600, description="Seconds between consumer_lag_history samples."
    )
    lag_history_retention_s: float = Field(
        7 * 86_400.0,
        ge=3600,
        le=366 * 86_400,
        description="consumer_lag_history samples older than this many seconds are deleted by the coordinator "
        "(checked every few minutes, in small batches); the views read the last 5 minutes.",
    )
    startup_timeout_s: float = Field(
        300.0,
        ge=0,
        le=86_400,
        description="How long the driver waits at start for PostgreSQL and Kafka to answer, retrying with "
        "backoff, before it exits 3 (a supervisor submits it again); refused credentials, a missing topic or "
        "another bad setting exit 2 at once.",
    )
    shutdown_timeout_s: float = Field(
        25.0,
        gt=0,
        le=3600,
        description=(
            "Deadline of a drain (the driver stopped: SIGTERM, `ray job stop`; a consumer stopped by a resize) "
            "and of a partition's release or assignment; keep below the pod's grace period (30 s)."
        ),
    )
    driver_log_max_bytes: int = Field(
        64 * 2**20,
        ge=0,
        le=2**40,
        description="Past this size the driver's log (its output, when that is a file it appends to: the "
        "job-driver-<id>.log of `ray job submit`, which Ray does not rotate) is copied to <log>.1 and emptied "
        "(0 = never).",
    )
    audit: bool = Field(False, description="Also append every committed offset to loom_audit (fault tests).")

    # Routes: topics into the user's own tables.
    routes_file: Path | None = Field(
        None,
        description="TOML file routing topics into your own tables (README, Routes); read at start. Unset: "
        "every topic goes to loom_messages.",
    )
    _routes: RouteSet = PrivateAttr(default_factory=lambda: RouteSet(route=()))

    # Record formats: Avro, Protobuf and JSON Schema through a Schema Registry (README, Record formats).
    formats: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="How each topic's values are encoded: `topic=format` pairs and at most one bare format for "
        "the other topics, e.g. `avro,legacy=json`; formats json, avro, protobuf, json_schema (the last three "
        "in the Confluent wire format, schema by id from LOOM_SCHEMA_REGISTRY_URL). A route's `format` wins for "
        "its topics. Unset: json.",
    )
    schema_registry_url: str | None = Field(
        None,
        description="Schema Registry (Confluent API) the avro, protobuf and json_schema formats read schemas "
        "from, by id; comma-separated URLs are tried in turn. Credentials go in the two variables below.",
    )
    schema_registry_username: str | None = Field(None, description="Schema Registry basic auth user.")
    schema_registry_password: SecretStr | None = Field(
        None, description="Schema Registry basic auth password (secret)."
    )
    schema_registry_ssl_ca_location: str | None = Field(
        None, description="CA bundle that verifies the Schema Registry's TLS certificate."
    )
    schema_registry_ssl_certificate_location: str | None = Field(
        None, description="Client certificate (PEM) for a Schema Registry that asks for one."
    )
    schema_registry_ssl_key_location: str | None = Field(None, description="The client certificate's key (PEM).")
    schema_registry_ssl_key_password: SecretStr | None = Field(
        None, description="Password of the client certificate's key (secret)."
    )
    schema_registry_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Seconds one Schema Registry request may take; a partition whose schema cannot be fetched "
        "waits and retries with backoff.",
    )

    @field_validator("formats", mode="before")
    @classmethod
    def _split_formats(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(entry.replace(" ", "") for entry in value.split(",") if entry.strip())
        return value

    @field_validator("formats")
    @classmethod
    def _check_formats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        parse_formats(value)
        return value

    @field_validator("schema_registry_url")
    @classmethod
    def _check_registry_url(cls, value: str | None) -> str | None:
        if value is not None:
            for url in value.split(","):
                parts = urlsplit(url.strip())
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    raise ValueError("must be http(s)://host[:port][/path], comma-separated for several")
                if parts.username or parts.password:
                    raise ValueError(
                        "holds credentials: put them in LOOM_SCHEMA_REGISTRY_USERNAME and "
                        "LOOM_SCHEMA_REGISTRY_PASSWORD (value hidden)"
                    )
        return value

    @field_validator("kafka_topics", mode="before")
    @classmethod
    def _split_topics(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value

    @field_validator("kafka_topics")
    @classmethod
    def _check_topics(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one topic is required, e.g. LOOM_KAFKA_TOPICS=orders,payments")
        for topic in value:
            if not _TOPIC_RE.match(topic) or topic in {".", ".."}:
                raise ValueError(f"{topic!r} is not a Kafka topic name (letters, digits, '.', '_', '-', 1-249)")
        return value

    @field_validator("db_schema")
    @classmethod
    def _check_schema(cls, value: str) -> str:
        if not _IDENTIFIER_RE.match(value) or value.lower().startswith("pg_"):
            raise ValueError(
                "must be a plain SQL identifier: a letter or _, then letters, digits or _, at most 63, "
                "not starting with pg_ (e.g. loom)"
            )
        return value

    @field_validator("deployment")
    @classmethod
    def _check_deployment(cls, value: str | None) -> str | None:
        if value is not None and not _DEPLOYMENT_RE.match(value):
            raise ValueError("use 1 to 40 letters, digits, '-' or '_', starting with a letter or digit (e.g. orders)")
        return value

    @field_validator("db_dsn")
    @classmethod
    def _check_dsn(cls, value: SecretStr) -> SecretStr:
        dsn = value.get_secret_value()
        if not dsn.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql:// (value hidden)")
        hosts = dsn.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
        for host in hosts.split(","):
            tail = host.rsplit("]", 1)[-1]  # after an IPv6 literal's closing bracket
            port = tail.rpartition(":")[2] if ":" in tail else ""
            if port and not (port.isdigit() and 0 < int(port) < 65536):
                raise ValueError("has a port that is not a number in 1..65535 (value hidden)")
        return value

    @model_validator(mode="after")
    def _load_routes(self) -> Settings:
        if self.routes_file is not None:
            try:
                self._routes = load_routes(self.routes_file)
            except RoutesFileError as exc:
                raise ValueError(f"LOOM_ROUTES_FILE: {str(exc).replace(chr(10), chr(10) + '  ')}") from None
        return self

    @model_validator(mode="after")
    def _check_relations(self) -> Settings:
        if self.db_min_pool_size > self.db_max_pool_size:
            raise ValueError(
                f"LOOM_DB_MIN_POOL_SIZE ({self.db_min_pool_size}) is greater than "
                f"LOOM_DB_MAX_POOL_SIZE ({self.db_max_pool_size}); lower the first or raise the second"
            )
        if self.min_actors > self.max_actors:
            raise ValueError(f"LOOM_MIN_ACTORS ({self.min_actors}) is greater than LOOM_MAX_ACTORS ({self.max_actors})")
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"LOOM_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs LOOM_KAFKA_SASL_MECHANISM, "
                "LOOM_KAFKA_SASL_USERNAME and LOOM_KAFKA_SASL_PASSWORD"
            )
        if self.batch_max_bytes > self.buffer_max_bytes:
            raise ValueError(
                f"LOOM_BATCH_MAX_BYTES ({self.batch_max_bytes}) is greater than "
                f"LOOM_BUFFER_MAX_BYTES ({self.buffer_max_bytes}): a batch could never fill"
            )
        return self

    @model_validator(mode="after")
    def _check_format_relations(self) -> Settings:
        by_topic, _ = parse_formats(self.formats)
        unknown = sorted(set(by_topic) - set(self.kafka_topics))
        if unknown:
            raise ValueError(f"LOOM_FORMATS names {', '.join(unknown)}, not among LOOM_KAFKA_TOPICS")
        for topic in self.kafka_topics:
            route = self._routes.route_for(topic)
            named = by_topic.get(topic)
            if route is not None and route.format is not None and named is not None and named != route.format:
                raise ValueError(
                    f"topic {topic}: LOOM_FORMATS says {named} but route {route.name!r} says format = "
                    f'"{route.format}"; keep one'
                )
        client_key = self.schema_registry_ssl_key_location or self.schema_registry_ssl_key_password
        if self.schema_registry_url and client_key and not self.schema_registry_ssl_certificate_location:
            raise ValueError(
                "LOOM_SCHEMA_REGISTRY_SSL_KEY_LOCATION and _KEY_PASSWORD belong to a client certificate: set "
                "LOOM_SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION"
            )
        used = {self.format_of(topic) for topic in self.kafka_topics}
        if used - {"json"} and not self.schema_registry_url:
            raise ValueError(
                f"format {', '.join(sorted(used - {'json'}))} reads schemas from a Schema Registry: set "
                "LOOM_SCHEMA_REGISTRY_URL"
            )
        return self

    def format_of(self, topic: str) -> str:
        """How ``topic``'s values are encoded: its route's ``format``, else LOOM_FORMATS, else json."""
        route = self._routes.route_for(topic)
        if route is not None and route.format is not None:
            return route.format
        by_topic, default = parse_formats(self.formats)
        return by_topic.get(topic, default)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Build the settings at start; raise :class:`ConfigError` naming each bad variable."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise ConfigError(describe_errors(exc)) from None

    @property
    def routes(self) -> RouteSet:
        """The routes of LOOM_ROUTES_FILE, parsed at start (none without the file)."""
        return self._routes

    def with_route_tables(self, tables: Mapping[str, TableShape]) -> Settings:
        """A copy whose routes carry their tables as the driver read them at start (route name -> shape)."""
        copy = self.model_copy()
        copy._routes = self._routes.with_tables(tables)
        return copy

    @property
    def deployment_name(self) -> str:
        """LOOM_DEPLOYMENT, or a name derived from what the deployment ingests and where: its first topic and a
        digest of every topic, the database (host, port, name; never the password) and LOOM_DB_SCHEMA."""
        if self.deployment is not None:
            return self.deployment
        parts = urlsplit(self.dsn)
        where = f"{parts.hostname}:{parts.port}{parts.path}|{self.db_schema}|{','.join(sorted(self.kafka_topics))}"
        stem = re.sub(r"[^A-Za-z0-9_-]", "-", min(self.kafka_topics))[:30]
        return f"{stem}-{hashlib.sha256(where.encode()).hexdigest()[:8]}"

    @property
    def dsn(self) -> str:
        """The DSN in clear, for asyncpg only; never log it."""
        return self.db_dsn.get_secret_value()

    def kafka_client_config(self) -> dict[str, str | int | bool]:
        """librdkafka options shared by every client (connection and security)."""
        config: dict[str, str | int | bool] = {
            "bootstrap.servers": self.kafka_bootstrap_servers,
            "security.protocol": self.kafka_security_protocol,
        }
        optional = {
            "sasl.mechanism": self.kafka_sasl_mechanism,
            "sasl.username": self.kafka_sasl_username,
            "sasl.password": self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None,
            "ssl.ca.location": self.kafka_ssl_ca_location,
            "ssl.certificate.location": self.kafka_ssl_certificate_location,
            "ssl.key.location": self.kafka_ssl_key_location,
            "ssl.key.password": self.kafka_ssl_key_password.get_secret_value() if self.kafka_ssl_key_password else None,
        }
        config.update({key: value for key, value in optional.items() if value is not None})
        return config

    def summary(self) -> str:
        """One key=value line of the effective settings, secrets masked, logged at start."""
        return " ".join(f"{name}={value}" for name, value in self.model_dump().items())


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    return f"LOOM_{field.upper()}"


SECRET_FIELDS = frozenset(
    {
        "db_dsn",
        "kafka_sasl_password",
        "kafka_ssl_key_password",
        "schema_registry_url",  # refused with credentials in it: shown in no error
        "schema_registry_password",
        "schema_registry_ssl_key_password",
    }
)


def accepted_range(field: str) -> str:
    """``"1 to 100000"`` (inclusive) or ``"more than 0, up to 60"`` for a bounded numeric field, else ``""``."""
    low = high = None
    low_open = False
    for bound in Settings.model_fields[field].metadata:
        if getattr(bound, "gt", None) is not None:
            low, low_open = bound.gt, True
        low = getattr(bound, "ge", low)
        high = getattr(bound, "le", high)
    if low is None or high is None:
        return ""
    return f"more than {low}, up to {high}" if low_open else f"{low} to {high}"


def describe_errors(exc: ValidationError) -> str:
    """Turn pydantic's errors into lines naming the variable, the bad value and what is accepted."""
    lines = []
    for error in exc.errors():
        location = error["loc"]
        if not location:
            lines.append(str(error["msg"]).removeprefix("Value error, "))
            continue
        field = str(location[0])
        shown = "(hidden)" if field in SECRET_FIELDS else repr(error.get("input"))
        line = f"{env_name(field)}={shown}: {str(error['msg']).removeprefix('Value error, ')}"
        if field in Settings.model_fields and (bounds := accepted_range(field)):
            line += f" (accepted: {bounds})"
        lines.append(line)
    return "invalid configuration:\n  " + "\n  ".join(lines)


def markdown_table() -> str:
    """The README's table of variables, generated from the fields (a unit test keeps them in step)."""
    lines = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.default
        if name in SECRET_FIELDS:
            default = "(secret)" if default is not None else None
        elif isinstance(default, tuple):
            default = ",".join(default)
        bounds = accepted_range(name)
        meaning = f"{field.description} ({bounds})" if bounds else field.description
        lines.append(f"| `{env_name(name)}` | `{default}` | {meaning} |")
    return "\n".join(lines)
