"""The engine's calls for work split into row blocks: exact kNN values, two-way radius counts and
DBSCAN's pair links, checked against numpy brute force and the single-call results."""

import numpy as np
import pytest

from embedcluster import _core

METRICS = ["l2", "cosine", "ip"]


def _data(n=1500, d=24, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    X[700:710] = X[3]  # exact duplicates: ties at every precision
    return X


def _brute(metric, Q, X):
    Q64, X64 = Q.astype(np.float64), X.astype(np.float64)
    if metric == "l2":
        return ((Q64[:, None, :] - X64[None, :, :]) ** 2).sum(-1)
    dots = Q64 @ X64.T
    if metric == "ip":
        return -dots
    return 1.0 - dots / np.outer(np.linalg.norm(Q64, axis=1), np.linalg.norm(X64, axis=1))


@pytest.mark.parametrize("metric", METRICS)
def test_exact_values_merge_over_blocks_to_the_single_call(metric):
    X = _data()
    Q = X[:300]
    dist, idx = _core.knn_search(X, Q, 6, metric)
    vals, inds = [], []
    for a in (0, 511, 1024):
        b = {0: 511, 511: 1024, 1024: len(X)}[a]
        v, i = _core.knn_search(X[a:b], Q, 6, metric, exact_values=True)
        assert v.dtype == np.float64
        vals.append(v)
        inds.append(i + a)
    V, Ind = np.concatenate(vals, 1), np.concatenate(inds, 1)
    order = np.lexsort((Ind, V), axis=-1)[:, :6]
    merged_idx = np.take_along_axis(Ind, order, 1)
    merged_val = np.take_along_axis(V, order, 1)
    np.testing.assert_array_equal(merged_idx, idx)
    reported = (-merged_val if metric == "ip" else merged_val).astype(np.float32)
    np.testing.assert_array_equal(reported.view(np.int32), dist.view(np.int32))
    # the oracle: fp64 brute force ranking, ties to the lower index
    ref = _brute(metric, Q, X)
    ref_idx = np.lexsort((np.broadcast_to(np.arange(len(X)), ref.shape), ref), axis=-1)[:, :6]
    np.testing.assert_allclose(np.take_along_axis(ref, ref_idx, 1), merged_val, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_radius_count_both_counts_each_side(metric):
    X = _data(seed=1)
    D, Q = X[:900], X[900:]
    radius = 30.0 if metric == "l2" else 0.7
    within = _brute(metric, Q, D) <= radius
    cq, cd = _core.radius_count_both(D, Q, radius, metric)
    np.testing.assert_array_equal(cq, within.sum(1))
    np.testing.assert_array_equal(cd, within.sum(0))


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_radius_pair_links_match_brute_force(metric):
    X = _data(n=1200, seed=2)
    D, Q = X[:500], X[500:]
    radius = 28.0 if metric == "l2" else 0.65
    rng = np.random.default_rng(3)
    qc, dc = rng.random(len(Q)) < 0.5, rng.random(len(D)) < 0.5
    comp, q_core, q_dist, db_core, db_dist = _core.radius_pair_links(D, Q, radius, qc, dc, metric)
    vals = _brute(metric, Q, D)
    within = vals <= radius
    # components: union of core-core pairs within radius over nodes (queries, then database rows)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    qi, dj = np.nonzero(within & qc[:, None] & dc[None, :])
    n = len(Q) + len(D)
    _, lab = connected_components(coo_matrix((np.ones(len(qi)), (qi, len(Q) + dj)), shape=(n, n)), directed=False)
    core_nodes = np.concatenate([qc, dc])
    assert (comp[~core_nodes] == -1).all()
    nodes = np.flatnonzero(core_nodes)
    smallest = {}
    for v in nodes:
        smallest.setdefault(lab[v], v)
    np.testing.assert_array_equal(comp[nodes], [smallest[lab[v]] for v in nodes])

    def nearest(vals_rows, ok):  # float32 distance, then lower index
        key = np.where(ok, np.maximum(vals_rows, 0.0).astype(np.float32), np.inf)
        best = np.lexsort((np.broadcast_to(np.arange(key.shape[1]), key.shape), key), axis=-1)[:, 0]
        found = np.isfinite(key[np.arange(len(key)), best])
        return np.where(found, best, -1), key[np.arange(len(key)), best]

    want_q, want_qd = nearest(vals, within & dc[None, :] & ~qc[:, None])
    want_d, want_dd = nearest(vals.T, within.T & qc[None, :] & ~dc[:, None])
    np.testing.assert_array_equal(q_core, want_q)
    np.testing.assert_array_equal(db_core, want_d)
    # numpy's fp64 sums round differently from the engine's in the last bits
    np.testing.assert_allclose(q_dist[q_core >= 0], want_qd[want_q >= 0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(db_dist[db_core >= 0], want_dd[want_d >= 0], rtol=1e-6, atol=1e-6)
    assert (q_core >= 0).any() and (db_core >= 0).any() and (comp >= 0).any()


def test_radius_pair_links_rejects_masks_of_the_wrong_length():
    X = _data(n=50)
    with pytest.raises(ValueError, match="queries_core"):
        _core.radius_pair_links(X, X, 1.0, np.ones(3, bool), np.ones(50, bool))
