"""Quality filters for chat / instruction training data in Chinese and English.

Each rule measures one property of a record and, when the record fails, returns a reason
that names the rule, the measured value and the setting it broke, so a pipeline can count
drops per rule and a person can see why a record went::

    length: 3 characters < min_chars 10
    length: 2 tokens < min_tokens 5
    language: en (0.95 of tokens) not in languages [zh]
    blocked_terms: contains 'foo', 'bar'
    repetition: 0.83 of tokens are in repeated 5-grams > max_repetition 0.30
    noise: 0.12 of characters are control, unassigned or replacement characters > max_noise 0.05

Tokens are approximated without a tokenizer: every CJK character (Han, kana, Hangul) is one
token and every run of other letters and digits is one token (:func:`tokens`).

Language detection (:func:`detect_language`) counts those tokens by script: Han characters
vote ``zh``, words in Latin letters vote ``en``, kana, Hangul and words in any other script
(Cyrillic, Greek, Arabic, Thai ...) vote ``other``; numbers and punctuation do not vote.
The script with most votes wins; a text with no votes is ``other``. Counting Latin *words*
rather than letters keeps Chinese text with English terms (``用Docker部署LLM``) ``zh``.
Limits, since no model is available offline: any Latin-script language (French, German,
pinyin ...) is ``en``; Japanese is ``other`` only through its kana, so kanji-only Japanese
is ``zh``; traditional and simplified Chinese are both ``zh``; very short texts get a vote of
one or two tokens.

Example:
    >>> from qingliang.platform.lifecycle.data.quality import QualityFilter
    >>> check = QualityFilter(min_chars=10, languages=["zh"], blocked_terms=["广告"]).check
    >>> check("轻量化部署大模型需要量化和低秩适配两种技术的配合。")
    []
    >>> check("Deploying large models lightly needs quantisation.")
    ['language: en (1.00 of tokens) not in languages [zh]']
    >>> check("短文本")
    ['length: 3 characters < min_chars 10']
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from typing import Any

from pydantic import Field, field_validator, model_validator

from qingliang.serving.manifest import Strict

logger = logging.getLogger(__name__)

#: Language codes :func:`detect_language` returns and ``languages`` accepts.
LANGUAGES = ("zh", "en", "other")

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_KANA = "\u3040-\u30ff\u31f0-\u31ff"
_HANGUL = "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"
_CJK = _HAN + _KANA + _HANGUL
#: One CJK character, or one run of letters and digits that holds no CJK character
#: (``_`` is a word character for ``\w`` but not part of a word here).
TOKEN_RE = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")
_HAN_RE = re.compile(rf"[{_HAN}]")
_CJK_RE = re.compile(rf"[{_CJK}]")
#: A latin-script term matches only as a whole word: not preceded or followed by a letter
#: or digit of a non-CJK script (CJK characters around it do not join it).
_WORD_EDGE = rf"[^\W_{_CJK}]"
_WHITESPACE_CONTROLS = frozenset("\t\n\r\x0b\x0c")


def tokens(text: str) -> list[str]:
    """Approximate tokens: each CJK character, and each run of other letters and digits.

    Example:
        >>> tokens("用Docker部署 Qwen2.5 模型")
        ['用', 'Docker', '部', '署', 'Qwen2', '5', '模', '型']
    """
    return TOKEN_RE.findall(text)


def _script(token: str) -> str | None:
    """The language a token votes for, or None for numbers."""
    if len(token) == 1 and _CJK_RE.match(token):
        return "zh" if _HAN_RE.match(token) else "other"
    for ch in token:
        if ch.isalpha():
            return "en" if ch < "\u0250" else "other"
    return None


def detect_language(text: str) -> tuple[str, float]:
    """The dominant language of ``text`` (``zh``, ``en`` or ``other``) and its share of votes.

    See the module docstring for the heuristic and its limits.

    Example:
        >>> lang, share = detect_language("我们用Docker部署LLM模型")
        >>> lang, round(share, 2)
        ('zh', 0.78)
        >>> detect_language("Привет, мир")
        ('other', 1.0)
    """
    return _detect(tokens(unicodedata.normalize("NFKC", text)))


def _detect(toks: list[str]) -> tuple[str, float]:
    votes = Counter(s for s in map(_script, toks) if s is not None)
    if not votes:
        return "other", 0.0
    # On a tie the code listed first in LANGUAGES wins, so the answer never depends on order.
    lang = max(LANGUAGES, key=lambda code: votes[code])
    return lang, votes[lang] / sum(votes.values())


class QualitySettings(Strict):
    """Which quality rules apply and their limits; ``None`` switches a rule off.

    Frozen and strict (unknown keys are errors) so a Dataset manifest can embed it.
    """

    min_chars: int = Field(
        default=1, ge=0, description="Fewest characters (after stripping surrounding spaces)."
    )
    max_chars: int | None = Field(
        default=100_000, ge=1, description="Most characters; null for no upper limit."
    )
    min_tokens: int = Field(
        default=0, ge=0, description="Fewest tokens (CJK characters + other words)."
    )
    max_tokens: int | None = Field(
        default=None, ge=1, description="Most tokens (CJK characters + other words); null: none."
    )
    languages: tuple[str, ...] | None = Field(
        default=None,
        description="Dominant languages to keep, from `zh`, `en`, `other`; null keeps all.",
    )
    blocked_terms: tuple[str, ...] = Field(
        default=(),
        description="Terms that drop a record, case-insensitive: whole words for latin "
        "terms, substrings for terms with CJK characters.",
    )
    max_repetition: float | None = Field(
        default=0.3,
        ge=0.0,
        le=1.0,
        description="Largest share of characters in lines that repeat an earlier line, and "
        "of tokens in n-grams that repeat an earlier one (degenerate output); null: off.",
    )
    repetition_ngram: int = Field(
        default=5, ge=2, le=50, description="Token n-gram size for the repetition rule."
    )
    max_noise: float | None = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="Largest share of control, private-use, unassigned and replacement "
        "(U+FFFD) characters; null: off.",
    )

    @field_validator("languages")
    @classmethod
    def _languages(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("languages: empty list keeps nothing; use null to keep all")
        for code in v:
            if code not in LANGUAGES:
                raise ValueError(
                    f"languages: unknown language code {code!r}: use {', '.join(LANGUAGES)}"
                )
        return tuple(dict.fromkeys(v))

    @field_validator("blocked_terms")
    @classmethod
    def _blocked_terms(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, term in enumerate(v):
            if not term.strip():
                raise ValueError(f"blocked_terms[{i}]: empty term")
        return v

    @model_validator(mode="after")
    def _ranges(self) -> QualitySettings:
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(f"max_chars: {self.max_chars} < min_chars {self.min_chars}")
        if self.max_tokens is not None and self.max_tokens < self.min_tokens:
            raise ValueError(f"max_tokens: {self.max_tokens} < min_tokens {self.min_tokens}")
        return self


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _blocked_pattern(terms: tuple[str, ...]) -> re.Pattern[str] | None:
    parts = []
    # Longest first, so that of two overlapping terms the longer one is reported.
    for term in sorted({_fold(t.strip()) for t in terms}, key=lambda t: (-len(t), t)):
        escaped = re.escape(term)
        if _CJK_RE.search(term):
            parts.append(escaped)
        else:
            parts.append(rf"(?<!{_WORD_EDGE}){escaped}(?!{_WORD_EDGE})")
    return re.compile("|".join(parts)) if parts else None


def _is_noise(ch: str) -> bool:
    if ch == "\ufffd":
        return True
    if ch in _WHITESPACE_CONTROLS:
        return False
    return unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn")


def noise_share(text: str) -> float:
    """Share of control (other than whitespace), surrogate, private-use, unassigned and
    replacement characters in ``text``.

    Example:
        >>> noise_share("ab\\ufffd\\x00")
        0.5
        >>> noise_share("ab\\ufffd\\ufffd")  # mojibake: U+FFFD is "printable"
        0.5
    """
    if not text:
        return 0.0
    # The fast path must not skip U+FFFD, which str.isprintable() accepts.
    if (
        "\ufffd" not in text
        and text.replace("\n", "").replace("\t", "").replace("\r", "").isprintable()
    ):
        return 0.0
    return sum(map(_is_noise, text)) / len(text)


def line_repetition(text: str) -> float:
    """Share of characters (of non-blank lines) in lines that repeat an earlier line.

    Weighting by characters keeps short repeated lines (a ``}`` in code) from counting much.

    Example:
        >>> line_repetition("abc\\nabc\\nxyz")
        0.3333333333333333
    """
    seen: set[str] = set()
    total = repeated = 0
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        total += len(line)
        if line in seen:
            repeated += len(line)
        else:
            seen.add(line)
    return repeated / total if total else 0.0


def ngram_repetition(toks: list[str], n: int) -> float:
    """Share of tokens covered by n-grams that repeat an earlier n-gram.

    Example:
        >>> ngram_repetition("the the the the the the".split(), 3)
        0.8333333333333334
    """
    if len(toks) < n + 1:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    covered = [False] * len(toks)
    for i in range(len(toks) - n + 1):
        gram = tuple(toks[i : i + n])
        if gram in seen:
            covered[i : i + n] = [True] * n
        else:
            seen.add(gram)
    return sum(covered) / len(toks)


class QualityFilter:
    """Checks records against :class:`QualitySettings`; pure, safe to share between threads.

    Args:
        settings: the settings; or give their fields as keyword arguments instead.

    Raises:
        ValueError: a setting is invalid (pydantic's ``ValidationError`` names the field).

    Example:
        >>> QualityFilter(max_repetition=0.3).check("好的好的好的好的好的好的")
        ['repetition: 0.83 of tokens are in repeated 5-grams > max_repetition 0.30']
    """

    def __init__(self, settings: QualitySettings | None = None, **fields: Any) -> None:
        if settings is not None and fields:
            raise TypeError("give either settings or keyword fields, not both")
        self.settings = settings if settings is not None else QualitySettings(**fields)
        self._blocked = _blocked_pattern(self.settings.blocked_terms)

    def check(self, text: str) -> list[str]:
        """Reasons ``text`` fails, one per failing rule; empty when it passes."""
        s = self.settings
        reasons: list[str] = []
        chars = len(text.strip())
        if chars < s.min_chars:
            reasons.append(f"length: {chars} characters < min_chars {s.min_chars}")
        if s.max_chars is not None and chars > s.max_chars:
            reasons.append(f"length: {chars} characters > max_chars {s.max_chars}")

        folded = _fold(text)
        toks = tokens(folded)
        if len(toks) < s.min_tokens:
            reasons.append(f"length: {len(toks)} tokens < min_tokens {s.min_tokens}")
        if s.max_tokens is not None and len(toks) > s.max_tokens:
            reasons.append(f"length: {len(toks)} tokens > max_tokens {s.max_tokens}")

        if s.languages is not None:
            lang, share = _detect(toks)
            if lang not in s.languages:
                reasons.append(
                    f"language: {lang} ({share:.2f} of tokens) not in languages "
                    f"[{', '.join(s.languages)}]"
                )

        if self._blocked is not None:
            found = list(dict.fromkeys(m.group(0) for m in self._blocked.finditer(folded)))
            if found:
                reasons.append(f"blocked_terms: contains {', '.join(map(repr, found))}")

        if s.max_repetition is not None:
            lines = line_repetition(folded)
            grams = ngram_repetition(toks, s.repetition_ngram)
            if max(lines, grams) > s.max_repetition:
                what = (
                    f"{lines:.2f} of characters are in repeated lines"
                    if lines >= grams
                    else f"{grams:.2f} of tokens are in repeated {s.repetition_ngram}-grams"
                )
                reasons.append(f"repetition: {what} > max_repetition {s.max_repetition:.2f}")

        if s.max_noise is not None:
            noise = noise_share(text)
            if noise > s.max_noise:
                reasons.append(
                    f"noise: {noise:.2f} of characters are control, unassigned or "
                    f"replacement characters > max_noise {s.max_noise:.2f}"
                )
        return reasons

    def passes(self, text: str) -> bool:
        """Whether ``text`` passes every rule."""
        return not self.check(text)
