"""Adapter status changes and staleness, inside one write session.

The invariant kept here: an adapter is stale when anything it was trained from (through
the relations in ``PROPAGATES_STALENESS``) is a superseded dataset version or a stale
adapter — whichever happened first, the supersession or the adapter's registration.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from qingliang.platform.errors import BadRequest, Conflict, NotFound
from qingliang.platform.lifecycle.registry import _rows
from qingliang.platform.lifecycle.registry.records import (
    ADAPTER_TRANSITIONS,
    DEPLOYABLE,
    PROPAGATES_STALENESS,
    SERVED,
    check_version,
    split_dataset_ref,
)
from qingliang.platform.lifecycle.registry.tables import (
    AdapterEventRow,
    AdapterRow,
    AssignmentRow,
    DatasetVersionRow,
)

logger = logging.getLogger(__name__)

#: Shares at or above this serve all of an adapter's traffic (floats from JSON/YAML).
FULL_SHARE = 1.0 - 1e-9


def transition(s: Session, row: AdapterRow, to: str, reason: str, at: datetime) -> None:
    """Record ``row`` moving to ``to`` (callers have checked that it may)."""
    s.add(
        AdapterEventRow(
            adapter_id=row.id, from_status=row.status, to_status=to, reason=reason, at=at
        )
    )
    row.status = to
    row.status_changed_at = at
    if to == "stale":
        row.stale_reason = reason


def stale_causes(s: Session, nodes: Iterable[tuple[str, int]]) -> list[str]:
    """Why something trained from ``nodes`` would be stale: superseded dataset versions and
    stale adapters among them and upstream of them."""
    nodes = list(nodes)
    upstream = _rows.reachable(s, nodes, upstream=True, relations=PROPAGATES_STALENESS)
    causes: list[str] = []
    for kind, row_id in [*nodes, *upstream]:
        if kind == "dataset_version":
            dv = s.get(DatasetVersionRow, row_id)
            if dv is not None and dv.status == "superseded":
                causes.append(
                    f"dataset version {dv.dataset}@{dv.version} was superseded by "
                    f"{dv.superseded_by}"
                    + (f" ({dv.superseded_reason})" if dv.superseded_reason else "")
                )
        elif kind == "adapter":
            ad = s.get(AdapterRow, row_id)
            if ad is not None and ad.status == "stale":
                causes.append(f"adapter {ad.name}@{ad.version} is stale")
    return causes


def mark_stale_downstream(
    s: Session, starts: Iterable[tuple[str, int, str]], at: datetime
) -> list[AdapterRow]:
    """Mark stale every adapter downstream of each ``(kind, id, reason)`` start that is not
    stale or retired yet; return them (each once, with the first reason that reached it)."""
    marked: dict[int, AdapterRow] = {}
    for kind, row_id, reason in starts:
        reached = _rows.reachable(
            s, [(kind, row_id)], upstream=False, relations=PROPAGATES_STALENESS
        )
        for node_kind, node_id in reached:
            if node_kind != "adapter" or node_id in marked:
                continue
            row = s.get(AdapterRow, node_id)
            if row is None or row.status in ("stale", "retired"):
                continue
            transition(s, row, "stale", reason, at)
            marked[node_id] = row
    s.flush()
    return list(marked.values())


def open_shares(s: Session, adapter_id: int) -> list[float]:
    return list(
        s.scalars(
            select(AssignmentRow.share).where(
                AssignmentRow.adapter_id == adapter_id, AssignmentRow.ended_at.is_(None)
            )
        )
    )


def sync_served_status(s: Session, row: AdapterRow, reason: str, at: datetime) -> None:
    """After a deployment change: ``serving`` if a deployment gives it all its traffic,
    ``canary`` if one gives it a share, else back to ``approved``. Stale adapters stay
    stale."""
    if row.status not in DEPLOYABLE:
        return
    shares = open_shares(s, row.id)
    if any(share >= FULL_SHARE for share in shares):
        to = "serving"
    elif shares:
        to = "canary"
    else:
        to = "approved"
    if to != row.status:
        transition(s, row, to, reason, at)


def supersede(s: Session, superseded: Mapping[str, str], why: str) -> list[str]:
    """See :meth:`Registry.mark_stale_from_dataset`."""
    pairs = [
        (row, _replacement(s, row, new))
        for old, new in superseded.items()
        for row in _versions(s, old)
    ]
    _check_no_cycle(pairs)
    at = _rows.now()
    starts: list[tuple[str, int, str]] = []
    for row, new in pairs:
        if row.status == "superseded" and row.superseded_by != new:
            raise Conflict(
                f"dataset version {row.dataset}@{row.version} is already superseded "
                f"by {row.superseded_by}, not {new}",
                param="superseded",
            )
        if row.status != "superseded":
            row.status, row.superseded_by = "superseded", new
            row.superseded_reason, row.superseded_at = why, at
        starts.append(
            (
                "dataset_version",
                row.id,
                f"{why}: built from dataset version {row.dataset}@{row.version}, "
                f"superseded by {new}",
            )
        )
    s.flush()
    marked = mark_stale_downstream(s, starts, at)
    refs = sorted((r.name, r.version) for r in marked)
    if refs:
        logger.info("registry: %d adapter(s) marked stale: %s", len(refs), why)
    return [f"{n}@{v}" for n, v in refs]


def _versions(s: Session, old: str) -> list[DatasetVersionRow]:
    if isinstance(old, str) and "@" in old:
        return [_rows.dataset_version(s, old)]
    check_version(old, "superseded")
    rows = list(s.scalars(select(DatasetVersionRow).where(DatasetVersionRow.version == old)))
    if not rows:
        raise NotFound(f"no dataset version {old} in the registry", param="superseded")
    return rows


def _replacement(s: Session, row: DatasetVersionRow, new: str) -> str:
    if isinstance(new, str) and "@" in new:
        dataset, version = split_dataset_ref(new)
        if dataset != row.dataset:
            raise BadRequest(
                f"{row.dataset}@{row.version} cannot be superseded by a version of another "
                f"dataset ({new})",
                param="superseded",
            )
    else:
        version = check_version(new, "superseded")
    if version == row.version:
        raise BadRequest(f"{row.dataset}@{version} cannot supersede itself", param="superseded")
    repl = s.scalar(
        select(DatasetVersionRow).where(
            DatasetVersionRow.dataset == row.dataset, DatasetVersionRow.version == version
        )
    )
    if repl is None:
        raise NotFound(
            f"dataset {row.dataset!r} has no version {version}: register it before it "
            f"supersedes {row.version}",
            param="superseded",
        )
    if repl.status == "superseded":
        raise Conflict(
            f"{row.dataset}@{version} is itself superseded by {repl.superseded_by}",
            param="superseded",
        )
    return version


def _check_no_cycle(pairs: list[tuple[DatasetVersionRow, str]]) -> None:
    nxt = {(row.dataset, row.version): (row.dataset, new) for row, new in pairs}
    for start in nxt:
        seen, cur = {start}, nxt[start]
        while cur in nxt:
            if cur in seen:
                raise BadRequest(
                    f"superseded versions of dataset {start[0]!r} form a cycle", param="superseded"
                )
            seen.add(cur)
            cur = nxt[cur]


def check_transition(row: AdapterRow, to: str) -> None:
    ref, current = f"{row.name}@{row.version}", row.status
    if to in SERVED or (current in SERVED and to == "approved"):
        raise Conflict(
            f"adapter {ref}: {current} -> {to} follows from deployments; use set_serving",
            param="status",
        )
    allowed = ADAPTER_TRANSITIONS[current]
    if to not in allowed:
        why = f" ({row.stale_reason})" if current == "stale" and row.stale_reason else ""
        listed = ", ".join(sorted(allowed)) or "nothing (final)"
        raise Conflict(
            f"adapter {ref} cannot go from {current} to {to}{why}; from {current} it can go "
            f"to {listed}",
            param="status",
        )
