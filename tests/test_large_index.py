"""Shapes with more than 2^31 distance elements (streamed tiles): no index overflow anywhere."""

from __future__ import annotations

import numpy as np

from embedcluster import _core

from conftest import brute_knn, brute_within


def test_knn_and_radius_beyond_2_31_distance_elements():
    rng = np.random.default_rng(0)
    db = rng.standard_normal((70_000, 4)).astype(np.float32)
    q = rng.standard_normal((40_000, 4)).astype(np.float32)
    assert db.shape[0] * q.shape[0] > 2**31
    dist, idx = _core.knn_search(db, q, 3)
    counts = _core.radius_count(db, q, 0.05)
    sample = np.r_[0, 1, rng.choice(q.shape[0], 200, replace=False), q.shape[0] - 1]
    ref_v, ref_i = brute_knn(db, q[sample], 3, "l2")
    np.testing.assert_array_equal(idx[sample], ref_i)
    np.testing.assert_allclose(dist[sample], ref_v, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(counts[sample], brute_within(db, q[sample], 0.05, "l2").sum(1))
    assert idx.max() >= 60_000  # indices from the far end of the database came through intact


def test_dbscan_beyond_2_31_pairs():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((70_000, 3)).astype(np.float32)
    assert X.shape[0] ** 2 > 2**31
    r = _core.dbscan_fit(X, 0.08, 5, prune=False)  # every pair is computed: 2.45e9 distances
    assert r["pairs_computed_pass1"] * 192 * 192 > 2**31  # tile products of 192 x 192 distances
    sample = np.r_[0, rng.choice(X.shape[0], 150, replace=False), X.shape[0] - 1]
    np.testing.assert_array_equal(r["counts"][sample], brute_within(X, X[sample], 0.08 * 0.08, "l2").sum(1))
    assert ((r["labels"] >= 0) == (r["is_core"] == 1)).sum() > 0 and r["n_clusters"] > 0
