"""How a router is learning, from its closed decisions: the reward over rounds and the
estimated regret against the best single arm.

The value of always taking arm ``a`` is estimated without bias from the logged decisions
by inverse propensity scoring, ``V(a) = mean(1[arm = a] · reward / propensity)`` (every
decision's propensity is logged exactly, see ``policy.py``). The estimated regret is then
``n · max_a V(a) − Σ reward``: what the router gave up, over its ``n`` closed decisions,
against the best fixed choice in hindsight. A router that learns a context-dependent
choice can beat every single arm (negative regret); one that explores too long or
learns nothing stays above zero. ``reward_by_window`` is the mean reward of each run of
``window`` consecutive decisions, oldest first: the learning curve.

Example:
    >>> from types import SimpleNamespace as D
    >>> log = [D(arm="a", propensity=0.5, reward=1.0), D(arm="b", propensity=0.5, reward=0.0)]
    >>> out = learning(log, ["a", "b"], window=1)
    >>> out["ips_value"], out["estimated_regret"], out["reward_by_window"]
    ({'a': 1.0, 'b': 0.0}, 1.0, [1.0, 0.0])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def learning(decisions: Sequence[Any], arms: Sequence[str], window: int = 10) -> dict[str, Any]:
    """The learning summary of ``decisions`` (closed, oldest first; each with ``arm``,
    ``propensity`` and ``reward``) over ``arms``."""
    done = [d for d in decisions if d.reward is not None and d.propensity > 0]
    n = len(done)
    if n == 0:
        return {"closed": 0, "mean_reward": None, "ips_value": {}, "best_arm": None,
                "estimated_regret": None, "reward_by_window": [], "window": window}  # fmt: skip
    total = sum(float(d.reward) for d in done)
    value = {a: sum(d.reward / d.propensity for d in done if d.arm == a) / n for a in arms}
    best = max(value, key=lambda a: value[a]) if value else None
    windows = [
        round(sum(float(d.reward) for d in done[i : i + window]) / len(done[i : i + window]), 4)
        for i in range(0, n, window)
    ]
    return {
        "closed": n,
        "mean_reward": round(total / n, 4),
        "ips_value": {a: round(v, 4) for a, v in value.items()},
        "best_arm": best,
        "estimated_regret": round(n * value[best] - total, 4) if best is not None else None,
        "reward_by_window": windows,
        "window": window,
    }
