"""The CUDA engine (embedcluster.cuda) against the CPU engine and numpy brute force.

Every case runs twice: on the host model of the GPU engine (``engine="model"``: the same
algorithms, bands, re-checks, lane merges, fixed point and union-find, with TF32-rounded tile
products, compiled into the CPU engine; always runs) and on the CUDA device (``engine="cuda"``,
marked ``cuda``; skipped with the reason where no usable GPU is present). The data are made of
near-ties and duplicates, where a tile's rounding would flip decisions without the exact
re-check. Oracles: the CPU engine (identity), numpy fp64 brute force and scikit-learn.
"""

from __future__ import annotations

import numpy as np
import pytest

from embedcluster import _core, cuda

_ok, _why = cuda.available()
ENGINES = [
    "model",
    pytest.param("cuda", marks=[pytest.mark.cuda,
                                pytest.mark.skipif(not _ok, reason=f"CUDA engine unavailable: {_why}")]),
]


def _size(engine: str, model_n: int, gpu_n: int) -> int:
    return model_n if engine == "model" else gpu_n


def _ties(n: int, d: int, seed: int) -> np.ndarray:
    """Rows on a coarse integer grid (many exact ties), some duplicated, a few scaled up."""
    rng = np.random.default_rng(seed)
    X = rng.integers(-3, 4, size=(n, d)).astype(np.float32)
    X[n // 2: n // 2 + n // 8] = X[:n // 8]  # duplicates
    X[-5:] *= np.float32(1e3)
    return X


def _blobs(n: int, d: int, k: int, seed: int, noise: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)).astype(np.float32)
    X = centres[rng.integers(0, k, n)] + noise * rng.normal(size=(n, d)).astype(np.float32)
    return np.ascontiguousarray(X, dtype=np.float32)


def _brute(db: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    a, b = q.astype(np.float64), db.astype(np.float64)
    if metric == "l2":
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    dots = a @ b.T
    if metric == "ip":
        return -dots
    return 1.0 - dots / (np.linalg.norm(a, axis=1)[:, None] * np.linalg.norm(b, axis=1)[None, :])


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("data", ["ties", "blobs"])
def test_knn_identical_to_cpu_engine(engine, metric, data):
    n, d = _size(engine, 300, 3000), 13
    X = _ties(n, d, 1) if data == "ties" else _blobs(n, d, 7, 2)
    if metric == "cosine":
        X[np.linalg.norm(X, axis=1) == 0] = 1.0
    Q = X[::3].copy()
    k = 9
    for queries, self_join in ((Q, False), (None, True)):
        dist, idx = cuda.kneighbors(X, queries, k, metric, engine=engine)
        ref_d, ref_i = _core.knn_search(X, X if self_join else Q, k, metric, exclude_self=self_join)
        np.testing.assert_array_equal(idx, ref_i)
        np.testing.assert_array_equal(dist, ref_d)
    # Independent oracle: the k-th exact value of numpy's fp64 brute force (ties make indices
    # ambiguous only among equal values, which the identity above pins to the lower index).
    exact = _brute(X, Q, metric)
    kth = np.sort(exact, axis=1)[:, k - 1]
    got = _brute(X, Q, metric)[np.arange(len(Q))[:, None], cuda.kneighbors(X, Q, k, metric, engine=engine)[1]]
    np.testing.assert_allclose(got[:, -1], kth, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("engine", ENGINES)
def test_knn_rejects_what_it_cannot_do(engine):
    X = _blobs(50, 4, 3, 0)
    with pytest.raises(ValueError, match="k <="):
        cuda.kneighbors(X, None, 200, "l2", engine=engine)
    bad = X.copy()
    bad[7, 2] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        cuda.kneighbors(bad, None, 3, "l2", engine=engine)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("weighted", [False, True])
def test_kmeans_identical_to_cpu_engine_from_the_same_init(engine, metric, weighted):
    n, d, k = _size(engine, 600, 20000), 9, _size(engine, 12, 64)
    X = _blobs(n, d, k, 3, noise=0.4)
    X[n // 3: n // 3 + 40] = X[:40]  # duplicates: exact ties between centres started on them
    rng = np.random.default_rng(4)
    init = X[rng.choice(n, k, replace=False)].copy()
    w = rng.uniform(0.1, 2.0, n).astype(np.float32) if weighted else None
    ref = _core.kmeans_fit(X, k, max_iter=25, tol=1e-6, metric=metric, init=init, sample_weight=w)
    got = cuda.kmeans(X, k, init, max_iter=25, tol=1e-6, metric=metric, sample_weight=w, engine=engine)
    np.testing.assert_array_equal(got.labels, ref.labels)
    np.testing.assert_array_equal(got.centers, ref.centers)
    assert got.inertia == ref.inertia
    assert got.n_iter == ref.n_iter


@pytest.mark.parametrize("engine", ENGINES)
def test_kmeans_empty_cluster_repair_matches(engine):
    X = _blobs(_size(engine, 400, 4000), 5, 4, 5)
    init = np.vstack([X[:5], np.full((1, 5), 1e3, np.float32)])  # the far centre empties at once
    ref = _core.kmeans_fit(X, 6, max_iter=10, tol=0.0, init=init)
    got = cuda.kmeans(X, 6, init, max_iter=10, tol=0.0, engine=engine)
    np.testing.assert_array_equal(got.labels, ref.labels)
    np.testing.assert_array_equal(got.centers, ref.centers)
    assert got.n_empty_repaired == ref.n_empty_repaired >= 1


@pytest.mark.parametrize("engine", ENGINES)
def test_kmeans_kmeans_parallel_init_matches_cpu_fit(engine):
    X = _blobs(_size(engine, 500, 5000), 6, 5, 6)
    ref = _core.kmeans_fit(X, 5, max_iter=20, init="k-means||", seed=11)
    got = cuda.kmeans(X, 5, "k-means||", max_iter=20, seed=11, engine=engine)
    np.testing.assert_array_equal(got.labels, ref.labels)
    np.testing.assert_array_equal(got.centers, ref.centers)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_dbscan_identical_to_cpu_engine_and_sklearn(engine, metric):
    from sklearn.cluster import DBSCAN as SkDBSCAN

    n = _size(engine, 500, 6000)
    X = _blobs(n, 6, 8, 7, noise=0.15)
    X[-30:] = np.random.default_rng(8).uniform(-4, 4, size=(30, 6)).astype(np.float32)  # noise
    X[100:140] = X[:40]  # duplicates
    eps = 0.35 if metric == "l2" else 0.02
    labels, is_core, counts, n_clusters = cuda.dbscan(X, eps, 5, metric, engine=engine)
    ref = _core.dbscan_fit(X, eps, 5, metric)
    np.testing.assert_array_equal(labels, ref.labels)
    np.testing.assert_array_equal(is_core, ref.is_core.astype(bool))
    np.testing.assert_array_equal(counts, ref.counts)
    assert n_clusters == ref.n_clusters
    sk = SkDBSCAN(eps=eps, min_samples=5, metric="euclidean" if metric == "l2" else "cosine").fit(X.astype(np.float64))
    np.testing.assert_array_equal(is_core, np.isin(np.arange(n), sk.core_sample_indices_))
    core = is_core
    # Core points: the same partition as scikit-learn's (numbering aside).
    pairs = {(a, b) for a, b in zip(labels[core], sk.labels_[core])}
    assert len(pairs) == len(set(labels[core])) == len(set(sk.labels_[core]))


@pytest.mark.parametrize("engine", ENGINES)
def test_dbscan_near_ties_at_eps(engine):
    """Pairs exactly at eps and a hair inside or outside it: only the fp64 re-check can tell."""
    base = np.zeros((1, 4), np.float32)
    offsets = np.array([1.0, np.nextafter(np.float32(1.0), np.float32(0)), np.nextafter(np.float32(1.0), np.float32(2)),
                        0.5, 2.0], np.float32)
    X = np.vstack([base] + [base + np.array([o, 0, 0, 0], np.float32) for o in offsets])
    X = np.vstack([X, X + np.float32(100.0)])
    labels, is_core, counts, _ = cuda.dbscan(X, 1.0, 3, "l2", engine=engine)
    ref = _core.dbscan_fit(X, 1.0, 3, "l2")
    np.testing.assert_array_equal(labels, ref.labels)
    np.testing.assert_array_equal(counts, ref.counts)
    assert counts[0] == 4  # itself, the one at 1.0, the one just inside and the one at 0.5; not 2.0 or just outside


def test_model_band_covers_tf32_rounding():
    """TF32-rounded tile products on integer data full of exact ties still give the fp64 brute
    force's neighbours and distances."""
    X = _ties(200, 16, 9)
    dist, idx = cuda.kneighbors(X, None, 5, "l2", engine="model")
    ref_d, ref_i = _core.knn_search(X, X, 5, "l2", exclude_self=True)
    np.testing.assert_array_equal(idx, ref_i)
    exact = _brute(X, X, "l2")
    np.fill_diagonal(exact, np.inf)
    np.testing.assert_array_equal(dist, np.sort(exact, axis=1)[:, :5].astype(np.float32))


# ---- The estimators' backend="cuda", run on the host model (EMBEDCLUSTER_CUDA_ENGINE=model).

@pytest.fixture
def model_engine(monkeypatch):
    monkeypatch.setenv("EMBEDCLUSTER_CUDA_ENGINE", "model")


def test_kmeans_estimator_cuda_backend_equals_native(model_engine):
    from embedcluster import KMeans

    X = _blobs(500, 7, 6, 12, noise=0.3)
    init = X[:6].copy()
    gpu = KMeans(6, init=init, max_iter=30, backend="cuda").fit(X)
    cpu = KMeans(6, init=init, max_iter=30, backend="native").fit(X)
    assert gpu.backend_ == "cuda"
    np.testing.assert_array_equal(gpu.labels_, cpu.labels_)
    np.testing.assert_array_equal(gpu.cluster_centers_, cpu.cluster_centers_)
    assert gpu.inertia_ == cpu.inertia_ and gpu.n_iter_ == cpu.n_iter_
    np.testing.assert_array_equal(gpu.predict(X[:50]), cpu.predict(X[:50]))
    gpu_par = KMeans(6, init="k-means||", random_state=3, backend="cuda").fit(X)
    cpu_par = KMeans(6, init="k-means||", random_state=3, backend="native").fit(X)
    np.testing.assert_array_equal(gpu_par.labels_, cpu_par.labels_)
    with pytest.raises(ValueError, match="not available on the CUDA backend"):
        KMeans(6, init="k-means++", backend="cuda").fit(X)


def test_dbscan_estimator_cuda_backend_equals_native(model_engine):
    from embedcluster import DBSCAN

    X = _blobs(400, 5, 5, 13, noise=0.1)
    gpu = DBSCAN(eps=0.3, min_samples=4, backend="cuda").fit(X)
    cpu = DBSCAN(eps=0.3, min_samples=4, backend="native").fit(X)
    np.testing.assert_array_equal(gpu.labels_, cpu.labels_)
    np.testing.assert_array_equal(gpu.core_sample_indices_, cpu.core_sample_indices_)
    np.testing.assert_array_equal(gpu.components_, cpu.components_)
    assert gpu.n_clusters_ == cpu.n_clusters_
    np.testing.assert_array_equal(gpu.predict(X[::7] + 0.01), cpu.predict(X[::7] + 0.01))


def test_neighbors_estimator_cuda_backend_equals_native(model_engine):
    from embedcluster import NearestNeighbors

    X = _ties(300, 6, 14)
    for metric in ("euclidean", "sqeuclidean", "cosine"):
        Xm = X.copy()
        if metric == "cosine":
            Xm[np.linalg.norm(Xm, axis=1) == 0] = 1.0
        gpu = NearestNeighbors(n_neighbors=5, metric=metric, backend="cuda").fit(Xm)
        cpu = NearestNeighbors(n_neighbors=5, metric=metric, backend="native").fit(Xm)
        for q in (None, Xm[::4]):
            gd, gi = gpu.kneighbors(q)
            cd, ci = cpu.kneighbors(q)
            np.testing.assert_array_equal(gi, ci)
            np.testing.assert_array_equal(gd, cd)
        gr = gpu.radius_neighbors(Xm[:10], radius=1.5)
        cr = cpu.radius_neighbors(Xm[:10], radius=1.5)
        for a, b in zip(gr[1], cr[1]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(_ok, reason="a usable CUDA engine is present here")
def test_cuda_backend_says_why_it_cannot_run(monkeypatch):
    from embedcluster import KMeans

    monkeypatch.delenv("EMBEDCLUSTER_CUDA_ENGINE", raising=False)
    with pytest.raises(RuntimeError, match="backend='cuda'.*backend='native'"):
        KMeans(3, backend="cuda").fit(_blobs(50, 3, 3, 0))
