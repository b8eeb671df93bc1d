"""The cluster's init step: ``qingliang export init-state``, run by the head pod's init
container that ``qingliang export kuberay`` writes, before Ray starts on the head.

On a cluster the RayService owns the Serve config, so this step deploys nothing. It:

1. copies the manifests and their files from the ConfigMap onto the volume
   (``$QINGLIANG_HOME/manifests``): a manifest is replaced by its new version, any other
   file is copied only when absent there (a tool's database the agents write to keeps
   its rows across restarts);
2. applies them to the state store (the shared PostgreSQL where
   ``QINGLIANG_DATABASE_URL`` is set) exactly as ``qingliang apply`` records them:
   deployments (the gateway reads their adapters, traffic and aliases there), knowledge
   bases, agent graphs, datasets;
3. converts packaged models onto the volume, to the path the exported Serve config
   names (:func:`~qingliang.platform.control.kuberay.cluster_model_path`).

Knowledge bases are synced by the caller (the CLI), in this process.

Example:
    >>> changes = init_state(Path("/etc/qingliang/manifests"), ["qwen-coder.yaml"],
    ...                      Settings(), cpu_isa="avx2")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from qingliang.platform.control.apply import Controller, _default_resolver
from qingliang.platform.control.diff import Change
from qingliang.platform.control.kuberay import cluster_model_path
from qingliang.platform.errors import ResolveError
from qingliang.platform.settings import Settings
from qingliang.serving.plan import CpuIsa, DeploymentPlan, HardwareProfile

logger = logging.getLogger(__name__)


class RecordOnly:
    """A Deployer that deploys nothing: on a cluster KubeRay applies the Serve config
    (``serveConfigV2``); this step only records what `apply` records."""

    def apply_config(self, config: dict) -> None:
        logger.debug(
            "Serve config not pushed (the RayService owns it): %d applications",
            len(config.get("applications") or []),
        )

    def statuses(self) -> dict[str, tuple[str, str]]:
        return {}


class ClusterController(Controller):
    """`apply` for the cluster's state: model sources resolve to the paths the pods read.

    A packaged model is converted onto the volume (and must land where the export said);
    a hub model and a path are recorded as they are, unchecked: the paths are on the
    worker nodes, not in this init container.
    """

    def resolve(self, plans: list[DeploymentPlan], *, progress: bool) -> list[DeploymentPlan]:
        home = str(self.settings.home)
        out = []
        for plan in plans:
            expected = cluster_model_path(plan, home)
            if plan.source.startswith("packaged:"):
                resolver = self.resolver or _default_resolver
                converted = resolver(plan.source, self.settings.model_cache, progress)
                if str(converted) != expected:
                    raise ResolveError(
                        f"{plan.name}: packaged model converted to {converted}, but "
                        f"the exported Serve config reads {expected}: export again with this "
                        "version of qingliang"
                    )
            out.append(plan.with_model_path(expected))
        return out


def copy_manifests(source: Path, target: Path, manifests: list[str]) -> list[str]:
    """Copy the files under ``source`` to ``target``: ``manifests`` always, any other file
    only when ``target`` lacks it. Returns the files kept as they were."""
    kept = []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        rel = path.relative_to(source)
        if any(part.startswith("..") for part in rel.parts):
            continue  # the ConfigMap volume's own bookkeeping (..data, ..2024_...)
        dest = target / rel
        if dest.exists() and str(rel.as_posix()) not in manifests:
            kept.append(rel.as_posix())
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(path, tmp)
        tmp.replace(dest)
    return kept


def init_state(
    source: Path,
    manifests: list[str],
    settings: Settings,
    *,
    cpu_isa: CpuIsa,
    progress: bool = False,
    on_kept: Callable[[list[str]], None] | None = None,
    resolver: Callable[[str, Path, bool], Path] | None = None,
) -> list[Change]:
    """Copy (1), record (2) and convert (3), as the module docstring says; the changes
    `apply` would print. ``resolver``: the packaged-model converter (default: `apply`'s)."""
    target = settings.home / "manifests"
    kept = copy_manifests(source, target, manifests)
    if kept and on_kept:
        on_kept(kept)
    ctl = ClusterController(
        settings,
        deployer=RecordOnly(),
        profile=HardwareProfile(cpu_isa=cpu_isa, vllm=True, gpus=0),
        resolver=resolver,
    )
    return ctl.apply([target / m for m in manifests], wait=False, progress=progress)
