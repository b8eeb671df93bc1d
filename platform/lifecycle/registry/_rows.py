"""Inside one session: find rows by ref (NotFound with a hint), turn rows into records,
and read or add lineage edges."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from qingliang.platform.errors import NotFound, closest
from qingliang.platform.lifecycle.registry.records import (
    MERGED_FROM,
    Adapter,
    Assignment,
    BaseModel,
    DatasetVersion,
    Job,
    Kind,
    LineageNode,
    Quantized,
    split_adapter_ref,
    split_dataset_ref,
)
from qingliang.platform.lifecycle.registry.tables import (
    AdapterRow,
    AssignmentRow,
    BaseModelRow,
    DatasetVersionRow,
    DeploymentRow,
    EdgeRow,
    JobDatasetRow,
    JobRow,
    QuantizedRow,
)

ROWS: dict[str, Any] = {
    "base_model": BaseModelRow,
    "dataset_version": DatasetVersionRow,
    "job": JobRow,
    "adapter": AdapterRow,
    "quantized": QuantizedRow,
    "deployment": DeploymentRow,
}
_LABEL = {
    "base_model": "base model",
    "dataset_version": "dataset version",
    "job": "job",
    "adapter": "adapter",
    "quantized": "quantized artifact",
    "deployment": "deployment",
}


def now() -> datetime:
    return datetime.now(UTC)


def _missing(what: str, value: str, names: Iterable[str]) -> NotFound:
    near = closest(value, names)
    hint = f"; did you mean {near!r}?" if near else ""
    return NotFound(f"no {what} {value!r} in the registry{hint}", param=what.replace(" ", "_"))


def by_name(s: Session, kind: Kind, name: str) -> Any:
    """The row of a named entity (base_model, job, quantized, deployment)."""
    row_type = ROWS[kind]
    row = s.scalar(select(row_type).where(row_type.name == name))
    if row is None:
        raise _missing(_LABEL[kind], name, s.scalars(select(row_type.name)))
    return row


def dataset_version(s: Session, ref: str) -> DatasetVersionRow:
    dataset, version = split_dataset_ref(ref)
    row = s.scalar(
        select(DatasetVersionRow).where(
            DatasetVersionRow.dataset == dataset, DatasetVersionRow.version == version
        )
    )
    if row is not None:
        return row
    known = s.scalars(
        select(DatasetVersionRow.version)
        .where(DatasetVersionRow.dataset == dataset)
        .order_by(DatasetVersionRow.id.desc())
    ).all()
    if not known:
        raise _missing("dataset", dataset, s.scalars(select(DatasetVersionRow.dataset).distinct()))
    raise NotFound(
        f"dataset {dataset!r} has no version {version} in the registry (newest: {known[0]})",
        param="dataset_version",
    )


def adapter(s: Session, ref: str, *, need_version: bool = True) -> AdapterRow:
    """``name@version``, or with ``need_version=False`` also ``name`` (its newest)."""
    name, version = split_adapter_ref(ref, need_version=need_version)
    versions = s.scalars(
        select(AdapterRow.version).where(AdapterRow.name == name).order_by(AdapterRow.version)
    ).all()
    if not versions:
        raise _missing("adapter", name, s.scalars(select(AdapterRow.name).distinct()))
    if version is None:
        version = versions[-1]
    elif version not in versions:
        raise NotFound(
            f"adapter {name!r} has no version {version} (it has {versions[0]}..{versions[-1]})",
            param="adapter",
        )
    row = s.scalar(select(AdapterRow).where(AdapterRow.name == name, AdapterRow.version == version))
    assert row is not None
    return row


def find(s: Session, kind: Kind, ref: str) -> Any:
    """The row of any kind by its ref."""
    if kind == "dataset_version":
        return dataset_version(s, ref)
    if kind == "adapter":
        return adapter(s, ref)
    return by_name(s, kind, ref)


def ref_of(s: Session, kind: str, row_id: int) -> str:
    row = s.get(ROWS[kind], row_id)
    assert row is not None, (kind, row_id)
    if kind == "dataset_version":
        return f"{row.dataset}@{row.version}"
    if kind == "adapter":
        return f"{row.name}@{row.version}"
    return str(row.name)


def status_of(s: Session, kind: str, row_id: int) -> str | None:
    if kind not in ("dataset_version", "job", "adapter"):
        return None
    row = s.get(ROWS[kind], row_id)
    return None if row is None else str(row.status)


# -- edges ---------------------------------------------------------------------------------


def add_edge(s: Session, src: tuple[str, int], dst: tuple[str, int], relation: str) -> bool:
    """Add ``dst relation src`` unless it is there; True if added."""
    exists = s.scalar(
        select(EdgeRow.id).where(
            EdgeRow.from_kind == src[0],
            EdgeRow.from_id == src[1],
            EdgeRow.to_kind == dst[0],
            EdgeRow.to_id == dst[1],
            EdgeRow.relation == relation,
        )
    )
    if exists is not None:
        return False
    s.add(
        EdgeRow(
            from_kind=src[0],
            from_id=src[1],
            to_kind=dst[0],
            to_id=dst[1],
            relation=relation,
            created_at=now(),
        )
    )
    s.flush()
    return True


def neighbours(
    s: Session, node: tuple[str, int], *, upstream: bool, relations: frozenset[str] | None = None
) -> list[tuple[str, int, str]]:
    """``(kind, id, relation)`` of the nodes one edge up- or downstream of ``node``."""
    if upstream:
        stmt = select(EdgeRow.from_kind, EdgeRow.from_id, EdgeRow.relation).where(
            EdgeRow.to_kind == node[0], EdgeRow.to_id == node[1]
        )
    else:
        stmt = select(EdgeRow.to_kind, EdgeRow.to_id, EdgeRow.relation).where(
            EdgeRow.from_kind == node[0], EdgeRow.from_id == node[1]
        )
    if relations is not None:
        stmt = stmt.where(EdgeRow.relation.in_(relations))
    return [(k, i, r) for k, i, r in s.execute(stmt.order_by(EdgeRow.id))]


def reachable(
    s: Session,
    starts: Iterable[tuple[str, int]],
    *,
    upstream: bool,
    relations: frozenset[str] | None = None,
) -> list[tuple[str, int]]:
    """Every node reachable from ``starts`` (not included), breadth first."""
    seen = set(starts)
    queue = list(seen)
    out: list[tuple[str, int]] = []
    while queue:
        node = queue.pop(0)
        for kind, row_id, _rel in neighbours(s, node, upstream=upstream, relations=relations):
            if (kind, row_id) not in seen:
                seen.add((kind, row_id))
                out.append((kind, row_id))
                queue.append((kind, row_id))
    return out


# -- records -------------------------------------------------------------------------------


def base_model_record(s: Session, row: BaseModelRow) -> BaseModel:
    merged = s.scalar(
        select(EdgeRow.from_id).where(
            EdgeRow.to_kind == "base_model",
            EdgeRow.to_id == row.id,
            EdgeRow.relation == MERGED_FROM,
        )
    )
    return BaseModel(
        name=row.name,
        source=row.source,
        format=row.format,
        revision=row.revision,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        created_at=row.created_at,
        merged_from=None if merged is None else ref_of(s, "adapter", merged),
    )


def dataset_record(row: DatasetVersionRow) -> DatasetVersion:
    return DatasetVersion(
        dataset=row.dataset,
        version=row.version,
        record_counts=dict(row.record_counts),
        report=dict(row.report),
        status=row.status,  # type: ignore[arg-type]
        superseded_by=row.superseded_by,
        superseded_reason=row.superseded_reason,
        superseded_at=row.superseded_at,
        created_at=row.created_at,
    )


def job_record(s: Session, row: JobRow) -> Job:
    used = s.execute(
        select(JobDatasetRow.role, DatasetVersionRow.dataset, DatasetVersionRow.version)
        .join(DatasetVersionRow, DatasetVersionRow.id == JobDatasetRow.dataset_version_id)
        .where(JobDatasetRow.job_id == row.id)
        .order_by(DatasetVersionRow.dataset, DatasetVersionRow.version)
    ).all()
    return Job(
        name=row.name,
        method=row.method,  # type: ignore[arg-type]
        base_model=ref_of(s, "base_model", row.base_model_id),
        train=tuple(f"{d}@{v}" for role, d, v in used if role == "train"),
        eval=tuple(f"{d}@{v}" for role, d, v in used if role == "eval"),
        settings=dict(row.settings),
        status=row.status,  # type: ignore[arg-type]
        metrics=dict(row.metrics),
        error=row.error,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def adapter_record(s: Session, row: AdapterRow) -> Adapter:
    return Adapter(
        name=row.name,
        version=row.version,
        path=row.path,
        sha256=row.sha256,
        base_model=ref_of(s, "base_model", row.base_model_id),
        job=None if row.job_id is None else ref_of(s, "job", row.job_id),
        metrics=dict(row.metrics),
        status=row.status,  # type: ignore[arg-type]
        stale_reason=row.stale_reason,
        created_at=row.created_at,
        status_changed_at=row.status_changed_at,
    )


def quantized_record(s: Session, row: QuantizedRow) -> Quantized:
    return Quantized(
        name=row.name,
        model=ref_of(s, "base_model", row.model_id),
        method=row.method,
        path=row.path,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        settings=dict(row.settings),
        created_at=row.created_at,
    )


def assignment_record(s: Session, row: AssignmentRow) -> Assignment:
    if row.adapter_id is not None:
        kind, target = "adapter", ref_of(s, "adapter", row.adapter_id)
    elif row.model_id is not None:
        kind, target = "base_model", ref_of(s, "base_model", row.model_id)
    else:
        assert row.quantized_id is not None
        kind, target = "quantized", ref_of(s, "quantized", row.quantized_id)
    return Assignment(
        deployment=ref_of(s, "deployment", row.deployment_id),
        target_kind=kind,  # type: ignore[arg-type]
        target=target,
        share=row.share,
        started_at=row.started_at,
        ended_at=row.ended_at,
    )


def next_adapter_version(s: Session, name: str) -> int:
    top = s.scalar(select(func.max(AdapterRow.version)).where(AdapterRow.name == name))
    return 1 if top is None else int(top) + 1


def tree(
    s: Session, node: tuple[str, int], upstream: bool, depth: int | None, path: set
) -> tuple[LineageNode, ...]:
    if depth == 0:
        return ()
    out = []
    for kind, row_id, relation in neighbours(s, node, upstream=upstream):
        nxt = (kind, row_id)
        if nxt in path:
            continue
        below = tree(s, nxt, upstream, None if depth is None else depth - 1, path | {nxt})
        out.append(
            LineageNode(
                kind=kind,  # type: ignore[arg-type]
                ref=ref_of(s, kind, row_id),
                relation=relation,
                status=status_of(s, kind, row_id),
                children=below,
            )
        )
    return tuple(out)
