"""Rewards of routing decisions: named parts, checked, combined with manifest weights.

A decision's reward arrives in parts, from different places and at different times:

===========  ==================  ===============================================
part         values              from
===========  ==================  ===============================================
feedback     -1 … 1              explicit user feedback (``/v1/feedback``)
approval     -1, 0.5, 1          a human rejected / edited / approved the result
success      0 or 1              the run finished its task
latency_s    >= 0 (seconds)      the run's wall time
tokens       >= 0                tokens the run spent
===========  ==================  ===============================================

:func:`combine` weighs them with :class:`RewardWeights` (from the manifest): the first
three add, latency and cost subtract. A part that never arrived contributes nothing.

Example:
    >>> w = RewardWeights(latency=0.1, cost=0.5)
    >>> round(combine({"success": 1.0, "latency_s": 2.0, "tokens": 1000}, w), 6)
    0.3
    >>> validate_part("approval", 0.5)
    0.5
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

PARTS = ("feedback", "approval", "success", "latency_s", "tokens")
APPROVALS = {-1.0: "reject", 0.5: "edit", 1.0: "approve"}


@dataclass(frozen=True)
class RewardWeights:
    """How the parts add up: ``feedback``, ``approval``, ``success`` add; ``latency`` (per
    second) and ``cost`` (per 1,000 tokens) subtract. All finite and >= 0."""

    feedback: float = 1.0
    approval: float = 1.0
    success: float = 1.0
    latency: float = 0.0
    cost: float = 0.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"reward.{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"reward.{name} must be a finite number >= 0, got {value!r}")

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RewardWeights:
        return cls(**dict(data))


def validate_part(name: str, value: float) -> float:
    """``value`` as a float if it is a valid ``name`` part; ValueError naming the part."""
    if name not in PARTS:
        raise ValueError(f"unknown reward part {name!r}; parts: {', '.join(PARTS)}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"reward part {name!r} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"reward part {name!r} must be finite, got {value!r}")
    if name == "feedback" and not -1.0 <= v <= 1.0:
        raise ValueError(f"reward part 'feedback' must be in -1..1, got {value!r}")
    if name == "approval" and v not in APPROVALS:
        raise ValueError(
            f"reward part 'approval' must be -1 (reject), 0.5 (edit) or 1 (approve), got {value!r}"
        )
    if name == "success" and v not in (0.0, 1.0):
        raise ValueError(f"reward part 'success' must be 0 or 1, got {value!r}")
    if name in ("latency_s", "tokens") and v < 0:
        raise ValueError(f"reward part {name!r} must be >= 0, got {value!r}")
    return v


def combine(parts: Mapping[str, float], w: RewardWeights) -> float:
    """The reward of a decision from its ``parts`` (missing parts contribute 0)."""
    p = {name: validate_part(name, value) for name, value in parts.items()}
    return (
        w.feedback * p.get("feedback", 0.0)
        + w.approval * p.get("approval", 0.0)
        + w.success * p.get("success", 0.0)
        - w.latency * p.get("latency_s", 0.0)
        - w.cost * p.get("tokens", 0.0) / 1000.0
    )
