"""Versioned snapshots of a knowledge base's points, and rollback to one of them.

A snapshot is a folder written next to the store, independent of the backend (Qdrant Edge
and a Qdrant server alike)::

    <root>/<kb>/v<version>/dense.npy         float32 matrix, one row per point (exact)
    <root>/<kb>/v<version>/points.jsonl.gz   id, payload and sparse vector per point, in row order
    <root>/<kb>/v<version>/meta.json         written last: counts and the files' sha256

It is built in a ``.tmp-*`` folder and renamed into place, so a crash leaves either no
snapshot or a whole one; :func:`load` re-checks the hashes and refuses a damaged one.

**Rollback** computes the difference between a snapshot and the store and writes only that:
points whose payload or vectors differ are upserted whole, points the snapshot lacks are
deleted (last). Like sync, it is convergent: a rollback killed half-way and run again ends
in exactly the snapshot's state. Learned answers (``origin: learned``) are not part of a
snapshot and are left alone: the ledger of answers decides them, so a retracted answer
never comes back with an old version.

Example:
    >>> snap = write(store, "gov", "docs", root, version=7)  # doctest: +SKIP
    >>> restore(store, "gov", "docs", load(root, "gov", 7))  # doctest: +SKIP
    RestoreReport(upserted=3, deleted=1, unchanged=118)
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qingliang.knowledge.stores import Filter, Point, PointId, Record, SparseVector, VectorStore
from qingliang.knowledge.sync import LEARNED
from qingliang.platform.errors import QingliangError

log = logging.getLogger(__name__)

_PAGE = 256
_BATCH = 64


class SnapshotError(QingliangError):
    """A snapshot is missing, incomplete or damaged."""


@dataclass(frozen=True)
class Snapshot:
    """A loaded snapshot: the points of one KB as of ``version``."""

    kb: str
    version: int
    records: list[Record]


@dataclass
class RestoreReport:
    upserted: int = 0
    deleted: int = 0
    unchanged: int = 0


def folder(root: Path, kb: str, version: int) -> Path:
    return Path(root) / kb / f"v{version:06d}"


def _records(store: VectorStore, collection: str, kb: str) -> Iterator[Record]:
    offset: PointId | None = None
    flt = Filter(equals={"kb": kb})
    while True:
        recs, offset = store.scroll(collection, flt, limit=_PAGE, offset=offset, with_vectors=True)
        for rec in recs:
            if rec.payload.get("origin") != LEARNED:
                yield rec
        if offset is None:
            return


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write(
    store: VectorStore, kb: str, collection: str, root: Path, *, version: int
) -> tuple[Path, int]:
    """Save every source point of ``kb`` as snapshot ``version``; returns (folder, points).

    Writing the same version twice replaces the earlier snapshot atomically.
    """
    import numpy as np

    target = folder(root, kb, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-v{version}-", dir=target.parent))
    try:
        rows: list[list[float]] = []
        with gzip.open(tmp / "points.jsonl.gz", "wt", encoding="utf-8") as out:
            for rec in _records(store, collection, kb):
                if rec.dense is None:
                    raise SnapshotError(f"point {rec.id} of {kb!r} has no dense vector")
                rows.append(list(rec.dense))
                sparse = (
                    None
                    if rec.sparse is None
                    else [list(rec.sparse.indices), list(rec.sparse.values)]
                )
                line = {"id": rec.id, "payload": rec.payload, "sparse": sparse}
                out.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")
        dim = len(rows[0]) if rows else 0
        matrix = np.asarray(rows, dtype=np.float32).reshape(len(rows), dim)
        np.save(tmp / "dense.npy", matrix, allow_pickle=False)
        meta = {
            "format": 1,
            "kb": kb,
            "version": version,
            "points": len(rows),
            "dim": dim,
            "sha256": {name: _sha(tmp / name) for name in ("dense.npy", "points.jsonl.gz")},
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        _fsync_dir(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("snapshot %s v%d: %d points", kb, version, len(rows))
    return target, len(rows)


def load(root: Path, kb: str, version: int) -> Snapshot:
    """Read snapshot ``version`` of ``kb``, checking it is whole and undamaged."""
    import numpy as np

    src = folder(root, kb, version)
    meta_path = src / "meta.json"
    if not meta_path.is_file():
        raise SnapshotError(f"knowledge base {kb!r} has no snapshot of version {version}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        for name, digest in meta["sha256"].items():
            if _sha(src / name) != digest:
                raise SnapshotError(f"snapshot v{version} of {kb!r} is damaged: {name} changed")
        matrix = np.load(src / "dense.npy", allow_pickle=False)
        records: list[Record] = []
        with gzip.open(src / "points.jsonl.gz", "rt", encoding="utf-8") as f:
            for row, line in zip(matrix, f, strict=True):
                item = json.loads(line)
                sparse = item["sparse"]
                records.append(
                    Record(
                        item["id"],
                        item["payload"],
                        tuple(float(v) for v in row),
                        None if sparse is None else SparseVector(sparse[0], sparse[1]),
                    )
                )
    except SnapshotError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"snapshot v{version} of {kb!r} is unreadable: {exc}") from exc
    if len(records) != meta["points"]:
        raise SnapshotError(f"snapshot v{version} of {kb!r} holds {len(records)} points")
    return Snapshot(kb, version, records)


def restore(
    store: VectorStore,
    kb: str,
    collection: str,
    snap: Snapshot,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> RestoreReport:
    """Make ``kb``'s source points in ``collection`` exactly ``snap``'s (learned ones stay)."""
    import numpy as np

    current = {rec.id: rec for rec in _records(store, collection, kb)}
    report = RestoreReport()
    todo: list[Point] = []
    for rec in snap.records:
        have = current.get(rec.id)
        if have is not None and _same(have, rec, np):
            report.unchanged += 1
            continue
        assert rec.dense is not None
        todo.append(Point(rec.id, rec.dense, sparse=rec.sparse, payload=rec.payload))
    for start in range(0, len(todo), _BATCH):
        store.upsert(collection, todo[start : start + _BATCH])
        report.upserted += len(todo[start : start + _BATCH])
        if progress is not None:
            progress(report.upserted, len(todo))
    wanted = {rec.id for rec in snap.records}
    stale = sorted((pid for pid in current if pid not in wanted), key=str)
    for start in range(0, len(stale), _BATCH):
        store.delete(collection, stale[start : start + _BATCH])
    report.deleted = len(stale)
    return report


def _same(a: Record, b: Record, np: Any) -> bool:
    if a.payload != b.payload or a.dense is None or b.dense is None:
        return False
    if not np.array_equal(np.asarray(a.dense, np.float32), np.asarray(b.dense, np.float32)):
        return False
    sa = None if a.sparse is None else (tuple(a.sparse.indices), _f32(a.sparse.values, np))
    sb = None if b.sparse is None else (tuple(b.sparse.indices), _f32(b.sparse.values, np))
    return sa == sb


def _f32(values: Any, np: Any) -> tuple[float, ...]:
    return tuple(np.asarray(values, np.float32).tolist())


def _fsync_dir(path: Path) -> None:
    for child in path.iterdir():
        with child.open("rb") as f:
            os.fsync(f.fileno())


def remove(root: Path, kb: str, version: int) -> None:
    shutil.rmtree(folder(root, kb, version), ignore_errors=True)
