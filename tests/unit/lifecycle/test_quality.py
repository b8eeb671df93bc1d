"""Quality filters: every rule passes and fails with its reason text; settings are checked."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from qingliang.platform.lifecycle.data.quality import (
    QualityFilter,
    QualitySettings,
    detect_language,
    line_repetition,
    ngram_repetition,
    noise_share,
    tokens,
)

ZH = (
    "轻量化部署大模型需要把量化、低秩适配和批处理调度结合起来。运维人员通过清单描述模型、"
    "知识库和智能体，平台负责在集群上启动服务并持续收集反馈数据，用于下一轮微调。"
)
EN = (
    "Deploying large language models on modest hardware combines quantisation, low-rank "
    "adapters and careful batching. Operators describe models, knowledge bases and agents "
    "in manifests, and the platform starts them on the cluster and collects feedback."
)

# Nothing but the rule under test: every other rule is off or wide open.
OFF = {"min_chars": 0, "max_chars": None, "max_repetition": None, "max_noise": None}


def only(**fields: object) -> QualityFilter:
    return QualityFilter(**{**OFF, **fields})


def test_defaults_pass_ordinary_chinese_and_english_text() -> None:
    check = QualityFilter().check
    assert check(ZH) == []
    assert check(EN) == []
    assert check(ZH + "\n" + EN) == []


def test_tokens_count_cjk_characters_and_latin_words() -> None:
    assert tokens("用Docker部署 Qwen2.5 模型, it's fine_tuned") == [
        "用", "Docker", "部", "署", "Qwen2", "5", "模", "型", "it", "s", "fine", "tuned",
    ]  # fmt: skip
    assert tokens("...!!") == []


# -- length ----------------------------------------------------------------------------


def test_length_characters() -> None:
    check = only(min_chars=10, max_chars=20).check
    assert check("abc") == ["length: 3 characters < min_chars 10"]
    # Surrounding whitespace does not count.
    assert check("   abc\n\n   ") == ["length: 3 characters < min_chars 10"]
    assert check("a" * 10) == []
    assert check("a" * 20) == []
    assert check("a" * 21) == ["length: 21 characters > max_chars 20"]


def test_length_tokens() -> None:
    check = only(min_tokens=3, max_tokens=6).check
    assert check("模型") == ["length: 2 tokens < min_tokens 3"]
    assert check("hello big world") == []
    assert check("部署 the model") == []
    assert check("one two three four five six seven") == ["length: 7 tokens > max_tokens 6"]
    assert check("这是一段七个字") == ["length: 7 tokens > max_tokens 6"]


# -- language --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        (ZH, "zh"),
        (EN, "en"),
        ("我们用Docker和Kubernetes部署LLM模型", "zh"),  # English terms inside Chinese
        ("I visited 北京 and 上海 with my family last summer", "en"),
        ("Привет, как дела? Всё хорошо.", "other"),
        ("これは日本語の文章です。ひらがなが多い。", "other"),  # kana: Japanese
        ("안녕하세요 반갑습니다", "other"),
        ("12345 678 !!!", "other"),  # nothing votes
        ("", "other"),
        ("ＤＥＰＬＯＹ ｍｏｄｅｌｓ", "en"),  # full-width latin, NFKC
    ],
)
def test_detect_language(text: str, lang: str) -> None:
    assert detect_language(text)[0] == lang


def test_detect_language_share() -> None:
    # 我 们 用 部 署 模 型 = 7 Han votes, docker and llm = 2 latin votes.
    lang, share = detect_language("我们用Docker部署LLM模型")
    assert (lang, round(share, 4)) == ("zh", round(7 / 9, 4))


def test_language_rule() -> None:
    zh_only = only(languages=["zh"])
    assert zh_only.check(ZH) == []
    assert zh_only.check(EN) == ["language: en (1.00 of tokens) not in languages [zh]"]
    both = only(languages=["zh", "en"])
    assert both.check(ZH) == [] and both.check(EN) == []
    assert both.check("Привет, мир") == [
        "language: other (1.00 of tokens) not in languages [zh, en]"
    ]
    assert only(languages=["other"]).check("Привет, мир") == []
    assert only(languages=["en"]).check("ＤＥＰＬＯＹ ｍｏｄｅｌｓ") == []  # NFKC first


# -- blocked terms ---------------------------------------------------------------------


def test_blocked_latin_terms_are_whole_words_case_insensitive() -> None:
    check = only(blocked_terms=["casino", "free money"]).check
    assert check("Visit our CASINO tonight") == ["blocked_terms: contains 'casino'"]
    assert check("casinos and casinoroyale") == []  # not whole words
    assert check("get Free  money") == []  # the phrase needs its single space
    assert check("get FREE money now, casino!") == [
        "blocked_terms: contains 'free money', 'casino'"
    ]
    assert check("去casino玩") == ["blocked_terms: contains 'casino'"]  # CJK neighbours
    assert check("ＣＡＳＩＮＯ") == ["blocked_terms: contains 'casino'"]  # full-width, NFKC
    assert check("the_casino_bot") == ["blocked_terms: contains 'casino'"]  # `_` separates
    assert check(EN) == []


def test_blocked_cjk_terms_are_substrings() -> None:
    check = only(blocked_terms=["广告", "赌博"]).check
    assert check("这是一条广告信息") == ["blocked_terms: contains '广告'"]
    assert check("网络赌博和广告") == ["blocked_terms: contains '赌博', '广告'"]
    assert check("点击广告123次") == ["blocked_terms: contains '广告'"]  # digits around it
    assert check("ad广告x") == ["blocked_terms: contains '广告'"]
    assert check(ZH) == []


# -- repetition ------------------------------------------------------------------------


def test_repetition_of_ngrams() -> None:
    check = only(max_repetition=0.3).check
    assert check("好的" * 6) == [
        "repetition: 0.83 of tokens are in repeated 5-grams > max_repetition 0.30"
    ]
    assert check("the answer is " * 10) == [
        "repetition: 0.90 of tokens are in repeated 5-grams > max_repetition 0.30"
    ]
    assert check(ZH) == [] and check(EN) == []
    # The same degenerate text passes a looser limit, and the rule can be switched off.
    assert only(max_repetition=0.95).check("好的" * 6) == []
    assert only(max_repetition=None).check("好的" * 50) == []


def test_repetition_of_lines() -> None:
    check = only(max_repetition=0.3).check
    # 8 tokens hold no repeated 5-gram, but 16 of 33 line characters repeat.
    text = "Yes sir.\nYes sir.\nYes sir.\nDone now."
    assert check(text) == [
        "repetition: 0.48 of characters are in repeated lines > max_repetition 0.30"
    ]
    sorry = "I'm sorry, I cannot help.\nI'm sorry, I cannot help.\nAnything else?"
    assert check(sorry) == [
        "repetition: 0.43 of tokens are in repeated 5-grams > max_repetition 0.30"
    ]
    code = "def f(x):\n    if x:\n        return 1\n    }\n    }\n    }\n    return 2\n"
    assert check(code) == []  # short repeated lines weigh little


def test_repetition_measures() -> None:
    assert line_repetition("abc\nabc\nxyz") == pytest.approx(3 / 9)
    assert line_repetition("\n\n") == 0.0
    assert ngram_repetition(["a", "b", "c", "d"], 3) == 0.0
    # First occurrences do not count: a b [a b a b] -> 4 of 6 tokens.
    assert ngram_repetition(["a", "b", "a", "b", "a", "b"], 2) == pytest.approx(4 / 6)
    assert ngram_repetition(["x"] * 3, 5) == 0.0


# -- noise -----------------------------------------------------------------------------


def test_noise() -> None:
    check = only(max_noise=0.05).check
    garbled = "模型\ufffd\ufffd部署\x00\x07ok"
    assert noise_share(garbled) == pytest.approx(4 / 10)
    assert check(garbled) == [
        "noise: 0.40 of characters are control, unassigned or replacement characters "
        "> max_noise 0.05"
    ]
    # Tabs, newlines, ideographic and no-break spaces are not noise.
    assert noise_share("a\tb\r\nc\u3000d\u00a0e") == 0.0
    assert check(ZH + "\n\t" + EN) == []
    assert noise_share("\ue000x") == 0.5  # private use
    assert only(max_noise=None).check("\ufffd" * 10) == []
    # Mojibake alone (replacement characters, nothing unprintable) is noise too.
    mojibake = "办理\ufffd\ufffd\ufffd居住证\ufffd\ufffd"
    assert noise_share(mojibake) == pytest.approx(5 / 10)
    assert check(mojibake) != []


def test_every_failing_rule_is_reported() -> None:
    f = QualityFilter(min_chars=50, languages=["en"], blocked_terms=["好的"], max_repetition=0.3)
    assert f.check("好的" * 6) == [
        "length: 12 characters < min_chars 50",
        "language: zh (1.00 of tokens) not in languages [en]",
        "blocked_terms: contains '好的'",
        "repetition: 0.83 of tokens are in repeated 5-grams > max_repetition 0.30",
    ]
    assert not f.passes("好的" * 6)


# -- settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"min_chars": 10, "max_chars": 5}, "max_chars"),
        ({"min_tokens": 10, "max_tokens": 5}, "max_tokens"),
        ({"languages": ["zh", "fr"]}, "languages"),
        ({"languages": []}, "languages"),
        ({"blocked_terms": ["ok", "  "]}, "blocked_terms"),
        ({"max_repetition": 1.5}, "max_repetition"),
        ({"max_noise": -0.1}, "max_noise"),
        ({"min_chars": -1}, "min_chars"),
        ({"repetition_ngram": 1}, "repetition_ngram"),
        ({"max_chars_typo": 3}, "max_chars_typo"),
    ],
)
def test_bad_settings_name_the_field(fields: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        QualityFilter(**fields)


def test_unknown_language_message() -> None:
    with pytest.raises(ValueError, match="unknown language code 'fr': use zh, en, other"):
        QualitySettings(languages=["fr"])


def test_settings_embed_in_a_manifest() -> None:
    settings = QualitySettings.model_validate(
        {"min_chars": 5, "languages": ["zh", "zh", "en"], "blocked_terms": ["广告"]}
    )
    assert settings.languages == ("zh", "en")
    assert QualityFilter(settings).settings is settings
    with pytest.raises(ValidationError):
        settings.min_chars = 1  # type: ignore[misc]
    schema = QualitySettings.model_json_schema()
    assert schema["additionalProperties"] is False
    assert all(prop.get("description") for prop in schema["properties"].values())
    with pytest.raises(TypeError):
        QualityFilter(settings, min_chars=3)
