"""A small BM25-style sparse encoder for hybrid search: hashed terms, no vocabulary file.

Terms: text is NFKC-normalised and lower-cased; runs of Latin letters and digits become
words, runs of CJK characters become overlapping character bigrams (a lone character stays a
unigram), everything else separates terms. Each term maps to ``blake2b(term) mod 2**20``, so
indices are the same in every process and version of Python (``hash()`` is salted).

Weights: a passage term gets BM25's saturated term frequency
``tf·(k1+1) / (tf + k1·(1 − b + b·len/avg_len))`` with a fixed ``avg_len`` (the encoder sees
one text at a time, so no corpus statistics); a query term gets 1 per occurrence. The dot
product a sparse search ranks by is then BM25 without its IDF factor. Collisions of two terms
on one index add up.

Example:
    >>> from qingliang.knowledge._bm25 import Bm25Encoder, terms
    >>> terms("疫苗接种 policy 2024")
    ['疫苗', '苗接', '接种', 'policy', '2024']
    >>> enc = Bm25Encoder()
    >>> q, p = enc.encode_query("接种"), enc.encode_passage("疫苗接种通知")
    >>> q.dot(p) > 0
    True
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable

from qingliang.knowledge.stores import SparseVector

log = logging.getLogger(__name__)

DIMENSIONS = 2**20

# CJK unified ideographs (with extension A and compatibility), kana and hangul syllables.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+")
_IS_CJK = re.compile(rf"[{_CJK}]")


def terms(text: str) -> list[str]:
    """The terms of ``text`` in order: words, and character bigrams of CJK runs."""
    out: list[str] = []
    for run in _TOKEN.findall(unicodedata.normalize("NFKC", text).lower()):
        if _IS_CJK.match(run):
            if len(run) == 1:
                out.append(run)
            else:
                out.extend(run[i : i + 2] for i in range(len(run) - 1))
        else:
            out.append(run)
    return out


def term_index(term: str) -> int:
    """The sparse index of ``term``: a stable hash into ``[0, 2**20)``."""
    digest = hashlib.blake2b(term.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % DIMENSIONS


class Bm25Encoder:
    """Encodes passages and queries as hashed BM25-style sparse vectors.

    Args:
        k1: Term-frequency saturation (BM25's usual 1.2).
        b: Length normalisation (0: none, 1: full; usual 0.75).
        avg_len: The passage length in terms taken as average (about an 800-character
            Chinese chunk's bigram count / 3).
    """

    def __init__(self, *, k1: float = 1.2, b: float = 0.75, avg_len: float = 256.0) -> None:
        if k1 <= 0 or not 0 <= b <= 1 or avg_len <= 0:
            raise ValueError(f"need k1 > 0, 0 <= b <= 1, avg_len > 0; got {k1}, {b}, {avg_len}")
        self.k1 = k1
        self.b = b
        self.avg_len = avg_len

    @property
    def name(self) -> str:
        """Identifies the encoding; stored with every chunk so a changed encoder re-encodes."""
        return f"bm25-v1:k1={self.k1:g},b={self.b:g},avg_len={self.avg_len:g}"

    def encode_passage(self, text: str) -> SparseVector:
        """The sparse vector stored with a chunk (empty when the text has no terms)."""
        counts = Counter(terms(text))
        length = sum(counts.values())
        norm = self.k1 * (1 - self.b + self.b * length / self.avg_len)
        return _vector((term, tf * (self.k1 + 1) / (tf + norm)) for term, tf in counts.items())

    def encode_query(self, text: str) -> SparseVector:
        """The sparse vector searched with: 1 per term occurrence."""
        return _vector((term, float(tf)) for term, tf in Counter(terms(text)).items())

    def encode_passages(self, texts: list[str]) -> list[SparseVector]:
        return [self.encode_passage(t) for t in texts]


def _vector(weights: Iterable[tuple[str, float]]) -> SparseVector:
    merged: dict[int, float] = {}
    for term, weight in weights:
        idx = term_index(term)
        merged[idx] = merged.get(idx, 0.0) + weight
    ordered = sorted(merged.items())
    return SparseVector([i for i, _ in ordered], [w for _, w in ordered])
