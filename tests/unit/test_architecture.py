"""The architecture's rules, checked on the code itself (docs/architecture.md).

The layers table in docs/architecture.md is the source of truth: it names each area, the
packages it holds and the areas it may import. Every ``qingliang.*`` import in the code is
found with ``ast`` (module level and inside functions alike: a lazy import is still a
dependency) and checked against it:

- imports point down: an edge between areas must be in the table;
- no cycle between packages (a package's modules may import its subpackages, a subpackage
  never its parent's modules) and no cycle between modules;
- no import of another package's ``_private`` module;
- small, named parts: modules, functions and classes stay under the size limits.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOPS = ("platform", "serving", "knowledge", "agents")
DOC = REPO / "docs" / "architecture.md"

#: Size limits (docs/architecture.md, "Small, named parts").
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
MAX_PUBLIC_METHODS = 20
#: Schema migrations are written once and never edited; they are exempt from the limits.
EXEMPT = re.compile(r"\.migrations\.")


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module


def _modules() -> dict[str, Module]:
    found = {}
    for top in TOPS:
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            parts = ["qingliang", *rel.parts]
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            name = ".".join(parts)
            found[name] = Module(name, path, is_package, ast.parse(path.read_text("utf-8")))
    return found


MODULES = _modules()


def _imports(mod: Module) -> set[str]:
    """The ``qingliang`` modules ``mod`` imports, resolved to module names."""
    out = set()
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = mod.name.split(".") if mod.is_package else mod.name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, *([node.module] if node.module else [])])
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name.startswith("qingliang.") and name != mod.name:
                out.add(name)
    return out


IMPORTS = {name: _imports(mod) for name, mod in MODULES.items()}


def _layers() -> tuple[dict[str, list[str]], dict[str, set[str]]]:
    """The table between the ``layers`` markers of docs/architecture.md."""
    text = DOC.read_text("utf-8")
    block = text.split("<!-- layers:start -->")[1].split("<!-- layers:end -->")[0]
    packages: dict[str, list[str]] = {}
    allowed: dict[str, set[str]] = {}
    for line in block.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("area", "") or set(cells[0]) <= {"-", ":"}:
            continue
        area, pkgs, may = cells
        packages[area] = [p.strip().strip("`") for p in pkgs.split(",") if p.strip()]
        allowed[area] = {a.strip().strip("`") for a in may.split(",") if a.strip() not in ("", "—")}
    return packages, allowed


PACKAGES, ALLOWED = _layers()


def area_of(module: str) -> str | None:
    best, area = "", None
    for name, prefixes in PACKAGES.items():
        for prefix in prefixes:
            full = f"qingliang.{prefix}"
            if (module == full or module.startswith(full + ".")) and len(full) > len(best):
                best, area = full, name
    return area


def package_of(module: str) -> str:
    return module if MODULES[module].is_package else module.rpartition(".")[0]


def _sccs(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _short(name: str) -> str:
    return name.removeprefix("qingliang.")


def layer_violations(imports: dict[str, set[str]] = IMPORTS) -> set[str]:
    found = set()
    for src, targets in imports.items():
        a = area_of(src)
        for dst in targets:
            b = area_of(dst)
            if a != b and b not in ALLOWED.get(a or "", set()):
                found.add(f"layer: {_short(src)} ({a}) -> {_short(dst)} ({b})")
    return found


def package_cycles(imports: dict[str, set[str]] = IMPORTS) -> set[str]:
    graph: dict[str, set[str]] = defaultdict(set)
    for src, targets in imports.items():
        for dst in targets:
            p, q = package_of(src), package_of(dst)
            if p != q:
                graph[p].add(q)
    # One line per package caught in a cycle, so that fixing a cycle shows package by package.
    return {
        f"package cycle: {_short(p)} (with {len(c) - 1} others)" for c in _sccs(graph) for p in c
    }


def module_cycles(imports: dict[str, set[str]] = IMPORTS) -> set[str]:
    return {"module cycle: " + " <-> ".join(map(_short, c)) for c in _sccs(imports)}


def private_imports(imports: dict[str, set[str]] = IMPORTS) -> set[str]:
    found = set()
    for src, targets in imports.items():
        for dst in targets:
            parts = dst.split(".")
            for i, part in enumerate(parts):
                if part.startswith("_") and not part.startswith("__"):
                    owner = ".".join(parts[:i])
                    if not (package_of(src) == owner or package_of(src).startswith(owner + ".")):
                        found.add(f"private: {_short(src)} -> {_short(dst)}")
                    break
    return found


def _functions(tree: ast.AST) -> Iterable[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def size_violations() -> set[str]:
    found = set()
    for name, mod in MODULES.items():
        if EXEMPT.search(name + "."):
            continue
        lines = len(mod.path.read_text("utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            found.add(f"size: {_short(name)} has {lines} lines")
        for fn in _functions(mod.tree):
            length = (fn.end_lineno or fn.lineno) - fn.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.add(f"size: {_short(name)}.{fn.name} has {length} lines")
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.ClassDef):
                public = [
                    f
                    for f in node.body
                    if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                    and not f.name.startswith("_")
                ]
                if len(public) > MAX_PUBLIC_METHODS:
                    found.add(f"size: {_short(name)}.{node.name} has {len(public)} public methods")
    return found


def all_violations() -> set[str]:
    return (
        layer_violations()
        | package_cycles()
        | module_cycles()
        | private_imports()
        | size_violations()
    )


def test_the_layers_table_is_read() -> None:
    assert {"core", "serving", "knowledge", "agents", "gateway", "cli"} <= set(PACKAGES)
    assert ALLOWED["core"] == set(), "core imports nothing above it"
    for area, may in ALLOWED.items():
        assert may <= set(PACKAGES), f"{area} may import unknown areas {may - set(PACKAGES)}"


def test_every_module_belongs_to_an_area() -> None:
    code = [m for m, mod in MODULES.items() if mod.tree.body]  # empty __init__s hold nothing
    assert [m for m in code if area_of(m) is None] == []


def test_the_allowed_table_has_no_cycle() -> None:
    assert _sccs({a: set(b) for a, b in ALLOWED.items()}) == []


@pytest.mark.parametrize(
    "check", [layer_violations, package_cycles, module_cycles, private_imports, size_violations]
)
def test_no_violation(check) -> None:
    found = sorted(check())
    assert found == [], "\n".join(found)


def test_the_checks_catch_what_they_should() -> None:
    """The graph walk sees a lazy import, a cycle and a private import."""
    # kb_client imports the cluster module inside connect() only.
    assert "qingliang.platform.control.cluster" in IMPORTS["qingliang.platform.cli.kb_client"]
    assert _sccs({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert area_of("qingliang.platform.errors") == "core"
    assert area_of("qingliang.platform.gateway.app") == "gateway"


def test_a_planted_violation_is_caught() -> None:
    """Each rule fails on an edge it forbids, added to the real graph."""
    upward = {**IMPORTS, "qingliang.serving.traffic": {"qingliang.platform.gateway.app"}}
    assert layer_violations(upward) == {
        "layer: serving.traffic (serving) -> platform.gateway.app (gateway)"
    }
    private = {**IMPORTS, "qingliang.agents.llm": {"qingliang.knowledge.ingest._decode"}}
    assert private_imports(private) == {"private: agents.llm -> knowledge.ingest._decode"}
    # serving.engines importing the serving root closes a loop with the root's import of it.
    loop = {
        **IMPORTS,
        "qingliang.serving.engines.vllm_engine": {"qingliang.serving.deployments.model"},
    }
    assert package_cycles(loop) and module_cycles(loop)
