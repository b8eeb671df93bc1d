"""``KnowledgeService``: every knowledge-base operation, in one plain class.

The CLI (``qingliang kb …``, in-process) and the gateway's knowledge server (a Ray Serve
deployment that owns the embedded shards) both call this class; neither holds logic of its
own. What lives where under the data directory (``QINGLIANG_HOME``)::

    state.sqlite                  applied manifests, KnowledgeBase ones included
    knowledge.sqlite              versions, snapshots, learned answers, audit log (ledger)
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
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qingliang.knowledge import snapshots as snaps
from qingliang.knowledge._base import KIND, Kb, default_store, resolve_store
from qingliang.knowledge._images import ClipQueries, image_collection
from qingliang.knowledge._paths import public_errors
from qingliang.knowledge.documents import MAX_UPLOAD_BYTES, Documents
from qingliang.knowledge.manifest import KnowledgeBase
from qingliang.knowledge.retrieval import Retriever, check_query
from qingliang.knowledge.stores import Filter
from qingliang.knowledge.versions import SyncOutcome
from qingliang.knowledge.vision import ImageLimits, ImageQuery, image_query
from qingliang.platform.errors import BadRequest, Conflict

log = logging.getLogger(__name__)

__all__ = ["MAX_UPLOAD_BYTES", "KnowledgeService", "SyncOutcome", "default_store"]


class KnowledgeService(Documents):
    """Knowledge bases under one data directory: every operation, in one class.

    The operations come in groups, one module each: learned answers
    (:mod:`.answers`), versions (:mod:`.versions`: sync, snapshots, rollback), documents
    (:mod:`.documents`); manifests, search and stats are here. Arguments: see
    :class:`~qingliang.knowledge._base.KnowledgeBases`.
    """

    # -- manifests ------------------------------------------------------------------------

    def register(self, kb: KnowledgeBase, *, base: Path, actor: str = "cli") -> str:
        """Record (or update) a KB manifest; returns ``created``, ``updated`` or ``unchanged``.

        Relative sources are taken from ``base`` (the manifest file's folder). Nothing is
        ingested: run :meth:`sync`.
        """
        kb = resolve_store(kb)  # QINGLIANG_QDRANT_URL, where the manifest names no store
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
        self.ledger.log(kb.name, actor=actor, action="register", detail={"base": plan["base"]})
        return "created" if old is None else "updated"

    def remove(self, name: str, *, actor: str = "cli", drop_data: bool = True) -> None:
        """Forget a KB: its manifest, ledger rows, snapshots, uploads and (by default) points."""
        kb = self._kb(name, None)
        with kb.lock:
            if drop_data:
                store = self._store(kb)
                for coll in (kb.manifest.collection, image_collection(kb.manifest)):
                    if coll in store.list_collections():
                        store.delete_by_filter(coll, Filter(equals={"kb": name}))
                        if store.count(coll) == 0:
                            store.drop_collection(coll)
                for rec in self.ledger.snapshots(name):
                    snaps.remove(self._snap_root, name, rec.version)
                # Left behind, the files would become sources of the next KB of this name,
                # whichever tenant it belongs to.
                _remove_folder(self._uploads(name))
            self.ledger.forget(name)
            self.ledger.log(name, actor=actor, action="remove", detail={"data": drop_data})
            self.state.delete(KIND, name)
            with self._lock:
                self._kbs.pop(name, None)

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
        image: str | None = None,
        context: int | None = None,
        query_vector: Sequence[float] | None = None,
    ) -> dict[str, Any]:
        """Cited hits for ``query``; ``mode`` defaults to hybrid when the KB has BM25.

        ``query_vector`` is the text query's embedding when the caller has it already (the
        knowledge server embeds concurrent queries in one batch; see :meth:`query_embedder`);
        None embeds ``query`` here.

        ``context`` (0..3) is how many neighbouring chunks on each side join each hit in its
        ``context`` (its cited ``text`` stays the chunk that matched); by default the KB's
        ``spec.retrieval.context.neighbours``, 0 leaves ``context`` out.

        ``image`` (a data URL, or a ``file://`` reference in a folder the administrator
        allowed) searches with a picture: the text OCR reads in it joins ``query``; with
        ``kinds: [image]`` the image's own vector finds the KB's similar images. The
        answer's ``image_query`` says which was done.

        Citations name their document relative to the KB's folders (``source``,
        ``image_path``), never by its host path.
        """
        kb = self._kb(name, tenant)
        shown = self._public(kb)
        picture = None
        if image is not None:
            query, picture = image_query(query, image, kinds, ImageLimits.from_env())
        with public_errors(shown):
            out = self._search(
                kb,
                query,
                limit,
                mode,
                mmr,
                domain,
                kinds,
                since,
                until,
                picture=picture,
                context=context,
                query_vector=query_vector,
            )
        for c in out["citations"]:
            c["source"] = shown.path(c["source"])
            if c.get("image_path"):
                c["image_path"] = shown.path(c["image_path"])
        return out

    def _search(
        self,
        kb: Kb,
        query: str,
        limit: int,
        mode: str | None,
        mmr: float | None,
        domain: str | Sequence[str] | None,
        kinds: Sequence[str] | None,
        since: str | None,
        until: str | None,
        *,
        picture: ImageQuery | None = None,
        context: int | None = None,
        query_vector: Sequence[float] | None = None,
    ) -> dict[str, Any]:
        name = kb.name
        spec = kb.manifest.spec
        store = self._store(kb)
        coll = kb.manifest.collection
        embedder: Any = (
            self._embedder(spec.embedding.model)
            if query_vector is None
            else _Embedded(query_vector)
        )
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
            clip = self._clip(kb)
            coll, chosen = image_collection(kb.manifest), "dense"
            embedder = ClipQueries(clip) if picture is None else picture.vectors(clip)
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
            context=_context(spec.retrieval, context, "image" not in wanted),
            **_rerank(spec.retrieval, "image" not in wanted),
        )
        return {
            "kb": name,
            "version": self.ledger.version(name),
            "mode": chosen,
            "citations": [c.to_dict() for c in citations],
            **({"image_query": picture.describe()} if picture is not None else {}),
        }

    def query_embedder(self, name: str, query: object, *, tenant: str | None = None) -> Any:
        """The embedder of ``name``'s text queries (the one its passages were embedded with),
        with ``query`` checked as :meth:`search` checks it.

        Raises:
            NotFound: no such KB for ``tenant``.
            BadRequest: ``query`` is missing, empty or too long.
        """
        kb = self._kb(name, tenant)
        check_query(query)
        return self._embedder(kb.manifest.spec.embedding.model)

    # -- stats ----------------------------------------------------------------------------

    def stats(self, name: str, *, tenant: str | None = None) -> dict[str, Any]:
        kb = self._kb(name, tenant)
        with public_errors(self._public(kb)):
            return self._stats(kb)

    def _stats(self, kb: Kb) -> dict[str, Any]:
        name = kb.name
        spec = kb.manifest.spec
        store = self._store(kb)
        coll = kb.manifest.collection
        synced = coll in store.list_collections()
        docs = self._rows(kb) if synced else []
        events = self.ledger.events(name, limit=20)
        last_sync = next((e for e in events if e.action in ("sync", "upload")), None)
        return {
            "kb": name,
            "tenant": kb.tenant,
            "domain": spec.labels.domain,
            "version": self.ledger.version(name),
            "collection": coll,
            "store": spec.store.kind,
            "spec": store.collection_spec(coll).describe() if synced else None,
            "embedding": spec.embedding.model,
            "bm25": spec.sparse.bm25,
            "documents": len(docs),
            "uploaded_documents": sum(1 for d in docs if d["uploaded"]),
            "chunks": store.count(coll, Filter(equals={"kb": name})) if synced else 0,
            "answers": len(self.ledger.answers(name)),
            "snapshots": [s.to_dict() for s in self.ledger.snapshots(name)],
            "last_sync": None
            if last_sync is None
            else {"at": last_sync.at, "version": last_sync.version, **last_sync.detail},
        }


class _Embedded:
    """The query embedder of a search whose query vector was computed already."""

    def __init__(self, vector: Sequence[float]) -> None:
        self._vector = [float(v) for v in vector]

    def embed(self, texts: list[str], *, input_type: str = "query") -> list[list[float]]:
        return [self._vector for _ in texts]


def _rerank(retrieval: Any, text: bool) -> dict[str, Any]:
    """The re-rank arguments of a text search under ``spec.retrieval`` (none for images)."""
    if not text or retrieval.rerank == "none":
        return {}
    return {"rerank": retrieval.rerank, "candidates": retrieval.candidates}


def _context(retrieval: Any, asked: int | None, text: bool) -> Any:
    """The neighbours of a search: what it asked, else the KB's setting (none for images)."""
    if asked is None:
        return retrieval.context.neighbours if text else 0
    return asked  # checked by the retriever; an image hit gets no context


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
