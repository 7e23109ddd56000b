"""Session fixtures for tests that use real services; unit tests never touch them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.support.ray_env import RAY_TEST_ENV
from tests.support.registry import session_registry
from tests.support.services import Endpoints, services

os.environ.update({k: v for k, v in RAY_TEST_ENV.items() if k not in os.environ})


@pytest.fixture(scope="session")
def endpoints() -> Iterator[Endpoints]:
    """A real Kafka broker and PostgreSQL server (environment, testcontainers, or the local stack)."""
    with services() as found:
        yield found


@pytest.fixture(scope="session")
def schema_registry(endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL (Confluent API) of a real Schema Registry: LOOM_SCHEMA_REGISTRY_URL, or one started for the
    session (:mod:`tests.support.registry`)."""
    with session_registry(endpoints, tmp_path_factory.mktemp("registry") / "registry.log") as url:
        yield url


@pytest.fixture
def topic_name() -> str:
    """A topic name no other test uses."""
    return f"t-{uuid.uuid4().hex[:12]}"
