"""Versions of a knowledge base: sync (ingest what changed), snapshots and rollback.

A sync that changes something and a rollback each make a new version (see
:mod:`qingliang.knowledge.ledger`); with ``auto_snapshot`` the new version is saved at once
(:mod:`qingliang.knowledge.snapshots`), and only ``keep_snapshots`` saves are kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qingliang.knowledge import snapshots as snaps
from qingliang.knowledge._base import Kb, Progress
from qingliang.knowledge._images import image_collection
from qingliang.knowledge._paths import PublicPaths, list_uploads, public_errors
from qingliang.knowledge.answers import LearnedAnswers
from qingliang.knowledge.ingest import (
    IngestOptions,
    IngestReport,
    Skipped,
    SourceFiles,
    find_sources,
    ingest_paths,
)
from qingliang.knowledge.ledger import SnapshotRecord
from qingliang.knowledge.stores import Filter
from qingliang.knowledge.sync import SyncReport
from qingliang.platform import metrics
from qingliang.platform.errors import BadRequest, Conflict, NotFound

log = logging.getLogger(__name__)

#: Failed files a sync's ledger event keeps (the rest are counted in ``errors``).
MAX_FAILED_KEPT = 50


@dataclass
class SyncOutcome:
    kb: str
    report: SyncReport
    version: int
    snapshot: int | None = None
    files: int = 0
    seconds: float = 0.0
    images: SyncReport | None = None
    #: Entries of the source and upload folders not read (symlinks, FIFOs ...), and why.
    skipped: list[Skipped] = field(default_factory=list)
    #: How paths are shown in :meth:`to_dict` (relative to the KB's folders).
    paths: PublicPaths = field(default_factory=PublicPaths, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the API and the CLI: paths relative to the KB's folders."""
        r, shown = self.report, self.paths
        return {
            "kb": self.kb,
            "version": self.version,
            "snapshot": self.snapshot,
            "files": self.files,
            "chunks": r.total,
            "added": r.added,
            "updated": r.updated,
            "unchanged": r.unchanged,
            "deleted": r.deleted,
            "embedded": r.embedded,
            "reused": r.reused,
            "reembedded_share": round(r.reembedded_share, 4),
            "kept_documents": r.kept_documents,
            "errors": [
                {"path": shown.path(e.path), "reason": shown.text(e.reason)} for e in r.errors
            ],
            "skipped": [{"path": shown.path(k.path), "reason": k.reason} for k in self.skipped],
            "seconds": round(self.seconds, 3),
            "images": None
            if self.images is None
            else {
                "chunks": self.images.total,
                "added": self.images.added,
                "updated": self.images.updated,
                "deleted": self.images.deleted,
                "embedded": self.images.embedded,
            },
        }


class Versions(LearnedAnswers):
    """Sync, snapshot and roll back knowledge bases (a base of KnowledgeService)."""

    # -- sync -----------------------------------------------------------------------------

    def files(self, name: str) -> list[Path]:
        """The files the KB's sources name now, uploads included."""
        return self._source_files(self._kb(name, None)).files

    def _source_files(self, kb: Kb) -> SourceFiles:
        found = find_sources(kb.manifest.spec.sources, kb.base)
        uploads = list_uploads(self._uploads(kb.name))
        return SourceFiles(
            files=sorted(dict.fromkeys(found.files + uploads.files)),
            skipped=found.skipped + uploads.skipped,
        )

    def sync(
        self,
        name: str,
        *,
        actor: str = "cli",
        tenant: str | None = None,
        rebuild: bool = False,
        progress: Progress | None = None,
    ) -> SyncOutcome:
        """Ingest the KB's sources and write only what changed (see :mod:`..sync`)."""
        kb = self._kb(name, tenant)
        started = time.perf_counter()
        with kb.lock, public_errors(self._public(kb)):
            if rebuild:
                self._drop_for_rebuild(kb)
            found = self._source_files(kb)
            report = self._ingest(kb, found.files, progress)
            outcome = self._apply(kb, report, actor=actor, action="sync", progress=progress)
            outcome.files = len(found.files)
            outcome.skipped = found.skipped
            self._reconcile_answers(kb)
        outcome.seconds = time.perf_counter() - started
        metrics.knowledge_ingested(kb.name, "sync", outcome)
        return outcome

    def _ingest(self, kb: Kb, files: Sequence[Path], progress: Progress | None) -> IngestReport:
        options = IngestOptions.from_spec(kb.manifest.spec)
        report = IngestReport()
        for i, path in enumerate(files):
            one = ingest_paths([path], options)
            report.documents.extend(one.documents)
            report.chunks.extend(one.chunks)
            report.errors.extend(one.errors)
            if progress is not None:
                progress("parse", i + 1, len(files))
        return report

    def _apply(
        self,
        kb: Kb,
        report: IngestReport,
        *,
        actor: str,
        action: str,
        progress: Progress | None,
        only_sources: Sequence[str] | None = None,
    ) -> SyncOutcome:
        version = self.ledger.next_version(kb.name)
        spec = kb.manifest.spec
        # `image` chunks (made only when spec.embedding.image is set) carry CLIP vectors of
        # another size, so they live in a sibling collection; everything else in the main one.
        texts = IngestReport(
            documents=report.documents,
            chunks=[c for c in report.chunks if c.kind != "image"],
            errors=report.errors,
        )
        kwargs: dict[str, Any] = {
            "tenant": spec.labels.tenant,
            "domain": spec.labels.domain,
            "version": version,
            "only_sources": only_sources,
        }
        result = self._syncer(kb, progress).sync(kb.name, texts, **kwargs)
        images: SyncReport | None = None
        if spec.embedding.image is not None:
            pictures = IngestReport(
                documents=report.documents,
                chunks=[c for c in report.chunks if c.kind == "image"],
                errors=report.errors,
            )
            images = self._image_syncer(kb).sync(kb.name, pictures, **kwargs)
        outcome = SyncOutcome(
            kb.name, result, self.ledger.version(kb.name), images=images, paths=self._public(kb)
        )
        changed = result.written or result.deleted
        if images is not None:
            changed = changed or images.written or images.deleted
        # The files that failed, as the caller sees them (public paths), kept with the
        # event so a base's ingest errors outlive the request that met them.
        failed = outcome.to_dict()["errors"][:MAX_FAILED_KEPT]
        if changed:
            detail = {
                k: v for k, v in outcome.to_dict().items() if k not in ("errors", "kb", "skipped")
            }
            detail["errors"] = len(result.errors)
            detail["failed"] = failed
            outcome.version = self.ledger.bump(kb.name, actor=actor, action=action, detail=detail)
            outcome.snapshot = self._auto_snapshot(kb, actor)
        elif result.errors:
            detail = {"errors": len(result.errors), "failed": failed}
            self.ledger.log(kb.name, actor=actor, action=action, detail=detail)
        return outcome

    def history(
        self, name: str, *, tenant: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The base's changes and refusals, newest first: sync, upload, delete, rollback,
        snapshot, answers — each with who, when, the version it made and its figures
        (``failed``: the files that did not ingest and why)."""
        kb = self._kb(name, tenant)
        shown = self._public(kb)
        return [
            {
                "seq": e.seq,
                "at": e.at,
                "actor": e.actor,
                "action": e.action,
                "version": e.version,
                # Host paths (a base folder, an older event's files) as every answer shows them.
                "detail": _public_values(e.detail, shown.text),
            }
            for e in self.ledger.events(name, limit=limit)
        ]

    def _drop_for_rebuild(self, kb: Kb) -> None:
        store = self._store(kb)
        coll = kb.manifest.collection
        if coll not in store.list_collections():
            return
        others = store.count(coll) - store.count(coll, Filter(equals={"kb": kb.name}))
        if others:
            raise Conflict(
                f"collection {coll!r} also holds {others} points of other knowledge bases: "
                "a rebuild would drop them; give this KB its own spec.store.collection"
            )
        store.drop_collection(coll)
        if image_collection(kb.manifest) in store.list_collections():
            store.drop_collection(image_collection(kb.manifest))

    # -- snapshots ------------------------------------------------------------------------

    def snapshot(
        self, name: str, *, note: str = "", actor: str = "cli", tenant: str | None = None
    ) -> SnapshotRecord:
        """Save the KB's points as of its current version (replacing an earlier save of it)."""
        kb = self._kb(name, tenant)
        with kb.lock, public_errors(self._public(kb)):
            return self._snapshot(kb, note=note, actor=actor)

    def _snapshot(self, kb: Kb, *, note: str, actor: str) -> SnapshotRecord:
        store = self._store(kb)
        version = self.ledger.version(kb.name)
        if kb.manifest.collection not in store.list_collections():
            raise Conflict(f"knowledge base {kb.name!r} has nothing to snapshot: sync it first")
        path, points = snaps.write(
            store, kb.name, kb.manifest.collection, self._snap_root, version=version
        )
        rec = SnapshotRecord(kb.name, version, time.time(), points, str(path), note)
        self.ledger.add_snapshot(rec, actor=actor)
        self._prune(kb.name)
        return rec

    def _auto_snapshot(self, kb: Kb, actor: str) -> int | None:
        if not self.auto_snapshot:
            return None
        return self._snapshot(kb, note="auto", actor=actor).version

    def _prune(self, name: str) -> None:
        recs = self.ledger.snapshots(name)
        for rec in recs[: max(0, len(recs) - self.keep_snapshots)]:
            snaps.remove(self._snap_root, name, rec.version)
            self.ledger.drop_snapshot(name, rec.version)

    def snapshots(self, name: str, *, tenant: str | None = None) -> list[SnapshotRecord]:
        self._kb(name, tenant)
        return self.ledger.snapshots(name)

    def rollback(
        self,
        name: str,
        version: int,
        *,
        actor: str = "cli",
        tenant: str | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Restore the KB's points to snapshot ``version``; records a new version.

        Learned answers are kept as the ledger says (a retracted one stays retracted).
        The sources are not touched: the next sync moves the KB to them again.
        """
        kb = self._kb(name, tenant)
        if isinstance(version, bool) or not isinstance(version, int):
            raise BadRequest(f"version must be an integer, got {version!r}", param="version")
        known = [s.version for s in self.ledger.snapshots(name)]
        if version not in known:
            have = ", ".join(map(str, known)) or "none"
            raise NotFound(
                f"knowledge base {name!r} has no snapshot of version {version} (have: {have})",
                param="version",
            )
        with kb.lock, public_errors(self._public(kb)):
            snap = snaps.load(self._snap_root, name, version)
            rep = snaps.restore(
                self._store(kb),
                name,
                kb.manifest.collection,
                snap,
                progress=None if progress is None else (lambda d, t: progress("restore", d, t)),
            )
            self._reconcile_answers(kb)
            detail = {"to": version, "upserted": rep.upserted, "deleted": rep.deleted}
            new = self.ledger.bump(name, actor=actor, action="rollback", detail=detail)
        return {"kb": name, "restored": version, "version": new, **detail}


def _public_values(value: Any, text: Any) -> Any:
    """``value`` with ``text`` applied to every string in it (dicts and lists walked)."""
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return {k: _public_values(v, text) for k, v in value.items()}
    if isinstance(value, list):
        return [_public_values(v, text) for v in value]
    return value
