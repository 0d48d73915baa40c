"""k-means over chunks (embedcluster._chunked and the engine's kmeans_chunk_* calls) against the
single-array fit: the same centres, labels, inertia and iteration count, bit for bit, for any
chunking. The oracle for the fit itself is the engine's kmeans_fit, which test_kmeans checks
against scikit-learn and brute force; here the claim under test is chunking-invariance."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from embedcluster import _core
from embedcluster._chunked import FitParams, LocalChunks, lloyd_over_chunks


def blobs(n=6000, d=16, centres=12, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, d)).astype(np.float32) * 4
    x = means[rng.integers(0, centres, n)] + rng.normal(size=(n, d)).astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


def assert_same_fit(r, ref):
    np.testing.assert_array_equal(r.centers, ref.centers)
    np.testing.assert_array_equal(r.labels, ref.labels)
    assert r.n_iter == ref.n_iter
    assert r.inertia == ref.inertia
    assert r.n_empty_repaired == ref.n_empty_repaired


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("k", [3, 24])
@pytest.mark.parametrize("tol", [0.0, 1e-4])
@pytest.mark.parametrize("block", [6000, 1777, 512, 1])
def test_any_chunking_gives_the_single_array_fit(metric, k, tol, block):
    X = blobs()
    init = X[np.random.default_rng(k).choice(len(X), k, replace=False)]
    ref = _core.kmeans_fit(X, k, init=init, tol=tol, max_iter=40, metric=metric)
    if block == 1:
        X, block = X[:300], 1  # one row per chunk: the extreme chunking, on fewer rows
        ref = _core.kmeans_fit(X, k, init=init, tol=tol, max_iter=40, metric=metric)
    r = lloyd_over_chunks(LocalChunks(X, block), init, FitParams(k, metric=metric, max_iter=40, tol=tol))
    assert_same_fit(r, ref)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("block", [4000, 1777, 300])
def test_many_centres_per_cluster_over_chunks(metric, block):
    """k=200 over 30 clusters: each chunk's pruned passes resolve most rows among their own
    centre's few close neighbours (the local stage), with neighbour lists built per chunk pass."""
    X = blobs(4000, 16, centres=30, seed=6)
    init = X[np.random.default_rng(1).choice(len(X), 200, replace=False)]
    ref = _core.kmeans_fit(X, 200, init=init, tol=0.0, max_iter=15, metric=metric)
    runner = LocalChunks(X, block)
    r = lloyd_over_chunks(runner, init, FitParams(200, metric=metric, max_iter=15, tol=0.0))
    assert_same_fit(r, ref)
    assert runner.rows_computed() < 0.45 * len(X) * runner.passes


@pytest.mark.parametrize("prune", [True, False])
def test_weights_and_pruning(prune):
    X = blobs(4000, 8, seed=1)
    w = np.random.default_rng(2).uniform(0, 3, len(X)).astype(np.float32)
    w[::7] = 0.0
    init = X[:20].copy()
    ref = _core.kmeans_fit(X, 20, init=init, sample_weight=w, max_iter=30)
    r = lloyd_over_chunks(LocalChunks(X, 999, sample_weight=w), init,
                          FitParams(20, max_iter=30, prune=prune, weighted=True))
    assert_same_fit(r, ref)


def test_empty_clusters_are_repaired_as_the_single_array_fit_does():
    X = blobs(3000, 8, seed=3)
    init = X[:6].copy()
    init[2] += 1e3  # far from every row: empty after the first pass
    init[4] -= 1e3
    ref = _core.kmeans_fit(X, 6, init=init, max_iter=20)
    assert ref.n_empty_repaired >= 2
    for block in (3000, 701):
        assert_same_fit(lloyd_over_chunks(LocalChunks(X, block), init, FitParams(6, max_iter=20)), ref)


def test_chunks_stream_from_a_memory_map(tmp_path):
    X = blobs(5000, 12, seed=4).astype(np.float64)  # another dtype: converted block by block
    path = tmp_path / "x.npy"
    np.save(path, X)
    mm = np.load(path, mmap_mode="r")
    init = X[:10].astype(np.float32)
    ref = _core.kmeans_fit(X.astype(np.float32), 10, init=init, max_iter=25)
    assert_same_fit(lloyd_over_chunks(LocalChunks(mm, 1234), init, FitParams(10, max_iter=25)), ref)


def test_chunk_state_pickles_and_copies():
    X = blobs(2000, 8)
    st = _core.KMeansChunkState()
    init = X[:16].copy()
    stats = _core.kmeans_chunk_stats(X)
    q, ws = _core.kmeans_fixed_scales(stats.n, stats.colmax, stats.wmax, False)
    _core.kmeans_chunk_pass(st, init, X, q, ws)
    for other in (pickle.loads(pickle.dumps(st)), st.copy()):
        np.testing.assert_array_equal(other.labels, st.labels)
        np.testing.assert_array_equal(other.sums, st.sums)
        # the copy goes on exactly as the original would
        nxt, _, _ = _core.kmeans_update_centres(init, st.sums, q, ws)
        a, b = st.copy(), other
        assert _core.kmeans_chunk_pass(a, nxt, X, q, ws) == _core.kmeans_chunk_pass(b, nxt, X, q, ws)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.sums, b.sums)


def test_chunk_state_refuses_another_chunk():
    X = blobs(1000, 8)
    st = _core.KMeansChunkState()
    stats = _core.kmeans_chunk_stats(X)
    q, ws = _core.kmeans_fixed_scales(stats.n, stats.colmax, stats.wmax, False)
    _core.kmeans_chunk_pass(st, X[:4].copy(), X, q, ws)
    with pytest.raises(ValueError, match="belongs to another chunk"):
        _core.kmeans_chunk_pass(st, X[:4].copy(), X[:500], q, ws)
    with pytest.raises(ValueError, match="corrupt|inconsistent|unknown"):
        pickle.loads(pickle.dumps(st).replace(b"\x01", b"\x02", 1))


def test_bad_rows_are_named_by_their_global_row():
    X = blobs(1000, 8)
    X[700, 3] = np.nan
    with pytest.raises(ValueError, match=r"row 200.*counted from 500"):
        _core.kmeans_chunk_stats(X[500:], row_offset=500)
    with pytest.raises(ValueError, match="NaN"):
        lloyd_over_chunks(LocalChunks(X, 300), X[:3].copy(), FitParams(3))


def test_too_few_rows_and_zero_weights():
    X = blobs(10, 4)
    with pytest.raises(ValueError, match="n_samples=10 should be >= n_clusters=11"):
        lloyd_over_chunks(LocalChunks(X, 4), np.zeros((11, 4), np.float32), FitParams(11))
    with pytest.raises(ValueError, match="sum to zero"):
        lloyd_over_chunks(LocalChunks(X, 4, sample_weight=np.zeros(10, np.float32)), X[:2].copy(),
                          FitParams(2, weighted=True))


# ---- k-means|| over chunks: the oracle is the single-array seeding (_core.kmeans_init / kmeans_fit).

from embedcluster._chunked import seed_over_chunks  # noqa: E402


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("block", [6000, 1777, 4096, 97])
def test_kmeans_parallel_seeding_over_any_chunking(metric, weighted, block):
    X = blobs()
    w = np.random.default_rng(5).uniform(0, 3, len(X)).astype(np.float32) if weighted else None
    if w is not None:
        w[::11] = 0.0
    for k, seed in ((7, 0), (30, 12345)):
        ref = _core.kmeans_init(X, k, metric=metric, init="k-means||", seed=seed, sample_weight=w)
        got = seed_over_chunks(LocalChunks(X, block, sample_weight=w), seed,
                               FitParams(k, metric=metric, weighted=weighted))
        np.testing.assert_array_equal(got, ref)


def test_kmeans_parallel_seeding_with_tiny_and_uneven_chunks():
    X = blobs(400, 6, seed=7)

    class Uneven(LocalChunks):  # chunks of 1, 2, 3, ... rows
        def __init__(self, X_):
            super().__init__(X_, 1)
            cuts = np.cumsum(np.arange(1, 40))
            cuts = [0] + [int(c) for c in cuts if c < len(X_)] + [len(X_)]
            self.bounds = list(zip(cuts[:-1], cuts[1:]))
            self.reset()

    for runner in (LocalChunks(X, 1), Uneven(X)):
        ref = _core.kmeans_init(X, 5, init="k-means||", seed=3)
        np.testing.assert_array_equal(seed_over_chunks(runner, 3, FitParams(5)), ref)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_kmeans_parallel_fit_over_chunks_is_the_single_array_fit(metric):
    X = blobs(5000, 12, seed=8)
    ref = _core.kmeans_fit(X, 16, init="k-means||", seed=99, max_iter=40, metric=metric)
    runner = LocalChunks(X, 1300)
    p = FitParams(16, metric=metric, max_iter=40)
    assert_same_fit(lloyd_over_chunks(runner, seed_over_chunks(runner, 99, p), p), ref)


def test_kmeans_parallel_over_chunks_refuses_too_few_candidates():
    X = blobs(20, 4)  # as many clusters as rows: at most n_clusters candidates
    with pytest.raises(ValueError, match="pass init as an array"):
        seed_over_chunks(LocalChunks(X, 7), 0, FitParams(20))
    # the single-array seeding falls back to k-means++ here
    assert _core.kmeans_init(X, 20, init="k-means||", seed=0).shape == (20, 4)


def test_seed_state_pickles():
    X = blobs(500, 4)
    st = _core.KMeansSeedState()
    _core.kmeans_seed_nearer(st, X[:2].copy(), X, 1.0)
    other = pickle.loads(pickle.dumps(st))
    np.testing.assert_array_equal(other.closest, st.closest)
    a = _core.kmeans_seed_sample(st, X, 10.0, 3, 7, 0)
    np.testing.assert_array_equal(_core.kmeans_seed_sample(other, X, 10.0, 3, 7, 0), a)


def test_kmeans_estimator_streams_shards_and_foreign_memory_maps(tmp_path):
    from embedcluster import KMeans
    from embedcluster.data import ShardedArray

    X = blobs(7000, 12, seed=6)
    init = X[:9].copy()
    ref = KMeans(9, init=init, max_iter=30).fit(X)
    parts = []
    for i, (a, b) in enumerate([(0, 2500), (2500, 2501), (2501, 7000)]):
        np.save(tmp_path / f"s{i}.npy", X[a:b])
        parts.append(np.load(tmp_path / f"s{i}.npy", mmap_mode="r"))
    np.save(tmp_path / "f64.npy", X.astype(np.float64))
    for source in (ShardedArray(parts), np.load(tmp_path / "f64.npy", mmap_mode="r")):
        km = KMeans(9, init=init, max_iter=30).fit(source)
        np.testing.assert_array_equal(km.cluster_centers_, ref.cluster_centers_)
        np.testing.assert_array_equal(km.labels_, ref.labels_)
        assert km.inertia_ == ref.inertia_ and km.n_iter_ == ref.n_iter_
    with pytest.raises(ValueError, match="use init='k-means||'"):
        KMeans(9, init="k-means++").fit(ShardedArray(parts))
    for init_name in ("k-means||", "auto"):  # "auto" streams with k-means||
        ref = KMeans(9, init="k-means||", n_init=2, random_state=5, max_iter=30).fit(X)
        km = KMeans(9, init=init_name, n_init=2, random_state=5, max_iter=30).fit(ShardedArray(parts))
        np.testing.assert_array_equal(km.cluster_centers_, ref.cluster_centers_)
        np.testing.assert_array_equal(km.labels_, ref.labels_)
        assert km.inertia_ == ref.inertia_
