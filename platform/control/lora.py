"""A deployment's LoRA routing, changed one piece at a time: adapters, canary shares, aliases.

Loading or unloading an adapter is a Serve lightweight update (``user_config``): replicas
reload adapters without restarting. Canary shares (``spec.lora.traffic``), aliases
(``spec.lora.aliases``) and registry refs (``spec.lora.refs``) are read by the gateway from
the state store, so changing them touches no replica at all. Every change is checked as the
whole stored manifest (the same rules as ``apply``) and takes the deployments lock, so
concurrent changes take turns and none undoes another.

Example:
    >>> ctl.set_adapter("qwen", "gov-v2", "/adapters/gov-2", ref="gov@2")  # doctest: +SKIP
    >>> ctl.set_alias("qwen", "gov", {"gov-v1": 0.9, "gov-v2": 0.1})       # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qingliang.platform.control.diff import (
    Change,
    adapters_only,
    changed_paths,
    deep_copy,
    normal,
)
from qingliang.platform.errors import BadRequest, NotFound
from qingliang.platform.manifests.loader import Loaded, validate_document
from qingliang.serving.traffic import MODEL_KIND, entry_of

if TYPE_CHECKING:
    from qingliang.platform.storage.state import StateStore
    from qingliang.serving.plan import DeploymentPlan

logger = logging.getLogger(__name__)


def without_adapter(aliases: Mapping[str, Mapping[str, float]], adapter: str) -> dict:
    """``aliases`` with ``adapter`` taken out: its share goes to the base model, as the
    share of an unloaded adapter in ``traffic`` does.

    Example:
        >>> without_adapter({"gov": {"gov-v1": 0.9, "gov-v2": 0.1}}, "gov-v2")
        {'gov': {'gov-v1': 0.9}}
    """
    return {
        alias: {a: s for a, s in shares.items() if a != adapter}
        for alias, shares in aliases.items()
    }


#: What pipelines and `qingliang adapters` set at run time (``spec.lora``).
RUNTIME_LORA = ("adapters", "traffic", "refs", "aliases")


def keep_runtime_lora(item: Loaded, stored: Mapping[str, Any] | None) -> Loaded:
    """``item`` (a ModelDeployment being applied again) with the run-time LoRA state of its
    stored version (adapters, canary shares, refs, aliases) wherever the manifest does not
    declare that field itself: re-applying the file a deployment was made from (``make up``
    after ``make down``) keeps the adapters pipelines released into it. A field the
    manifest declares, even empty, replaces the stored one.

    Example:
        >>> keep_runtime_lora(item, row.body)  # doctest: +SKIP
    """
    if stored is None or item.kind != MODEL_KIND:
        return item
    declared = ((item.raw.get("spec") or {}).get("lora") or {}).keys()
    was = (stored.get("spec") or {}).get("lora") or {}
    kept = {k: was[k] for k in RUNTIME_LORA if k not in declared and was.get(k)}
    if not kept:
        return item
    body = deep_copy(item.raw)
    lora = body.setdefault("spec", {}).setdefault("lora", None) or {}
    body["spec"]["lora"] = {**lora, **kept}
    logger.info("%s: keeping run-time %s", item.name, ", ".join(f"spec.lora.{k}" for k in kept))
    return validate_document(body, item.source)


class LoraRouting:
    """The LoRA setters of :class:`~qingliang.platform.control.apply.Controller`."""

    if TYPE_CHECKING:
        store: StateStore

        def _serving_lock(self) -> AbstractContextManager[None]: ...
        def _stored_plans(self) -> dict[str, DeploymentPlan]: ...
        def _push(self, plans: dict[str, DeploymentPlan]) -> None: ...
        def compile(self, loaded: list[Loaded]) -> list[DeploymentPlan]: ...
        def resolve(
            self, plans: list[DeploymentPlan], *, progress: bool
        ) -> list[DeploymentPlan]: ...

    def set_adapter(
        self, deployment: str, adapter: str, path: str | None, ref: str | None = None
    ) -> Change:
        """Add / replace (path) or remove (None) one adapter, as an adapters-only update.

        ``ref`` records the adapter's model-registry ref (``name@version``) in
        ``spec.lora.refs``; loading new weights without one forgets the old ref (it would
        name other weights). Removing an adapter also drops its traffic share, its share of
        any alias (both go to the base model) and its ref.

        Example:
            >>> ctl.set_adapter("qwen", "faq", "/adapters/faq-3", ref="faq-bot@3")  # doctest: +SKIP
        """
        with self._serving_lock():
            return self._set_adapter(deployment, adapter, path, ref)

    def _set_adapter(
        self, deployment: str, adapter: str, path: str | None, ref: str | None
    ) -> Change:
        row = self.store.get(MODEL_KIND, deployment)
        if row is None:
            raise NotFound(f"no ModelDeployment named {deployment!r}")
        if path is None and ref is not None:
            raise BadRequest("a ref names the weights being loaded: give a path with it")
        entry = entry_of(row)
        body = deep_copy(row.body)
        lora = body["spec"].setdefault("lora", {})
        adapters = dict(entry.adapter_paths)
        refs = dict(entry.refs)
        if path is None:
            if adapter not in adapters:
                raise NotFound(f"deployment {deployment!r} has no adapter {adapter!r}")
            adapters.pop(adapter)
            lora["traffic"] = {k: v for k, v in entry.traffic.items() if k != adapter}
            if entry.aliases:
                lora["aliases"] = without_adapter(entry.aliases, adapter)
            refs.pop(adapter, None)
        else:
            before = adapters.get(adapter)
            adapters[adapter] = str(Path(path).resolve())
            if ref is not None:
                refs[adapter] = ref
            elif adapters[adapter] != before:
                refs.pop(adapter, None)
        lora["adapters"] = adapters
        lora["refs"] = refs
        # Keep LoRA on once it was: removing the last adapter must not turn it off (that
        # changes the replicas' arguments and restarts them).
        if path is not None or entry.lora_enabled:
            lora["enabled"] = True
        item = validate_document(body, f"{deployment} (stored)")
        plan = self.resolve(self.compile([item]), progress=False)[0]
        desired = self._stored_plans()
        desired[deployment] = plan
        self._push(desired)
        new_body = normal(item)
        self.store.put(MODEL_KIND, deployment, new_body, plan.to_dict())
        changed = tuple(changed_paths(row.body, new_body))
        if not changed:
            return Change(MODEL_KIND, deployment, "unchanged")
        # Turning LoRA on for a deployment started without it restarts its replicas.
        action = "adapters" if adapters_only(row.body, new_body, changed) else "update"
        return Change(MODEL_KIND, deployment, action, changed)

    def set_traffic(self, deployment: str, shares: Mapping[str, float]) -> Change:
        """Replace the canary shares of ``deployment`` (an empty mapping clears them).

        ``shares`` maps adapter names to the share of bare-deployment requests each gets;
        the rest goes to the base model. Only the stored manifest changes: the gateway
        reads it (within about a second), and no replica restarts or is reconfigured.

        Raises:
            NotFound: no such deployment.
            ManifestError: the shares are invalid (``spec.lora.traffic``); nothing changes.

        Example:
            >>> ctl.set_traffic("qwen", {"faq-v4": 0.1})  # doctest: +SKIP
            Change(kind='ModelDeployment', name='qwen', action='adapters', ...)
        """

        def update(lora: dict[str, Any]) -> None:
            lora["traffic"] = dict(shares)

        with self._serving_lock():
            return self._set_routing(deployment, update, f"traffic set to {dict(shares)}")

    def set_alias(self, deployment: str, alias: str, shares: Mapping[str, float] | None) -> Change:
        """Point ``alias`` at adapters with ``shares`` adding up to at most 1 (the rest,
        and all of ``{}``, goes to the base model), or remove it (None).

        Clients and agents name it as ``model="<deployment>:<alias>"``; like canary shares,
        only the stored manifest changes.

        Raises:
            NotFound: no such deployment, or removing an alias it does not have.
            ManifestError: the shares are invalid (``spec.lora.aliases``); nothing changes.

        Example:
            >>> ctl.set_alias("qwen", "gov", {"gov-v1": 0.9, "gov-v2": 0.1})  # doctest: +SKIP
        """

        def update(lora: dict[str, Any]) -> None:
            aliases = dict(lora.get("aliases") or {})
            if shares is None:
                if alias not in aliases:
                    known = ", ".join(sorted(aliases)) or "none"
                    raise NotFound(
                        f"deployment {deployment!r} has no alias {alias!r} (aliases: {known})"
                    )
                aliases.pop(alias)
            else:
                aliases[alias] = dict(shares)
            lora["aliases"] = aliases

        what = f"alias {alias} removed" if shares is None else f"alias {alias} → {dict(shares)}"
        with self._serving_lock():
            return self._set_routing(deployment, update, what)

    def _set_routing(
        self, deployment: str, update: Callable[[dict[str, Any]], None], what: str
    ) -> Change:
        row = self.store.get(MODEL_KIND, deployment)
        if row is None:
            raise NotFound(f"no ModelDeployment named {deployment!r}")
        body = deep_copy(row.body)
        update(body["spec"].setdefault("lora", {}))
        new_body = normal(validate_document(body, f"{deployment} (stored)"))
        changed = tuple(changed_paths(row.body, new_body))
        if not changed:
            return Change(MODEL_KIND, deployment, "unchanged")
        # The plan (and so the Serve config) does not depend on routing: keep it as is.
        self.store.put(MODEL_KIND, deployment, new_body, row.plan)
        logger.info("deployment %s: %s", deployment, what)
        return Change(MODEL_KIND, deployment, "adapters", changed)
