"""Fault-test fixtures: a dedicated stack that tests may break, fresh topics, and the figure lines.

Every test in this folder is marked ``faults``. The stack (``fault_stack``) is started if it is not
running and stopped at the end only if this session started it. Each test records one figure line
(reliability.md §7.1 format) with ``figures.add(...)``; they are printed at the end of the session and
appended to ``LOOM_FAULT_FIGURES`` (default ``<stack>/figures.txt``).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from loom_ray.migrate import migrate
from tests.faults.harness import Job
from tests.faults.stack import FaultStack

_HERE = Path(__file__).resolve().parent
_FIGURES: list[str] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.faults)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("fault figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)


class Figures:
    """Collects one report line per test."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, line: str) -> None:
        _FIGURES.append(line)
        with self.path.open("a") as out:
            out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")


async def _migrate(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def fault_stack() -> Iterator[FaultStack]:
    """Kafka + PostgreSQL on their own ports and folder, safe to kill, pause and restart."""
    stack = FaultStack.from_env()
    started_here = not stack.running()
    stack.up()
    asyncio.run(_migrate(stack.dsn))
    try:
        yield stack
    finally:
        if started_here:
            stack.down()


@pytest.fixture(scope="session")
def figures(fault_stack: FaultStack) -> Figures:
    return Figures(Path(os.environ.get("LOOM_FAULT_FIGURES", fault_stack.directory / "figures.txt")))


@pytest.fixture
def topic() -> str:
    return f"f-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def job_factory(fault_stack: FaultStack, topic: str, tmp_path: Path) -> Iterator[Callable[..., Job]]:
    """Build :class:`Job` objects for this test's topic; all of them are killed at teardown."""
    jobs: list[Job] = []

    def make(**kwargs: Any) -> Job:
        job = Job(fault_stack, topic, tmp_path, **kwargs)
        jobs.append(job)
        return job

    yield make
    for job in jobs:
        job.close(keep_logs=bool(os.environ.get("LOOM_FAULT_KEEP_LOGS")))
