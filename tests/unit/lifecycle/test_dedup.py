"""Exact and near-duplicate removal: hashes, MinHash signatures, LSH, incremental state."""

from __future__ import annotations

import random

import numpy as np
import pytest

from qingliang.platform.lifecycle.data.dedup import (
    DedupDecision,
    Deduplicator,
    DedupSettings,
    normalize,
    optimal_bands,
)

EN = (
    "Qingliang deploys quantised language models with vLLM on Ray Serve and keeps every "
    "deployment in a YAML manifest. Operators describe the model, its adapters and the "
    "hardware it needs; the platform validates the manifest, starts replicas on the cluster "
    "and reports their health on the dashboard, so the same files work on a laptop and on a "
    "cluster."
)
ZH = (
    "数据治理贯穿训练数据的整个生命周期：采集之后先做精确去重和近似去重，再按长度、语言、"
    "敏感词和重复度过滤，最后对个人信息做脱敏处理。每一个数据集版本都记录来源、处理步骤和"
    "统计信息，这样微调任务可以追溯到它使用的每一条样本，出现问题时也能快速回滚到上一个版本。"
    "新采集的对话先与所有已有版本比较，只有真正新的样本才进入下一轮训练，被丢弃的样本会记下"
    "它重复了哪一条，供人工抽查。"
)
# Different texts about the same topics: none is a duplicate of another.
SAME_TOPIC = [
    EN,
    ZH,
    "Quantised models served by vLLM on Ray need fewer GPUs; a YAML manifest lists the model, "
    "adapters and hardware, and the control plane validates it before any replica starts.",
    "The gateway speaks the OpenAI protocol, checks API keys and quotas, and forwards each "
    "chat request to a model deployment or to an agent graph chosen by the learned router.",
    "LoRA adapters are small: many of them share one base model in vLLM, and a request picks "
    "its adapter by name, so a new domain needs an adapter rather than a new deployment.",
    "Knowledge bases ingest PDF, Word and Excel files, cut them into chunks, embed each chunk "
    "and store the vectors in Qdrant, which runs embedded on a laptop or as a cluster.",
    "Operators watch replicas, queue lengths and token throughput on the Ray dashboard and "
    "scale a deployment up or down by editing one field of its manifest and applying it.",
    "训练数据在进入微调之前要经过去重和质量过滤，重复的样本会让模型过度记忆，低质量的样本会"
    "降低回答的准确性，因此数据治理是微调流水线中不可缺少的一步。",
    "平台用清单文件描述模型部署：模型来源、量化方法、适配器列表和所需的硬件资源都写在同一个"
    "文件里，控制面先校验清单，再在集群上启动服务副本。",
    "智能体层根据请求的特征选择合适的智能体、模型或适配器，用户的反馈作为奖励信号，在线更新"
    "路由策略，让系统逐渐学会把复杂请求交给更合适的处理者。",
    "知识库支持增量更新：新增或修改的文档只重新切分和向量化变化的部分，旧版本的快照仍然可以"
    "查询，回答中引用的片段编号可以追溯到具体的文档版本。",
    "数据集的每个版本都与上一个版本去重，新采集的对话如果和已有样本几乎相同就会被丢弃，"
    "同时记录被丢弃的原因和它重复的样本编号，方便人工抽查。",
]


def char_grams(text: str, n: int = 5) -> set[str]:
    t = normalize(text)
    return {t[i : i + n] for i in range(len(t) - n + 1)} if len(t) >= n else {t}


def jaccard(a: str, b: str) -> float:
    x, y = char_grams(a), char_grams(b)
    return len(x & y) / len(x | y)


def random_texts(count: int, seed: int) -> list[str]:
    """Distinct mixed Chinese / English texts of ~300 characters over a small vocabulary."""
    rng = random.Random(seed)
    han = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动"
    words = [
        "model",
        "data",
        "serve",
        "agent",
        "router",
        "adapter",
        "token",
        "batch",
        "cache",
        "vector",
        "index",
        "query",
    ]
    texts = []
    for _ in range(count):
        parts: list[str] = []
        while sum(map(len, parts)) < 300:
            if rng.random() < 0.5:
                parts.append("".join(rng.choice(han) for _ in range(rng.randint(8, 20))) + "。")
            else:
                parts.append(" ".join(rng.choice(words) for _ in range(rng.randint(4, 10))) + ". ")
        texts.append("".join(parts))
    return texts


def kept(decisions: list[DedupDecision]) -> list[str]:
    return [d.id for d in decisions if d.kept]


# -- exact duplicates ------------------------------------------------------------------


def test_normalize() -> None:
    assert normalize("  Ｈｅｌｌｏ，\n\tWORLD  ") == "hello, world"
    assert normalize("A  B", casefold=False, collapse_whitespace=False) == "A  B"
    assert normalize("Ｈｉ", nfkc=False) == "ｈｉ"


def test_exact_duplicates_with_whitespace_case_and_full_width_variants() -> None:
    variants = [
        EN.upper(),
        "  " + EN.replace(" ", "\n ") + "\t",
        EN.replace("Qingliang", "Ｑｉｎｇｌｉａｎｇ").replace(";", "；"),
    ]
    items = [("orig", EN), ("zh", ZH)] + [(f"v{i}", v) for i, v in enumerate(variants)]
    items.append(("zh-full", ZH.replace("，", ",").replace("：", ":")))  # NFKC folds these
    decisions = Deduplicator().run(items)
    assert decisions[:2] == [DedupDecision("orig", True), DedupDecision("zh", True)]
    assert decisions[2:5] == [DedupDecision(f"v{i}", False, "exact", "orig", 1.0) for i in range(3)]
    assert decisions[5] == DedupDecision("zh-full", False, "exact", "zh", 1.0)


def test_normalisation_can_be_switched_off() -> None:
    # Without casefolding the upper-case copy shares no latin shingle with the original.
    decisions = Deduplicator(casefold=False).run([("a", EN), ("b", EN.upper())])
    assert kept(decisions) == ["a", "b"]


def test_short_and_empty_texts() -> None:
    decisions = Deduplicator().run(
        [("e1", ""), ("e2", "  \n "), ("s1", "OK"), ("s2", "ok"), ("s3", "ok!"), ("s4", "好")]
    )
    assert [(d.id, d.kept, d.reason, d.duplicate_of) for d in decisions] == [
        ("e1", True, None, None),
        ("e2", False, "exact", "e1"),
        ("s1", True, None, None),
        ("s2", False, "exact", "s1"),
        ("s3", True, None, None),
        ("s4", True, None, None),
    ]
    # Broken input (a lone surrogate from bad decoding) is still hashed, not an error.
    for shingle in ("char", "word"):
        broken = [("x", "bad \ud800 text here"), ("y", "BAD \ud800 TEXT HERE")]
        assert kept(Deduplicator(shingle=shingle).run(broken)) == ["x"]


# -- near duplicates -------------------------------------------------------------------


def test_one_or_two_words_changed_is_a_near_duplicate() -> None:
    one = EN.replace("laptop", "notebook")
    two = EN.replace("laptop", "notebook").replace("replicas", "workers")
    assert 0.85 <= jaccard(EN, two) < jaccard(EN, one) < 1.0
    decisions = Deduplicator().run([("orig", EN), ("one", one), ("two", two)])
    assert kept(decisions) == ["orig"]
    for d, text in zip(decisions[1:], (one, two), strict=True):
        assert (d.reason, d.duplicate_of) == ("near", "orig")
        assert d.similarity is not None and d.similarity >= 0.8
        assert d.similarity == pytest.approx(jaccard(EN, text), abs=0.1)


def test_chinese_paragraph_with_a_few_characters_changed_is_a_near_duplicate() -> None:
    changed = ZH.replace("采集", "收集", 1).replace("回滚", "恢复")
    assert 0.85 <= jaccard(ZH, changed) < 1.0
    decisions = Deduplicator().run([("orig", ZH), ("en", EN), ("changed", changed)])
    assert kept(decisions) == ["orig", "en"]
    assert (decisions[2].reason, decisions[2].duplicate_of) == ("near", "orig")


def test_most_similar_kept_record_is_named() -> None:
    a = EN
    b = (
        EN.replace("dashboard", "console")
        .replace("YAML", "JSON")
        .replace("Ray Serve", "Ray")
        .replace("quantised language", "compressed chat")
    )
    assert jaccard(a, b) < 0.8  # both are kept ...
    c = b.replace("laptop", "notebook")  # ... and c is far closer to b than to a
    # One row per band: any agreeing value makes a candidate, so both a and b are.
    d = a.replace("laptop", "notebook")  # d is closer to a
    for dedup in (Deduplicator(), Deduplicator(bands=128, rows=1)):
        decisions = dedup.run([("a", a), ("b", b), ("c", c), ("d", d)])
        assert kept(decisions) == ["a", "b"]
        assert [x.duplicate_of for x in decisions[2:]] == ["b", "a"]


def test_distinct_texts_of_the_same_topic_are_kept() -> None:
    items = [(f"t{i}", t) for i, t in enumerate(SAME_TOPIC)]
    assert all(jaccard(a, b) < 0.5 for i, (_, a) in enumerate(items) for _, b in items[i + 1 :])
    assert kept(Deduplicator().run(items)) == [i for i, _ in items]
    assert kept(Deduplicator(bands=128, rows=1).run(items)) == [i for i, _ in items]


def test_no_false_positives_among_many_distinct_texts() -> None:
    texts = random_texts(600, seed=11)
    for shingle in ("char", "word"):
        decisions = Deduplicator(shingle=shingle).run((f"r{i}", t) for i, t in enumerate(texts))
        assert all(d.kept for d in decisions), shingle


def test_threshold_is_respected() -> None:
    # Shares a prefix with EN, then differs: about half of the shingles are shared.
    half = EN[:215] + SAME_TOPIC[3][: len(EN) - 215]
    assert 0.45 <= jaccard(EN, half) <= 0.55
    assert kept(Deduplicator(threshold=0.8).run([("a", EN), ("b", half)])) == ["a", "b"]
    # Also when LSH does make the pair a candidate: verification keeps it.
    loose = Deduplicator(threshold=0.8, bands=128, rows=1)
    assert kept(loose.run([("a", EN), ("b", half)])) == ["a", "b"]
    low = Deduplicator(threshold=0.4).run([("a", EN), ("b", half)])
    assert (low[1].kept, low[1].reason, low[1].duplicate_of) == (False, "near", "a")
    assert low[1].similarity == pytest.approx(jaccard(EN, half), abs=0.12)


def test_word_shingles() -> None:
    one = EN.replace("laptop", "notebook")
    changed = ZH.replace("回滚", "恢复")
    decisions = Deduplicator(shingle="word", ngram=3).run(
        [("en", EN), ("zh", ZH), ("one", one), ("changed", changed)]
        + [(f"t{i}", t) for i, t in enumerate(SAME_TOPIC[2:])]
    )
    assert [(d.id, d.duplicate_of) for d in decisions if not d.kept] == [
        ("one", "en"),
        ("changed", "zh"),
    ]


def test_exact_jaccard_verification_for_small_texts() -> None:
    one = EN.replace("laptop", "notebook")
    d = Deduplicator(exact_jaccard_max_chars=1000).run([("a", EN), ("b", one)])[1]
    # The exact Jaccard of the (hashed) shingle sets, not the signature estimate.
    assert d.similarity == pytest.approx(jaccard(EN, one), abs=1e-9)
    # Texts longer than the limit fall back to the estimate.
    d = Deduplicator(exact_jaccard_max_chars=10).run([("a", EN), ("b", one)])[1]
    assert d.similarity is not None and abs(d.similarity - jaccard(EN, one)) > 1e-9


# -- signatures ------------------------------------------------------------------------

_M64 = (1 << 64) - 1


def _fmix64(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _M64
    return h ^ (h >> 33)


def reference_signature(dedup: Deduplicator, text: str) -> list[int]:
    """The documented algorithm in plain Python: 32-bit shingle hashes, then min of
    ((a x + b) mod 2^64) >> 32 for each of the num_perm (a, b)."""
    n = dedup.settings.ngram
    points = [ord(c) + 1 for c in normalize(text)]
    grams = [points[i : i + n] for i in range(len(points) - n + 1)] or [points]
    hashes = []
    for gram in grams:
        h = 0
        for v in gram:
            h = (h * 0x100000001B3 + v) & _M64
        hashes.append(_fmix64(h) >> 32)
    return [
        min((((a * x + b) & _M64) >> 32) for x in hashes)
        for a, b in zip(dedup._a.tolist(), dedup._b.tolist(), strict=True)
    ]


def test_vectorised_signatures_match_the_reference_and_batching() -> None:
    dedup = Deduplicator(num_perm=32)
    # Lengths around the shingle size, and one text longer than a whole numpy block.
    texts = ["", "ab", "abcd", "abcde", "abcdef", ZH, EN, "长文本" * 1500, "x" * 5]
    batch = dedup.signatures(texts)
    assert batch.shape == (len(texts), 32) and batch.dtype == np.uint32
    for i, text in enumerate(texts):
        assert batch[i].tolist() == reference_signature(dedup, text), i
        assert (dedup.signatures([text])[0] == batch[i]).all()


def test_signature_agreement_estimates_jaccard() -> None:
    dedup = Deduplicator(num_perm=256)
    rng = random.Random(3)
    texts = random_texts(20, seed=5)
    pairs = [(t, t[: rng.randint(50, 300)] + u[rng.randint(0, 200) :]) for t, u in
             zip(texts[:10], texts[10:], strict=True)]  # fmt: skip
    errors = []
    for a, b in pairs:
        sig = dedup.signatures([a, b])
        errors.append(abs(float((sig[0] == sig[1]).mean()) - jaccard(a, b)))
    assert max(errors) < 0.1 and float(np.mean(errors)) < 0.04


def test_signatures_are_deterministic_for_a_seed() -> None:
    texts = [EN, ZH, "hello world"]
    a, b, c = (Deduplicator(seed=s).signatures(texts) for s in (7, 7, 8))
    assert (a == b).all() and not (a == c).all()
    # Pinned: a stored state is only reusable while the hashing stays the same.
    pinned = [167246557, 201939118, 127503651]
    assert Deduplicator(seed=1).signatures(["hello world"])[0][:3].tolist() == pinned
    items = [(f"r{i}", t) for i, t in enumerate(SAME_TOPIC + [EN.replace("YAML", "JSON")])]
    assert Deduplicator(seed=7).run(items) == Deduplicator(seed=7).run(items)


def test_optimal_bands() -> None:
    assert optimal_bands(0.8, 128) == (12, 10)
    dedup = Deduplicator()
    assert (dedup.bands, dedup.rows) == (12, 10)
    for threshold in (0.5, 0.7, 0.8, 0.9):
        bands, rows = optimal_bands(threshold, 128)
        assert bands * rows <= 128

        def p(s: float, bands: int = bands, rows: int = rows) -> float:
            return 1 - (1 - s**rows) ** bands

        assert p(min(threshold + 0.1, 1.0)) > 0.95 and p(threshold - 0.3) < 0.05
    assert (Deduplicator(bands=16, rows=8).bands, Deduplicator(bands=16, rows=8).rows) == (16, 8)


# -- incremental use and state ---------------------------------------------------------


def versioned_items() -> list[tuple[str, str]]:
    base = random_texts(30, seed=21)
    items = [(f"v1-{i}", t) for i, t in enumerate(base[:20])]
    items += [("v1-en", EN), ("v1-zh", ZH)]
    items += [(f"v2-{i}", t) for i, t in enumerate(base[20:])]
    items += [
        ("v2-exact", base[3].upper()),
        ("v2-near", EN.replace("laptop", "notebook")),
        ("v2-zh", ZH.replace("回滚", "恢复")),
        ("v2-self", base[25] + " "),  # duplicates a record of its own version
        ("v2-near-self", base[26].replace("。", "！", 2)),
    ]
    return items


@pytest.mark.parametrize("exact_chars", [0, 1000])
def test_incremental_against_a_restored_state_equals_one_batch(exact_chars: int) -> None:
    items = versioned_items()
    split = 22
    batch = Deduplicator(seed=3, exact_jaccard_max_chars=exact_chars).run(items)
    dropped = {d.id: d.duplicate_of for d in batch if not d.kept}
    assert dropped.keys() == {"v2-exact", "v2-near", "v2-zh", "v2-self", "v2-near-self"}
    assert dropped["v2-exact"] == "v1-3" and dropped["v2-self"] == "v2-5"

    first = Deduplicator(seed=3, exact_jaccard_max_chars=exact_chars)
    assert first.run(items[:split]) == batch[:split]
    blob = first.state()
    assert isinstance(blob, bytes) and len(first) == split

    restored = Deduplicator.from_state(blob)
    assert restored.settings == first.settings and len(restored) == split
    assert restored.run(items[split:]) == batch[split:]

    one_by_one = Deduplicator.from_state(blob)
    assert [one_by_one.add(i, t) for i, t in items[split:]] == batch[split:]
    # A state of a state is the same bytes.
    assert Deduplicator.from_state(one_by_one.state()).state() == one_by_one.state()


def test_state_round_trip_of_an_empty_index() -> None:
    dedup = Deduplicator.from_state(Deduplicator(threshold=0.7, ngram=4).state())
    assert len(dedup) == 0 and dedup.settings.threshold == 0.7 and dedup.settings.ngram == 4
    assert dedup.add("a", EN).kept


def test_bad_state_is_refused() -> None:
    dedup = Deduplicator()
    dedup.run([("a", EN), ("b", ZH)])
    blob = dedup.state()
    for bad in (b"", b"not a state at all", blob[:-3], blob + b"x"):
        with pytest.raises(ValueError, match="dedup state"):
            Deduplicator.from_state(bad)


def test_a_kept_id_cannot_be_added_again() -> None:
    dedup = Deduplicator()
    dedup.add("a", EN)
    with pytest.raises(ValueError, match="'a' is already in the index"):
        dedup.add("a", ZH)
    # A dropped record is not indexed, so its id is not remembered.
    assert not dedup.add("b", EN).kept
    assert dedup.add("b", ZH).kept


# -- settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.2}, "threshold"),
        ({"ngram": 0}, "ngram"),
        ({"num_perm": 4}, "num_perm"),
        ({"bands": 8}, "rows"),
        ({"rows": 8}, "bands"),
        ({"bands": 20, "rows": 8}, "bands"),
        ({"shingle": "token"}, "shingle"),
        ({"seed": -1}, "seed"),
        ({"thresold": 0.8}, "thresold"),
    ],
)
def test_bad_settings_name_the_field(fields: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Deduplicator(**fields)


def test_settings_are_a_strict_frozen_model() -> None:
    settings = DedupSettings.model_validate({"threshold": 0.9, "shingle": "word"})
    assert Deduplicator(settings).settings is settings
    with pytest.raises(ValueError):
        settings.threshold = 0.5  # type: ignore[misc]
    schema = DedupSettings.model_json_schema()
    assert schema["additionalProperties"] is False
    assert all(prop.get("description") for prop in schema["properties"].values())
    with pytest.raises(TypeError):
        Deduplicator(settings, threshold=0.5)
