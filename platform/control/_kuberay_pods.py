"""The Ray pods of the KubeRay export: the head, and one worker group per kind of node the
deployments' placements ask for (:mod:`qingliang.platform.control.kuberay` assembles them).

A worker group is one kind of node: CPU only, NVIDIA GPUs, Ascend NPUs, each further split
by a pinned ``accelerator_type`` and by custom Ray resources. Its pods are sized for the
largest replica placed on it; its ``minReplicas``/``maxReplicas`` follow the deployments'
``autoscaling`` (the in-tree autoscaler adds and removes pods between them).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from qingliang.serving.plan import DeploymentPlan

#: Ray CPUs the gateway application's deployments take beside the models (0.25 each).
GATEWAY_CPUS = 0.25
#: The smallest worker pod of each kind (CPUs, GiB of memory).
MIN_CPU_POD = (4, 16)
MIN_ACCEL_POD = (8, 32)
#: GiB of pod memory per Ray CPU on the CPU group (engine, KV cache, Python).
GIB_PER_CPU = 4
#: Ports of the head's Ray container (what KubeRay's own services point at).
HEAD_PORTS = (
    ("gcs", 6379),
    ("dashboard", 8265),
    ("client", 10001),
    ("serve", 8000),
    ("metrics", 8080),
)

#: The images run as uid 1000 (deploy/docker); the volume is group-writable for it.
POD_SECURITY = {"fsGroup": 1000}


@dataclass(frozen=True)
class GroupKey:
    """What tells one kind of worker node from another."""

    accelerator: str  # cpu | gpu | npu
    accelerator_type: str | None = None
    custom: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The worker group's name: ``cpu``, ``gpu-a10g``, ``npu-ascend910b-accel``."""
        words = [self.accelerator, self.accelerator_type or "", *self.custom]
        slug = "-".join(re.sub(r"[^a-z0-9]+", "-", w.lower()).strip("-") for w in words if w)
        return slug[:63].strip("-")


@dataclass
class Group:
    """A worker group and the deployments placed on it."""

    key: GroupKey
    plans: list[DeploymentPlan] = field(default_factory=list)
    #: Ray CPUs of the gateway application's deployments (the CPU group only).
    extra_cpus: float = 0.0

    def largest(self, what: str) -> float:
        values = [float(_amount(p, what)) for p in self.plans]
        return max(values, default=0.0)

    def custom_amounts(self) -> dict[str, float]:
        """Per pod: the largest amount of each custom Ray resource a replica asks for."""
        out: dict[str, float] = {}
        for plan in self.plans:
            for name, amount in (plan.ray_actor_options.get("resources") or {}).items():
                if name != "NPU":
                    out[name] = max(out.get(name, 0.0), float(amount))
        return dict(sorted(out.items()))


def _amount(plan: DeploymentPlan, what: str) -> float:
    p = plan.placement
    return {
        "cpus": p.cpus,
        "gpus": p.gpus,
        "npus": p.npus,
        "memory_gib": p.memory_gib or 0.0,
    }[what]


def group_key(plan: DeploymentPlan) -> GroupKey:
    """The kind of node ``plan``'s replicas need."""
    actor = plan.ray_actor_options
    custom = tuple(sorted(k for k in (actor.get("resources") or {}) if k != "NPU"))
    return GroupKey(plan.accelerator, actor.get("accelerator_type"), custom)


def groups_for(plans: Iterable[DeploymentPlan], gateway_cpus: float) -> list[Group]:
    """The worker groups: always a CPU group (the gateway and its helpers run there), plus
    one per other kind of node the plans need; sorted by name."""
    groups: dict[GroupKey, Group] = {GroupKey("cpu"): Group(GroupKey("cpu"))}
    for plan in plans:
        key = group_key(plan)
        groups.setdefault(key, Group(key)).plans.append(plan)
    groups[GroupKey("cpu")].extra_cpus = gateway_cpus
    return sorted(groups.values(), key=lambda g: g.key.name)


@dataclass(frozen=True)
class PodSize:
    cpus: int
    memory_gib: int
    devices: int  # GPUs or NPUs per pod
    min_pods: int
    max_pods: int


def size(group: Group) -> PodSize:
    """A pod fits the largest replica of the group; CPU pods may hold several replicas,
    accelerator pods hold one (the devices are the scarce part)."""
    if group.key.accelerator == "cpu":
        cpus = max(MIN_CPU_POD[0], math.ceil(group.largest("cpus") + group.extra_cpus))
        memory = max(MIN_CPU_POD[1], cpus * GIB_PER_CPU, math.ceil(group.largest("memory_gib")))
        at_min = group.extra_cpus + sum(
            p.placement.cpus * p.autoscaling_config["min_replicas"] for p in group.plans
        )
        at_max = group.extra_cpus + sum(
            p.placement.cpus * p.autoscaling_config["max_replicas"] for p in group.plans
        )
        low = max(1, math.ceil(at_min / cpus))
        return PodSize(cpus, memory, 0, low, max(low, math.ceil(at_max / cpus)))
    # One replica per pod, plus a CPU for the engine's own threads and Ray.
    cpus = max(MIN_ACCEL_POD[0], math.ceil(group.largest("cpus")) + 1)
    memory = max(MIN_ACCEL_POD[1], math.ceil(group.largest("memory_gib")) + 8)
    devices = int(group.largest("gpus" if group.key.accelerator == "gpu" else "npus"))
    low = sum(p.autoscaling_config["min_replicas"] for p in group.plans)
    high = sum(p.autoscaling_config["max_replicas"] for p in group.plans)
    return PodSize(cpus, memory, devices, low, max(low, high, 1))


@dataclass(frozen=True)
class PodSpec:
    """What every Ray pod of the export shares."""

    image: str
    env: list[dict[str, Any]]
    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]


def _container(
    name: str, image: str, spec: PodSpec, limits: Mapping[str, str], requests: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "env": spec.env,
        "resources": {"limits": dict(sorted(limits.items())), "requests": dict(requests)},
        "volumeMounts": spec.mounts,
    }


def head_group(
    spec: PodSpec, init: dict[str, Any], extra_volumes: list[dict], annotations: dict[str, str]
) -> dict[str, Any]:
    """The head: no replicas (``num-cpus`` 0), Serve's controller and proxy, the dashboard;
    its init container records the manifests in the shared state before Ray starts."""
    container = _container(
        "ray-head", spec.image, spec, {"cpu": "2", "memory": "8Gi"}, {"cpu": "1", "memory": "4Gi"}
    )
    container["ports"] = [{"containerPort": p, "name": n} for n, p in HEAD_PORTS]
    return {
        "rayStartParams": {
            "dashboard-host": "0.0.0.0",
            "include-log-monitor": "false",
            "num-cpus": "0",
            "num-gpus": "0",
        },
        "template": {
            "metadata": {"annotations": annotations},
            "spec": {
                "securityContext": POD_SECURITY,
                "initContainers": [init],
                "containers": [container],
                "volumes": [*spec.volumes, *extra_volumes],
            },
        },
    }


def worker_group(
    group: Group, spec: PodSpec, image: str, device_resource: str, custom_map: Mapping[str, str]
) -> dict[str, Any]:
    """One worker group; ``custom_map``: Ray resource → the Kubernetes resource providing
    it, or ``"ray"`` to declare it on ``ray start`` only."""
    s = size(group)
    limits = {"cpu": str(s.cpus), "memory": f"{s.memory_gib}Gi"}
    start: dict[str, str] = {"include-log-monitor": "false"}
    ray_resources: dict[str, float] = {}
    if group.key.accelerator == "gpu":
        limits["nvidia.com/gpu"] = str(s.devices)
        start["num-gpus"] = str(s.devices)
    elif group.key.accelerator == "npu":
        limits[device_resource] = str(s.devices)
        ray_resources["NPU"] = s.devices
    for name, amount in group.custom_amounts().items():
        k8s = custom_map[name]
        ray_resources[name] = amount if amount != int(amount) else int(amount)
        if k8s != "ray":
            limits[k8s] = str(math.ceil(amount))
    if ray_resources:
        # KubeRay reads it as JSON once surrounding quotes are trimmed.
        start["resources"] = json.dumps(dict(sorted(ray_resources.items())), sort_keys=True)
    requests = {"cpu": limits["cpu"], "memory": limits["memory"]}
    return {
        "groupName": group.key.name,
        "replicas": s.min_pods,
        "minReplicas": s.min_pods,
        "maxReplicas": s.max_pods,
        "rayStartParams": dict(sorted(start.items())),
        "template": {
            "spec": {
                "securityContext": POD_SECURITY,
                "containers": [_container("ray-worker", image, spec, limits, requests)],
                "volumes": spec.volumes,
            }
        },
    }
