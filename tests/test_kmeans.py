"""k-means against a plain numpy Lloyd reference, a spherical reference and scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import make_blobs

import embedcluster as ec
from embedcluster import _core

from conftest import HAS_AMX, brute_argmin, gaussian_mixture


def numpy_lloyd(X, C0, n_iter, weights=None, spherical=False):
    """Plain Lloyd in float64: assign by exact brute force (conftest.brute_argmin: ties to the
    lower index, whatever the BLAS kernel), mean update, empty clusters keep their centre.
    Spherical: cosine assignment (largest dot product with the unit centres), normalised mean."""
    X = X.astype(np.float64)
    w = np.ones(len(X)) if weights is None else weights.astype(np.float64)
    C = C0.astype(np.float64)
    if spherical:
        Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
        C = C / np.linalg.norm(C, axis=1, keepdims=True)
    for _ in range(n_iter):
        lab = brute_argmin(C, Xn, "ip") if spherical else brute_argmin(C, X, "l2")
        for c in range(len(C)):
            m = lab == c
            if w[m].sum() > 0:
                if spherical:
                    s = (w[m, None] * Xn[m]).sum(0)
                    C[c] = s / np.linalg.norm(s)
                else:
                    C[c] = (w[m, None] * X[m]).sum(0) / w[m].sum()
    lab = brute_argmin(C, Xn, "ip") if spherical else brute_argmin(C, X, "l2")
    return C, lab


@pytest.mark.parametrize("d", [1, 3, 97])
def test_lloyd_equals_numpy_reference(kernel_set, d):
    X, _ = gaussian_mixture(1500, d, 6, 1.0, seed=d)
    C0 = X[:6].copy()
    km = ec.KMeans(6, init=C0, max_iter=10, tol=0).fit(X)
    C_ref, lab_ref = numpy_lloyd(X, C0, km.n_iter_)
    np.testing.assert_array_equal(km.labels_, lab_ref)
    np.testing.assert_allclose(km.cluster_centers_, C_ref, rtol=1e-5, atol=1e-5)


def test_weighted_lloyd_equals_numpy_reference():
    X, _ = gaussian_mixture(1200, 8, 5, 1.5, seed=1)
    w = np.random.default_rng(0).uniform(0.1, 3.0, len(X)).astype(np.float32)
    C0 = X[10:15].copy()
    km = ec.KMeans(5, init=C0, max_iter=8, tol=0).fit(X, sample_weight=w)
    C_ref, lab_ref = numpy_lloyd(X, C0, km.n_iter_, weights=w)
    np.testing.assert_array_equal(km.labels_, lab_ref)
    np.testing.assert_allclose(km.cluster_centers_, C_ref, rtol=1e-5, atol=1e-5)
    ref_inertia = (w * ((X.astype(np.float64) - C_ref[lab_ref]) ** 2).sum(1)).sum()
    assert km.inertia_ == pytest.approx(ref_inertia, rel=1e-6)


def test_integer_weights_equal_repeated_rows():
    X, _ = gaussian_mixture(300, 4, 3, 1.0, seed=2)
    reps = np.random.default_rng(1).integers(1, 4, len(X))
    C0 = X[:3].copy()
    a = ec.KMeans(3, init=C0, tol=0, max_iter=50).fit(X, sample_weight=reps)
    b = ec.KMeans(3, init=C0, tol=0, max_iter=50).fit(np.repeat(X, reps, axis=0))
    np.testing.assert_allclose(a.cluster_centers_, b.cluster_centers_, rtol=1e-5, atol=1e-5)
    assert a.inertia_ == pytest.approx(b.inertia_, rel=1e-6)


def test_spherical_equals_reference(kernel_set):
    X, _ = gaussian_mixture(1000, 32, 5, 0.3, seed=3, unit=True)
    X *= np.random.default_rng(0).uniform(0.5, 2.0, (len(X), 1)).astype(np.float32)  # norms must not matter
    C0 = X[:5].copy()
    km = ec.KMeans(5, init=C0, max_iter=6, tol=0, metric="cosine").fit(X)
    C_ref, lab_ref = numpy_lloyd(X, C0, km.n_iter_, spherical=True)
    np.testing.assert_array_equal(km.labels_, lab_ref)
    np.testing.assert_allclose(km.cluster_centers_, C_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(km.cluster_centers_, axis=1), 1.0, rtol=1e-6)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    ref_inertia = (1.0 - (Xn.astype(np.float64) * C_ref[lab_ref]).sum(1)).sum()
    assert km.inertia_ == pytest.approx(ref_inertia, rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inertia_close_to_sklearn_on_blobs(seed):
    X, _ = make_blobs(5000, n_features=20, centers=10, cluster_std=1.0, random_state=seed)
    X = X.astype(np.float32)
    ours = ec.KMeans(10, n_init=4, random_state=seed).fit(X)
    sk = SkKMeans(10, n_init=4, random_state=seed).fit(X)
    assert ours.inertia_ == pytest.approx(sk.inertia_, rel=0.01)


def test_same_init_same_result_as_sklearn():
    X, _ = make_blobs(3000, n_features=16, centers=8, random_state=0)
    X = X.astype(np.float32)
    C0 = _core.kmeans_init(X, 8, seed=0)
    ours = ec.KMeans(8, init=C0).fit(X)
    sk = SkKMeans(8, init=C0, n_init=1).fit(X)
    # Our labels are the exact assignment to our centres; scikit-learn assigns with float32
    # BLAS products, whose rounding depends on the CPU, so its labels may differ only for rows
    # nearly equidistant from two centres.
    np.testing.assert_array_equal(ours.labels_, brute_argmin(ours.cluster_centers_, X, "l2"))
    np.testing.assert_allclose(ours.cluster_centers_, sk.cluster_centers_, rtol=1e-4, atol=1e-4)
    differ = np.flatnonzero(ours.labels_ != sk.labels_)
    if len(differ):
        C = ours.cluster_centers_.astype(np.float64)
        d2 = ((X[differ, None, :].astype(np.float64) - C[None]) ** 2).sum(-1)
        own = d2[np.arange(len(differ)), ours.labels_[differ]]
        other = d2[np.arange(len(differ)), sk.labels_[differ]]
        assert (np.abs(other - own) <= 1e-4 * (own + (X[differ].astype(np.float64) ** 2).sum(1))).all()
    else:
        assert ours.n_iter_ == sk.n_iter_
    assert ours.inertia_ == pytest.approx(sk.inertia_, rel=1e-5)


def test_kmeanspp_quality_matches_sklearn_on_average():
    from sklearn.cluster import kmeans_plusplus

    X, _ = make_blobs(2000, n_features=10, centers=8, random_state=0)
    X = X.astype(np.float32)

    def potential(C):
        return ((X[:, None, :].astype(np.float64) - C[None]) ** 2).sum(-1).min(1).sum()

    ours = np.median([potential(_core.kmeans_init(X, 8, seed=s)) for s in range(20)])
    theirs = np.median([potential(kmeans_plusplus(X, 8, random_state=s)[0]) for s in range(20)])
    assert ours < 1.2 * theirs


def test_empty_cluster_is_repaired():
    X, _ = gaussian_mixture(400, 2, 3, 0.5, seed=4)
    C0 = np.vstack([X[:2], [[1e4, 1e4]]]).astype(np.float32)  # the far centre gets no points
    km = ec.KMeans(3, init=C0, max_iter=20).fit(X)
    assert len(np.unique(km.labels_)) == 3
    assert np.abs(km.cluster_centers_).max() < 1e3


def test_predict_transform_score_match_numpy():
    X, _ = gaussian_mixture(800, 12, 4, 1.0, seed=5)
    km = ec.KMeans(4, random_state=0).fit(X)
    Q = np.random.default_rng(1).standard_normal((50, 12)).astype(np.float32)
    D = np.sqrt(((Q[:, None, :].astype(np.float64) - km.cluster_centers_[None]) ** 2).sum(-1))
    np.testing.assert_array_equal(km.predict(Q), brute_argmin(km.cluster_centers_, Q, "l2"))
    np.testing.assert_allclose(km.transform(Q), D, rtol=1e-4, atol=1e-4)
    assert km.score(Q) == pytest.approx(-(D.min(1) ** 2).sum(), rel=1e-5)
    np.testing.assert_array_equal(km.predict(X), km.labels_)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_same_seed_identical_for_any_thread_count(metric):
    X, _ = gaussian_mixture(20000, 24, 12, 1.0, seed=6)  # > several accumulation ranges
    a = ec.KMeans(12, random_state=7, n_threads=1, metric=metric, n_init=2).fit(X)
    b = ec.KMeans(12, random_state=7, n_threads=2, metric=metric, n_init=2).fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    assert a.inertia_ == b.inertia_ and a.n_iter_ == b.n_iter_


def test_n_init_keeps_the_best_run():
    X, _ = make_blobs(2000, n_features=8, centers=12, random_state=3)
    X = X.astype(np.float32)
    best = ec.KMeans(12, n_init=5, random_state=0).fit(X).inertia_
    singles = [ec.KMeans(12, n_init=1, random_state=0).fit(X).inertia_]
    assert best <= singles[0] + 1e-6


def test_fewer_distinct_points_than_clusters_warns():
    from sklearn.exceptions import ConvergenceWarning

    X = np.repeat(np.eye(3, dtype=np.float32), 10, axis=0)
    with pytest.warns(ConvergenceWarning, match="distinct clusters"):
        km = ec.KMeans(5, random_state=0).fit(X)
    assert km.inertia_ == pytest.approx(0.0, abs=1e-6)


def test_faiss_backend_agrees():
    pytest.importorskip("faiss", reason="faiss-cpu not installed")
    X, _ = make_blobs(3000, n_features=16, centers=6, random_state=1)
    X = X.astype(np.float32)
    C0 = X[:6].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = ec.KMeans(6, init=C0, max_iter=30, backend="faiss").fit(X)
    n = ec.KMeans(6, init=C0, max_iter=30, tol=0).fit(X)
    assert f.backend_ == "faiss" and n.backend_ == "native"
    assert f.inertia_ == pytest.approx(n.inertia_, rel=1e-3)


def test_kmeans_parallel_init_quality_and_determinism():
    from sklearn.cluster import kmeans_plusplus

    X, _ = make_blobs(20000, n_features=16, centers=40, cluster_std=1.0, random_state=5)
    X = X.astype(np.float32)

    def potential(C):
        return ec.KMeans(40, init=C.astype(np.float32), max_iter=1, tol=0).fit(X).inertia_

    ours = [potential(_core.kmeans_init(X, 40, init="k-means||", seed=s)) for s in range(5)]
    ref = [potential(kmeans_plusplus(X, 40, random_state=s)[0]) for s in range(5)]
    assert np.median(ours) < 1.1 * np.median(ref)  # as good as k-means++ (here usually better)
    a = ec.KMeans(40, init="k-means||", random_state=3, n_threads=1).fit(X)
    b = ec.KMeans(40, init="k-means||", random_state=3, n_threads=2).fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)


def test_auto_init_picks_by_size():
    X, _ = make_blobs(2000, n_features=4, centers=5, random_state=0)
    X = X.astype(np.float32)
    np.testing.assert_array_equal(ec.KMeans(5, random_state=1).fit(X).cluster_centers_,
                                  ec.KMeans(5, init="k-means++", random_state=1).fit(X).cluster_centers_)


def test_every_kernel_set_gives_bit_identical_results():
    # fp32 kernels and the bf16 kernel (inputs rounded to bf16) must agree exactly: every
    # decision within the kernel's error bound is re-checked in fp64.
    X, _ = gaussian_mixture(6000, 64, 16, 0.05, seed=9, unit=True)
    X = np.vstack([X, X[:50]])  # exact duplicates: ties everywhere
    out = {}
    try:
        for name in _core.build_info()["kernels_available"]:
            _core.select_kernels(name)
            km = ec.KMeans(16, init="k-means||", random_state=0).fit(X)
            db = ec.DBSCAN(eps=0.2, min_samples=8).fit(X)
            d, i = ec.NearestNeighbors(n_neighbors=10).fit(X).kneighbors()
            out[name] = (km.cluster_centers_, km.labels_, km.inertia_, db.labels_, i, d)
    finally:
        _core.select_kernels("auto")
    ref = out.pop("generic")
    for name, res in out.items():
        for a, b in zip(ref, res):
            np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("init", ["k-means++", "k-means||"])
def test_a_seed_gives_the_same_fit_on_every_kernel_set(metric, init):
    """k-means++ and k-means|| draw rows with probabilities from their distances, so rounded
    products would move the draws and, through them, the local optimum (a Zen 5 picks bf16, a
    Sapphire Rapids fp32: one seed, two answers). Seeding reads exact fp64 distances wherever a
    tile's error bound cannot rule a trial centre out, so every kernel set, the generic one
    included, must give the same bits. On structureless data every draw counts, and rows far
    from the origin (an offset, as in ReLU features) make the rounding matter most."""
    names = list(_core.build_info()["kernels_available"])
    if HAS_AMX:
        names.append("amx")
    if len(names) < 2:
        pytest.skip(f"this build has one kernel set ({names}): nothing to compare")
    X = (np.abs(np.random.default_rng(11).standard_normal((3000, 48))) + 2.0).astype(np.float32)
    out = {}
    try:
        for name in names:
            _core.select_kernels(name)
            seeds = _core.kmeans_init(X, 24, metric=metric, init=init, seed=5)
            km = ec.KMeans(24, init=init, metric=metric, random_state=5, n_init=2).fit(X)
            out[name] = (seeds, km.cluster_centers_, km.labels_, km.inertia_)
    finally:
        _core.select_kernels("auto")
    ref = out.pop(names[0])
    for name, res in out.items():
        for a, b in zip(ref, res):
            np.testing.assert_array_equal(a, b, err_msg=f"{names[0]} vs {name}")


def _fit_both(X, k, C0, movers=-1, **kw):
    out = {}
    for prune in (False, True):
        out[prune] = _core.kmeans_fit(X, k, init=C0, tol=0.0, prune=prune, movers=movers, **kw)
    return out[False], out[True]


def _grid_with_ties(rng, n, d):
    """Small integers: many exact distance ties between rows and centres, and duplicate rows."""
    X = rng.integers(-3, 4, size=(n, d)).astype(np.float32)
    return np.vstack([X, X[: n // 4]])


def _pruning_case(rng, data, k, n_ties, mixture):
    """Rows, k initial centres and weights for a pruning test: a small-integer grid (data
    "ties", n_ties rows) or gaussian_mixture(**mixture), with random weights ("weighted") or
    three identical initial centres ("empty": two of them lose every row and are repaired)."""
    X = _grid_with_ties(rng, n_ties, 5) if data == "ties" else gaussian_mixture(**mixture)[0]
    C0 = X[rng.choice(len(X), k, replace=False)].copy()
    w = rng.uniform(0.0, 3.0, len(X)).astype(np.float32) if data == "weighted" else None
    if data == "empty":
        C0[1] = C0[0]
        C0[2] = C0[0]
    return X, C0, w


@pytest.mark.parametrize("movers", [-1, 0, 3])
@pytest.mark.parametrize("k", [17, 48])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("data", ["loose", "ties", "weighted", "empty"])
def test_pruning_is_bit_identical_to_plain_lloyd(kernel_set, metric, data, k, movers):
    """The bound-based pruning skips distance rows but must return exactly plain Lloyd's result
    (labels, centres, inertia, iterations), on loose clusters, exact ties and duplicates,
    weights, and empty-cluster repairs, for two k; with the mobile group chosen by the cost
    model, off, or forced to the 3 centres that moved most in every pass (group changes each
    pass: bounds merged both ways)."""
    X, C0, w = _pruning_case(np.random.default_rng(7), data, k, 1500, dict(n=3000, d=24, k=40, spread=3.0, seed=3))
    a, b = _fit_both(X, k, C0, movers=movers, max_iter=40, metric=metric, sample_weight=w)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centers, b.centers)
    assert a.inertia == b.inertia and a.n_iter == b.n_iter
    assert a.computed_fraction == 1.0
    assert b.computed_fraction < 0.9, b.computed_fraction  # the bounds did skip rows
    if data == "empty":
        assert a.n_empty_repaired >= 1 and a.n_empty_repaired == b.n_empty_repaired
    if movers == 0:
        assert b.mover_fraction == 0.0
    if movers == 3 and data != "ties":
        assert b.mover_fraction > 0.0  # the mover stage ran


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("data", ["blobs", "ties", "weighted", "empty"])
def test_local_stage_is_bit_identical_to_plain_lloyd(kernel_set, metric, data):
    """Several centres per cluster (k=200 over 40 clusters): a row's bounds fail on the close
    centres of its own cluster, and the local stage picks its centre among the few that its
    own centre's neighbour list leaves (Elkan's lemma). The fit must equal plain Lloyd bit for
    bit, on ties and duplicates, weights and empty-cluster repairs, and the float64 numpy Lloyd
    (independent oracle) on the blobs; there few rows need products with every centre."""
    k = 200
    X, C0, w = _pruning_case(np.random.default_rng(5), data, k, 3000, dict(n=4000, d=16, k=40, spread=1.0, seed=4))
    plain, pruned = _fit_both(X, k, C0, max_iter=20, metric=metric, sample_weight=w)
    np.testing.assert_array_equal(plain.labels, pruned.labels)
    np.testing.assert_array_equal(plain.centers, pruned.centers)
    assert plain.inertia == pruned.inertia and plain.n_iter == pruned.n_iter
    assert plain.n_empty_repaired == pruned.n_empty_repaired
    if data == "blobs":
        assert pruned.computed_fraction < 0.3, pruned.computed_fraction
        C_ref, lab_ref = numpy_lloyd(X, C0, 20, spherical=metric == "cosine")
        np.testing.assert_array_equal(pruned.labels, lab_ref)
        np.testing.assert_allclose(pruned.centers, C_ref, rtol=1e-5, atol=1e-5)


def _sphere_mixture(n, d, k, noise, seed):
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((k, d))
    C /= np.linalg.norm(C, axis=1, keepdims=True)
    X = C[rng.integers(0, k, n)] + noise * rng.standard_normal((n, d))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_mobile_group_is_exact_where_the_cost_model_picks_it(kernel_set, metric):
    """Many overlapping clusters on the sphere started from random rows: some centres keep
    jumping while most settle, so the cost model turns the mover stage on. The fit must equal
    plain Lloyd bit for bit and a float64 numpy Lloyd (independent oracle)."""
    X = _sphere_mixture(6000, 16, 100, 0.25, seed=1)
    k = 100
    C0 = X[np.random.default_rng(0).choice(len(X), k, replace=False)].copy()
    plain, pruned = _fit_both(X, k, C0, max_iter=20, metric=metric)
    assert pruned.mover_fraction > 0.05, pruned.mover_fraction
    off = _core.kmeans_fit(X, k, init=C0, tol=0.0, max_iter=20, metric=metric, movers=0)
    for other in (pruned, off):
        np.testing.assert_array_equal(plain.labels, other.labels)
        np.testing.assert_array_equal(plain.centers, other.centers)
    assert pruned.computed_fraction < off.computed_fraction
    C_ref, lab_ref = numpy_lloyd(X, C0, 20, spherical=metric == "cosine")
    np.testing.assert_array_equal(pruned.labels, lab_ref)
    np.testing.assert_allclose(pruned.centers, C_ref, rtol=1e-5, atol=1e-5)


def test_movers_argument_is_checked():
    X = np.arange(80, dtype=np.float32).reshape(40, 2)
    with pytest.raises(ValueError, match="movers"):
        _core.kmeans_fit(X, 2, movers=-2)


def test_pruned_lloyd_equals_numpy_reference():
    X, _ = gaussian_mixture(2000, 16, 30, spread=2.5, seed=11)
    C0 = X[np.random.default_rng(0).choice(len(X), 24, replace=False)].copy()
    r = _core.kmeans_fit(X, 24, init=C0, max_iter=15, tol=0.0, prune=True)
    C_ref, lab_ref = numpy_lloyd(X, C0, 15)
    np.testing.assert_allclose(r.centers, C_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(r.labels, lab_ref)
    assert r.computed_fraction < 1.0


def test_prune_argument_is_checked():
    X = np.zeros((40, 2), np.float32) + np.arange(40, dtype=np.float32)[:, None]
    with pytest.raises(ValueError, match="prune"):
        _core.kmeans_fit(X, 2, prune="yes")
    with pytest.raises(ValueError, match="prune"):
        _core.kmeans_fit(X, 2, prune=1)


def test_estimator_prune_parameter():
    X, _ = gaussian_mixture(2000, 8, 20, spread=2.0, seed=5)
    on = ec.KMeans(20, prune=True, random_state=0, tol=0).fit(X)
    off = ec.KMeans(20, prune=False, random_state=0, tol=0).fit(X)
    np.testing.assert_array_equal(on.labels_, off.labels_)
    np.testing.assert_array_equal(on.cluster_centers_, off.cluster_centers_)
    assert off.computed_fraction_ == 1.0 and on.computed_fraction_ < 1.0
    assert off.mover_fraction_ == 0.0 and 0.0 <= on.mover_fraction_ < 1.0
    with pytest.raises(ValueError, match="prune"):
        ec.KMeans(4, prune="sometimes").fit(X)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_non_finite_values_are_reported_with_their_place(bad, metric):
    """The native fit checks finiteness in its own pass over the data (the estimator leaves
    it to it): the first bad value's row and column are named, whichever thread saw it."""
    X = np.random.default_rng(0).standard_normal((5000, 8)).astype(np.float32)
    X[4321, 5] = bad
    X[4400, 1] = bad
    for fit in (lambda: ec.KMeans(20, random_state=0).fit(X),
                lambda: _core.kmeans_fit(X, 20, metric=metric),
                lambda: _core.kmeans_init(X, 20),
                lambda: _core.kmeans_assign(X[:3].copy() * 0 + 1, X)):
        with pytest.raises(ValueError, match=r"NaN or infinity \(first at row 4321, column 5\)"):
            fit()


def test_tile_rate_helper_reports_a_rate_for_each_precision():
    """The benchmark helper behind "Rates against the peaks": positive times and rates, the
    kernel set named, flops = 2 rows cols d, and bad shapes rejected."""
    for prec in ("auto", "fp32"):
        r = _core.tile_rate(300, 70, 33, precision=prec)
        assert r.seconds > 0 and r.kernels in _core.build_info()["kernels_available"]
        assert r.gflops == pytest.approx(2 * 300 * 70 * 33 / r.seconds / 1e9)
    assert _core.tile_rate(300, 70, 33, precision="fp32").kernels != "avx512bf16"
    with pytest.raises(ValueError, match="rows, cols and d"):
        _core.tile_rate(0, 70, 33)
    with pytest.raises(ValueError, match="precision"):
        _core.tile_rate(10, 10, 10, precision="fp16")
