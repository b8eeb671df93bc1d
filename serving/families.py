"""Model families and the engine options each gets by default (``model_families.yaml``).

A deployment that names no ``spec.engine.tool_call_parser`` gets its family's: Llama 3 →
``llama3_json``, Mistral → ``mistral``, DeepSeek V3 → ``deepseek_v3``, Qwen → ``hermes``,
… and ``hermes`` when the family is unknown. The family is read from the checkpoint's
``config.json`` when the engine starts (the manifest is validated without the weights).

Example:
    >>> family_of({"model_type": "llama", "vocab_size": 128256})
    'llama3'
    >>> default_tool_call_parser({"model_type": "mistral"})
    'mistral'
    >>> default_tool_call_parser({"model_type": "llama", "vocab_size": 32000})
    'hermes'
"""

from __future__ import annotations

import json
import logging
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)


@cache
def families() -> dict[str, Any]:
    """The catalog: ``{"default": {...}, "families": [...]}``, loaded once."""
    text = (
        resources.files("qingliang.serving.catalog")
        .joinpath("model_families.yaml")
        .read_text("utf-8")
    )
    return dict(yaml.safe_load(text))


def _family(config: dict[str, Any]) -> dict[str, Any] | None:
    model_type = str(config.get("model_type") or "")
    text = config.get("text_config")
    text = text if isinstance(text, dict) else {}  # a vision-language model's text half
    model_type = model_type or str(text.get("model_type") or "")
    vocab = config.get("vocab_size") or text.get("vocab_size") or 0
    for row in families()["families"]:
        if model_type in row["model_types"] and int(vocab) >= row.get("min_vocab_size", 0):
            return dict(row)
    return None


def family_of(config: dict[str, Any]) -> str | None:
    """The family name of a checkpoint's ``config.json`` contents, or None if unknown."""
    row = _family(config)
    return row["name"] if row else None


def default_tool_call_parser(config: dict[str, Any]) -> str:
    """The tool-call parser for a checkpoint whose manifest names none."""
    row = _family(config) or {}
    return str(row.get("tool_call_parser") or families()["default"]["tool_call_parser"])


def read_config(model_path: str | None) -> dict[str, Any]:
    """``config.json`` beside the weights, or ``{}`` (a single-file checkpoint, unreadable)."""
    if not model_path:
        return {}
    path = Path(model_path) / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        logger.debug("no readable config.json at %s", path)
        return {}
    return data if isinstance(data, dict) else {}
