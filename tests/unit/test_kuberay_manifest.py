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
# Core kinds have no CRD: ConfigMap and Secret are checked by their top-level fields only; the workload and
# policy kinds by CORE_SCHEMAS below.
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


def _supervisor() -> dict[str, Any]:
    return _load("supervisor.yaml")


def _env(container: dict[str, Any]) -> dict[str, str]:
    """A container's plain ``env`` values (references left out)."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


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
def _crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    path = CRD_FILES[(api_version, kind)]
    if not path.exists():
        pytest.skip(f"{path} missing: scripts/bootstrap.sh fetches the {kind} CRD (needs the Go module proxy)")
    with open(path, encoding="utf-8") as f:
        crd = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # C parser: the CRDs are large
    assert crd["spec"]["names"]["kind"] == kind
    version = api_version.rsplit("/", 1)[1]
    (schema,) = [v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version]
    return dict(schema)


_STRING = {"type": "string"}
_LABELS = {"type": "object", "additionalProperties": _STRING}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": _STRING, "namespace": _STRING, "labels": _LABELS, "annotations": _LABELS},
}
_INT_OR_STRING = {"anyOf": [{"type": "integer"}, {"type": "string"}]}
_LABEL_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": _LABELS,
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "operator"],
                "properties": {"key": _STRING, "operator": _STRING, "values": {"type": "array", "items": _STRING}},
            },
        },
    },
}


def _object(kind_fields: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", *required],
        "properties": {"apiVersion": _STRING, "kind": _STRING, "metadata": _METADATA, **kind_fields},
    }


def _core_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The fields of the Kubernetes API reference (v1.30+) for the core kinds kuberay/ uses. A Deployment's pod
    template is checked against the PodTemplateSpec schema of the RayCluster CRD (controller-gen's copy of
    core/v1, the one raycluster.yaml's pods are checked with)."""
    if (api_version, kind) == ("apps/v1", "Deployment"):
        pod_template = _crd_schema("ray.io/v1", "RayCluster")["properties"]["spec"]["properties"]["headGroupSpec"][
            "properties"
        ]["template"]
        strategy = {
            "type": "object",
            "properties": {
                "type": {"enum": ["Recreate", "RollingUpdate"]},
                "rollingUpdate": {
                    "type": "object",
                    "properties": {"maxSurge": _INT_OR_STRING, "maxUnavailable": _INT_OR_STRING},
                },
            },
        }
        spec = {
            "type": "object",
            "required": ["selector", "template"],
            "properties": {
                "replicas": {"type": "integer"},
                "selector": _LABEL_SELECTOR,
                "template": pod_template,
                "strategy": strategy,
                "minReadySeconds": {"type": "integer"},
                "revisionHistoryLimit": {"type": "integer"},
                "progressDeadlineSeconds": {"type": "integer"},
                "paused": {"type": "boolean"},
            },
        }
        return _object({"spec": spec}, ["spec"])
    if (api_version, kind) == ("policy/v1", "PodDisruptionBudget"):
        spec = {
            "type": "object",
            "properties": {
                "minAvailable": _INT_OR_STRING,
                "maxUnavailable": _INT_OR_STRING,
                "selector": _LABEL_SELECTOR,
                "unhealthyPodEvictionPolicy": {"enum": ["IfHealthyBudget", "AlwaysAllow"]},
            },
        }
        return _object({"spec": spec}, ["spec"])
    if (api_version, kind) == ("scheduling.k8s.io/v1", "PriorityClass"):
        fields = {
            "value": {"type": "integer", "maximum": 1_000_000_000},  # above: reserved for system classes
            "globalDefault": {"type": "boolean"},
            "description": _STRING,
            "preemptionPolicy": {"enum": ["Never", "PreemptLowerPriority"]},
        }
        cluster_scoped = _object(fields, ["value"])
        cluster_scoped["properties"]["metadata"] = {**_METADATA, "not": {"required": ["namespace"]}}
        return cluster_scoped
    return _crd_schema(api_version, kind)


CORE_SCHEMAS = {
    ("apps/v1", "Deployment"),
    ("policy/v1", "PodDisruptionBudget"),
    ("scheduling.k8s.io/v1", "PriorityClass"),
}


@functools.cache
def _validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(_closed(_core_schema(api_version, kind)))


def _schema_errors(doc: dict[str, Any]) -> list[str]:
    key = (doc["apiVersion"], doc["kind"])
    if key in CORE_FIELDS:
        return [f"unknown field {name!r}" for name in sorted(set(doc) - CORE_FIELDS[key])]
    assert key in CRD_FILES or key in CORE_SCHEMAS, f"no schema for {key}: add its CRD to tests/data/crds/"
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


def test_rayjob_is_a_one_off_backfill_of_other_topics_on_this_cluster(
    cluster: dict[str, Any], configmap: dict[str, str]
) -> None:
    job = _load("rayjob.yaml")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert job["metadata"]["namespace"] == cluster["metadata"]["namespace"]
    # Runs until every partition is caught up, then exits; KubeRay refuses backoffLimit > 0 with clusterSelector.
    assert job["spec"]["entrypoint"] == "python -m loom_ray.main --exit-when-drained"
    assert "backoffLimit" not in job["spec"]
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    # Its own deployment: none of the service's topics (the same topics would be refused).
    backfill, service = (
        set(topics.split(",")) for topics in (env["LOOM_KAFKA_TOPICS"], configmap["LOOM_KAFKA_TOPICS"])
    )
    assert backfill and not backfill & service
    assert not set(SECRET_VARS) & set(env)  # secrets stay in the head's Secret, never in the job's runtime env
    assert 1 <= int(env["LOOM_MIN_ACTORS"]) <= int(env["LOOM_MAX_ACTORS"]) < _consumers(cluster)["maxReplicas"]


def test_token_authentication(cluster: dict[str, Any]) -> None:
    assert cluster["spec"]["authOptions"] == {"mode": "token"}


def test_pods_run_unprivileged_on_a_read_only_root(cluster: dict[str, Any]) -> None:
    # tests/unit/test_pod_security.py checks every field of the `restricted` profile; here: the read-only root
    # and the writable places Ray needs.
    for pod in [*_pods(cluster), _supervisor()["spec"]["template"]["spec"]]:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 1000  # kuberay/Dockerfile: USER 1000:100
        container = pod["containers"][0]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mounts["/tmp"]["name"]]["emptyDir"]["sizeLimit"]  # Ray's session directory, bounded
        if container["name"] != "supervisor":
            assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"] == {"medium": "Memory"}  # Ray's object store
        writable = {path for path, mount in mounts.items() if not mount.get("readOnly")}
        assert writable <= {"/tmp", "/dev/shm"}
    sidecar = cluster["spec"]["autoscalerOptions"]
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    # The sidecar logs into the head's session directory (run_autoscaler.py _setup_logging): the same /tmp.
    assert sidecar["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]


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


def test_consumers_resources_keep_the_seed_cpu_and_request_their_memory_limit(cluster: dict[str, Any]) -> None:
    resources = _consumers(cluster)["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"] == {"cpu": "2", "memory": "2Gi"}
    assert resources["requests"] == {"cpu": "1", "memory": "2Gi"}  # memory request = limit: not evicted first


def test_memory_requests_equal_limits_everywhere(cluster: dict[str, Any]) -> None:
    containers = [*_containers(cluster), _supervisor()["spec"]["template"]["spec"]["containers"][0]]
    for container in containers:
        resources = container["resources"]
        assert resources["requests"]["memory"] == resources["limits"]["memory"], container["name"]


def test_secrets_only_on_the_head_and_referenced_never_inlined(
    cluster: dict[str, Any], configmap: dict[str, str]
) -> None:
    head, worker = _containers(cluster)
    supervisor = _supervisor()["spec"]["template"]["spec"]["containers"][0]
    for container in (head, supervisor):  # the driver, and the supervisor (to name the deployment)
        env = {e["name"]: e for e in container["env"]}
        for name in SECRET_VARS:
            assert "value" not in env[name], f"{container['name']}: {name} inlined"
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == ("loom-ray-secrets", name)
        assert env["LOOM_DB_DSN"]["valueFrom"]["secretKeyRef"].get("optional", False) is False
        assert container["envFrom"] == [{"configMapRef": {"name": "loom-ray-config"}}]
    # The driver (on the head) passes Settings to the actors: the consumer pods get no LOOM_* and no Secret.
    assert "envFrom" not in worker
    assert all(e["name"].startswith("RAY_") and "valueFrom" not in e for e in worker["env"])
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
    for path in sorted(KUBERAY.glob("*.yaml")):
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if doc and doc["kind"] != "PriorityClass":  # cluster-scoped
                    assert doc["metadata"]["namespace"] == namespace, path.name


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


# --- Head loss: GCS fault tolerance on an external Redis, a head sized for what it runs, kept in place ---


def _head_pod(cluster: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    return spec


def test_gcs_is_fault_tolerant_on_an_external_redis_over_tls(cluster: dict[str, Any]) -> None:
    from ray._private.services import get_address

    options = cluster["spec"]["gcsFaultToleranceOptions"]
    # rediss:// turns on the GCS's TLS client in Ray 2.60 (services.get_address -> --redis_enable_ssl=true).
    assert get_address(options["redisAddress"])[2] is True
    assert "backend" not in options  # v1.7 only; the default, redis, on every operator from v1.5.1
    # The password only from a Secret, never inline in the manifest.
    password = options["redisPassword"]
    assert set(password) == {"valueFrom"}
    ref = password["valueFrom"]["secretKeyRef"]
    template = _load("redis-secret.example.yaml")
    assert (ref["name"], template["metadata"]["namespace"]) == (template["metadata"]["name"], "loom")
    assert ref["key"] in template["stringData"]
    # The server's CA: RAY_REDIS_CA_CERT (ray_config_def.h REDIS_CA_CERT) names a file the head mounts from it.
    pod = _head_pod(cluster)
    head = pod["containers"][0]
    ca = Path(_env(head)["RAY_REDIS_CA_CERT"])
    [mount] = [m for m in head["volumeMounts"] if ca.parent == Path(m["mountPath"])]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == template["metadata"]["name"]
    assert volume["secret"]["items"] == [{"key": ca.name, "path": ca.name}]
    assert ca.name in template["stringData"]


def test_gcs_fault_tolerance_passes_kuberays_validation(cluster: dict[str, Any]) -> None:
    # ray-operator/controllers/ray/utils/validation.go (v1.7.0) ValidateRayClusterSpec, with
    # gcsFaultToleranceOptions set: KubeRay sets these itself and refuses a cluster that sets them too.
    head = _containers(cluster)[0]
    params = cluster["spec"]["headGroupSpec"]["rayStartParams"]
    assert not {"redis-password", "redis-username"} & set(params)
    env = {e["name"] for e in head.get("env", [])}
    assert not {"REDIS_PASSWORD", "REDIS_USERNAME", "RAY_REDIS_ADDRESS", "RAY_external_storage_namespace"} & env
    assert not {"ray.io/ft-enabled", "ray.io/external-storage-namespace"} & set(
        cluster["metadata"].get("annotations", {})
    )
    # Autoscaler v2: restartPolicy unset (KubeRay sets Never) or Never, on the head and every worker group.
    assert cluster["spec"]["autoscalerOptions"]["version"] == "v2"
    for pod in _pods(cluster):
        assert pod.get("restartPolicy", "Never") == "Never"


def test_the_head_is_sized_for_what_it_runs(cluster: dict[str, Any]) -> None:
    resources = _containers(cluster)[0]["resources"]
    assert resources["requests"] == resources["limits"]  # Guaranteed QoS
    memory = _quantity(resources["limits"]["memory"])
    assert memory >= 4 * GiB and _quantity(resources["limits"]["cpu"]) >= 2
    # An explicit object store (Ray's default is 30 % of the limit), leaving the rest to the processes.
    object_store = int(cluster["spec"]["headGroupSpec"]["rayStartParams"]["object-store-memory"])
    assert 75 * 1024**2 <= object_store <= memory // 4  # Ray's floor (OBJECT_STORE_MINIMUM_MEMORY_BYTES) .. 1/4


def _quantity(value: str) -> float:
    """A Kubernetes quantity (``2``, ``250m``, ``4Gi``) as a number."""
    units = {"m": 1e-3, "Ki": 1024, "Mi": 1024**2, "Gi": GiB}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value.removesuffix(suffix)) * factor
    return float(value)


def test_the_head_is_kept_in_place_and_scheduled_first(cluster: dict[str, Any]) -> None:
    template = cluster["spec"]["headGroupSpec"]["template"]
    assert template["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    priority = _load("priorityclass.yaml")
    assert "namespace" not in priority["metadata"]  # cluster-scoped
    assert priority["globalDefault"] is False and 0 < priority["value"] <= 1_000_000_000
    assert template["spec"]["priorityClassName"] == priority["metadata"]["name"]
    assert _supervisor()["spec"]["template"]["spec"]["priorityClassName"] == priority["metadata"]["name"]
    assert "priorityClassName" not in _consumers(cluster)["template"]["spec"]  # consumers: the default


def test_the_head_pdb_selects_the_head_pod_only(cluster: dict[str, Any]) -> None:
    pdb = _load("head-pdb.yaml")
    assert pdb["metadata"]["namespace"] == cluster["metadata"]["namespace"]
    assert pdb["spec"]["maxUnavailable"] == 0 and "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    # Labels KubeRay puts on the cluster's pods (common/pod.go labelPod; utils/constant.go).
    head_labels = {"ray.io/cluster": cluster["metadata"]["name"], "ray.io/node-type": "head"}
    worker_labels = {"ray.io/cluster": cluster["metadata"]["name"], "ray.io/node-type": "worker"}
    selector = pdb["spec"]["selector"]["matchLabels"]
    assert selector.items() <= head_labels.items()
    assert not selector.items() <= worker_labels.items()


# --- Eviction drains: preStop hooks, grace periods above them ---


def _pre_stop(container: dict[str, Any]) -> list[str]:
    command: list[str] = container["lifecycle"]["preStop"]["exec"]["command"]
    return command


def _timeout(command: list[str]) -> int:
    return int(command[command.index("--timeout") + 1])


def test_pre_stop_hooks_run_the_drains(cluster: dict[str, Any]) -> None:
    head, worker = _containers(cluster)
    assert _pre_stop(head) == ["python", "-m", "loom_ray.ctl", "stop-jobs", "--wait", "--timeout", "60"]
    assert _pre_stop(worker) == ["python", "-m", "loom_ray.ctl", "release-node", "--wait", "--timeout", "25"]


def test_grace_periods_outlast_the_hooks_and_the_job_stop(cluster: dict[str, Any], configmap: dict[str, str]) -> None:
    head, worker = _containers(cluster)
    head_pod, worker_pod = _pods(cluster)
    stop_wait = int(_env(head)["RAY_JOB_STOP_WAIT_TIME_S"])
    drain = float(configmap["LOOM_SHUTDOWN_TIMEOUT_S"])
    # The head: the driver drains within LOOM_SHUTDOWN_TIMEOUT_S + 5 s, Ray SIGKILLs it at RAY_JOB_STOP_WAIT_TIME_S,
    # the hook waits for the jobs up to its timeout; the kubelet SIGKILLs the pod at the grace period.
    assert drain + 5 < stop_wait <= _timeout(_pre_stop(head))
    assert head_pod["terminationGracePeriodSeconds"] > _timeout(_pre_stop(head)) + stop_wait
    assert worker_pod["terminationGracePeriodSeconds"] > _timeout(_pre_stop(worker))
    # The supervisor stops the job on SIGTERM and waits for it: at most RAY_JOB_STOP_WAIT_TIME_S.
    assert _supervisor()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= stop_wait + 10


# --- One driver kept running: the supervisor ---


def test_the_supervisor_is_one_pod_submitting_to_this_cluster(cluster: dict[str, Any]) -> None:
    deployment = _supervisor()
    spec = deployment["spec"]
    assert deployment["metadata"]["namespace"] == cluster["metadata"]["namespace"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}  # never two supervisors at once, even during a rollout
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    [container] = spec["template"]["spec"]["containers"]
    # KubeRay's head Service: <cluster>-head-svc (utils/util.go GenerateHeadServiceName); the Jobs API port.
    address = f"http://{cluster['metadata']['name']}-head-svc:8265"
    assert container["command"] == ["python", "-m", "loom_ray.supervise", "--address", address]
    assert container["image"] == _containers(cluster)[0]["image"] == _containers(cluster)[1]["image"]
    dashboard = {p["name"]: p["containerPort"] for p in _containers(cluster)[0]["ports"]}["dashboard"]
    assert address.endswith(f":{dashboard}")


def test_the_supervisor_authenticates_with_the_operators_token(cluster: dict[str, Any]) -> None:
    # authOptions token mode: the operator creates Secret <cluster name> with key auth_token
    # (raycluster_controller.go reconcileAuthSecret, utils.CheckName(name); RAY_AUTH_TOKEN_SECRET_KEY).
    assert cluster["spec"]["authOptions"] == {"mode": "token"}  # no secretName: the generated Secret
    [container] = _supervisor()["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == (cluster["metadata"]["name"], "auth_token")
    assert _supervisor()["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


# --- Bounded logs ---


def test_ray_logs_rotate_and_tmp_is_bounded(cluster: dict[str, Any]) -> None:
    # Ray's own logs and the actors' worker-*.out/err rotate (ray/_private/node.py, workers/default_worker.py);
    # the job driver's log does not (job_supervisor.py writes the driver's stdout to a file): the sizeLimit of
    # /tmp bounds it.
    sidecar = {e["name"]: e["value"] for e in cluster["spec"]["autoscalerOptions"]["env"]}
    for env in [_env(c) for c in _containers(cluster)] + [sidecar]:
        assert 0 < int(env["RAY_ROTATION_MAX_BYTES"]) <= 100 * 1024**2
        assert 0 <= int(env["RAY_ROTATION_BACKUP_COUNT"]) <= 5
    for pod in _pods(cluster):
        [tmp] = [v for v in pod["volumes"] if v["name"] == "tmp"]
        assert _quantity(tmp["emptyDir"]["sizeLimit"]) <= 8 * GiB


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "template", "spec", "containers", 0, "comand"), ["python"]),
        (("spec", "template", "spec", "terminationGracePeriod"), 60),
        (("spec", "strategy", "type"), "Replace"),
    ],
    ids=["misspelt container field", "misspelt pod field", "bad strategy"],
)
def test_the_schema_check_rejects_a_broken_supervisor(path: tuple[str | int, ...], value: Any) -> None:
    doc = _supervisor()
    parent: Any = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    assert _schema_errors(doc) != []
