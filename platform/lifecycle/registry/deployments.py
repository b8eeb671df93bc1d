"""Deployments in the registry: what each one serves, as intervals with traffic shares.

Reached as ``Registry(...).deployments``. Declaring what a deployment serves ends the
intervals that changed and starts new ones; adapter statuses follow (``serving`` with a
full share, ``canary`` with a partial one, ``approved`` when no longer served).

Example:
    >>> reg.deployments.set_serving("support", model="qwen2.5-0.5b",
    ...                             adapters={"faq-bot@3": 0.9, "faq-bot@4": 0.1})  # doctest: +SKIP
    >>> shares = {a.target: a.share for a in reg.deployments.serving("support")}  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import select

from qingliang.platform.errors import BadRequest
from qingliang.platform.lifecycle.registry import _checks, _rows, _serving
from qingliang.platform.lifecycle.registry.quantized import Sessions
from qingliang.platform.lifecycle.registry.records import (
    Assignment,
    check_name,
    split_adapter_ref,
)
from qingliang.platform.lifecycle.registry.tables import AssignmentRow, DeploymentRow

logger = logging.getLogger(__name__)


class Deployments:
    """Declare and read what deployments serve (the registry's ``deployments`` attribute)."""

    def __init__(self, read: Sessions, write: Sessions) -> None:
        self._read = read
        self._write = write

    def set_serving(
        self,
        deployment: str,
        *,
        model: str | None = None,
        quantized: str | None = None,
        adapters: Mapping[str, float] | None = None,
    ) -> list[Assignment]:
        """Declare what ``deployment`` serves from now on: a base ``model`` or a
        ``quantized`` artifact, and ``adapters`` as ``{"name@version": share}``, the share
        of the traffic for that adapter name (``{"bot@3": 0.9, "bot@4": 0.1}`` is a canary).
        Intervals that changed end now and new ones start; giving nothing records that the
        deployment stopped. Adapter statuses follow: ``serving`` with a full share
        somewhere, ``canary`` with a partial one, ``approved`` when no longer served.

        Returns:
            What the deployment serves now.

        Raises:
            BadRequest: both model and quantized, adapters without a model, an adapter for
                another base model, shares outside (0, 1] or over 1 for one adapter name.
            Conflict: a newly served adapter is not approved (or canary/serving), e.g. stale.
        """
        check_name(deployment, "deployment")
        if adapters is not None and not isinstance(adapters, Mapping):
            raise BadRequest("adapters must map 'name@version' to a share", param="adapters")
        wanted = dict(adapters or {})
        if model is not None and quantized is not None:
            raise BadRequest(
                f"deployment {deployment!r}: give model or quantized, not both", param="model"
            )
        if wanted and model is None and quantized is None:
            raise BadRequest(
                f"deployment {deployment!r}: adapters need the model they run on (model= or "
                "quantized=)",
                param="adapters",
            )
        for ref, share in wanted.items():
            split_adapter_ref(ref)
            _checks.share(share, ref)
        with self._write() as s:
            return _serving.set_serving(s, deployment, model, quantized, wanted)

    def serving(self, deployment: str, at: datetime | None = None) -> list[Assignment]:
        """What ``deployment`` serves now, or served at time ``at`` (timezone-aware)."""
        if at is not None and at.tzinfo is None:
            raise BadRequest("at must be timezone-aware", param="at")
        with self._read() as s:
            return _serving.open_assignments(s, _rows.by_name(s, "deployment", deployment).id, at)

    def history(self, deployment: str) -> list[Assignment]:
        """Every interval of ``deployment``, in the order they started."""
        with self._read() as s:
            dep = _rows.by_name(s, "deployment", deployment)
            rows = s.scalars(
                select(AssignmentRow)
                .where(AssignmentRow.deployment_id == dep.id)
                .order_by(AssignmentRow.started_at, AssignmentRow.id)
            )
            return [_rows.assignment_record(s, r) for r in rows]

    def names(self) -> list[str]:
        with self._read() as s:
            return list(s.scalars(select(DeploymentRow.name).order_by(DeploymentRow.name)))
