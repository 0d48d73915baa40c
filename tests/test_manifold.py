"""UMAP on the engine's exact kNN graph (embedcluster.transfer.manifold): the graph against a
numpy brute-force oracle, the graph UMAP receives, the missing-dependency error, bad input, and
(slow tier, umap-learn's first run compiles its numba code) real UMAP runs: blobs recovered,
seeded runs reproducible, the pipeline's clusterer="umap"."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from embedcluster.transfer import manifold
from embedcluster.transfer.manifold import UMAPClustering, exact_knn_graph


def blobs(n_per: int = 50, k: int = 3, d: int = 8, seed: int = 0):
    """Clusters around orthogonal directions, shuffled: far apart in cosine and euclidean terms."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per)
    X = 6.0 * np.eye(d)[y] + rng.normal(scale=0.5, size=(len(y), d))
    order = rng.permutation(len(y))
    return X[order].astype(np.float32), y[order]


def brute_force_knn(X: np.ndarray, k: int, metric: str):
    """Oracle: all pairwise distances in float64, each row sorted (itself first, at 0)."""
    X = X.astype(np.float64)
    if metric == "cosine":
        U = X / np.linalg.norm(X, axis=1, keepdims=True)
        D = 1.0 - U @ U.T
    else:
        D = np.sqrt(np.maximum(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1), 0.0))
    np.fill_diagonal(D, -1.0)  # self first, then the others by distance
    idx = np.argsort(D, axis=1, kind="stable")[:, :k]
    dist = np.take_along_axis(D, idx, 1)
    dist[:, 0] = 0.0
    return idx, dist


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_knn_graph_matches_brute_force(metric):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(180, 12)).astype(np.float32)
    idx, dist = exact_knn_graph(X, 9, metric)
    ref_idx, ref_dist = brute_force_knn(X, 9, metric)
    assert idx.shape == dist.shape == (180, 9) and idx.dtype == np.int64 and dist.dtype == np.float32
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-4, atol=1e-5)


class _RecordingUMAP:
    """Stands in for umap.UMAP: records its arguments and returns a fixed projection of the input."""

    calls: list = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        _RecordingUMAP.calls.append(kwargs)

    def fit_transform(self, X):
        return np.asarray(X, np.float64)[:, : self.kwargs["n_components"]]


def test_umap_receives_the_exact_graph_and_its_parameters(monkeypatch):
    monkeypatch.setattr(manifold, "_umap_class", lambda: _RecordingUMAP)
    _RecordingUMAP.calls = []
    X, y = blobs()
    model = UMAPClustering(3, n_components=8, n_neighbors=7, min_dist=0.05, n_epochs=30, random_state=4).fit(X)
    (kw,) = _RecordingUMAP.calls
    ref_idx, ref_dist = brute_force_knn(X, 7, "cosine")
    got_idx, got_dist = kw["precomputed_knn"]
    np.testing.assert_array_equal(got_idx, ref_idx)
    np.testing.assert_allclose(got_dist, ref_dist, rtol=1e-4, atol=1e-5)
    assert (kw["n_neighbors"], kw["n_components"], kw["min_dist"], kw["metric"], kw["n_epochs"],
            kw["random_state"]) == (7, 8, 0.05, "cosine", 30, 4)
    np.testing.assert_array_equal(model.knn_indices_, ref_idx)
    # The fake "UMAP" keeps the blobs apart, so k-means on its output finds them.
    assert adjusted_rand_score(y, model.labels_) == 1.0
    assert set(model.times_) == {"knn", "umap", "cluster"}


def test_a_given_graph_is_used_as_is_and_checked(monkeypatch):
    monkeypatch.setattr(manifold, "_umap_class", lambda: _RecordingUMAP)
    X, _ = blobs()
    graph = brute_force_knn(X, 7, "cosine")
    _RecordingUMAP.calls = []
    model = UMAPClustering(3, n_components=8, n_neighbors=7).fit(X, knn=graph)
    np.testing.assert_array_equal(_RecordingUMAP.calls[0]["precomputed_knn"][0], graph[0])
    np.testing.assert_array_equal(model.knn_indices_, graph[0])
    with pytest.raises(ValueError, match="shapes"):
        UMAPClustering(3, n_neighbors=8).fit(X, knn=graph)
    shuffled = (graph[0][:, ::-1].copy(), graph[1])
    with pytest.raises(ValueError, match="own index first"):
        UMAPClustering(3, n_neighbors=7).fit(X, knn=shuffled)


def test_missing_umap_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # makes `import umap` raise ImportError
    X, _ = blobs()
    with pytest.raises(ImportError, match=r"pip install umap-learn.*embedcluster\[umap\]"):
        UMAPClustering(3).fit(X)


@pytest.mark.parametrize("kwargs, match", [
    ({"n_clusters": 1}, "n_clusters"), ({"n_components": 0}, "n_components"),
    ({"clusterer": "dbscan"}, "clusterer"), ({"n_epochs": 0}, "n_epochs"),
    ({"min_dist": -1.0}, "min_dist"), ({"random_state": 1.5}, "random_state"),
    ({"n_neighbors": 1}, "n_neighbors"), ({"n_neighbors": 151}, "n_neighbors"),
    ({"metric": "manhattan"}, "metric")])
def test_bad_parameters_are_named(monkeypatch, kwargs, match):
    monkeypatch.setattr(manifold, "_umap_class", lambda: _RecordingUMAP)
    X, _ = blobs()
    with pytest.raises(ValueError, match=match):
        UMAPClustering(**{"n_clusters": 3, **kwargs}).fit(X)


def test_bad_rows_are_refused():
    X, _ = blobs()
    X[5, 2] = np.nan
    with pytest.raises(ValueError, match="row 5"):
        exact_knn_graph(X, 5)
    with pytest.raises(ValueError, match="all-zero"):
        exact_knn_graph(np.zeros((10, 3), np.float32), 3)


@pytest.mark.slow
@pytest.mark.parametrize("clusterer", ["kmeans", "gmm"])
def test_real_umap_recovers_blobs_reproducibly(clusterer):
    pytest.importorskip("umap", reason="umap-learn is an optional extra (pip install umap-learn)")
    X, y = blobs()
    a = UMAPClustering(3, n_components=3, n_neighbors=10, clusterer=clusterer, random_state=7).fit(X)
    b = UMAPClustering(3, n_components=3, n_neighbors=10, clusterer=clusterer, random_state=7).fit(X)
    assert adjusted_rand_score(y, a.labels_) == 1.0
    np.testing.assert_array_equal(a.embedding_, b.embedding_)
    np.testing.assert_array_equal(a.labels_, b.labels_)


@pytest.mark.slow
def test_real_umap_gets_the_exact_graph(monkeypatch):
    umap = pytest.importorskip("umap", reason="umap-learn is an optional extra (pip install umap-learn)")
    seen = {}

    class Recording(umap.UMAP):
        def fit(self, X, *args, **kwargs):
            seen["knn"] = self.precomputed_knn
            out = super().fit(X, *args, **kwargs)
            seen["used"] = np.asarray(self.knn_indices)
            return out

    monkeypatch.setattr(manifold, "_umap_class", lambda: Recording)
    X, _ = blobs()
    UMAPClustering(3, n_components=2, n_neighbors=6, random_state=0).fit(X)
    ref_idx, _ = brute_force_knn(X, 6, "cosine")
    np.testing.assert_array_equal(seen["knn"][0], ref_idx)
    np.testing.assert_array_equal(seen["used"], ref_idx)  # UMAP kept the graph, did not recompute it


@pytest.mark.slow
def test_pipeline_clusterer_umap():
    pytest.importorskip("umap", reason="umap-learn is an optional extra (pip install umap-learn)")
    pytest.importorskip("torch")
    from embedcluster.pipeline import TransferClustering

    X, y = blobs()
    pipe = TransferClustering(None, clusterer="umap", n_clusters=3, probe=False, seed=0).fit(X)
    assert isinstance(pipe.clusterer_, UMAPClustering)
    assert adjusted_rand_score(y, pipe.labels_) == 1.0
    assert adjusted_rand_score(y, pipe.predict(X)) == 1.0
