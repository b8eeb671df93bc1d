"""What a store's migrations and its database say about its schema, read without Alembic.

Every process that opens a store checks that its schema is at the newest revision; almost
always it is, and importing Alembic for that check costs a process about 12 MiB and 0.15 s.
So the revision files are read with :mod:`ast` (their ``revision`` and ``down_revision``
literals) and the version table with one ``SELECT``; Alembic is imported only to migrate.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from sqlalchemy import Connection, inspect, text


def scan(versions: Path) -> tuple[str, frozenset[str]] | None:
    """The head revision and every revision in ``versions`` (its ``*.py`` files), or None
    when a file's ids are not plain literals or the history is not one line (Alembic
    then decides)."""
    files = tuple(
        (p, p.stat().st_mtime_ns) for p in sorted(versions.glob("*.py")) if p.name != "__init__.py"
    )
    return _scan(files)


@functools.lru_cache(maxsize=64)
def _scan(files: tuple[tuple[Path, int], ...]) -> tuple[str, frozenset[str]] | None:
    parents: dict[str, tuple[str, ...]] = {}
    for path, _mtime in files:
        ids = _ids(path)
        if ids is None:
            return None
        parents[ids[0]] = ids[1]
    named = {p for ps in parents.values() for p in ps}
    heads = [r for r in parents if r not in named]
    if len(heads) != 1 or not named <= set(parents):
        return None
    return heads[0], frozenset(parents)


def _ids(path: Path) -> tuple[str, tuple[str, ...]] | None:
    values: dict[str, object] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        target = value = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
            try:
                values[target.id] = ast.literal_eval(value) if value is not None else None
            except ValueError:
                return None
    revision, down = values.get("revision"), values.get("down_revision", ...)
    if not isinstance(revision, str) or down is ...:
        return None
    if down is None:
        return revision, ()
    if isinstance(down, str):
        return revision, (down,)
    if isinstance(down, tuple | list) and all(isinstance(d, str) for d in down):
        return revision, tuple(down)
    return None


def stamped(conn: Connection, table: str) -> list[str]:
    """The revisions recorded in the version table ``table`` (none when it is missing)."""
    if not inspect(conn).has_table(table):
        return []
    return [row[0] for row in conn.execute(text(f"SELECT version_num FROM {table}"))]
