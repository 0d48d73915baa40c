"""embedcluster.dask on a real distributed.LocalCluster (2 worker processes, 1 thread each):
results bit-identical to the single-machine estimator for uneven chunkings, a worker killed
mid-fit, and the estimator's errors."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import embedcluster  # noqa: E402
import embedcluster._chunked as chunked  # noqa: E402
import embedcluster.dask as ecd  # noqa: E402


def blobs(n=8000, d=16, centres=10, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, d)).astype(np.float32) * 4
    x = means[rng.integers(0, centres, n)] + rng.normal(size=(n, d)).astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


def single_machine(X, init, **kw):
    return embedcluster.KMeans(len(init), init=init, **kw).fit(X)


def assert_same(km, ref):
    np.testing.assert_array_equal(km.cluster_centers_, ref.cluster_centers_)
    np.testing.assert_array_equal(km.labels_, ref.labels_)
    assert km.inertia_ == ref.inertia_
    assert km.n_iter_ == ref.n_iter_


@pytest.mark.parametrize("chunks", [(8000,), (1000, 3001, 3999), (5, 7990, 5), 777])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_uneven_chunkings_give_the_single_machine_fit(client, chunks, metric):
    X = blobs()
    init = X[np.random.default_rng(1).choice(len(X), 20, replace=False)]
    ref = single_machine(X, init, metric=metric, max_iter=30)
    km = ecd.KMeans(20, init=init, metric=metric, max_iter=30, client=client)
    km.fit(da.from_array(X, chunks=(chunks, 16)))
    assert_same(km, ref)
    assert len(km.iteration_seconds_) == km.n_iter_
    assert km.bytes_received_ > 0


def test_weights_and_column_chunks(client):
    X = blobs(3000, 12, seed=2)
    w = np.random.default_rng(3).uniform(0, 2, len(X)).astype(np.float32)
    init = X[:8].copy()
    ref = embedcluster.KMeans(8, init=init, max_iter=25).fit(X, sample_weight=w)
    km = ecd.KMeans(8, init=init, max_iter=25, client=client)
    km.fit(da.from_array(X, chunks=(1100, 5)), sample_weight=da.from_array(w, chunks=700))
    assert_same(km, ref)


def test_predict_is_lazy_and_exact(client):
    X = blobs(2000, 8)
    km = ecd.KMeans(5, init=X[:5].copy(), client=client).fit(da.from_array(X, chunks=600))
    pred = km.predict(da.from_array(X, chunks=450))
    assert isinstance(pred, da.Array)
    np.testing.assert_array_equal(pred.compute(), km.labels_)


def test_a_worker_killed_mid_fit_changes_nothing(client, monkeypatch):
    X = blobs(20000, 16, seed=5)
    init = X[:30].copy()
    ref = single_machine(X, init, max_iter=12, tol=0.0)
    pids = list(client.run(os.getpid).values())
    killed = []
    real = chunked.lloyd_over_chunks

    def kill_at_iteration_3(runner, init_, p, progress=None):
        def report(it, changed, shift):
            if it == 3 and not killed:
                os.kill(pids[0], signal.SIGKILL)  # the nanny starts a new worker; Dask recomputes
                killed.append(pids[0])
            if progress:
                progress(it, changed, shift)
        return real(runner, init_, p, report)

    monkeypatch.setattr(chunked, "lloyd_over_chunks", kill_at_iteration_3)
    km = ecd.KMeans(30, init=init, max_iter=12, tol=0.0, client=client).fit(da.from_array(X, chunks=2500))
    assert killed
    assert_same(km, ref)
    client.wait_for_workers(2, timeout=60)


def test_errors(client):
    X = da.from_array(blobs(100, 4), chunks=50)
    with pytest.raises(ValueError, match="needs init as an array"):
        ecd.KMeans(3, client=client).fit(X)
    with pytest.raises(ValueError, match=r"or init='k-means\|\|', not 'k-means\+\+'"):
        ecd.KMeans(3, init="k-means++", client=client).fit(X)
    with pytest.raises(ValueError, match=r"init has shape \(2, 4\)"):
        ecd.KMeans(3, init=np.zeros((2, 4), np.float32), client=client).fit(X)
    with pytest.raises(ValueError, match="n_clusters"):
        ecd.KMeans(0, init=np.zeros((0, 4), np.float32), client=client).fit(X)
    with pytest.raises(ValueError, match="n_samples=100 should be >= n_clusters=101"):
        ecd.KMeans(101, init=np.zeros((101, 4), np.float32), client=client).fit(X)


@pytest.mark.parametrize("chunks", [(6000,), (5, 2990, 3005), 777])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_kmeans_parallel_init_gives_the_single_machine_fit(client, chunks, metric):
    X = blobs(6000, 16, seed=6)
    ref = embedcluster.KMeans(12, init="k-means||", random_state=7, metric=metric, max_iter=30).fit(X)
    km = ecd.KMeans(12, init="k-means||", random_state=7, metric=metric, max_iter=30, client=client)
    km.fit(da.from_array(X, chunks=(chunks, 16)))
    assert_same(km, ref)


def test_kmeans_parallel_init_weighted_and_n_init(client):
    X = blobs(3000, 8, seed=9)
    w = np.random.default_rng(4).uniform(0, 2, len(X)).astype(np.float32)
    ref = embedcluster.KMeans(6, init="k-means||", n_init=3, random_state=11, max_iter=20).fit(X, sample_weight=w)
    km = ecd.KMeans(6, init="k-means||", n_init=3, random_state=11, max_iter=20, client=client)
    km.fit(da.from_array(X, chunks=1100), sample_weight=da.from_array(w, chunks=700))
    assert_same(km, ref)


def test_kmeans_parallel_seeding_on_dask_matches_kmeans_init(client):
    from embedcluster import _core
    from embedcluster._chunked import FitParams, seed_over_chunks

    X = blobs(2500, 8, seed=10)
    runner = ecd.DaskChunks(client, da.from_array(X, chunks=((1, 999, 1500), 8)))
    got = seed_over_chunks(runner, 5, FitParams(9, metric="cosine"))
    np.testing.assert_array_equal(got, _core.kmeans_init(X, 9, metric="cosine", init="k-means||", seed=5))


# ---- NearestNeighbors: block-pair tasks merged on the workers

KNN_METRICS = ["euclidean", "cosine", "inner_product"]


def knn_data(n=900, d=10, seed=12):
    X = blobs(n, d, seed=seed)
    X[100:105] = X[7]  # exact duplicates: ties
    return X


def assert_same_knn(got, ref):
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_array_equal(got[0].view(np.int32), ref[0].view(np.int32))


@pytest.mark.parametrize("chunks", [(900,), (3, 440, 457), (0, 300, 1, 599), 250])
@pytest.mark.parametrize("metric", KNN_METRICS)
def test_knn_self_join_and_queries_give_the_single_machine_result(client, chunks, metric):
    from conftest import brute_knn

    X = knn_data()
    ref = embedcluster.NearestNeighbors(n_neighbors=6, metric=metric).fit(X)
    nn = ecd.NearestNeighbors(n_neighbors=6, metric=metric, client=client).fit(da.from_array(X, chunks=(chunks, 10)))
    got = nn.kneighbors()
    assert_same_knn(got, ref.kneighbors())
    _, oracle = brute_knn(X, X, 6, {"euclidean": "l2", "inner_product": "ip"}.get(metric, metric), exclude_self=True)
    np.testing.assert_array_equal(got[1], oracle)
    assert nn.bytes_received_ == X.shape[0] * 6 * (4 + 8)  # the final arrays only
    Q = X[::7] + np.float32(0.5)
    assert_same_knn(nn.kneighbors(da.from_array(Q, chunks=((20, 109), 10)), n_neighbors=9),
                    ref.kneighbors(Q, n_neighbors=9))
    np.testing.assert_array_equal(nn.kneighbors(Q, return_distance=False), ref.kneighbors(Q, return_distance=False))


def test_knn_graph_files_and_errors(client, tmp_path):
    from embedcluster.data import ShardedArray

    X = knn_data(500, 6, seed=13)
    np.save(tmp_path / "a.npy", X[:123].astype(np.float64))
    np.save(tmp_path / "b.npy", X[123:].astype(np.float64))
    sharded = ShardedArray([np.load(tmp_path / f, mmap_mode="r") for f in ("a.npy", "b.npy")])
    ref = embedcluster.NearestNeighbors(n_neighbors=4).fit(X)
    nn = ecd.NearestNeighbors(n_neighbors=4, client=client).fit(sharded)
    for mode in ("connectivity", "distance"):
        g, r = nn.kneighbors_graph(mode=mode), ref.kneighbors_graph(mode=mode)
        for attr in ("indptr", "indices", "data"):
            np.testing.assert_array_equal(getattr(g, attr), getattr(r, attr))
    assert_same_knn(ecd.NearestNeighbors(n_neighbors=4, client=client).fit(X).kneighbors(sharded), ref.kneighbors(X))
    with pytest.raises(ValueError, match="Expected n_neighbors <= n_samples_fit"):
        nn.kneighbors(n_neighbors=500)
    with pytest.raises(ValueError, match="Expected n_neighbors > 0"):
        nn.kneighbors(n_neighbors=0)
    with pytest.raises(ValueError, match="X has 3 features, but NearestNeighbors is expecting 6"):
        nn.kneighbors(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="metric"):
        ecd.NearestNeighbors(metric="manhattan", client=client).fit(X)
    bad = X.copy()
    bad[321, 2] = np.nan
    with pytest.raises(ValueError, match=r"contains NaN or infinity \(first at row 321, column 2\)"):
        ecd.NearestNeighbors(client=client).fit(da.from_array(bad, chunks=200))
    zero = X.copy()
    zero[40] = 0
    with pytest.raises(ValueError, match="zero-norm rows"):
        ecd.NearestNeighbors(metric="cosine", client=client).fit(da.from_array(zero, chunks=200))


def test_knn_ctrl_c_cancels_the_futures(client, monkeypatch):
    X = knn_data(300, 4, seed=14)
    nn = ecd.NearestNeighbors(n_neighbors=3, client=client).fit(da.from_array(X, chunks=100))
    cancelled: list = []

    def interrupted(futures, *a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(client, "gather", interrupted)
    monkeypatch.setattr(client, "cancel", lambda futures, *a, **kw: cancelled.extend(futures))
    with pytest.raises(KeyboardInterrupt):
        nn.kneighbors()
    # 3 x 3 pair tasks, 2 x 3 merges and 3 final tasks, all cancelled
    assert len({f.key for f in cancelled}) == 9 + 6 + 3
