"""Learned answers: approved question/answer pairs and corrections that join a knowledge base.

They come from human feedback, reviewers or API clients with their ``provenance``, are
searchable at once as ``kind: qa`` chunks, and can be retracted. The ledger
(:mod:`qingliang.knowledge.ledger`) is their source of truth: sync never compares or
deletes them (``origin: learned``), snapshots leave them out, and after a rollback or a crash
:meth:`LearnedAnswers._reconcile_answers` makes the store match the ledger again, so a
retracted answer never returns.

:class:`LearnedAnswers` is one of the bases of
:class:`~qingliang.knowledge.service.KnowledgeService`, built on
:class:`~qingliang.knowledge._base.KnowledgeBases` (its ``_kb``, ``_store``,
``_embedder``, ``_syncer`` and ``ledger``).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from qingliang.knowledge._base import Kb, KnowledgeBases
from qingliang.knowledge._bm25 import Bm25Encoder
from qingliang.knowledge.ledger import AnswerRecord
from qingliang.knowledge.stores import Filter, Point, PointId
from qingliang.knowledge.sync import LEARNED
from qingliang.platform.errors import BadRequest, NotFound

MAX_ANSWER_CHARS = 8000


class LearnedAnswers(KnowledgeBases):
    """Add, retract, list and reconcile learned answers (a base of KnowledgeService)."""

    def add_answer(
        self,
        name: str,
        question: str,
        answer: str,
        *,
        provenance: dict[str, Any],
        tenant: str | None = None,
        actor: str = "api",
    ) -> AnswerRecord:
        """An approved question/answer pair (or correction) joins the KB, searchable at once.

        ``provenance`` says where it came from, e.g. ``{"source": "feedback", "by":
        "reviewer-7", "ref": "run-123"}``; ``source`` is required.
        """
        kb = self._kb(name, tenant)
        q = _answer_text(question, "question")
        a = _answer_text(answer, "answer")
        if not isinstance(provenance, dict) or not isinstance(provenance.get("source"), str):
            raise BadRequest(
                "provenance must be an object with a `source` string (feedback, review, api…)",
                param="provenance",
            )
        with kb.lock:
            self._ensure_collection(kb)
            rec = self.ledger.add_answer(
                name,
                tenant=kb.tenant,
                question=q,
                answer=a,
                provenance={**provenance, "by": provenance.get("by", actor)},
                actor=actor,
            )
            self._write_answers(kb, [rec])
        return rec

    def retract_answer(
        self,
        name: str,
        answer_id: str,
        *,
        reason: str,
        tenant: str | None = None,
        actor: str = "api",
    ) -> AnswerRecord:
        """Take a learned answer out of the KB (its record stays, marked retracted)."""
        kb = self._kb(name, tenant)
        if not isinstance(reason, str) or not reason.strip():
            raise BadRequest("a retraction needs a reason", param="reason")
        with kb.lock:
            try:
                rec = self.ledger.retract_answer(name, answer_id, actor=actor, reason=reason)
            except KeyError as exc:
                raise NotFound(str(exc.args[0]), param="answer_id") from None
            store = self._store(kb)
            if kb.manifest.collection in store.list_collections():
                store.delete(kb.manifest.collection, [_answer_point(name, answer_id)])
        return rec

    def answers(
        self, name: str, *, tenant: str | None = None, status: str | None = "active"
    ) -> list[AnswerRecord]:
        self._kb(name, tenant)
        if status not in (None, "active", "retracted"):
            raise BadRequest("status must be active, retracted or empty", param="status")
        return self.ledger.answers(name, status=status)  # type: ignore[arg-type]

    def _write_answers(self, kb: Kb, recs: Sequence[AnswerRecord]) -> None:
        if not recs:
            return
        spec = kb.manifest.spec
        texts = [f"问：{r.question}\n答：{r.answer}" for r in recs]
        vectors = self._embedder(spec.embedding.model).embed(texts, input_type="passage")
        enc = Bm25Encoder() if spec.sparse.bm25 else None
        points = []
        for rec, text, vec in zip(recs, texts, vectors, strict=True):
            sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
            payload: dict[str, Any] = {
                "kb": kb.name,
                "tenant": rec.tenant,
                "doc_id": f"answer:{rec.id}",
                "source": f"answers/{rec.id}",
                "chunk_index": 0,
                "kind": "qa",
                "origin": LEARNED,
                "text": text,
                "question": rec.question,
                "answer": rec.answer,
                "provenance": rec.provenance,
                "chunk_sha256": sha,
                "embed_sha256": sha,
                "doc_sha256": sha,
                "version": rec.version,
                "synced_at": datetime.fromtimestamp(rec.created_at, UTC).isoformat(),
            }
            if spec.labels.domain:
                payload["domain"] = spec.labels.domain
            if enc is not None:
                payload["sparse"] = enc.name
            points.append(
                Point(
                    _answer_point(kb.name, rec.id),
                    vec,
                    sparse=None if enc is None else enc.encode_passage(text),
                    payload=payload,
                )
            )
        self._store(kb).upsert(kb.manifest.collection, points)

    def _reconcile_answers(self, kb: Kb) -> None:
        """Make the learned points match the ledger's active answers (crash, rollback)."""
        store = self._store(kb)
        coll = kb.manifest.collection
        active = {_answer_point(kb.name, r.id): r for r in self.ledger.answers(kb.name)}
        if coll not in store.list_collections():
            if not active:
                return
            self._ensure_collection(kb)
        present: set[PointId] = set()
        offset: PointId | None = None
        flt = Filter(equals={"kb": kb.name, "origin": LEARNED})
        while True:
            recs, offset = store.scroll(coll, flt, limit=256, offset=offset)
            present.update(r.id for r in recs)
            if offset is None:
                break
        extra = sorted((p for p in present if p not in active), key=str)
        if extra:
            store.delete(coll, extra)
        self._write_answers(kb, [r for pid, r in active.items() if pid not in present])

    def _ensure_collection(self, kb: Kb) -> None:
        syncer = self._syncer(kb, None)
        syncer._ensure_collection()


def _answer_point(kb: str, answer_id: str) -> str:
    return str(
        uuid.uuid5(uuid.NAMESPACE_URL, f"https://qingliang.io/knowledge/{kb}/answer/{answer_id}")
    )


def _answer_text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{what} must be a non-empty string", param=what)
    text = value.strip()
    if len(text) > MAX_ANSWER_CHARS:
        raise BadRequest(
            f"{what} has {len(text)} characters, at most {MAX_ANSWER_CHARS}", param=what
        )
    return text
