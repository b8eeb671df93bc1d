"""Follow what a valid manifest refers to, reading files but changing nothing.

Validation (:mod:`qingliang.platform.manifests.loader`) stays pure: it never looks at a
file a manifest names. This is the separate step ``qingliang validate`` runs after it, so
that a manifest which would fail as soon as it runs fails validation instead:

* ``Pipeline``: each ``govern`` step's ``dataset`` and each ``finetune`` step's ``job``
  file exists and holds exactly one manifest of that kind, valid, whose own references
  are checked in turn; a job must train on the dataset the pipeline's ``govern`` step cuts.
* ``Dataset``: every source names at least one file (a glob at least one match) whose
  format can be told.
* ``FineTuneJob``: a local ``spec.base_model.source`` is a Hugging Face model folder
  (``packaged:`` and ``hub:`` sources are left to the run: checking them downloads or
  converts).

Every issue names the field of the manifest that refers, and what is wrong at the other
end (itself a path when the referenced manifest is invalid)::

    pipeline.yaml: spec.steps[1].job: job.yaml: spec.lora.r: Input should be greater than ...

Example:
    >>> from qingliang.platform.manifests.loader import load_paths
    >>> for item in load_paths([Path("deploy/examples")]):  # doctest: +SKIP
    ...     check_references(item)
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel

from qingliang.platform.errors import FieldIssue, ManifestError
from qingliang.platform.lifecycle.data.manifest import Dataset
from qingliang.platform.lifecycle.data.sources import check_sources
from qingliang.platform.lifecycle.finetune.manifest import FineTuneJob
from qingliang.platform.lifecycle.pipelines.manifest import FinetuneStep, GovernStep, Pipeline

logger = logging.getLogger(__name__)


def check_references(item: object) -> None:
    """Raise :class:`ManifestError` (naming ``item``'s file) listing every reference of a
    loaded manifest (:class:`~qingliang.platform.manifests.loader.Loaded`) that cannot
    be followed; other kinds pass."""
    source = str(getattr(item, "source", ""))
    manifest = getattr(item, "manifest", None)
    issues = reference_issues(manifest, _folder_of(source)) if manifest is not None else []
    if issues:
        raise ManifestError(issues, source)


def reference_issues(manifest: BaseModel, base: Path) -> list[FieldIssue]:
    """The references of ``manifest`` (relative ones start at ``base``) that cannot be
    followed, as issues at the referring field; empty when every one can."""
    if isinstance(manifest, Pipeline):
        return _pipeline(manifest, base)
    if isinstance(manifest, Dataset):
        return [FieldIssue(path, message) for path, message in check_sources(manifest.spec, base)]
    if isinstance(manifest, FineTuneJob):
        return _finetune_job(manifest, base)
    return []


def _folder_of(source: str) -> Path:
    # A file holding several manifests labels each `file.yaml[i]`: the folder is the same.
    return Path(source).parent if source else Path()


def _pipeline(pipeline: Pipeline, base: Path) -> list[FieldIssue]:
    issues: list[FieldIssue] = []
    cuts: dict[str, str] = {}  # dataset name -> the file of the govern step that cuts it
    jobs: list[tuple[str, str, FineTuneJob]] = []
    for i, step in enumerate(pipeline.spec.steps):
        if isinstance(step, GovernStep):
            field, kind, ref = f"spec.steps[{i}].dataset", Dataset, step.dataset
        elif isinstance(step, FinetuneStep):
            field, kind, ref = f"spec.steps[{i}].job", FineTuneJob, step.job
        else:
            continue
        manifest, found = _load_one(base / ref, kind)
        issues.extend(FieldIssue(field, f"{ref}: {message}") for message in found)
        if isinstance(manifest, Dataset):
            cuts[manifest.name] = ref
        elif isinstance(manifest, FineTuneJob):
            jobs.append((field, ref, manifest))
    if cuts:
        for field, ref, job in jobs:
            dataset = job.spec.data.dataset
            if dataset not in cuts:
                issues.append(
                    FieldIssue(
                        field,
                        f"{ref}: spec.data.dataset: the job trains on {dataset!r} but the "
                        f"govern step cuts {', '.join(repr(n) for n in sorted(cuts))}",
                    )
                )
    return issues


def _load_one(path: Path, kind: type[BaseModel]) -> tuple[BaseModel | None, list[str]]:
    """The one manifest of ``kind`` in ``path`` and what is wrong with it or its own
    references (messages relative to ``path``)."""
    import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
    from qingliang.platform.manifests.loader import parse_documents

    if not path.is_file():
        return None, [f"no such file (looked at {path})"]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"cannot read {path}: {exc}"]
    try:
        loaded = parse_documents(text, path.name)
    except ManifestError as exc:
        return None, [i.render(None) for i in exc.issues]
    found = [item.manifest for item in loaded if isinstance(item.manifest, kind)]
    if len(found) != 1:
        return None, [f"must hold exactly one {kind.__name__}, found {len(found)}"]
    nested = reference_issues(found[0], path.parent)
    return found[0], [i.render(None) for i in nested]


def _finetune_job(job: FineTuneJob, base: Path) -> list[FieldIssue]:
    source = job.spec.base_model.source
    if source.startswith(("packaged:", "hub:")):
        return []
    path = Path(source).expanduser()
    path = path if path.is_absolute() else base / path
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json"
        return [
            FieldIssue(
                "spec.base_model.source",
                f"{source!r}: {path} {what}: not a Hugging Face model folder",
            )
        ]
    return []
