"""Rewriting one benchmark's section of ``bench/RESULTS.md`` (private helpers).

Each benchmark owns one ``## <Title>`` section: :func:`write_section` replaces it (up to the
next ``## `` heading) or appends it, and leaves every other section byte for byte as it was.

Example:
    >>> replace_section("# R\\n\\n## A\\nold\\n\\n## B\\nb\\n", "A", "## A\\nnew\\n")
    '# R\\n\\n## A\\nnew\\n\\n## B\\nb\\n'
    >>> fmt(1234.5, 1), fmt(None), met(True)
    ('1,234.5', '–', '**met**')
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

HEADER = """# Benchmark results

One section per benchmark, each with the machine and the date it ran on. Raw results are
JSON files under `bench/out/`; the scripts rewrite their own section.
"""


def replace_section(text: str, title: str, section: str) -> str:
    """``text`` with its ``## title`` section replaced by ``section`` (appended if absent)."""
    if not section.endswith("\n"):
        section += "\n"
    start = text.find(f"\n## {title}\n")
    if start < 0:
        return text.rstrip("\n") + "\n\n" + section
    end = text.find("\n## ", start + 1)
    return text[: start + 1] + section + (text[end:] if end >= 0 else "")


def write_section(path: Path, title: str, section: str) -> None:
    """Rewrite the ``## title`` section of the Markdown file ``path`` (created if missing)."""
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    path.write_text(replace_section(text, title, section), encoding="utf-8")


def save_run(result: dict[str, Any], out_dir: Path, prefix: str) -> Path:
    """Write ``result`` as ``<out_dir>/<prefix>-<UTC stamp>.json``; returns the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out_dir / f"{prefix}-{stamp}.json"
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    return path


def fmt(value: float | None, digits: int = 1, scale: float = 1.0) -> str:
    """``value × scale`` with thousands separators, or an en dash for None."""
    return "–" if value is None else f"{value * scale:,.{digits}f}"


def pct(value: float | None, digits: int = 1) -> str:
    """A share as a percentage (``0.051`` → ``5.1 %``), or an en dash for None."""
    return "–" if value is None else f"{value * 100:,.{digits}f} %"


def met(flag: bool) -> str:
    return "**met**" if flag else "**not met**"


def save_json(result: dict[str, Any], path: Path) -> Path:
    """Write ``result`` to the fixed file ``path`` (its folder is created); returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    return path
