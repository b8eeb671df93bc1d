"""Write the table of vLLM's engine options (``serving/catalog/vllm_args.json``) from the
installed vLLM's own argument parser (``vllm serve``'s: ``make_arg_parser``).

``spec.engine.vllm_args`` is checked against that table at validate time, without
importing vLLM (7-8 s here, and validation must stay pure: docs/manifests.md).
``tests/unit/serving/test_vllm_args.py`` rebuilds the table from the installed parser and
fails when the file differs, so a vLLM upgrade cannot leave it stale. Regenerate with::

    .venv/bin/python -m qingliang.serving.engines.vllm_args_table > serving/catalog/vllm_args.json

Each option is keyed by its long flag without ``--`` and records how its value is read:

- ``bool``: ``--flag`` / ``--no-flag`` (argparse ``BooleanOptionalAction``);
- ``flag``: ``--flag`` only (``store_true``): only ``true`` means something;
- ``int``, ``float``, ``str``; ``size``: an integer or a human-readable one (``32k``);
- ``json``: a JSON object (a YAML mapping here) or a JSON string;
- ``bool_or_str``: a bare flag (``true``) or a string;
- ``list``: one or more values (``nargs='+'``), each of ``item``;
- ``choices`` when the parser restricts the values.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

#: Parser type callables whose value is JSON (objects, or a string for union_dict_and_str).
_JSON_TYPES = {"loads", "union_dict_and_str", "parse_dataclass"}
_SIZE_TYPES = {"human_readable_int", "human_readable_int_or_auto"}


def _inner_type(fn: Any) -> Any:
    """The type a vLLM wrapper (``optional_type``, ``parse_type``) finally calls."""
    while getattr(fn, "__name__", "") in ("_optional_type", "_parse_type") and fn.__closure__:
        fn = next(c.cell_contents for c in fn.__closure__ if callable(c.cell_contents))
    return fn


def _kind(action: argparse.Action) -> str:
    if isinstance(action, argparse.BooleanOptionalAction):
        return "bool"
    if isinstance(action, argparse._StoreTrueAction):
        return "flag"
    if action.nargs == "?" and action.const is True:
        return "bool_or_str"
    fn = _inner_type(action.type)
    name = getattr(fn, "__name__", "")
    if fn is int:
        return "int"
    if fn is float:
        return "float"
    if name in _SIZE_TYPES:
        return "size"
    if name in _JSON_TYPES:
        return "json"
    return "str"


def _entry(action: argparse.Action) -> dict[str, Any]:
    kind = _kind(action)
    entry: dict[str, Any] = {"kind": kind, "dest": action.dest}
    if action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction):
        entry = {"kind": "list", "item": kind, "dest": action.dest}
    if action.choices is not None and kind not in ("bool", "flag"):
        entry["choices"] = sorted(str(c) for c in action.choices if c is not None)
    return entry


def table_from_parser(parser: argparse.ArgumentParser, version: str) -> dict[str, Any]:
    """The option table of ``parser`` (pure: tests feed it any parser)."""
    options: dict[str, dict[str, Any]] = {}
    aliases: dict[str, str] = {}
    for action in parser._actions:
        longs = [s[2:] for s in action.option_strings if s.startswith("--")]
        if not longs or action.dest == "help":
            continue
        positive = [s for s in longs if not s.startswith("no-")] or longs
        name = positive[0]
        options[name] = _entry(action)
        for other in positive[1:]:
            aliases[other] = name
    return {
        "vllm_version": version,
        "options": dict(sorted(options.items())),
        "aliases": dict(sorted(aliases.items())),
    }


def installed_table() -> dict[str, Any]:
    """The table of the installed vLLM's ``vllm serve`` parser (imports vLLM: seconds)."""
    from vllm import __version__
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return table_from_parser(make_arg_parser(FlexibleArgumentParser()), __version__)


def render(table: dict[str, Any]) -> str:
    """The file's text: one option per line, so a vLLM upgrade reads as a short diff."""
    lines = ["{", f'  "vllm_version": {json.dumps(table["vllm_version"])},', '  "options": {']
    opts = list(table["options"].items())
    for i, (name, entry) in enumerate(opts):
        comma = "," if i < len(opts) - 1 else ""
        lines.append(f"    {json.dumps(name)}: {json.dumps(entry, sort_keys=True)}{comma}")
    lines.append("  },")
    lines.append(f'  "aliases": {json.dumps(table["aliases"], sort_keys=True)}')
    lines.append("}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - a maintenance command
    sys.stdout.write(render(installed_table()))
