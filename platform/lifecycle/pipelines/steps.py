"""The pipeline steps that are not fine-tuning: govern, canary, promote and roll back.

Each is a step function (``fn(emit, **kwargs) -> JSON``, see
:mod:`qingliang.platform.lifecycle.pipelines.executor`) run as a Ray task, and each is
idempotent: running it again after a crash gives the same result and changes nothing twice.
``govern`` because a dataset cut is content-addressed (same sources, same version);
``canary``, ``promote`` and ``rollback`` because they compute the deployment's target
adapters and traffic from what the step recorded at its start and set them
(a no-op when already set).

Adapters are loaded into a deployment as ``<adapter>-v<N>`` (the registry's
``<adapter>@<N>``), with ``spec.lora.refs`` mapping the one to the other, so every
answer carries the registry ref of the adapter that produced it (header
``X-Qingliang-Adapter-Ref``), and ``qingliang lineage`` walks from it to the data.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qingliang.platform.errors import BadRequest, NotFound, ResolveError
from qingliang.serving.traffic import MODEL_KIND, entry_of

logger = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]


def deployment_adapter_name(ref: str) -> str:
    """``hotline@3`` → ``hotline-v3``: the name a deployment loads the adapter under."""
    name, _, version = ref.partition("@")
    return f"{name}-v{version}"


def govern_step(emit: Emit, *, home: str, dataset_file: str, actor: str) -> dict[str, Any]:
    """Cut a version of the Dataset manifest in ``dataset_file`` and register it."""
    import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
    from qingliang.platform.lifecycle.data.manifest import Dataset
    from qingliang.platform.lifecycle.data.store import DatasetStore
    from qingliang.platform.lifecycle.registry import Registry, record_dataset_version
    from qingliang.platform.manifests.loader import load_paths

    path = Path(dataset_file)
    if not path.is_file():
        raise ResolveError(f"govern: dataset manifest {path} does not exist")
    items = [i for i in load_paths([path]) if isinstance(i.manifest, Dataset)]
    if len(items) != 1:
        raise ResolveError(f"govern: {path} must hold exactly one Dataset, found {len(items)}")
    dataset = items[0].manifest
    assert isinstance(dataset, Dataset)
    store = DatasetStore.for_home(Path(home))
    emit({"kind": "log", "message": f"cutting dataset {dataset.name} from {path}"})
    v = store.cut(dataset, path.resolve().parent, actor=actor)
    with Registry(home=Path(home)) as reg:
        ref = record_dataset_version(reg, v).ref
    result = {
        "dataset": v.name,
        "version": v.version,
        "ref": ref,
        "records": v.records,
        "train": v.train,
        "eval": v.eval,
        "quarantined": v.quarantined,
        "warnings": list(v.warnings),
    }
    emit(
        {
            "kind": "log",
            "message": f"{ref}: {v.train} train / {v.eval} eval records, "
            f"{v.quarantined} quarantined",
        }
    )
    for warning in v.warnings:
        emit({"kind": "log", "message": f"warning: {warning}"})
    return result


def _save_atomically(out: Path, write: Callable[[Path], None]) -> None:
    """Write a model folder under a temporary name, then rename it into place."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def merge_step(
    emit: Emit,
    *,
    home: str,
    adapter: str,
    adapter_path: str,
    base_model: str,
    base_model_path: str,
    quantize: str = "none",
) -> dict[str, Any]:
    """Merge ``adapter`` into its base and register the result (merged from the adapter);
    with ``quantize="bnb-nf4"`` also save and register a 4-bit NF4 copy.

    The model goes to ``<home>/models/merged/<base>-<adapter>-v<N>`` (written under a
    temporary name, then renamed: a crash leaves no half model). Run again, it reuses
    what is there.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qingliang.platform.lifecycle.registry import Registry

    name = f"{base_model}-{deployment_adapter_name(adapter)}"
    out = Path(home) / "models" / "merged" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    if not (out / "config.json").is_file():
        emit({"kind": "log", "message": f"merging {adapter} into {base_model}"})

        def write_merged(tmp: Path) -> None:
            from peft import PeftModel

            model = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=torch.float32)
            merged = PeftModel.from_pretrained(model, adapter_path).merge_and_unload()
            merged.save_pretrained(tmp)
            AutoTokenizer.from_pretrained(base_model_path).save_pretrained(tmp)

        _save_atomically(out, write_merged)
    result: dict[str, Any] = {
        "model": name,
        "path": str(out),
        "merged_from": adapter,
        "size_bytes": _folder_size(out),
    }
    with Registry(home=Path(home)) as reg:
        try:
            reg.get_base_model(name)
        except NotFound:
            reg.register_base_model(
                name,
                source=str(out),
                format="safetensors",
                merged_from=adapter,
                size_bytes=result["size_bytes"],
            )
    if quantize == "bnb-nf4":
        result["quantized"] = _nf4_copy(emit, home, name, out)
    emit(
        {
            "kind": "log",
            "message": f"registered {name}" + (f" and {name}-nf4" if quantize == "bnb-nf4" else ""),
        }
    )
    return result


def _nf4_copy(emit: Emit, home: str, name: str, out: Path) -> dict[str, Any]:
    """Save a 4-bit NF4 copy of the merged model ``name`` in ``out`` next to it (unless
    there) and register it as a quantised artifact; its name, path and size."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qingliang.platform.lifecycle.registry import Registry

    qname = f"{name}-nf4"
    qout = out.with_name(qname)
    if not (qout / "config.json").is_file():
        emit({"kind": "log", "message": f"saving a 4-bit NF4 copy of {name}"})

        def write_nf4(tmp: Path) -> None:
            from transformers import BitsAndBytesConfig

            config = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.float32,
            )
            model = AutoModelForCausalLM.from_pretrained(out, quantization_config=config)
            model.save_pretrained(tmp)
            AutoTokenizer.from_pretrained(out).save_pretrained(tmp)

        _save_atomically(qout, write_nf4)
    size = _folder_size(qout)
    with Registry(home=Path(home)) as reg:
        try:
            reg.quantized.get(qname)
        except NotFound:
            reg.quantized.register(
                qname,
                model=name,
                method="bnb-nf4",
                path=str(qout),
                size_bytes=size,
                settings={"double_quant": True, "compute_dtype": "float32"},
            )
    return {"name": qname, "path": str(qout), "size_bytes": size}


def controller(home: str) -> Any:
    """The control plane of ``home`` (Ray Serve's REST API of its running cluster)."""
    from qingliang.platform.control.apply import Controller
    from qingliang.platform.control.cluster import settings_for

    return Controller(settings_for(Path(home)))


def deployment_state(ctl: Any, name: str, alias: str | None = None) -> dict[str, Any]:
    """The applied ``adapters`` (name → directory), canary ``traffic`` and registry ``refs``
    of deployment ``name``, read through the serving view (:func:`entry_of`). With
    ``alias``, ``traffic`` is that alias's shares (``spec.lora.aliases``; none yet: ``{}``).

    Raises:
        NotFound: no ModelDeployment by that name is applied.
    """
    row = ctl.store.get(MODEL_KIND, name)
    if row is None:
        raise NotFound(f"canary: no ModelDeployment named {name!r} is applied", param="deployment")
    entry = entry_of(row)
    return {
        "adapters": dict(entry.adapter_paths),
        "traffic": dict(entry.aliases.get(alias, {}) if alias else entry.traffic),
        "refs": dict(entry.refs),
    }


def _record_serving(home: str, ctl: Any, deployment: str, base_model: str) -> None:
    """Tell the registry what ``deployment`` serves now: each adapter with a registry ref
    and its share of the requests routed to it (canary traffic or an alias's share)."""
    from qingliang.platform.lifecycle.registry import Registry

    entry = entry_of(ctl.store.get(MODEL_KIND, deployment))
    shares = {entry.refs[a]: s for a, s in entry.routed_shares().items() if a in entry.refs}
    with Registry(home=Path(home)) as reg:
        reg.deployments.set_serving(deployment, model=base_model, adapters=shares)


def _apply_traffic(
    ctl: Any, deployment: str, traffic: dict[str, float], alias: str | None = None
) -> None:
    current = deployment_state(ctl, deployment, alias)["traffic"]
    if alias is not None:
        if (
            current != traffic
            or alias not in entry_of(ctl.store.get(MODEL_KIND, deployment)).aliases
        ):
            ctl.set_alias(deployment, alias, traffic)
    elif current != traffic:
        ctl.set_traffic(deployment, traffic)


def _earlier_versions(
    before: dict[str, float], loaded_as: str, adapter: str, alias: str | None
) -> list[str]:
    """The arms a canary would replace: every other adapter of its alias, or (no alias)
    the other served versions of its adapter (``<name>-v<N>``)."""
    name = adapter.partition("@")[0]
    return [
        a for a in before if a != loaded_as and (alias is not None or a.startswith(f"{name}-v"))
    ]


def canary_step(
    emit: Emit,
    *,
    home: str,
    deployment: str,
    adapter: str,
    adapter_path: str,
    base_model: str,
    share: float,
    before: dict[str, float] | None = None,
    alias: str | None = None,
) -> dict[str, Any]:
    """Load ``adapter`` (``name@N``) into ``deployment`` and give it ``share`` of the
    traffic its earlier versions had (or of the base model's when none is served).

    With ``alias``, the traffic split is the alias's (``model="<deployment>:<alias>"``,
    ``spec.lora.aliases``), not the bare deployment's: the earlier versions are the
    adapters the alias sends requests to; an alias created here starts with the base model.

    ``before`` is the deployment's traffic when the step first ran (the pipeline passes
    it on retries, so the split is computed from the same starting point).

    Returns ``{"deployment", "adapter", "loaded_as", "before", "traffic", "at"}``: ``at``
    is when the canary started taking traffic (its analysis window starts there).
    """
    ctl = controller(home)
    state = deployment_state(ctl, deployment, alias)
    start = dict(before if before is not None else state["traffic"])
    loaded_as = deployment_adapter_name(adapter)
    previous = {a: start[a] for a in _earlier_versions(start, loaded_as, adapter, alias)}
    if previous:
        held = sum(previous.values())
        traffic = {a: s for a, s in start.items() if a not in previous}
        traffic.update({a: s * (1 - share) for a, s in previous.items()})
        traffic[loaded_as] = held * share
    else:
        room = 1.0 - sum(start.values())
        if room <= 1e-9:
            raise BadRequest(
                f"canary: {deployment} gives all its traffic to other adapters "
                f"({', '.join(sorted(start))}); no base-model share to split",
                param="deployment",
            )
        traffic = {**start, loaded_as: min(share, room)}
    if state["adapters"].get(loaded_as) != adapter_path or state["refs"].get(loaded_as) != adapter:
        emit({"kind": "log", "message": f"loading {adapter} into {deployment} as {loaded_as}"})
        ctl.set_adapter(deployment, loaded_as, adapter_path, ref=adapter)
    _apply_traffic(ctl, deployment, traffic, alias)
    _record_serving(home, ctl, deployment, base_model)
    of = f"{deployment}:{alias}" if alias else deployment
    emit(
        {
            "kind": "log",
            "message": f"{of}: {loaded_as} takes {traffic[loaded_as]:.1%} of the traffic",
        }
    )
    return {
        "deployment": deployment,
        "alias": alias,
        "adapter": adapter,
        "loaded_as": loaded_as,
        "before": start,
        "traffic": traffic,
        "at": time.time(),
    }


def _baseline_arms(canary: dict[str, Any]) -> list[str]:
    """What the canary is compared with: the versions of its adapter it would replace,
    else the base model (arm ``""``)."""
    replaced = _earlier_versions(
        canary["before"], canary["loaded_as"], canary["adapter"], canary.get("alias")
    )
    return replaced or [""]


def canary_figures(home: str, canary: dict[str, Any]) -> dict[str, Any]:
    """The canary's and its baseline's counts since the canary started."""
    from qingliang.platform.storage.arm_stats import combined, summary

    arms = summary(Path(home), canary["deployment"], since=float(canary.get("at") or 0))
    return {
        "canary": combined(arms, [canary["loaded_as"]]),
        "baseline": combined(arms, _baseline_arms(canary)),
    }


def judge_canary(figures: dict[str, Any], analysis: dict[str, Any]) -> tuple[bool | None, str]:
    """``(True, why)`` healthy, ``(False, why)`` failing, ``(None, why)`` too few requests."""
    c, b = figures["canary"], figures["baseline"]
    need = int(analysis["min_requests"])
    if c.requests < need:
        return None, f"{c.requests} of {need} requests so far"
    problems = []
    if c.error_rate > analysis["max_error_rate"]:
        problems.append(
            f"error rate {c.error_rate:.1%} is over max_error_rate {analysis['max_error_rate']:.1%}"
        )
    if b.requests >= need and b.requests > 0:
        allowed = b.error_rate + analysis["max_error_rate_increase"]
        if c.error_rate > allowed:
            problems.append(
                f"error rate {c.error_rate:.1%} is over the baseline's {b.error_rate:.1%} "
                f"+ max_error_rate_increase {analysis['max_error_rate_increase']:.1%}"
            )
        ratio = analysis.get("max_latency_ratio")
        slow = ratio and c.mean_latency_ms and b.mean_latency_ms
        if slow and c.mean_latency_ms > ratio * b.mean_latency_ms:
            problems.append(
                f"mean latency {c.mean_latency_ms:.0f} ms is over {ratio:g} x the "
                f"baseline's {b.mean_latency_ms:.0f} ms"
            )
    figures_text = f"canary: {c.describe()}; baseline ({b.arm}): {b.describe()}"
    if problems:
        return False, "; ".join(problems) + f" ({figures_text})"
    return True, figures_text


def analyse_canary_step(
    emit: Emit,
    *,
    home: str,
    canary: dict[str, Any],
    hold_s: float,
    analysis: dict[str, Any],
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Watch the canary's served requests until it can be judged (``promote: auto``).

    Healthy once it has held ``hold_s`` (counted from the canary's start, so a resumed
    run does not start over) with ``min_requests`` and its figures within the limits;
    failing as soon as it has ``min_requests`` and is outside them; inconclusive (and so
    failing) when ``max_wait_s`` passes without ``min_requests``.

    Returns ``{"healthy", "reason", "canary", "baseline", "waited_s"}``.
    """
    started = float(canary.get("at") or clock())
    hold_until = started + hold_s
    give_up = started + max(hold_s, float(analysis["max_wait_s"]))
    need = int(analysis["min_requests"])
    if need == 0:
        if clock() < hold_until:
            emit({"kind": "log", "message": f"holding the canary for {hold_s:g} s"})
            sleep(max(0.0, hold_until - clock()))
        return {"healthy": True, "reason": "min_requests is 0: not analysed", "waited_s": 0}
    emit(
        {
            "kind": "log",
            "message": f"analysing the canary: {need} requests needed, held at least "
            f"{hold_s:g} s, at most {give_up - started:g} s",
        }
    )
    said = ""
    while True:
        now = clock()
        figures = canary_figures(home, canary)
        verdict, why = judge_canary(figures, analysis)
        result = {
            "canary": figures["canary"].to_dict(),
            "baseline": figures["baseline"].to_dict(),
            "waited_s": round(now - started, 1),
        }
        if verdict is False:
            return {"healthy": False, "reason": why, **result}
        if verdict and now >= hold_until:
            return {"healthy": True, "reason": why, **result}
        if verdict is None and now >= give_up:
            reason = (
                f"inconclusive: {why} after {now - started:.0f} s (max_wait_s); "
                f"canary: {figures['canary'].describe()}"
            )
            return {"healthy": False, "reason": reason, **result}
        if why != said:
            emit({"kind": "log", "message": f"canary analysis: {why}"})
            said = why
        deadline = hold_until if verdict else give_up
        sleep(max(0.05, min(float(analysis["interval_s"]), deadline - now)))


def promote_step(
    emit: Emit, *, home: str, canary: dict[str, Any], base_model: str
) -> dict[str, Any]:
    """Give the canary the whole share its adapter name had; unload the versions it replaces."""
    from qingliang.platform.lifecycle.registry import Registry

    deployment, loaded_as, alias = canary["deployment"], canary["loaded_as"], canary.get("alias")
    ctl = controller(home)
    state = deployment_state(ctl, deployment, alias)
    before = dict(canary["before"])
    replaced = _earlier_versions(before, loaded_as, canary["adapter"], alias)
    traffic = {a: s for a, s in before.items() if a not in replaced and a != loaded_as}
    traffic[loaded_as] = (
        sum(before[a] for a in replaced) if replaced else 1.0 - sum(traffic.values())
    )
    _apply_traffic(ctl, deployment, traffic, alias)
    _record_serving(home, ctl, deployment, base_model)
    retired = []
    with Registry(home=Path(home)) as reg:
        for a in replaced:
            ref = state["refs"].get(a)
            if ref and reg.get_adapter(ref).status == "approved":
                reg.set_status(ref, "retired", f"replaced by {canary['adapter']}")
                retired.append(ref)
    for a in replaced:
        if a in deployment_state(ctl, deployment)["adapters"]:
            ctl.set_adapter(deployment, a, None)
    of = f"{deployment}:{alias}" if alias else deployment
    emit({"kind": "log", "message": f"{of}: {loaded_as} promoted ({traffic[loaded_as]:.0%})"})
    return {"deployment": deployment, "traffic": traffic, "unloaded": replaced, "retired": retired}


def rollback_step(
    emit: Emit, *, home: str, canary: dict[str, Any], base_model: str, reason: str
) -> dict[str, Any]:
    """Put the deployment's traffic back as it was and unload the canary adapter."""
    from qingliang.platform.lifecycle.registry import Registry

    deployment, loaded_as, alias = canary["deployment"], canary["loaded_as"], canary.get("alias")
    ctl = controller(home)
    state = deployment_state(ctl, deployment, alias)
    before = {a: s for a, s in canary["before"].items() if a in state["adapters"]}
    _apply_traffic(ctl, deployment, before, alias)
    if loaded_as in state["adapters"]:
        ctl.set_adapter(deployment, loaded_as, None)
    _record_serving(home, ctl, deployment, base_model)
    with Registry(home=Path(home)) as reg:
        if reg.get_adapter(canary["adapter"]).status == "approved":
            reg.set_status(canary["adapter"], "retired", f"canary rolled back: {reason}")
    of = f"{deployment}:{alias}" if alias else deployment
    emit({"kind": "log", "message": f"{of}: canary {loaded_as} rolled back ({reason})"})
    return {"deployment": deployment, "traffic": before, "unloaded": [loaded_as]}
