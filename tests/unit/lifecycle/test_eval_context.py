"""``qingliang eval`` of a knowledge base with neighbouring-chunk context: the output keeps its
citation fields and adds ``context`` only where a hit has one, and the answer-span hit counts
what the model is given (the context), not only the cited chunk.

The KBs run on the real embedded Qdrant with the packaged embedder, behind the gateway app
in-process with a real key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from qingliang.knowledge.api import LocalKnowledge
from qingliang.knowledge.service import KnowledgeService
from qingliang.platform.gateway.app import create_app
from qingliang.platform.gateway.auth.keys import KeyAuth
from qingliang.platform.lifecycle.evaluation import metrics, runner
from qingliang.platform.lifecycle.evaluation.questions import read_questions
from qingliang.platform.storage.keys import KeyStore
from qingliang.serving.embeddings import PackagedEmbedder
from tests.unit.knowledge.test_hit_context import PERMIT, _kb


def test_the_span_hit_counts_the_context_and_the_text_without_one() -> None:
    gold = [{"answers": ["每年签注一次"]}]
    cited = {"text": PERMIT[2]}
    with_context = {**cited, "context": "\n".join(PERMIT[1:4])}
    score = [
        metrics.compute(gold, [{"citations": [c]}], k=1, kind="kb")["answer_span_hit"]["value"]
        for c in (cited, with_context)
    ]
    assert score == [0.0, 1.0]
    # a context that somehow lacks the cited text: both are counted
    odd = {"text": "十五个工作日", "context": PERMIT[3]}
    assert metrics.span_hit(["十五个工作日"], metrics.retrieved_text([odd], 1))
    assert metrics.retrieved_text([cited, with_context], 1) == PERMIT[2]


class NoModels:
    def models(self) -> list:
        return []

    async def ready(self) -> dict:
        return {}


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[runner.PlatformApi]:
    home, docs = tmp_path / "home", tmp_path / "docs"
    docs.mkdir()
    (docs / "permit.txt").write_text("\n".join(PERMIT), encoding="utf-8")
    embedder = PackagedEmbedder(cache_dir=tmp_path / "e5-model-cache")
    kb = KnowledgeService(home, embedder_factory=lambda _m: embedder)
    for name, neighbours in (("permits", 1), ("plain", None)):
        kb.register(_kb(name, docs, neighbours=neighbours), base=docs)
        kb.sync(name)
    auth = KeyAuth(home / "state.sqlite", True)
    gateway = create_app(NoModels(), None, auth, LocalKnowledge(kb))
    _record, key = KeyStore(home / "state.sqlite").create("eval", scopes=["admin"])
    with TestClient(gateway) as client:
        yield runner.PlatformApi(api_key=key, client=client)
    kb.close()


def test_an_eval_of_a_kb_with_context_outputs_it_and_scores_it(
    platform: runner.PlatformApi, tmp_path: Path
) -> None:
    gold = tmp_path / "gold.jsonl"
    gold.write_text(
        json.dumps(
            {"id": "q1", "question": "派出所几个工作日内制作居住证", "answers": ["每年签注一次"]},
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )
    qs = read_questions(gold)
    got = {}
    for kb in ("permits", "plain"):
        (out,) = runner.run(platform, kb, qs, tmp_path / f"{kb}.jsonl", kind="kb", k=1)
        (cited,) = out["citations"]
        assert PERMIT[2] in cited["text"] and PERMIT[3] not in cited["text"]
        got[kb] = (cited, metrics.compute([q.gold for q in qs], [out], k=1, kind="kb"))
    with_context, scored = got["permits"]
    assert set(with_context) == {*runner.CITATION_FIELDS, "context"}
    assert PERMIT[3] in with_context["context"]
    assert scored["answer_span_hit"] == {"value": 1.0, "n": 1}
    plain, scored = got["plain"]
    assert set(plain) == set(runner.CITATION_FIELDS)  # the contract as before
    assert scored["answer_span_hit"] == {"value": 0.0, "n": 1}
