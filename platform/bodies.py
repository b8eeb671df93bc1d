"""The base of every request body the platform defines itself (not OpenAI's).

Each area declares the bodies of its own routes (``knowledge/api.py``, ``agents/api.py``,
the pipelines' in ``gateway/http/bodies.py``) on :class:`Body`: unknown fields are refused
and JSON types are taken as sent (no ``"3"`` -> ``3``), the same in every area.

Example:
    >>> class Search(Body):
    ...     query: str
    >>> Search.model_validate({"query": "x"}).query
    'x'
    >>> Search.model_validate({"query": "x", "limt": 3})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for Search
    limt
      Extra inputs are not permitted ...
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Body(BaseModel):
    """Base of our own request bodies: unknown fields refused, JSON types taken as sent."""

    model_config = ConfigDict(extra="forbid", strict=True)


def docs_only(**schema: Any) -> dict[str, Any]:
    """JSON-schema keywords shown in ``/openapi.json`` but checked by the service."""
    return schema
