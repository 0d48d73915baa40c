"""DBSCAN against an exact brute force (counts, core points, clusters of core points, noise,
the border rule: conftest's oracles, whose eps decisions do not depend on the BLAS kernel) and
scikit-learn (an independent implementation, which may differ only on pairs within rounding of
eps), in L2 and cosine."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import DBSCAN as SkDBSCAN

import embedcluster as ec
from embedcluster import _core

from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from conftest import approx_values, brute_argmin, brute_within, gaussian_mixture


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two labelings induce the same partition (a bijection between labels)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def near_eps_rows(X, limit, metric, rel=1e-9):
    """Rows with a pair whose value lies within a relative `rel` of the limit (or within the
    BLAS bound): where scikit-learn's rounding may decide otherwise than exact arithmetic."""
    v, err = approx_values(X, X, metric)
    return (np.abs(v - limit) <= rel * abs(limit) + err[:, None]).any(1)


def dbscan_oracle(X, eps, min_samples, metric):
    """Exact DBSCAN facts: neighbour counts, core mask, a component id per core point, and the
    within-eps mask (pairs with value <= eps^2 for L2, <= eps for cosine)."""
    limit = eps * eps if metric == "l2" else eps
    within = brute_within(X, X, limit, metric)
    counts = within.sum(1)
    core = counts >= min_samples
    idx = np.flatnonzero(core)
    _, comp = connected_components(csr_matrix(within[np.ix_(idx, idx)]), directed=False)
    return counts, core, comp, within, limit


def check_against_oracles(X, eps, min_samples, metric, est):
    metric = "l2" if metric in ("euclidean", "l2") else "cosine"
    counts, is_core, comp, within, limit = dbscan_oracle(X, eps, min_samples, metric)
    core = est.core_sample_indices_
    np.testing.assert_array_equal(core, np.flatnonzero(is_core))
    assert same_partition(est.labels_[core], comp)
    # Noise: non-core points with no core point within eps.
    np.testing.assert_array_equal(est.labels_ == -1, ~is_core & ~(within & is_core[None, :]).any(1))
    # Border rule: the cluster of the nearest core point (exact, ties to the lower index).
    border = np.flatnonzero(~is_core & (est.labels_ >= 0))
    nearest = brute_argmin(X, X[border], metric, mask=within[border] & is_core[None, :])
    np.testing.assert_array_equal(est.labels_[border], est.labels_[nearest])
    # scikit-learn, an independent implementation: the same core points and partition except
    # where its float64 BLAS rounding meets a pair within rounding of eps.
    sk_metric = "euclidean" if metric == "l2" else "cosine"
    sk = SkDBSCAN(eps=eps, min_samples=min_samples, metric=sk_metric, algorithm="brute").fit(X.astype(np.float64))
    sk_core = np.zeros(len(X), bool)
    sk_core[sk.core_sample_indices_] = True
    if (sk_core != is_core).any():
        assert near_eps_rows(X, limit, metric)[sk_core != is_core].all()
    else:
        assert same_partition(est.labels_[core], sk.labels_[core])
    return sk


@pytest.mark.parametrize("d,eps,min_samples", [(2, 0.35, 5), (16, 4.0, 8), (97, 12.0, 10)])
def test_l2_matches_sklearn(kernel_set, d, eps, min_samples):
    X, _ = gaussian_mixture(1500, d, 5, 0.5 if d == 2 else 1.0, seed=d, noise_frac=0.08)
    est = ec.DBSCAN(eps=eps, min_samples=min_samples).fit(X)
    sk = check_against_oracles(X, eps, min_samples, "euclidean", est)
    assert est.n_clusters_ >= 2 and (est.labels_ == -1).sum() > 0  # the data really has both
    assert est.n_clusters_ == len(set(sk.labels_)) - 1


@pytest.mark.parametrize("d,eps", [(8, 0.02), (64, 0.05)])
def test_cosine_matches_sklearn(kernel_set, d, eps):
    X, _ = gaussian_mixture(1500, d, 6, 0.03 if d == 64 else 0.05, seed=d, noise_frac=0.05, unit=True)
    X *= np.random.default_rng(1).uniform(0.5, 3.0, (len(X), 1)).astype(np.float32)
    est = ec.DBSCAN(eps=eps, min_samples=6, metric="cosine").fit(X)
    check_against_oracles(X, eps, 6, "cosine", est)
    assert est.n_clusters_ >= 2 and (est.labels_ == -1).sum() > 0


@pytest.mark.parametrize("metric,eps,noise", [("l2", 4.0, 0.05), ("l2", 6.0, 0.3), ("cosine", 0.02, 0.05),
                                               ("cosine", 0.05, 0.3)])
def test_pruning_does_not_change_the_result(metric, eps, noise):
    # Wide and tight clusters, little and much noise: the ball and projection bounds and the
    # outlier tiles may only skip work, never change a count or a label.
    X, _ = gaussian_mixture(20000, 24, 20, 0.6 if metric == "l2" else 0.02, seed=3, noise_frac=noise,
                            unit=metric == "cosine")
    a = _core.dbscan_fit(X, eps, 6, metric, prune=True)
    b = _core.dbscan_fit(X, eps, 6, metric, prune=False)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.counts, b.counts)
    assert a.n_clusters >= 2
    assert a.pairs_computed_pass1 < a.tile_pairs / 2  # pruning skipped work on clustered data


def test_counts_equal_brute_force():
    X, _ = gaussian_mixture(800, 5, 4, 1.0, seed=9, noise_frac=0.1)
    r = _core.dbscan_fit(X, 1.5, 5, "l2")
    ref = brute_within(X, X, 1.5 * 1.5, "l2").sum(1)
    np.testing.assert_array_equal(r.counts, ref)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_counts_near_eps_equal_brute_force(kernel_set, metric):
    """Hundreds of pairs within 1e-6 relative of eps: inside the bf16 tiles' error band, so
    the fp32 narrowing and the fp64 re-check decide them; counts must equal the float64 brute
    force on every kernel set."""
    rng = np.random.default_rng(13)
    d, eps = 48, 0.3
    anchors = rng.standard_normal((6, d)) * 3.0 + 5.0
    dirs = rng.standard_normal((600, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    rel = rng.choice([-1e-6, -1e-7, 0.0, 1e-7, 1e-6], 600)
    if metric == "l2":
        pts = anchors[np.arange(600) % 6] + dirs * (eps * (1.0 + rel))[:, None]
    else:  # rows at cosine distance ~eps from their anchor
        a = anchors[np.arange(600) % 6]
        a_unit = a / np.linalg.norm(a, axis=1, keepdims=True)
        ortho = dirs - (dirs * a_unit).sum(1, keepdims=True) * a_unit
        ortho /= np.linalg.norm(ortho, axis=1, keepdims=True)
        theta = np.arccos(1.0 - eps * (1.0 + rel))
        pts = np.cos(theta)[:, None] * a_unit + np.sin(theta)[:, None] * ortho
    X = np.vstack([anchors, pts]).astype(np.float32)
    r = _core.dbscan_fit(X, eps, 3, metric)
    limit = eps * eps if metric == "l2" else eps
    ref = brute_within(X, X, limit, metric).sum(1)
    np.testing.assert_array_equal(r.counts, ref)
    assert (np.abs(approx_values(X, X[:6], metric)[0] - limit) < 1e-5 * limit).sum() > 100  # really near eps


def test_points_exactly_at_eps_are_neighbours():
    X = np.array([[0, 0], [1, 0], [2, 0], [3, 0], [10, 10]], dtype=np.float32)
    est = ec.DBSCAN(eps=1.0, min_samples=3).fit(X)
    np.testing.assert_array_equal(est.core_sample_indices_, [1, 2])
    np.testing.assert_array_equal(est.labels_, [0, 0, 0, 0, -1])


def test_duplicates_and_min_samples_one():
    X = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0]], np.float32), 4, axis=0)
    est = ec.DBSCAN(eps=0.1, min_samples=1).fit(X)
    np.testing.assert_array_equal(est.labels_, [0, 0, 0, 0, 1, 1, 1, 1])
    assert len(est.core_sample_indices_) == 8


def test_thread_count_does_not_change_results():
    X, _ = gaussian_mixture(8000, 16, 10, 0.8, seed=4, noise_frac=0.05)
    a = ec.DBSCAN(eps=3.0, min_samples=8, n_threads=1).fit(X)
    b = ec.DBSCAN(eps=3.0, min_samples=8, n_threads=2).fit(X)
    np.testing.assert_array_equal(a.labels_, b.labels_)
    np.testing.assert_array_equal(a.core_sample_indices_, b.core_sample_indices_)


def test_predict_nearest_core_within_eps():
    X, _ = gaussian_mixture(1000, 3, 4, 0.4, seed=2, noise_frac=0.05)
    est = ec.DBSCAN(eps=0.6, min_samples=5).fit(X)
    Q = np.random.default_rng(0).uniform(X.min(), X.max(), (200, 3)).astype(np.float32)
    pred = est.predict(Q)
    comp = est.components_
    nearest = brute_argmin(comp, Q, "l2")  # exact, ties to the lower index
    inside = brute_within(comp, Q, 0.6 * 0.6, "l2")[np.arange(len(Q)), nearest]
    expected = np.where(inside, est.labels_[est.core_sample_indices_][nearest], -1)
    np.testing.assert_array_equal(pred, expected)
    assert (pred == -1).any() and (pred >= 0).any()


def test_faiss_backend_agrees_on_core_points():
    pytest.importorskip("faiss", reason="faiss-cpu not installed")
    X, _ = gaussian_mixture(1500, 8, 5, 0.6, seed=5, noise_frac=0.05)
    a = ec.DBSCAN(eps=2.0, min_samples=6).fit(X)
    b = ec.DBSCAN(eps=2.0, min_samples=6, backend="faiss").fit(X)
    np.testing.assert_array_equal(a.core_sample_indices_, b.core_sample_indices_)
    np.testing.assert_array_equal(a.labels_, b.labels_)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_rows_counted_without_products_equal_brute_force(kernel_set, metric):
    """Tight clusters spanning several tiles: rows whose distance bound to another tile's whole
    ball is within eps are counted without products; counts and labels must still equal the
    brute force and scikit-learn."""
    X, _ = gaussian_mixture(3000, 16, 2, spread=0.05, seed=17, noise_frac=0.02, unit=True)
    eps = 0.6 if metric == "l2" else 0.2
    r = _core.dbscan_fit(X, eps, 5, metric)
    assert r.rows_all_neighbours_pass1 > 0  # the shortcut ran
    limit = eps * eps if metric == "l2" else eps
    ref = brute_within(X, X, limit, metric).sum(1)
    np.testing.assert_array_equal(r.counts, ref)
    sk = SkDBSCAN(eps=eps, min_samples=5, metric="euclidean" if metric == "l2" else "cosine").fit(X)
    sk_core = np.isin(np.arange(len(X)), sk.core_sample_indices_)
    assert near_eps_rows(X, limit, metric)[sk_core != (r.is_core == 1)].all()  # rounding of eps only


@pytest.mark.parametrize("min_samples", [4, 9])
def test_chains_spanning_many_tiles_match_sklearn(kernel_set, min_samples):
    """Long thin chains: each cluster spans many tiles and is joined only through core pairs
    between tiles, in many steps; points set off the chains are border points or noise.
    Labels, core points and the border rule must match scikit-learn and the brute force."""
    rng = np.random.default_rng(23)
    chains = []
    for _ in range(3):
        steps = rng.standard_normal((1400, 8)) * 0.06
        chains.append(np.cumsum(steps, axis=0) + rng.uniform(-6, 6, 8))
    X = np.concatenate(chains)
    off = X[rng.choice(len(X), 250, replace=False)] + rng.standard_normal((250, 8)) * 0.12
    noise = rng.uniform(-8, 8, (100, 8))
    X = np.concatenate([X, off, noise]).astype(np.float32)[rng.permutation(len(X) + 350)]
    est = ec.DBSCAN(eps=0.3, min_samples=min_samples).fit(X)
    sk = check_against_oracles(X, 0.3, min_samples, "euclidean", est)
    assert est.n_clusters_ == len(set(sk.labels_)) - 1
    border = np.setdiff1d(np.flatnonzero(est.labels_ >= 0), est.core_sample_indices_)
    assert len(border) > 10 and (est.labels_ == -1).sum() > 10  # the data has both


def sphere_mixture(n: int, d: int, k: int, sigma: float, noise_frac: float, seed: int) -> np.ndarray:
    """Rows on the unit sphere: k clusters (centre + Gaussian noise, renormalised) and a share
    of uniform rows, which lie about sqrt(2) from everything, like unrelated embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    n_noise = int(n * noise_frac)
    X = np.vstack([centres[rng.integers(0, k, n - n_noise)] + rng.standard_normal((n - n_noise, d)) * sigma,
                   rng.standard_normal((n_noise, d))])
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X[rng.permutation(n)].astype(np.float32)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("eps_l2", [0.75, 1.1, 1.15])
def test_inner_product_bounds_on_the_sphere_equal_brute_force(kernel_set, metric, eps_l2):
    """Normalised rows, as embeddings usually are: the bounds that use the rows' norms prove
    uniform rows and other clusters' tiles apart. With eps near the distance between unrelated
    rows (sqrt(2)) many pairs lie close to eps on both sides; every count must equal the brute
    force, and the result the unpruned run."""
    X = sphere_mixture(4000, 48, 8, 0.09, 0.25, seed=31)
    eps = eps_l2 if metric == "l2" else eps_l2 ** 2 / 2  # the same neighbourhoods on the sphere
    r = _core.dbscan_fit(X, eps, 12, metric)
    assert r.rows_pruned_inner_product_pass1 > 0  # the bounds ran
    limit = eps * eps if metric == "l2" else eps
    np.testing.assert_array_equal(r.counts, brute_within(X, X, limit, metric).sum(1))
    plain = _core.dbscan_fit(X, eps, 12, metric, prune=False)
    np.testing.assert_array_equal(r.labels, plain.labels)
    np.testing.assert_array_equal(r.is_core, plain.is_core)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_values_rounded_the_most_by_bf16_equal_brute_force(kernel_set, metric):
    """Every coordinate just below a bf16 rounding midpoint (1 + 2^-8 - 2^-20 rounds to 1, a
    relative error of 2^-8, the most bf16 can make), so the rounding errors of a pair add up
    instead of cancelling: duplicates at distance 0 get the largest tile error there is. A bound
    that assumed half of bf16's real rounding dropped these pairs; counts must equal the brute
    force."""
    rng = np.random.default_rng(41)
    a = np.float32(1 + 2 ** -8 - 2 ** -20)
    signs = rng.choice([-1.0, 1.0], (30, 16)).astype(np.float32)
    X = np.repeat(signs * a, 2, axis=0)  # each row twice
    X[::7] *= np.float32(1 + 2 ** -7)  # some rows off the midpoint, exactly representable
    eps = 0.1 if metric == "l2" else 1e-4
    r = _core.dbscan_fit(X, eps, 2, metric)
    limit = eps * eps if metric == "l2" else eps
    ref = brute_within(X, X, limit, metric).sum(1)
    assert (ref >= 2).sum() > 20  # the duplicates are neighbours
    np.testing.assert_array_equal(r.counts, ref)
    sk = SkDBSCAN(eps=eps, min_samples=2, metric="euclidean" if metric == "l2" else "cosine").fit(X)
    sk_core = np.isin(np.arange(len(X)), sk.core_sample_indices_)
    assert near_eps_rows(X, limit, metric)[sk_core != (r.is_core == 1)].all()  # rounding of eps only


# ---------------------------------------------------------------- eps="auto" and the eps warning

def blobs_and_uniform_noise(n, d, k, noise_frac, seed):
    """Well-separated Gaussian blobs (standard deviation 0.5; centres farther apart than a blob's
    diameter, 2 x 0.5 x sqrt(d), plus 4) plus uniform noise over a box around them:
    (X float32, blob label or -1 for a noise row)."""
    rng = np.random.default_rng(seed)
    while True:
        centres = rng.uniform(-10, 10, (k, d))
        gaps = np.linalg.norm(centres[:, None] - centres[None], axis=2)[np.triu_indices(k, 1)]
        if gaps.min() > np.sqrt(d) + 4:
            break
    n_noise = int(n * noise_frac)
    y = rng.integers(0, k, n - n_noise)
    X = np.vstack([centres[y] + 0.5 * rng.standard_normal((n - n_noise, d)), rng.uniform(-12, 12, (n_noise, d))])
    return X.astype(np.float32), np.r_[y, -np.ones(n_noise, np.int64)]


@pytest.mark.parametrize("d,k,noise_frac,min_samples,metric", [
    (2, 5, 0.1, 5, "euclidean"), (2, 4, 0.3, 10, "euclidean"), (16, 5, 0.1, 5, "euclidean"),
    (64, 8, 0.2, 8, "euclidean"), (32, 6, 0.15, 5, "cosine")])
def test_auto_eps_recovers_blobs_in_uniform_noise(d, k, noise_frac, min_samples, metric):
    from sklearn.metrics import adjusted_rand_score

    X, y = blobs_and_uniform_noise(1500, d, k, noise_frac, seed=d + k)
    if metric == "cosine":  # the same blobs on the unit sphere (their centres point apart)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    est = ec.DBSCAN(eps="auto", min_samples=min_samples, metric=metric).fit(X)
    blob = y >= 0
    assert est.n_clusters_ == k
    assert adjusted_rand_score(y[blob], est.labels_[blob]) > 0.95
    assert (est.labels_[~blob] == -1).mean() > 0.8  # the uniform rows stay noise
    # The same eps in scikit-learn gives the same clustering (an independent DBSCAN).
    sk = SkDBSCAN(eps=est.eps_, min_samples=min_samples, metric=metric, algorithm="brute").fit(X.astype(np.float64))
    assert adjusted_rand_score(sk.labels_, est.labels_) > 0.99


@pytest.mark.parametrize("metric,min_samples", [("euclidean", 5), ("cosine", 7), ("euclidean", 1)])
def test_auto_eps_curve_is_the_brute_force_k_distance(metric, min_samples):
    from sklearn.neighbors import NearestNeighbors as SkNN

    X, _ = gaussian_mixture(600, 12, 4, 1.0, seed=5, noise_frac=0.1)
    est = ec.DBSCAN(eps="auto", min_samples=min_samples, metric=metric).fit(X)
    k = max(min_samples - 1, 1)  # the point itself counts towards min_samples
    dist, _ = SkNN(n_neighbors=k, metric=metric, algorithm="brute").fit(X.astype(np.float64)).kneighbors()
    np.testing.assert_allclose(est.k_distances_, np.sort(dist[:, -1]), rtol=1e-5, atol=1e-6)  # each point left out
    assert np.abs(est.k_distances_ - est.eps_).min() <= 1e-5 * est.eps_  # eps_ is a value of the curve
    if min_samples > 1:  # at eps_ the points whose k-distance is <= eps_ are core (what the curve means)
        assert len(est.core_sample_indices_) == int((est.k_distances_ <= est.eps_).sum())


def test_knee_of_a_hand_made_curve():
    from embedcluster.cluster._eps import auto_eps, knee_of_sorted

    # 80 points rising by 0.01, then 20 rising by 1.0: the corner is the 80th point (index 79).
    curve = np.r_[0.01 * np.arange(80), 0.79 + np.arange(1, 21, dtype=float)]
    assert knee_of_sorted(curve) == 79 and auto_eps(curve) == pytest.approx(0.79)
    assert knee_of_sorted(np.ones(10)) == 9  # flat: no knee, the whole curve
    assert auto_eps(np.zeros(10)) > 0  # all duplicates: a positive eps that still joins them


def test_numeric_eps_is_kept_and_predict_uses_eps_():
    X, _ = gaussian_mixture(400, 4, 3, 0.5, seed=2)
    est = ec.DBSCAN(eps=1.0, min_samples=5).fit(X)
    assert est.eps_ == 1.0 and est.k_distances_ is None
    auto = ec.DBSCAN(min_samples=5).fit(X)  # the default is "auto"
    assert auto.get_params()["eps"] == "auto" and auto.k_distances_ is not None
    np.testing.assert_array_equal(auto.predict(X)[auto.core_sample_indices_], auto.labels_[auto.core_sample_indices_])


def test_auto_eps_needs_more_rows_than_min_samples():
    with pytest.raises(ValueError, match="n_samples=4"):
        ec.DBSCAN(eps="auto", min_samples=5).fit(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match="eps"):
        ec.DBSCAN(eps="big").fit(np.eye(40, dtype=np.float32))


def test_eps_warning_says_which_way_to_move_eps():
    import warnings

    X, y = blobs_and_uniform_noise(600, 8, 4, 0.1, seed=1)
    with pytest.warns(ec.cluster.EpsWarning, match=r"noise \(100%\) at eps=0.01.*raise eps.*eps='auto'"):
        ec.DBSCAN(eps=0.01).fit(X)
    with pytest.warns(ec.cluster.EpsWarning, match=r"in one cluster at eps=1000.*lower eps.*eps='auto'"):
        ec.DBSCAN(eps=1000.0).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ec.cluster.EpsWarning)
        ec.DBSCAN(eps="auto").fit(X)  # the blobs: no warning
        ec.DBSCAN(eps=0.01).fit(X[:19])  # too few points to judge
    # eps="auto" on data with no density gap (one Gaussian): the advice gives an eps to try.
    one = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
    with pytest.warns(ec.cluster.EpsWarning, match=r"knee of the k-distance curve \(eps='auto'\).*at eps=\S+ half "
                      r"the points are core.*min_samples.*embedcluster.KMeans"):
        est = ec.DBSCAN().fit(one)
    with pytest.warns(ec.cluster.EpsWarning, match=f"at eps={np.median(est.k_distances_):.4g} half the points"):
        ec.DBSCAN().fit(one)


def test_cli_eps_auto_and_the_warning_in_flags(tmp_path, capsys):
    import json

    from embedcluster.cli import main

    X, _ = blobs_and_uniform_noise(600, 8, 4, 0.1, seed=1)
    np.save(tmp_path / "z.npy", X)
    out = str(tmp_path / "labels.npy")
    assert main(["cluster", str(tmp_path / "z.npy"), "--algorithm", "dbscan", "--out", out, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    ref = ec.DBSCAN(eps="auto").fit(X)
    assert res["eps_auto"] is True and res["eps"] == ref.eps_ and res["n_clusters"] == 4
    np.testing.assert_array_equal(np.load(out), ref.labels_)
    assert main(["cluster", str(tmp_path / "z.npy"), "--algorithm", "dbscan", "--eps", "auto", "--out", out]) == 0
    cap = capsys.readouterr()
    assert f"DBSCAN eps {ref.eps_:.4g} (--eps auto" in cap.out and cap.err == ""
    assert main(["cluster", str(tmp_path / "z.npy"), "--algorithm", "dbscan", "--eps", "0.01", "--out", out]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: DBSCAN labelled 600 of 600 points noise") and "raise --eps" in err
    assert "--eps auto" in err and "eps=" not in err.replace("--eps=", "")
    assert main(["cluster", str(tmp_path / "z.npy"), "--algorithm", "dbscan", "--eps", "big", "--out", out]) == 2
    assert "'big' should be 'auto' or a finite number > 0" in capsys.readouterr().err


def test_auto_eps_on_a_sample_of_queries_is_the_brute_force_curve_of_those_rows(monkeypatch):
    """Above AUTO_EPS_QUERIES rows the curve is that of a sample of rows, each searched against
    all rows: those rows' brute-force k-distances."""
    import embedcluster.cluster._eps as eps_module
    from sklearn.neighbors import NearestNeighbors as SkNN

    X, _ = gaussian_mixture(900, 6, 3, 0.7, seed=9, noise_frac=0.1)
    X[10:13] = X[20]  # duplicates: a query's own row may tie with them at 0
    monkeypatch.setattr(eps_module, "AUTO_EPS_QUERIES", 300)
    monkeypatch.setattr(eps_module.core_distances, "__defaults__", (300,))
    est = ec.DBSCAN(eps="auto", min_samples=6).fit(X)
    assert est.k_distances_.shape == (300,)
    dist, _ = SkNN(n_neighbors=5).fit(X.astype(np.float64)).kneighbors()  # each row left out
    rows = np.sort(np.random.default_rng(0).choice(900, 300, replace=False))
    np.testing.assert_allclose(est.k_distances_, np.sort(dist[rows, -1]), rtol=1e-5, atol=1e-6)


def test_run_with_dbscan_prints_eps_and_the_warning_in_flags(tmp_path, capsys):
    import json

    from embedcluster.cli import main

    X, _ = blobs_and_uniform_noise(400, 8, 4, 0.1, seed=3)
    np.save(tmp_path / "x.npy", X)
    args = ["run", str(tmp_path / "x.npy"), "--algorithm", "dbscan", "--no-probe", "--no-report", "--no-normalize",
            "--no-progress"]
    assert main(args + ["--out", str(tmp_path / "a"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    ref = ec.DBSCAN(eps="auto").fit(X)
    assert res["eps_auto"] is True and res["eps"] == ref.eps_ and res["n_clusters"] == ref.n_clusters_ == 4
    assert main(args + ["--eps", "1000", "--out", str(tmp_path / "b")]) == 0
    cap = capsys.readouterr()
    assert "DBSCAN eps 1000, min-samples 5" in cap.out
    assert cap.err.startswith("warning: DBSCAN put 400 of 400 points (100%) in one cluster at --eps=1000")
    assert "lower --eps" in cap.err and "--eps auto" in cap.err
    # Everything noise: the pipeline has no cluster to train on; the error says which way to move eps.
    assert main(args + ["--eps", "0.001", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "400 of 400 points noise" in err and "raise --eps" in err and "--eps auto" in err
