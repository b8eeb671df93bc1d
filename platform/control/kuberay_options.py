"""The options of ``qingliang export kuberay`` (:mod:`qingliang.platform.control.kuberay`):
how the exported objects are named and wired, checked before anything is built.

Example:
    >>> ExportOptions(name="Qingliang").check()
    Traceback (most recent call last):
    ...
    qingliang.platform.control.kuberay_options.ExportError: --name 'Qingliang': a Kubernetes name is 1-63 of a-z, 0-9, '-'
"""  # noqa: E501

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from qingliang.platform.errors import QingliangError
from qingliang.serving.plan import CpuIsa

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?\Z")


class ExportError(QingliangError):
    """The manifests or the options cannot be exported (the message says which and why)."""


def version_of(dist: str, default: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return default


def default_image() -> str:
    """The image ``deploy/docker/Dockerfile`` builds: ``qingliang:<version>``."""
    return f"qingliang:{version_of('qingliang', '0.1.0')}"


@dataclass(frozen=True)
class ExportOptions:
    """How the export names and wires the objects (the CLI's options)."""

    name: str = "qingliang"
    namespace: str | None = None
    image: str = field(default_factory=default_image)
    #: Default: ``<image>-gpu`` (``deploy/docker/Dockerfile.gpu``).
    gpu_image: str | None = None
    #: Default: ``<image>-npu`` (an image with vllm-ascend; not built by deploy/docker).
    npu_image: str | None = None
    mount_path: str = "/data"
    storage_size: str = "100Gi"
    storage_class: str | None = None
    database_secret: str = "qingliang-database"
    database_secret_key: str = "url"
    admin_secret: str = "qingliang-admin"
    admin_secret_key: str = "key"
    qdrant_url: str | None = None
    qdrant_secret: str | None = None
    qdrant_secret_key: str = "api-key"
    #: The CPU the CPU nodes have: decides ``dtype: auto`` (fp32 on AVX2, bf16 above).
    cpu_isa: CpuIsa = "avx2"
    auth: bool = True
    #: False: the embedder, knowledge and agents services run as three deployments, so
    #: Ray may place them on different nodes and one failing does not restart the others.
    shared_helpers: bool = False
    gateway_replicas: int = 1
    npu_resource: str = "huawei.com/Ascend910"
    #: Ray resource → the Kubernetes resource that provides it, or ``ray`` (declared on
    #: ``ray start`` only).
    resource_map: Mapping[str, str] = field(default_factory=dict)
    ray_version: str = field(default_factory=lambda: version_of("ray", "2.60.0"))

    @property
    def home(self) -> str:
        """``$QINGLIANG_HOME`` in the pods: on the volume."""
        return f"{self.mount_path.rstrip('/')}/qingliang"

    def check(self) -> None:
        """Raises ExportError naming each bad option."""
        bad = []
        for opt, value in (
            ("--name", self.name),
            ("--namespace", self.namespace),
            ("--database-secret", self.database_secret),
            ("--admin-secret", self.admin_secret),
            ("--qdrant-secret", self.qdrant_secret),
        ):
            if value is not None and not _DNS_LABEL.match(value):
                bad.append(f"{opt} {value!r}: a Kubernetes name is 1-63 of a-z, 0-9, '-'")
        if len(self.name) > 53:  # KubeRay's longest suffix, "-serve-svc", must still fit
            bad.append(f"--name {self.name!r}: at most 53 characters for KubeRay")
        if not _QUANTITY.match(self.storage_size):
            bad.append(f"--storage-size {self.storage_size!r}: a quantity such as 100Gi")
        if not self.mount_path.startswith("/"):
            bad.append(f"--mount-path {self.mount_path!r}: must be an absolute path")
        if self.qdrant_url is not None and not re.match(r"^https?://[^/\s]+", self.qdrant_url):
            bad.append(f"--qdrant-url {self.qdrant_url!r}: expected http(s)://host:port")
        if self.gateway_replicas < 1:
            bad.append("--gateway-replicas must be at least 1")
        if bad:
            raise ExportError("; ".join(bad))
