"""Warm start: teaching a router from labelled examples before it has learned anything.

A router's ``examples`` setting names a JSONL file of labelled requests, one a line::

    {"text": "我家楼下工地每晚施工，太吵了", "route": "hotline"}
    {"text": "Top failure modes by RPN?", "route": "manufacturing", "domain": "manufacturing"}

``text`` and ``route`` (one of the router's arms) are required; ``domain`` (default: the
graph's ``domain`` label, as a live request without one gets) and ``modality`` (``text``,
``image``, ``table``, ``mixed``; default ``text``) are optional. :func:`read_examples`
checks a file and names ``file:line`` and the field of each problem.

Each example is encoded exactly as a live request is (same embedder, same encoder) and
taught with full information (:func:`teach_policy`): reward 1 for the labelled arm and 0
for every other arm, one update of each arm's model. Taught examples are not decisions:
they have no propensity and never enter the decision log, so off-policy evaluation, the
estimated regret and the learning curve see only live traffic. Each example is taught once
(its :func:`example_key` is remembered with the router's state): a restart or a re-apply
teaches nothing again, an edited file teaches only its new or changed lines, and a line
removed later is not unlearned (the feedback that follows corrects the router).

Example:
    >>> from qingliang.agents.routing.policy import LinUCB
    >>> p = LinUCB(["a", "b"], dimensions=2)
    >>> teach_policy(p, [("a", [1.0, 0.0]), ("b", [0.0, 1.0])])
    2
    >>> p.choose([1.0, 0.0]).arm, p.choose([0.0, 1.0]).arm, p.updates
    ('a', 'b', 0)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qingliang.agents.routing.features import MODALITIES

#: Largest examples file read (bytes): a warm start needs tens of lines, not a data set.
MAX_BYTES = 4_000_000
_FIELDS = ("text", "route", "domain", "modality")


@dataclass(frozen=True)
class Example:
    """One labelled request of an examples file (``line``: its 1-based line number)."""

    text: str
    route: str
    domain: str | None = None
    modality: str = "text"
    line: int = 0

    def key(self) -> str:
        return example_key(self.text, self.route, self.domain, self.modality)


def example_key(text: str, route: str, domain: str | None, modality: str) -> str:
    """What identifies a taught example: a hash of everything that is taught.

    Example:
        >>> example_key("hi", "a", None, "text") == example_key("hi", "a", None, "text")
        True
    """
    raw = json.dumps([text, route, domain, modality], ensure_ascii=False)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:32]


def read_examples(
    path: Path, arms: Sequence[str], *, domain: str | None = None, shown: str | None = None
) -> list[Example]:
    """The examples in ``path``; ValueError naming ``file:line`` and the field of the
    first problems found (``shown`` is how the file is named in them; ``domain`` is the
    default domain label).

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "ex.jsonl"
        >>> _ = f.write_text('{"text": "hi", "route": "c"}\\n')
        >>> read_examples(f, ["a", "b"], shown="ex.jsonl")
        Traceback (most recent call last):
        ...
        ValueError: ex.jsonl:1: route: 'c' is not one of the router's arms (a, b)
    """
    name = shown or str(path)
    if not path.exists():
        raise ValueError(f"{name} does not exist" + (f" ({path})" if name != str(path) else ""))
    if not path.is_file():
        raise ValueError(f"{name} is not a file")
    if path.stat().st_size > MAX_BYTES:
        raise ValueError(f"{name} is larger than {MAX_BYTES} bytes")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{name} is not UTF-8 text: {exc}") from None
    out: list[Example] = []
    problems: list[str] = []
    for no, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            out.append(_example(raw, no, arms, domain))
        except ValueError as exc:
            problems.append(f"{name}:{no}: {exc}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError("; ".join(problems[:5]) + more)
    if not out:
        raise ValueError(f"{name} has no examples (one JSON object a line)")
    return out


def _example(raw: str, no: int, arms: Sequence[str], domain: str | None) -> Example:
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a JSON object: {exc.msg}") from None
    if not isinstance(row, dict):
        raise ValueError(f"not a JSON object: {type(row).__name__}")
    for key in row:
        if key not in _FIELDS:
            raise ValueError(f"{key}: unknown field; fields: {', '.join(_FIELDS)}")
    text, route = row.get("text"), row.get("route")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text: required, a non-empty string")
    if not isinstance(route, str) or route not in arms:
        raise ValueError(f"route: {route!r} is not one of the router's arms ({', '.join(arms)})")
    dom = row.get("domain", domain)
    if dom is not None and (not isinstance(dom, str) or not dom):
        raise ValueError(f"domain: must be a non-empty string, got {dom!r}")
    modality = row.get("modality", "text")
    if modality not in MODALITIES:
        raise ValueError(f"modality: must be one of {', '.join(MODALITIES)}, got {modality!r}")
    return Example(text, route, dom, modality, no)


def teach_policy(policy: Any, labelled: Sequence[tuple[str, Any]]) -> int:
    """Full-information updates: for each ``(arm, features)``, reward 1 to ``arm`` and 0
    to every other arm the policy has (labels of arms it lacks are skipped). Taught even
    when the policy is frozen (a frozen router with examples is a fixed, supervised one);
    the policy's count of updates from decisions is left as it was. Returns how many
    examples were taught."""
    frozen, updates = policy.frozen, policy.updates
    policy.frozen = False
    taught = 0
    try:
        for label, x in labelled:
            if label not in policy.arms:
                continue
            for arm in policy.arms:
                policy.update(arm, x, 1.0 if arm == label else 0.0)
            taught += 1
    finally:
        policy.frozen, policy.updates = frozen, updates
    return taught
