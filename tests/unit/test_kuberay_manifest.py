"""The KubeRay manifests, read the way the Ray autoscaler reads them and validated against the CRD schemas a
Kubernetes API server would use (tests/data/crds/, unknown fields rejected). Offline: no Kubernetes, no Ray
cluster.

The autoscaler sidecar fetches the RayCluster every loop and converts it with
``_derive_autoscaling_config_from_ray_cr`` (a private, pure function: these tests pin ray==2.60.0's
behaviour, see /work/shared/notes/ray-facts.md §2). Asserting on its output checks what the autoscaler will
actually do, not just what the YAML says.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray import cloudpickle
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig

from loom_ray.main import COORDINATOR_REQUEST, COORDINATOR_RESOURCE, coordinator_placement
from loom_ray.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "kuberay"
CRDS = ROOT / "tests" / "data" / "crds"
# The PrometheusRule CRD is not vendored: scripts/bootstrap.sh fetches it from the operator's release (the one
# of the PodMonitor CRD in tests/data/crds/) into the cache.
PROMETHEUS_RULE_CRD = (
    Path(os.environ.get("LOOM_CACHE_DIR", ROOT / ".cache"))
    / "crds"
    / "prometheus-operator-v0.93.0"
    / "monitoring.coreos.com_prometheusrules.yaml"
)
GiB = 1024**3
SECRET_VARS = ("LOOM_DB_DSN", "LOOM_KAFKA_SASL_PASSWORD")
# (apiVersion, kind) -> the CRD that defines it (tests/data/crds/README.md names their source and version).
CRD_FILES = {
    ("ray.io/v1", "RayCluster"): CRDS / "ray.io_rayclusters.yaml",
    ("ray.io/v1", "RayJob"): CRDS / "ray.io_rayjobs.yaml",
    ("monitoring.coreos.com/v1", "PodMonitor"): CRDS / "monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUS_RULE_CRD,
}
# Core kinds have no CRD: their top-level fields only.
CORE_FIELDS = {
    ("v1", "ConfigMap"): {"apiVersion", "kind", "metadata", "data", "binaryData", "immutable"},
    ("v1", "Secret"): {"apiVersion", "kind", "metadata", "data", "stringData", "type", "immutable"},
}


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Unit tests should not depend on Ray being initialized.")

    monkeypatch.setattr(ray, "init", refuse)
    yield
    assert not ray.is_initialized()


def _load(name: str) -> dict[str, Any]:
    with open(KUBERAY / name, encoding="utf-8") as f:
        doc: dict[str, Any] = yaml.safe_load(f)
    return doc


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return _load("raycluster.yaml")


@pytest.fixture(scope="module")
def configmap() -> dict[str, str]:
    data: dict[str, str] = _load("configmap.yaml")["data"]
    return data


@pytest.fixture(scope="module")
def autoscaling(cluster: dict[str, Any]) -> dict[str, Any]:
    return _derive_autoscaling_config_from_ray_cr(cluster)


def _consumers(cluster: dict[str, Any]) -> dict[str, Any]:
    groups: list[dict[str, Any]] = [g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "consumers"]
    assert len(groups) == 1
    return groups[0]


def _pods(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    return [cluster["spec"]["headGroupSpec"]["template"]["spec"], _consumers(cluster)["template"]["spec"]]


def _containers(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    return [pod["containers"][0] for pod in _pods(cluster)]


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every object that lists its properties closed to others, as the API server's strict
    field validation does (except where ``x-kubernetes-preserve-unknown-fields`` keeps it open), and with Go
    (RE2) patterns that open with an inline flag after ``^`` rewritten with the flag first, where Python's
    ``re`` wants it (the PrometheusRule CRD's ``^(?i)(abort|warn)?$``)."""
    schema = dict(schema)
    if isinstance(schema.get("pattern"), str):
        schema["pattern"] = re.sub(r"^\^\(\?([a-z]+)\)", r"(?\1)^", schema["pattern"])
    if "properties" in schema:
        schema["properties"] = {name: _closed(sub) for name, sub in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = _closed(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            schema[key] = [_closed(sub) for sub in schema[key]]
    return schema


@functools.cache
def _validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    path = CRD_FILES[(api_version, kind)]
    if not path.exists():
        pytest.skip(f"{path} missing: scripts/bootstrap.sh fetches the {kind} CRD (needs the Go module proxy)")
    with open(path, encoding="utf-8") as f:
        crd = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # C parser: the CRDs are large
    assert crd["spec"]["names"]["kind"] == kind
    version = api_version.rsplit("/", 1)[1]
    (schema,) = [v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version]
    return jsonschema.Draft7Validator(_closed(schema))


def _schema_errors(doc: dict[str, Any]) -> list[str]:
    key = (doc["apiVersion"], doc["kind"])
    if key in CORE_FIELDS:
        return [f"unknown field {name!r}" for name in sorted(set(doc) - CORE_FIELDS[key])]
    assert key in CRD_FILES, f"no schema for {key}: add its CRD to tests/data/crds/ (and CRD_FILES)"
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator(*key).iter_errors(doc)]


@pytest.mark.parametrize("path", sorted(KUBERAY.glob("*.yaml")), ids=lambda p: p.name)
def test_every_manifest_matches_its_schema(path: Path) -> None:
    with open(path, encoding="utf-8") as f:
        docs = [doc for doc in yaml.safe_load_all(f) if doc]
    assert docs
    for doc in docs:
        assert _schema_errors(doc) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "headGroupSpec", "template", "spec", "containers", 0, "securityContxt"), {}),
        (("spec", "authOptions", "mode"), "tokens"),
        (("spec", "workerGroupSpecs", 0, "minReplica"), 3),
        (("spec", "autoscalerOptions", "idleTimeoutSeconds"), "120"),
    ],
    ids=["misspelt field", "bad enum value", "unknown field", "wrong type"],
)
def test_the_schema_check_rejects_a_broken_cluster(
    cluster: dict[str, Any], path: tuple[str | int, ...], value: Any
) -> None:
    doc = copy.deepcopy(cluster)
    parent: Any = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    assert _schema_errors(doc) != []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "groups", 0, "rules", 0, "expresion"), "up == 0"),
        (("spec", "groups", 0, "rules", 0, "for"), "10 minutes"),
        (("spec", "groups", 0, "partial_response_strategy"), "ignore"),
    ],
    ids=["misspelt field", "bad duration", "unknown strategy"],
)
def test_the_schema_check_rejects_broken_alert_rules(path: tuple[str | int, ...], value: Any) -> None:
    doc = _load("prometheus-rules.yaml")
    parent: Any = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    assert len(_schema_errors(doc)) == 1, _schema_errors(doc)


def test_podmonitor_scrapes_named_ports_of_the_cluster(cluster: dict[str, Any]) -> None:
    monitor = _load("podmonitor.yaml")
    assert monitor["spec"]["selector"]["matchLabels"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    head, worker = _containers(cluster)
    scraped = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    assert scraped == {p["name"] for p in head["ports"]} - {"gcs-server", "dashboard", "client"}
    assert {p["name"] for p in worker["ports"]} <= scraped


def test_rayjob_runs_the_driver_on_this_cluster(cluster: dict[str, Any]) -> None:
    job = _load("rayjob.yaml")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert job["spec"]["entrypoint"] == "python -m loom_ray.main"
    assert job["metadata"]["namespace"] == cluster["metadata"]["namespace"]


def test_token_authentication(cluster: dict[str, Any]) -> None:
    assert cluster["spec"]["authOptions"] == {"mode": "token"}


def test_pods_run_unprivileged_on_a_read_only_root(cluster: dict[str, Any]) -> None:
    for pod in _pods(cluster):
        assert pod["securityContext"]["runAsNonRoot"] is True
        container = pod["containers"][0]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert set(mounts) == {"/tmp", "/dev/shm"}  # Ray's session directory, its object store
        assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory"}


def test_settings_reach_the_actors_with_their_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    # Actors get Settings as an argument (pickled by Ray with cloudpickle), never from their pod's environment.
    for name in [n for n in os.environ if n.upper().startswith("LOOM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LOOM_DB_DSN", "postgresql://u:s3cret@db/loom")
    monkeypatch.setenv("LOOM_KAFKA_SASL_PASSWORD", "kafka-s3cret")
    settings = Settings.from_env()
    copied = cloudpickle.loads(cloudpickle.dumps(settings))
    assert copied.db_dsn.get_secret_value() == "postgresql://u:s3cret@db/loom"
    assert copied.kafka_sasl_password is not None
    assert copied.kafka_sasl_password.get_secret_value() == "kafka-s3cret"


def test_consumers_keep_the_seed_hpa_bounds(autoscaling: dict[str, Any]) -> None:
    consumers = autoscaling["available_node_types"]["consumers"]
    assert (consumers["min_workers"], consumers["max_workers"]) == (3, 10)


def test_consumers_offer_one_cpu_and_the_memory_limit(autoscaling: dict[str, Any]) -> None:
    # CPU from rayStartParams num-cpus "1" (else the limit, 2); memory from limits.memory 2Gi.
    assert autoscaling["available_node_types"]["consumers"]["resources"] == {"CPU": 1, "memory": 2 * GiB}


def test_head_takes_no_consumer(autoscaling: dict[str, Any]) -> None:
    head = autoscaling["available_node_types"]["headgroup"]
    assert head["resources"]["CPU"] == 0
    assert (head["min_workers"], head["max_workers"]) == (0, 0)


def test_only_the_head_offers_the_coordinator_resource(autoscaling: dict[str, Any]) -> None:
    # The coordinator asks for it when the cluster has it (coordinator_placement): it can run on the head only.
    types = autoscaling["available_node_types"]
    assert types["headgroup"]["resources"][COORDINATOR_RESOURCE] == 1
    assert COORDINATOR_RESOURCE not in types["consumers"]["resources"]
    assert coordinator_placement(types["headgroup"]["resources"]) == {
        "resources": {COORDINATOR_RESOURCE: COORDINATOR_REQUEST}
    }


def test_scaling_speed_and_idle_timeout(autoscaling: dict[str, Any]) -> None:
    # idleTimeoutSeconds 120 / 60 = 2.0 minutes; upscalingMode Default -> 1000 (all pending pods at once).
    assert autoscaling["idle_timeout_minutes"] == 2.0
    assert autoscaling["upscaling_speed"] == 1000
    assert autoscaling["provider"]["namespace"] == "loom"
    assert autoscaling["cluster_name"] == "loom-ray"


def test_autoscaler_v2_view(autoscaling: dict[str, Any]) -> None:
    config = AutoscalingConfig(autoscaling)
    assert config.get_idle_timeout_s() == 120.0
    assert config.get_max_num_worker_nodes() == 10
    consumers = config.get_node_type_configs()["consumers"]
    assert (consumers.min_worker_nodes, consumers.max_worker_nodes) == (3, 10)


def test_one_default_actor_fills_one_consumer_pod(autoscaling: dict[str, Any]) -> None:
    # Pending actors map 1:1 to pods only if exactly one actor fits a pod: CPU 1 // 1.0 = 1, and the
    # actor's 1 GiB fits the pod's 2 GiB (memory alone would allow 2: CPU is the binding resource).
    pod = autoscaling["available_node_types"]["consumers"]["resources"]
    num_cpus = Settings.model_fields["actor_num_cpus"].default
    memory = Settings.model_fields["actor_memory_bytes"].default
    assert pod["CPU"] // num_cpus == 1
    assert memory <= pod["memory"]


def test_actor_bounds_match_the_worker_group(cluster: dict[str, Any], configmap: dict[str, str]) -> None:
    group = _consumers(cluster)
    assert int(configmap["LOOM_MIN_ACTORS"]) == group["minReplicas"]
    assert int(configmap["LOOM_MAX_ACTORS"]) == group["maxReplicas"]


def test_consumers_resources_match_the_seed_helm_values(cluster: dict[str, Any]) -> None:
    resources = _consumers(cluster)["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"] == {"cpu": "2", "memory": "2Gi"}
    assert resources["requests"] == {"cpu": "1", "memory": "1Gi"}


def test_secrets_only_on_the_head_and_referenced_never_inlined(
    cluster: dict[str, Any], configmap: dict[str, str]
) -> None:
    head, worker = _containers(cluster)
    env = {e["name"]: e for e in head["env"]}
    for name in SECRET_VARS:
        assert "value" not in env[name], f"{head['name']}: {name} inlined"
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == ("loom-ray-secrets", name)
    assert env["LOOM_DB_DSN"]["valueFrom"]["secretKeyRef"].get("optional", False) is False
    assert head["envFrom"] == [{"configMapRef": {"name": "loom-ray-config"}}]
    # The driver (on the head) passes Settings to the actors: the consumer pods get no LOOM_* and no Secret.
    assert "env" not in worker and "envFrom" not in worker
    assert not set(SECRET_VARS) & set(configmap)


def test_job_stop_outlasts_the_drain(cluster: dict[str, Any], configmap: dict[str, str]) -> None:
    # `ray job stop`: SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S; the driver may wait the drain + 5 s.
    head_env = {e["name"]: e for e in _containers(cluster)[0]["env"]}
    assert int(head_env["RAY_JOB_STOP_WAIT_TIME_S"]["value"]) > float(configmap["LOOM_SHUTDOWN_TIMEOUT_S"]) + 5


def test_ray_version_matches_the_pinned_ray(cluster: dict[str, Any]) -> None:
    assert cluster["spec"]["rayVersion"] == ray.__version__ == "2.60.0"


def test_named_ports(cluster: dict[str, Any]) -> None:
    head, worker = _containers(cluster)
    assert {p["name"]: p["containerPort"] for p in head["ports"]} == {
        "gcs-server": 6379,
        "dashboard": 8265,
        "client": 10001,
        "metrics": 8080,
        "as-metrics": 44217,
        "dash-metrics": 44227,
    }
    assert {p["name"]: p["containerPort"] for p in worker["ports"]} == {"metrics": 8080}


def test_companion_objects_share_the_namespace(cluster: dict[str, Any]) -> None:
    namespace = cluster["metadata"]["namespace"]
    assert _load("configmap.yaml")["metadata"]["namespace"] == namespace
    assert _load("secret.example.yaml")["metadata"]["namespace"] == namespace


def test_configmap_and_example_secret_build_valid_settings(
    configmap: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.upper().startswith("LOOM_")]:
        monkeypatch.delenv(name)
    secret = _load("secret.example.yaml")["stringData"]
    for name, value in {**configmap, **secret}.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    assert settings.kafka_batch_size == 200
    assert settings.kafka_batch_timeout == 0.5
    assert (settings.db_min_pool_size, settings.db_max_pool_size) == (2, 8)
    assert (settings.min_actors, settings.max_actors) == (3, 10)
    assert settings.kafka_group_id == "loom-ray"
