"""The test tree's own rules: ``make test`` collects ``tests/`` in one pytest session.

Test directories are not packages (pytest's default ``rootdir``-relative import), so two
test modules with the same basename in different folders stop the whole collection with
"import file mismatch" — CI ran no test at all once because of that. Modules inside a
package (a folder with ``__init__.py``) get a dotted name and may share a basename.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _basename_clashes(root: Path) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = defaultdict(list)
    for path in sorted(root.rglob("test_*.py")):
        if (path.parent / "__init__.py").exists():
            continue
        seen[path.name].append(str(path.relative_to(root)))
    return {name: paths for name, paths in seen.items() if len(paths) > 1}


def test_test_module_basenames_are_unique() -> None:
    assert _basename_clashes(TESTS) == {}


def test_the_check_finds_a_clash(tmp_path: Path) -> None:
    for folder in ("unit/control", "integration"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "test_demos.py").write_text("")
    (tmp_path / "unit" / "pkg").mkdir()
    (tmp_path / "unit" / "pkg" / "__init__.py").write_text("")
    (tmp_path / "unit" / "pkg" / "test_demos.py").write_text("")
    assert _basename_clashes(tmp_path) == {
        "test_demos.py": ["integration/test_demos.py", "unit/control/test_demos.py"]
    }
