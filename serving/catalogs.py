"""The serving catalogs a manifest is checked against (YAML in ``serving/catalog``), each
loaded once, without importing vLLM: quantisation methods, tool-call and reasoning parsers.

Example:
    >>> "hermes" in tool_call_parsers()
    True
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import yaml

from qingliang.platform.errors import did_you_mean


@cache
def quantization_catalog() -> dict[str, dict]:
    """The quantisation methods table (``quantization.yaml``), loaded once."""
    text = (
        resources.files("qingliang.serving.catalog")
        .joinpath("quantization.yaml")
        .read_text("utf-8")
    )
    return dict(yaml.safe_load(text)["methods"])


@cache
def tool_call_parsers() -> tuple[str, ...]:
    """vLLM's tool-call parser names (``tool_parsers.yaml``), loaded once, without vLLM."""
    text = (
        resources.files("qingliang.serving.catalog")
        .joinpath("tool_parsers.yaml")
        .read_text("utf-8")
    )
    return tuple(yaml.safe_load(text)["parsers"])


@cache
def reasoning_parsers() -> tuple[str, ...]:
    """vLLM's reasoning parser names (``reasoning_parsers.yaml``), loaded once, without vLLM."""
    text = (
        resources.files("qingliang.serving.catalog")
        .joinpath("reasoning_parsers.yaml")
        .read_text("utf-8")
    )
    return tuple(yaml.safe_load(text)["parsers"])


def known(kind: str, value: str, known: tuple[str, ...]) -> str:
    """``value`` if it is one of ``known``, else a ``ValueError`` with a "did you mean"."""
    if value not in known:
        more = did_you_mean(value, list(known))
        raise ValueError(f"unknown {kind} {value!r}{more}; known: {', '.join(known)}")
    return value
