"""The Schema Registry: confluent-kafka's client built from the settings, and why a schema could not be fetched.

One client per consumer (:func:`client`), shared by its codecs; it caches every schema by id, so the registry
is asked once per id and consumer. Its requests run on a worker thread (never on the event loop), without
the client's own retries: a partition whose schema cannot be fetched waits and retries with loom-ray's
backoff (:meth:`loom_ray.pipeline.IngestWorker`), reported like a blocked sink with one of the conditions
below (``stats()["blocked"]``, the gauge ``ray_loom_sink_blocked``, a ``sink_blocked`` alert).
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry.common._httpx_compat import httpx

from loom_ray.errors import LoomError
from loom_ray.policy.sink_errors import Condition, Kind
from loom_ray.settings import Settings

logging.getLogger("httpx2").setLevel(logging.WARNING)  # the client's HTTP library logs every request at INFO
logging.getLogger("httpx").setLevel(logging.WARNING)

REGISTRY_UNREACHABLE = Condition(
    "LR002",
    "schema_registry_unreachable",
    Kind.MAY_CLEAR,
    "the Schema Registry at LOOM_SCHEMA_REGISTRY_URL does not answer, or answers with a server error: start it "
    "or fix the URL (and LOOM_SCHEMA_REGISTRY_SSL_* for TLS); the partitions waiting for a schema resume by "
    "themselves, nothing is skipped",
    waiting="reads",
)
SCHEMA_UNKNOWN = Condition(
    "LR003",
    "schema_unknown",
    Kind.NEEDS_PERSON,
    "a record names a schema id the Schema Registry does not have: register the schema, or point "
    "LOOM_SCHEMA_REGISTRY_URL at the registry its producer used; its partition waits at that record until then",
    waiting="reads",
)
REGISTRY_REFUSED = Condition(
    "LR004",
    "schema_registry_refused",
    Kind.NEEDS_PERSON,
    "the Schema Registry refuses loom-ray's requests (HTTP 401 or 403): set LOOM_SCHEMA_REGISTRY_USERNAME and "
    "LOOM_SCHEMA_REGISTRY_PASSWORD to a user that may read schemas",
    waiting="reads",
)


class SchemaFetchError(LoomError):
    """The registry did not give a record's schema; its partition waits and retries. ``condition`` says why
    (and what to do), ``schema_id`` which schema."""

    condition = REGISTRY_UNREACHABLE

    def __init__(self, schema_id: int, detail: str) -> None:
        super().__init__(f"schema id {schema_id}: {detail}")
        self.schema_id = schema_id


class RegistryUnreachableError(SchemaFetchError):
    """No answer, a timeout, or a server error (HTTP 5xx)."""


class SchemaUnknownError(SchemaFetchError):
    """The registry answered that it has no schema with that id (HTTP 404)."""

    condition = SCHEMA_UNKNOWN


class RegistryRefusedError(SchemaFetchError):
    """The registry refused the credentials (HTTP 401, 403)."""

    condition = REGISTRY_REFUSED


def client(settings: Settings) -> SchemaRegistryClient:
    """A client for LOOM_SCHEMA_REGISTRY_URL with the settings' credentials and TLS files; no retries of its own."""
    assert settings.schema_registry_url is not None  # the settings refuse a registry format without it
    config: dict[str, Any] = {
        "url": settings.schema_registry_url,
        "timeout": settings.schema_registry_timeout_s,
        "max.retries": 0,
    }
    if settings.schema_registry_username is not None:
        password = settings.schema_registry_password
        secret = "" if password is None else password.get_secret_value()
        config["basic.auth.user.info"] = f"{settings.schema_registry_username}:{secret}"
    optional = {
        "ssl.ca.location": settings.schema_registry_ssl_ca_location,
        "ssl.certificate.location": settings.schema_registry_ssl_certificate_location,
        "ssl.key.location": settings.schema_registry_ssl_key_location,
        "ssl.key.password": (
            None
            if settings.schema_registry_ssl_key_password is None
            else settings.schema_registry_ssl_key_password.get_secret_value()
        ),
    }
    config.update({key: value for key, value in optional.items() if value is not None})
    return SchemaRegistryClient(config)


def fetch_error(exc: BaseException, schema_id: int) -> SchemaFetchError | None:
    """``exc``, raised asking the registry for ``schema_id``, as the reason its partition waits; None when it is
    not about the registry's answer (the schema came, and is what cannot be used)."""
    if isinstance(exc, SchemaRegistryError):
        status = exc.http_status_code
        if status == 404:
            return SchemaUnknownError(schema_id, f"the registry has no such schema ({exc})")
        if status in (401, 403):
            return RegistryRefusedError(schema_id, f"the registry refuses the request ({exc})")
        return RegistryUnreachableError(schema_id, f"the registry answers with an error ({exc})")
    if isinstance(exc, OSError | httpx.TransportError):
        return RegistryUnreachableError(schema_id, f"the registry does not answer ({type(exc).__name__}: {exc})")
    return None
