"""The knowledge service's foundation: its state and how it finds a KB, a store, an embedder.

:class:`KnowledgeBases` holds what every operation shares: the state store of applied
manifests, the ledger (:class:`~qingliang.knowledge.ledger.KnowledgeLedger`), the open
vector stores and embedders, and one :class:`Kb` per knowledge base in use (its manifest,
base folder and lock). The operations build on it, one group per module, each a subclass
of the one before::

    KnowledgeBases → LearnedAnswers (answers) → Versions (sync, snapshots, rollback)
        → Documents (list, upload, delete) → KnowledgeService (register, search, stats)
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qingliang.knowledge._bm25 import Bm25Encoder
from qingliang.knowledge._images import ClipPassages, image_collection
from qingliang.knowledge._paths import PublicPaths
from qingliang.knowledge.embedders import embedder_for
from qingliang.knowledge.ledger import KnowledgeLedger
from qingliang.knowledge.manifest import KnowledgeBase, with_default_store
from qingliang.knowledge.stores import Filter, PointId, VectorStore
from qingliang.knowledge.sync import Syncer
from qingliang.platform.errors import BadRequest, NotFound
from qingliang.platform.storage.state import StateStore

log = logging.getLogger(__name__)

KIND = "KnowledgeBase"
#: Stages reported to a progress callback: (stage, done, total).
Progress = Callable[[str, int, int], None]


@dataclass
class Kb:
    """A knowledge base as the service holds it: its manifest, base folder and lock."""

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


class KnowledgeBases:
    """Knowledge bases under one data directory: the state every operation shares.

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
        self.ledger = KnowledgeLedger(self.home / "knowledge.sqlite")
        self._embedder_factory = embedder_factory or embedder_for
        self._store_factory = store_factory or default_store
        self.keep_snapshots = keep_snapshots
        self.auto_snapshot = auto_snapshot
        self._stores: dict[str, VectorStore] = {}
        self._embedders: dict[str, Any] = {}
        self._kbs: dict[str, Kb] = {}
        self._lock = threading.RLock()

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

    def _public(self, kb: Kb) -> PublicPaths:
        """How this KB's paths are shown: below its upload, source or manifest folder."""
        roots = [self._uploads(kb.name)]
        for src in kb.manifest.spec.sources:
            if src.folder is not None:
                roots.append(kb.base / src.folder)
            elif src.path is not None:
                roots.append((kb.base / src.path).parent)
        roots.append(kb.base)
        return PublicPaths(roots, data_dir=self.home)

    def _kb(self, name: str, tenant: str | None) -> Kb:
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
                fresh = Kb(KnowledgeBase.model_validate(row.body), base, row.applied_at)
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

    def _store(self, kb: Kb) -> VectorStore:
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

    def _clip(self, kb: Kb) -> Any:
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

    def _syncer(self, kb: Kb, progress: Progress | None) -> Syncer:
        spec = kb.manifest.spec
        return Syncer(
            self._store(kb),
            self._embedder(spec.embedding.model),
            collection=kb.manifest.collection,
            batch_size=spec.embedding.batch_size,
            sparse_encoder=Bm25Encoder() if spec.sparse.bm25 else None,
            progress=None if progress is None else (lambda d, t: progress("embed", d, t)),
        )

    def _image_syncer(self, kb: Kb) -> Syncer:
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


def resolve_store(kb: KnowledgeBase) -> KnowledgeBase:
    """``kb`` with the server of ``QINGLIANG_QDRANT_URL`` as its store where its manifest
    names none (:func:`~qingliang.knowledge.manifest.with_default_store`); a bad URL in the
    variable is a BadRequest naming it."""
    try:
        return with_default_store(kb, os.environ)
    except ValueError as exc:
        raise BadRequest(f"knowledge base {kb.name!r}: {exc}", param="store.url") from None


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
