"""Tracing lineage: what a user typed, resolved to a registry node, and the walk both ways.

:func:`resolve` turns an adapter ``NAME@VERSION`` (or ``NAME``: the newest), a
``DEPLOYMENT:ADAPTER`` pair (through the applied ModelDeployment's ``spec.lora.refs``),
``DATASET@sha256:…`` (or a hex prefix) or a bare job, base model or deployment name into a
registry kind and ref. :func:`trace` walks the registry's lineage from there and returns a
JSON-ready document: each node with its relation, status and details (record counts, job
method, traffic shares), which ``qingliang lineage`` prints as a tree or as JSON.

The applied deployments' adapters come from the caller (``qingliang lineage`` reads them
through serving's ``ServingView``): the registry does not read the applied manifests.

Example:
    >>> with Registry(home=Path("/tmp/ql")) as reg:                       # doctest: +SKIP
    ...     found = resolve(reg, "faq-bot@3", applied=lambda: {"support": {"faq": "faq-bot@3"}})
    ...     doc = trace(reg, found, "faq-bot@3", direction="upstream")
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from qingliang.platform.errors import BadRequest, NotFound, closest

if TYPE_CHECKING:
    from qingliang.platform.lifecycle.registry.records import LineageNode
    from qingliang.platform.lifecycle.registry.registry import Registry

logger = logging.getLogger(__name__)

#: The applied ModelDeployments, in the state store's order, each to its adapters (name
#: order) and their model-registry refs (None: loaded without one).
AppliedAdapters = Mapping[str, Mapping[str, str | None]]
#: Reads :data:`AppliedAdapters` when a ref needs them (and only then).
ReadApplied = Callable[[], AppliedAdapters]

#: --kind values -> registry kinds.
KINDS = {
    "adapter": "adapter",
    "dataset": "dataset_version",
    "dataset_version": "dataset_version",
    "job": "job",
    "model": "base_model",
    "base_model": "base_model",
    "deployment": "deployment",
    "quantized": "quantized",
}
#: --direction values -> walk directions.
DIRECTIONS = {
    "up": "upstream",
    "upstream": "upstream",
    "down": "downstream",
    "downstream": "downstream",
    "both": "both",
}
#: How each registry kind is named in messages and output.
LABEL = {
    "adapter": "adapter",
    "dataset_version": "dataset",
    "job": "job",
    "base_model": "base model",
    "deployment": "deployment",
    "quantized": "quantized",
}


def _did_you_mean(value: str, names: list[str]) -> str:
    near = closest(value, names)
    return f"; did you mean {near!r}?" if near else ""


# -- resolving a ref -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Resolved:
    kind: str
    ref: str
    via: str | None = None  # how a deployment:adapter pair was resolved


def resolve(reg: Registry, ref: str, kind: str | None = None, *, applied: ReadApplied) -> Resolved:
    """Turn what the user typed into a registry kind and ref (see ``lineage --help``);
    ``applied`` reads the applied deployments' adapters a ``DEPLOYMENT:ADAPTER`` pair is
    resolved through.

    Raises:
        NotFound: nothing by that ref (with a "did you mean" hint where one is close).
        BadRequest: an unknown ``kind``, or a bare name that is several kinds at once.
    """
    ref = ref.strip()
    wanted = None
    if kind is not None:
        wanted = KINDS.get(kind)
        if wanted is None:
            raise BadRequest(f"--kind {kind!r}: use one of {', '.join(sorted(KINDS))}")
    name, at, after = ref.partition("@")
    if wanted in (None, "adapter") and ":" in ref and not at:
        return _through_deployment(ref, applied())
    if wanted is None:
        if not at:
            return _by_name(reg, ref, applied)
        wanted = "adapter" if after.isdigit() else "dataset_version"
    if wanted == "adapter":
        return Resolved("adapter", reg.get_adapter(ref).ref)
    if wanted == "dataset_version":
        return Resolved("dataset_version", dataset_version_ref(reg, name, after))
    if at:
        raise BadRequest(
            f"{ref!r} is not a {LABEL[wanted]} name: '@' appears only in adapter and dataset "
            "version refs"
        )
    return Resolved(wanted, ref)  # the lineage walk says if it is unknown


def dataset_version_ref(reg: Registry, dataset: str, version: str = "") -> str:
    """The registry ref of ``dataset``'s version ``version`` (``sha256:<hex>`` or a unique
    hex prefix); no version: the newest one.

    Raises:
        NotFound: no such dataset (with a "did you mean" hint) or version.
        BadRequest: the prefix names several versions.
    """
    rows = reg.list_dataset_versions(dataset)
    if not rows:
        known = sorted({v.dataset for v in reg.list_dataset_versions()})
        raise NotFound(
            f"no dataset {dataset!r} in the registry{_did_you_mean(dataset, known)}",
            param="dataset",
        )
    if not version:
        return rows[-1].ref
    want = version.removeprefix("sha256:")
    found = [v for v in rows if want and v.version.removeprefix("sha256:").startswith(want)]
    if not found:
        raise NotFound(
            f"dataset {dataset!r} has no version {version!r} in the registry (newest: "
            f"{rows[-1].version})",
            param="dataset_version",
        )
    if len(found) > 1:
        raise BadRequest(f"{dataset}@{version} names {len(found)} versions; give more digits")
    return found[0].ref


def _through_deployment(ref: str, applied: AppliedAdapters) -> Resolved:
    """``deployment:adapter`` -> the registry ref in the applied ModelDeployment's
    ``spec.lora.refs``."""
    deployment, _, adapter = ref.partition(":")
    if not deployment or not adapter:
        raise BadRequest(f"{ref!r}: expected DEPLOYMENT:ADAPTER, e.g. support:faq")
    loaded = applied.get(deployment)
    if loaded is None:
        names = list(applied)
        listed = f" (applied: {', '.join(names)})" if names else " (none is applied)"
        raise NotFound(
            f"{ref!r}: no ModelDeployment named {deployment!r}"
            f"{_did_you_mean(deployment, names) or listed}",
            param="deployment",
        )
    refs = {a: r for a, r in loaded.items() if r is not None}
    adapters = sorted(loaded)
    if adapter in refs:
        return Resolved("adapter", str(refs[adapter]), f"{ref} → {refs[adapter]} (spec.lora.refs)")
    has = ", ".join(f"{a} → {refs[a]}" if a in refs else f"{a} (no ref)" for a in adapters)
    if adapter in adapters:
        raise NotFound(
            f"{ref!r}: deployment {deployment!r} loads adapter {adapter!r} without a registry "
            f"ref, so its weights cannot be traced (it has: {has}); reload it with "
            f"`qingliang adapters load {deployment} {adapter} PATH --ref NAME@VERSION`",
            param="adapter",
        )
    raise NotFound(
        f"{ref!r}: deployment {deployment!r} has no adapter {adapter!r}"
        f"{_did_you_mean(adapter, adapters)} (it has: {has or 'none'})",
        param="adapter",
    )


def _by_name(reg: Registry, name: str, applied: ReadApplied) -> Resolved:
    """A bare name: whichever kind has it; ambiguous names need --kind."""
    names = {
        "adapter": sorted({a.name for a in reg.list_adapters()}),
        "job": [j.name for j in reg.list_jobs()],
        "base_model": [m.name for m in reg.list_base_models()],
        "deployment": reg.deployments.names(),
        "quantized": [q.name for q in reg.quantized.all()],
        "dataset_version": sorted({v.dataset for v in reg.list_dataset_versions()}),
    }
    hits = [kind for kind, known in names.items() if name in known]
    if len(hits) > 1:
        which = " and ".join(f"{'an' if k == 'adapter' else 'a'} {LABEL[k]}" for k in hits)
        flags = " or ".join(f"--kind {_flag(k)}" for k in hits)
        raise BadRequest(f"{name!r} is {which}; say which with {flags}", param="kind")
    if hits:
        kind = hits[0]
        if kind == "adapter":
            return Resolved(kind, reg.get_adapter(name).ref)
        if kind == "dataset_version":
            return Resolved(kind, dataset_version_ref(reg, name, ""))
        return Resolved(kind, name)
    everything = [n for known in names.values() for n in known]
    hint = _did_you_mean(name, everything)
    loads = _applied_deployment(name, applied())
    if loads:
        hint += (
            f"; ModelDeployment {name!r} is applied but the registry has no record of what it "
            f"serves: trace one of its adapters ({loads})"
        )
    raise NotFound(
        f"{name!r} is not in the registry (no adapter, job, base model, deployment, quantized "
        f"artifact or dataset by that name){hint}",
        param="ref",
    )


def _flag(kind: str) -> str:
    return {"dataset_version": "dataset", "base_model": "model"}.get(kind, kind)


def _applied_deployment(name: str, applied: AppliedAdapters) -> str:
    """``name:a, name:b`` for an applied ModelDeployment with adapters, ``"it loads
    none"`` for one without, else ``""``."""
    loaded = applied.get(name)
    if loaded is None:
        return ""
    return ", ".join(f"{name}:{a}" for a in sorted(loaded)) or "it loads none"


# -- details ---------------------------------------------------------------------------------


class _Details:
    """What to show next to each node, read from the registry once per ref."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg
        self._cache: dict[tuple[str, str], dict[str, Any]] = {}

    def of(self, kind: str, ref: str) -> dict[str, Any]:
        key = (kind, ref)
        if key not in self._cache:
            self._cache[key] = self._read(kind, ref)
        return self._cache[key]

    def _read(self, kind: str, ref: str) -> dict[str, Any]:
        reg = self.reg
        if kind == "adapter":
            a = reg.get_adapter(ref)
            return {"status": a.status, "stale_reason": a.stale_reason, "path": a.path}
        if kind == "dataset_version":
            d = reg.get_dataset_version(ref)
            return {
                "status": d.status,
                "record_counts": d.record_counts,
                "superseded_by": d.superseded_by,
                "superseded_reason": d.superseded_reason,
            }
        if kind == "job":
            j = reg.get_job(ref)
            return {"method": j.method, "status": j.status}
        if kind == "base_model":
            m = reg.get_base_model(ref)
            return {"source": m.source, "merged_from": m.merged_from}
        if kind == "quantized":
            q = reg.quantized.get(ref)
            return {"method": q.method, "model": q.model}
        return {}

    def traffic(self, deployment: str, target: str) -> dict[str, Any] | None:
        """The newest interval during which ``deployment`` served ``target``."""
        key = ("traffic", f"{deployment}|{target}")
        if key not in self._cache:
            found = [a for a in self.reg.deployments.history(deployment) if a.target == target]
            last = found[-1] if found else None
            self._cache[key] = (
                {}
                if last is None
                else {
                    "share": last.share,
                    "since": last.started_at,
                    "until": last.ended_at,
                    "serving": last.ended_at is None,
                }
            )
        return self._cache[key] or None


def _node_dict(
    node: LineageNode, parent: tuple[str, str], upward: bool, info: _Details
) -> dict[str, Any]:
    details = dict(info.of(node.kind, node.ref))
    if node.relation == "serves":
        deployment, target = (parent[1], node.ref) if upward else (node.ref, parent[1])
        details["traffic"] = info.traffic(deployment, target)
    return {
        "kind": node.kind,
        "ref": node.ref,
        "relation": node.relation,
        "status": node.status,
        "details": details,
        "children": [_node_dict(c, (node.kind, node.ref), upward, info) for c in node.children],
    }


# -- the walk --------------------------------------------------------------------------------


def trace(
    reg: Registry,
    found: Resolved,
    query: str,
    *,
    direction: str = "both",
    depth: int | None = None,
) -> dict[str, Any]:
    """The lineage of ``found`` as a JSON-ready document: the node itself (``kind``,
    ``ref``, ``status``, ``details``, ``resolved_via``) and its ``upstream`` and/or
    ``downstream`` trees, each node with ``relation``, ``status``, ``details`` and
    ``children`` (a ``serves`` edge adds the deployment's ``traffic``).

    Raises:
        NotFound: no such node in the registry.
    """
    tree = reg.lineage(found.kind, found.ref, direction=direction, depth=depth)  # type: ignore[arg-type]
    info = _Details(reg)
    root = (tree.kind, tree.ref)
    doc: dict[str, Any] = {
        "query": query,
        "kind": tree.kind,
        "ref": tree.ref,
        "status": tree.status,
        "resolved_via": found.via,
        "details": info.of(tree.kind, tree.ref),
        "direction": direction,
    }
    if direction != "downstream":
        doc["upstream"] = [_node_dict(n, root, True, info) for n in tree.upstream]
    if direction != "upstream":
        doc["downstream"] = [_node_dict(n, root, False, info) for n in tree.downstream]
    return doc
