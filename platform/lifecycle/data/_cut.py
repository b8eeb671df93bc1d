"""What a cut and a deletion's re-cut store, and what retention removes (helpers of
``store``).

Pure functions: the records a cut keeps split into train and eval, its ``report.json``,
why a cut holding nothing is refused, the files of a version with some records taken
out (every other line kept byte for byte) and the versions retention no longer keeps.
The store does the locking, the writing and the bookkeeping in SQLite.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from qingliang.platform.lifecycle.data._governance import Governed, is_eval
from qingliang.platform.lifecycle.data._versions import FILES, Files, split_lines, text_of
from qingliang.platform.lifecycle.data.manifest import DatasetSpec, Retention
from qingliang.platform.lifecycle.data.sources import ReadResult

logger = logging.getLogger(__name__)

#: A stored version's parts as read back: train, eval, quarantine, report.
Loaded = tuple[list, list, list, dict]


def split_records(
    governed: Governed, spec: DatasetSpec
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The governed records as stored, split into (train, eval) by the manifest's split."""
    train: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    for rec in governed.records:
        held_out = is_eval(rec.id, spec.split.eval_fraction, spec.split.seed)
        (evals if held_out else train).append(rec.stored())
    return train, evals


def cut_report(
    name: str,
    spec: DatasetSpec,
    *,
    actor: str,
    now: float,
    settings: str,
    read: ReadResult,
    dropped: list[str],
    governed: Governed,
    counts: tuple[int, int, int],
    warnings: list[str],
) -> dict[str, Any]:
    """The ``report.json`` of a cut (its ``version`` is filled in once the files are
    hashed); ``counts`` are the train, eval and quarantine lengths."""
    train, evals, quarantined = counts
    return {
        "dataset": name,
        "version": "",
        "created_at": now,
        "actor": actor,
        "format": spec.format,
        "settings_hash": settings,
        "sources": read.sources,
        "read": {
            "rows": sum(s["rows"] for s in read.sources),
            "records": len(read.records),
            "quarantined": len(read.quarantine),
            "ignored_fields": dict(sorted(read.ignored_fields.items())),
        },
        "corrections": read.corrections,
        "tombstoned": {"removed": len(dropped), "ids": dropped[:10]},
        "steps": governed.steps,
        "split": {**spec.split.model_dump(), "train": train, "eval": evals},
        "records": train + evals,
        "quarantined": quarantined,
        "deletions": [],
        "warnings": warnings,
    }


def record_matcher(record_id: str | None, match: str | None) -> Callable[[dict[str, Any]], bool]:
    """Whether a stored line is the record ``record_id`` (or corrects it), or holds the
    text ``match``."""

    def hit(item: dict[str, Any]) -> bool:
        if record_id is not None:
            meta = item.get("metadata")
            corrects = meta.get("corrects") if isinstance(meta, dict) else None
            return record_id in (item.get("id"), corrects)
        return match is not None and match in text_of(item)

    return hit


def recut_files(
    old: Any,
    loaded: Loaded,
    hit: Callable[[dict[str, Any]], bool],
    deletion: dict[str, Any],
) -> Files:
    """The files of ``old`` (a stored :class:`~.store.DatasetVersion`) without the lines
    ``hit`` matches, every other line kept byte for byte; ``deletion`` (record_ids,
    reason, actor, at) is added to the report's ``deletions``. Its ``version`` is filled
    in by the caller once hashed."""
    path: Path = old.path
    kept_bytes, removed = [], {}
    for fname, items in zip(FILES, loaded[:3], strict=True):
        stored = split_lines((path / fname).read_bytes())
        keep = [ln for ln, item in zip(stored, items, strict=True) if not hit(item)]
        removed[fname.removesuffix(".jsonl")] = len(stored) - len(keep)
        kept_bytes.append(b"".join(keep))
    report = dict(loaded[3])
    manifest = json.loads((path / "manifest.json").read_text("utf-8"))
    report["deletions"] = [
        *report.get("deletions", []),
        {
            "from": old.version,
            "record_ids": deletion["record_ids"],
            "removed": removed,
            "reason": deletion["reason"],
            "actor": deletion["actor"],
            "at": deletion["at"],
        },
    ]
    train = report["split"]["train"] = old.train - removed["train"]
    evals = report["split"]["eval"] = old.eval - removed["eval"]
    report["records"] = train + evals
    report["quarantined"] = old.quarantined - removed["quarantine"]
    report["created_at"], report["actor"] = deletion["at"], deletion["actor"]
    return Files(kept_bytes[0], kept_bytes[1], kept_bytes[2], report, manifest)


def retention_doomed(rules: Retention, versions: list[Any], now: float) -> dict[str, str]:
    """The active ``versions`` (newest first) that ``rules`` no longer keeps, never the
    latest: version id -> why."""
    doomed: dict[str, str] = {}
    others = [v for v in versions if not v.latest]
    if rules.max_versions is not None:
        for v in others[max(rules.max_versions - 1, 0) :]:
            doomed[v.version] = f"retention: max_versions {rules.max_versions}"
    if rules.max_age_days is not None:
        limit = now - rules.max_age_days * 86400
        for v in others:
            if v.created_at < limit:
                doomed.setdefault(
                    v.version, f"retention: older than max_age_days {rules.max_age_days:g}"
                )
    return doomed


def nothing_left(name: str, read: ReadResult, reasons: Mapping[str, int]) -> str:
    """Why a cut would store no record, counted by reason (most frequent first)."""
    rows = sum(int(s["rows"]) for s in read.sources)
    head = (
        f"dataset {name}: no record is left to store, so no version was cut "
        f"({rows} rows read from {len(read.sources)} file(s))"
    )
    if not rows:
        return head + ": the sources hold no rows"
    top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    parts = [f"{reason} ({n})" for reason, n in top[:10]]
    if len(top) > 10:
        parts.append(f"{len(top) - 10} more reason(s)")
    return head + "; dropped by reason: " + "; ".join(parts)


def split_warnings(name: str, eval_fraction: float, train: int, evals: int) -> list[str]:
    """What is worth saying about a cut's split: an empty eval or train split."""
    out = []
    if not evals and eval_fraction > 0:
        out.append(
            f"dataset {name}: the eval split is empty (split.eval_fraction {eval_fraction:g} "
            f"held out none of {train} records); an evaluate step or an eval loss needs eval "
            "records: add records or raise split.eval_fraction"
        )
    if not train:
        out.append(
            f"dataset {name}: the train split is empty (all {evals} records are held out "
            "for evaluation); a fine-tune job needs train records"
        )
    return out
