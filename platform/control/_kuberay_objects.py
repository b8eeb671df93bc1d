"""The Kubernetes objects of the KubeRay export (:mod:`qingliang.platform.control.kuberay`
decides what goes in them): the ConfigMap of manifests, the volume claim, the pods'
environment and the RayService.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from typing import Any

import yaml

from qingliang.platform.control import _kuberay_pods as pods
from qingliang.platform.control.cluster import MULTI_NODE_ENV, RAY_ENV, SERVE_TUNING_ENV
from qingliang.platform.control.kuberay_options import ExportError, ExportOptions
from qingliang.serving.plan import DeploymentPlan

#: Where the ConfigMap of manifests is mounted in the head's init container.
MANIFESTS_MOUNT = "/etc/qingliang/manifests"
#: The head template's annotation holding the sha256 of the ConfigMap's files.
MANIFESTS_ANNOTATION = "qingliang.io/manifests-sha256"
_CONFIGMAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+\Z")


def configmap_key(path: str) -> str:
    """A ConfigMap key for a relative path (``gov/data/a.csv`` → ``gov__data__a.csv``)."""
    key = path.replace("/", "__")
    if not _CONFIGMAP_KEY.match(key):
        raise ExportError(
            f"{path!r}: a ConfigMap key may hold only letters, digits, '-', '_' and '.'; "
            "rename the file"
        )
    return key


def _meta(name: str, options: ExportOptions) -> dict[str, Any]:
    return {
        "name": name,
        "labels": {
            "app.kubernetes.io/name": "qingliang",
            "app.kubernetes.io/instance": options.name,
        },
    }


def configmap(files: Mapping[str, bytes], options: ExportOptions) -> dict[str, Any]:
    data, binary = {}, {}
    keys: dict[str, str] = {}
    for path, content in files.items():
        key = configmap_key(path)
        if key in keys:
            raise ExportError(f"{path!r} and {keys[key]!r} map to the same ConfigMap key")
        keys[key] = path
        try:
            if b"\0" in content:
                raise UnicodeDecodeError("utf-8", content, 0, 1, "NUL byte")
            data[key] = content.decode("utf-8")
        except UnicodeDecodeError:  # a database, an image: base64 in binaryData
            binary[key] = base64.b64encode(content).decode("ascii")
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(f"{options.name}-manifests", options),
        "data": data,
    }
    if binary:
        obj["binaryData"] = binary
    return obj


def pvc(options: ExportOptions) -> dict[str, Any]:
    spec: dict[str, Any] = {
        # Every Ray pod mounts it, on whichever node it runs.
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": options.storage_size}},
    }
    if options.storage_class:
        spec["storageClassName"] = options.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(f"{options.name}-data", options),
        "spec": spec,
    }


def pod_env(options: ExportOptions) -> list[dict[str, Any]]:
    """Every Ray pod's environment: the Ray settings of a cluster node
    (``cluster_node_env()``: :data:`RAY_ENV` over :data:`SERVE_TUNING_ENV`, with Ray's
    multi-node mode on; ``ray_env()`` turns it off, and then a worker pod's ``ray start
    --address`` refuses to join), ``$QINGLIANG_HOME`` on the volume, and the shared
    database, the admin key and the Qdrant server from their Secrets. Only the platform's
    defaults: nothing of the exporting machine's environment."""
    ray = {**SERVE_TUNING_ENV, **RAY_ENV, MULTI_NODE_ENV: "1"}
    env: dict[str, dict[str, Any]] = {k: {"name": k, "value": v} for k, v in ray.items()}
    env["QINGLIANG_HOME"] = {"name": "QINGLIANG_HOME", "value": options.home}

    def secret(var: str, name: str, key: str, optional: bool) -> None:
        ref = {"name": name, "key": key, **({"optional": True} if optional else {})}
        env[var] = {"name": var, "valueFrom": {"secretKeyRef": ref}}

    secret("QINGLIANG_DATABASE_URL", options.database_secret, options.database_secret_key, False)
    # Optional: created once the cluster is up (`qingliang keys create` in the head pod).
    secret("QINGLIANG_API_KEY", options.admin_secret, options.admin_secret_key, True)
    if options.qdrant_url:
        env["QINGLIANG_QDRANT_URL"] = {"name": "QINGLIANG_QDRANT_URL", "value": options.qdrant_url}
    if options.qdrant_secret:
        secret("QINGLIANG_QDRANT_API_KEY", options.qdrant_secret, options.qdrant_secret_key, False)
    return [env[k] for k in sorted(env)]


def npu_image(options: ExportOptions) -> str:
    return options.npu_image or f"{options.image}-npu"


def _init_container(
    manifests: list[str], options: ExportOptions, spec: pods.PodSpec
) -> dict[str, Any]:
    """Records the manifests in the shared state before Ray starts (:mod:`.kuberay_state`)."""
    command = ["qingliang", "export", "init-state", "--from", MANIFESTS_MOUNT]
    command += ["--cpu-isa", options.cpu_isa]
    for source in manifests:
        command += ["-f", source]
    return {
        "name": "qingliang-state",
        "image": options.image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": spec.env,
        "resources": {
            "limits": {"cpu": "2", "memory": "4Gi"},
            "requests": {"cpu": "1", "memory": "2Gi"},
        },
        "volumeMounts": [
            *spec.mounts,
            {"name": "manifests", "mountPath": MANIFESTS_MOUNT, "readOnly": True},
        ],
    }


def rayservice(
    config: dict,
    plans: list[DeploymentPlan],
    files: Mapping[str, bytes],
    manifests: list[str],
    options: ExportOptions,
) -> dict[str, Any]:
    """The RayService: ``config`` as its ``serveConfigV2``, the head (its init container
    applies ``manifests``, carried in the ConfigMap with ``files``), a worker group per
    kind of node ``plans`` need, in-tree autoscaling."""
    spec = pods.PodSpec(
        image=options.image,
        env=pod_env(options),
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": f"{options.name}-data"}}],
        mounts=[{"name": "data", "mountPath": options.mount_path}],
    )
    manifests_volume = {
        "name": "manifests",
        "configMap": {
            "name": f"{options.name}-manifests",
            "items": [{"key": configmap_key(k), "path": k} for k in files],
        },
    }
    init = _init_container(manifests, options, spec)
    # A change of the manifests changes the head's template, so KubeRay brings up a new
    # cluster (its zero-downtime upgrade), whose init step records them.
    digest = hashlib.sha256()
    for path, content in files.items():
        digest.update(f"{path}\0{len(content)}\0".encode())
        digest.update(content)
    gateway_cpus = pods.GATEWAY_CPUS * (
        options.gateway_replicas + (1 if options.shared_helpers else 3)
    )
    groups = pods.groups_for(plans, gateway_cpus)
    images = {"cpu": options.image, "gpu": options.gpu_image or f"{options.image}-gpu"}
    images["npu"] = npu_image(options)
    workers = [
        pods.worker_group(
            g, spec, images[g.key.accelerator], options.npu_resource, options.resource_map
        )
        for g in groups
    ]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": _meta(options.name, options),
        "spec": {
            "serveConfigV2": yaml.safe_dump(config, sort_keys=True, allow_unicode=True, width=100),
            "rayClusterConfig": {
                "rayVersion": options.ray_version,
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": {
                    "upscalingMode": "Default",
                    "idleTimeoutSeconds": 300,
                    "resources": {
                        "limits": {"cpu": "500m", "memory": "512Mi"},
                        "requests": {"cpu": "500m", "memory": "512Mi"},
                    },
                },
                "headGroupSpec": pods.head_group(
                    spec, init, [manifests_volume], {MANIFESTS_ANNOTATION: digest.hexdigest()}
                ),
                "workerGroupSpecs": workers,
            },
        },
    }
