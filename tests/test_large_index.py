"""Shapes with more than 2^31 distance elements (streamed tiles): no index overflow anywhere.

Slow tier: each case computes about 2.5e9 distances."""

from __future__ import annotations

import numpy as np
import pytest

from embedcluster import _core

from conftest import brute_knn, brute_within

pytestmark = pytest.mark.slow


def _field(result, name: str):
    """A field of a native result, whether the bindings return a dict or a typed struct."""
    return result[name] if isinstance(result, dict) else getattr(result, name)


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
    eps, min_samples = 0.08, 5
    r = _core.dbscan_fit(X, eps, min_samples, prune=False)  # every pair is computed: 2.45e9 distances
    assert _field(r, "pairs_computed_pass1") * 192 * 192 > 2**31  # tile products of 192 x 192 distances
    labels, is_core, counts = (np.asarray(_field(r, f)) for f in ("labels", "is_core", "counts"))
    sample = np.r_[0, rng.choice(X.shape[0], 150, replace=False), X.shape[0] - 1]
    # The oracle: exact eps-neighbourhoods of the sampled rows and of every row near them.
    near = brute_within(X, X[sample], eps * eps, "l2")
    np.testing.assert_array_equal(counts[sample], near.sum(1))
    core = near.sum(1) >= min_samples
    np.testing.assert_array_equal(is_core[sample] == 1, core)
    nbrs = np.unique(np.nonzero(near)[1])
    nbr_is_core = dict(zip(nbrs.tolist(), (brute_within(X, X[nbrs], eps * eps, "l2").sum(1) >= min_samples).tolist()))
    kinds = {"core": 0, "border": 0, "noise": 0}
    for row, i in enumerate(sample.tolist()):
        core_nbrs = [j for j in np.flatnonzero(near[row]).tolist() if nbr_is_core[j]]
        if core[row]:
            # A core point is in a cluster, and every core point within eps is in the same one.
            kinds["core"] += 1
            assert labels[i] >= 0, i
            assert all(labels[j] == labels[i] for j in core_nbrs), i
        elif core_nbrs:
            # A border point joins the cluster of one of its core neighbours.
            kinds["border"] += 1
            assert labels[i] in {int(labels[j]) for j in core_nbrs}, i
        else:
            kinds["noise"] += 1
            assert labels[i] == -1, i
    assert all(kinds.values()), kinds  # the sample exercises every kind of point
    assert _field(r, "n_clusters") == len(np.unique(labels[labels >= 0]))
