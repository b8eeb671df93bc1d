"""`qingliang --help` stays light: the CLI's modules import no heavy library at start.

STYLE.md (10): vllm, torch, ray, SQLAlchemy, pydantic, HTTP and vector-store clients are
imported inside the commands that need them. The reshaping once made ``--help`` import
SQLAlchemy and pydantic (0.63 s instead of 0.20 s); this keeps it from coming back.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = (
    "pydantic",
    "sqlalchemy",
    "ray",
    "torch",
    "vllm",
    "transformers",
    "httpx",
    "fastapi",
    "qdrant_client",
    "langgraph",
)


def test_the_cli_imports_no_heavy_library_at_start() -> None:
    code = (
        "import json, sys, qingliang.platform.cli.main; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_help_lists_every_command_group() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "qingliang.platform.cli.main", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for group in ("apply", "up", "keys", "kb", "agents", "data", "pipelines", "lineage"):
        assert group in out.stdout
