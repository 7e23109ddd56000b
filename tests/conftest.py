"""Session fixtures for tests that use real services; unit tests never touch them.

Under ``CI=true`` (or ``CI=1``; ``.ci/run`` sets it) a skipped test fails the run: a test that cannot run
there (chromium, promtool or Java missing, the CRD not fetched, a service variable unset) has proven nothing,
and a green run must not hide it. No skip is exempt. An expected failure (``xfail``) is not a skip and is
left alone.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Generator, Iterator

import pytest

from tests.support.ray_env import RAY_TEST_ENV
from tests.support.registry import session_registry
from tests.support.services import Endpoints, services

os.environ.update({k: v for k, v in RAY_TEST_ENV.items() if k not in os.environ})


def _skips_fail() -> bool:
    """Whether this run is CI's, where a skip is a failure."""
    return os.environ.get("CI", "").lower() in ("1", "true")


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn a skip report into a failure that says why the test did not run."""
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = f"skipped under CI={os.environ['CI']}, where every test must run: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, object, object]:
    """A test skipped in setup (a ``skipif`` mark, a fixture's ``pytest.skip``) or in its body fails under CI."""
    report = yield
    assert isinstance(report, pytest.TestReport)
    if report.skipped and not hasattr(report, "wasxfail") and _skips_fail():
        _fail_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, object, object]:
    """A module skipped as a whole (``pytest.skip(allow_module_level=True)``, ``importorskip``) fails under CI."""
    report = yield
    assert isinstance(report, pytest.CollectReport)
    if report.skipped and _skips_fail():
        _fail_skip(report)
    return report


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
