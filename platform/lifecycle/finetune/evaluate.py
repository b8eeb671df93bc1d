"""Compare a base model with base + adapter on held-out records.

For each record the prompt is every message before the last assistant turn (for an
instruction record: the instruction and input), rendered exactly as in training; the
reference is that last answer. Both models answer greedily with transformers, and
each metric is reported for the base and for the adapter:

* ``exact_match``: answer equals the reference after trimming and collapsing spaces;
* ``rouge_l``: ROUGE-L F1 from the longest common subsequence, implemented here (the
  ``rouge-score`` package is not installed and splits CJK text badly): CJK characters
  count one unit each, other text is split into lower-cased words (``\\w+`` runs), and
  punctuation is ignored, so Chinese, English and mixed answers are all scored;
* ``rules``: share of answers that match every ``must_match`` regex and none of the
  ``must_not_match`` ones; ``must_match:<re>`` / ``must_not_match:<re>`` give each
  rule's own pass rate.

Example:
    >>> rouge_l("巴黎是法国的首都", "法国的首都是巴黎")
    0.625
    >>> round(rouge_l("Paris is the capital", "the capital is Paris"), 3)
    0.5
    >>> report = evaluate_adapter("/models/tiny", "/tmp/adapter", records,  # doctest: +SKIP
    ...                           must_not_match=[r"(?i)as an ai"])
    >>> report.metrics["rouge_l"].adapter > report.metrics["rouge_l"].base  # doctest: +SKIP
    True
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qingliang.platform.lifecycle.finetune import _data, _model
from qingliang.platform.lifecycle.finetune.settings import invalid

logger = logging.getLogger(__name__)

#: One unit per character: CJK ideographs (with extension A and compatibility forms),
#: kana and Hangul syllables. Anything else that is a word character forms words.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_UNITS = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")


def text_units(text: str) -> list[str]:
    """ROUGE units of ``text``: each CJK character, each lower-cased latin word.

    Example:
        >>> text_units("LoRA 微调, fast!")
        ['lora', '微', '调', 'fast']
    """
    return _UNITS.findall(text.lower())


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (two-row dynamic programme)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 of ``candidate`` against ``reference`` over :func:`text_units`."""
    c, r = text_units(candidate), text_units(reference)
    if not c or not r:
        return 1.0 if not c and not r else 0.0
    lcs = _lcs(c, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(c), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def _normal(text: str) -> str:
    return " ".join(text.split())


def exact_match(candidate: str, reference: str) -> bool:
    """Equal after trimming and collapsing whitespace (case and punctuation count)."""
    return _normal(candidate) == _normal(reference)


@dataclass(frozen=True)
class MetricPair:
    """One metric for the base model and for base + adapter."""

    base: float
    adapter: float

    @property
    def delta(self) -> float:
        return self.adapter - self.base


@dataclass(frozen=True)
class Sample:
    """One held-out record's reference and both answers."""

    reference: str
    base: str
    adapter: str


@dataclass(frozen=True)
class EvalReport:
    """Per-metric base vs adapter numbers, and every answer."""

    metrics: dict[str, MetricPair]
    samples: tuple[Sample, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"metrics": {name: {base, adapter, delta}}, "records": n}``."""
        return {
            "metrics": {
                k: {"base": v.base, "adapter": v.adapter, "delta": v.delta}
                for k, v in self.metrics.items()
            },
            "records": len(self.samples),
        }


def _compile(patterns: Sequence[str], field: str) -> list[re.Pattern[str]]:
    if isinstance(patterns, str):
        raise invalid(field, "must be a list of regular expressions")
    out = []
    for i, pat in enumerate(patterns):
        try:
            out.append(re.compile(pat))
        except (re.error, TypeError) as exc:
            raise invalid(f"{field}[{i}]", f"bad regular expression {pat!r}: {exc}") from None
    return out


def score(
    answers: Sequence[str],
    references: Sequence[str],
    must_match: Sequence[re.Pattern[str]] = (),
    must_not_match: Sequence[re.Pattern[str]] = (),
) -> dict[str, float]:
    """Metric name → value over one model's answers (pure)."""
    n = max(len(answers), 1)
    out = {
        "exact_match": sum(exact_match(a, r) for a, r in zip(answers, references, strict=True)) / n,
        "rouge_l": sum(rouge_l(a, r) for a, r in zip(answers, references, strict=True)) / n,
    }
    if must_match or must_not_match:

        def ok(a: str) -> bool:
            return all(p.search(a) for p in must_match) and not any(
                p.search(a) for p in must_not_match
            )

        out["rules"] = sum(ok(a) for a in answers) / n
        for p in must_match:
            out[f"must_match:{p.pattern}"] = sum(bool(p.search(a)) for a in answers) / n
        for p in must_not_match:
            out[f"must_not_match:{p.pattern}"] = sum(not p.search(a) for a in answers) / n
    return out


def greedy_answers(
    model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int
) -> list[str]:
    """Greedy continuation of each rendered prompt (special tokens dropped, trimmed)."""
    import torch

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(device)
            gen = model.generate(
                **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id
            )
            new = gen[0, ids["input_ids"].shape[1] :]
            out.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    return out


def evaluate_adapter(
    base_model: str | Path,
    adapter_dir: str | Path,
    records: Sequence[Mapping[str, Any]],
    *,
    max_new_tokens: int = 64,
    must_match: Sequence[str] = (),
    must_not_match: Sequence[str] = (),
    device: str = "auto",
) -> EvalReport:
    """Greedy answers of the base and of base + adapter, scored against the references.

    The base is loaded in full precision (fp32 on CPU, bf16 on GPU), as it is served,
    also for an adapter trained with QLoRA.

    Raises:
        InvalidFineTune: a bad record, regex, model or adapter directory.
    """
    convs = _data.parse_records(records, "records")
    rules_in = _compile(must_match, "must_match")
    rules_out = _compile(must_not_match, "must_not_match")
    base = Path(base_model).expanduser()
    _model.check_model_dir(base)
    adapter = Path(adapter_dir).expanduser()
    if not (adapter / "adapter_config.json").is_file():
        raise invalid("adapter_dir", f"{adapter} has no adapter_config.json")
    dev = _model.resolve_device(device, "device")

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    split = [_data.split_for_eval(c) for c in convs]
    prompts = [_data.render_prompt(tokenizer, p) for p, _ in split]
    refs = [r for _, r in split]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=_model.compute_dtype(dev))
    model.to(dev).eval()
    base_answers = greedy_answers(model, tokenizer, prompts, max_new_tokens)
    tuned = PeftModel.from_pretrained(model, str(adapter)).eval()
    adapter_answers = greedy_answers(tuned, tokenizer, prompts, max_new_tokens)

    b = score(base_answers, refs, rules_in, rules_out)
    a = score(adapter_answers, refs, rules_in, rules_out)
    logger.info(
        "evaluated %s on %d records: rouge_l %.3f -> %.3f",
        adapter.name,
        len(refs),
        b["rouge_l"],
        a["rouge_l"],
    )
    return EvalReport(
        metrics={k: MetricPair(b[k], a[k]) for k in b},
        samples=tuple(
            Sample(r, x, y) for r, x, y in zip(refs, base_answers, adapter_answers, strict=True)
        ),
    )
