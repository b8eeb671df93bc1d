"""The synthetic chat corpus of ``bench/lifecycle.py`` (private helpers).

:func:`generate` makes chat records deterministically (the same ``n`` and ``seed`` give the
same lines): 50 % Chinese government-service Q&A, 30 % English ones, 20 % Chinese technical
support with English terms; each about 300 characters (a question, then an answer of
clauses drawn from fixed lists, so no two base records are alike). Of all records, about
15 % carry PII in the question (a mobile number in three spellings, an e-mail address, an
identity number with a valid check character, a Luhn-valid bank card), 5 % are exact
duplicates of an earlier record (half verbatim, half with changed whitespace or case, which
normalisation removes), 5 % near duplicates (an earlier record with a phrase inserted and a
few characters deleted: Jaccard ~0.9 on 5-character shingles), 3 % low quality (repeated
lines, mojibake, a blocked term) and 0.5 % malformed lines (cut-off JSON, no assistant
message). The word lists and templates are in ``bench/data/lifecycle_corpus.json``, read
once on import.

Example:
    >>> g = generate(200, seed=3)
    >>> len(g.lines), g.counts["malformed"], g.kinds[0]
    (200, 1, 'unique')
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parent / "data" / "lifecycle_corpus.json"

# Shares of all generated records (the rest are unique, well-formed records).
SHARES = {"exact": 0.05, "near": 0.05, "low_quality": 0.03, "malformed": 0.005}
PII_SHARE = 0.15  # of the unique records (their duplicates inherit it)
LANG_MIX = (("zh", 0.5), ("en", 0.3), ("tech", 0.2))
# Terms the low-quality records are given; bench/lifecycle.py's quality step blocks them.
BLOCKED = ("代办加急", "guaranteed approval")

# -- data ------------------------------------------------------------------------------------
# The vocabulary of the generated records. Answers are built from clauses drawn from these
# lists, with slots ({city}, {n} ...) filled at random, so no two unique records are alike.
# Tuples, as the lists were before they moved to JSON: module constants stay immutable.
_DATA: dict[str, Any] = json.loads(CORPUS.read_text(encoding="utf-8"))


def _words(*path: str) -> tuple[str, ...]:
    """The list at ``path`` in the corpus file, as a tuple."""
    node: Any = _DATA
    for key in path:
        node = node[key]
    return tuple(node)


CITIES = _words("zh", "cities")
DISTRICTS = _words("zh", "districts")
SERVICES = _words("zh", "services")
APPS = _words("zh", "apps")
FORMS = _words("zh", "forms")
DOCS = _words("zh", "docs")
WHO = _words("zh", "who")
WHEN = _words("zh", "when")
WHERE = _words("zh", "where")
ACTION = _words("zh", "action")
RESULT = _words("zh", "result")
ZH_Q = _words("zh", "questions")
ZH_CTX = _words("zh", "contexts")
EN_CITIES = _words("en", "cities")
EN_SERVICES = _words("en", "services")
EN_APPS = _words("en", "apps")
EN_FORMS = _words("en", "forms")
EN_DOCS = _words("en", "docs")
EN_WHO = _words("en", "who")
EN_ACT = _words("en", "action")
EN_WHERE = _words("en", "where")
EN_WHEN = _words("en", "when")
EN_RESULT = _words("en", "result")
EN_Q = _words("en", "questions")
TOOLS = _words("tech", "tools")
MODELS = _words("tech", "models")
ERRORS = _words("tech", "errors")
TECH_Q = _words("tech", "questions")
TECH_A = _words("tech", "answers")
NEAR_INSERTS = _words("near_duplicate_inserts")
PII_ZH = _words("pii", "phrases_zh")
PII_EN = _words("pii", "phrases_en")
NAMES = _words("pii", "email_names")
DOMAINS = _words("pii", "email_domains")
ID_REGIONS = _words("pii", "id_regions")

_CLAUSES = {
    "zh": (WHO, WHEN, WHERE, ACTION, RESULT),
    "en": (EN_WHO, EN_ACT, EN_WHERE, EN_WHEN, EN_RESULT),
    "tech": (TECH_A,),
}


@dataclass
class Generated:
    """Generated JSONL lines, the parsed well-formed records, and what was injected."""

    lines: list[str]
    records: list[dict[str, Any]]
    kinds: list[str]  # per line: unique, exact, near, low_quality, malformed
    flaws: list[str]  # per line: how a low-quality or malformed line is broken, else ""
    pii: list[bool]  # per line: carries PII
    counts: dict[str, int] = field(default_factory=dict)


def _luhn_digit(body: str) -> str:
    total = 0
    for i, c in enumerate(reversed(body)):
        d = int(c)
        if i % 2 == 0:  # doubled: the positions left of the check digit, every other one
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def _pii_value(kind: str, rng: random.Random) -> str:
    from qingliang.platform.lifecycle.data.pii import id_cn_check_char

    if kind == "phone":
        d = f"1{rng.choice('3456789')}{rng.randrange(10**9):09d}"
        return rng.choice((d, f"{d[:3]}-{d[3:7]}-{d[7:]}", f"+86 {d[:3]} {d[3:7]} {d[7:]}"))
    if kind == "email":
        return f"{rng.choice(NAMES)}{rng.randrange(100)}@{rng.choice(DOMAINS)}"
    if kind == "id":
        birth = dt.date(1950, 1, 1) + dt.timedelta(days=rng.randrange(20000))
        first = f"{rng.choice(ID_REGIONS)}{birth:%Y%m%d}{rng.randrange(1000):03d}"
        return first + id_cn_check_char(first)
    body = "6222" + "".join(rng.choice("0123456789") for _ in range(11))
    card = body + _luhn_digit(body)
    return rng.choice((card, " ".join(card[i : i + 4] for i in range(0, 16, 4))))


_SLOTS: dict[str, Callable[[random.Random], object]] = {
    "city": lambda r: r.choice(CITIES),
    "district": lambda r: r.choice(DISTRICTS),
    "app": lambda r: r.choice(APPS),
    "service": lambda r: r.choice(SERVICES),
    "form": lambda r: r.choice(FORMS),
    "doc": lambda r: r.choice(DOCS),
    "who": lambda r: r.choice(WHO),
    "n": lambda r: r.randrange(3, 31),
    "d": lambda r: r.randrange(1, 29),
    "k": lambda r: r.randrange(1, 4),
    "money": lambda r: r.randrange(5, 60) * 100,
    "port": lambda r: r.randrange(1024, 65536),
    "city_en": lambda r: r.choice(EN_CITIES),
    "app_en": lambda r: r.choice(EN_APPS),
    "service_en": lambda r: r.choice(EN_SERVICES),
    "form_en": lambda r: r.choice(EN_FORMS),
    "doc_en": lambda r: r.choice(EN_DOCS),
    "tool": lambda r: r.choice(TOOLS),
    "model": lambda r: r.choice(MODELS),
    "error": lambda r: r.choice(ERRORS),
}


def _fill(template: str, rng: random.Random) -> str:
    """``template`` with every ``{slot}`` drawn at random."""
    return re.sub(r"\{(\w+)\}", lambda m: str(_SLOTS[m.group(1)](rng)), template)


def _answer(lang: str, rng: random.Random, target: int) -> str:
    """Sentences of at least ``target`` characters in all (as far as the lists go).

    Clauses are drawn without replacement within a record: a phrase said twice would be
    caught by the quality filter's repetition rule.
    """
    decks = [rng.sample(c, len(c)) for c in _CLAUSES[lang]]
    out = ""
    for i in range(min(len(d) for d in decks)):
        if len(out) >= target:
            break
        first, *rest = (d[i] for d in decks)
        if lang == "zh":
            out += _fill(first + "".join(rest[:3]) + "，" + rest[3] + "。", rng)
        elif lang == "en":
            out += _fill(f"{first} {rest[0]} {rest[1]} {rest[2]}; {rest[3]}. ", rng)
        else:
            out += _fill(first + "。", rng)
    return out.strip()


def _conversation(lang: str, rng: random.Random, pii: bool) -> list[dict[str, str]]:
    """A question and an answer of about 300 characters in all."""
    if lang == "zh":
        question = _fill(rng.choice(ZH_CTX) + rng.choice(ZH_Q), rng)
    elif lang == "en":
        question = _fill(rng.choice(EN_Q), rng)
    else:
        question = _fill(rng.choice(TECH_Q), rng)
    if pii:
        kind = rng.choice(("phone", "phone", "email", "id", "card"))
        key = {"phone": "{phone}", "email": "{email}", "id": "{id}", "card": "{card}"}[kind]
        phrase = rng.choice([p for p in (PII_EN if lang == "en" else PII_ZH) if key in p])
        question = phrase.replace(key, _pii_value(kind, rng)) + question
    answer = _answer(lang, rng, rng.randint(200, 330) - len(question))
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _exact_copy(msgs: list[dict[str, str]], rng: random.Random) -> list[dict[str, str]]:
    """The same record; half of them with whitespace or case that normalisation removes."""
    out = [dict(m) for m in msgs]
    how = rng.choice(("verbatim", "verbatim", "spaces", "case"))
    if how == "spaces":
        out[1]["content"] = "  " + out[1]["content"].replace(" ", "  ") + " \n"
    elif how == "case":
        out[0]["content"] = out[0]["content"].upper()
    return out


def _near_copy(msgs: list[dict[str, str]], rng: random.Random) -> list[dict[str, str]]:
    """The same record with a phrase inserted and 2-4 characters deleted in the answer."""
    out = [dict(m) for m in msgs]
    text = out[1]["content"]
    at = rng.randrange(len(text))
    text = text[:at] + rng.choice(NEAR_INSERTS) + text[at:]
    cut = rng.randrange(len(text) - 4)
    out[1]["content"] = text[:cut] + text[cut + rng.randint(2, 4) :]
    return out


def _low_quality(
    msgs: list[dict[str, str]], rng: random.Random
) -> tuple[list[dict[str, str]], str]:
    out = [dict(m) for m in msgs]
    answer = out[1]["content"]
    how = rng.choice(("repeated", "mojibake", "blocked"))
    if how == "repeated":  # a degenerate answer: its first 40 characters, four times
        out[1]["content"] = "\n".join([answer[:40]] * 4)
    elif how == "mojibake":  # one character in eight replaced by U+FFFD
        out[1]["content"] = "".join("\ufffd" if i % 8 == 3 else c for i, c in enumerate(answer))
    else:
        term = BLOCKED[1] if answer.isascii() else BLOCKED[0]
        out[1]["content"] = f"{answer} {term}"
    return out, how


def generate(n: int, seed: int = 0) -> Generated:
    """``n`` JSONL lines of chat records as described in the module docstring.

    The same ``n`` and ``seed`` give the same lines. Counts of each kind are exact
    (rounded shares of ``n``); duplicates always come after the record they copy.

    Example:
        >>> g = generate(1000, seed=1)
        >>> g.counts["exact"], g.counts["near"], len(g.lines)
        (50, 50, 1000)
    """
    rng = random.Random(seed)
    counts = {k: round(share * n) for k, share in SHARES.items()}
    counts["unique"] = n - sum(counts.values())
    if counts["unique"] < 1:
        raise ValueError(f"n={n} is too small")
    order = [k for k, c in counts.items() for _ in range(c) if k != "unique"]
    order += ["unique"] * (counts["unique"] - 1)
    rng.shuffle(order)
    order.insert(0, "unique")
    langs, weights = zip(*LANG_MIX, strict=True)
    gen = Generated([], [], [], [], [], counts)
    originals: list[tuple[list[dict[str, str]], bool]] = []
    for kind in order:
        flaw = ""
        if kind in ("exact", "near"):
            msgs, pii = rng.choice(originals)
            msgs = (_exact_copy if kind == "exact" else _near_copy)(msgs, rng)
        else:
            pii = rng.random() < PII_SHARE and kind != "malformed"
            msgs = _conversation(rng.choices(langs, weights)[0], rng, pii)
            if kind == "unique":
                originals.append((msgs, pii))
            elif kind == "low_quality":
                msgs, flaw = _low_quality(msgs, rng)
        line = json.dumps({"messages": msgs}, ensure_ascii=False)
        if kind == "malformed":
            flaw = rng.choice(("cut-off JSON", "no assistant message"))
            if flaw == "cut-off JSON":
                line = line[: len(line) // 2]
            else:
                line = json.dumps({"messages": msgs[:1]}, ensure_ascii=False)
        else:
            gen.records.append({"messages": msgs})
        gen.lines.append(line)
        gen.kinds.append(kind)
        gen.flaws.append(flaw)
        gen.pii.append(pii)
    return gen
