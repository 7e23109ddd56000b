"""Running it: new partitions, the connection budget, ray job submit, resize, autoscaling, metrics."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.pipeline import (
    account,
    committed,
    fill,
    high_watermarks,
    pipeline_env,
    scalar,
    slow_rows,
    start_main,
    stop_group,
    wait_until,
)
from tests.support.services import Endpoints


def test_new_partitions_are_picked_up(endpoints: Endpoints, topic_name: str, tmp_path: Path) -> None:
    from confluent_kafka.admin import AdminClient, NewPartitions

    fill(endpoints, topic_name, 4_000, partitions=4)
    log = tmp_path / "main.log"
    process = start_main(pipeline_env(endpoints, topic_name), log=log)
    try:
        wait_until(
            lambda: committed(endpoints, topic_name) >= 4_000,
            180,
            "the first 4 partitions committed",
            running=(process, log),
        )
        admin = AdminClient({"bootstrap.servers": endpoints.kafka})
        admin.create_partitions([NewPartitions(topic_name, 6)])[topic_name].result()
        fill(endpoints, topic_name, 6_000, partitions=6)
        wait_until(
            lambda: committed(endpoints, topic_name) >= 10_000,
            180,
            "all 6 partitions committed",
            running=(process, log),
        )
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


def test_autoscaling_follows_the_backlog(endpoints: Endpoints, topic_name: str, tmp_path: Path) -> None:
    messages = 10_000
    fill(endpoints, topic_name, messages)
    # slow_rows: one consumer buffers ~140 records (64 KiB) at most, so it commits at most 1000 msg/s however fast
    # the machine; the 10 s its backlog would take is far over the half-second catch-up time at its first measured
    # rate, and the scale-up certain.
    env = pipeline_env(
        endpoints,
        topic_name,
        min_actors=1,
        max_actors=4,
        scale_catchup_s=0.5,
        buffer_max_bytes=64 * 1024,
        batch_max_bytes=16 * 1024,
    )
    log = tmp_path / "main.log"
    with slow_rows(endpoints, topic_name):
        process = start_main(env, log=log)
        running = (process, log)
        try:
            wait_until(
                lambda: "autoscale: 1 -> " in log.read_text(), 120, "a scale-up from 1 consumer", running=running
            )
            wait_until(lambda: committed(endpoints, topic_name) >= messages, 300, "all committed", running=running)
            scaled_down = re.compile(r"autoscale: 2 -> 1 consumers")
            wait_until(lambda: scaled_down.search(log.read_text()), 120, "the scale-down to 1", running=running)
            process.send_signal(signal.SIGTERM)
            assert process.wait(60) == 0, log.read_text()[-3000:]
        finally:
            stop_group(process)
    result = account(endpoints, topic_name)
    assert result.exact, str(result)
    assert "stopped consumer" in log.read_text()


def test_tables_live_in_the_configured_schema(endpoints: Endpoints, topic_name: str, tmp_path: Path) -> None:
    schema = f"loom_{topic_name.replace('-', '_')}"
    fill(endpoints, topic_name, 3_000, partitions=3)
    log = tmp_path / "main.log"
    env = pipeline_env(endpoints, topic_name, db_schema=schema)
    try:
        assert start_main(env, "--exit-when-drained", log=log).wait(300) == 0, log.read_text()[-3000:]
        assert scalar(endpoints, f"SELECT count(*) FROM {schema}.loom_messages WHERE topic = $1", topic_name) == 3_000
        assert (
            scalar(endpoints, f"SELECT sum(next_offset) FROM {schema}.loom_offsets WHERE topic = $1", topic_name)
            == 3_000
        )
        assert scalar(endpoints, "SELECT count(*) FROM public.loom_messages WHERE topic = $1", topic_name) == 0
        assert scalar(endpoints, "SELECT count(*) FROM public.loom_offsets WHERE topic = $1", topic_name) == 0
    finally:
        scalar(endpoints, f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# The tests on the module's `ray_head` come last, so no other test here starts a local Ray while it runs.


def test_ray_job_submit_runs_to_the_end(endpoints: Endpoints, topic_name: str, ray_head: str) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    messages = 6_000
    fill(endpoints, topic_name, messages, partitions=6)
    env = {k: v for k, v in pipeline_env(endpoints, topic_name).items() if k.startswith(("LOOM_", "RAY_AUTH"))}
    env["LOOM_DRIVER_LOG_MAX_BYTES"] = "1024"  # Ray's job-driver-<id>.log is rotated by the driver itself
    client = JobSubmissionClient(ray_head)
    submitted: list[str] = []

    # The job server answers before its agent is ready ("No available agent"), for a minute and more on a
    # loaded machine.
    def submit() -> bool:
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

    wait_until(submit, 180, "the job to be accepted", interval_s=2)
    [job] = submitted
    wait_until(lambda: client.get_job_status(job).is_terminal(), 300, "the job to finish", interval_s=1)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs[-3000:]
    assert f"messages={messages}" in logs
    # The log Ray keeps for the job (and shows) was emptied past 1 KiB, its lines copied beside it.
    rotated = re.findall(r"driver log passed 1024 bytes: its lines so far are in (\S+\.log\.1)", logs)
    assert rotated, logs[-3000:]
    assert Path(rotated[-1]).name == f"job-driver-{job}.log.1"
    assert "progress: " in Path(rotated[-1]).read_text()
    assert len(logs.encode()) < 1024 + 16_384, "the log kept what it had past the limit"  # at most one interval's lines
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
        wait_until(
            lambda: committed(endpoints, topic_name) >= 20_000, 180, "the preload committed", running=(process, log)
        )
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
                [sys.executable, "-m", "loom_ray.ctl", "resize", str(actors), "--wait"],
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert ctl.returncode == 0, ctl.stderr[-2000:]
            assert f"target: {actors} consumer actors" in ctl.stdout
            assert f"{actors} of {actors} consumers running, 0 waiting to be placed" in ctl.stdout, ctl.stdout
            assert producer.poll() is None, "the producer finished before the resize: no traffic during the move"
        assert producer.wait(120) == 0
        wait_until(
            lambda: committed(endpoints, topic_name) >= 170_000, 180, "everything committed", running=(process, log)
        )
        # The head is shared with the job submit test: only this run's series count.
        consumers = set(re.findall(r"consumer (loom-consumer-[\w-]+):", log.read_text()))
        assert consumers, log.read_text()[-3000:]

        def series(name: str, label: str) -> list[str]:
            return [line for line in scrape_metrics().splitlines() if line.startswith(f"{name}{{") and label in line]

        wait_until(lambda: series("ray_loom_rows_total", f'topic="{topic_name}"'), 60, "the consumers' metrics")
        assert series("ray_loom_partition_lag", f'topic="{topic_name}"')
        assert any(series("ray_loom_flush_seconds_bucket", f'consumer="{name}"') for name in consumers)
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
