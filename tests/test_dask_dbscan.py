"""embedcluster.dask.DBSCAN on the shared LocalCluster: labels and core points identical to
embedcluster.DBSCAN for any chunking, and the same parameter errors."""

from __future__ import annotations

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
pytest.importorskip("distributed")

import embedcluster._dbscan_groups as groups  # noqa: E402
import embedcluster.dask as ecd  # noqa: E402
from embedcluster import DBSCAN  # noqa: E402


def data(n=2400, d=10, seed=3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, d)) * 6
    X = centres[rng.integers(0, 6, n)] + rng.normal(size=(n, d)) * rng.choice([0.5, 1.0, 2.0], size=(n, 1))
    X[: n // 10] = rng.uniform(-15, 15, size=(n // 10, d))
    X[100:104] = X[105]
    return rng.permutation(X).astype(np.float32)


@pytest.mark.parametrize("chunks,metric,eps,min_samples,whole_bytes", [
    ((1000, 1, 1399), "euclidean", 2.0, 6, 0),
    ((7, 2000, 393), "cosine", 0.015, 5, 0),
    ((2400,), "euclidean", 3.5, 15, 0),
    ((1000, 1, 1399), "euclidean", 2.0, 6, 2**30),
    ((7, 2000, 393), "cosine", 0.015, 5, 300 * 10 * 4),
])
def test_dask_dbscan_equals_single_machine(client, monkeypatch, chunks, metric, eps, min_samples, whole_bytes):
    monkeypatch.setattr(groups, "GROUP_ROWS", 300)  # the grouping runs on the client
    X = data()
    ref = DBSCAN(eps=eps, min_samples=min_samples, metric=metric).fit(X)
    got = ecd.DBSCAN(eps=eps, min_samples=min_samples, metric=metric, max_component_bytes=whole_bytes,
                     client=client).fit(da.from_array(X, chunks=(chunks, X.shape[1])))
    if whole_bytes == 0:
        assert got.n_components_ == 0  # every group through the pair tasks
    elif whole_bytes >= 2**30:
        assert got.n_components_ > 0
    np.testing.assert_array_equal(got.labels_, ref.labels_)
    np.testing.assert_array_equal(got.core_sample_indices_, ref.core_sample_indices_)
    np.testing.assert_array_equal(got.components_.compute(), ref.components_)
    assert got.n_clusters_ == ref.n_clusters_ and got.n_features_in_ == X.shape[1]
    assert got.n_groups_ > 1 and got.n_pairs_ >= got.n_groups_ and got.bytes_received_ > 0


def test_dask_dbscan_parameter_errors_match_single_machine(client):
    X = da.from_array(data(n=200), chunks=(50, 10))
    for kw in ({"eps": 0.0}, {"eps": 1.0, "min_samples": 0}, {"eps": 1.0, "metric": "manhattan"}):
        with pytest.raises(ValueError) as local:
            DBSCAN(**kw).fit(data(n=200))
        with pytest.raises(ValueError) as remote:
            ecd.DBSCAN(**kw, client=client).fit(X)
        assert str(remote.value) == str(local.value)
    with pytest.raises(ValueError, match="2-D"):
        ecd.DBSCAN(client=client).fit(da.zeros((10,), chunks=5))


def test_dask_dbscan_auto_eps_equals_single_machine(client):
    """eps="auto": the k-distance curve from the exact kNN on the cluster, so the same eps_ and
    labels as embedcluster.DBSCAN; the same warning when nearly everything is noise."""
    X = data(n=1200)
    ref = DBSCAN(eps="auto", min_samples=6).fit(X)
    got = ecd.DBSCAN(eps="auto", min_samples=6, client=client).fit(da.from_array(X, chunks=(500, X.shape[1])))
    assert got.eps_ == ref.eps_
    np.testing.assert_array_equal(got.k_distances_, ref.k_distances_)
    np.testing.assert_array_equal(got.labels_, ref.labels_)
    with pytest.warns(UserWarning, match="raise eps") as remote:
        ecd.DBSCAN(eps=0.01, client=client).fit(da.from_array(X, chunks=(500, X.shape[1])))
    with pytest.warns(UserWarning, match="raise eps") as local:
        DBSCAN(eps=0.01).fit(X)
    assert str(remote[0].message) == str(local[0].message)
