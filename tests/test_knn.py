"""Exact kNN and radius search against a brute force whose decisions are exact (conftest), and
tests of that oracle itself: its ties and boundaries must not depend on the BLAS kernel."""

from __future__ import annotations

import numpy as np
import pytest

import embedcluster as ec
from embedcluster import _core

from conftest import approx_values, brute_argmin, brute_knn, brute_within, pair_values

DIMS = [1, 3, 97, 384]


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("n,nq,k", [(1, 1, 1), (50, 7, 5), (700, 300, 10), (1000, 150, 33)])
def test_knn_equals_brute_force(kernel_set, n, nq, k, d, metric):
    rng = np.random.default_rng(n * 1000 + d)
    db = rng.standard_normal((n, d)).astype(np.float32)
    q = rng.standard_normal((nq, d)).astype(np.float32)
    k = min(k, n)
    dist, idx = _core.knn_search(db, q, k, metric)
    ref_v, ref_i = brute_knn(db, q, k, metric)
    np.testing.assert_array_equal(idx, ref_i)
    ref_d = -ref_v if metric == "ip" else ref_v
    np.testing.assert_allclose(dist, ref_d, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_knn_ties_go_to_lower_index(kernel_set, metric):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((40, 16)).astype(np.float32)
    db = np.vstack([base, base, base])  # every row three times
    q = base[:10] + np.float32(1e-3) * rng.standard_normal((10, 16)).astype(np.float32)
    _, idx = _core.knn_search(db, q, 6, metric)
    _, ref = brute_knn(db, q, 6, metric)
    np.testing.assert_array_equal(idx, ref)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("data", ["gauss", "duplicates", "grid"])
def test_symmetric_self_join_equals_one_sided_scan(kernel_set, metric, exclude_self, data):
    """Queries that are the database compute each pair once and feed both rows; the result must
    equal the one-sided scan bit for bit, and the float64 brute force, ties included
    (900 rows: several 192-row blocks and a partial one)."""
    rng = np.random.default_rng(21)
    if data == "gauss":
        X = rng.standard_normal((900, 24)).astype(np.float32)
    elif data == "duplicates":
        base = rng.standard_normal((300, 24)).astype(np.float32)
        X = np.vstack([base, base[::-1], base])
    else:  # small integers, offset from zero: many exact distance ties
        X = (rng.integers(-2, 3, size=(900, 6)) + 0.5).astype(np.float32)
    a_d, a_i = _core.knn_search(X, X, 7, metric, exclude_self, self_join=True)
    b_d, b_i = _core.knn_search(X, X, 7, metric, exclude_self, self_join=False)
    np.testing.assert_array_equal(a_i, b_i)
    np.testing.assert_array_equal(a_d, b_d)
    ref_v, ref = brute_knn(X, X, 7, metric, exclude_self=exclude_self)
    if data == "grid" and metric == "cosine":
        # Parallel grid rows tie exactly in 1 - cos; the engine's float64 values (a rounded
        # square root) break those ties by rounding, the exact oracle by index: compare the
        # distances instead (L2 and dot products of half-integers are exact in both).
        np.testing.assert_allclose(a_d, ref_v, rtol=0, atol=1e-6)
    else:
        np.testing.assert_array_equal(a_i, ref)


def test_knn_near_ties_resolved_exactly():
    # Points on a sphere around the query at distances differing by one float32 ulp: the fast
    # tiles cannot tell them apart, the fp64 re-check must.
    rng = np.random.default_rng(5)
    d = 64
    q = rng.standard_normal((1, d)).astype(np.float32)
    dirs = rng.standard_normal((200, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    db = (q.astype(np.float64) + dirs * (1.0 + 1e-6 * rng.random((200, 1)))).astype(np.float32)
    for metric in ("l2", "cosine"):
        dist, idx = _core.knn_search(db, q, 20, metric)
        _, ref = brute_knn(db, q, 20, metric)
        np.testing.assert_array_equal(idx, ref)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_estimator_self_join_matches_sklearn(metric):
    from sklearn.neighbors import NearestNeighbors as SkNN

    rng = np.random.default_rng(11)
    X = rng.standard_normal((600, 24)).astype(np.float32)
    d, i = ec.NearestNeighbors(n_neighbors=7, metric=metric).fit(X).kneighbors()
    # Indices from the exact oracle (scikit-learn ranks BLAS values, whose ties depend on the
    # CPU); distances from scikit-learn, an independent implementation.
    _, ref = brute_knn(X, X, 7, "cosine" if metric == "cosine" else "l2", exclude_self=True)
    np.testing.assert_array_equal(i, ref)
    sd, _ = SkNN(n_neighbors=7, metric=metric, algorithm="brute").fit(X.astype(np.float64)).kneighbors()
    np.testing.assert_allclose(d, sd, rtol=1e-4, atol=1e-5)


def test_inner_product_returns_largest_dot_products():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((300, 12)).astype(np.float32)
    Q = rng.standard_normal((20, 12)).astype(np.float32)
    d, i = ec.NearestNeighbors(n_neighbors=4, metric="inner_product").fit(X).kneighbors(Q)
    neg_dots, ref = brute_knn(X, Q, 4, "ip")
    np.testing.assert_array_equal(i, ref)
    np.testing.assert_allclose(d, -neg_dots, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("d", [1, 3, 97, 384])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_radius_search_equals_brute_force(kernel_set, d, metric):
    rng = np.random.default_rng(d)
    db = rng.standard_normal((500, d)).astype(np.float32)
    q = rng.standard_normal((60, d)).astype(np.float32)
    r = float(np.quantile(approx_values(db, q, metric)[0], 0.05))  # about 25 neighbours per query
    ptr, ind, dist = _core.radius_search(db, q, r, metric)
    counts = _core.radius_count(db, q, r, metric)
    np.testing.assert_array_equal(np.diff(ptr), counts)
    within = brute_within(db, q, r, metric)
    for i in range(len(q)):
        ref = np.flatnonzero(within[i])
        np.testing.assert_array_equal(ind[ptr[i]:ptr[i + 1]], ref)
        np.testing.assert_allclose(dist[ptr[i]:ptr[i + 1]], pair_values(db, q, np.full(len(ref), i), ref, metric),
                                   rtol=1e-5, atol=1e-6)


def test_radius_boundary_is_inclusive_and_exact():
    # Points at exactly representable distances: r = 1.0 includes distance 1.0. (0.6, 0.8) in
    # float32 lies at 1.00000002 in exact arithmetic, so it is outside, as fp64 says.
    db = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, -1.0], [0.6, 0.8]], dtype=np.float32)
    q = np.zeros((1, 2), np.float32)
    nn = ec.NearestNeighbors(radius=1.0).fit(db)
    dist, ind = nn.radius_neighbors(q)
    np.testing.assert_array_equal(ind[0], [0, 1, 3])
    np.testing.assert_allclose(dist[0], [0.0, 1.0, 1.0], atol=1e-7)


def test_radius_neighbors_matches_sklearn_self_join():
    from sklearn.neighbors import NearestNeighbors as SkNN

    rng = np.random.default_rng(4)
    X = rng.standard_normal((400, 8)).astype(np.float32)
    dist, ind = ec.NearestNeighbors(radius=2.5).fit(X).radius_neighbors(sort_results=True)
    sd, si = SkNN(radius=2.5, algorithm="brute").fit(X.astype(np.float64)).radius_neighbors(sort_results=True)
    # Membership from the exact oracle (the engine compares squared distances with 2.5 * 2.5;
    # scikit-learn's boundary rounds with the BLAS kernel), distances from scikit-learn.
    within = brute_within(X, X, 2.5 * 2.5, "l2")
    np.fill_diagonal(within, False)
    v, err = approx_values(X, X, "l2")
    for row, (a, b, c, e) in enumerate(zip(ind, si, dist, sd)):
        np.testing.assert_array_equal(np.sort(a), np.flatnonzero(within[row]))
        assert (np.diff(c) >= 0).all()
        # scikit-learn may differ only on pairs within rounding of the radius
        assert (np.abs(v[row, np.setxor1d(a, b)] - 6.25) <= 1e-9 * 6.25 + err[row]).all()
        sk = dict(zip(b.tolist(), e.tolist()))
        np.testing.assert_allclose(c[np.isin(a, b)], [sk[j] for j in a if j in sk], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(c, np.sqrt(pair_values(X, X, np.full(len(a), row), a, "l2")), rtol=1e-5, atol=1e-6)


def test_kneighbors_graph_matches_sklearn():
    from sklearn.neighbors import NearestNeighbors as SkNN

    X = np.random.default_rng(8).standard_normal((120, 5)).astype(np.float32)
    g = ec.NearestNeighbors(n_neighbors=3).fit(X).kneighbors_graph(mode="distance").tocsr()
    s = SkNN(n_neighbors=3).fit(X.astype(np.float64)).kneighbors_graph(mode="distance").tocsr()
    v, ref = brute_knn(X, X, 3, "l2", exclude_self=True)  # which entries: the exact oracle
    expected = np.zeros((120, 120))
    np.put_along_axis(expected, ref, np.sqrt(v), 1)
    np.testing.assert_allclose(g.toarray(), expected, rtol=1e-5, atol=1e-6)
    # scikit-learn's distances, each row's values in order (independent of tie breaking)
    for i in range(120):
        np.testing.assert_allclose(np.sort(g[i].data), np.sort(s[i].data), rtol=1e-4, atol=1e-5)


def test_thread_count_does_not_change_results():
    X = np.random.default_rng(9).standard_normal((2000, 40)).astype(np.float32)
    a = ec.NearestNeighbors(n_neighbors=9, n_threads=1).fit(X).kneighbors()
    b = ec.NearestNeighbors(n_neighbors=9, n_threads=2).fit(X).kneighbors()
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


def test_torch_tensor_input():
    torch = pytest.importorskip("torch", reason="torch not installed")
    X = torch.randn(100, 6)
    d, i = ec.NearestNeighbors(n_neighbors=3).fit(X).kneighbors(X[:5])
    _, ref = brute_knn(X.numpy(), X.numpy()[:5], 3, "l2")
    np.testing.assert_array_equal(i, ref)


def test_precision_fp32_and_auto_agree_exactly():
    X = np.random.default_rng(12).standard_normal((3000, 96)).astype(np.float32)
    a = ec.NearestNeighbors(n_neighbors=12, precision="fp32").fit(X).kneighbors()
    b = ec.NearestNeighbors(n_neighbors=12, precision="auto").fit(X).kneighbors()
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])
    km_a = ec.KMeans(20, random_state=0, precision="fp32").fit(X)
    km_b = ec.KMeans(20, random_state=0, precision="auto").fit(X)
    np.testing.assert_array_equal(km_a.cluster_centers_, km_b.cluster_centers_)
    with pytest.raises(ValueError, match="precision"):
        ec.KMeans(2, precision="fp8").fit(X)


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_values_rounded_the_most_by_bf16_equal_brute_force(kernel_set, metric):
    """Coordinates just below and above bf16 rounding midpoints, so that a row's rounding
    errors add up (the most bf16 can err) in some pairs and cancel in others; near-duplicates
    make the exact order depend on it. Neighbours must equal the float64 brute force, for the
    self-join and for separate queries."""
    rng = np.random.default_rng(43)
    down = np.float32(1 + 2 ** -8 - 2 ** -20)  # rounds down by ~2^-8
    up = np.float32(1 + 2 ** -7 + 2 ** -8 + 2 ** -20)  # rounds up by ~2^-8
    base = rng.choice([down, up], (40, 24)) * rng.choice([-1.0, 1.0], (40, 24))
    nudge = (rng.random((40, 24)) < 0.2) * 2.0 ** -12  # near-duplicates, not parallel to the rows
    X = np.concatenate([base, base + nudge, base[::-1]]).astype(np.float32)
    _, ref = brute_knn(X, X, 4, metric)
    _, got = _core.knn_search(X, X, 4, metric)
    np.testing.assert_array_equal(got, ref)
    Q = X[::3].copy()  # a separate array: the one-sided scan
    _, ref_q = brute_knn(X, Q, 4, metric)
    _, got_q = _core.knn_search(X, Q, 4, metric)
    np.testing.assert_array_equal(got_q, ref_q)


# ----------------------------------------------------------------------------- the oracle itself
def _one_ulp_closer(copy: int, of: int):
    """A BLAS stand-in: the dot products with row `copy` become those with its identical row
    `of` moved one ulp towards "closer" (larger dot products are closer in every metric), as a
    CPU's blocked kernel may round two copies of a row differently."""
    def perturb(dot):
        dot = dot.copy()
        dot[:, copy] = np.nextafter(dot[:, of], np.inf)
        return dot
    return perturb


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_oracle_duplicate_rows_tie_to_lower_index_whatever_blas_rounds(metric):
    """The case seen on an Emerald Rapids Xeon: rows 296, 303 and 896 are identical, but BLAS
    gave row 303's products with 296 and 896 one ulp apart and a float64 argsort picked 896.
    The oracle must give the copies identical values and the lower index the tie, even when
    the BLAS value of the higher copy is an ulp closer."""
    rng = np.random.default_rng(21)
    base = rng.standard_normal((300, 24)).astype(np.float32)
    X = np.vstack([base, base[::-1], base])
    assert (X[296] == X[303]).all() and (X[296] == X[896]).all()
    perturb = _one_ulp_closer(896, 296)
    v, _ = approx_values(X, X, metric, perturb)
    naive = list(np.argsort(v[303], kind="stable"))
    assert naive.index(896) < naive.index(296)  # the old oracle is fooled by one ulp
    for exclude_self in (False, True):
        vals, idx = brute_knn(X, X, 7, metric, exclude_self=exclude_self, perturb=perturb)
        ref_vals, ref = brute_knn(X, X, 7, metric, exclude_self=exclude_self)
        np.testing.assert_array_equal(idx, ref)
        np.testing.assert_array_equal(vals, ref_vals)
        for i in range(len(X)):  # copies of a row appear in ascending index order
            copies = [j for j in idx[i] if (X[j] == X[idx[i][0]]).all()]
            assert copies == sorted(copies)
        if metric != "ip":  # a row's copies are its nearest neighbours
            expected = [296, 303, 896] if not exclude_self else [296, 896]
            assert list(idx[303][:len(expected)]) == expected
    # identical rows at different positions: identical values, bit for bit, either side
    a = pair_values(X, X, [303, 303, 303, 303], [296, 303, 896, 5], metric)
    b = pair_values(X, X, [296, 303, 896, 5], [303, 303, 303, 303], metric)
    assert a[0] == a[1] == a[2] and (a == b).all()  # and symmetric
    # the nearest of the three copies is the lowest; the limit test sees them alike
    for order in ([296, 303, 896], [896, 303, 296]):
        pos = {j: t for t, j in enumerate(order)}
        assert brute_argmin(X[order], X[[303]], metric, perturb=_one_ulp_closer(pos[896], pos[296]))[0] == 0
    lim = float(pair_values(X, X, [5], [296], metric)[0])
    for limit in (lim, np.nextafter(lim, np.inf), np.nextafter(lim, -np.inf)):
        w = brute_within(X, X[[5]], float(limit), metric, perturb=perturb)[0]
        assert w[296] == w[303] == w[896]
        if limit > lim:
            assert w[296]
        if limit < lim and metric != "cosine":  # correctly rounded: the exact value lies nearer
            assert not w[296]


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_oracle_values_and_decisions_equal_exact_rational_arithmetic(metric):
    """pair_values is the correctly rounded exact value (L2, ip), and brute_knn / brute_within /
    brute_argmin decide exactly as Fractions do, on data full of exact ties and near ties
    (half-integers and one-ulp nudges), whatever the BLAS products."""
    from fractions import Fraction

    rng = np.random.default_rng(5)
    X = (rng.integers(-2, 3, size=(60, 5)) + 0.5).astype(np.float32)
    X[::4, 0] = np.nextafter(X[::4, 0], np.float32(np.inf))  # near ties next to the exact ones
    X = np.vstack([X, X[::-3]])
    Q = X[::5]

    def exact(x, y):
        fx, fy = [Fraction(float(t)) for t in x], [Fraction(float(t)) for t in y]
        if metric == "l2":
            return sum((s - t) ** 2 for s, t in zip(fx, fy))
        s = sum(a * b for a, b in zip(fx, fy))
        if metric == "ip":
            return -s
        ny = sum(t * t for t in fy)
        return -s * abs(s) / ny  # orders as 1 - cos for a fixed x

    E = [[exact(x, y) for y in X] for x in Q]
    ref_idx = np.array([sorted(range(len(X)), key=lambda j: (row[j], j))[:9] for row in E])
    _, idx = brute_knn(X, Q, 9, metric)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(brute_argmin(X, Q, metric), ref_idx[:, 0])
    if metric != "cosine":
        rows = np.repeat(np.arange(len(Q)), 9)
        vals = pair_values(X, Q, rows, idx.ravel(), metric)
        np.testing.assert_array_equal(vals, [float(E[i][j]) for i, j in zip(rows, idx.ravel())])
        lim = float(E[0][int(idx[0, 4])])  # a limit that real pairs lie exactly on
        np.testing.assert_array_equal(brute_within(X, Q, lim, metric), [[e <= lim for e in row] for row in E])
    else:
        nx = [sum(Fraction(float(t)) ** 2 for t in x) for x in Q]
        ny = [sum(Fraction(float(t)) ** 2 for t in y) for y in X]
        lim = 0.25
        c = 1 - Fraction(lim)
        for i, x in enumerate(Q):
            got = brute_within(X, Q, lim, metric)[i]
            for j, y in enumerate(X):
                s = sum(Fraction(float(a)) * Fraction(float(b)) for a, b in zip(x, y))
                want = s > 0 and s * s >= c * c * nx[i] * ny[j]  # cos >= 1 - lim
                assert got[j] == want


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("d", [3, 97, 384])
def test_oracle_error_bound_holds(metric, d):
    """approx_values' err bounds the distance from the BLAS value to the exact one (what lets
    the oracle decide only the near cases exactly), on wide-ranged data and near-duplicates."""
    rng = np.random.default_rng(d)
    X = (rng.standard_normal((300, d)) * np.exp(rng.uniform(-6, 6, (300, 1)))).astype(np.float32)
    X[150:] = X[:150] + (1e-4 * np.abs(X[:150]) * rng.standard_normal((150, d))).astype(np.float32)
    Q = X[::7]
    v, err = approx_values(X, Q, metric)
    rows = np.repeat(np.arange(len(Q)), len(X))
    exact = pair_values(X, Q, rows, np.tile(np.arange(len(X)), len(Q)), metric).reshape(v.shape)
    slack = 8 * np.spacing(np.abs(exact)) if metric == "cosine" else 0.0  # cosine's own rounding
    assert (np.abs(v - exact) <= err[:, None] + slack).all()
