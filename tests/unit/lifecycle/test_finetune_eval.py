"""Evaluation of an adapter against its base: metrics (pure) and greedy answers from an
adapter trained by the shared loop on a tiny random Llama. No Ray, no network."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from qingliang.platform.lifecycle.finetune.evaluate import (
    EvalReport,
    evaluate_adapter,
    exact_match,
    rouge_l,
    score,
    text_units,
)
from qingliang.platform.lifecycle.finetune.settings import (
    InvalidFineTune,
    LoraSettings,
    TrainSettings,
)
from qingliang.platform.lifecycle.finetune.train import train
from qingliang.serving.tiny_model import build_tiny_llama

torch.set_num_threads(1)

HELD_OUT = [
    {
        "messages": [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris is the capital of France."},
        ]
    },
    {"instruction": "Count on", "input": "one two", "output": "three four five"},
]


def test_text_units_split_cjk_by_character_and_latin_by_word() -> None:
    assert text_units("LoRA 微调, fast!") == ["lora", "微", "调", "fast"]
    assert text_units("北京。Beijing's café") == ["北", "京", "beijing", "s", "café"]
    assert text_units("  ,.;  ") == []


def test_rouge_l_is_lcs_f1() -> None:
    assert rouge_l("巴黎是法国的首都", "法国的首都是巴黎") == 0.625  # LCS 法国的首都 = 5/8
    assert rouge_l("Paris is the capital", "the capital is Paris") == 0.5
    assert rouge_l("The answer: Paris.", "the answer paris") == 1.0
    assert rouge_l("completely different", "nothing shared") == 0.0
    assert rouge_l("", "") == 1.0 and rouge_l("", "x") == 0.0
    # precision 3/3, recall 3/6 -> F1 = 2/3
    assert rouge_l("a b c", "a x b y c z") == pytest.approx(2 / 3)
    assert rouge_l("办理 passport 需要 3 天", "办理passport需要3天") == 1.0


def test_exact_match_ignores_only_surrounding_and_repeated_whitespace() -> None:
    assert exact_match("  Paris is\nthe capital ", "Paris is the capital")
    assert not exact_match("paris is the capital", "Paris is the capital")
    assert not exact_match("Paris.", "Paris")


def test_score_counts_rules_per_answer_and_per_rule() -> None:
    got = score(
        ["Call 12345 now", "I cannot help", "Call us"],
        ["Call 12345 now", "x", "y"],
        must_match=[re.compile(r"\d{5}")],
        must_not_match=[re.compile(r"(?i)cannot")],
    )
    assert got["exact_match"] == pytest.approx(1 / 3)
    assert got["rules"] == pytest.approx(1 / 3)
    assert got[r"must_match:\d{5}"] == pytest.approx(1 / 3)
    assert got["must_not_match:(?i)cannot"] == pytest.approx(2 / 3)
    assert "rules" not in score(["a"], ["a"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ft-eval")
    base = build_tiny_llama(root / "base")
    settings = TrainSettings(
        learning_rate=1e-2,
        lr_schedule="constant",
        max_steps=60,
        batch_size=4,
        lora=LoraSettings(r=16, alpha=32, dropout=0.0, target_modules=("all-linear",)),
    )
    result = train(base, HELD_OUT * 2, root / "adapter", settings)
    assert result.adapter_dir is not None
    return base, result.adapter_dir


def test_adapter_that_learnt_the_answers_beats_the_base(trained: tuple[Path, Path]) -> None:
    base, adapter = trained
    report = evaluate_adapter(
        base,
        adapter,
        HELD_OUT,
        max_new_tokens=12,
        must_match=[r"(?i)paris|three"],
        must_not_match=[r"\ufffd"],  # no broken bytes
    )
    assert isinstance(report, EvalReport) and len(report.samples) == 2
    m = report.metrics
    assert set(m) == {
        "exact_match",
        "rouge_l",
        "rules",
        "must_match:(?i)paris|three",
        r"must_not_match:\ufffd",
    }
    # Measured: the adapter reproduces both answers; the random base answers nonsense.
    assert m["exact_match"].adapter >= 0.5 > m["exact_match"].base
    assert m["rouge_l"].adapter > m["rouge_l"].base + 0.5
    assert m["rules"].adapter > m["rules"].base
    for s in report.samples:
        assert s.base != s.adapter
    d = report.as_dict()
    assert d["records"] == 2 and d["metrics"]["rouge_l"]["delta"] == pytest.approx(
        m["rouge_l"].delta
    )


def test_bad_rules_and_paths_are_refused_before_loading(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    base, adapter = trained
    with pytest.raises(InvalidFineTune) as err:
        evaluate_adapter(base, adapter, HELD_OUT, must_match=["ok", "(unclosed"])
    assert err.value.param == "must_match[1]"
    with pytest.raises(InvalidFineTune) as err:
        evaluate_adapter(base, tmp_path, HELD_OUT)
    assert err.value.param == "adapter_dir"
    with pytest.raises(InvalidFineTune) as err:
        evaluate_adapter(base, adapter, [{"instruction": "x"}])
    assert err.value.param == "records[0].output"
