"""``qingliang lineage REF`` and ``qingliang registry …``: read the model registry.

``lineage`` answers "where did this answer come from?": give it the adapter ref an answer
carries (``X-Qingliang-Adapter-Ref: faq-bot@3``), a ``deployment:adapter`` pair, a dataset
version, a job, a base model or a deployment, and it prints what that was made from (job,
dataset versions with record counts and status, base model) and what came of it
(deployments serving it, with their traffic shares). Everything is read from
``$QINGLIANG_HOME/registry.sqlite`` and, for ``deployment:adapter``, the applied
ModelDeployment's ``spec.lora.refs``; no running platform is needed. With ``--server``
(``QINGLIANG_URL``), ``lineage`` and the ``registry adapters|jobs|datasets`` listings read
the remote platform's registry (``/v1/lineage``, ``/v1/registry/...``); ``--json`` prints
the same document either way.

Example:
    $ qingliang lineage faq-bot@3
    $ qingliang lineage support:faq --direction up --json
    $ qingliang registry adapters faq-bot --status stale
    $ qingliang registry show faq-bot@3 --samples
    $ qingliang registry sync gov-sft
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from qingliang.platform.cli._metrics_text import SAMPLE_CHARS, key_lines, metric_items, sample_lines
from qingliang.platform.errors import BadRequest, QingliangError
from qingliang.platform.settings import Settings

if TYPE_CHECKING:
    from qingliang.platform.lifecycle.registry import Registry
    from qingliang.platform.lifecycle.registry.lineage import AppliedAdapters

registry_app = typer.Typer(
    help="The model registry: adapters, jobs, dataset versions; `qingliang lineage` traces.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)

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


def _lineage() -> Any:
    """The registry's lineage module, imported on use: the registry pulls in SQLAlchemy,
    which ``qingliang --help`` should not pay for."""
    from qingliang.platform.lifecycle.registry import lineage

    return lineage


def _applied() -> AppliedAdapters:
    """The applied deployments' adapters and registry refs, read through the serving view."""
    from qingliang.platform.storage.state import StateStore
    from qingliang.serving.traffic import ServingView

    return ServingView.read(StateStore(Settings().state_db)).adapter_refs()


@contextmanager
def _registry() -> Iterator[Registry]:
    """The registry of ``$QINGLIANG_HOME``; Qingliang errors end the command (exit 1)."""
    from qingliang.platform.cli import _remote
    from qingliang.platform.lifecycle.registry import Registry

    try:
        _remote.not_remote(
            "registry show/sync",
            "run it on the platform's host; remotely, `qingliang lineage REF --json` and "
            "`qingliang registry adapters|jobs|datasets --json` read its registry",
        )
        with Registry(home=Settings().home) as reg:
            yield reg
    except QingliangError as exc:
        _fail(exc)


def _out(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _json(value: Any) -> None:
    from qingliang.platform.gateway.operator.admin import plain

    print(json.dumps(value, ensure_ascii=False, indent=2, default=plain))


def _when(t: datetime | str | None) -> str:
    if isinstance(t, str):  # a record read as JSON (ISO 8601)
        t = datetime.fromisoformat(t)
    return "-" if t is None else t.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _rows(what: str, name: str | None, status: str | None) -> list[Any]:
    """``registry adapters|jobs|datasets`` as JSON records (each also readable as
    attributes): the remote platform's with --server, else this machine's."""
    from qingliang.platform.cli import _remote

    try:
        if _remote.target() is not None:
            params = {k: v for k, v in (("name", name), ("status", status)) if v}
            with _remote.connect() as api:
                rows = api.get(f"/v1/registry/{what}", params=params)["data"]
        else:
            from qingliang.platform.gateway.operator.admin import registry_rows

            rows = registry_rows(Settings().home, what, name, status)
    except QingliangError as exc:
        _fail(exc)
    return [_Row(r) for r in rows]


class _Row(dict):
    """A JSON record whose keys also read as attributes (``row.ref``)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


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
            f"{prefix}{'└── ' if last else '├── '}{phrase} {_lineage().LABEL[n['kind']]} "
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
    from qingliang.platform.cli import _remote

    if _lineage().DIRECTIONS.get(direction) is None:
        _fail(BadRequest(f"--direction {direction!r}: use up, down or both"))
        return
    try:
        if _remote.target() is not None:
            params = {"ref": ref, "direction": direction, "depth": depth, "kind": kind}
            with _remote.connect() as api:
                doc = api.get("/v1/lineage", params={k: v for k, v in params.items() if v})
        else:
            from qingliang.platform.gateway.operator.admin import lineage_doc

            doc = lineage_doc(Settings(), ref, direction, depth, kind)
    except QingliangError as exc:
        _fail(exc)
        return
    via = doc.pop("via", None)
    if as_json:
        _json(doc)
        return
    if via:
        _out(via)
    text = _detail_text(doc["kind"], doc["details"], full)
    label = _lineage().LABEL[doc["kind"]]
    _out(f"{label} {_short(doc['ref'], full)}" + (f"  ({text})" if text else ""))
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
    rows = _rows("adapters", name, status)
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
        found = _lineage().resolve(reg, ref, "adapter", applied=_applied)
        a = reg.get_adapter(found.ref)
        history = reg.adapter_history(a.ref)
        job = reg.get_job(a.job) if a.job else None
        served = [
            s
            for d in reg.deployments.names()
            for s in reg.deployments.serving(d)
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
    rows = _rows("jobs", None, status)
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
    rows = _rows("datasets", name, status)
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
