"""apply / diff / get / delete: manifests in, Ray Serve applications out.

`apply` runs in three stages and touches the running system only in the last:

1. load and validate every manifest (all errors reported together);
2. compile each into a plan for this hardware and resolve its model source
   (packaged weights are verified and converted here, once, with a progress bar);
3. hand each application to Ray Serve and record the manifest in the state store.

A bad manifest, an unknown quantisation for the hardware or a corrupt model file
fails in stage 1 or 2, so the running deployments stay exactly as they were.
Changing only a deployment's adapters is a Serve lightweight update (user_config):
replicas reload adapters without restarting. Canary shares (``spec.lora.traffic``) and
registry refs (``spec.lora.refs``) are read by the gateway from the state store, so
changing them touches no replica at all.

Example:
    >>> ctl = Controller(Settings())          # doctest: +SKIP
    >>> ctl.apply([Path("deploy/defaults")])  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import qingliang.platform.control.kinds  # noqa: F401  (the kinds apply loads)
from qingliang.platform.control.deployer import Deployer, ServeRestDeployer
from qingliang.platform.control.diff import (
    Change,
    adapters_only,
    changed_paths,
    normal,
)
from qingliang.platform.control.lock import deployments_lock
from qingliang.platform.control.lora import LoraRouting, keep_runtime_lora
from qingliang.platform.control.serve_config import GATEWAY_KIND, GATEWAY_NAME, serve_config
from qingliang.platform.errors import (
    ClusterError,
    FieldIssue,
    ManifestError,
    ModelSourceError,
    NotFound,
    QingliangError,
    ResolveError,
)
from qingliang.platform.gateway_config import GatewayConfig
from qingliang.platform.manifests.loader import Loaded, load_paths
from qingliang.platform.settings import Settings
from qingliang.platform.storage.state import StateStore
from qingliang.serving.manifest import ModelDeployment
from qingliang.serving.plan import DeploymentPlan, HardwareProfile, compile_plan
from qingliang.serving.traffic import ServingView, entry_of

if TYPE_CHECKING:
    from qingliang.platform.lifecycle.data.store import DatasetStore

logger = logging.getLogger(__name__)

MODEL_KIND = "ModelDeployment"
KB_KIND = "KnowledgeBase"
GRAPH_KIND = "AgentGraph"
DATASET_KIND = "Dataset"
#: Kinds `apply` accepts.
APPLIED_KINDS = (MODEL_KIND, KB_KIND, GRAPH_KIND, DATASET_KIND)


@dataclass
class Controller(LoraRouting):
    """Applies manifests to Ray Serve and the state store (see the module docstring).

    ``deployer`` defaults to Ray Serve's REST API on this host's dashboard; ``profile`` to
    the detected hardware; ``resolver`` (model source → local folder) to
    :func:`qingliang.serving.sources.resolve_source`.
    """

    settings: Settings
    deployer: Deployer | None = None
    profile: HardwareProfile | None = None
    resolver: Callable[[str, Path, bool], Path] | None = None

    def __post_init__(self) -> None:
        self.store = StateStore(self.settings.state_db)
        if self.deployer is None:
            url = f"http://{self.settings.host}:{self.settings.dashboard_port}"
            self.deployer = ServeRestDeployer(url)

    @property
    def _deployer(self) -> Deployer:
        assert self.deployer is not None
        return self.deployer

    def _serving_lock(self) -> AbstractContextManager[None]:
        return deployments_lock(Path(self.settings.state_db))

    def _stored_plans(self) -> dict[str, DeploymentPlan]:
        return {
            row.name: DeploymentPlan.from_dict(row.plan)
            for row in self.store.list(MODEL_KIND)
            if row.plan is not None
        }

    def _gateway(self) -> GatewayConfig:
        """The stored gateway config (the default one before ``ensure_gateway``)."""
        row = self.store.get(GATEWAY_KIND, GATEWAY_NAME)
        if row is not None:
            return GatewayConfig.from_args(row.body)
        return GatewayConfig(home=str(self.settings.home), auth_enabled=True, embeddings=True)

    def _push(self, plans: dict[str, DeploymentPlan], gateway: GatewayConfig | None = None) -> None:
        config = serve_config(self.settings, gateway or self._gateway(), plans.values())
        self._deployer.apply_config(config)

    def ensure_gateway(
        self,
        *,
        auth_enabled: bool,
        embeddings: bool = True,
        conversation_log: bool = False,
        push: bool = True,
    ) -> None:
        """Deploy (or update) the gateway application with the stored deployments.

        ``conversation_log`` records answered chat requests (docs/data.md). Without
        ``push`` the config is only recorded: the next push (an ``apply``) deploys it
        together with the models, so Serve starts and the engines load at once.
        """
        # conversation_log only when on: an unchanged config does not restart the gateway.
        gateway = GatewayConfig(
            home=str(self.settings.home),
            auth_enabled=auth_enabled,
            embeddings=embeddings,
            **({"conversation_log": True} if conversation_log else {}),
        )
        with self._serving_lock():
            if push:
                self._push(self._stored_plans(), gateway)
            self.store.put(GATEWAY_KIND, GATEWAY_NAME, gateway.to_args())

    def status(self, name: str) -> tuple[str, str]:
        return self._deployer.statuses().get(name, ("NOT_DEPLOYED", ""))

    # -- stage 1 and 2: pure validation, then resolution ----------------------------
    def load(self, paths: Iterable[Path]) -> list[Loaded]:
        """Load and validate; only kinds this controller can deploy are accepted."""
        loaded = load_paths(paths)
        runs = {
            "FineTuneJob": "qingliang finetune run -f",
            "Pipeline": "qingliang pipelines run -f",
        }
        issues = sorted(
            {
                (
                    f"{i.source}: {i.kind}/{i.name}: a {i.kind} is run, not applied: "
                    f"`{runs[i.kind]} {_file_of(i.source)}`"
                )
                if i.kind in runs
                else (
                    f"{i.source}: {i.kind}/{i.name}: validated, but `apply` cannot deploy "
                    f"this kind (only {', '.join(APPLIED_KINDS)})"
                )
                for i in loaded
                if i.kind not in APPLIED_KINDS
            }
        )
        if issues:
            raise ManifestError([FieldIssue("kind", text) for text in issues])
        stored = {r.name: r.body for r in self.store.list(MODEL_KIND)}
        return [keep_runtime_lora(i, stored.get(i.name)) for i in loaded]

    def compile(self, loaded: list[Loaded]) -> list[DeploymentPlan]:
        profile = self.profile or HardwareProfile.detect()
        plans = []
        for item in loaded:
            if isinstance(item.manifest, ModelDeployment):
                plans.append(compile_plan(item.manifest, profile, source=item.source))
        return plans

    def resolve(self, plans: list[DeploymentPlan], *, progress: bool) -> list[DeploymentPlan]:
        resolver = self.resolver or _default_resolver
        out = []
        for plan in plans:
            path = resolver(plan.source, self.settings.model_cache, progress)
            out.append(plan.with_model_path(str(path)))
            if plan.tokenizer and not Path(plan.tokenizer).exists():
                raise ModelSourceError(
                    f"{plan.name}: spec.model.tokenizer: {plan.tokenizer!r} does not exist"
                )
            for name, adapter_path in plan.adapters:
                if not (Path(adapter_path) / "adapter_config.json").is_file():
                    raise ModelSourceError(
                        f"{plan.name}: spec.lora.adapters.{name}: {adapter_path!r} is not a "
                        "PEFT adapter directory (no adapter_config.json)"
                    )
        return out

    # -- diff ------------------------------------------------------------------------
    def diff(self, paths: Iterable[Path]) -> list[Change]:
        return [self._change(item) for item in self.load(paths)]

    def _change(self, item: Loaded) -> Change:
        body = normal(item)
        current = self.store.get(item.kind, item.name)
        if current is None:
            return Change(item.kind, item.name, "create", source=item.source)
        changed = tuple(changed_paths(current.body, body))
        if not changed:
            return Change(item.kind, item.name, "unchanged", source=item.source)
        action = "adapters" if adapters_only(current.body, body, changed) else "update"
        return Change(item.kind, item.name, action, changed, item.source)

    # -- stage 3: apply ----------------------------------------------------------------
    def apply(
        self,
        paths: Iterable[Path],
        *,
        wait: bool = True,
        timeout_s: float = 600,
        progress: bool = True,
        on_status: Callable[[str, str, str], None] | None = None,
    ) -> list[Change]:
        everything = self.load(paths)
        loaded = [i for i in everything if i.kind == MODEL_KIND]
        kbs = [i for i in everything if i.kind == KB_KIND]
        graphs = [i for i in everything if i.kind == GRAPH_KIND]
        # Graphs name deployments, KBs and other graphs: check them all before anything
        # is pushed or recorded.
        graph_plans = self._resolve_graphs(graphs, loaded, kbs)
        datasets = [i for i in everything if i.kind == DATASET_KIND]
        for item in datasets:  # missing sources stop the apply before anything changes
            manifest: Any = item.manifest
            self._datasets().check(manifest, _base(item), source=item.source)
        plans = self.resolve(self.compile(loaded), progress=progress)
        changes = [self._change(item) for item in loaded]
        if loaded:
            with self._serving_lock():
                desired = self._stored_plans()
                desired.update({p.name: p for p in plans})
                # One config for everything: Serve applies it as a whole or refuses it,
                # and the store is written only after it was accepted.
                self._push(desired)
                by_name = {p.name: p for p in plans}
                for item in loaded:
                    plan = by_name[item.name].to_dict()
                    self.store.put(item.kind, item.name, normal(item), plan)
        # Knowledge bases are registered here; syncing them (embedding) is the caller's
        # next step (`qingliang apply` does it with progress bars).
        kb_changes = [self._register_kb(item) for item in kbs]
        graph_changes = [self._change(item) for item in graphs]
        for item in graphs:
            self.store.put(item.kind, item.name, normal(item), graph_plans[item.name])
        # Datasets are cut here: each apply reads the sources and stores a version.
        dataset_changes = [self._cut_dataset(item) for item in datasets]
        if wait:
            for change in changes:
                self.wait(change.name, timeout_s=timeout_s, on_status=on_status)
        return changes + kb_changes + graph_changes + dataset_changes

    def _datasets(self) -> DatasetStore:
        from qingliang.platform.lifecycle.data.store import DatasetStore

        return DatasetStore.for_home(self.settings.home)

    def _cut_dataset(self, item: Loaded) -> Change:
        change = self._change(item)
        row = self.store.get(item.kind, item.name)
        manifest: Any = item.manifest
        v = self._datasets().cut(manifest, _base(item), actor="apply")
        self._record_dataset(v)
        self.store.put(item.kind, item.name, normal(item), {"version": v.version})
        action = change.action
        if action == "unchanged" and (row is None or (row.plan or {}).get("version") != v.version):
            action = "cut"  # same manifest, new content in the sources
        summary = (
            f"version {v.version}: {v.records} records ({v.train} train, {v.eval} eval), "
            f"{v.quarantined} quarantined"
        )
        # Warnings (an empty eval split, ...) belong in what apply prints, not only the log.
        warnings = tuple(f"warning: {w}" for w in getattr(v, "warnings", ()) or ())
        return dataclasses.replace(
            change, action=action, fields=(*change.fields, summary, *warnings)
        )

    def _record_dataset(self, version: Any) -> None:
        """Record a cut version in the model registry (lineage starts there). A registry
        that cannot be written does not undo the cut: `qingliang registry sync` catches up."""
        from qingliang.platform.lifecycle.registry import Registry, record_dataset_version

        try:
            with Registry(home=self.settings.home) as reg:
                record_dataset_version(reg, version)
        except QingliangError as exc:
            logger.warning(
                "dataset %s@%s was cut but not recorded in the registry (%s); run "
                "`qingliang registry sync %s`",
                version.name,
                version.version,
                exc,
                version.name,
            )

    def _resolve_graphs(
        self, graphs: list[Loaded], models: list[Loaded], kbs: list[Loaded]
    ) -> dict[str, dict]:
        from qingliang.agents.resolve import resolve_graph

        if not graphs:
            return {}
        # An agent may name an adapter or an alias (`qwen:gov`).
        known_models = {
            e.name: (*e.adapters, *sorted(e.aliases)) for e in ServingView.read(self.store).models
        }
        for item in models:
            lora = item.manifest.spec.lora  # type: ignore[attr-defined]
            known_models[item.name] = (*sorted(lora.adapters), *sorted(lora.aliases))
        known_kbs = {row.name for row in self.store.list(KB_KIND)} | {i.name for i in kbs}
        known_graphs = {row.name for row in self.store.list(GRAPH_KIND)}
        known_graphs |= {i.name for i in graphs}
        plans, issues = {}, []
        for item in graphs:
            base = Path(re.sub(r"\[\d+\]$", "", item.source)).resolve().parent
            for problem in resolve_graph(
                item.manifest,  # type: ignore[arg-type]
                base,
                models=known_models,
                kbs=known_kbs,
                graphs=known_graphs,
            ):
                issues.append(f"{item.source}: {problem}")
            plans[item.name] = {"base_dir": str(base)}
        if issues:
            raise ResolveError("\n".join(issues))
        return plans

    def _register_kb(self, item: Loaded) -> Change:
        from qingliang.knowledge.service import KnowledgeService

        change = self._change(item)
        base = Path(re.sub(r"\[\d+\]$", "", item.source)).resolve().parent
        KnowledgeService(self.settings.home).register(item.manifest, base=base, actor="apply")  # type: ignore[arg-type]
        return change

    def wait(
        self,
        name: str,
        *,
        timeout_s: float = 600,
        on_status: Callable[[str, str, str], None] | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            status, message = self.status(name)
            if on_status:
                on_status(name, status, message)
            if status == "RUNNING":
                return
            if status in ("DEPLOY_FAILED", "UNHEALTHY"):
                raise ClusterError(f"deployment {name!r} failed: {message}")
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"deployment {name!r} not ready after {timeout_s:.0f} s "
                    f"(status {status}: {message})"
                )
            time.sleep(1.0)

    # -- get / delete ------------------------------------------------------------------
    def get(self, *, live: bool = True) -> list[dict[str, Any]]:
        rows = []
        statuses = self._deployer.statuses() if live else {}
        for row in self.store.list(MODEL_KIND):
            entry = entry_of(row)
            status, message = statuses.get(row.name, ("NOT_DEPLOYED", "")) if live else ("", "")
            rows.append(
                {
                    "kind": row.kind,
                    "name": row.name,
                    "source": entry.source,
                    "engine": entry.engine,
                    "adapters": list(entry.adapters),
                    "traffic": dict(entry.traffic),
                    "aliases": {a: dict(s) for a, s in entry.aliases.items()},
                    "generation": row.generation,
                    "status": status,
                    "message": message,
                    "applied_at": row.applied_at,
                }
            )
        return rows

    def delete(self, names: Iterable[str], kind: str = MODEL_KIND) -> list[str]:
        if kind == KB_KIND:
            return self._delete_kbs(list(names))
        if kind == DATASET_KIND:
            names = list(names)
            datasets = self._datasets()
            known = set(datasets.names())
            missing = [n for n in names if n not in known and self.store.get(kind, n) is None]
            if missing:
                raise NotFound(f"no {kind} named {', '.join(map(repr, missing))}")
            for name in names:
                if name in known:
                    datasets.remove(name, actor="delete")
                self.store.delete(kind, name)
            return names
        if kind == GRAPH_KIND:
            names = list(names)
            missing = [n for n in names if self.store.get(kind, n) is None]
            if missing:
                raise NotFound(f"no {kind} named {', '.join(map(repr, missing))}")
            for name in names:
                self.store.delete(kind, name)
            return names
        names = list(names)
        with self._serving_lock():
            missing = [n for n in names if self.store.get(kind, n) is None]
            if missing:
                raise NotFound(f"no {kind} named {', '.join(map(repr, missing))}")
            desired = self._stored_plans()
            for name in names:
                desired.pop(name, None)
            self._push(desired)
            for name in names:
                self.store.delete(kind, name)
        return names

    def _delete_kbs(self, names: list[str]) -> list[str]:
        from qingliang.knowledge.service import KnowledgeService
        from qingliang.platform.control import cluster

        missing = [n for n in names if self.store.get(KB_KIND, n) is None]
        if missing:
            raise NotFound(f"no {KB_KIND} named {', '.join(map(repr, missing))}")
        info = cluster.running(self.settings)
        if info is not None:
            # The running platform's Knowledge replica owns the shards (one opener each)
            # and holds the KB in memory: it must be the one to forget it.
            _delete_kbs_remote(self.settings, info.http_port, names)
            return names
        service = KnowledgeService(self.settings.home)
        try:
            for name in names:
                service.remove(name, actor="delete")
        finally:
            service.close()
        return names


def _file_of(source: str) -> str:
    """``a.yaml[1]`` (the second document of a file) → ``a.yaml``."""
    return re.sub(r"\[\d+\]$", "", source)


def _base(item: Loaded) -> Path:
    """The folder of the file a manifest came from (relative paths start there)."""
    return Path(re.sub(r"\[\d+\]$", "", item.source)).resolve().parent


def _default_resolver(source: str, cache: Path, progress: bool) -> Path:
    from qingliang.serving.sources import resolve_source

    return resolve_source(source, cache, progress=progress)


def _delete_kbs_remote(settings: Settings, port: int, names: list[str]) -> None:
    """``DELETE /v1/knowledge/{kb}`` on the running gateway, with an admin key minted for
    the call and revoked after it (the control plane holds the key store)."""
    from urllib.parse import quote

    import httpx

    from qingliang.platform.errors import from_status
    from qingliang.platform.storage.keys import KeyStore

    keys = KeyStore(settings.state_db)
    record, key = keys.create(f"delete-{secrets.token_hex(4)}", scopes=["admin"])
    try:
        for name in names:
            url = f"http://{settings.host}:{port}/v1/knowledge/{quote(name, safe='')}"
            try:
                r = httpx.delete(url, headers={"Authorization": f"Bearer {key}"}, timeout=300)
            except httpx.HTTPError as exc:
                raise ClusterError(f"deleting knowledge base {name!r}: {exc}") from None
            if r.status_code >= 400:
                try:
                    message = r.json()["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    message = r.text[:300]
                raise from_status(r.status_code, f"deleting knowledge base {name!r}: {message}")
    finally:
        keys.revoke(record.id)
        keys.close()
