"""The whole job on real Kafka, PostgreSQL and a local Ray: every offset lands exactly once.

Each test fills a fresh topic with the load generator, runs ``python -m loom_ray.main`` as users do,
injects a fault, and then accounts for every offset of the topic in PostgreSQL (``Accounting``): none
lost, none twice (counted from the append-only ``loom_audit``, which the primary keys cannot hide),
none in both tables, and ``loom_offsets`` at the high watermarks.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from loom_ray import loadgen
from tests.support.pipeline import (
    Accounting,
    account,
    high_watermarks,
    pipeline_env,
    scalar,
    start_main,
    stop_group,
    wait_until,
)
from tests.support.services import Endpoints
from tests.support.tcp_proxy import proxy

KIND_TO_ERROR = {
    "invalid_utf8": "InvalidUtf8",
    "truncated_json": "InvalidJson",
    "not_json": "InvalidJson",
    "nul_in_string": "NulCharacter",
    "deep_nesting": "InvalidJson",
    "huge_number": "InvalidJson",
    "oversize": "Oversize",
    "empty": "EmptyValue",
    "null_value": "NullValue",
    "lone_surrogate": "InvalidJson",
}


def fill(
    endpoints: Endpoints, topic: str, messages: int, partitions: int = 12, ratio: float = 0.0, **extra: str
) -> None:
    argv = ["--topic", topic, "--partitions", str(partitions), "--messages", str(messages), "--size", "200"]
    argv += ["--bootstrap-servers", endpoints.kafka, "--malformed-ratio", str(ratio)]
    for name, value in extra.items():
        argv += [f"--{name.replace('_', '-')}", value]
    assert loadgen.main(argv) == 0


def committed(endpoints: Endpoints, topic: str) -> int:
    return int(scalar(endpoints, "SELECT coalesce(sum(next_offset), 0) FROM loom_offsets WHERE topic = $1", topic))


def pids_of(endpoints: Endpoints, application: str) -> list[int]:
    """Pids of the processes holding connections named ``<application> ... pid=N`` (actors name theirs)."""
    names = scalar(
        endpoints,
        "SELECT array_agg(DISTINCT application_name) FROM pg_stat_activity WHERE application_name LIKE $1",
        f"{application} %",
    )
    return sorted({int(m.group(1)) for name in names or [] if (m := re.search(r"pid=(\d+)", name))})


def group_offsets(endpoints: Endpoints, topic: str, partitions: int) -> dict[int, int]:
    """The offsets loom-ray mirrored to the Kafka group (for lag tools)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": endpoints.kafka})
    request = ConsumerGroupTopicPartitions(f"loom-{topic}", [TopicPartition(topic, p) for p in range(partitions)])
    result = admin.list_consumer_group_offsets([request])[f"loom-{topic}"].result()
    return {tp.partition: tp.offset for tp in result.topic_partitions}


def test_every_offset_once_with_malformed_input_and_db_rejects(
    endpoints: Endpoints, topic_name: str, tmp_path: Path
) -> None:
    messages, ratio, seed = 200_000, 0.01, 7
    fill(endpoints, topic_name, messages, ratio=ratio, seed=str(seed), ack_log=str(tmp_path / "acks"))
    # A CHECK constraint that refuses some valid events at write time: they must be isolated by bisection.
    scalar(
        endpoints,
        f"ALTER TABLE loom_messages ADD CONSTRAINT reject_{topic_name.replace('-', '_')} "
        f"CHECK (topic <> '{topic_name}' OR (payload->>'seq')::bigint % 997 <> 0) NOT VALID",
    )
    try:
        env = pipeline_env(endpoints, topic_name)
        log = tmp_path / "main.log"
        process = start_main(env, "--exit-when-drained", log=log)
        assert process.wait(600) == 0, log.read_text()[-3000:]
    finally:
        scalar(endpoints, f"ALTER TABLE loom_messages DROP CONSTRAINT reject_{topic_name.replace('-', '_')}")
    result = account(endpoints, topic_name)
    assert result.exact, str(result)
    assert result.expected == messages
    planned = Counter(loadgen.plan(seq, ratio, seed) for seq in range(messages))
    refused = sum(1 for seq in range(0, messages, 997) if loadgen.plan(seq, ratio, seed) is None)
    by_class = Counter(
        dict(
            scalar(
                endpoints,
                "SELECT array_agg(ARRAY[error_class, count::text]) FROM (SELECT error_class, count(*) "
                "FROM loom_dead_letters WHERE topic = $1 AND stage <> 'db_row' GROUP BY 1) AS t",
                topic_name,
            )
        )
    )
    expected_classes: Counter[str] = Counter()
    for kind, n in planned.items():
        if kind is not None:
            expected_classes[KIND_TO_ERROR[kind]] += n
    assert {k: int(v) for k, v in by_class.items()} == dict(expected_classes)
    db_rows = scalar(
        endpoints,
        "SELECT count(*) FROM loom_dead_letters WHERE topic = $1 AND stage = 'db_row' AND sqlstate = '23514'",
        topic_name,
    )
    assert db_rows == refused > 0
    assert result.dead_letters == sum(expected_classes.values()) + refused
    summary = [line for line in log.read_text().splitlines() if line.startswith("summary:")]
    assert summary and f"messages={messages}" in summary[-1], summary
    # The Kafka group mirrors PostgreSQL's offsets after the drain, so lag tools see the truth.
    marks = high_watermarks(endpoints.kafka, topic_name)
    assert group_offsets(endpoints, topic_name, 12) == {p: high for p, (_, high) in marks.items()}


def kill_9_mid_run(endpoints: Endpoints, topic: str, tmp_path: Path, application: str) -> tuple[Accounting, str]:
    """Run the job over 200 000 messages and, once a fifth is committed, kill -9 the first process whose
    PostgreSQL connections are named ``<application> ... pid=N``; return the accounting and the job's log."""
    messages = 200_000
    fill(endpoints, topic, messages)
    log = tmp_path / "main.log"
    process = start_main(pipeline_env(endpoints, topic, kafka_batch_size=100), "--exit-when-drained", log=log)
    try:
        wait_until(lambda: committed(endpoints, topic) > messages // 5, 180, "a fifth committed")
        victims = pids_of(endpoints, application)
        assert victims, f"no {application} connections found in pg_stat_activity"
        os.kill(victims[0], signal.SIGKILL)
        assert process.wait(600) == 0, log.read_text()[-3000:]
    finally:
        stop_group(process)
    return account(endpoints, topic), log.read_text()


def test_kill_9_of_a_consumer_actor_mid_run(endpoints: Endpoints, topic_name: str, tmp_path: Path) -> None:
    result, log = kill_9_mid_run(endpoints, topic_name, tmp_path, "loom-ray")
    assert result.exact, str(result)
    assert result.max_epoch >= 2, "the killed actor's partitions were never reclaimed"
    assert "is gone" in log


def test_kill_9_of_the_coordinator_mid_run(endpoints: Endpoints, topic_name: str, tmp_path: Path) -> None:
    # Ray restarts it; its consumers die with it; the new one claims every partition again.
    result, _ = kill_9_mid_run(endpoints, topic_name, tmp_path, "loom-coordinator")
    assert result.exact, str(result)
    assert result.max_epoch >= 2, "the restarted coordinator did not claim the partitions again"


def test_restart_of_the_main_job_mid_run(endpoints: Endpoints, topic_name: str, tmp_path: Path) -> None:
    messages = 200_000
    fill(endpoints, topic_name, messages)
    env = pipeline_env(endpoints, topic_name, kafka_batch_size=100)
    log = tmp_path / "main.log"
    # 1. SIGTERM: drains, prints a summary and exits 0 well within the shutdown deadline.
    first = start_main(env, log=log)
    try:
        wait_until(lambda: committed(endpoints, topic_name) > messages // 10, 180, "a tenth committed")
        first.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert first.wait(60) == 0, log.read_text()[-3000:]
        assert time.monotonic() - started < 60
    finally:
        stop_group(first)
    assert "summary:" in log.read_text()
    # 2. SIGKILL of the driver and its local Ray, mid-run.
    second = start_main(env, log=log)
    try:
        mark = committed(endpoints, topic_name)
        wait_until(lambda: committed(endpoints, topic_name) > mark + messages // 10, 180, "progress after restart")
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
    assert result.max_epoch >= 3  # each run claimed every partition again


def test_new_partitions_are_picked_up(endpoints: Endpoints, topic_name: str, tmp_path: Path) -> None:
    from confluent_kafka.admin import AdminClient, NewPartitions

    fill(endpoints, topic_name, 20_000, partitions=4)
    log = tmp_path / "main.log"
    process = start_main(pipeline_env(endpoints, topic_name), log=log)
    try:
        wait_until(lambda: committed(endpoints, topic_name) >= 20_000, 180, "the first 4 partitions committed")
        admin = AdminClient({"bootstrap.servers": endpoints.kafka})
        admin.create_partitions([NewPartitions(topic_name, 6)])[topic_name].result()
        fill(endpoints, topic_name, 30_000, partitions=6)
        wait_until(lambda: committed(endpoints, topic_name) >= 50_000, 180, "all 6 partitions committed")
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()[-3000:]
    finally:
        stop_group(process)
    result = account(endpoints, topic_name)
    assert result.exact, str(result)
    assert len(high_watermarks(endpoints.kafka, topic_name)) == 6


def test_refuses_to_start_beyond_the_connection_budget(endpoints: Endpoints, topic_name: str, tmp_path: Path) -> None:
    fill(endpoints, topic_name, 10, partitions=1)
    log = tmp_path / "main.log"
    env = pipeline_env(endpoints, topic_name, db_max_pool_size=100, max_actors=1000)
    process = start_main(env, "--exit-when-drained", log=log)
    assert process.wait(120) == 2
    text = log.read_text()
    assert "LOOM_MAX_ACTORS (1000) x LOOM_DB_MAX_POOL_SIZE (100)" in text and "max_connections" in text
    assert scalar(endpoints, "SELECT count(*) FROM loom_offsets WHERE topic = $1", topic_name) == 0


def test_postgres_unreachable_mid_run(endpoints: Endpoints, topic_name: str, tmp_path: Path) -> None:
    messages = 150_000
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
            wait_until(lambda: committed(endpoints, topic_name) > messages // 5, 180, "a fifth committed")
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


def test_ray_job_submit_runs_to_the_end(endpoints: Endpoints, topic_name: str, ray_head: str) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    messages = 30_000
    fill(endpoints, topic_name, messages, partitions=6)
    env = {k: v for k, v in pipeline_env(endpoints, topic_name).items() if k.startswith(("LOOM_", "RAY_AUTH"))}
    client = JobSubmissionClient(ray_head)
    submitted: list[str] = []

    def submit() -> bool:  # the job server answers before its agent is ready ("No available agent")
        try:
            submitted.append(
                client.submit_job(
                    entrypoint="python -m loom_ray.main --exit-when-drained",
                    runtime_env={"working_dir": str(Path(__file__).resolve().parents[2]), "env_vars": env},
                )
            )
        except RuntimeError as exc:
            assert "No available agent" in str(exc), exc
            return False
        return True

    wait_until(submit, 60, "the job to be accepted", interval_s=2)
    [job] = submitted
    wait_until(lambda: client.get_job_status(job).is_terminal(), 300, "the job to finish", interval_s=1)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs[-3000:]
    assert f"messages={messages}" in logs
    result = account(endpoints, topic_name)
    assert result.exact, str(result)


def scrape_metrics() -> str:
    """The Ray head's Prometheus endpoint (``--metrics-export-port`` in the ``ray_head`` fixture)."""
    import urllib.request

    with urllib.request.urlopen("http://127.0.0.1:28080/metrics", timeout=10) as response:  # noqa: S310
        return response.read().decode()


def test_resize_mid_run_hands_partitions_over(
    endpoints: Endpoints, topic_name: str, ray_head: str, tmp_path: Path
) -> None:
    fill(endpoints, topic_name, 20_000)
    env = pipeline_env(endpoints, topic_name, kafka_batch_size=100, min_actors=1)
    env["RAY_ADDRESS"] = "127.0.0.1:26379"
    log = tmp_path / "main.log"
    process = start_main(env, "--actors", "3", log=log)
    producer: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: committed(endpoints, topic_name) >= 20_000, 180, "the preload committed")
        # Live traffic (30 s) while partitions move, so hand-offs happen with batches in flight.
        producer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loom_ray.loadgen",
                "--topic",
                topic_name,
                "--partitions",
                "12",
                "--messages",
                "150000",
                "--size",
                "200",
                "--rate",
                "5000",
                "--bootstrap-servers",
                endpoints.kafka,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for actors in (5, 2):
            ctl = subprocess.run(
                [sys.executable, "-m", "loom_ray.ctl", "resize", str(actors)],
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert ctl.returncode == 0, ctl.stderr[-2000:]
            assert f"target: {actors} consumer actors" in ctl.stdout
            assert producer.poll() is None, "the producer finished before the resize: no traffic during the move"
        assert producer.wait(120) == 0
        wait_until(lambda: committed(endpoints, topic_name) >= 170_000, 180, "everything committed")
        wait_until(lambda: "ray_loom_rows_total{" in scrape_metrics(), 60, "the consumers' metrics")
        metrics = scrape_metrics()
        assert f'partition="0",topic="{topic_name}"' in metrics or f'topic="{topic_name}"' in metrics
        assert "ray_loom_partition_lag{" in metrics and "ray_loom_flush_seconds_bucket{" in metrics
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if producer is not None:
            producer.kill()
        stop_group(process)
    result = account(endpoints, topic_name)
    assert result.exact, str(result)
    assert result.expected == 170_000
    text = log.read_text()
    assert text.count(" released ") >= 6, "partitions were not handed over live"
    assert "fenced" not in text, "a clean hand-off must not need fencing"


def test_autoscaling_follows_the_backlog(endpoints: Endpoints, topic_name: str, tmp_path: Path) -> None:
    messages = 200_000
    fill(endpoints, topic_name, messages)
    env = pipeline_env(endpoints, topic_name, min_actors=1, max_actors=4, scale_catchup_s=2, kafka_batch_size=50)
    log = tmp_path / "main.log"
    process = start_main(env, log=log)
    try:
        wait_until(lambda: "autoscale: 1 -> " in log.read_text(), 120, "a scale-up from 1 consumer")
        wait_until(lambda: committed(endpoints, topic_name) >= messages, 300, "everything committed")
        wait_until(lambda: re.search(r"autoscale: 2 -> 1 consumers", log.read_text()), 120, "the scale-down to 1")
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()[-3000:]
    finally:
        stop_group(process)
    result = account(endpoints, topic_name)
    assert result.exact, str(result)
    assert "stopped consumer" in log.read_text()
