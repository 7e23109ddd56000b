"""T11 security smoke on a hardened PostgreSQL (TLS, SCRAM, hostssl only; see :mod:`tests.faults.secure`).

- plain TCP, a certificate from another CA and a wrong password are refused;
- the least-privilege role of ``sql/roles/least_privilege.sql`` cannot create, alter, drop, truncate or
  delete (only lag samples, which the coordinator prunes), and the pipeline runs exactly once as that role;
- the DSN's password never shows in the job's output, Ray's session logs or the Ray dashboard's API, and
  not in the errors of runs with a wrong password or a broken DSN.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest

from tests.faults.conftest import Figures
from tests.faults.harness import Job, fetch
from tests.faults.producer import Producer
from tests.faults.scenario import Figure, conclude
from tests.faults.secure import FULL_ROLE, INGEST_ROLE, Hardened, hardened
from tests.faults.stack import FaultStack

_TLS_SQL = """
SELECT a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
WHERE a.application_name LIKE 'loom-%'
"""
_DASHBOARD_PATHS = (
    "/api/v0/actors?detail=1&limit=1000",
    "/api/v0/tasks?detail=1&limit=1000",
    "/api/v0/workers?detail=1&limit=1000",
    "/logical/actors",
    "/nodes?view=details",
    "/api/jobs/",
    "/api/cluster_status",
)


@pytest.fixture(scope="module")
def secure(fault_stack: FaultStack) -> Iterator[Hardened]:
    with hardened(fault_stack) as found:
        yield found


async def _connect_error(dsn: str) -> BaseException | None:
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except Exception as exc:
        return exc
    await conn.close()
    return None


async def _over_tls(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return bool(await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"))
    finally:
        await conn.close()


def test_t11_plain_tcp_wrong_ca_and_wrong_password_are_refused(secure: Hardened) -> None:
    assert asyncio.run(_over_tls(secure.dsn(INGEST_ROLE)))
    plain = asyncio.run(_connect_error(secure.dsn(INGEST_ROLE, mode="disable")))
    assert isinstance(plain, asyncpg.InvalidAuthorizationSpecificationError), repr(plain)
    foreign = asyncio.run(_connect_error(secure.dsn(INGEST_ROLE, ca=secure.wrong_ca)))
    assert isinstance(foreign, ssl.SSLCertVerificationError), repr(foreign)
    wrong = "Wp" + secure.password[2:]
    refused = asyncio.run(_connect_error(secure.dsn(INGEST_ROLE, password=wrong)))
    assert isinstance(refused, asyncpg.InvalidPasswordError), repr(refused)
    assert wrong not in str(refused) and secure.password not in str(refused)


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE loom_offsets",
        "TRUNCATE loom_messages",
        "DELETE FROM loom_messages",
        "DELETE FROM loom_offsets",
        "DELETE FROM loom_dead_letters",
        "DELETE FROM loom_audit",
        "DELETE FROM loom_sink_errors",
        "DELETE FROM loom_gaps",
        "DELETE FROM loom_parked",
        "DELETE FROM loom_views",
        "TRUNCATE consumer_lag_history",
        "UPDATE loom_messages SET key = NULL",
        "ALTER TABLE loom_offsets ADD COLUMN x int",
        "CREATE TABLE loom_intruder (x int)",
        "CREATE INDEX ON loom_messages (kafka_ts)",
    ],
)
def test_t11_least_privilege_role_cannot_change_or_remove_anything(secure: Hardened, statement: str) -> None:
    async def attempt() -> None:
        conn = await asyncpg.connect(secure.dsn(INGEST_ROLE), timeout=10)
        try:
            assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "10s"
            await conn.execute(statement)
        finally:
            await conn.close()

    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        asyncio.run(attempt())


def _run_exactly_once(
    secure: Hardened, job: Job, figures: Figures, test_id: str, during: Callable[[], object] = lambda: None
) -> None:
    """Fill the topic, run the job to the end (calling ``during`` once it runs), check it was exactly once."""
    producer = Producer(secure.stack, job.topic, job.workdir, 20_000, seed=14).fill()
    started = time.monotonic()
    job.start()
    job.wait_running(producer.partitions)
    during()
    job.finish()
    role = job.dsn.split("//", 1)[1].split(":", 1)[0] if job.dsn else "owner"
    figure = Figure(test_id, 14, f"0 (as {role} over TLS verify-full + SCRAM)", started)
    report, line = conclude(figure, secure.stack, job.topic, [producer], [job.log])
    figures.add(line)
    assert report.ok, report.table()


def test_t11_pipeline_runs_exactly_once_as_the_least_privilege_role(
    secure: Hardened, job_factory: Callable[..., Job], figures: Figures
) -> None:
    _run_exactly_once(secure, job_factory(dsn=secure.dsn(INGEST_ROLE)), figures, "T11-role")


def _dashboard_pages(job: Job) -> str:
    """The Ray dashboard's API answers, found on whichever port this job's dashboard listens on."""
    pages = []
    for pid in job.own_pids():
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            if not any("dashboard/dashboard.py" in arg for arg in process.cmdline()):
                continue
            for conn in process.net_connections(kind="tcp"):
                if conn.status != psutil.CONN_LISTEN:
                    continue
                for path in _DASHBOARD_PATHS:
                    with contextlib.suppress(OSError):
                        url = f"http://127.0.0.1:{conn.laddr.port}{path}"
                        pages.append(urllib.request.urlopen(url, timeout=10).read().decode(errors="replace"))
    return "\n".join(pages)


def _files_containing(paths: list[Path], secret: bytes) -> list[str]:
    found = []
    for path in paths:
        with contextlib.suppress(OSError):
            if secret in path.read_bytes():
                found.append(str(path))
    return found


def test_t11_the_password_is_never_printed(secure: Hardened, job_factory: Callable[..., Job], figures: Figures) -> None:
    job = job_factory(dsn=secure.dsn(FULL_ROLE), env_extra={"LOOM_RAY_DASHBOARD": "1"})
    seen: dict[str, object] = {}

    def look() -> None:
        seen["dashboard"] = _dashboard_pages(job)
        seen["tls"] = asyncio.run(fetch(secure.stack.dsn, _TLS_SQL))
        # Positive control for the search below: the DSN is, by design, in the driver's environment.
        seen["environ"] = _files_containing([Path(f"/proc/{job.current.pid}/environ")], secure.password.encode())

    _run_exactly_once(secure, job, figures, "T11-secrets", during=look)
    assert seen["environ"], "the search did not even find the password in the driver's environment"
    assert seen["dashboard"], "the Ray dashboard did not answer"
    assert secure.password not in str(seen["dashboard"]), "the password is visible in the Ray dashboard's API"
    assert seen["tls"] and all(r["ssl"] for r in seen["tls"]), f"connections without TLS: {seen['tls']}"  # type: ignore[attr-defined]
    leaks = _files_containing([job.log, *job.ray_logs()], secure.password.encode())
    assert not leaks, f"the password appears in {leaks}"


@pytest.mark.parametrize("broken", ["wrong password", "bad port", "unreachable port"])
def test_t11_errors_do_not_show_the_password(secure: Hardened, job_factory: Callable[..., Job], broken: str) -> None:
    wrong = "Wp" + secure.password[2:]
    dsn = {
        "wrong password": secure.dsn(FULL_ROLE, password=wrong),
        "bad port": secure.dsn(FULL_ROLE).replace(f":{secure.stack.pg_port}/", ":notaport/"),
        "unreachable port": secure.dsn(FULL_ROLE).replace(f":{secure.stack.pg_port}/", ":9/"),
    }[broken]
    # An unreachable PostgreSQL is waited for (LOOM_STARTUP_TIMEOUT_S) before the driver gives up with exit 3.
    job = job_factory(dsn=dsn, env_extra={"LOOM_STARTUP_TIMEOUT_S": "10"})
    assert job.start().wait(120) != 0, f"main started with a {broken} DSN"
    output = job.log_text()
    assert secure.password not in output and wrong not in output, output
