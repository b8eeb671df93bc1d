"""Request features for the router: what a request looks like, as a fixed-length vector.

:class:`RequestFeatures` is what the runtime knows about a request when it must route it;
:class:`FeatureEncoder` turns it into the vector the policies learn on. The layout, in order:

=====================  ============================================================
block                  contents
=====================  ============================================================
embedding              the L2-normalised embedding through a fixed Gaussian random
                       projection to ``embedding_dims`` numbers (zeros without one)
domain                 one-hot over the declared domains, then ``other``
length                 ``log(1 + chars) / log(1 + 4096)`` clipped to 0..1
modality               one-hot over ``text``, ``image``, ``table``, ``mixed``
tenant                 one-hot over ``tenant_buckets`` buckets of a stable hash (blake2b;
                       all zeros without a tenant)
bias                   1.0 (the last component; cold-start priors live on it)
=====================  ============================================================

The projection matrix depends only on ``seed`` and the embedding's dimension, so the same
request always encodes to the same vector, in every process and after every restart.

:func:`hash_embedding` is a deterministic character-trigram hashing embedding, used when no
embedding model is wired into the router: it carries surface similarity only (shared
words and characters), not meaning.

Example:
    >>> enc = FeatureEncoder(["gov", "finance"], embedding_dims=4, tenant_buckets=2)
    >>> f = RequestFeatures("养老保险怎么转移?", hash_embedding("养老保险怎么转移?"), "gov")
    >>> x = enc.encode(f)
    >>> x.shape == (enc.dimensions,) == (4 + 3 + 1 + 4 + 2 + 1,)
    True
    >>> x[-1].item(), x[4:7].tolist(), x[8:12].tolist()
    (1.0, [1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0])
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

MODALITIES = ("text", "image", "table", "mixed")
#: Requests this long (characters) or longer get the length feature 1.0.
LENGTH_SCALE = 4096


@dataclass(frozen=True)
class RequestFeatures:
    """What is known about a request when it is routed.

    Attributes:
        text: the request's text (only its length is used by the encoder).
        embedding: a query embedding of any dimension, or None.
        domain: a domain label (one of the router's domains, else counted as ``other``).
        modality: ``text``, ``image``, ``table`` or ``mixed``.
        tenant: the tenant the request comes from, or None.
    """

    text: str
    embedding: list[float] | None = None
    domain: str | None = None
    modality: str = "text"
    tenant: str | None = None


def stable_bucket(value: str, buckets: int) -> int:
    """A bucket in ``0..buckets-1`` for ``value``, the same in every process (blake2b)."""
    digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


def hash_embedding(text: str, dims: int = 64) -> list[float]:
    """A deterministic character-trigram hashing embedding of ``text`` (unit length).

    Used when no embedding model is wired: each trigram of the lower-cased, space-padded
    text adds ±1 to a blake2b-chosen component. Texts that share trigrams point the same
    way; an empty text gives zeros.

    Example:
        >>> a, b = hash_embedding("tax return form"), hash_embedding("tax return forms")
        >>> round(sum(x * y for x, y in zip(a, b)), 2) > 0.8
        True
    """
    if dims < 1:
        raise ValueError(f"dims must be at least 1, got {dims}")
    v = np.zeros(dims)
    if not text:
        return v.tolist()
    t = f"  {text.lower()} "
    for i in range(len(t) - 2):
        h = int.from_bytes(hashlib.blake2b(t[i : i + 3].encode(), digest_size=8).digest(), "big")
        v[h % dims] += 1.0 if (h >> 32) & 1 else -1.0
    norm = float(np.linalg.norm(v))
    return (v / norm if norm > 0 else v).tolist()


class FeatureEncoder:
    """Encodes :class:`RequestFeatures` into a vector of :attr:`dimensions` numbers.

    Args:
        domains: the domain labels that get their own component (others share ``other``).
        embedding_dims: size of the projected embedding block (0 leaves it out).
        tenant_buckets: size of the hashed tenant block (0 leaves it out).
        seed: seed of the random projection (keep it fixed: it defines the layout).
    """

    def __init__(
        self,
        domains: Sequence[str],
        embedding_dims: int = 8,
        tenant_buckets: int = 4,
        seed: int = 0,
    ) -> None:
        names = list(domains)
        if len(set(names)) != len(names) or "other" in names:
            raise ValueError(f"domains must be distinct and not 'other', got {names!r}")
        if embedding_dims < 0 or tenant_buckets < 0:
            raise ValueError("embedding_dims and tenant_buckets must be >= 0")
        self.domains = names
        self.embedding_dims = embedding_dims
        self.tenant_buckets = tenant_buckets
        self.seed = seed
        self._domain_index = {d: i for i, d in enumerate(names)}
        self._projections: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()
        self.dimensions = embedding_dims + len(names) + 1 + 1 + len(MODALITIES) + tenant_buckets + 1

    @property
    def names(self) -> list[str]:
        """A name per component, in layout order (``bias`` last)."""
        return (
            [f"embedding[{i}]" for i in range(self.embedding_dims)]
            + [f"domain={d}" for d in [*self.domains, "other"]]
            + ["length"]
            + [f"modality={m}" for m in MODALITIES]
            + [f"tenant#{i}" for i in range(self.tenant_buckets)]
            + ["bias"]
        )

    def _projection(self, n: int) -> np.ndarray:
        with self._lock:
            m = self._projections.get(n)
            if m is None:
                rng = np.random.default_rng([self.seed, n])
                # Scaled so a unit vector keeps about unit length after projection.
                m = rng.standard_normal((n, self.embedding_dims)) / math.sqrt(
                    max(self.embedding_dims, 1)
                )
                self._projections[n] = m
            return m

    def encode(self, f: RequestFeatures) -> np.ndarray:
        """The feature vector of ``f``; ValueError names the bad field."""
        if not isinstance(f.text, str):
            raise ValueError(f"text must be a string, got {type(f.text).__name__}")
        if f.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {f.modality!r}")
        x = np.zeros(self.dimensions)
        pos = 0
        if self.embedding_dims and f.embedding is not None:
            e = np.asarray(f.embedding, dtype=np.float64)
            if e.ndim != 1 or e.size == 0:
                raise ValueError(f"embedding must be a non-empty list of numbers, got {e.shape}")
            if not np.all(np.isfinite(e)):
                raise ValueError("embedding must hold finite numbers (found NaN or infinity)")
            norm = float(np.linalg.norm(e))
            if norm > 0:
                x[: self.embedding_dims] = (e / norm) @ self._projection(e.size)
        elif f.embedding is not None and not all(math.isfinite(v) for v in f.embedding):
            raise ValueError("embedding must hold finite numbers (found NaN or infinity)")
        pos += self.embedding_dims
        other = len(self.domains)
        x[pos + (other if f.domain is None else self._domain_index.get(f.domain, other))] = 1.0
        pos += len(self.domains) + 1
        x[pos] = min(1.0, math.log1p(len(f.text)) / math.log1p(LENGTH_SCALE))
        pos += 1
        x[pos + MODALITIES.index(f.modality)] = 1.0
        pos += len(MODALITIES)
        if self.tenant_buckets and f.tenant is not None:
            x[pos + stable_bucket(f.tenant, self.tenant_buckets)] = 1.0
        pos += self.tenant_buckets
        x[pos] = 1.0
        return x
