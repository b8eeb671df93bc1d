"""``KnowledgeService``: every knowledge-base operation, in one plain class.

The CLI (``qingliang kb …``, in-process) and the gateway's knowledge server (a Ray Serve
deployment that owns the embedded shards) both call this class; neither holds logic of its
own. What lives where under the data directory (``QINGLIANG_HOME``)::

    state.sqlite                  applied manifests, KnowledgeBase ones included
    knowledge.sqlite              versions, snapshots, learned answers, audit log (registry)
    knowledge/<kb>/               the embedded Qdrant store (or spec.store.path)
    snapshots/<kb>/v000007/       snapshots (see qingliang.knowledge.snapshots)
    uploads/<kb>/                 documents uploaded through the API: an implicit source

**Tenancy.** A knowledge base belongs to the tenant in ``spec.labels.tenant``. Every call
from the API passes the caller's tenant: a KB of another tenant is reported as unknown
(``NotFound``, the same words as a KB that does not exist), and searches filter on the
tenant as well, so a shared collection never leaks another tenant's chunks. ``tenant=None``
is the local operator (the CLI), who sees every KB.

**Files and paths.** A request writes and deletes only in the KB's own upload folder, and
only regular files directly in it: an upload is stored under its plain file name, and a
delete that names anything else (``../``, an absolute path, a symlink, another tenant's
upload) is the same ``NotFound`` as an unknown document, decided without looking outside
the folder (:mod:`._paths`). Symlinks in source and upload folders are never followed;
sync reports each one it skipped (``skipped``). No response or error names a host path:
documents are shown relative to the KB's upload or source folder.

**Versions.** A sync that changes something, a rollback, and each learned answer added or
retracted make a new version; the points written carry it, so citations name it.

Example:
    >>> svc = KnowledgeService(Path("~/.qingliang").expanduser())  # doctest: +SKIP
    >>> svc.register(kb_manifest, base=Path("."))  # doctest: +SKIP
    >>> svc.sync("gov-policy").report.added  # doctest: +SKIP
    1520
    >>> hits = svc.search("gov-policy", "返岗人员隔离", tenant="city-a")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qingliang.knowledge import snapshots as snaps
from qingliang.knowledge._bm25 import Bm25Encoder
from qingliang.knowledge._images import ClipPassages, ClipQueries, image_collection
from qingliang.knowledge._paths import (
    PublicPaths,
    is_upload_name,
    list_uploads,
    public_errors,
    upload_file,
    upload_name,
)
from qingliang.knowledge.answers import LearnedAnswers
from qingliang.knowledge.embedders import embedder_for
from qingliang.knowledge.ingest import (
    IngestOptions,
    IngestReport,
    Skipped,
    SourceFiles,
    find_sources,
    ingest_paths,
)
from qingliang.knowledge.ledger import KnowledgeRegistry, SnapshotRecord
from qingliang.knowledge.manifest import KnowledgeBase
from qingliang.knowledge.retrieval import Retriever
from qingliang.knowledge.stores import Filter, PointId, VectorStore
from qingliang.knowledge.sync import LEARNED, Syncer, SyncReport
from qingliang.platform.errors import BadRequest, Conflict, NotFound
from qingliang.platform.storage.state import StateStore

log = logging.getLogger(__name__)

KIND = "KnowledgeBase"
#: Stages reported to a progress callback: (stage, done, total).
Progress = Callable[[str, int, int], None]

MAX_UPLOAD_BYTES = 50 * 1024 * 1024


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


@dataclass
class _Kb:
    manifest: KnowledgeBase
    base: Path
    applied_at: float = 0.0
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def tenant(self) -> str:
        return self.manifest.spec.labels.tenant


class KnowledgeService(LearnedAnswers):
    """Knowledge bases under one data directory.

    Args:
        home: The data directory (``Settings().home``).
        embedder_factory: ``model name -> embedder`` (default :func:`embedder_for`); tests
            may pass a small deterministic one.
        store_factory: ``(manifest, home) -> VectorStore`` (default: embedded or server as
            the manifest says).
        keep_snapshots: Snapshots kept per KB; the oldest beyond it are removed.
        auto_snapshot: Snapshot after every sync or rollback that changed something.
    """

    def __init__(
        self,
        home: Path,
        *,
        embedder_factory: Callable[[str], Any] | None = None,
        store_factory: Callable[[KnowledgeBase, Path], VectorStore] | None = None,
        keep_snapshots: int = 5,
        auto_snapshot: bool = True,
    ) -> None:
        self.home = Path(home)
        self.state = StateStore(self.home / "state.sqlite")
        self.registry = KnowledgeRegistry(self.home / "knowledge.sqlite")
        self._embedder_factory = embedder_factory or embedder_for
        self._store_factory = store_factory or default_store
        self.keep_snapshots = keep_snapshots
        self.auto_snapshot = auto_snapshot
        self._stores: dict[str, VectorStore] = {}
        self._embedders: dict[str, Any] = {}
        self._kbs: dict[str, _Kb] = {}
        self._lock = threading.RLock()

    # -- manifests ------------------------------------------------------------------------

    def register(self, kb: KnowledgeBase, *, base: Path, actor: str = "cli") -> str:
        """Record (or update) a KB manifest; returns ``created``, ``updated`` or ``unchanged``.

        Relative sources are taken from ``base`` (the manifest file's folder). Nothing is
        ingested: run :meth:`sync`.
        """
        body = kb.model_dump(mode="json", by_alias=True, exclude_defaults=False)
        old = self.state.get(KIND, kb.name)
        plan = {"base": str(Path(base).resolve())}
        if old is not None and old.body == body and old.plan == plan:
            return "unchanged"
        if old is not None:
            before = KnowledgeBase.model_validate(old.body)
            _check_compatible(before, kb)
        self.state.put(KIND, kb.name, body, plan)
        with self._lock:
            self._kbs.pop(kb.name, None)
        self.registry.log(kb.name, actor=actor, action="register", detail={"base": plan["base"]})
        return "created" if old is None else "updated"

    def names(self, tenant: str | None = None) -> list[str]:
        out = []
        for row in self.state.list(KIND):
            if (
                tenant is None
                or row.body.get("spec", {}).get("labels", {}).get("tenant", "default") == tenant
            ):
                out.append(row.name)
        return out

    def manifest(self, name: str, tenant: str | None = None) -> KnowledgeBase:
        return self._kb(name, tenant).manifest

    def remove(self, name: str, *, actor: str = "cli", drop_data: bool = True) -> None:
        """Forget a KB: its manifest, registry rows, snapshots, uploads and (by default) points."""
        kb = self._kb(name, None)
        with kb.lock:
            if drop_data:
                store = self._store(kb)
                for coll in (kb.manifest.collection, image_collection(kb.manifest)):
                    if coll in store.list_collections():
                        store.delete_by_filter(coll, Filter(equals={"kb": name}))
                        if store.count(coll) == 0:
                            store.drop_collection(coll)
                for rec in self.registry.snapshots(name):
                    snaps.remove(self._snap_root, name, rec.version)
                # Left behind, the files would become sources of the next KB of this name,
                # whichever tenant it belongs to.
                _remove_folder(self._uploads(name))
            self.registry.forget(name)
            self.registry.log(name, actor=actor, action="remove", detail={"data": drop_data})
            self.state.delete(KIND, name)
            with self._lock:
                self._kbs.pop(name, None)

    # -- sync -----------------------------------------------------------------------------

    def files(self, name: str) -> list[Path]:
        """The files the KB's sources name now, uploads included."""
        return self._source_files(self._kb(name, None)).files

    def _source_files(self, kb: _Kb) -> SourceFiles:
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
        return outcome

    def _ingest(self, kb: _Kb, files: Sequence[Path], progress: Progress | None) -> IngestReport:
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
        kb: _Kb,
        report: IngestReport,
        *,
        actor: str,
        action: str,
        progress: Progress | None,
        only_sources: Sequence[str] | None = None,
    ) -> SyncOutcome:
        version = self.registry.next_version(kb.name)
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
            kb.name, result, self.registry.version(kb.name), images=images, paths=self._public(kb)
        )
        changed = result.written or result.deleted
        if images is not None:
            changed = changed or images.written or images.deleted
        if changed:
            detail = {
                k: v for k, v in outcome.to_dict().items() if k not in ("errors", "kb", "skipped")
            }
            detail["errors"] = len(result.errors)
            outcome.version = self.registry.bump(kb.name, actor=actor, action=action, detail=detail)
            outcome.snapshot = self._auto_snapshot(kb, actor)
        elif result.errors:
            self.registry.log(
                kb.name, actor=actor, action=action, detail={"errors": len(result.errors)}
            )
        return outcome

    def _image_syncer(self, kb: _Kb) -> Syncer:
        clip = self._clip(kb)
        return Syncer(
            self._store(kb),
            ClipPassages(clip),
            collection=image_collection(kb.manifest),
            batch_size=kb.manifest.spec.embedding.batch_size,
            # The file path (to read the pixels) and the pixel hash (so an edited image is
            # embedded again and a re-encoded one is not).
            embed_input=lambda c: f"{c.location.image_path}\x1f{c.sha256}",
        )

    def _clip(self, kb: _Kb) -> Any:
        from qingliang.knowledge.image_embedding import ClipImageEmbedder

        conf = kb.manifest.spec.embedding.image
        assert conf is not None
        path = Path(conf.model_dir)
        path = path if path.is_absolute() else kb.base / path
        key = f"clip:{path}"
        with self._lock:
            emb = self._embedders.get(key)
            if emb is None:
                emb = self._embedders[key] = ClipImageEmbedder(path)
            return emb

    def _syncer(self, kb: _Kb, progress: Progress | None) -> Syncer:
        spec = kb.manifest.spec
        return Syncer(
            self._store(kb),
            self._embedder(spec.embedding.model),
            collection=kb.manifest.collection,
            batch_size=spec.embedding.batch_size,
            sparse_encoder=Bm25Encoder() if spec.sparse.bm25 else None,
            progress=None if progress is None else (lambda d, t: progress("embed", d, t)),
        )

    def _drop_for_rebuild(self, kb: _Kb) -> None:
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

    # -- search ---------------------------------------------------------------------------

    def search(
        self,
        name: str,
        query: str,
        *,
        tenant: str | None = None,
        limit: int = 5,
        mode: str | None = None,
        mmr: float | None = None,
        domain: str | Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> dict[str, Any]:
        """Cited hits for ``query``; ``mode`` defaults to hybrid when the KB has BM25.

        Citations name their document relative to the KB's folders (``source``,
        ``image_path``), never by its host path.
        """
        kb = self._kb(name, tenant)
        shown = self._public(kb)
        with public_errors(shown):
            out = self._search(kb, query, limit, mode, mmr, domain, kinds, since, until)
        for c in out["citations"]:
            c["source"] = shown.path(c["source"])
            if c.get("image_path"):
                c["image_path"] = shown.path(c["image_path"])
        return out

    def _search(
        self,
        kb: _Kb,
        query: str,
        limit: int,
        mode: str | None,
        mmr: float | None,
        domain: str | Sequence[str] | None,
        kinds: Sequence[str] | None,
        since: str | None,
        until: str | None,
    ) -> dict[str, Any]:
        name = kb.name
        spec = kb.manifest.spec
        store = self._store(kb)
        coll = kb.manifest.collection
        embedder = self._embedder(spec.embedding.model)
        chosen = mode or ("hybrid" if spec.sparse.bm25 else "dense")
        wanted = [kinds] if isinstance(kinds, str) else list(kinds or [])
        if "image" in wanted:
            if wanted != ["image"]:
                raise BadRequest(
                    "search images alone (kinds: [image]): their vectors are not comparable "
                    "with text chunks'",
                    param="kinds",
                )
            if spec.embedding.image is None:
                raise BadRequest(
                    f"knowledge base {name!r} has no image embedding (spec.embedding.image)",
                    param="kinds",
                )
            coll, embedder, chosen = (
                image_collection(kb.manifest),
                ClipQueries(self._clip(kb)),
                "dense",
            )
        if coll not in store.list_collections():
            raise Conflict(f"knowledge base {name!r} has not been synced yet: run `kb sync {name}`")
        retriever = Retriever(store, embedder, collection=coll)
        citations = retriever.search(
            query,
            tenant=kb.tenant,
            limit=limit,
            kb=name,
            domain=domain,
            kinds=kinds,
            since=since,
            until=until,
            mode=chosen,
            mmr=mmr,
        )
        return {
            "kb": name,
            "version": self.registry.version(name),
            "mode": chosen,
            "citations": [c.to_dict() for c in citations],
        }

    # -- documents ------------------------------------------------------------------------

    def documents(self, name: str, *, tenant: str | None = None) -> list[dict[str, Any]]:
        """One row per stored document (learned answers excluded), sorted by source.

        ``source`` is relative to the KB: an upload's file name, or the path below the
        source folder it comes from.
        """
        kb = self._kb(name, tenant)
        shown = self._public(kb)
        with public_errors(shown):
            rows = [{**r, "source": shown.path(str(r["source"]))} for r in self._rows(kb)]
        return sorted(rows, key=lambda r: (str(r["source"]), str(r["record"] or "")))

    def _rows(self, kb: _Kb) -> list[dict[str, Any]]:
        """:meth:`documents` with the stored (host) ``source`` paths."""
        name = kb.name
        store = self._store(kb)
        coll = kb.manifest.collection
        if coll not in store.list_collections():
            return []
        uploads = str(self._uploads(name))
        docs: dict[str, dict[str, Any]] = {}
        for payload in self._payloads(store, coll, name):
            if payload.get("origin") == LEARNED:
                continue
            doc_id = str(payload.get("doc_id"))
            row = docs.setdefault(
                doc_id,
                {
                    "doc_id": doc_id,
                    "source": payload.get("source"),
                    "title": payload.get("title"),
                    "type": payload.get("doc_type"),
                    "record": payload.get("record"),
                    "chunks": 0,
                    "doc_sha256": payload.get("doc_sha256"),
                    "version": payload.get("version"),
                    "uploaded": str(payload.get("source", "")).startswith(uploads + os.sep),
                },
            )
            row["chunks"] += 1
            v = payload.get("version")
            if isinstance(v, int) and (row["version"] is None or v > row["version"]):
                row["version"] = v
        return sorted(docs.values(), key=lambda r: (str(r["source"]), str(r["record"] or "")))

    def upload(
        self,
        name: str,
        filename: str,
        data: bytes,
        *,
        tenant: str | None = None,
        actor: str = "api",
    ) -> SyncOutcome:
        """Store ``data`` as ``uploads/<kb>/<filename>`` and sync just that document.

        Uploading the same name again replaces the document (only changed chunks are
        re-embedded). A file that fails to parse is reported in ``errors`` and nothing is
        stored for it; a replaced document whose new version fails keeps its old chunks.
        """
        kb = self._kb(name, tenant)
        clean = upload_name(filename)
        if not data:
            raise BadRequest(f"{clean}: the file is empty", param="file")
        if len(data) > MAX_UPLOAD_BYTES:
            raise BadRequest(
                f"{clean}: {len(data)} bytes is over the {MAX_UPLOAD_BYTES >> 20} MiB limit",
                param="file",
            )
        started = time.perf_counter()
        shown = self._public(kb)
        with kb.lock, public_errors(shown):
            folder = self._uploads(name)
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / clean
            # Hidden (so never a source) but with the real suffix, so it parses alike;
            # created exclusively, so nothing already there (a planted link) is written
            # through. os.replace then swaps the directory entry: a link at `target` is
            # replaced, never followed.
            tmp = folder / f".{uuid.uuid4().hex[:8]}.{clean}"
            with open(tmp, "xb") as f:
                f.write(data)
            report = ingest_paths([tmp], IngestOptions.from_spec(kb.manifest.spec))
            if report.errors and not report.chunks:
                tmp.unlink()
                reason = shown.text(report.errors[0].reason)
                raise BadRequest(f"{clean}: {reason}; nothing was stored", param="file")
            os.replace(tmp, target)
            report = ingest_paths([target], IngestOptions.from_spec(kb.manifest.spec))
            outcome = self._apply(
                kb,
                report,
                actor=actor,
                action="upload",
                progress=None,
                only_sources=[str(target)],
            )
            outcome.files = 1
        outcome.seconds = time.perf_counter() - started
        return outcome

    def delete_document(
        self, name: str, doc: str, *, tenant: str | None = None, actor: str = "api"
    ) -> SyncOutcome:
        """Delete an uploaded document (by doc_id or upload name) and its chunks.

        Only a regular file directly in the KB's upload folder is ever removed. Anything
        else ``doc`` may name — a path with ``..`` or separators, an absolute path, a
        symlink, another KB's upload — is the same ``NotFound`` as an unknown document,
        decided without looking at anything outside the folder.
        Documents of the manifest's own sources are refused (``Conflict``): the next sync
        would bring them back; remove them from the source folder instead.
        """
        kb = self._kb(name, tenant)
        shown = self._public(kb)
        # One message for every refusal, whatever `doc` is: it tells nothing about disk.
        unknown = NotFound(
            f"knowledge base {name!r} has no document by that doc_id or upload name",
            param="doc",
        )
        with kb.lock, public_errors(shown):
            folder = self._uploads(name)
            # Plain string comparisons: the listed doc_id or source, never a path.
            rows = [
                r
                for r in self._rows(kb)
                if isinstance(doc, str) and doc in (r["doc_id"], shown.path(str(r["source"])))
            ]
            rows.sort(key=lambda r: not r["uploaded"])
            if rows and not rows[0]["uploaded"]:
                raise Conflict(
                    f"document {doc!r} comes from the manifest's sources "
                    f"({shown.path(str(rows[0]['source']))}); remove it there and sync, "
                    "or change spec.sources"
                )
            if rows:
                file_name = Path(str(rows[0]["source"])).name
                if str(folder / file_name) != rows[0]["source"]:
                    raise unknown
            elif is_upload_name(doc):
                file_name = doc  # a file left without chunks (an upload that crashed)
            else:
                raise unknown
            on_disk = upload_file(folder, file_name)
            if on_disk == "other" or (on_disk == "missing" and not rows):
                raise unknown
            source = folder / file_name
            if on_disk == "file":
                source.unlink()
            outcome = self._apply(
                kb,
                IngestReport(),
                actor=actor,
                action="delete-document",
                progress=None,
                only_sources=[str(source)],
            )
        return outcome

    # -- snapshots ------------------------------------------------------------------------

    def snapshot(
        self, name: str, *, note: str = "", actor: str = "cli", tenant: str | None = None
    ) -> SnapshotRecord:
        """Save the KB's points as of its current version (replacing an earlier save of it)."""
        kb = self._kb(name, tenant)
        with kb.lock, public_errors(self._public(kb)):
            return self._snapshot(kb, note=note, actor=actor)

    def _snapshot(self, kb: _Kb, *, note: str, actor: str) -> SnapshotRecord:
        store = self._store(kb)
        version = self.registry.version(kb.name)
        if kb.manifest.collection not in store.list_collections():
            raise Conflict(f"knowledge base {kb.name!r} has nothing to snapshot: sync it first")
        path, points = snaps.write(
            store, kb.name, kb.manifest.collection, self._snap_root, version=version
        )
        rec = SnapshotRecord(kb.name, version, time.time(), points, str(path), note)
        self.registry.add_snapshot(rec, actor=actor)
        self._prune(kb.name)
        return rec

    def _auto_snapshot(self, kb: _Kb, actor: str) -> int | None:
        if not self.auto_snapshot:
            return None
        return self._snapshot(kb, note="auto", actor=actor).version

    def _prune(self, name: str) -> None:
        recs = self.registry.snapshots(name)
        for rec in recs[: max(0, len(recs) - self.keep_snapshots)]:
            snaps.remove(self._snap_root, name, rec.version)
            self.registry.drop_snapshot(name, rec.version)

    def snapshots(self, name: str, *, tenant: str | None = None) -> list[SnapshotRecord]:
        self._kb(name, tenant)
        return self.registry.snapshots(name)

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

        Learned answers are kept as the registry says (a retracted one stays retracted).
        The sources are not touched: the next sync moves the KB to them again.
        """
        kb = self._kb(name, tenant)
        if isinstance(version, bool) or not isinstance(version, int):
            raise BadRequest(f"version must be an integer, got {version!r}", param="version")
        known = [s.version for s in self.registry.snapshots(name)]
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
            new = self.registry.bump(name, actor=actor, action="rollback", detail=detail)
        return {"kb": name, "restored": version, "version": new, **detail}

    # -- stats ----------------------------------------------------------------------------

    def stats(self, name: str, *, tenant: str | None = None) -> dict[str, Any]:
        kb = self._kb(name, tenant)
        with public_errors(self._public(kb)):
            return self._stats(kb)

    def _stats(self, kb: _Kb) -> dict[str, Any]:
        name = kb.name
        spec = kb.manifest.spec
        store = self._store(kb)
        coll = kb.manifest.collection
        synced = coll in store.list_collections()
        docs = self._rows(kb) if synced else []
        events = self.registry.events(name, limit=20)
        last_sync = next((e for e in events if e.action in ("sync", "upload")), None)
        return {
            "kb": name,
            "tenant": kb.tenant,
            "domain": spec.labels.domain,
            "version": self.registry.version(name),
            "collection": coll,
            "store": spec.store.kind,
            "spec": store.collection_spec(coll).describe() if synced else None,
            "embedding": spec.embedding.model,
            "bm25": spec.sparse.bm25,
            "documents": len(docs),
            "uploaded_documents": sum(1 for d in docs if d["uploaded"]),
            "chunks": store.count(coll, Filter(equals={"kb": name})) if synced else 0,
            "answers": len(self.registry.answers(name)),
            "snapshots": [s.to_dict() for s in self.registry.snapshots(name)],
            "last_sync": None
            if last_sync is None
            else {"at": last_sync.at, "version": last_sync.version, **last_sync.detail},
        }

    def close(self) -> None:
        with self._lock:
            for store in self._stores.values():
                store.close()
            self._stores.clear()

    # -- internals ------------------------------------------------------------------------

    @property
    def _snap_root(self) -> Path:
        return self.home / "snapshots"

    def _uploads(self, name: str) -> Path:
        return self.home / "uploads" / name

    def _public(self, kb: _Kb) -> PublicPaths:
        """How this KB's paths are shown: below its upload, source or manifest folder."""
        roots = [self._uploads(kb.name)]
        for src in kb.manifest.spec.sources:
            if src.folder is not None:
                roots.append(kb.base / src.folder)
            elif src.path is not None:
                roots.append((kb.base / src.path).parent)
        roots.append(kb.base)
        return PublicPaths(roots, data_dir=self.home)

    def _kb(self, name: str, tenant: str | None) -> _Kb:
        if not isinstance(name, str) or not name:
            raise BadRequest("knowledge base name is required", param="kb")
        # Read the row every time: another process (`qingliang apply`) may have changed it.
        row = self.state.get(KIND, name)
        with self._lock:
            if row is None:
                self._kbs.pop(name, None)
                raise self._unknown(name, tenant)
            kb = self._kbs.get(name)
            if kb is None or kb.applied_at != row.applied_at:
                base = Path((row.plan or {}).get("base", "."))
                fresh = _Kb(KnowledgeBase.model_validate(row.body), base, row.applied_at)
                if kb is not None:
                    fresh.lock = kb.lock  # writers already waiting keep the same lock
                kb = self._kbs[name] = fresh
        if tenant is not None and kb.tenant != tenant:
            raise self._unknown(name, tenant)
        return kb

    def _unknown(self, name: str, tenant: str | None) -> NotFound:
        known = self.names(tenant)
        hint = f"; known: {', '.join(known)}" if known else "; none is applied yet"
        return NotFound(f"unknown knowledge base {name!r}{hint}", param="kb", code="unknown_kb")

    def _store(self, kb: _Kb) -> VectorStore:
        key = _store_key(kb.manifest, self.home)
        with self._lock:
            store = self._stores.get(key)
            if store is None:
                store = self._store_factory(kb.manifest, self.home)
                self._stores[key] = store
            return store

    def _embedder(self, model: str) -> Any:
        with self._lock:
            emb = self._embedders.get(model)
            if emb is None:
                emb = self._embedders[model] = self._embedder_factory(model)
            return emb

    def _payloads(self, store: VectorStore, coll: str, name: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        offset: PointId | None = None
        while True:
            recs, offset = store.scroll(coll, Filter(equals={"kb": name}), limit=256, offset=offset)
            out.extend(r.payload for r in recs)
            if offset is None:
                return out


def _store_key(kb: KnowledgeBase, home: Path) -> str:
    st = kb.spec.store
    if st.kind == "server":
        return f"server:{st.url}:{st.api_key_env}"
    return f"embedded:{home / (st.path or f'knowledge/{kb.name}')}"


def default_store(kb: KnowledgeBase, home: Path) -> VectorStore:
    """The store a manifest names: embedded under ``home`` or a Qdrant server."""
    st = kb.spec.store
    if st.kind == "embedded":
        from qingliang.knowledge.stores import QdrantEdgeStore

        return QdrantEdgeStore(home / (st.path or f"knowledge/{kb.name}"))
    api_key = None
    if st.api_key_env:
        api_key = os.environ.get(st.api_key_env)
        if not api_key:
            raise BadRequest(
                f"knowledge base {kb.name!r}: environment variable {st.api_key_env} "
                "(spec.store.api_key_env) is not set",
                param="store.api_key_env",
            )
    from qdrant_client import QdrantClient

    from qingliang.knowledge.stores import QdrantServerStore

    return QdrantServerStore(QdrantClient(url=st.url, api_key=api_key, timeout=30))


def _check_compatible(before: KnowledgeBase, after: KnowledgeBase) -> None:
    """Refuse manifest changes that would orphan stored data without a rebuild."""
    a, b = before.spec, after.spec
    if (a.store.kind, a.store.path, a.store.url) != (b.store.kind, b.store.path, b.store.url):
        raise Conflict(
            f"knowledge base {after.name!r}: spec.store changed; delete the KB and apply it "
            "again to move it (its points stay in the old store otherwise)"
        )
    if before.collection != after.collection:
        raise Conflict(
            f"knowledge base {after.name!r}: spec.store.collection changed from "
            f"{before.collection!r} to {after.collection!r}; delete and re-apply to move it"
        )


def _remove_folder(folder: Path) -> None:
    """Remove ``folder`` and its files; a symlink in its place is unlinked, not followed."""
    if folder.is_symlink():
        folder.unlink()
    elif folder.is_dir():
        shutil.rmtree(folder)
