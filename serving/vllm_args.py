"""``spec.engine.vllm_args``: vLLM engine options checked against vLLM's own parser.

The options and how each reads its value come from ``vllm serve``'s argument parser,
written to ``serving/catalog/vllm_args.json`` by
:mod:`qingliang.serving.engines.vllm_args_table` (a unit test fails when the installed
vLLM's parser differs). Checking reads that table only: no vLLM import, no disk beyond
the package's own data, so ``qingliang validate`` stays fast and pure. The engine parses
the resulting arguments with vLLM's real parser again when it starts.

Refused, each with the reason: an unknown option (with a "did you mean"), a value of the
wrong type or outside the option's choices, an option a typed field already sets (named:
use ``spec.engine.max_model_len``, not ``max-model-len``), and an option the platform owns
(``host``, ``port``, ``api-key``, ``distributed-executor-backend``, …; the list and the
reasons are in ``serving/catalog/vllm_args_policy.yaml``).

Example:
    >>> check_vllm_args({"enable_prefix_caching": True, "kv-cache-dtype": "fp8"})
    {'enable-prefix-caching': True, 'kv-cache-dtype': 'fp8'}
    >>> vllm_argv({"enable-prefix-caching": False, "stream-interval": 4})
    ['--no-enable-prefix-caching', '--stream-interval=4']
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

import yaml

from qingliang.platform.errors import did_you_mean

#: A human-readable integer as vLLM's ``human_readable_int`` reads it (``32k``, ``1.5M``).
_SIZE_RE = re.compile(r"^\d+(\.\d+)?[kKmMgGtT]?$")
_KIND_WORDS = {
    "bool": "true or false",
    "flag": "true (false leaves it out)",
    "int": "an integer",
    "float": "a number",
    "size": "an integer or a size such as 32k",
    "str": "a string",
    "json": "a mapping (or its JSON text)",
    "bool_or_str": "true or a string",
}


def _catalog(name: str) -> str:
    return resources.files("qingliang.serving.catalog").joinpath(name).read_text("utf-8")


@cache
def option_table() -> dict[str, Any]:
    """vLLM's options (``vllm_args.json``): ``{"vllm_version", "options", "aliases"}``."""
    return dict(json.loads(_catalog("vllm_args.json")))


@cache
def policy() -> dict[str, dict[str, str]]:
    """``{"typed": {option: field}, "owned": {option: why}}`` (``vllm_args_policy.yaml``)."""
    return dict(yaml.safe_load(_catalog("vllm_args_policy.yaml")))


def _name(key: object) -> str:
    """The option's canonical name (``kv_cache_dtype`` → ``kv-cache-dtype``)."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"option names are strings, got {key!r}")
    if key.startswith("-"):
        raise ValueError(f"{key!r}: write the option's name without the leading '--'")
    name = key.replace("_", "-")
    table = option_table()
    name = table["aliases"].get(name, name)
    if name in table["options"]:
        return name
    positive = name.removeprefix("no-")
    if positive != name and table["options"].get(positive, {}).get("kind") == "bool":
        raise ValueError(f"{key!r}: write `{positive}: false`")
    more = did_you_mean(name, list(table["options"]))
    raise ValueError(
        f"{key!r} is not an option of vLLM {table['vllm_version']}{more} "
        "(the options of `vllm serve --help`, without the leading '--')"
    )


def _scalar_ok(kind: str, value: object) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "flag":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return kind == "bool_or_str" and value is True
    if kind == "int":
        return isinstance(value, int)
    if kind == "float":
        return isinstance(value, (int, float))
    if kind == "size":
        return (isinstance(value, int) and value >= 0) or (
            isinstance(value, str) and bool(_SIZE_RE.match(value))
        )
    if kind == "json":
        return isinstance(value, (dict, list, str))
    if kind == "bool_or_str":
        return isinstance(value, str)
    return isinstance(value, (str, int, float))  # str: YAML may read `3` for "3"


def _check_value(name: str, entry: dict[str, Any], value: object) -> object:
    kind = entry["kind"]
    items = value if kind == "list" and isinstance(value, list) else [value]
    item_kind = entry.get("item", kind)
    if kind == "list" and not items:
        raise ValueError(f"{name}: give at least one value")
    for item in items:
        if not _scalar_ok(item_kind, item):
            what = _KIND_WORDS.get(item_kind, item_kind)
            if kind == "list":
                what += ", or a list of them"
            raise ValueError(f"{name}: expected {what}, got {item!r} ({type(item).__name__})")
        choices = entry.get("choices")
        if choices and str(item) not in choices:
            more = did_you_mean(str(item), choices)
            raise ValueError(f"{name}: {item!r} is not one of {', '.join(choices)}{more}")
    return value


def check_vllm_args(args: dict[Any, Any]) -> dict[str, Any]:
    """``args`` with canonical option names, each checked; raises ``ValueError`` naming
    the first bad option (see the module docstring for what is refused)."""
    rules = policy()
    out: dict[str, Any] = {}
    for key, value in args.items():
        name = _name(key)
        if name in out:
            raise ValueError(f"{key!r}: {name!r} is given twice")
        if name in rules["typed"]:
            raise ValueError(
                f"{name}: set by the typed field {rules['typed'][name]}; use that instead"
            )
        if name in rules["owned"]:
            raise ValueError(f"{name}: the platform sets this; {rules['owned'][name]}")
        if value is None:
            raise ValueError(f"{name}: give a value (leave the option out to keep vLLM's default)")
        out[name] = _check_value(name, option_table()["options"][name], value)
    return out


def vllm_argv(args: dict[str, Any]) -> list[str]:
    """vLLM command-line arguments for checked ``args`` (canonical names)."""
    argv: list[str] = []
    options = option_table()["options"]
    for name, value in args.items():
        kind = options[name]["kind"]
        if kind == "bool":
            argv.append(f"--{name}" if value else f"--no-{name}")
        elif kind == "flag" or (kind == "bool_or_str" and value is True):
            if value:
                argv.append(f"--{name}")
        elif kind == "list":
            values = value if isinstance(value, list) else [value]
            argv += [f"--{name}", *(_text(v) for v in values)]
        else:
            argv.append(f"--{name}={_text(value)}")
    return argv


def _text(value: object) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)
