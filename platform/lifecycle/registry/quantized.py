"""Quantised artifacts of base (or merged) models, recorded in the registry.

Reached as ``Registry(...).quantized``; each one is joined to its model by a
``quantized_from`` lineage edge.

Example:
    >>> reg.quantized.register("qwen-awq", model="qwen2.5-0.5b", method="awq",
    ...                        path="/data/q/qwen-awq")  # doctest: +SKIP
    >>> [q.name for q in reg.quantized.all("qwen2.5-0.5b")]  # doctest: +SKIP
    ['qwen-awq']
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from qingliang.platform.errors import Conflict
from qingliang.platform.lifecycle.registry import _checks, _rows
from qingliang.platform.lifecycle.registry.records import (
    QUANTIZED_FROM,
    Quantized,
    check_name,
    check_sha256,
    check_token,
)
from qingliang.platform.lifecycle.registry.tables import QuantizedRow

logger = logging.getLogger(__name__)

#: Opens one read or one write unit of work (the registry's ``_read`` / ``_write``).
Sessions = Callable[[], AbstractContextManager[Session]]


class QuantizedArtifacts:
    """Register and read quantised artifacts (the registry's ``quantized`` attribute)."""

    def __init__(self, read: Sessions, write: Sessions) -> None:
        self._read = read
        self._write = write

    def register(
        self,
        name: str,
        *,
        model: str,
        method: str,
        path: str,
        size_bytes: int | None = None,
        sha256: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> Quantized:
        """Record a quantised artifact of base (or merged) model ``model``; ``method`` is
        e.g. ``awq``, ``gptq``, ``gguf-q4_k_m``, ``bnb-nf4``."""
        check_name(name, "quantized")
        check_token(method, "method")
        path = _checks.text(path, "path")
        size = _checks.size(size_bytes)
        sha = None if sha256 is None else check_sha256(sha256)
        opts = _checks.json_object(settings, "settings")
        with self._write() as s:
            old = s.scalar(select(QuantizedRow).where(QuantizedRow.name == name))
            if old is not None:
                raise Conflict(
                    f"quantized artifact {name!r} is already registered ({old.method} at "
                    f"{old.path!r})",
                    param="quantized",
                )
            base = _rows.by_name(s, "base_model", model)
            row = QuantizedRow(
                name=name,
                model_id=base.id,
                method=method,
                path=path,
                size_bytes=size,
                sha256=sha,
                settings=opts,
                created_at=_rows.now(),
            )
            s.add(row)
            s.flush()
            _rows.add_edge(s, ("base_model", base.id), ("quantized", row.id), QUANTIZED_FROM)
            return _rows.quantized_record(s, row)

    def get(self, name: str) -> Quantized:
        with self._read() as s:
            return _rows.quantized_record(s, _rows.by_name(s, "quantized", name))

    def all(self, model: str | None = None) -> list[Quantized]:
        with self._read() as s:
            stmt = select(QuantizedRow).order_by(QuantizedRow.name)
            if model is not None:
                stmt = stmt.where(QuantizedRow.model_id == _rows.by_name(s, "base_model", model).id)
            return [_rows.quantized_record(s, r) for r in s.scalars(stmt)]
