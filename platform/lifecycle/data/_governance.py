"""The governance steps of a Dataset, run in the manifest's order (helpers of ``store``).

Each step takes the records that reached it and reports ``in`` / ``out`` counts and what it
removed or changed, by reason. ``schema`` sends the records it rejects to the quarantine
(they are malformed, a person should look at them); ``dedup`` and ``quality`` remove
records by rule and list example ids; ``pii`` rewrites text and counts findings per kind.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from qingliang.platform.errors import ResolveError
from qingliang.platform.lifecycle.data.dedup import Deduplicator
from qingliang.platform.lifecycle.data.manifest import (
    DatasetSpec,
    DedupStep,
    GovernanceStep,
    PiiStep,
    QualityStep,
    SchemaStep,
)
from qingliang.platform.lifecycle.data.pii import PiiScanner
from qingliang.platform.lifecycle.data.quality import QualityFilter
from qingliang.platform.lifecycle.data.sources import RAW_CHARS, Record, canonical

logger = logging.getLogger(__name__)

#: Example ids listed per reason in the report.
EXAMPLES = 10


@dataclass
class Governed:
    records: list[Record]
    quarantine: list[dict[str, Any]]
    steps: list[dict[str, Any]]


def build_scanner(spec: DatasetSpec, env: Mapping[str, str]) -> PiiScanner | None:
    """The PII scanner of the ``pii`` step (None when absent or off); checks ``salt_env``."""
    step = spec.step("pii")
    if not isinstance(step, PiiStep) or not step.enabled:
        return None
    salt = None
    if step.mode == "hash":
        assert step.salt_env is not None
        salt = env.get(step.salt_env)
        if not salt:
            i = spec.governance.index(step)
            raise ResolveError(
                f"spec.governance[{i}].salt_env: the environment variable {step.salt_env} "
                "is not set (it holds the salt of mode hash)"
            )
    return PiiScanner(
        kinds=step.kinds,
        patterns=[p.build() for p in step.patterns],
        mode=step.mode,
        salt=salt,
    )


def texts(content: dict[str, Any], part: str) -> str:
    """The text of a record a step looks at: ``conversation``, ``prompt`` or ``output``."""
    if "messages" in content:
        msgs = content["messages"]
        if part == "prompt":
            msgs = [m for m in msgs if m["role"] != "assistant"]
        elif part == "output":
            msgs = [m for m in msgs if m["role"] == "assistant"]
        return "\n".join(m["content"] for m in msgs)
    fields = {
        "conversation": ("instruction", "input", "output"),
        "prompt": ("instruction", "input"),
        "output": ("output",),
    }[part]
    return "\n".join(content[f] for f in fields if content.get(f))


def govern(records: list[Record], spec: DatasetSpec, scanner: PiiScanner | None) -> Governed:
    """Run every governance step of ``spec`` in order."""
    quarantine: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    for step in spec.governance:
        entry: dict[str, Any] = {"step": step.step, "enabled": step.enabled, "in": len(records)}
        if step.enabled:
            records = _RUN[type(step)](step, records, entry, quarantine, scanner)
        entry["out"] = len(records)
        steps.append(entry)
    return Governed(records, quarantine, steps)


# ---------------------------------------------------------------------------- schema


def schema_problem(content: dict[str, Any], step: SchemaStep) -> tuple[str, str] | None:
    """(reason class, detail) of the first rule ``content`` breaks, or None."""
    if "messages" not in content:
        for f in ("instruction", "output"):
            if not content[f].strip():
                return "empty content", f"{f}: is empty"
        return None
    msgs = content["messages"]
    if len(msgs) > step.max_messages:
        return "too many messages", f"{len(msgs)} messages > max_messages {step.max_messages}"
    for i, m in enumerate(msgs):
        if m["role"] not in step.roles:
            return "wrong role", f"messages[{i}].role: {m['role']!r} is not one of " + ", ".join(
                step.roles
            )
        if not m["content"].strip():
            return "empty content", f"messages[{i}].content: is empty"
        if m["role"] == "system" and i:
            return "system not first", f"messages[{i}]: a system message may only come first"
    if not any(m["role"] == "assistant" for m in msgs):
        return "no assistant message", "messages: no assistant message to learn from"
    if step.require_assistant_last and msgs[-1]["role"] != "assistant":
        return "assistant not last", "messages: the last message is not the assistant's"
    return None


def _schema(
    step: GovernanceStep,
    records: list[Record],
    entry: dict[str, Any],
    quarantine: list[dict[str, Any]],
    scanner: PiiScanner | None,
) -> list[Record]:
    assert isinstance(step, SchemaStep)
    kept, reasons = [], Counter[str]()
    for rec in records:
        problem = schema_problem(rec.content, step)
        if problem is None:
            kept.append(rec)
            continue
        reasons[problem[0]] += 1
        where, n = rec.where
        item = {"source": rec.source, where: n, "step": "schema", "reason": problem[1]}
        item["id"] = rec.id
        item["record"] = redact_content(rec.content, scanner)
        quarantine.append(item)
    entry["quarantined"] = len(records) - len(kept)
    entry["reasons"] = dict(sorted(reasons.items()))
    return kept


# ------------------------------------------------------------------------------- pii


def redact_content(content: dict[str, Any], scanner: PiiScanner | None) -> dict[str, Any]:
    """``content`` with every text redacted (for quarantine copies; all roles)."""
    if scanner is None:
        return content
    if "messages" in content:
        return {
            "messages": [
                {"role": m["role"], "content": scanner.redact(m["content"]).text}
                for m in content["messages"]
            ]
        }
    return {k: scanner.redact(v).text for k, v in content.items()}


def redact_raw(raw: str, scanner: PiiScanner | None) -> str:
    return raw if scanner is None else scanner.redact(raw[:RAW_CHARS]).text


def _pii(
    step: GovernanceStep,
    records: list[Record],
    entry: dict[str, Any],
    quarantine: list[dict[str, Any]],
    scanner: PiiScanner | None,
) -> list[Record]:
    assert isinstance(step, PiiStep) and scanner is not None
    findings, in_records = Counter[str](), Counter[str]()
    changed: list[str] = []

    def redact(text: str, seen: Counter[str]) -> str:
        r = scanner.redact(text)
        seen.update(r.counts)
        return r.text

    for rec in records:
        seen = Counter[str]()
        if "messages" in rec.content:
            rec.content = {
                "messages": [
                    {
                        "role": m["role"],
                        "content": redact(m["content"], seen)
                        if m["role"] in step.roles
                        else m["content"],
                    }
                    for m in rec.content["messages"]
                ]
            }
        else:
            rec.content = {k: redact(v, seen) for k, v in rec.content.items()}
        if seen:
            findings.update(seen)
            in_records.update(seen.keys())
            changed.append(rec.id)
    entry["mode"] = step.mode
    entry["records_changed"] = len(changed)
    entry["findings"] = {
        k: {"redacted": findings[k], "records": in_records[k]} for k in sorted(findings)
    }
    entry["examples"] = changed[:EXAMPLES]
    return records


# ----------------------------------------------------------------------------- dedup


def _dedup(
    step: GovernanceStep,
    records: list[Record],
    entry: dict[str, Any],
    quarantine: list[dict[str, Any]],
    scanner: PiiScanner | None,
) -> list[Record]:
    assert isinstance(step, DedupStep)
    dedup = Deduplicator(step.settings())
    decisions = dedup.run((str(i), texts(r.content, step.scope)) for i, r in enumerate(records))
    kept, removed = [], Counter[str]()
    examples: list[dict[str, Any]] = []
    for rec, d in zip(records, decisions, strict=True):
        if d.kept:
            kept.append(rec)
            continue
        assert d.reason is not None and d.duplicate_of is not None
        removed[d.reason] += 1
        if sum(e["reason"] == d.reason for e in examples) < EXAMPLES:
            examples.append(
                {
                    "id": rec.id,
                    "reason": d.reason,
                    "duplicate_of": records[int(d.duplicate_of)].id,
                    "similarity": round(float(d.similarity or 0.0), 3),
                }
            )
    entry["scope"] = step.scope
    entry["removed"] = {k: removed[k] for k in ("exact", "near")}
    entry["examples"] = examples
    return kept


# --------------------------------------------------------------------------- quality


def _quality(
    step: GovernanceStep,
    records: list[Record],
    entry: dict[str, Any],
    quarantine: list[dict[str, Any]],
    scanner: PiiScanner | None,
) -> list[Record]:
    assert isinstance(step, QualityStep)
    check = QualityFilter(step.settings()).check
    kept, rules = [], Counter[str]()
    examples: list[dict[str, Any]] = []
    for rec in records:
        reasons = check(texts(rec.content, step.scope))
        if not reasons:
            kept.append(rec)
            continue
        rules.update({r.partition(":")[0] for r in reasons})
        if len(examples) < EXAMPLES:
            examples.append({"id": rec.id, "reasons": reasons})
    entry["scope"] = step.scope
    entry["removed"] = dict(sorted(rules.items()))
    entry["examples"] = examples
    return kept


_Step = Callable[
    [GovernanceStep, list[Record], dict[str, Any], list[dict[str, Any]], PiiScanner | None],
    list[Record],
]
_RUN: dict[type, _Step] = {
    SchemaStep: _schema,
    PiiStep: _pii,
    DedupStep: _dedup,
    QualityStep: _quality,
}


# ----------------------------------------------------------------------------- split


def is_eval(record_id: str, fraction: float, seed: int) -> bool:
    """Whether a record is held out: a hash of seed and id against ``fraction``."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def settings_hash(spec: DatasetSpec) -> str:
    """sha256 of what shapes a version besides its records: format, governance, split."""
    body = {
        "format": spec.format,
        "governance": [s.model_dump(mode="json") for s in spec.governance],
        "split": spec.split.model_dump(mode="json"),
    }
    return hashlib.sha256(canonical(body).encode()).hexdigest()
