"""What a user sees of a running job, in the clients they use: `ray job submit` with Ray's token authentication
on, the Ray dashboard in headless Chromium (Jobs page log, Actors page), and a real Prometheus scraping the
job's metrics and evaluating kuberay/grafana-dashboard.json and kuberay/prometheus-rules.yaml.

One `ray start --head` (token auth on, every port of its own) and one job serve the whole module; the tests run
in order against them and the last one stops the job and checks what landed. The job reads two topics: one
with live traffic into ``loom_messages``, and a small one through a route (LOOM_ROUTES_FILE), so that every
event a dashboard panel charts (a fenced flush, an outage, a gap, a blocked sink, a routed record) really
happens while Prometheus scrapes it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import yaml
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from tests.integration.conftest import RAY_BIN, _start_head, _stop_head
from tests.support.browser import Browser, chromium_binary
from tests.support.pipeline import account, committed, fill, high_watermarks, pipeline_env, scalar, wait_until
from tests.support.prometheus import Prometheus, prometheus_binary
from tests.support.services import Endpoints
from tests.support.tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "kuberay"
# Ports of this module's head, none of Ray's defaults and below the kernel's ephemeral range, so that other
# Ray clusters on the machine (tests, people) do not collide with it.
GCS_PORT = 29661
DASHBOARD_PORT = 29665
PROMETHEUS_PORT = 29690
HEAD_PORTS = (
    f"--dashboard-port={DASHBOARD_PORT}",
    "--metrics-export-port=29680",
    "--dashboard-agent-listen-port=29681",
    "--dashboard-agent-grpc-port=29682",
    "--runtime-env-agent-port=29683",
    "--ray-client-server-port=29684",
    "--node-manager-port=29685",
    "--object-manager-port=29686",
    "--min-worker-port=29700",
    "--max-worker-port=29899",
)
HEAD_PORT_ENV = {"AUTOSCALER_METRIC_PORT": "29687", "DASHBOARD_METRIC_PORT": "29688"}
# What `ray job submit` says while the head is not ready for it yet: a retry is due, not a failure.
TRANSIENT_SUBMIT_ERRORS = ("No available agent", "Remote end closed connection without response")
TOKEN_COOKIE = "ray-authentication-token"  # what the dashboard's login sets (ray/_private/authentication)
# The routed topic's one route: its records go into a table of their own (in a schema dropped afterwards).
ROUTES = """
[[route]]
name = "dashboard"
topic = "{topic}"
table = "{schema}.routed"
mode = "insert"
key = ["src_partition", "src_offset"]
auto_create = true

[route.columns]
src_partition = {{ type = "integer", from = "partition" }}
src_offset    = {{ type = "bigint", from = "offset" }}
"""
ROUTED_MESSAGES = 300
BLOCKED_SQLSTATE = "42501"  # insufficient_privilege: refused writes, not an outage
CONSUMER_LINE = re.compile(
    r"consumer (loom-consumer-\d+-\w+): ([1-9]\d*) msg/s, \d+ rows/s, \d+ messages, ([1-9]\d*) dead letters, "
    r"lag \d+, partitions held: [1-9]\d*"
)


@dataclass(frozen=True)
class Job:
    """The module's running job: its dashboard, its submission id, the client environment with the token."""

    dashboard: str
    submission_id: str
    topic: str
    client_env: dict[str, str]
    token: str
    temp_dir: Path
    producer: subprocess.Popen[bytes]
    postgres: TcpProxy  # the job reaches PostgreSQL through it, so a test can cut it off
    routed_topic: str
    routed_schema: str

    def ray(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """A ``ray`` CLI command against the head, as the user runs it (token auth by default)."""
        return subprocess.run(
            [str(RAY_BIN), *args], env=env or self.client_env, capture_output=True, text=True, timeout=120, cwd=ROOT
        )

    def logs(self) -> str:
        result = self.ray("job", "logs", self.submission_id, f"--address={self.dashboard}")
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout


def _producer(endpoints: Endpoints, topic: str) -> subprocess.Popen[bytes]:
    """Live traffic at 400 msg/s with 1 % malformed records (dead letters) for as long as the module runs."""
    argv = ["--topic", topic, "--partitions", "6", "--messages", "1000000", "--size", "200", "--rate", "400"]
    argv += ["--malformed-ratio", "0.01", "--bootstrap-servers", endpoints.kafka]
    return subprocess.Popen(
        [sys.executable, "-m", "loom_ray.loadgen", *argv], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


@pytest.fixture(scope="module")
def job(endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Job]:
    folder = tmp_path_factory.mktemp("dashboard")
    token_path = folder / "auth_token"
    token = secrets.token_hex(32)
    token_path.write_text(token)
    # Ray 2.60's default once a token exists on the host (~/.ray/auth_token); set explicitly here so the test
    # does not depend on the host's home directory.
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    temp_dir = Path(tempfile.mkdtemp(prefix="lrd-", dir="/tmp"))
    head_log = folder / "head.log"
    head = _start_head(
        head_log,
        "--dashboard-host=127.0.0.1",
        "--num-cpus=4",
        "--object-store-memory=200000000",
        "--include-dashboard=true",
        *HEAD_PORTS,
        env={**auth, **HEAD_PORT_ENV, "RAY_metrics_report_interval_ms": "1000"},
        port=GCS_PORT,
        temp_dir=str(temp_dir),
    )
    client_env = {**os.environ, **auth}
    dashboard = f"http://127.0.0.1:{DASHBOARD_PORT}"
    suffix = secrets.token_hex(4)
    topic, routed_topic, routed_schema = f"t-dash-{suffix}", f"t-dash-routed-{suffix}", f"dash_{suffix}"
    routes = folder / "routes.toml"
    routes.write_text(ROUTES.format(topic=routed_topic, schema=routed_schema))
    producer: subprocess.Popen[bytes] | None = None
    host, port = re.search(r"@([\d.]+|localhost):(\d+)/", endpoints.dsn).groups()  # type: ignore[union-attr]
    postgres = TcpProxy(host, int(port)).start()
    try:

        def up() -> bool:
            assert head.poll() is None, head_log.read_text()[-3000:]
            listed = subprocess.run(
                [str(RAY_BIN), "job", "list", f"--address={dashboard}"], env=client_env, capture_output=True
            )
            return listed.returncode == 0

        wait_until(up, 120, "the Ray head's job server")
        fill(endpoints, topic, 6_000, partitions=6, ratio=0.01)
        fill(endpoints, routed_topic, ROUTED_MESSAGES, partitions=1)
        producer = _producer(endpoints, topic)
        dsn = endpoints.dsn.replace(f"{host}:{port}", f"127.0.0.1:{postgres.port}")
        env = pipeline_env(endpoints, f"{topic},{routed_topic}", min_actors=2, db_dsn=dsn, routes_file=routes)
        loom = {k: v for k, v in env.items() if k.startswith("LOOM_")}
        # `ray job stop` SIGKILLs the driver RAY_JOB_STOP_WAIT_TIME_S (3) after its SIGTERM: leave it the drain.
        runtime_env = {"env_vars": {**loom, "RAY_JOB_STOP_WAIT_TIME_S": "60"}}
        submission_id = f"loom-{topic}"

        def submit() -> bool:
            """Submit the job; False while the job server answers before its agent is ready ("No available
            agent", for a minute and more on a loaded machine) or drops the connection, any other refusal
            fails the test."""
            result = subprocess.run(
                [
                    str(RAY_BIN),
                    "job",
                    "submit",
                    f"--address={dashboard}",
                    f"--submission-id={submission_id}",
                    "--no-wait",
                    "--working-dir=.",
                    f"--runtime-env-json={json.dumps(runtime_env)}",
                    "--",
                    "python",
                    "-m",
                    "loom_ray.main",
                    "--progress-interval=2",
                ],
                env=client_env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            refused = result.stdout[-2000:] + result.stderr[-2000:]
            assert result.returncode == 0 or any(t in refused for t in TRANSIENT_SUBMIT_ERRORS), refused
            return result.returncode == 0

        wait_until(submit, 180, "the job to be accepted", interval_s=2)
        yield Job(
            dashboard,
            submission_id,
            topic,
            client_env,
            token,
            temp_dir,
            producer,
            postgres,
            routed_topic,
            routed_schema,
        )
    finally:
        if producer is not None:
            producer.kill()
            producer.wait(30)
        _stop_head(head)
        postgres.stop()
        scalar(endpoints, f"DROP SCHEMA IF EXISTS {routed_schema} CASCADE")
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_a_client_without_the_token_is_refused(job: Job) -> None:
    without = {k: v for k, v in job.client_env.items() if not k.startswith("RAY_AUTH")}
    listed = job.ray("job", "list", f"--address={job.dashboard}", env={**without, "HOME": str(job.temp_dir)})
    assert listed.returncode != 0
    assert "Token authentication is enabled but no authentication token was found" in listed.stdout + listed.stderr


@pytest.fixture
def browser(job: Job, tmp_path: Path) -> Iterator[Browser]:
    """Chromium logged in to the job's dashboard with the cluster's token (the dashboard's own login call)."""
    if chromium_binary() is None:
        pytest.skip("chromium missing: scripts/bootstrap.sh installs Debian's chromium (needs apt-get and root)")
    with Browser(tmp_path / "chromium") as page:
        page.open(job.dashboard)
        wait_until(lambda: page.evaluate("document.readyState") == "complete", 30, "the dashboard to load")
        status = page.evaluate(
            f"fetch('/api/authenticate', {{method: 'POST', headers: {{Authorization: 'Bearer {job.token}'}}}})"
            ".then(r => r.status)"
        )
        assert status == 200
        yield page


def test_the_jobs_page_shows_each_consumers_throughput(job: Job, browser: Browser, tmp_path: Path) -> None:
    consumers: set[str] = set()

    def lines_shown() -> bool:
        """Load the job's page as a user would; once its log is there, newest first, filtered to the
        per-consumer lines."""
        browser.open(f"{job.dashboard}/#/jobs/{job.submission_id}")
        wait_until(lambda: "Running entrypoint for job" in browser.text(), 60, "the job's log on its page")
        assert browser.switch_on("Reverse:"), "no Reverse switch above the job's log"
        assert browser.type_into("Keyword", "partitions held"), "no Keyword filter above the job's log"
        wait_until(lambda: "Running entrypoint for job" not in browser.text(), 10, "the filter to apply")
        text = browser.text()
        (tmp_path / "jobs-page.txt").write_text(text)
        matches = list(CONSUMER_LINE.finditer(text))
        consumers.update(match.group(1) for match in matches)
        return len(consumers) >= 2 and len(matches) >= 6  # several rounds of lines: a screenshot worth showing

    wait_until(lines_shown, 120, "per-consumer lines with messages/s and dead letters on the Jobs page", interval_s=3)
    browser.evaluate("window.scrollBy(0, -120)")  # the Logs heading and the filter above the lines
    shot = browser.screenshot(tmp_path / "jobs-page.png")
    assert shot.stat().st_size > 10_000


def test_the_actors_page_names_the_consumers(job: Job, browser: Browser, tmp_path: Path) -> None:
    browser.open(f"{job.dashboard}/#/actors")

    def consumers_listed() -> bool:
        text = browser.text()
        names = set(re.findall(r"\bloom-consumer-\d+-\w+", text))
        return (
            len(names) >= 2 and all(f"ConsumerActor({name})" in text for name in names) and "loom-coordinator" in text
        )

    wait_until(consumers_listed, 60, "the consumer actors (class, name, repr) on the Actors page")
    assert "ConsumerActor" in browser.text() and "CoordinatorActor" in browser.text()
    browser.screenshot(tmp_path / "actors-page.png")


def _dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target, with Grafana's variables as a user's "All" would set them."""
    with (KUBERAY / "grafana-dashboard.json").open(encoding="utf-8") as f:
        dashboard = json.load(f)
    substitutions = {"$__rate_interval": "30s", "$__range": "10m", "$topic": ".*", "$consumer": ".*"}
    targets = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in substitutions.items():
                expr = expr.replace(variable, value)
            targets.append((panel["title"], expr))
    return targets


async def _fence_and_cut(endpoints: Endpoints, topic: str) -> tuple[int, int]:
    """Bump partition 0's epoch behind its owner's back, as a newer claim would, and while that offset row is
    locked (neither the owner's flush nor the coordinator's claim can touch it), delete the partition's records
    from its committed offset up to its high watermark, as retention overtaking a slow reader would. The
    owner's next flush is fenced; the claim that follows finds its committed offset gone and records a gap.
    Returns the gap, ``(committed offset, high watermark)``."""
    conn = await asyncpg.connect(endpoints.dsn)
    try:
        async with conn.transaction():
            start = await conn.fetchval(
                'UPDATE loom_offsets SET epoch = epoch + 1 WHERE topic = $1 AND "partition" = 0 RETURNING next_offset',
                topic,
            )
            deadline = time.monotonic() + 30
            while (end := high_watermarks(endpoints.kafka, topic)[0][1]) <= start:
                assert time.monotonic() < deadline, f"the producer wrote nothing to {topic}[0] past {start} in 30 s"
                await asyncio.sleep(0.2)
            admin = AdminClient({"bootstrap.servers": endpoints.kafka})
            below = TopicPartition(topic, 0, end)
            admin.delete_records([below])[below].result(30)
    finally:
        await conn.close()
    return int(start), end


def _refuse_rows(endpoints: Endpoints, job: Job) -> None:
    """PostgreSQL refuses every row of the job's live topic (a row trigger raising ``BLOCKED_SQLSTATE``, as a
    revoked privilege would), so the flushes of every consumer holding one of its partitions are blocked."""
    for statement in (
        f"""CREATE FUNCTION {job.routed_schema}.refuse_rows() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'refused by test_dashboard' USING ERRCODE = '{BLOCKED_SQLSTATE}';
            END $$""",
        f"CREATE TRIGGER refuse_{job.routed_schema} BEFORE INSERT ON loom_messages FOR EACH ROW "
        f"WHEN (NEW.topic = '{job.topic}') EXECUTE FUNCTION {job.routed_schema}.refuse_rows()",
    ):
        scalar(endpoints, statement)


def test_prometheus_scrapes_the_job_and_every_dashboard_query_returns_data(
    job: Job, endpoints: Endpoints, tmp_path: Path
) -> None:
    """Every panel query returns data once each event it charts has happened; of the alert rules,
    LoomSinkBlocked's condition holds while the sink is blocked (the alert pending: it fires after its 5
    minutes) and clears after; LoomPartitionStalled (10 minutes without a commit) and LoomLagGrowing (15
    minutes of growth) would need that long, so they are only checked to evaluate, and to stay quiet."""
    if prometheus_binary() is None:
        pytest.skip("prometheus missing: scripts/bootstrap.sh installs Debian's prometheus (needs apt-get and root)")
    rules = yaml.safe_load((KUBERAY / "prometheus-rules.yaml").read_text())
    rule_file = tmp_path / "rules.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": rules["spec"]["groups"]}))
    exprs = {rule["alert"]: rule["expr"] for group in rules["spec"]["groups"] for rule in group["rules"]}
    # Ray writes the file-SD list of its metrics endpoints (every node's, the autoscaler's) into its temp dir.
    discovery = job.temp_dir / "prom_metrics_service_discovery.json"
    wait_until(discovery.exists, 60, "Ray's Prometheus service-discovery file")
    with Prometheus(tmp_path / "prometheus", PROMETHEUS_PORT, discovery, [rule_file]) as prometheus:

        def total(expr: str) -> float:
            found = prometheus.query(expr)
            return float(found[0]["value"][1]) if found else 0.0

        held = 'SELECT next_offset > 0 AND owner IS NOT NULL FROM loom_offsets WHERE topic = $1 AND "partition" = 0'
        wait_until(lambda: scalar(endpoints, held, job.topic) is True, 120, "partition 0 held, with commits")
        start, end = asyncio.run(_fence_and_cut(endpoints, job.topic))
        gaps = 'SELECT array_agg(ARRAY[from_offset, to_offset]) FROM loom_gaps WHERE topic = $1 AND "partition" = 0'
        wait_until(lambda: scalar(endpoints, gaps, job.topic) == [[start, end]], 60, f"the gap {start}..{end}")
        wait_until(
            lambda: total(f'sum(ray_loom_gap_offsets_total{{topic="{job.topic}"}})') == end - start,
            60,
            f"ray_loom_gap_offsets_total to count the {end - start} offsets of the gap",
        )
        wait_until(lambda: total("sum(ray_loom_fenced_flushes_total)") >= 1, 60, "the fenced flush counted")

        job.postgres.cut()  # an outage: flushes fail and are retried
        time.sleep(3)
        job.postgres.restore()

        _refuse_rows(endpoints, job)
        wait_until(
            lambda: {s["metric"]["sqlstate"] for s in prometheus.query(exprs["LoomSinkBlocked"])} == {BLOCKED_SQLSTATE},
            90,
            f"ray_loom_sink_blocked at 1 with SQLSTATE {BLOCKED_SQLSTATE}",
        )
        wait_until(
            lambda: any(
                a["labels"]["alertname"] == "LoomSinkBlocked" and a["state"] == "pending"
                for a in prometheus.api("alerts")["alerts"]
            ),
            30,
            "the LoomSinkBlocked alert pending",
        )
        scalar(endpoints, f"DROP TRIGGER refuse_{job.routed_schema} ON loom_messages")
        wait_until(lambda: not prometheus.query(exprs["LoomSinkBlocked"]), 90, "ray_loom_sink_blocked back at 0")

        wait_until(
            lambda: total('sum(ray_loom_route_records_total{route="dashboard",outcome="inserted"})') == ROUTED_MESSAGES,
            60,
            f"the route's {ROUTED_MESSAGES} inserted records counted",
        )
        for title, expr in _dashboard_targets():
            wait_until(lambda e=expr: bool(prometheus.query(e)), 90, f"data for {title!r}: {expr}")
        consumers = {s["metric"]["consumer"] for s in prometheus.query("sum by (consumer) (ray_loom_rows_total)")}
        assert len(consumers) >= 2 and all(c.startswith("loom-consumer-") for c in consumers), consumers
        wait_until(
            lambda: all(
                g["rules"] and all(r["health"] == "ok" for r in g["rules"]) for g in prometheus.api("rules")["groups"]
            ),
            30,
            "every alert rule evaluated without error",
        )
        # Right after the outage and the blocked sink the counters were flat, so partitions may look stalled for
        # a while; once the job commits again on every partition, none does.
        wait_until(lambda: not prometheus.query(exprs["LoomPartitionStalled"]), 90, "no partition to look stalled")
        prometheus.query(exprs["LoomLagGrowing"])  # valid; needs 15 minutes of samples to mean anything


def test_the_job_drains_on_ray_job_stop_and_every_offset_lands_once(job: Job, endpoints: Endpoints) -> None:
    job.producer.terminate()
    job.producer.wait(30)
    end = sum(high for _low, high in high_watermarks(endpoints.kafka, job.topic).values())
    wait_until(lambda: committed(endpoints, job.topic) >= end, 120, "the job to catch up with the producer")
    stop = job.ray("job", "stop", job.submission_id, f"--address={job.dashboard}")
    assert stop.returncode == 0, stop.stderr[-2000:]
    logs = job.logs()
    assert "received SIGTERM: draining" in logs and "summary: messages=" in logs, logs[-3000:]
    result = account(endpoints, job.topic)
    assert result.exact, str(result)
    assert scalar(endpoints, f"SELECT count(*) FROM {job.routed_schema}.routed") == ROUTED_MESSAGES
