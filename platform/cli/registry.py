"""``qingliang lineage REF`` and ``qingliang registry …``: read the model registry.

``lineage`` answers "where did this answer come from?": give it the adapter ref an answer
carries (``X-Qingliang-Adapter-Ref: faq-bot@3``), a ``deployment:adapter`` pair, a dataset
version, a job, a base model or a deployment, and it prints what that was made from (job,
dataset versions with record counts and status, base model) and what came of it
(deployments serving it, with their traffic shares). Everything is read from
``$QINGLIANG_HOME/registry.sqlite`` and, for ``deployment:adapter``, the applied
ModelDeployment's ``spec.lora.refs``; no running platform is needed.

Example:
    $ qingliang lineage faq-bot@3
    $ qingliang lineage support:faq --direction up --json
    $ qingliang registry adapters faq-bot --status stale
    $ qingliang registry show faq-bot@3 --samples
    $ qingliang registry sync gov-sft
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from qingliang.platform.cli._metrics_text import SAMPLE_CHARS, key_lines, metric_items, sample_lines
from qingliang.platform.errors import BadRequest, NotFound, QingliangError
from qingliang.platform.settings import Settings

if TYPE_CHECKING:
    from qingliang.platform.lifecycle.registry import LineageNode, Registry

registry_app = typer.Typer(
    help="The model registry: adapters, jobs, dataset versions; `qingliang lineage` traces.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)

MODEL_KIND = "ModelDeployment"
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
DIRECTIONS = {
    "up": "upstream",
    "upstream": "upstream",
    "down": "downstream",
    "downstream": "downstream",
    "both": "both",
}
LABEL = {
    "adapter": "adapter",
    "dataset_version": "dataset",
    "job": "job",
    "base_model": "base model",
    "deployment": "deployment",
    "quantized": "quantized",
}
# How a node relates to the one above it in the printed tree, per relation of the edge.
UP = {
    "produced_by": "produced by",
    "trained_on": "trained on",
    "evaluated_on": "evaluated on",
    "fine_tunes": "fine-tunes",
    "adapts": "adapts",
    "merged_from": "merged from",
    "quantized_from": "quantized from",
    "serves": "serves",
    "derived_from": "derived from",
    "initialized_from": "continued from",
}
DOWN = {
    "produced_by": "produced",
    "trained_on": "trained",
    "evaluated_on": "evaluated",
    "fine_tunes": "fine-tuned by",
    "adapts": "adapted by",
    "merged_from": "merged into",
    "quantized_from": "quantized as",
    "serves": "served by",
    "derived_from": "derived into",
    "initialized_from": "initialized",
}
FULL_SHARE = 1.0 - 1e-9
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of text.")
FullOpt = typer.Option(False, "--full", help="Print whole dataset version ids.")


# -- plumbing --------------------------------------------------------------------------------


def _fail(exc: BaseException) -> None:
    err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@contextmanager
def _registry() -> Iterator[Registry]:
    """The registry of ``$QINGLIANG_HOME``; Qingliang errors end the command (exit 1)."""
    from qingliang.platform.lifecycle.registry import Registry

    try:
        with Registry(home=Settings().home) as reg:
            yield reg
    except QingliangError as exc:
        _fail(exc)


def _out(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _json(value: Any) -> None:
    _out(json.dumps(value, ensure_ascii=False, indent=2, default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        ref = getattr(value, "ref", None)
        return {**({"ref": ref} if isinstance(ref, str) else {}), **dataclasses.asdict(value)}
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def _when(t: datetime | None) -> str:
    return "-" if t is None else t.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _short(ref: str, full: bool) -> str:
    """``faq@sha256:<64 hex>`` -> ``faq@sha256:<12 hex>`` unless ``full``."""
    if full:
        return ref
    head, sep, version = ref.rpartition("sha256:")
    return f"{head}{sep}{version[:12]}" if sep else ref


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in counts.items()) or "no records"


def _share(share: float) -> str:
    return f"{share * 100:.4g}%"


def _did_you_mean(value: str, names: list[str]) -> str:
    close = difflib.get_close_matches(value, names, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


# -- resolving a ref -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Resolved:
    kind: str
    ref: str
    via: str | None = None  # how a deployment:adapter pair was resolved


def resolve(reg: Registry, ref: str, kind: str | None = None) -> Resolved:
    """Turn what the user typed into a registry kind and ref (see ``lineage --help``).

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
        return _through_deployment(ref)
    if wanted is None:
        if not at:
            return _by_name(reg, ref)
        wanted = "adapter" if after.isdigit() else "dataset_version"
    if wanted == "adapter":
        return Resolved("adapter", reg.get_adapter(ref).ref)
    if wanted == "dataset_version":
        return Resolved("dataset_version", _dataset_version(reg, name, after))
    if at:
        raise BadRequest(
            f"{ref!r} is not a {LABEL[wanted]} name: '@' appears only in adapter and dataset "
            "version refs"
        )
    return Resolved(wanted, ref)  # the lineage walk says if it is unknown


def _dataset_version(reg: Registry, dataset: str, version: str) -> str:
    """``dataset@sha256:<hex>`` or a unique hex prefix; no version: the newest one."""
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


def _through_deployment(ref: str) -> Resolved:
    """``deployment:adapter`` -> the registry ref in the stored ModelDeployment's
    ``spec.lora.refs``."""
    from qingliang.platform.storage.state import StateStore

    deployment, _, adapter = ref.partition(":")
    if not deployment or not adapter:
        raise BadRequest(f"{ref!r}: expected DEPLOYMENT:ADAPTER, e.g. support:faq")
    store = StateStore(Settings().state_db)
    row = store.get(MODEL_KIND, deployment)
    if row is None:
        applied = [r.name for r in store.list(MODEL_KIND)]
        listed = f" (applied: {', '.join(applied)})" if applied else " (none is applied)"
        raise NotFound(
            f"{ref!r}: no ModelDeployment named {deployment!r}"
            f"{_did_you_mean(deployment, applied) or listed}",
            param="deployment",
        )
    lora = (row.body.get("spec") or {}).get("lora") or {}
    refs: dict[str, str] = dict(lora.get("refs") or {})
    adapters = sorted({*(lora.get("adapters") or {}), *refs})
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


def _by_name(reg: Registry, name: str) -> Resolved:
    """A bare name: whichever kind has it; ambiguous names need --kind."""
    names = {
        "adapter": sorted({a.name for a in reg.list_adapters()}),
        "job": [j.name for j in reg.list_jobs()],
        "base_model": [m.name for m in reg.list_base_models()],
        "deployment": reg.list_deployments(),
        "quantized": [q.name for q in reg.list_quantized()],
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
            return Resolved(kind, _dataset_version(reg, name, ""))
        return Resolved(kind, name)
    everything = [n for known in names.values() for n in known]
    hint = _did_you_mean(name, everything)
    applied = _applied_deployment(name)
    if applied:
        hint += (
            f"; ModelDeployment {name!r} is applied but the registry has no record of what it "
            f"serves: trace one of its adapters ({applied})"
        )
    raise NotFound(
        f"{name!r} is not in the registry (no adapter, job, base model, deployment, quantized "
        f"artifact or dataset by that name){hint}",
        param="ref",
    )


def _flag(kind: str) -> str:
    return {"dataset_version": "dataset", "base_model": "model"}.get(kind, kind)


def _applied_deployment(name: str) -> str:
    """``name:a, name:b`` for an applied ModelDeployment with adapters, else ``""``."""
    from qingliang.platform.storage.state import StateStore

    row = StateStore(Settings().state_db).get(MODEL_KIND, name)
    if row is None:
        return ""
    lora = (row.body.get("spec") or {}).get("lora") or {}
    adapters = sorted({*(lora.get("adapters") or {}), *(lora.get("refs") or {})})
    return ", ".join(f"{name}:{a}" for a in adapters) or "it loads none"


# -- lineage ---------------------------------------------------------------------------------


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
            q = reg.get_quantized(ref)
            return {"method": q.method, "model": q.model}
        return {}

    def traffic(self, deployment: str, target: str) -> dict[str, Any] | None:
        """The newest interval during which ``deployment`` served ``target``."""
        key = ("traffic", f"{deployment}|{target}")
        if key not in self._cache:
            found = [a for a in self.reg.deployment_history(deployment) if a.target == target]
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


def _detail_text(kind: str, details: dict[str, Any], full: bool) -> str:
    parts: list[str] = []
    if kind == "adapter":
        parts.append(details["status"])
        if details.get("stale_reason"):
            parts[-1] += f": {details['stale_reason']}"
    elif kind == "dataset_version":
        parts.append(_counts(details["record_counts"]))
        if details["status"] == "superseded":
            why = details.get("superseded_reason")
            by = _short(f"sha256:{details['superseded_by'].removeprefix('sha256:')}", full)
            parts.append(f"superseded by {by}" + (f" ({why})" if why else ""))
        else:
            parts.append("active")
    elif kind == "job":
        parts.append(f"{details['method']}, {details['status']}")
    elif kind == "base_model":
        parts.append(details["source"])
        if details.get("merged_from"):
            parts.append(f"merged from {details['merged_from']}")
    elif kind == "quantized":
        parts.append(f"{details['method']} of {details['model']}")
    traffic = details.get("traffic")
    if traffic:
        if traffic["serving"]:
            role = "serving" if traffic["share"] >= FULL_SHARE else "canary"
            parts.append(f"{role} {_share(traffic['share'])} since {_when(traffic['since'])}")
        else:
            parts.append(f"served {_share(traffic['share'])} until {_when(traffic['until'])}")
    return "; ".join(p for p in parts if p)


def _tree_lines(nodes: list[dict[str, Any]], upward: bool, prefix: str, full: bool) -> list[str]:
    lines = []
    for i, n in enumerate(nodes):
        last = i == len(nodes) - 1
        phrase = (UP if upward else DOWN).get(n["relation"], n["relation"])
        text = _detail_text(n["kind"], n["details"], full)
        lines.append(
            f"{prefix}{'└── ' if last else '├── '}{phrase} {LABEL[n['kind']]} "
            f"{_short(n['ref'], full)}" + (f"  ({text})" if text else "")
        )
        lines += _tree_lines(n["children"], upward, prefix + ("    " if last else "│   "), full)
    return lines


def lineage(
    ref: str = typer.Argument(
        ...,
        help="An adapter NAME@VERSION (or NAME: the newest), DEPLOYMENT:ADAPTER, "
        "DATASET@sha256:… (or a hex prefix), a job, base model or deployment name.",
    ),
    direction: str = typer.Option(
        "both",
        "--direction",
        "-d",
        help="up (what it was made from), down (what came of it) or both.",
    ),
    depth: int = typer.Option(None, "--depth", min=0, help="At most this many edges away."),
    kind: str = typer.Option(
        None,
        "--kind",
        help="What REF is, when a name is several things: adapter, dataset, job, model, "
        "deployment, quantized.",
    ),
    full: bool = FullOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Trace an answer back to its data: adapter → job → dataset versions → base model, and
    forward to the deployments serving it.

    Give the adapter ref an answer carries (its X-Qingliang-Adapter-Ref header, or the
    body's qingliang.adapter_ref), or DEPLOYMENT:ADAPTER as a request named it.
    """
    walk = DIRECTIONS.get(direction)
    if walk is None:
        _fail(BadRequest(f"--direction {direction!r}: use up, down or both"))
        return
    with _registry() as reg:
        found = resolve(reg, ref, kind)
        tree = reg.lineage(found.kind, found.ref, direction=walk, depth=depth)  # type: ignore[arg-type]
        info = _Details(reg)
        root = (tree.kind, tree.ref)
        doc: dict[str, Any] = {
            "query": ref,
            "kind": tree.kind,
            "ref": tree.ref,
            "status": tree.status,
            "resolved_via": found.via,
            "details": info.of(tree.kind, tree.ref),
            "direction": walk,
        }
        if walk != "downstream":
            doc["upstream"] = [_node_dict(n, root, True, info) for n in tree.upstream]
        if walk != "upstream":
            doc["downstream"] = [_node_dict(n, root, False, info) for n in tree.downstream]
    if as_json:
        _json(doc)
        return
    if found.via:
        _out(found.via)
    text = _detail_text(tree.kind, doc["details"], full)
    _out(f"{LABEL[tree.kind]} {_short(tree.ref, full)}" + (f"  ({text})" if text else ""))
    for key, title, upward in (
        ("upstream", "made from", True),
        ("downstream", "used by", False),
    ):
        if key not in doc:
            continue
        _out(f"  {title}:" + ("" if doc[key] else " nothing recorded"))
        for line in _tree_lines(doc[key], upward, "  ", full):
            _out(line)


# -- registry … ------------------------------------------------------------------------------


@registry_app.command("adapters")
def adapters(
    name: str = typer.Argument(None, help="Only this adapter's versions."),
    status: str = typer.Option(None, "--status", help="Only adapters with this status."),
    as_json: bool = JsonOpt,
) -> None:
    """List adapter versions: status, base model, the job that made them."""
    with _registry() as reg:
        rows = reg.list_adapters(name, status=status)
        if name and not rows and not reg.list_adapters(name):
            reg.get_adapter(name)  # NotFound with a did-you-mean
    if as_json:
        _json(rows)
        return
    for a in rows:
        stale = f"  ({a.stale_reason})" if a.stale_reason else ""
        _out(
            f"{a.ref}  {a.status}  base {a.base_model}  job {a.job or '-'}  "
            f"{_when(a.created_at)}{stale}"
        )
    if not rows:
        _out("no adapters" + (f" with status {status}" if status else ""))


@registry_app.command("show")
def show(
    ref: str = typer.Argument(..., help="NAME@VERSION, NAME (the newest) or DEPLOYMENT:ADAPTER."),
    full: bool = FullOpt,
    samples: bool = typer.Option(
        False,
        "--samples",
        help="Also print the evaluation samples (record, prompt, reference, base and "
        f"adapter answers, each cut at {SAMPLE_CHARS} characters; --json has them whole).",
    ),
    as_json: bool = JsonOpt,
) -> None:
    """One adapter: files, metrics, training data, where it is served, status history.

    Metrics are one per line; the evaluation's samples are only counted unless --samples.
    """
    with _registry() as reg:
        found = resolve(reg, ref, "adapter")
        a = reg.get_adapter(found.ref)
        history = reg.adapter_history(a.ref)
        job = reg.get_job(a.job) if a.job else None
        served = [
            s
            for d in reg.list_deployments()
            for s in reg.serving(d)
            if s.target_kind == "adapter" and s.target == a.ref
        ]
        data = {r: reg.get_dataset_version(r) for r in ((*job.train, *job.eval) if job else ())}
    if as_json:
        _json(
            {
                **dataclasses.asdict(a),
                "ref": a.ref,
                "resolved_via": found.via,
                "job": None if job is None else dataclasses.asdict(job),
                "datasets": list(data.values()),
                "served_by": served,
                "history": history,
            }
        )
        return
    if found.via:
        _out(found.via)
    _out(f"adapter {a.ref}: {a.status}")
    if a.stale_reason:
        _out(f"  stale because: {a.stale_reason}")
    _out(f"  path: {a.path}")
    _out(f"  sha256: {a.sha256}")
    _out(f"  base model: {a.base_model}")
    if job is None:
        _out("  job: - (registered without one)")
    else:
        _out(f"  job: {job.name} ({job.method}, {job.status})")
        for role, refs in (("train", job.train), ("eval", job.eval)):
            for r in refs:
                d = data[r]
                state = "active" if d.status == "active" else f"superseded by {d.superseded_by}"
                _out(f"    {role}: {_short(r, full)} ({_counts(d.record_counts)}; {state})")
    items, evaluated = metric_items(a.metrics)
    _out("  metrics:" + ("" if items else " -"))
    for line in key_lines(items, "    "):
        _out(line)
    if evaluated and not samples:
        noun = "sample" if len(evaluated) == 1 else "samples"
        _out(f"  {len(evaluated)} evaluation {noun}; --samples to list them")
    elif samples:
        _out("  evaluation samples:" + ("" if evaluated else " none stored"))
        for n, sample in enumerate(evaluated, 1):
            for line in sample_lines(n, sample):
                _out(line)
    for s in served:
        _out(f"  served by {s.deployment}: {_share(s.share)} since {_when(s.started_at)}")
    _out("  history:")
    for e in history:
        move = e.to_status if e.from_status is None else f"{e.from_status} → {e.to_status}"
        _out(f"    {_when(e.at)}  {move}" + (f": {e.reason}" if e.reason else ""))


@registry_app.command("jobs")
def jobs(
    status: str = typer.Option(None, "--status", help="Only jobs with this status."),
    full: bool = FullOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List fine-tuning jobs: status, method, base model, training and eval data."""
    with _registry() as reg:
        rows = reg.list_jobs(status=status)
    if as_json:
        _json(rows)
        return
    for j in rows:
        data = ", ".join(_short(r, full) for r in j.train)
        if j.eval:
            data += "; eval " + ", ".join(_short(r, full) for r in j.eval)
        error = f"  error: {j.error}" if j.error else ""
        _out(
            f"{j.name}  {j.status}  {j.method}  base {j.base_model}  train {data}  "
            f"{_when(j.created_at)}{error}"
        )
    if not rows:
        _out("no jobs" + (f" with status {status}" if status else ""))


@registry_app.command("datasets")
def datasets(
    name: str = typer.Argument(None, help="Only this dataset's versions."),
    status: str = typer.Option(None, "--status", help="active or superseded."),
    full: bool = FullOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List the dataset versions the registry knows, oldest first, with status."""
    with _registry() as reg:
        rows = reg.list_dataset_versions(name, status=status)
        if name and not rows:
            _dataset_version(reg, name, "")  # NotFound with a did-you-mean
    if as_json:
        _json(rows)
        return
    for d in rows:
        state = d.status
        if d.superseded_by:
            state += f" by {_short('sha256:' + d.superseded_by.removeprefix('sha256:'), full)}"
            state += f" ({d.superseded_reason})" if d.superseded_reason else ""
        _out(f"{_short(d.ref, full)}  {_counts(d.record_counts)}  {_when(d.created_at)}  {state}")
    if not rows:
        _out("no dataset versions" + (f" with status {status}" if status else ""))


@registry_app.command("sync")
def sync(
    name: str = typer.Argument(None, help="Only this dataset (default: every stored one)."),
) -> None:
    """Record the dataset store's versions and record deletions in the registry.

    Marks stale the adapters trained on versions a deletion replaced. Safe to run any
    number of times; it is the retry when `qingliang data delete-record` could not reach
    the registry.
    """
    from qingliang.platform.lifecycle.data.store import DatasetStore
    from qingliang.platform.lifecycle.registry import sync_dataset

    store = DatasetStore.for_home(Settings().home)
    names = [name] if name else store.names()
    with _registry() as reg:
        for n in names:
            result = sync_dataset(reg, store, n)
            done = []
            if result.registered:
                done.append(f"recorded {len(result.registered)} version(s)")
            done += [
                f"{_short(o, False)} superseded by {_short(v, False)}"
                for o, v in result.superseded.items()
            ]
            if result.stale:
                done.append(f"adapters marked stale: {', '.join(result.stale)}")
            _out(f"{n}: {'; '.join(done) or 'up to date'}")
    if not names:
        _out("no datasets")
