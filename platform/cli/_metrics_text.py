"""Stored metrics as text for `qingliang registry show`: one ``key: value`` per line and
the evaluation's samples apart (counted, or listed with their texts cut).

Example:
    >>> items, samples = metric_items({"evaluation": {"metrics": {"rouge_l": {
    ...     "base": 0.14, "adapter": 0.16}}, "samples": [{"reference": "a"}]}})
    >>> items
    [('evaluation.metrics.rouge_l', 'base 0.14 → adapter 0.16 (+0.02)')]
    >>> len(samples)
    1
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: `registry show --samples` shows this many characters of each prompt, reference, answer.
SAMPLE_CHARS = 200
#: A sample's record id, first found; then its texts in this order (other texts follow).
SAMPLE_IDS = ("record_id", "id", "record")
SAMPLE_TEXTS = ("prompt", "reference", "base", "adapter")


def _number(value: Any) -> str:
    """Floats to 4 significant digits; anything else as it is (``-`` for None)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _clip(text: str, limit: int = SAMPLE_CHARS) -> str:
    """One line: whitespace collapsed, cut at ``limit`` characters with the rest counted."""
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[:limit]}… (+{len(text) - limit} chars)"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def metric_items(
    metrics: Mapping[str, Any], prefix: str = ""
) -> tuple[list[tuple[str, str]], list[Any]]:
    """Stored metrics as ``(dotted.key, text)`` pairs, and the samples found under any
    ``samples`` key (an evaluation's records with the reference and both answers), apart.

    A ``{"base": x, "adapter": y}`` pair reads ``base x → adapter y (+delta)``.
    """
    items: list[tuple[str, str]] = []
    samples: list[Any] = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if key == "samples" and isinstance(value, list):
            samples += value
        elif isinstance(value, Mapping) and _is_pair(value):
            items.append((name, _pair(value)))
        elif isinstance(value, Mapping):
            more, found = metric_items(value, f"{name}.")
            items += more
            samples += found
        elif isinstance(value, list | tuple):
            simple = all(v is None or isinstance(v, str | int | float) for v in value)
            items.append(
                (name, _clip(", ".join(map(_number, value))) if simple else f"{len(value)} items")
            )
        else:
            items.append((name, _clip(value) if isinstance(value, str) else _number(value)))
    return items, samples


def _is_pair(value: Mapping[str, Any]) -> bool:
    return (
        {"base", "adapter"} <= set(value) <= {"base", "adapter", "delta"}
        and _is_number(value["base"])
        and _is_number(value["adapter"])
    )


def _pair(value: Mapping[str, Any]) -> str:
    delta = value.get("delta")
    if not _is_number(delta):
        delta = value["adapter"] - value["base"]
    return f"base {_number(value['base'])} → adapter {_number(value['adapter'])} ({delta:+.4g})"


def key_lines(items: list[tuple[str, str]], indent: str) -> list[str]:
    width = max((len(k) for k, _ in items), default=0) + 1
    return [f"{indent}{k + ':':<{width}} {v}" for k, v in items]


def sample_lines(n: int, sample: Any) -> list[str]:
    """One evaluation sample: its record id, each text clipped, its scores on one line."""
    if not isinstance(sample, Mapping):
        return [f"    sample {n}: {_clip(str(sample))}"]
    rid = next((sample[k] for k in SAMPLE_IDS if sample.get(k) not in (None, "")), None)
    head = f"    sample {n}" + (f": record {rid}" if rid is not None else "")
    texts = [(k, sample[k]) for k in SAMPLE_TEXTS if isinstance(sample.get(k), str)]
    texts += [
        (k, v)
        for k, v in sample.items()
        if isinstance(v, str) and k not in SAMPLE_TEXTS and k not in SAMPLE_IDS
    ]
    rest = {
        k: v
        for k, v in sample.items()
        if not isinstance(v, str) and v is not None and k not in SAMPLE_IDS
    }
    scores: list[tuple[str, str]] = []
    for key, value in rest.items():
        if key in ("scores", "metrics") and isinstance(value, Mapping):
            scores += metric_items(value)[0]
        else:
            scores += metric_items({key: value})[0]
    items = [(k, _clip(v)) for k, v in texts]
    if scores:
        items.append(("scores", "; ".join(f"{k}: {v}" for k, v in scores)))
    return [head, *key_lines(items, "      ")]
