"""KMeans.partial_fit (mini-batch k-means for streams) against an independent numpy version of
the update and against scikit-learn's MiniBatchKMeans without random reassignment."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import MiniBatchKMeans

from embedcluster import KMeans


def blobs(n=3000, d=8, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(6, d)) * 5
    return (means[rng.integers(0, 6, n)] + rng.normal(size=(n, d))).astype(np.float32)


def numpy_minibatch(X, init, batches, weights=None):
    """The mini-batch update written out: nearest centre by brute force, then running means."""
    c = init.astype(np.float64).copy()
    counts = np.zeros(len(c))
    for b in batches:
        x = X[b].astype(np.float64)
        w = np.ones(len(x)) if weights is None else weights[b].astype(np.float64)
        d2 = ((x[:, None, :] - c.astype(np.float32).astype(np.float64)[None]) ** 2).sum(-1)
        lab = d2.argmin(1)
        for j in range(len(c)):
            m = lab == j
            if w[m].sum() > 0:
                c[j] = (c[j] * counts[j] + (w[m, None] * x[m]).sum(0)) / (counts[j] + w[m].sum())
                counts[j] += w[m].sum()
        c = c.astype(np.float32).astype(np.float64)
    return c.astype(np.float32), counts


@pytest.mark.parametrize("weighted", [False, True])
def test_partial_fit_follows_the_minibatch_update(weighted):
    X = blobs()
    w = np.random.default_rng(1).uniform(0.5, 2, len(X)).astype(np.float32) if weighted else None
    init = X[:6].copy()
    batches = [slice(a, a + 500) for a in range(0, len(X), 500)]
    km = KMeans(6, init=init)
    for b in batches:
        km.partial_fit(X[b], sample_weight=None if w is None else w[b])
    ref, counts = numpy_minibatch(X, init, batches, w)
    np.testing.assert_allclose(km.cluster_centers_, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(km.counts_, counts, rtol=1e-6)
    assert km.n_steps_ == len(batches)


def test_partial_fit_matches_scikit_learn_without_reassignment():
    X = blobs(2000, 5, seed=3)
    init = X[:6].copy()
    km, sk = KMeans(6, init=init), MiniBatchKMeans(6, init=init, n_init=1, reassignment_ratio=0.0)
    for a in range(0, len(X), 250):
        km.partial_fit(X[a:a + 250])
        sk.partial_fit(X[a:a + 250])
    np.testing.assert_allclose(km.cluster_centers_, sk.cluster_centers_, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(km.predict(X), sk.predict(X))


def test_partial_fit_errors_and_continuation():
    X = blobs(100, 4)
    with pytest.raises(ValueError, match="first batch has n_samples=3"):
        KMeans(5).partial_fit(X[:3])
    km = KMeans(5, random_state=0).partial_fit(X)
    with pytest.raises(ValueError, match="3 features"):
        km.partial_fit(X[:, :3])
    fitted = KMeans(5, random_state=0).fit(X)
    before = fitted.cluster_centers_.copy()
    fitted.partial_fit(X[:10])  # continues from the fit, its clusters weighted by their sizes
    assert fitted.n_steps_ == 1 and fitted.counts_.sum() == len(X) + 10
    assert np.abs(fitted.cluster_centers_ - before).max() < np.abs(X).max()
    fitted.fit(X)
    assert not hasattr(fitted, "counts_")


def test_partial_fit_cosine_keeps_unit_centres():
    X = blobs(600, 6, seed=4)
    km = KMeans(4, metric="cosine", random_state=0)
    for a in range(0, 600, 200):
        km.partial_fit(X[a:a + 200])
    np.testing.assert_allclose(np.linalg.norm(km.cluster_centers_, axis=1), 1.0, rtol=1e-6)
