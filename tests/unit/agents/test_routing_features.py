"""Request features: layout, determinism of the projection and the tenant hash, bad input."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from qingliang.agents.routing.features import (
    MODALITIES,
    FeatureEncoder,
    RequestFeatures,
    hash_embedding,
    stable_bucket,
)

DOMAINS = ["gov", "finance"]


def _blocks(enc: FeatureEncoder, x: np.ndarray) -> dict[str, np.ndarray]:
    e, d = enc.embedding_dims, len(enc.domains) + 1
    return {
        "embedding": x[:e],
        "domain": x[e : e + d],
        "length": x[e + d : e + d + 1],
        "modality": x[e + d + 1 : e + d + 5],
        "tenant": x[e + d + 5 : e + d + 5 + enc.tenant_buckets],
        "bias": x[-1:],
    }


def test_layout_one_hots_length_and_bias() -> None:
    enc = FeatureEncoder(DOMAINS, embedding_dims=4, tenant_buckets=3)
    assert enc.dimensions == 4 + 3 + 1 + 4 + 3 + 1 == len(enc.names)
    assert enc.names[-1] == "bias" and enc.names[4:7] == [
        "domain=gov",
        "domain=finance",
        "domain=other",
    ]
    x = enc.encode(RequestFeatures("a" * 63, None, "finance", "table", None))
    b = _blocks(enc, x)
    assert b["domain"].tolist() == [0.0, 1.0, 0.0]
    assert b["modality"].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert b["length"][0] == pytest.approx(math.log(64) / math.log(4097))
    assert b["embedding"].tolist() == [0.0] * 4  # no embedding
    assert b["tenant"].tolist() == [0.0] * 3  # no tenant
    assert b["bias"][0] == 1.0
    # An undeclared domain and a missing one both count as "other".
    for domain in ("legal", None):
        x = enc.encode(RequestFeatures("", None, domain))
        assert _blocks(enc, x)["domain"].tolist() == [0.0, 0.0, 1.0]
        assert _blocks(enc, x)["length"][0] == 0.0
    long = enc.encode(RequestFeatures("a" * 10_000, modality="mixed"))
    assert _blocks(enc, long)["length"][0] == 1.0
    assert _blocks(enc, long)["modality"].tolist() == [0.0, 0.0, 0.0, 1.0]


def test_projection_is_deterministic_normalised_and_per_input_dimension() -> None:
    rng = np.random.default_rng(0)
    e16, e32 = rng.standard_normal(16), rng.standard_normal(32)
    a, b = FeatureEncoder(DOMAINS, seed=3), FeatureEncoder(DOMAINS, seed=3)
    f = RequestFeatures("q", e16.tolist())
    assert np.array_equal(a.encode(f), b.encode(f))
    # L2-normalised first: scaling the embedding changes nothing.
    assert np.allclose(a.encode(RequestFeatures("q", (5 * e16).tolist())), a.encode(f))
    # A different seed is a different projection; another input size gets its own matrix.
    assert not np.allclose(FeatureEncoder(DOMAINS, seed=4).encode(f)[:8], a.encode(f)[:8])
    x32 = a.encode(RequestFeatures("q", e32.tolist()))[:8]
    assert x32.shape == (8,) and np.any(x32 != 0)
    # The projection keeps a unit vector near unit length and preserves direction.
    proj = a.encode(f)[:8]
    assert 0.3 < float(np.linalg.norm(proj)) < 2.0
    assert np.allclose(a.encode(RequestFeatures("q", (-e16).tolist()))[:8], -proj)
    zeros = a.encode(RequestFeatures("q", [0.0] * 16))[:8]
    assert zeros.tolist() == [0.0] * 8


def test_tenant_hash_is_stable_across_processes() -> None:
    enc = FeatureEncoder(DOMAINS, embedding_dims=0, tenant_buckets=4)
    buckets = {t: stable_bucket(t, 4) for t in ("acme", "gov-north", "租户-7", "t-west")}
    for tenant, bucket in buckets.items():
        tb = _blocks(enc, enc.encode(RequestFeatures("x", tenant=tenant)))["tenant"]
        assert tb.tolist() == [1.0 if i == bucket else 0.0 for i in range(4)]
    code = (
        "from qingliang.agents.routing.features import stable_bucket;"
        "print([stable_bucket(t, 4) for t in ('acme', 'gov-north', '租户-7', 't-west')])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == str(list(buckets.values())), out.stderr


def test_hash_embedding_is_deterministic_unit_and_similarity_preserving() -> None:
    a = hash_embedding("养老保险关系转移接续")
    assert a == hash_embedding("养老保险关系转移接续") and len(a) == 64
    assert float(np.linalg.norm(a)) == pytest.approx(1.0)
    near = np.dot(a, hash_embedding("养老保险关系如何转移接续"))
    far = np.dot(a, hash_embedding("quarterly revenue table"))
    assert near > 0.5 > abs(far)
    assert hash_embedding("", dims=16) == [0.0] * 16
    with pytest.raises(ValueError, match="dims"):
        hash_embedding("x", dims=0)


@pytest.mark.parametrize(
    ("features", "match"),
    [
        (RequestFeatures("q", [0.1, float("nan")]), "finite"),
        (RequestFeatures("q", [0.1, float("inf")]), "finite"),
        (RequestFeatures("q", []), "non-empty"),
        (RequestFeatures("q", modality="video"), "modality must be one of"),
        (RequestFeatures(None), "text must be a string"),  # type: ignore[arg-type]
    ],
)
def test_bad_features_are_refused(features: RequestFeatures, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FeatureEncoder(DOMAINS).encode(features)


def test_bad_encoder_settings() -> None:
    with pytest.raises(ValueError, match="distinct"):
        FeatureEncoder(["gov", "gov"])
    with pytest.raises(ValueError, match="not 'other'"):
        FeatureEncoder(["other"])
    with pytest.raises(ValueError, match=">= 0"):
        FeatureEncoder(DOMAINS, embedding_dims=-1)
    assert len(MODALITIES) == 4
