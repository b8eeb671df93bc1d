"""Run a ``FineTuneJob``: data and base model resolved, training, registry and lineage.

:func:`run_job` is a step function (``fn(emit, **kwargs)``, see
:mod:`qingliang.platform.lifecycle.pipelines.executor`): ``qingliang finetune run`` and
the pipelines run it as a Ray task and stream its ``progress`` events. It is idempotent per
job name:

* a job that already succeeded returns its registered adapter and trains nothing;
* a job that was killed mid-training resumes from its last checkpoint
  (``train.checkpoint_every``), with the same result as an uninterrupted run;
* a job that failed is not retried under the same name (the registry keeps the failure);
* a job rejected by the checks before training (``preflight``) writes nothing at all.

What it records in the registry (``<home>/registry.sqlite`` by default): the base model,
the dataset version(s) it read, the job (``pending → running → succeeded | failed`` with
its settings and metrics; ``interrupted`` when the pipeline driving it died, ``running``
again when it resumes) and the adapter ``<output.adapter>@<N>`` with lineage edges
dataset version → job → adapter. The adapter's files are written under
``<home>/adapters/<adapter>/<job>/``.

:func:`run_evaluation` scores an adapter against its base on the dataset's eval split
(exact match, ROUGE-L, rule checks) and records the metrics on the adapter (status
``evaluated``); it too returns stored results when run again.

Example:
    >>> from qingliang.platform.lifecycle.pipelines.executor import InlineExecutor, run_to_result
    >>> out = run_to_result(InlineExecutor(), run_job,  # doctest: +SKIP
    ...                     {"job": manifest_dict, "home": "/ql", "base_dir": "."})
    >>> out["adapter"]  # doctest: +SKIP
    'hotline@1'
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from qingliang.platform.errors import Conflict, NotFound
from qingliang.platform.lifecycle.finetune.manifest import FineTuneJob
from qingliang.platform.lifecycle.finetune.settings import FineTuneFailed, invalid

logger = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]
ADAPTERS_DIR = "adapters"
#: Registry names are at most 128 characters (see qingliang.platform.lifecycle.registry).
_NAME_MAX = 128


def adapter_files_sha256(path: Path) -> str:
    """sha256 over an adapter directory's files (names and contents, sorted)."""
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        if rel.startswith("checkpoint/"):
            continue
        digest.update(rel.encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def base_model_dir(source: str, base_dir: Path, model_cache: Path) -> Path:
    """The local Hugging Face directory of ``spec.base_model.source``."""
    if source.startswith(("packaged:", "hub:")):
        from qingliang.serving.sources import resolve_source

        return resolve_source(source, model_cache, progress=False)
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = (base_dir / path).resolve()
    if not (path / "config.json").is_file():
        raise invalid(
            "spec.base_model.source",
            f"{source!r}: {path} is not a Hugging Face model directory (no config.json)",
        )
    return path


def base_model_name(job: FineTuneJob, path: Path) -> str:
    """The registry name of the job's base model (given, or derived from the source)."""
    if job.spec.base_model.name:
        return job.spec.base_model.name
    source = job.spec.base_model.source
    stem = source.split(":", 1)[1] if source.startswith(("packaged:", "hub:")) else path.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-")[:_NAME_MAX] or "base"


def next_job_name(registry: Any, prefix: str) -> str:
    """``<prefix>-<n>`` with n one more than the highest used."""
    used = [0]
    for j in registry.list_jobs():
        m = re.fullmatch(re.escape(prefix) + r"-(\d+)", j.name)
        if m:
            used.append(int(m.group(1)))
    return f"{prefix}-{max(used) + 1}"


def _ensure_base_model(registry: Any, name: str, source: str, path: Path) -> None:
    try:
        registry.get_base_model(name)
    except NotFound:
        registry.register_base_model(name, source=source or str(path), format="safetensors")


def _complete(out: Path) -> bool:
    return (out / "adapter_config.json").is_file() and (out / "metrics.json").is_file()


def run_job(
    emit: Emit,
    *,
    job: dict[str, Any],
    home: str,
    base_dir: str,
    job_name: str | None = None,
    dataset_version: str | None = None,
) -> dict[str, Any]:
    """Train (or resume, or reuse) the adapter of ``job`` and register it.

    Args:
        emit: receives ``{"kind": "log"|"progress", ...}`` events.
        job: the FineTuneJob manifest as a dict (validated here).
        home: the data directory (datasets, registry, adapters, model cache).
        base_dir: the manifest's folder (relative base model paths start there).
        job_name: the registry job name; default ``<metadata.name>-<n>`` (a new one).
        dataset_version: overrides ``spec.data.version`` (pipelines pass the version
            their govern step cut).

    Returns:
        ``{"job", "adapter", "adapter_path", "base_model", "base_model_path",
        "train", "eval", "metrics", "resumed_from_step", "reused"}``.

    Raises:
        InvalidFineTune: bad settings, data or base model. Rejected by the checks before
            training (:func:`~qingliang.platform.lifecycle.finetune.train.preflight`), the job
            writes
            nothing, in the registry either; a job that fails later is marked failed.
        FineTuneFailed: training could not go on.
        Conflict: ``job_name`` names a job that failed or was cancelled.
    """
    from qingliang.platform.lifecycle.data.store import DatasetStore
    from qingliang.platform.lifecycle.registry import Registry, record_dataset_version
    from qingliang.platform.settings import Settings

    manifest = FineTuneJob.model_validate(job)
    spec = manifest.spec
    settings = Settings(home=Path(home))
    version, train_records, eval_records = records = _records(
        DatasetStore.for_home(settings.home), spec, dataset_version
    )
    base_path = base_model_dir(spec.base_model.source, Path(base_dir), settings.model_cache)
    base_name = base_model_name(manifest, base_path)
    train_settings = manifest.settings()
    if train_settings.eval_every and not eval_records:
        raise invalid("spec.train.eval_every", "is set but the dataset has no eval records")

    with Registry(home=settings.home) as reg:
        name = job_name or next_job_name(reg, manifest.name)
        existing = _existing_job(reg, name)
        done = _succeeded_adapter(reg, name, existing, spec.output.adapter)
        if done is not None:
            emit({"kind": "log", "message": f"job {name} already succeeded: {done.ref}"})
            return _outcome(done, existing, base_path, eval_records, 0, reused=True)

    out = settings.home / ADAPTERS_DIR / spec.output.adapter / name
    data_sha = version.version.removeprefix("sha256:")
    complete, resume = _prepare(out, base_path, train_settings, data_sha, records)

    with Registry(home=settings.home) as reg:
        data_ref = record_dataset_version(reg, version).ref
        if existing is None:
            _ensure_base_model(reg, base_name, spec.base_model.source, base_path)
            _register_job(reg, name, spec.method, base_name, data_ref, train_settings, records)
        _mark_running(emit, reg, name, existing)

    if complete:
        emit({"kind": "log", "message": f"{out} holds a finished adapter; not training again"})
        metrics, resumed_from = json.loads((out / "metrics.json").read_text("utf-8")), 0
    else:
        what = f"{spec.output.adapter} ({spec.method}) on {data_ref}"
        run = (base_path, out, train_settings, data_sha, resume)
        metrics, resumed_from = _train(emit, name, settings.home, run, records, what)

    with Registry(home=settings.home) as reg:
        adapter, job_row = _register_adapter(reg, name, spec.output.adapter, out, metrics)
    emit({"kind": "log", "message": f"registered {adapter.ref} ({out})"})
    return _outcome(adapter, job_row, base_path, eval_records, resumed_from, reused=False)


def _register_job(
    reg: Any,
    name: str,
    method: Any,
    base_name: str,
    data_ref: str,
    train_settings: Any,
    records: tuple[Any, list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    """Record job ``name`` in the registry before it trains (its eval data only when the
    version has eval records)."""
    reg.register_job(
        name,
        method=method,
        base_model=base_name,
        train=[data_ref],
        eval=[data_ref] if records[2] else [],
        settings=json.loads(json.dumps(asdict(train_settings))),
    )


def _mark_running(emit: Emit, reg: Any, name: str, existing: Any) -> None:
    """Mark job ``name`` running unless it already is (a new, pending or interrupted one)."""
    if existing is None or existing.status in ("pending", "interrupted"):
        if existing is not None and existing.status == "interrupted":
            emit({"kind": "log", "message": f"job {name} was interrupted; continuing it"})
        reg.set_job_status(name, "running")


def _existing_job(reg: Any, name: str) -> Any:
    """The registry's job ``name`` (None if new); one that failed or was cancelled is
    refused."""
    try:
        existing = reg.get_job(name)
    except NotFound:
        return None
    if existing.status in ("failed", "cancelled"):
        raise Conflict(
            f"job {name!r} {existing.status} earlier ({existing.error or 'no reason'}); "
            "run it under a new name",
            param="job",
        )
    return existing


def _succeeded_adapter(reg: Any, name: str, existing: Any, adapter_name: str) -> Any:
    """The adapter job ``name`` registered, if it already succeeded (None otherwise)."""
    if existing is None or existing.status != "succeeded":
        return None
    found = [a for a in reg.list_adapters(adapter_name) if a.job == name]
    return found[0] if found else None


def _register_adapter(
    reg: Any, name: str, adapter_name: str, out: Path, metrics: dict[str, Any]
) -> tuple[Any, Any]:
    """Register the adapter job ``name`` wrote in ``out`` (unless a resumed run already
    did) and mark the job succeeded; the adapter and the job."""
    summary = _summary(metrics)
    found = [a for a in reg.list_adapters(adapter_name) if a.job == name]
    adapter = found[0] if found else None
    if adapter is None:
        adapter = reg.register_adapter(
            adapter_name,
            path=str(out),
            sha256=adapter_files_sha256(out),
            job=name,
            metrics=summary,
        )
    job_row = reg.get_job(name)
    if job_row.status == "running":
        job_row = reg.set_job_status(name, "succeeded", metrics=summary)
    return adapter, job_row


def _records(
    store: Any, spec: Any, dataset_version: str | None
) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    """The dataset version a job trains on, and its train and eval records (capped as the
    job's ``spec.data`` says)."""
    wanted = dataset_version or (None if spec.data.version == "latest" else spec.data.version)
    try:
        version = store.get(spec.data.dataset, wanted)
    except NotFound as exc:
        raise invalid("spec.data", f"{exc} (apply the Dataset manifest first)") from None
    train_records = store.read(spec.data.dataset, version.version, "train")
    if spec.data.max_train_records:
        train_records = train_records[: spec.data.max_train_records]
    eval_records = store.read(spec.data.dataset, version.version, "eval")[
        : spec.data.max_eval_records
    ]
    return version, train_records, eval_records


def _prepare(
    out: Path,
    base_path: Path,
    train_settings: Any,
    data_sha: str,
    records: tuple[Any, list[dict[str, Any]], list[dict[str, Any]]],
) -> tuple[bool, bool]:
    """Whether ``out`` holds a finished adapter, and else whether the job resumes from a
    checkpoint there, after checking it (:func:`~.train.preflight`): a job the checks
    reject writes nothing, in the registry either (it never started)."""
    from qingliang.platform.lifecycle.finetune.train import preflight

    if _complete(out):
        return True, False
    _, train_records, eval_records = records
    resume = _clear_unresumable(out)
    preflight(
        base_path,
        train_records,
        out,
        train_settings,
        eval_records=eval_records,
        data_sha256=data_sha,
        resume=resume,
    )
    return False, resume


def _clear_unresumable(out: Path) -> bool:
    """Whether ``out`` holds a checkpoint to resume from; files of a job killed before its
    first checkpoint are removed (nothing worth keeping)."""
    resume = (out / "checkpoint" / "state.json").is_file()
    if out.is_dir() and any(out.iterdir()) and not resume:
        aside = out.with_name(f"{out.name}.incomplete-{int(time.time())}")
        out.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
    return resume


def _train(
    emit: Emit,
    name: str,
    home: Path,
    run: tuple[Path, Path, Any, str, bool],
    records: tuple[Any, list[dict[str, Any]], list[dict[str, Any]]],
    what: str,
) -> tuple[dict[str, Any], int]:
    """Train job ``name`` (``run``: base model path, output folder, settings, data sha256,
    resume; ``what``: the adapter, method and data, for the log); its metrics and the step
    it resumed from. A failure marks the job failed in
    the registry."""
    from qingliang.platform.lifecycle.finetune.train import train
    from qingliang.platform.lifecycle.registry import Registry

    base_path, out, train_settings, data_sha, resume = run
    _, train_records, eval_records = records
    resumed_from = 0
    if resume:
        state = json.loads((out / "checkpoint" / "state.json").read_text("utf-8"))
        resumed_from = int(state.get("step", 0))
        emit({"kind": "log", "message": f"resuming {name} from step {resumed_from}"})
    sizes = f"{len(train_records)} train / {len(eval_records)} eval records"
    emit({"kind": "log", "message": f"training {what}: {sizes}"})
    try:
        result = train(
            base_path,
            train_records,
            out,
            train_settings,
            eval_records=eval_records,
            data_sha256=data_sha,
            on_progress=lambda ev: emit(_progress(ev)),
            resume=resume,
        )
    except Exception as exc:
        with Registry(home=home) as reg:
            reg.set_job_status(name, "failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    if result.stopped:
        raise FineTuneFailed(f"job {name} stopped at step {result.steps}")
    return dict(result.metrics), resumed_from


def _progress(event: dict[str, Any]) -> dict[str, Any]:
    """A training callback event as a job event: ``phase`` train|eval, ``train_step``."""
    out = {k: v for k, v in event.items() if k not in ("kind", "step")}
    return {"kind": "progress", "phase": event.get("kind"), "train_step": event.get("step"), **out}


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The figures kept in the registry (the full history stays in metrics.json)."""
    out: dict[str, Any] = {
        k: metrics[k]
        for k in ("method", "steps", "final_eval_loss", "train_time_s", "peak_rss_mb", "records")
        if k in metrics
    }
    losses = [h.get("loss") for h in metrics.get("train_loss") or [] if isinstance(h, dict)]
    losses = [x for x in losses if isinstance(x, int | float)]
    if losses:
        out["first_train_loss"], out["final_train_loss"] = losses[0], losses[-1]
    return out


def _outcome(
    adapter: Any, job: Any, base_path: Path, eval_records: list, resumed: int, *, reused: bool
) -> dict[str, Any]:
    return {
        "job": job.name,
        "adapter": adapter.ref,
        "adapter_path": adapter.path,
        "base_model": job.base_model,
        "base_model_path": str(base_path),
        "train": list(job.train),
        "eval": list(job.eval),
        "eval_records": len(eval_records),
        "metrics": dict(job.metrics or adapter.metrics),
        "resumed_from_step": resumed,
        "reused": reused,
    }


def run_evaluation(
    emit: Emit,
    *,
    home: str,
    adapter: str,
    base_model_path: str,
    dataset: str,
    version: str,
    max_records: int = 64,
    max_new_tokens: int = 64,
    must_match: list[str] | None = None,
    must_not_match: list[str] | None = None,
) -> dict[str, Any]:
    """Score ``adapter`` (``name@N``) against its base on the dataset's eval split.

    Returns ``{"adapter", "records", "metrics": {name: {"base", "adapter"}}}``. The
    metrics are stored on the adapter (``eval.<metric>`` and ``eval.base.<metric>``) and
    its status becomes ``evaluated``; run again, it returns the stored metrics.
    """
    from qingliang.platform.lifecycle.data.store import DatasetStore
    from qingliang.platform.lifecycle.finetune.evaluate import evaluate_adapter
    from qingliang.platform.lifecycle.registry import Registry

    with Registry(home=Path(home)) as reg:
        row = reg.get_adapter(adapter)
        stored = row.metrics.get("evaluation")
        if isinstance(stored, dict) and row.status != "registered":
            emit({"kind": "log", "message": f"{adapter} was evaluated before; reusing it"})
            return {"adapter": adapter, **stored}
    records = DatasetStore.for_home(Path(home)).read(dataset, version, "eval")[:max_records]
    if not records:
        raise invalid("evaluate", f"dataset {dataset}@{version} has no eval records to score")
    emit({"kind": "log", "message": f"evaluating {adapter} on {len(records)} held-out records"})
    report = evaluate_adapter(
        base_model_path,
        row.path,
        records,
        max_new_tokens=max_new_tokens,
        must_match=must_match or (),
        must_not_match=must_not_match or (),
    )
    metrics = {
        k: {"base": round(m.base, 6), "adapter": round(m.adapter, 6)}
        for k, m in report.metrics.items()
    }
    result: dict[str, Any] = {
        "records": len(records),
        "metrics": metrics,
        "samples": [asdict(s) for s in report.samples[:3]],
    }
    with Registry(home=Path(home)) as reg:
        reg.set_status(adapter, "evaluated", metrics={"evaluation": result})
    emit({"kind": "eval", **metrics})
    return {"adapter": adapter, **result}
