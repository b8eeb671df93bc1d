"""What the registry returns (frozen records), how things are named, and the status rules.

Every entity has a string *ref* used throughout the API and in lineage:

=================  ==========================  ==========================================
kind               ref                          example
=================  ==========================  ==========================================
``base_model``     name                         ``qwen2.5-0.5b``
``dataset_version`` dataset@version             ``faq@sha256:9f86d0…``
``job``            name                         ``faq-lora-0007``
``adapter``        name@version                 ``faq-bot@3``
``quantized``      name                         ``qwen2.5-0.5b-awq``
``deployment``     name                         ``support``
=================  ==========================  ==========================================

Adapter statuses (``ADAPTER_TRANSITIONS``; ``*`` marks moves only :meth:`Registry.set_serving`
makes, because they follow from what deployments serve)::

    registered -> evaluated, retired, stale
    evaluated  -> evaluated (re-evaluated), approved, retired, stale
    approved   -> canary*, serving*, retired, stale
    canary     -> serving*, approved*, stale
    serving    -> canary*, approved*, stale
    stale      -> retired
    retired    -> (nothing)

A stale adapter is never promoted again; an adapter a deployment still serves cannot be
retired (end its serving first). Jobs: ``pending -> running | interrupted | failed |
cancelled``, ``running -> succeeded | interrupted | failed | cancelled``, ``interrupted ->
running | failed | cancelled`` (``interrupted``: the process driving it died; run again
under its name, it resumes from its last training checkpoint).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from qingliang.platform.errors import BadRequest

Kind = Literal["base_model", "dataset_version", "job", "adapter", "quantized", "deployment"]
KINDS: tuple[Kind, ...] = (
    "base_model",
    "dataset_version",
    "job",
    "adapter",
    "quantized",
    "deployment",
)
AdapterStatus = Literal[
    "registered", "evaluated", "approved", "canary", "serving", "retired", "stale"
]
JobStatus = Literal["pending", "running", "interrupted", "succeeded", "failed", "cancelled"]

ADAPTER_TRANSITIONS: Mapping[str, frozenset[str]] = {
    "registered": frozenset({"evaluated", "retired", "stale"}),
    "evaluated": frozenset({"evaluated", "approved", "retired", "stale"}),
    "approved": frozenset({"canary", "serving", "retired", "stale"}),
    "canary": frozenset({"serving", "approved", "stale"}),
    "serving": frozenset({"canary", "approved", "stale"}),
    "stale": frozenset({"retired"}),
    "retired": frozenset(),
}
#: Statuses that follow from deployments: set only by ``set_serving``.
SERVED: frozenset[str] = frozenset({"canary", "serving"})
#: Statuses from which an adapter may be (or stay) deployed.
DEPLOYABLE: frozenset[str] = frozenset({"approved", "canary", "serving"})

JOB_TRANSITIONS: Mapping[str, frozenset[str]] = {
    "pending": frozenset({"running", "interrupted", "failed", "cancelled"}),
    "running": frozenset({"succeeded", "interrupted", "failed", "cancelled"}),
    "interrupted": frozenset({"running", "failed", "cancelled"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}

# Lineage relations, read "<to> <relation> <from>" (edges point downstream).
TRAINED_ON = "trained_on"  # dataset_version -> job
EVALUATED_ON = "evaluated_on"  # dataset_version -> job
FINE_TUNES = "fine_tunes"  # base_model -> job
PRODUCED_BY = "produced_by"  # job -> adapter
ADAPTS = "adapts"  # base_model -> adapter (an adapter registered without a job)
MERGED_FROM = "merged_from"  # adapter -> base_model (a merged model)
QUANTIZED_FROM = "quantized_from"  # base_model -> quantized
SERVES = "serves"  # adapter | base_model | quantized -> deployment
DERIVED_FROM = "derived_from"  # dataset_version -> dataset_version
INITIALIZED_FROM = "initialized_from"  # adapter -> job (training continued from it)

#: Relations :meth:`Registry.link` may add, with the kinds they join (from, to).
LINKABLE: Mapping[str, tuple[Kind, Kind]] = {
    DERIVED_FROM: ("dataset_version", "dataset_version"),
    INITIALIZED_FROM: ("adapter", "job"),
}
#: Relations through which superseded training data makes adapters stale. Evaluation data
#: does not (it never enters the weights), serving does not (a deployment is no input), and
#: ``derived_from`` does not: the version that replaces a superseded one is usually derived
#: from it, so whoever supersedes a version supersedes the derived versions that still hold
#: the withdrawn records too.
PROPAGATES_STALENESS: frozenset[str] = frozenset(
    {TRAINED_ON, FINE_TUNES, PRODUCED_BY, ADAPTS, MERGED_FROM, INITIALIZED_FROM}
)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TOKEN = re.compile(r"[a-z0-9][a-z0-9._-]{0,39}")
_VERSION = re.compile(r"sha256:[0-9a-f]{64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_name(value: str, what: str) -> str:
    """``value`` if it is a valid name (letters, digits, ``.``, ``_``, ``-``; at most 128;
    no ``@``, ``:`` or ``/``, which refs and routes use), else :class:`BadRequest`."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise BadRequest(
            f"{what} {value!r} is not a valid name: use 1-128 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit",
            param=what,
        )
    return value


def check_token(value: str, what: str) -> str:
    """A short lowercase identifier such as a format or a quantisation method."""
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise BadRequest(
            f"{what} {value!r} is not valid: use 1-40 lowercase letters, digits, '.', '_', '-'",
            param=what,
        )
    return value


def check_version(value: str, what: str = "version") -> str:
    """A dataset version id: ``sha256:`` and 64 lowercase hex digits."""
    if not isinstance(value, str) or not _VERSION.fullmatch(value):
        raise BadRequest(
            f"{what} {value!r} is not a content address: expected 'sha256:' followed by 64 "
            "lowercase hex digits",
            param=what,
        )
    return value


def check_sha256(value: str, what: str = "sha256") -> str:
    """64 lowercase hex digits (a leading ``sha256:`` is accepted and dropped)."""
    if isinstance(value, str) and value.startswith("sha256:"):
        value = value[len("sha256:") :]
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise BadRequest(f"{what} {value!r} is not 64 lowercase hex digits", param=what)
    return value


def split_dataset_ref(ref: str) -> tuple[str, str]:
    """``"faq@sha256:…"`` -> ``("faq", "sha256:…")``."""
    dataset, sep, version = ref.partition("@") if isinstance(ref, str) else ("", "", "")
    if not sep:
        raise BadRequest(
            f"dataset version {ref!r}: expected 'dataset@sha256:<64 hex>'", param="dataset"
        )
    return check_name(dataset, "dataset"), check_version(version)


def split_adapter_ref(ref: str, *, need_version: bool = True) -> tuple[str, int | None]:
    """``"bot@3"`` -> ``("bot", 3)``; ``"bot"`` -> ``("bot", None)`` unless a version is
    required."""
    name, sep, version = ref.partition("@") if isinstance(ref, str) else ("", "", "")
    check_name(name, "adapter")
    if not sep:
        if need_version:
            raise BadRequest(
                f"adapter {ref!r}: give the version too, as '{name}@<version>'", param="adapter"
            )
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise BadRequest(
            f"adapter {ref!r}: the version after '@' must be a positive integer", param="adapter"
        )
    return name, int(version)


def check_kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise BadRequest(f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}", param="kind")
    return kind  # type: ignore[return-value]


@dataclass(frozen=True)
class BaseModel:
    """A model weights are loaded from: a hub id or path, or a model merged from an
    adapter (``merged_from`` names it)."""

    name: str
    source: str
    format: str
    revision: str | None
    sha256: str | None
    size_bytes: int | None
    created_at: datetime
    merged_from: str | None = None

    @property
    def ref(self) -> str:
        return self.name


@dataclass(frozen=True)
class DatasetVersion:
    """A content-addressed dataset version (written by the DatasetStore, recorded here)."""

    dataset: str
    version: str
    record_counts: dict[str, int]
    report: dict[str, Any]
    status: Literal["active", "superseded"]
    superseded_by: str | None
    superseded_reason: str | None
    superseded_at: datetime | None
    created_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.dataset}@{self.version}"


@dataclass(frozen=True)
class Job:
    """A fine-tuning run; ``train`` and ``eval`` are dataset version refs."""

    name: str
    method: Literal["lora", "qlora"]
    base_model: str
    train: tuple[str, ...]
    eval: tuple[str, ...]
    settings: dict[str, Any]
    status: JobStatus
    metrics: dict[str, Any]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def ref(self) -> str:
        return self.name


@dataclass(frozen=True)
class Adapter:
    """One version of a LoRA adapter."""

    name: str
    version: int
    path: str
    sha256: str
    base_model: str
    job: str | None
    metrics: dict[str, Any]
    status: AdapterStatus
    stale_reason: str | None
    created_at: datetime
    status_changed_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class StatusEvent:
    """One status change of an adapter (``from_status`` is None for its registration)."""

    adapter: str
    from_status: str | None
    to_status: str
    reason: str
    at: datetime


@dataclass(frozen=True)
class Quantized:
    """A quantised artifact of a base (or merged) model."""

    name: str
    model: str
    method: str
    path: str
    size_bytes: int | None
    sha256: str | None
    settings: dict[str, Any]
    created_at: datetime

    @property
    def ref(self) -> str:
        return self.name


@dataclass(frozen=True)
class Assignment:
    """A deployment served ``target`` (an adapter, base model or quantised artifact) with
    this share of its traffic from ``started_at`` until ``ended_at`` (None: still)."""

    deployment: str
    target_kind: Literal["adapter", "base_model", "quantized"]
    target: str
    share: float
    started_at: datetime
    ended_at: datetime | None


@dataclass(frozen=True)
class LineageNode:
    """A node reached by a lineage walk, with the relation of the edge that led to it."""

    kind: Kind
    ref: str
    relation: str
    status: str | None = None
    children: tuple[LineageNode, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ref": self.ref,
            "relation": self.relation,
            "status": self.status,
            "children": [c.to_dict() for c in self.children],
        }


@dataclass(frozen=True)
class Lineage:
    """Where a node came from (``upstream``) and what came of it (``downstream``).

    Example:
        >>> reg.lineage("adapter", "faq-bot@3").refs("dataset_version")  # doctest: +SKIP
        {'faq@sha256:9f86d0…'}
    """

    kind: Kind
    ref: str
    status: str | None
    upstream: tuple[LineageNode, ...]
    downstream: tuple[LineageNode, ...]

    def refs(
        self, kind: Kind, direction: Literal["upstream", "downstream", "both"] = "both"
    ) -> set[str]:
        """Refs of every node of ``kind`` reached in that direction."""
        roots: tuple[LineageNode, ...] = ()
        if direction in ("upstream", "both"):
            roots += self.upstream
        if direction in ("downstream", "both"):
            roots += self.downstream
        found: set[str] = set()
        stack = list(roots)
        while stack:
            node = stack.pop()
            if node.kind == kind:
                found.add(node.ref)
            stack.extend(node.children)
        return found

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ref": self.ref,
            "status": self.status,
            "upstream": [n.to_dict() for n in self.upstream],
            "downstream": [n.to_dict() for n in self.downstream],
        }
