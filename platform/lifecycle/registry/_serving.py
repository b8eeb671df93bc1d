"""What deployments serve: one interval per (deployment, target), and the adapter
statuses that follow from them (``approved`` / ``canary`` / ``serving``)."""

from __future__ import annotations

import math
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from qingliang.platform.errors import BadRequest, Conflict
from qingliang.platform.lifecycle.registry import _lifecycle, _rows
from qingliang.platform.lifecycle.registry.records import DEPLOYABLE, SERVES, Assignment
from qingliang.platform.lifecycle.registry.tables import AdapterRow, AssignmentRow, DeploymentRow

_KIND = {"adapter_id": "adapter", "model_id": "base_model", "quantized_id": "quantized"}


def set_serving(
    s: Session,
    deployment: str,
    model: str | None,
    quantized: str | None,
    wanted: dict[str, float],
) -> list[Assignment]:
    """See :meth:`Registry.set_serving`; inputs are checked for shape already."""
    at = _rows.now()
    dep = s.scalar(select(DeploymentRow).where(DeploymentRow.name == deployment))
    if dep is None:
        dep = DeploymentRow(name=deployment, created_at=at)
        s.add(dep)
        s.flush()
    desired: dict[tuple[str, int], float] = {}
    base_id: int | None = None
    if model is not None:
        base_id = _rows.by_name(s, "base_model", model).id
        desired[("model_id", base_id)] = 1.0
    if quantized is not None:
        q = _rows.by_name(s, "quantized", quantized)
        base_id = q.model_id
        desired[("quantized_id", q.id)] = 1.0
    rows: dict[int, AdapterRow] = {}
    per_name: dict[str, float] = {}
    for ref, share in wanted.items():
        row = _rows.adapter(s, ref)
        if row.base_model_id != base_id:
            raise BadRequest(
                f"deployment {deployment!r}: adapter {ref} was made for "
                f"{_rows.ref_of(s, 'base_model', row.base_model_id)!r}, not for the "
                "model it would serve",
                param="adapters",
            )
        rows[row.id] = row
        desired[("adapter_id", row.id)] = float(share)
        per_name[row.name] = per_name.get(row.name, 0.0) + float(share)
    for adapter_name, total in per_name.items():
        if total > 1.0 + 1e-9:
            raise BadRequest(
                f"deployment {deployment!r}: the shares of adapter {adapter_name!r} "
                f"add up to {total:g}, more than 1",
                param="adapters",
            )
    opened = _apply(s, dep, desired, rows, at)
    reason = f"deployment {deployment}"
    for row in opened:
        _lifecycle.sync_served_status(s, row, reason, at)
    s.flush()
    return open_assignments(s, dep.id)


def _apply(
    s: Session,
    dep: DeploymentRow,
    desired: dict[tuple[str, int], float],
    rows: dict[int, AdapterRow],
    at: datetime,
) -> list[AdapterRow]:
    """End changed intervals, open new ones; return every adapter touched."""
    touched: dict[int, AdapterRow] = dict(rows)
    open_rows = s.scalars(
        select(AssignmentRow).where(
            AssignmentRow.deployment_id == dep.id, AssignmentRow.ended_at.is_(None)
        )
    ).all()
    keep: set[tuple[str, int]] = set()
    for a in open_rows:
        key = _target_key(a)
        new_share = desired.get(key)
        if new_share is not None and math.isclose(new_share, a.share):
            keep.add(key)
            continue
        if a.adapter_id is not None:
            adapter = s.get(AdapterRow, a.adapter_id)
            assert adapter is not None
            touched[adapter.id] = adapter
            if new_share is not None and new_share > a.share and adapter.status not in DEPLOYABLE:
                raise Conflict(
                    f"deployment {dep.name!r}: adapter {adapter.name}@{adapter.version} is "
                    f"{adapter.status}; its share can only go down",
                    param="adapters",
                )
        a.ended_at = at
    s.flush()  # ended intervals first: the open-interval unique indexes
    open_before = {_target_key(a) for a in open_rows}
    for key, share in desired.items():
        if key in keep:
            continue
        if key[0] == "adapter_id" and key not in open_before:
            adapter = rows[key[1]]
            if adapter.status not in DEPLOYABLE:
                hint = f" ({adapter.stale_reason})" if adapter.status == "stale" else ""
                raise Conflict(
                    f"deployment {dep.name!r}: adapter {adapter.name}@{adapter.version} is "
                    f"{adapter.status}{hint}; only an approved adapter can be deployed",
                    param="adapters",
                )
        s.add(AssignmentRow(deployment_id=dep.id, share=share, started_at=at, **{key[0]: key[1]}))
        _rows.add_edge(s, (_KIND[key[0]], key[1]), ("deployment", dep.id), SERVES)
    s.flush()
    return list(touched.values())


def open_assignments(
    s: Session, deployment_id: int, at: datetime | None = None
) -> list[Assignment]:
    stmt = select(AssignmentRow).where(AssignmentRow.deployment_id == deployment_id)
    if at is None:
        stmt = stmt.where(AssignmentRow.ended_at.is_(None))
    else:
        stmt = stmt.where(
            AssignmentRow.started_at <= at,
            or_(AssignmentRow.ended_at.is_(None), AssignmentRow.ended_at > at),
        )
    rows = s.scalars(stmt.order_by(AssignmentRow.id))
    return [_rows.assignment_record(s, r) for r in rows]


def open_deployments(s: Session, adapter_id: int) -> list[str]:
    names = s.scalars(
        select(DeploymentRow.name)
        .join(AssignmentRow, AssignmentRow.deployment_id == DeploymentRow.id)
        .where(AssignmentRow.adapter_id == adapter_id, AssignmentRow.ended_at.is_(None))
        .order_by(DeploymentRow.name)
    )
    return list(names)


def _target_key(a: AssignmentRow) -> tuple[str, int]:
    if a.adapter_id is not None:
        return ("adapter_id", a.adapter_id)
    if a.model_id is not None:
        return ("model_id", a.model_id)
    assert a.quantized_id is not None
    return ("quantized_id", a.quantized_id)
