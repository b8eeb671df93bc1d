"""Jobs and adapters inside one write session: who trained what from what, adapter
versions and statuses. Input shapes are checked by the caller (``Registry``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from qingliang.platform.errors import BadRequest, Conflict
from qingliang.platform.lifecycle.registry import _lifecycle, _rows, _serving
from qingliang.platform.lifecycle.registry.records import (
    ADAPTS,
    EVALUATED_ON,
    FINE_TUNES,
    JOB_TRANSITIONS,
    PRODUCED_BY,
    TRAINED_ON,
    Adapter,
    Job,
)
from qingliang.platform.lifecycle.registry.tables import (
    AdapterEventRow,
    AdapterRow,
    JobDatasetRow,
    JobRow,
)


def register_job(
    s: Session,
    name: str,
    method: str,
    base_model: str,
    train: Sequence[str],
    eval: Sequence[str],
    opts: dict[str, Any],
) -> Job:
    """See :meth:`Registry.register_job`."""
    old = s.scalar(select(JobRow).where(JobRow.name == name))
    if old is not None:
        raise Conflict(f"job {name!r} is already registered ({old.status})", param="job")
    base = _rows.by_name(s, "base_model", base_model)
    used = {("train", r): _rows.dataset_version(s, r) for r in train}
    used.update({("eval", r): _rows.dataset_version(s, r) for r in eval})
    inputs = [("base_model", base.id)] + [("dataset_version", d.id) for d in used.values()]
    causes = _lifecycle.stale_causes(s, inputs)
    if causes:
        raise Conflict(
            f"job {name!r} would train on stale inputs: {'; '.join(causes)}", param="job"
        )
    at = _rows.now()
    row = JobRow(
        name=name,
        method=method,
        settings=opts,
        base_model_id=base.id,
        status="pending",
        metrics={},
        created_at=at,
    )
    s.add(row)
    s.flush()
    _rows.add_edge(s, ("base_model", base.id), ("job", row.id), FINE_TUNES)
    for (role, _ref), dv in used.items():
        s.add(JobDatasetRow(job_id=row.id, dataset_version_id=dv.id, role=role))
        relation = TRAINED_ON if role == "train" else EVALUATED_ON
        _rows.add_edge(s, ("dataset_version", dv.id), ("job", row.id), relation)
    s.flush()
    return _rows.job_record(s, row)


def set_job_status(
    s: Session,
    name: str,
    status: str,
    values: dict[str, Any] | None,
    error: str | None,
) -> Job:
    """See :meth:`Registry.set_job_status`."""
    row = _rows.by_name(s, "job", name)
    if status != row.status and status not in JOB_TRANSITIONS[row.status]:
        allowed = ", ".join(sorted(JOB_TRANSITIONS[row.status])) or "nothing (final)"
        raise Conflict(
            f"job {name!r} cannot go from {row.status} to {status} (from {row.status}: {allowed})",
            param="status",
        )
    at = _rows.now()
    if status == "running" and row.started_at is None:
        row.started_at = at
    if status in ("succeeded", "failed", "cancelled") and row.finished_at is None:
        row.finished_at = at
    row.status = status
    if values is not None:
        row.metrics = values
    if error is not None:
        row.error = error
    s.flush()
    return _rows.job_record(s, row)


def register_adapter(
    s: Session,
    name: str,
    path: str,
    digest: str,
    job: str | None,
    base_model: str | None,
    values: dict[str, Any],
) -> Adapter:
    """See :meth:`Registry.register_adapter`."""
    job_row = None if job is None else _rows.by_name(s, "job", job)
    if job_row is not None:
        if job_row.status not in ("running", "succeeded"):
            raise Conflict(
                f"adapter {name!r}: job {job!r} is {job_row.status}; only a running or "
                "succeeded job produces adapters",
                param="job",
            )
        base_id = job_row.base_model_id
        if base_model is not None and _rows.by_name(s, "base_model", base_model).id != base_id:
            raise BadRequest(
                f"adapter {name!r}: job {job!r} fine-tuned "
                f"{_rows.ref_of(s, 'base_model', base_id)!r}, not {base_model!r}",
                param="base_model",
            )
    else:
        base_id = _rows.by_name(s, "base_model", str(base_model)).id
    same = s.scalar(select(AdapterRow).where(AdapterRow.name == name, AdapterRow.sha256 == digest))
    if same is not None:
        raise Conflict(
            f"adapter {name!r}: these files are already registered as {name}@{same.version}",
            param="adapter",
        )
    at = _rows.now()
    row = AdapterRow(
        name=name,
        version=_rows.next_adapter_version(s, name),
        path=path,
        sha256=digest,
        base_model_id=base_id,
        job_id=None if job_row is None else job_row.id,
        metrics=values,
        status="registered",
        created_at=at,
        status_changed_at=at,
    )
    s.add(row)
    s.flush()
    s.add(
        AdapterEventRow(
            adapter_id=row.id, from_status=None, to_status="registered", reason="", at=at
        )
    )
    if job_row is not None:
        _rows.add_edge(s, ("job", job_row.id), ("adapter", row.id), PRODUCED_BY)
    else:
        _rows.add_edge(s, ("base_model", base_id), ("adapter", row.id), ADAPTS)
    causes = _lifecycle.stale_causes(s, [("adapter", row.id)])
    if causes:
        _lifecycle.transition(s, row, "stale", "; ".join(causes), at)
    s.flush()
    return _rows.adapter_record(s, row)


def set_status(
    s: Session,
    adapter: str,
    status: str,
    reason: str,
    values: dict[str, Any] | None,
) -> Adapter:
    """See :meth:`Registry.set_status`."""
    row = _rows.adapter(s, adapter)
    name, version = row.name, row.version
    current = row.status
    if values is not None:
        row.metrics = {**row.metrics, **values}
    if status == current and status != "evaluated":
        s.flush()
        return _rows.adapter_record(s, row)
    _lifecycle.check_transition(row, status)
    if status == "retired":
        served = _serving.open_deployments(s, row.id)
        if served:
            raise Conflict(
                f"adapter {name}@{version} cannot be retired: deployment(s) "
                f"{', '.join(served)} still serve it; take it out of them first",
                param="status",
            )
    at = _rows.now()
    _lifecycle.transition(s, row, status, reason, at)
    if status == "stale":
        cause = f"built from adapter {name}@{version}, marked stale: {reason}"
        _lifecycle.mark_stale_downstream(s, [("adapter", row.id, cause)], at)
    s.flush()
    return _rows.adapter_record(s, row)
