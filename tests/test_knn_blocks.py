"""NearestNeighbors on rows streamed from disk (memory maps, ShardedArray): tiny blocks force many
block pairs and blocks smaller than k; results must equal the in-memory search bit for bit and
the exact brute force of conftest (ties to the lower index)."""

from __future__ import annotations

import numpy as np
import pytest

import embedcluster as ec
import embedcluster.cluster.neighbors as nbmod
from embedcluster import _knn_blocks
from embedcluster.data import ShardedArray

from conftest import brute_knn, brute_within

N, D, K = 160, 12, 7
ENGINE = {"euclidean": "l2", "sqeuclidean": "l2", "cosine": "cosine", "inner_product": "ip"}


def _data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D)).astype(np.float32)
    X[40:46] = X[3]           # exact duplicates: ties at every precision
    X[90:93] = X[60] * 2.0    # same direction: cosine ties
    return X


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    X = _data()
    d = tmp_path_factory.mktemp("knnblocks")
    np.save(d / "x32.npy", X)
    np.save(d / "x64.npy", X.astype(np.float64))
    cuts = [0, 23, 24, 101, N]
    paths = []
    for t, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        p = d / f"s{t}.npy"
        np.save(p, X[a:b])
        paths.append(p)
    return X, d, paths


def _sources(files):
    X, d, paths = files
    return {
        "memmap64": np.load(d / "x64.npy", mmap_mode="r"),
        "sharded": ShardedArray([np.load(p, mmap_mode="r") for p in paths]),
        "memmap32": np.load(d / "x32.npy", mmap_mode="r"),  # streamed when SINGLE_CALL_FACTOR says so
    }


@pytest.fixture(params=[37, 5], ids=["blocks37", "blocks5"])
def block_rows(request, monkeypatch):
    """Blocks of 37 rows (several, uneven last) or 5 rows (fewer than k); float32 memory maps
    streamed too. The streamed estimators run one thread: many tiny engine calls."""
    monkeypatch.setattr(nbmod, "STREAM_BLOCK_BYTES", 4 * D * request.param)
    monkeypatch.setattr(nbmod, "SINGLE_CALL_FACTOR", 1e30)
    return request.param


def _same(a, b):
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(np.asarray(a[0]).view(np.int32), np.asarray(b[0]).view(np.int32))


def _check_oracle(dist, idx, db, q, metric, exclude_self):
    ref_v, ref_i = brute_knn(db, q, idx.shape[1], ENGINE[metric], exclude_self=exclude_self)
    np.testing.assert_array_equal(idx, ref_i)
    want = -ref_v if metric == "inner_product" else ref_v
    if metric == "euclidean":
        want = np.sqrt(np.maximum(want, 0.0))
    np.testing.assert_allclose(dist, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", list(ENGINE))
@pytest.mark.parametrize("source", ["memmap64", "sharded", "memmap32"])
def test_streamed_kneighbors_equal_in_memory_and_brute_force(files, block_rows, metric, source):
    X = files[0]
    src = _sources(files)[source]
    ref = ec.NearestNeighbors(n_neighbors=K, metric=metric).fit(X)
    nn = ec.NearestNeighbors(n_neighbors=K, metric=metric, n_threads=1).fit(src)
    assert nn._streamed and nn.n_samples_fit_ == N and nn.n_features_in_ == D
    got = nn.kneighbors()  # the self-join, each row left out
    _same(got, ref.kneighbors())
    _check_oracle(*got, X, X, metric, exclude_self=True)
    Q = X[::5] + np.float32(0.25)
    got = nn.kneighbors(Q, n_neighbors=K + 2)
    _same(got, ref.kneighbors(Q, n_neighbors=K + 2))
    _check_oracle(*got, X, Q, metric, exclude_self=False)
    # streamed queries against an in-memory fit, and against the streamed fit
    _same(ec.NearestNeighbors(n_neighbors=K, metric=metric, n_threads=1).fit(X).kneighbors(src),
          ref.kneighbors(X))
    _same(nn.kneighbors(src, n_neighbors=2), ref.kneighbors(X, n_neighbors=2))


@pytest.mark.parametrize("mode", ["connectivity", "distance"])
def test_streamed_kneighbors_graph(files, block_rows, mode):
    X = files[0]
    src = _sources(files)["sharded"]
    ref = ec.NearestNeighbors(n_neighbors=K).fit(X).kneighbors_graph(mode=mode)
    got = ec.NearestNeighbors(n_neighbors=K, n_threads=1).fit(src).kneighbors_graph(mode=mode)
    for attr in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(got, attr), getattr(ref, attr))
    assert got.shape == ref.shape == (N, N)


@pytest.mark.parametrize("metric,radius", [("euclidean", 4.2), ("cosine", 0.45)])
def test_streamed_radius_neighbors(files, block_rows, metric, radius):
    X = files[0]
    src = _sources(files)["memmap64"]
    ref = ec.NearestNeighbors(radius=radius, metric=metric).fit(X)
    nn = ec.NearestNeighbors(radius=radius, metric=metric, n_threads=1).fit(src)
    Q = X[::4] + np.float32(0.1)
    limit = radius * radius if metric == "euclidean" else radius
    for queries, self_join in ((None, True), (Q, False), (src, False)):
        gd, gi = nn.radius_neighbors(queries)
        rd, ri = ref.radius_neighbors(queries if queries is not src else X)
        within = brute_within(X, X if queries is None or queries is src else Q, limit, ENGINE[metric])
        if self_join:
            np.fill_diagonal(within, False)
        for q in range(len(gi)):
            np.testing.assert_array_equal(gi[q], ri[q])
            np.testing.assert_array_equal(gd[q].view(np.int32), rd[q].view(np.int32))
            np.testing.assert_array_equal(gi[q], np.flatnonzero(within[q]))
    assert sum(len(i) for i in gi) > N  # the radius finds neighbours


def test_small_float32_memmap_is_searched_in_place(files):
    X, d, _ = files
    m = np.load(d / "x32.npy", mmap_mode="r")
    assert nbmod.stream_source(m, None) is None
    assert nbmod.stream_source(m, 1000) is m  # twice its size beyond memory_limit: streamed
    assert nbmod.stream_source(np.load(d / "x64.npy", mmap_mode="r"), None) is not None
    nn = ec.NearestNeighbors(n_neighbors=K).fit(m)
    assert not nn._streamed
    _same(nn.kneighbors(), ec.NearestNeighbors(n_neighbors=K).fit(X).kneighbors())


def test_block_rows_follow_the_memory_budget():
    assert nbmod.stream_block_rows(128, None) <= nbmod.STREAM_BLOCK_BYTES // 512
    assert nbmod.stream_block_rows(128, 16 * 512 * 10) == 10
    assert nbmod.stream_block_rows(10**9, 1) == 1


def test_streamed_input_errors(files, tmp_path, monkeypatch):
    X, d, paths = files
    bad = X.astype(np.float64)
    bad[130, 4] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    monkeypatch.setattr(nbmod, "STREAM_BLOCK_BYTES", 4 * D * 50)
    with pytest.raises(ValueError, match=r"contains NaN or infinity \(first at row 130, column 4\)"):
        ec.NearestNeighbors().fit(np.load(tmp_path / "nan.npy", mmap_mode="r"))
    zero = X.astype(np.float64)
    zero[77] = 0.0
    np.save(tmp_path / "zero.npy", zero)
    with pytest.raises(ValueError, match="zero-norm rows"):
        ec.NearestNeighbors(metric="cosine").fit(np.load(tmp_path / "zero.npy", mmap_mode="r"))
    src = ShardedArray([np.load(p, mmap_mode="r") for p in paths])
    with pytest.raises(ValueError, match="backend='faiss' needs X as one in-memory array"):
        ec.NearestNeighbors(backend="faiss").fit(src)
    nn = ec.NearestNeighbors(n_neighbors=K).fit(src)
    with pytest.raises(ValueError, match=f"X has 3 features, but NearestNeighbors is expecting {D}"):
        nn.kneighbors(ShardedArray([np.zeros((4, 3))]))
    with pytest.raises(ValueError, match="Expected n_neighbors <= n_samples_fit"):
        nn.kneighbors(n_neighbors=N)
    with pytest.raises(ValueError, match=r"contains NaN or infinity \(first at row 130, column 4\)"):
        nn.kneighbors(np.load(tmp_path / "nan.npy", mmap_mode="r"))


def test_merge_helpers_pad_and_order():
    vals = np.array([[1.0, 2.0]]), np.array([[5, 9]])
    other = np.array([[1.0, np.inf]]), np.array([[2, -1]])
    v, i = _knn_blocks.merge_topk([vals, other], 3)
    np.testing.assert_array_equal(i, [[2, 5, 9]])
    np.testing.assert_array_equal(v, [[1.0, 1.0, 2.0]])
    fixed_order = ((1 * 10 + 2) * 10 + (3 * 10 + 4)) * 10 + 5  # adjacent pairs, level by level
    assert _knn_blocks.tree_merge([1, 2, 3, 4, 5], lambda a, b: a * 10 + b) == fixed_order
    pv, pi = _knn_blocks.pair_topk(np.ones((2, 3), np.float32), np.ones((1, 3), np.float32), 4, 10, False,
                                   _knn_blocks.EngineArgs("l2"))
    np.testing.assert_array_equal(pi, [[10, 11, -1, -1]])
    assert np.isinf(pv[0, 2:]).all()
