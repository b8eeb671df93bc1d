"""The lexical re-rank (``spec.retrieval.rerank: lexical``): the terms it compares, the order it
gives, and a KnowledgeService search on the real embedded store that honours the setting.

The embedder is a narrow fake: it places each chunk at a fixed angle from the query (the
digit after ``pos`` in its text), so the vector order is known and only the re-rank moves it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from qingliang.knowledge.manifest import KnowledgeBase
from qingliang.knowledge.retrieval import lexical_rerank, lexical_terms
from qingliang.knowledge.service import KnowledgeService
from qingliang.knowledge.stores import Hit


class AngleEmbedder:
    """``pos<d>`` in a text puts it at angle 0.2·d from the query direction (queries: 0)."""

    dimensions = 8
    model_id = "angle-test"

    def embed(self, texts: list[str], *, input_type: str = "passage") -> list[list[float]]:
        out = []
        for text in texts:
            d = int(text.split("pos", 1)[1][0]) if "pos" in text else 0
            a = 0.2 * d if input_type == "passage" else 0.0
            out.append([math.cos(a), math.sin(a), 0, 0, 0, 0, 0, 0])
        return out


def _hit(i: int, text: str) -> Hit:
    return Hit(id=i, score=1.0 / (i + 1), payload={"text": text})


def test_terms_are_words_and_cjk_bigrams_after_folding() -> None:
    assert lexical_terms("返岗人员 COVID-19") == {"返岗", "岗人", "人员", "covid", "19"}
    assert lexical_terms("ＦＭＥＡ Pump") == lexical_terms("fmea pump")  # NFKC, case folded
    assert lexical_terms("…") == set()


def test_rerank_moves_chunks_with_the_query_wording_up() -> None:
    hits = [
        _hit(0, "其他"),
        _hit(1, "无关"),
        _hit(2, "别的"),
        _hit(3, "返岗人员隔离"),
        _hit(4, "返岗人员"),
    ]
    order = [h.id for h in lexical_rerank("返岗人员隔离", hits)]
    assert order == [0, 3, 1, 4, 2]
    # nothing to compare: the search order stands
    assert [h.id for h in lexical_rerank("？", hits)] == [0, 1, 2, 3, 4]


def _kb(name: str, folder: Path, rerank: str) -> KnowledgeBase:
    return KnowledgeBase.model_validate({
        "apiVersion": "qingliang.io/v1", "kind": "KnowledgeBase", "metadata": {"name": name},
        "spec": {
            "sources": [{"folder": str(folder)}], "sparse": {"bm25": False},
            "retrieval": {"rerank": rerank, "candidates": 10},
            "labels": {"tenant": "city-a"},
        },
    })  # fmt: skip


def test_search_honours_the_kb_rerank_setting(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    texts = [
        "公园开放时间",
        "图书馆借书",
        "公交线路调整",
        "医保报销比例",
        "返岗人员居家隔离十四天",
        "垃圾分类",
    ]
    for d, text in enumerate(texts):
        (docs / f"d{d}.txt").write_text(f"pos{d} {text}", encoding="utf-8")
    svc = KnowledgeService(tmp_path / "home", embedder_factory=lambda _m: AngleEmbedder())
    try:
        for name, rerank in (("plain", "none"), ("reranked", "lexical")):
            svc.register(_kb(name, docs, rerank), base=tmp_path)
            svc.sync(name)
        top = {
            name: [c["text"] for c in svc.search(name, "返岗人员隔离", limit=3)["citations"]]
            for name in ("plain", "reranked")
        }
        assert not any("返岗" in t for t in top["plain"])  # 5th by its vector
        assert any("返岗" in t for t in top["reranked"])
    finally:
        svc.close()


def test_an_unknown_rerank_is_refused_naming_the_field(tmp_path: Path) -> None:
    body = _kb("x", tmp_path, "none").model_dump(mode="json", by_alias=True)
    body["spec"]["retrieval"]["rerank"] = "bm25"
    with pytest.raises(ValidationError, match="retrieval.rerank"):
        KnowledgeBase.model_validate(body)
