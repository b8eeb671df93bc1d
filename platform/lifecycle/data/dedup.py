"""Exact and near-duplicate removal for training data: content hashes, MinHash and LSH.

Records are ``(id, text)`` pairs, decided in order; the first occurrence wins.

1. **Exact**: the text is normalised (Unicode NFKC, casefold, runs of whitespace to one
   space, stripped; each step can be switched off) and hashed with BLAKE2b-128. A record
   whose hash a kept record already has is dropped as ``exact`` (similarity 1.0).
2. **Near**: the normalised text is cut into shingles, character n-grams by default
   (``ngram=5``; Chinese needs no word segmentation) or word n-grams (``shingle="word"``,
   words as in :func:`qingliang.platform.lifecycle.data.quality.tokens`: each CJK character and each
   latin word). A text shorter than one shingle is one shingle. Shingles are hashed to
   32 bits (a polynomial over code points, vectorised over the whole batch, then the
   MurmurHash3 finaliser), and ``num_perm`` hash functions ``h_i(x) = ((a_i x + b_i) mod
   2^64) >> 32`` (multiply-add-shift, 2-universal; ``a``, ``b`` drawn from ``seed``) are
   applied to all shingles of a batch at once with numpy; the minimum per function is the
   record's signature (``num_perm`` uint32). Two signatures agree at a position with
   probability equal to the Jaccard similarity of the shingle sets.
3. **LSH banding** finds candidates without comparing all pairs: the first ``bands * rows``
   signature values are cut into ``bands`` bands of ``rows`` values; records that agree on
   a whole band are candidates. A pair with Jaccard ``s`` becomes a candidate with
   probability ``1 - (1 - s^rows)^bands``. Unless both are set, bands and rows are chosen
   from the threshold (:func:`optimal_bands`): the pair with ``bands * rows <= num_perm``
   that minimises ``0.2 * (false-positive area below the threshold) + 0.8 *
   (false-negative area above it)`` under that curve. False negatives weigh more because a
   missed duplicate is lost for good, while a false candidate only costs one verification.
   For ``threshold=0.8, num_perm=128`` that is 12 bands of 10 rows: a pair at 0.8 is a
   candidate with probability 0.74, at 0.85 with 0.93, at 0.5 with 0.01.
4. **Verification**: each candidate's similarity is the share of all ``num_perm`` signature
   positions that agree (the MinHash estimate of Jaccard, standard error about
   ``sqrt(s(1-s)/num_perm)``, 0.035 at 0.8 with 128); with ``exact_jaccard_max_chars`` set,
   records at most that long keep their shingle-hash sets and pairs of them are verified by
   exact Jaccard instead. A record is dropped as ``near`` when its best candidate reaches
   ``threshold``; ``duplicate_of`` names that candidate (ties: the earliest).

Only kept records enter the index, so ``duplicate_of`` always names a kept record and no two
kept records are duplicates of each other; a record that is only similar to a dropped one
is kept. The index persists across calls (:meth:`Deduplicator.add`, :meth:`~Deduplicator.run`)
so a new dataset version is deduplicated against earlier ones, and :meth:`~Deduplicator.state`
serialises it (settings, ids, hashes, signatures as bytes; no pickle) for
:meth:`~Deduplicator.from_state`.

Example:
    >>> from qingliang.platform.lifecycle.data.dedup import Deduplicator
    >>> text = ("Qingliang serves quantised models with vLLM on Ray and routes each request "
    ...         "to an agent, a model or a LoRA adapter that it learns to choose online.")
    >>> dedup = Deduplicator(threshold=0.8, seed=1)
    >>> for d in dedup.run([("a", text), ("b", "  " + text.upper()),
    ...                     ("c", text.replace("online", "on-line")),
    ...                     ("d", "量化模型在 Ray 上由 vLLM 提供服务。")]):
    ...     print(d.id, d.kept, d.reason, d.duplicate_of)
    a True None None
    b False exact a
    c False near a
    d True None None
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import unicodedata
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from itertools import islice
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from qingliang.platform.lifecycle.data.quality import tokens
from qingliang.serving.manifest import Strict

logger = logging.getLogger(__name__)

_U64 = np.uint64
_POLY = _U64(0x100000001B3)  # polynomial base for shingle hashes (the 64-bit FNV prime)
_STATE_MAGIC = b"QLDEDUP\x01"
_DIGEST_SIZE = 16
#: Records whose signatures are computed together (bounded memory for any iterable).
_BATCH_RECORDS = 2048
#: Shingles per (shingles x num_perm) uint64 block: 4096 x 128 x 8 bytes = 4 MiB.
_BLOCK_SHINGLES = 4096
_FP_WEIGHT, _FN_WEIGHT = 0.2, 0.8


class DedupSettings(Strict):
    """How records are normalised, shingled and compared.

    Frozen and strict (unknown keys are errors) so a Dataset manifest can embed it.
    """

    threshold: float = Field(
        default=0.8,
        gt=0.0,
        le=1.0,
        description="Jaccard similarity of shingle sets at or above which a record is a near "
        "duplicate.",
    )
    shingle: Literal["char", "word"] = Field(
        default="char",
        description="`char`: character n-grams (works for Chinese without segmentation); "
        "`word`: n-grams of words (each CJK character is a word).",
    )
    ngram: int = Field(default=5, ge=1, le=64, description="Shingle length in characters/words.")
    num_perm: int = Field(
        default=128, ge=8, le=1024, description="MinHash functions (signature length)."
    )
    bands: int | None = Field(
        default=None, ge=1, description="LSH bands; chosen from the threshold when null."
    )
    rows: int | None = Field(
        default=None, ge=1, description="Signature values per band; chosen when null."
    )
    seed: int = Field(
        default=1,
        ge=0,
        lt=2**63,
        description="Seed of the hash functions; same seed, same "
        "decisions. States only combine with the same seed.",
    )
    nfkc: bool = Field(default=True, description="Unicode NFKC (full-width to half-width...).")
    casefold: bool = Field(default=True, description="Compare case-insensitively.")
    collapse_whitespace: bool = Field(
        default=True, description="Runs of whitespace count as one space."
    )
    exact_jaccard_max_chars: int = Field(
        default=0,
        ge=0,
        description="Verify candidate pairs whose normalised texts are both at most this long "
        "by exact Jaccard of their shingle sets (kept in the index) instead of the "
        "signature estimate; 0: always the estimate.",
    )

    @model_validator(mode="after")
    def _banding(self) -> DedupSettings:
        if (self.bands is None) != (self.rows is None):
            missing = "rows" if self.rows is None else "bands"
            raise ValueError(f"{missing}: set bands and rows together, or neither")
        if (
            self.bands is not None
            and self.rows is not None
            and (self.bands * self.rows > self.num_perm)
        ):
            raise ValueError(
                f"bands: bands * rows = {self.bands * self.rows} > num_perm {self.num_perm}"
            )
        return self


@dataclass(frozen=True)
class DedupDecision:
    """What happened to one record.

    ``reason`` is ``exact`` or ``near`` for a dropped record and None for a kept one;
    ``duplicate_of`` is the id of the kept record it duplicates and ``similarity`` the
    verified Jaccard similarity to it (1.0 for exact duplicates).
    """

    id: str
    kept: bool
    reason: Literal["exact", "near"] | None = None
    duplicate_of: str | None = None
    similarity: float | None = None


def normalize(
    text: str, *, nfkc: bool = True, casefold: bool = True, collapse_whitespace: bool = True
) -> str:
    """The text that exact hashes and shingles are computed from; always stripped.

    Example:
        >>> normalize("  Ｈｅｌｌｏ,\\n\\tWORLD ")
        'hello, world'
    """
    if nfkc:
        text = unicodedata.normalize("NFKC", text)
    if casefold:
        text = text.casefold()
    if collapse_whitespace:
        return " ".join(text.split())
    return text.strip()


def _candidate_probability(s: np.ndarray, bands: int, rows: int) -> np.ndarray:
    return 1.0 - (1.0 - s**rows) ** bands


@cache
def optimal_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """LSH ``(bands, rows)`` for a threshold: see the module docstring for the criterion.

    Example:
        >>> optimal_bands(0.8, 128)
        (12, 10)
    """
    s = np.linspace(0.0, 1.0, 1001)
    below = s < threshold
    best: tuple[float, int, int] | None = None
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            p = _candidate_probability(s, bands, rows)
            fp = np.trapezoid(np.where(below, p, 0.0), s)
            fn = np.trapezoid(np.where(below, 0.0, 1.0 - p), s)
            err = _FP_WEIGHT * fp + _FN_WEIGHT * fn
            if best is None or err < best[0] - 1e-12:
                best = (float(err), bands, rows)
    assert best is not None
    return best[1], best[2]


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, in place (uint64 arithmetic wraps)."""
    h ^= h >> _U64(33)
    h *= _U64(0xFF51AFD7ED558CCD)
    h ^= h >> _U64(33)
    h *= _U64(0xC4CEB9FE1A85EC53)
    h ^= h >> _U64(33)
    return h


def _segments(counts: np.ndarray) -> np.ndarray:
    """Start offsets of consecutive segments of these sizes, plus the total at the end."""
    seg = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=seg[1:])
    return seg


def _ngram_hashes(values: np.ndarray, lengths: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of all n-grams of several sequences laid end to end in ``values``.

    A sequence shorter than ``n`` gives one hash of the whole sequence. Returns the 32-bit
    hashes (as uint64, grouped by sequence) and the segment offsets of each sequence.
    """
    values = values.astype(np.uint64) + _U64(1)  # +1: a leading zero must change the hash
    total = values.size
    long = lengths >= n
    counts = np.where(long, lengths - n + 1, 1)
    seg = _segments(counts)
    out = np.empty(int(seg[-1]), dtype=np.uint64)
    starts = _segments(lengths)[:-1]
    if total >= n and long.any():
        width = total - n + 1
        rolled = values[:width].copy()
        for k in range(1, n):
            rolled *= _POLY
            rolled += values[k : k + width]
        long_counts = counts[long]
        within = np.arange(int(long_counts.sum())) - np.repeat(
            _segments(long_counts)[:-1], long_counts
        )
        out[np.repeat(seg[:-1][long], long_counts) + within] = rolled[
            np.repeat(starts[long], long_counts) + within
        ]
    for j in np.flatnonzero(~long):
        h = 0
        for v in values[starts[j] : starts[j] + lengths[j]].tolist():
            h = (h * int(_POLY) + v) & 0xFFFFFFFFFFFFFFFF
        out[seg[j]] = h
    return _fmix64(out) >> _U64(32), seg


def _char_shingles(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    code_points = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype="<u4")
    return _ngram_hashes(code_points, lengths, n)


def _word_shingles(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    words = [tokens(t) or [t] for t in texts]
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    hashes = np.fromiter(
        (zlib.crc32(w.encode("utf-8", "surrogatepass")) for ws in words for w in ws),
        dtype=np.uint32,
        count=lengths.sum(),
    )
    return _ngram_hashes(hashes, lengths, n)


class _Index:
    """Signatures of kept records in one growing array, with LSH buckets per band."""

    def __init__(self, num_perm: int, bands: int) -> None:
        self.sigs = np.empty((0, num_perm), dtype=np.uint32)
        self.size = 0
        self.buckets: list[dict[int, list[int]]] = [{} for _ in range(bands)]

    def append(self, sig: np.ndarray, keys: list[int]) -> int:
        if self.size == len(self.sigs):
            grown = np.empty((max(64, 2 * self.size), self.sigs.shape[1]), dtype=np.uint32)
            grown[: self.size] = self.sigs[: self.size]
            self.sigs = grown
        pos = self.size
        self.sigs[pos] = sig
        self.size += 1
        for bucket, key in zip(self.buckets, keys, strict=True):
            bucket.setdefault(key, []).append(pos)
        return pos

    def candidates(self, keys: list[int]) -> list[int]:
        found: set[int] = set()
        for bucket, key in zip(self.buckets, keys, strict=True):
            hit = bucket.get(key)
            if hit:
                found.update(hit)
        return sorted(found)


class Deduplicator:
    """Drops exact and near duplicates; keeps an index that grows across calls.

    Args:
        settings: the settings; or give their fields as keyword arguments instead.

    Raises:
        ValueError: a setting is invalid (pydantic's ``ValidationError`` names the field).

    Example:
        >>> dedup = Deduplicator(threshold=0.8, ngram=5, num_perm=128, seed=1)
        >>> dedup.add("x1", "数据治理：精确去重与近似去重。").kept
        True
        >>> dedup.add("x2", "数据治理:精确去重与近似去重。")   # full-width colon, NFKC
        DedupDecision(id='x2', kept=False, reason='exact', duplicate_of='x1', similarity=1.0)
    """

    def __init__(self, settings: DedupSettings | None = None, **fields: Any) -> None:
        if settings is not None and fields:
            raise TypeError("give either settings or keyword fields, not both")
        self.settings = s = settings if settings is not None else DedupSettings(**fields)
        if s.bands is not None and s.rows is not None:
            self.bands, self.rows = s.bands, s.rows
        else:
            self.bands, self.rows = optimal_bands(s.threshold, s.num_perm)
        rng = np.random.default_rng(s.seed)
        self._a = rng.integers(0, 2**64, size=s.num_perm, dtype=np.uint64)
        self._b = rng.integers(0, 2**64, size=s.num_perm, dtype=np.uint64)
        self._band_mult = rng.integers(0, 2**64, size=self.rows, dtype=np.uint64) | _U64(1)
        self._index = _Index(s.num_perm, self.bands)
        self._ids: list[str] = []
        self._positions: dict[str, int] = {}
        self._digests: list[bytes] = []
        self._exact: dict[bytes, int] = {}
        self._shingle_sets: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        """Number of kept records in the index."""
        return len(self._ids)

    # -- signatures ---------------------------------------------------------------------

    def _normalize(self, text: str) -> str:
        s = self.settings
        return normalize(
            text, nfkc=s.nfkc, casefold=s.casefold, collapse_whitespace=s.collapse_whitespace
        )

    def _shingles(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.settings.shingle == "word":
            return _word_shingles(texts, self.settings.ngram)
        return _char_shingles(texts, self.settings.ngram)

    def _minhash(self, shingles: np.ndarray, seg: np.ndarray) -> np.ndarray:
        """Signatures (records x num_perm, uint32) from grouped shingle hashes."""
        num_perm, total = self.settings.num_perm, int(seg[-1])
        mins = np.full((num_perm, seg.size - 1), np.iinfo(np.uint64).max, dtype=np.uint64)
        # Fixed blocks of shingles, whatever the records' lengths (memory stays bounded);
        # num_perm x shingles, because reducing along the contiguous axis is ~3x faster, in
        # one reused buffer, which saves the page faults of a fresh array per block.
        buf = np.empty((num_perm, _BLOCK_SHINGLES), dtype=np.uint64)
        for lo in range(0, total, _BLOCK_SHINGLES):
            hi = min(lo + _BLOCK_SHINGLES, total)
            first = int(np.searchsorted(seg, lo, side="right")) - 1
            last = int(np.searchsorted(seg, hi, side="left"))  # records [first, last)
            block = np.multiply.outer(self._a, shingles[lo:hi], out=buf[:, : hi - lo])
            block += self._b[:, None]
            # Every record has at least one shingle, so these starts strictly increase.
            starts = np.maximum(seg[first:last], lo) - lo
            part = mins[:, first:last]
            np.minimum(part, np.minimum.reduceat(block, starts, axis=1), out=part)
        # ((a x + b) mod 2^64) >> 32 is monotone in the 64-bit value: shift after the min.
        return np.ascontiguousarray((mins >> _U64(32)).T, dtype=np.uint32)

    def signatures(self, texts: list[str]) -> np.ndarray:
        """MinHash signatures (``len(texts) x num_perm``, uint32) of the normalised texts."""
        shingles, seg = self._shingles([self._normalize(t) for t in texts])
        return self._minhash(shingles, seg)

    def _band_keys(self, sigs: np.ndarray) -> list[list[int]]:
        width = self.bands * self.rows
        cols = sigs[:, :width].reshape(len(sigs), self.bands, self.rows).astype(np.uint64)
        cols *= self._band_mult
        keys: list[list[int]] = cols.sum(axis=2, dtype=np.uint64).tolist()
        return keys

    # -- decisions ----------------------------------------------------------------------

    def add(self, id: str, text: str) -> DedupDecision:
        """Decide one record against the index (and index it when kept)."""
        return self.run([(id, text)])[0]

    def run(self, items: Iterable[tuple[str, str]]) -> list[DedupDecision]:
        """Decide records in order against the index and each other; the first one wins.

        Kept records join the index, so later calls see them. On an error (an id already
        in the index) the records decided before it stay indexed.

        Raises:
            ValueError: a record id is already in the index.
        """
        decisions: list[DedupDecision] = []
        for batch in _batches(items, _BATCH_RECORDS):
            decisions.extend(self._run_batch(batch))
        if logger.isEnabledFor(logging.DEBUG):
            exact = sum(d.reason == "exact" for d in decisions)
            near = sum(d.reason == "near" for d in decisions)
            logger.debug(
                "dedup: %d records, %d exact and %d near duplicates dropped, %d indexed",
                len(decisions),
                exact,
                near,
                len(self),
            )
        return decisions

    def _run_batch(self, batch: list[tuple[str, str]]) -> list[DedupDecision]:
        s = self.settings
        texts = [self._normalize(text) for _, text in batch]
        shingles, seg = self._shingles(texts)
        sigs = self._minhash(shingles, seg)
        keys = self._band_keys(sigs)
        decisions = []
        for j, (record_id, _) in enumerate(batch):
            if record_id in self._positions:
                raise ValueError(f"record id {record_id!r} is already in the index")
            digest = hashlib.blake2b(
                texts[j].encode("utf-8", "surrogatepass"), digest_size=_DIGEST_SIZE
            ).digest()
            pos = self._exact.get(digest)
            if pos is not None:
                decisions.append(DedupDecision(record_id, False, "exact", self._ids[pos], 1.0))
                continue
            exact_set = None
            if 0 < len(texts[j]) <= s.exact_jaccard_max_chars:
                exact_set = np.unique(shingles[seg[j] : seg[j + 1]]).astype(np.uint32)
            best = self._best_match(sigs[j], keys[j], exact_set)
            if best is not None and best[1] >= s.threshold:
                decisions.append(
                    DedupDecision(record_id, False, "near", self._ids[best[0]], best[1])
                )
                continue
            self._keep(record_id, digest, sigs[j], keys[j], exact_set)
            decisions.append(DedupDecision(record_id, True))
        return decisions

    def _best_match(
        self, sig: np.ndarray, keys: list[int], exact_set: np.ndarray | None
    ) -> tuple[int, float] | None:
        """The most similar indexed candidate (earliest on ties) and its similarity."""
        cands = self._index.candidates(keys)
        if not cands:
            return None
        sims = (self._index.sigs[cands] == sig).mean(axis=1)
        if exact_set is not None:
            for i, pos in enumerate(cands):
                other = self._shingle_sets.get(pos)
                if other is not None:
                    inter = np.intersect1d(exact_set, other, assume_unique=True).size
                    sims[i] = inter / (exact_set.size + other.size - inter)
        i = int(np.argmax(sims))
        return cands[i], float(sims[i])

    def _keep(
        self,
        record_id: str,
        digest: bytes,
        sig: np.ndarray,
        keys: list[int],
        exact_set: np.ndarray | None,
    ) -> None:
        pos = self._index.append(sig, keys)
        self._ids.append(record_id)
        self._positions[record_id] = pos
        self._digests.append(digest)
        self._exact.setdefault(digest, pos)
        if exact_set is not None:
            self._shingle_sets[pos] = exact_set

    # -- persistence --------------------------------------------------------------------

    def state(self) -> bytes:
        """The index as bytes: settings, kept ids, content hashes, signatures, shingle sets.

        Layout: ``QLDEDUP\\x01``, a little-endian uint64 header length, a UTF-8 JSON header,
        then raw little-endian arrays; signatures are ``len(self) x num_perm`` uint32.
        """
        n = len(self)
        set_positions = sorted(self._shingle_sets)
        header = {
            "settings": self.settings.model_dump(mode="json"),
            "ids": self._ids,
            "shingle_sets": [[p, int(self._shingle_sets[p].size)] for p in set_positions],
        }
        raw = json.dumps(header).encode()
        parts = [
            _STATE_MAGIC,
            struct.pack("<Q", len(raw)),
            raw,
            b"".join(self._digests),
            self._index.sigs[:n].astype("<u4").tobytes(),
        ]
        parts.extend(self._shingle_sets[p].astype("<u4").tobytes() for p in set_positions)
        return b"".join(parts)

    @classmethod
    def from_state(cls, data: bytes) -> Deduplicator:
        """A deduplicator with the index :meth:`state` saved; the settings come from it.

        Raises:
            ValueError: ``data`` is not a deduplicator state, or it is truncated.
        """
        view = memoryview(data)
        head = len(_STATE_MAGIC) + 8
        if len(data) < head or bytes(view[: len(_STATE_MAGIC)]) != _STATE_MAGIC:
            raise ValueError("dedup state: not a Qingliang deduplicator state (bad magic)")
        (raw_len,) = struct.unpack("<Q", view[len(_STATE_MAGIC) : head])
        try:
            header = json.loads(bytes(view[head : head + raw_len]))
            dedup = cls(DedupSettings.model_validate(header["settings"]))
            ids = [str(i) for i in header["ids"]]
            set_sizes = [(int(p), int(k)) for p, k in header["shingle_sets"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"dedup state: bad header: {exc}") from exc
        n, num_perm = len(ids), dedup.settings.num_perm
        offset = head + raw_len
        sizes = [n * _DIGEST_SIZE, n * num_perm * 4] + [k * 4 for _, k in set_sizes]
        if len(data) != offset + sum(sizes):
            raise ValueError(
                f"dedup state: {len(data)} bytes, expected {offset + sum(sizes)} for {n} records"
            )
        digests = bytes(view[offset : offset + sizes[0]])
        offset += sizes[0]
        sigs = np.frombuffer(view[offset : offset + sizes[1]], dtype="<u4").reshape(n, num_perm)
        offset += sizes[1]
        sets: dict[int, np.ndarray] = {}
        for (pos, _), size in zip(set_sizes, sizes[2:], strict=True):
            sets[pos] = np.frombuffer(view[offset : offset + size], dtype="<u4").astype(np.uint32)
            offset += size
        sigs = sigs.astype(np.uint32)
        for pos, (record_id, sig, keys) in enumerate(
            zip(ids, sigs, dedup._band_keys(sigs), strict=True)
        ):
            digest = digests[pos * _DIGEST_SIZE : (pos + 1) * _DIGEST_SIZE]
            dedup._keep(record_id, digest, sig, keys, sets.get(pos))
        return dedup


def _batches(items: Iterable[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch
