"""Checks of caller input that need no database (BadRequest naming the parameter)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from qingliang.platform.errors import BadRequest


def text(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{what} must be a non-empty string", param=what)
    return value


def optional_text(value: str | None, what: str, max_len: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise BadRequest(f"{what} must be a non-empty string of at most {max_len}", param=what)
    return value


def size(value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(
            f"size_bytes must be a non-negative integer, not {value!r}", param="size_bytes"
        )
    return value


def share(value: float, ref: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise BadRequest(
            f"adapter {ref}: share must be a number in (0, 1], not {value!r}", param="adapters"
        )
    return float(value)


def counts(value: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise BadRequest("record_counts must map names to counts", param="record_counts")
    for key, n in value.items():
        if not isinstance(key, str) or isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise BadRequest(
                f"record_counts[{key!r}] must be a non-negative integer, not {n!r}",
                param="record_counts",
            )
    return dict(value)


def json_object(value: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """A JSON object as it will come back from the database (NaN and non-JSON refused)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise BadRequest(f"{what} must be a JSON object (a mapping)", param=what)
    try:
        out: dict[str, Any] = json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"{what} is not JSON: {exc}", param=what) from None
    return out
