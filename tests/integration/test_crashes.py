"""Crashes and outages mid-run: consumer and coordinator kill -9, a consumer SIGTERM (pod eviction), job restarts,
PostgreSQL cut off."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.pipeline import (
    Accounting,
    account,
    committed,
    fill,
    pids_of,
    pipeline_env,
    scalar,
    slow_rows,
    start_main,
    stop_group,
    wait_until,
)
from tests.support.services import Endpoints
from tests.support.tcp_proxy import proxy

GRACE_S = 30  # how soon a dead consumer's partitions must have another owner (a pod's SIGKILL comes later)
# Per run, over 12 partitions at 100 messages a flush: about 4,000 per partition and 40 flushes each, so a fault
# that lands once a fifth (or a tenth) is committed still finds a backlog on every partition (kill_9_mid_run also
# slows every fifth row by a millisecond: unslowed, the job can drain all of it before the fault lands).
MESSAGES = 50_000
_OWNERS_SQL = """
SELECT coalesce(jsonb_object_agg("partition", jsonb_build_array(owner, epoch)), '{}')::text
FROM loom_offsets WHERE topic = $1
"""
_APPLICATION_SQL = "SELECT min(application_name) FROM pg_stat_activity WHERE application_name LIKE $1"


def kill_9_mid_run(
    endpoints: Endpoints,
    topic: str,
    tmp_path: Path,
    application: str,
    sig: int = signal.SIGKILL,
    watch: Callable[[int], Callable[[], None]] | None = None,
) -> tuple[Accounting, str]:
    """Run the job over :data:`MESSAGES` messages (:func:`slow_rows`) and, once a fifth is committed, send ``sig``
    (kill -9 unless told) to the first process whose PostgreSQL connections are named ``<application> ... pid=N``
    (of consumers, one that holds partitions of the topic: consumers start as nodes allow, so one may hold nothing
    yet); return the accounting and the job's log. ``watch(pid)`` runs just before the signal and returns what to
    check just after it, while the job runs on."""
    messages = MESSAGES
    fill(endpoints, topic, messages)
    log = tmp_path / "main.log"
    with slow_rows(endpoints, topic, every=5):
        process = start_main(pipeline_env(endpoints, topic, kafka_batch_size=100), "--exit-when-drained", log=log)
        try:
            wait_until(
                lambda: committed(endpoints, topic) > messages // 5, 180, "a fifth committed", running=(process, log)
            )
            victims: list[int] = []

            def found() -> bool:
                victims[:] = _victims(endpoints, topic, application)
                return bool(victims)

            wait_until(found, 60, f"{application} connections in pg_stat_activity", running=(process, log))
            check = watch(victims[0]) if watch is not None else None
            os.kill(victims[0], sig)
            if check is not None:
                check()
            assert process.wait(600) == 0, log.read_text()[-3000:]
        finally:
            stop_group(process)
    return account(endpoints, topic), log.read_text()


def test_kill_9_of_a_consumer_actor_mid_run(endpoints: Endpoints, topic_name: str, tmp_path: Path) -> None:
    result, log = kill_9_mid_run(endpoints, topic_name, tmp_path, "loom-ray")
    assert result.exact, str(result)
    assert result.max_epoch >= 2, "the killed actor's partitions were never reclaimed"
    assert "is gone" in log


def _victims(endpoints: Endpoints, topic: str, application: str) -> list[int]:
    """Pids of the processes with connections named ``<application> ... pid=N``; of consumers (``loom-ray``) only
    those holding a partition of ``topic``."""
    if application != "loom-ray":
        return pids_of(endpoints, application)
    return pids_of(endpoints, application, {owner for owner, _ in _owners(endpoints, topic).values() if owner})


def _owners(endpoints: Endpoints, topic: str) -> dict[int, tuple[str | None, int]]:
    rows = json.loads(scalar(endpoints, _OWNERS_SQL, topic))
    return {int(partition): (owner, epoch) for partition, (owner, epoch) in rows.items()}


def test_sigterm_of_a_consumer_actor_mid_run(endpoints: Endpoints, topic_name: str, tmp_path: Path) -> None:
    """A consumer pod evicted: SIGTERM to its worker process. Within the pod's grace period every partition it
    held is owned by another consumer under a newer epoch, and every message is stored once."""

    def watch(pid: int) -> Callable[[], None]:
        # The actor's connections are named "loom-ray <name> pid=N"; loom_offsets.owner is <name>.
        name = scalar(endpoints, _APPLICATION_SQL, f"loom-ray % pid={pid}").split(" ")[1]
        held = {p: epoch for p, (owner, epoch) in _owners(endpoints, topic_name).items() if owner == name}
        assert held, f"{name} holds no partition"

        def reowned() -> bool:
            now = _owners(endpoints, topic_name)
            return all(now[p][0] not in (None, name) and now[p][1] > epoch for p, epoch in held.items())

        return lambda: wait_until(reowned, GRACE_S, f"{name}'s partitions {sorted(held)} owned by others")

    result, log = kill_9_mid_run(endpoints, topic_name, tmp_path, "loom-ray", signal.SIGTERM, watch)
    assert result.exact, str(result)
    assert "is gone" in log


def test_kill_9_of_the_coordinator_mid_run(endpoints: Endpoints, topic_name: str, tmp_path: Path) -> None:
    # Ray restarts it; its consumers die with it; the new one claims every partition again.
    result, _ = kill_9_mid_run(endpoints, topic_name, tmp_path, "loom-coordinator")
    assert result.exact, str(result)
    assert result.max_epoch >= 2, "the restarted coordinator did not claim the partitions again"


def test_restart_of_the_main_job_mid_run(endpoints: Endpoints, topic_name: str, tmp_path: Path) -> None:
    messages = MESSAGES
    fill(endpoints, topic_name, messages)
    env = pipeline_env(endpoints, topic_name, kafka_batch_size=100)
    log = tmp_path / "main.log"
    # 1. SIGTERM: drains, prints a summary and exits 0 well within the shutdown deadline.
    first = start_main(env, log=log)
    try:
        wait_until(
            lambda: committed(endpoints, topic_name) > messages // 10, 180, "a tenth committed", running=(first, log)
        )
        first.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert first.wait(60) == 0, log.read_text()[-3000:]
        assert time.monotonic() - started < 60
    finally:
        stop_group(first)
    assert "summary:" in log.read_text()
    # 2. SIGKILL of the driver and its local Ray, mid-run. More messages first: the first run may have
    # drained the whole topic before its SIGTERM landed (it ingests well over 100 000 msgs/s).
    fill(endpoints, topic_name, messages)
    second = start_main(env, log=log)
    try:
        mark = committed(endpoints, topic_name)
        wait_until(
            lambda: committed(endpoints, topic_name) > mark + messages // 10,
            180,
            "progress after restart",
            running=(second, log),
        )
    finally:
        stop_group(second, signal.SIGKILL)
    # 3. A third run finishes the topic.
    third = start_main(env, "--exit-when-drained", log=log)
    try:
        assert third.wait(600) == 0, log.read_text()[-3000:]
    finally:
        stop_group(third)
    result = account(endpoints, topic_name)
    assert result.exact, str(result)
    assert result.expected == 2 * messages
    assert result.max_epoch >= 3  # each run claimed every partition again


def test_postgres_unreachable_mid_run(endpoints: Endpoints, topic_name: str, tmp_path: Path) -> None:
    messages = MESSAGES
    fill(endpoints, topic_name, messages)
    host, port = re.search(r"@([\d.]+|localhost):(\d+)/", endpoints.dsn).groups()  # type: ignore[union-attr]
    with proxy(host, int(port)) as pg:
        dsn = endpoints.dsn.replace(f"{host}:{port}", f"127.0.0.1:{pg.port}")
        # Small buffers, so the outage fills them and fetching must pause (bounded memory) and resume.
        env = pipeline_env(
            endpoints, topic_name, kafka_batch_size=100, db_dsn=dsn, batch_max_bytes=65536, buffer_max_bytes=262144
        )
        log = tmp_path / "main.log"
        process = start_main(env, "--exit-when-drained", log=log)
        try:
            wait_until(
                lambda: committed(endpoints, topic_name) > messages // 5,
                180,
                "a fifth committed",
                running=(process, log),
            )
            pg.cut()
            time.sleep(5)
            pg.restore()
            assert process.wait(600) == 0, log.read_text()[-3000:]
        finally:
            stop_group(process)
    result = account(endpoints, topic_name)
    assert result.exact, str(result)
    text = log.read_text()
    assert "retry" in text, "the outage never reached the flush path"
    assert "pausing fetch" in text and "resuming fetch" in text, "buffers were not bounded during the outage"
