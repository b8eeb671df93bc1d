"""Hostile manifests (issue 13): alias bombs, deep nesting, huge files and huge values.

Each is refused with a ``ManifestError`` naming the file and what is wrong, before anything
large is built, and every value an error quotes is cut short.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
from qingliang.platform.cli.main import app
from qingliang.platform.errors import ManifestError
from qingliang.platform.manifests import loader as loader_mod
from qingliang.platform.manifests.loader import load_paths, parse_documents

TINY = """\
apiVersion: qingliang.io/v1
kind: ModelDeployment
metadata: {name: tiny}
spec: {model: {source: /models/tiny}}
"""


def bomb(levels: int, width: int = 9) -> str:
    """The "billion laughs": each level is a list of ``width`` aliases of the one before."""
    names = "abcdefghijklmnopqrstuvwxyz"
    lines = [f"{names[0]}: &{names[0]} [" + ",".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        items = ",".join([f"*{names[i - 1]}"] * width)
        lines.append(f"{names[i]}: &{names[i]} [{items}]")
    lines.append(f"kind: *{names[levels - 1]}")
    return "\n".join(lines) + "\n"


def message(text: str, source: str = "m.yaml") -> str:
    with pytest.raises(ManifestError) as exc:
        parse_documents(text, source)
    return str(exc.value)


def test_the_bomb_is_small() -> None:
    assert len(bomb(9).encode()) < 400  # the 349-byte file of the issue, give or take


def test_alias_bomb_is_refused_before_it_is_expanded() -> None:
    # Five levels are 9**5 = 59,049 strings: enough to be refused, small enough that a
    # loader without the check still finishes (with an "unknown kind" error instead).
    msg = message(bomb(5))
    assert msg.startswith("m.yaml: line ")
    assert "aliases expand to more than" in msg and "nodes" in msg
    assert len(msg) < 600


def test_too_many_aliases_are_refused() -> None:
    items = ", ".join(["*x"] * (loader_mod.MAX_ALIASES + 1))
    msg = message(f"x: &x 1\ny: [{items}]\n" + TINY)
    assert f"more than {loader_mod.MAX_ALIASES} aliases" in msg
    assert msg.startswith("m.yaml: line 2")


def test_full_alias_bomb_is_refused_under_a_memory_limit(tmp_path: Path) -> None:
    """The issue's nine-level bomb through ``load_paths``, in a child with 1 GiB of address
    space: expanding it (1.4 GiB) would die there with a MemoryError."""
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb(9), encoding="utf-8")
    child = textwrap.dedent(
        f"""
        import resource, sys
        from pathlib import Path
        from qingliang.platform.errors import ManifestError
        import qingliang.platform.lifecycle.pipelines.kinds  # noqa: F401
        from qingliang.platform.manifests.loader import load_paths
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        try:
            load_paths([Path({str(path)!r})])
        except ManifestError as exc:
            print(str(exc)[:2000])
            sys.exit(3)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 3, done.stderr[-2000:]
    assert done.stdout.startswith(f"{path}: line ")
    assert "aliases expand to more than" in done.stdout


def test_recursive_alias_is_refused() -> None:
    msg = message("kind: &k [*k]\n")
    assert "m.yaml: line 1" in msg and "refers to the node that contains it" in msg


def test_deep_nesting_is_refused() -> None:
    depth = loader_mod.MAX_DEPTH + 1
    msg = message("kind: " + "[" * depth + "]" * depth + "\n")
    assert f"nested more than {loader_mod.MAX_DEPTH} levels deep" in msg
    # Far deeper than Python's recursion limit: still a ManifestError, not RecursionError.
    msg = message("kind: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested more than" in msg


def test_a_few_legitimate_anchors_still_load() -> None:
    text = """\
apiVersion: qingliang.io/v1
kind: ModelDeployment
metadata: {name: &name tiny, labels: {app: *name, team: *name}}
spec:
  model: &model {source: /models/tiny}
  placement: &placement {accelerator: cpu}
---
apiVersion: qingliang.io/v1
kind: ModelDeployment
metadata: {name: tiny-two}
spec:
  model: {source: /models/tiny}
"""
    docs = parse_documents(text, "m.yaml")
    assert [d.name for d in docs] == ["tiny", "tiny-two"]
    assert docs[0].raw["metadata"]["labels"] == {"app": "tiny", "team": "tiny"}


def test_merge_keys_still_load() -> None:
    text = """\
base: &base {source: /models/tiny}
apiVersion: qingliang.io/v1
kind: ModelDeployment
metadata: {name: tiny}
spec:
  model: {<<: *base}
"""
    with pytest.raises(ManifestError) as exc:  # `base` is not a manifest key ...
        parse_documents(text, "m.yaml")
    assert "base: unknown key" in str(exc.value)  # ... but the alias itself was fine


def test_alias_limits_count_per_document() -> None:
    doc = "x: &x 1\ny: [" + ", ".join(["*x"] * 60) + "]\n"
    with pytest.raises(ManifestError) as exc:
        parse_documents(doc + "---\n" + doc, "m.yaml")
    assert "aliases" not in str(exc.value)  # 60 + 60 in two documents: fine


def test_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(TINY + "#" * loader_mod.MAX_FILE_BYTES + "\n", encoding="utf-8")
    with pytest.raises(ManifestError) as exc:
        load_paths([path])
    msg = str(exc.value)
    assert msg.startswith(f"{path}: ")
    assert "larger than 1 MiB" in msg and "1,048,576 bytes" in msg


def test_text_over_the_size_limit_is_refused() -> None:
    msg = message(TINY + "#" * loader_mod.MAX_FILE_BYTES)
    assert msg.startswith("m.yaml: ") and "larger than 1 MiB" in msg


def test_a_file_just_under_the_limit_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    padding = "#" * (loader_mod.MAX_FILE_BYTES - len(TINY) - 2) + "\n"
    path.write_text(TINY + padding, encoding="utf-8")
    assert path.stat().st_size <= loader_mod.MAX_FILE_BYTES
    assert [d.name for d in load_paths([path])] == ["tiny"]


HUGE = "x" * 100_000


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (f"kind: {HUGE}\n", "kind: unknown kind 'xxx"),
        (f"kind: [{', '.join(['1'] * 5000)}]\n", "kind: unknown kind [1, 1"),
        (TINY.replace("spec: {", f"spec: {{engine: {{dtype: {HUGE}}}, "), "spec.engine.dtype: 'x"),
        # (A plain key may have 1024 characters at most: longer is invalid YAML.)
        (TINY.replace("{name: tiny}", f"{{name: tiny, {'k' * 1000}: 1}}"), "metadata.kkk"),
        (TINY.replace("{name: tiny}", f"{{name: {HUGE}}}"), "metadata.name: "),
        (f"kind: *{HUGE}\n", "invalid YAML: found undefined alias 'xxx"),
    ],
)
def test_huge_values_are_cut_short_in_messages(text: str, where: str) -> None:
    msg = message(text)
    assert msg.startswith("m.yaml: ") and where in msg
    assert "…" in msg
    assert len(msg) < 2000
    for run in ("x", "k", "1, "):
        assert run * (loader_mod.QUOTE_CHARS + 1) not in msg


def test_short_values_are_quoted_whole() -> None:
    msg = message("kind: ModelDeploymnt\n")
    assert "unknown kind 'ModelDeploymnt' (did you mean 'ModelDeployment'?)" in msg
    assert "…" not in msg


def test_cli_validate_reports_the_bomb(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb(9), encoding="utf-8")
    result = CliRunner().invoke(app, ["validate", "-f", str(path)])
    assert result.exit_code == 1
    out = " ".join(result.output.split())  # rich may wrap long lines
    assert "bomb.yaml: line" in out and "aliases expand to more than" in out


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("1" * 5000, "Exceeds the limit (4300 digits)"),  # Python's int-from-text limit
        ("2024-02-30", "day is out of range for month"),  # a timestamp that is no date
    ],
)
def test_values_yaml_cannot_build_are_manifest_errors(value: str, problem: str) -> None:
    msg = message(f"apiVersion: qingliang.io/v1\nkind: {value}\n")
    assert msg.startswith("m.yaml: line 2, column 7: invalid YAML: cannot read this value: ")
    assert problem in msg
