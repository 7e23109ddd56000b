"""Every pod that kuberay/ makes meets Kubernetes' ``restricted`` Pod Security Standard, field by field, as the
API server's PodSecurity admission would check it in a namespace labelled
``pod-security.kubernetes.io/enforce: restricted``
(https://kubernetes.io/docs/concepts/security/pod-security-standards/, policy version "latest").

Pods are found in every manifest: RayCluster head and worker templates, plus the containers KubeRay adds: the
autoscaler sidecar (``ray-operator/controllers/ray/common/pod.go``, ``BuildAutoscalerContainer`` gives it no
securityContext; ``mergeAutoscalerOverrides`` copies ``autoscalerOptions.securityContext`` into it, so that
field is the sidecar's securityContext) — the init containers KubeRay injects (``wait-gcs-ready``) and the
Redis cleanup Job (built from the head pod) copy the Ray container's securityContext, so checking the Ray
container covers them; Deployments, Jobs and other workload templates; RayJob cluster specs and submitter
templates.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

KUBERAY = Path(__file__).resolve().parents[2] / "kuberay"
# Restricted: "Volume Types", the only volume sources allowed.
ALLOWED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
# Baseline: "Sysctls", the safe set.
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
PROFILE_TYPES = {"RuntimeDefault", "Localhost"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def _ray_cluster_pods(name: str, spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    head = copy.deepcopy(spec["headGroupSpec"]["template"]["spec"])
    if spec.get("enableInTreeAutoscaling"):
        options = spec.get("autoscalerOptions") or {}
        sidecar: dict[str, Any] = {"name": "autoscaler"}
        if "securityContext" in options:
            sidecar["securityContext"] = options["securityContext"]
        head["containers"].append(sidecar)
    yield f"{name} head", head
    for group in spec.get("workerGroupSpecs", []):
        yield f"{name} {group['groupName']}", group["template"]["spec"]


def pods(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(a name for messages, pod spec) of every pod the manifest makes."""
    kind, name, spec = doc["kind"], doc["metadata"]["name"], doc.get("spec") or {}
    if kind == "RayCluster":
        yield from _ray_cluster_pods(name, spec)
    elif kind == "RayJob":
        if "rayClusterSpec" in spec:
            yield from _ray_cluster_pods(name, spec["rayClusterSpec"])
        if "submitterPodTemplate" in spec:
            yield f"{name} submitter", spec["submitterPodTemplate"]["spec"]
    elif kind in WORKLOADS:
        yield f"{kind} {name}", spec["template"]["spec"]
    elif kind == "CronJob":
        yield f"CronJob {name}", spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "Pod":
        yield f"Pod {name}", spec


def _manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        with open(path, encoding="utf-8") as f:
            docs += [doc for doc in yaml.safe_load_all(f) if doc]
    return docs


def _all_pods() -> list[tuple[str, dict[str, Any]]]:
    return [pod for doc in _manifests() for pod in pods(doc)]


def _profile_violation(where: str, context: dict[str, Any], key: str, field: str) -> list[str]:
    profile = context.get(key)
    if profile is not None and profile.get("type") not in PROFILE_TYPES:
        return [f"{where}: {field}.type {profile.get('type')!r} is not RuntimeDefault or Localhost"]
    return []


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What the ``restricted`` profile (baseline's controls included) refuses in a pod spec; [] if none."""
    found: list[str] = []
    pod_sc = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            found.append(f"pod: {field} is true")
    for volume in pod.get("volumes", []):
        sources = set(volume) - {"name"}
        if not sources <= ALLOWED_VOLUMES:
            found.append(f"volume {volume['name']}: {sorted(sources - ALLOWED_VOLUMES)} not allowed")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        found.append("pod: windowsOptions.hostProcess is true")
    for sysctl in pod_sc.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            found.append(f"pod: sysctl {sysctl['name']} is not in the safe set")
    if pod_sc.get("runAsUser") == 0:
        found.append("pod: runAsUser 0")
    found += _profile_violation("pod", pod_sc, "seccompProfile", "seccompProfile")
    found += _profile_violation("pod", pod_sc, "appArmorProfile", "appArmorProfile")
    for name, value in ((pod.get("metadata") or {}).get("annotations") or {}).items():
        if name.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            found.append(f"pod: AppArmor annotation {name}={value}")
    selinux = pod_sc.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
        found.append(f"pod: seLinuxOptions {selinux}")
    containers = [
        *pod.get("initContainers", []),
        *pod.get("containers", []),
        *pod.get("ephemeralContainers", []),
    ]
    for container in containers:
        where = f"container {container['name']}"
        sc = container.get("securityContext")
        if sc is None:
            found.append(f"{where}: no securityContext")
            sc = {}
        if sc.get("privileged"):
            found.append(f"{where}: privileged")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"{where}: windowsOptions.hostProcess is true")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{where}: allowPrivilegeEscalation is not false")
        run_as_non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if run_as_non_root is not True:
            found.append(f"{where}: runAsNonRoot is not true (in the container or the pod)")
        if sc.get("runAsUser") == 0:
            found.append(f"{where}: runAsUser 0")
        if "seccompProfile" in sc:
            found += _profile_violation(where, sc, "seccompProfile", "seccompProfile")
        elif "seccompProfile" not in pod_sc:
            found.append(f"{where}: no seccompProfile (in the container or the pod)")
        found += _profile_violation(where, sc, "appArmorProfile", "appArmorProfile")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in capabilities.get("drop", []):
            found.append(f"{where}: capabilities.drop lacks ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{where}: capabilities.add {capabilities['add']} beyond NET_BIND_SERVICE")
        if sc.get("procMount", "Default") != "Default":
            found.append(f"{where}: procMount {sc['procMount']}")
        selinux = sc.get("seLinuxOptions") or {}
        if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            found.append(f"{where}: seLinuxOptions {selinux}")
        for port in container.get("ports", []):
            if port.get("hostPort"):
                found.append(f"{where}: hostPort {port['hostPort']}")
    return found


def test_every_pod_meets_the_restricted_profile() -> None:
    problems = {name: restricted_violations(pod) for name, pod in _all_pods()}
    assert {name: found for name, found in problems.items() if found} == {}


def test_the_walk_finds_every_pod_and_the_sidecar() -> None:
    found = {name: [c["name"] for c in pod["containers"]] for name, pod in _all_pods()}
    assert found["loom-ray head"] == ["ray-head", "autoscaler"]
    assert found["loom-ray consumers"] == ["ray-worker"]
    assert found["Deployment loom-ray-supervisor"] == ["supervisor"]


def _head() -> dict[str, Any]:
    [cluster] = [doc for doc in _manifests() if doc["kind"] == "RayCluster"]
    return dict(pods(cluster))["loom-ray head"]


MUTATIONS: list[tuple[Any, str]] = [
    (lambda p: p["containers"][1].pop("securityContext"), "container autoscaler: no securityContext"),
    (lambda p: p.update(hostNetwork=True), "pod: hostNetwork is true"),
    (lambda p: p.update(hostPID=True), "pod: hostPID is true"),
    (lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "volume h: ['hostPath']"),
    (lambda p: p["securityContext"].update(runAsNonRoot=False), "runAsNonRoot is not true"),
    (lambda p: p["securityContext"].update(runAsUser=0), "pod: runAsUser 0"),
    (lambda p: p["securityContext"].pop("seccompProfile"), "no seccompProfile"),
    (lambda p: p["securityContext"].update(seccompProfile={"type": "Unconfined"}), "Unconfined"),
    (lambda p: p["containers"][0]["securityContext"].update(privileged=True), "container ray-head: privileged"),
    (
        lambda p: p["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
        "container ray-head: allowPrivilegeEscalation is not false",
    ),
    (
        lambda p: p["containers"][0]["securityContext"].update(capabilities={"drop": ["NET_RAW"]}),
        "capabilities.drop lacks ALL",
    ),
    (
        lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
        "beyond NET_BIND_SERVICE",
    ),
    (lambda p: p["containers"][0]["ports"][0].update(hostPort=6379), "hostPort 6379"),
    (lambda p: p["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]), "kernel.msgmax"),
]


@pytest.mark.parametrize(("change", "violation"), MUTATIONS, ids=[v for _, v in MUTATIONS])
def test_the_check_refuses_what_restricted_refuses(change: Any, violation: str) -> None:
    pod = copy.deepcopy(_head())
    assert restricted_violations(pod) == []
    change(pod)
    found = restricted_violations(pod)
    assert any(violation in problem for problem in found), found


def test_net_bind_service_is_the_one_capability_that_may_be_added() -> None:
    pod = copy.deepcopy(_head())
    pod["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    assert restricted_violations(pod) == []
