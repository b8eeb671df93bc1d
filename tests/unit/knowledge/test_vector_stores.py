"""One conformance suite for every ``VectorStore``: Qdrant Edge (embedded, in tmp_path),
Qdrant server through ``QdrantClient(":memory:")``, and a real server when ``QDRANT_URL`` is set.

Data are small and structured (clustered dense vectors, hand-made sparse vectors) so the
expected rankings can be computed exactly here; both in-process backends search exactly.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from qingliang.knowledge.stores import (
    CollectionSpec,
    Filter,
    Point,
    QdrantEdgeStore,
    QdrantServerStore,
    Range,
    ShardLocked,
    SparseVector,
    SpecConflict,
    VectorStore,
    rrf_fuse,
)
from qingliang.platform.errors import BadRequest, NotFound

DIM = 8
TENANTS = ("a", "b")


@pytest.fixture(params=["edge", "server-memory", "server-url"])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[VectorStore]:
    if request.param == "edge":
        s: VectorStore = QdrantEdgeStore(tmp_path / "qdrant")
    else:
        from qdrant_client import QdrantClient

        if request.param == "server-memory":
            client = QdrantClient(":memory:")
        else:
            url = os.environ.get("QDRANT_URL")
            if not url:
                pytest.skip("QDRANT_URL not set: no real Qdrant server to test against")
            client = QdrantClient(url=url, api_key=os.environ.get("QDRANT_API_KEY"))
        s = QdrantServerStore(client)
    made: list[str] = []
    original = s.create_collection

    def tracking_create(spec: CollectionSpec) -> bool:
        made.append(spec.name)
        return original(spec)

    s.create_collection = tracking_create  # type: ignore[method-assign]
    yield s
    for name in made:  # a real server outlives the test
        s.drop_collection(name)
    s.close()


@pytest.fixture
def name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def _clustered(n_per_cluster: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Vectors around 4 orthogonal centres, and the cluster of each."""
    rng = np.random.default_rng(seed)
    centres = np.eye(DIM)[:4]
    labels = np.repeat(np.arange(4), n_per_cluster)
    vecs = centres[labels] + 0.15 * rng.standard_normal((labels.size, DIM))
    return vecs, labels


def _cosine_order(vecs: np.ndarray, query: np.ndarray) -> list[int]:
    sims = vecs @ query / (np.linalg.norm(vecs, axis=1) * np.linalg.norm(query))
    return [int(i) for i in np.argsort(-sims, kind="stable")]


def _tenant_points() -> list[Point]:
    """The same vectors for both tenants, so only the filter can keep them apart."""
    vecs, labels = _clustered(5)
    points = []
    for t, tenant in enumerate(TENANTS):
        for i, (v, label) in enumerate(zip(vecs, labels, strict=True)):
            points.append(
                Point(
                    id=t * 1000 + i,
                    dense=v,
                    sparse=SparseVector([int(label), 10 + i % 3], [1.0 + i / 10, 0.5]),
                    payload={
                        "tenant": tenant,
                        "cluster": int(label),
                        "type": ["pdf", "md", "csv"][i % 3],
                        "year": 2018 + i % 6,
                        "date": f"2024-0{1 + i % 6}-15T00:00:00Z",
                    },
                )
            )
    return points


# -- collections ----------------------------------------------------------------------------


def test_create_is_idempotent_and_conflicting_spec_names_both(store, name):
    spec = CollectionSpec(name=name, dense_size=DIM)
    assert store.create_collection(spec) is True
    assert store.create_collection(spec) is False
    assert name in store.list_collections()
    assert store.collection_spec(name) == spec
    with pytest.raises(SpecConflict) as err:
        store.create_collection(CollectionSpec(name=name, dense_size=16))
    assert "8-d" in str(err.value) and "16-d" in str(err.value)
    assert isinstance(err.value, BadRequest)
    with pytest.raises(SpecConflict):
        store.create_collection(CollectionSpec(name=name, dense_size=DIM, sparse=False))


def test_drop_collection(store, name):
    store.create_collection(CollectionSpec(name=name, dense_size=DIM))
    store.upsert(name, [Point(id=1, dense=[1.0] * DIM)])
    assert store.drop_collection(name) is True
    assert store.drop_collection(name) is False
    with pytest.raises(NotFound):
        store.count(name)
    store.create_collection(CollectionSpec(name=name, dense_size=DIM))
    assert store.count(name) == 0


def test_unknown_collection_is_not_found(store, name):
    with pytest.raises(NotFound, match=name):
        store.count(name)
    with pytest.raises(NotFound):
        store.search_dense(name, [1.0] * DIM)
    with pytest.raises(NotFound):
        store.upsert(name, [Point(id=1, dense=[1.0] * DIM)])
    with pytest.raises(NotFound):
        store.collection_spec(name)


def test_bad_collection_name_is_bad_request(store):
    with pytest.raises(BadRequest):
        store.count("../escape")


# -- writes and reads -------------------------------------------------------------------------


def test_upsert_then_count_and_get(store, name):
    store.create_collection(CollectionSpec(name=name, dense_size=DIM))
    uid = str(uuid.uuid4()).upper()  # ids are normalised to lowercase UUIDs
    points = [
        Point(id=1, dense=np.arange(DIM, dtype=np.float32) + 1, payload={"k": "one"}),
        Point(id=uid, dense=[0.5] * DIM, sparse=SparseVector([3, 1], [0.25, 2.0])),
    ]
    store.upsert(name, points)
    assert store.count(name) == 2
    got = store.get(name, [uid, 1, 999], with_vectors=True)
    assert [r.id for r in got] == [uid.lower(), 1]
    assert got[1].payload == {"k": "one"}
    assert got[0].payload == {}
    assert got[0].sparse is not None
    assert dict(zip(got[0].sparse.indices, got[0].sparse.values, strict=True)) == {3: 0.25, 1: 2.0}
    assert got[0].dense is not None and len(got[0].dense) == DIM
    assert store.get(name, [1])[0].dense is None  # vectors only when asked for


def test_reupsert_same_id_replaces(store, name):
    store.create_collection(CollectionSpec(name=name, dense_size=DIM))
    store.upsert(name, [Point(id=7, dense=[1.0] * DIM, payload={"v": 1})])
    store.upsert(name, [Point(id=7, dense=[2.0] * DIM, payload={"v": 2})])
    assert store.count(name) == 1
    assert [r.payload for r in store.get(name, [7])] == [{"v": 2}]


def test_delete_by_ids_and_by_filter(store, name):
    store.create_collection(CollectionSpec(name=name, dense_size=DIM))
    store.upsert(name, _tenant_points())
    total = store.count(name)
    store.delete(name, [0, 1, 1000])
    assert store.count(name) == total - 3
    assert store.get(name, [0, 1, 1000]) == []
    store.delete_by_filter(name, Filter(equals={"tenant": "b"}))
    assert store.count(name, Filter(equals={"tenant": "b"})) == 0
    assert store.count(name) == total // 2 - 2


def test_scroll_pages_through_everything_once(store, name):
    store.create_collection(CollectionSpec(name=name, dense_size=DIM))
    points = _tenant_points()
    store.upsert(name, points)
    seen: list = []
    offset = None
    while True:
        page, offset = store.scroll(name, Filter(equals={"tenant": "a"}), limit=7, offset=offset)
        seen.extend(r.id for r in page)
        assert all(r.payload["tenant"] == "a" for r in page)
        if offset is None:
            break
    assert sorted(seen) == sorted(p.id for p in points if p.payload["tenant"] == "a")


# -- filters ----------------------------------------------------------------------------------


def test_filters_equality_any_of_and_ranges(store, name):
    store.create_collection(CollectionSpec(name=name, dense_size=DIM))
    points = _tenant_points()
    store.upsert(name, points)

    def expected(pred) -> int:
        return sum(1 for p in points if pred(p.payload))

    assert store.count(name, Filter(equals={"tenant": "a", "cluster": 2})) == expected(
        lambda p: p["tenant"] == "a" and p["cluster"] == 2
    )
    assert store.count(name, Filter(any_of={"type": ["pdf", "csv"]})) == expected(
        lambda p: p["type"] in ("pdf", "csv")
    )
    assert store.count(name, Filter(any_of={"cluster": [0, 3]})) == expected(
        lambda p: p["cluster"] in (0, 3)
    )
    assert store.count(name, Filter(ranges={"year": Range(gte=2020, lt=2022)})) == expected(
        lambda p: 2020 <= p["year"] < 2022
    )
    march = Range(gte="2024-03-01T00:00:00Z", lte=np.datetime64("2024-04-30").item())
    assert store.count(name, Filter(ranges={"date": march})) == expected(
        lambda p: p["date"][5:7] in ("03", "04")
    )
    combined = Filter(
        equals={"tenant": "b"}, any_of={"type": ["md"]}, ranges={"year": Range(gt=2019)}
    )
    assert store.count(name, combined) == expected(
        lambda p: p["tenant"] == "b" and p["type"] == "md" and p["year"] > 2019
    )


def test_tenant_isolation_in_every_search(store, name):
    store.create_collection(CollectionSpec(name=name, dense_size=DIM))
    store.upsert(name, _tenant_points())
    query = np.eye(DIM)[1]
    sparse = SparseVector([1, 10], [1.0, 1.0])
    for tenant in TENANTS:
        only = Filter(equals={"tenant": tenant})
        results = {
            "dense": store.search_dense(name, query, limit=50, filter=only),
            "sparse": store.search_sparse(name, sparse, limit=50, filter=only),
            "hybrid": store.search_hybrid(name, query, sparse, limit=50, filter=only),
        }
        for kind, hits in results.items():
            assert hits, kind
            assert {h.payload["tenant"] for h in hits} == {tenant}, kind
    # And without the filter both tenants do come back: the filter is what isolates them.
    assert {h.payload["tenant"] for h in store.search_dense(name, query, limit=50)} == set(TENANTS)


# -- search -----------------------------------------------------------------------------------


def test_dense_search_ranks_nearest_first(store, name):
    store.create_collection(CollectionSpec(name=name, dense_size=DIM))
    vecs, labels = _clustered(10)
    store.upsert(name, [Point(id=i, dense=v) for i, v in enumerate(vecs)])
    query = np.eye(DIM)[2] + 0.05 * np.eye(DIM)[5]
    hits = store.search_dense(name, query, limit=10)
    assert [h.id for h in hits] == _cosine_order(vecs, query)[:10]
    assert all(labels[h.id] == 2 for h in hits)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    best = vecs[hits[0].id]
    assert hits[0].score == pytest.approx(
        float(best @ query / (np.linalg.norm(best) * np.linalg.norm(query))), abs=1e-5
    )


def test_sparse_search_ranks_by_dot_product(store, name):
    store.create_collection(CollectionSpec(name=name, dense_size=DIM, sparse_idf=False))
    sparse = {
        1: SparseVector([1, 2], [1.0, 3.0]),
        2: SparseVector([2, 5], [0.5, 4.0]),
        3: SparseVector([1, 5, 9], [2.5, 0.3, 1.0]),
        4: SparseVector([7], [9.0]),  # shares nothing with the query
    }
    store.upsert(name, [Point(id=i, dense=[1.0] * DIM, sparse=s) for i, s in sparse.items()])
    query = SparseVector([1, 2, 5], [1.0, 0.5, 1.0])
    hits = store.search_sparse(name, query, limit=10)
    expected = sorted(
        ((query.dot(s), i) for i, s in sparse.items() if query.dot(s) > 0), reverse=True
    )
    assert [h.id for h in hits] == [i for _, i in expected]
    assert [h.score for h in hits] == pytest.approx([score for score, _ in expected], abs=1e-5)


def test_idf_lifts_a_rare_term_over_a_common_one(store, name):
    # Nine points share term 1; only point 10 has term 2. Without IDF a larger weight on the
    # common term wins; with IDF (the default) the rare term does, in both stores alike.
    for idf, coll in ((False, name), (True, name + "-idf")):
        store.create_collection(CollectionSpec(name=coll, dense_size=2, sparse_idf=idf))
        assert store.collection_spec(coll).sparse_idf is idf
        points = [
            Point(id=i, dense=[1.0, 0.0], sparse=SparseVector([1], [1.0])) for i in range(1, 10)
        ]
        points.append(Point(id=10, dense=[1.0, 0.0], sparse=SparseVector([2], [0.6])))
        points.append(Point(id=11, dense=[1.0, 0.0], sparse=SparseVector([1], [1.5])))
        store.upsert(coll, points)
        top = store.search_sparse(coll, SparseVector([1, 2], [1.0, 1.0]), limit=1)[0].id
        assert top == (10 if idf else 11)


def test_a_spec_without_sparse_has_no_idf():
    spec = CollectionSpec(name="x", dense_size=4, sparse=False)
    assert spec.sparse_idf is False
    assert spec == CollectionSpec(name="x", dense_size=4, sparse=False, sparse_idf=False)


def test_hybrid_rrf_on_a_hand_computed_example(store, name):
    store.create_collection(CollectionSpec(name=name, dense_size=2))
    a, b, c = 1, 2, 3
    store.upsert(
        name,
        [
            Point(id=a, dense=[1.0, 0.0], sparse=SparseVector([7], [1.0])),
            Point(id=b, dense=[0.8, 0.6], sparse=SparseVector([8], [1.0])),
            Point(id=c, dense=[0.0, 1.0], sparse=SparseVector([7], [2.0])),
        ],
    )
    dense_q, sparse_q = [1.0, 0.0], SparseVector([7], [1.0])
    dense_ids = [h.id for h in store.search_dense(name, dense_q)]
    sparse_ids = [h.id for h in store.search_sparse(name, sparse_q)]
    assert dense_ids == [a, b, c] and sparse_ids == [c, a]
    hits = store.search_hybrid(name, dense_q, sparse_q, limit=3)
    # A: 1/60 + 1/61, C: 1/62 + 1/60, B: 1/61 (0-based ranks, k=60).
    assert [h.id for h in hits] == [a, c, b]
    assert [h.score for h in hits] == pytest.approx(
        [1 / 60 + 1 / 61, 1 / 62 + 1 / 60, 1 / 61], rel=1e-5
    )
    assert [(h.id, pytest.approx(h.score, rel=1e-5)) for h in hits] == rrf_fuse(
        [dense_ids, sparse_ids]
    )
    assert [h.id for h in store.search_hybrid(name, dense_q, sparse_q, limit=1)] == [a]


def test_hybrid_ties_break_by_id(store, name):
    store.create_collection(CollectionSpec(name=name, dense_size=2))
    store.upsert(
        name,
        [
            Point(id=5, dense=[0.6, 0.8], sparse=SparseVector([7], [2.0])),
            Point(id=4, dense=[1.0, 0.0], sparse=SparseVector([7], [1.0])),
        ],
    )
    hits = store.search_hybrid(name, [1.0, 0.0], SparseVector([7], [1.0]), limit=2)
    assert hits[0].score == hits[1].score == pytest.approx(1 / 60 + 1 / 61, rel=1e-5)
    assert [h.id for h in hits] == [4, 5]
    assert [h.id for h in store.search_hybrid(name, [1.0, 0.0], SparseVector([7], [1.0]), 1)] == [4]


# -- bad input --------------------------------------------------------------------------------


def test_wrong_dimension_is_bad_request_naming_expected_and_got(store, name):
    store.create_collection(CollectionSpec(name=name, dense_size=DIM))
    with pytest.raises(BadRequest, match=r"3 dimensions, expected 8"):
        store.upsert(name, [Point(id=1, dense=[1.0, 2.0, 3.0])])
    with pytest.raises(BadRequest, match=r"3 dimensions, expected 8"):
        store.search_dense(name, [1.0, 2.0, 3.0])
    with pytest.raises(BadRequest, match=r"3 dimensions, expected 8"):
        store.search_hybrid(name, [1.0, 2.0, 3.0], SparseVector([1], [1.0]))
    assert store.count(name) == 0


def test_sparse_on_dense_only_collection_is_bad_request(store, name):
    store.create_collection(CollectionSpec(name=name, dense_size=DIM, sparse=False))
    with pytest.raises(BadRequest, match="no sparse"):
        store.upsert(name, [Point(id=1, dense=[1.0] * DIM, sparse=SparseVector([1], [1.0]))])
    with pytest.raises(BadRequest, match="no sparse"):
        store.search_sparse(name, SparseVector([1], [1.0]))
    store.upsert(name, [Point(id=1, dense=[1.0] * DIM)])
    assert [h.id for h in store.search_dense(name, [1.0] * DIM)] == [1]


def test_plain_types_reject_bad_values():
    with pytest.raises(ValueError):
        Point(id=-1, dense=[1.0])
    with pytest.raises(ValueError):
        Point(id="not-a-uuid", dense=[1.0])
    with pytest.raises(ValueError):
        Point(id=1, dense=[math.nan])
    with pytest.raises(ValueError):
        SparseVector([1, 1], [1.0, 2.0])
    with pytest.raises(ValueError):
        Filter(equals={"score": 0.5})
    with pytest.raises(ValueError):
        Filter(any_of={"type": []})
    with pytest.raises(ValueError):
        Range(gte=1, lt="2024-01-01")
    with pytest.raises(ValueError):
        CollectionSpec(name="a/b", dense_size=4)


# -- embedded only ----------------------------------------------------------------------------


def test_edge_persists_across_close_and_reopen(tmp_path):
    first = QdrantEdgeStore(tmp_path)
    first.create_collection(CollectionSpec(name="kb", dense_size=DIM))
    points = _tenant_points()
    first.upsert("kb", points)
    first.close()

    second = QdrantEdgeStore(tmp_path)
    assert second.list_collections() == ["kb"]
    assert second.count("kb") == len(points)
    got = second.get("kb", [points[3].id], with_vectors=True)[0]
    assert got.payload == points[3].payload
    unit = np.asarray(points[3].dense) / np.linalg.norm(points[3].dense)
    assert got.dense == pytest.approx(unit.tolist(), abs=1e-6)  # cosine stores unit vectors
    assert second.search_dense("kb", points[3].dense, limit=1)[0].id in (points[3].id, 1003)
    second.close()


def test_edge_second_opener_gets_shard_locked(tmp_path):
    owner = QdrantEdgeStore(tmp_path)
    owner.create_collection(CollectionSpec(name="kb", dense_size=DIM))
    intruder = QdrantEdgeStore(tmp_path)
    with pytest.raises(ShardLocked, match="one opener per shard"):
        intruder.count("kb")
    owner.close()
    assert intruder.count("kb") == 0  # free once the owner has closed it
    intruder.close()


def test_edge_optimize_is_explicit_and_search_still_works(tmp_path):
    store = QdrantEdgeStore(tmp_path)
    store.create_collection(CollectionSpec(name="kb", dense_size=DIM))
    vecs, _ = _clustered(10)
    store.upsert("kb", [Point(id=i, dense=v) for i, v in enumerate(vecs)])
    assert isinstance(store.optimize("kb"), bool)
    query = np.eye(DIM)[0]
    assert store.search_dense("kb", query, limit=1)[0].id == _cosine_order(vecs, query)[0]
    store.close()


def test_edge_drop_refuses_a_shard_another_opener_holds(tmp_path):
    owner = QdrantEdgeStore(tmp_path)
    owner.create_collection(CollectionSpec(name="kb", dense_size=DIM))
    owner.upsert("kb", [Point(id=1, dense=[1.0] * DIM)])
    with pytest.raises(ShardLocked):
        QdrantEdgeStore(tmp_path).drop_collection("kb")
    assert owner.count("kb") == 1
    owner.close()


def test_edge_collections_index_the_filtered_payload_fields(tmp_path):
    from qingliang.knowledge.stores.base import INDEXED_FIELDS

    store = QdrantEdgeStore(tmp_path / "q")
    store.create_collection(CollectionSpec(name="c", dense_size=2))
    store.upsert(
        "c",
        [Point(id=i, dense=[1.0, i / 10], payload={"tenant": f"t{i % 2}"}) for i in range(10)],
    )
    assert set(INDEXED_FIELDS) <= set(store._shard("c").info().payload_schema)
    hits = store.search_dense("c", [1.0, 0.5], limit=10, filter=Filter(equals={"tenant": "t1"}))
    assert sorted(h.id for h in hits) == [1, 3, 5, 7, 9]
    store.close()
    reopened = QdrantEdgeStore(tmp_path / "q")  # an index survives a reopen, none is duplicated
    assert set(INDEXED_FIELDS) <= set(reopened._shard("c").info().payload_schema)
    reopened.close()
