#!/usr/bin/env python
"""GPU engine vs independent oracles without the CPU engine (numpy fp64 brute force, scikit-learn)
and vs the host model: a check for machines where the CPU engine cannot serve as the oracle."""
import sys

import numpy as np

from embedcluster import cuda


def main() -> int:
    rng = np.random.default_rng(0)
    bad = 0
    ties = rng.integers(-3, 4, size=(2000, 13)).astype(np.float32)
    blobs = (rng.normal(size=(7, 13))[rng.integers(0, 7, 2000)] + 0.1 * rng.normal(size=(2000, 13))).astype(np.float32)
    for name, X in (("ties", ties), ("blobs", blobs)):
        X[1000:1200] = X[:200]
        Q = X[::5].copy()
        exact = ((Q.astype(np.float64)[:, None] - X.astype(np.float64)[None]) ** 2).sum(-1)
        order = np.lexsort((np.broadcast_to(np.arange(len(X)), exact.shape), exact), axis=1)[:, :9]
        d, i = cuda.kneighbors(X, Q, 9, "l2")
        ok = np.array_equal(i, order) and np.array_equal(d, np.take_along_axis(exact, order, 1).astype(np.float32))
        dm, im = cuda.kneighbors(X, Q, 9, "l2", engine="model")
        print(f"knn {name}: vs numpy {ok}; vs model {np.array_equal(i, im) and np.array_equal(d, dm)}")
        bad += not ok
    from sklearn.cluster import DBSCAN
    X = (rng.normal(size=(8, 6))[rng.integers(0, 8, 3000)] + 0.15 * rng.normal(size=(3000, 6))).astype(np.float32)
    labels, core, counts, nc = cuda.dbscan(X, 0.35, 5)
    sk = DBSCAN(eps=0.35, min_samples=5).fit(X.astype(np.float64))
    same_core = np.array_equal(core, np.isin(np.arange(3000), sk.core_sample_indices_))
    pairs = {(a, b) for a, b in zip(labels[core], sk.labels_[core])}
    lm = cuda.dbscan(X, 0.35, 5, engine="model")
    print(f"dbscan: core flags vs sklearn {same_core}; partition {len(pairs) == nc == len(set(sk.labels_[core]))}; "
          f"vs model {np.array_equal(labels, lm[0]) and np.array_equal(counts, lm[2])}")
    bad += not same_core
    X = (rng.normal(size=(20, 9))[rng.integers(0, 20, 20000)] + 0.4 * rng.normal(size=(20000, 9))).astype(np.float32)
    init = X[:20].copy()
    g = cuda.kmeans(X, 20, init, max_iter=15, tol=0.0)
    m = cuda.kmeans(X, 20, init, max_iter=15, tol=0.0, engine="model")
    same = np.array_equal(g.labels, m.labels) and np.array_equal(g.centers, m.centers) and g.inertia == m.inertia
    c64 = g.centers.astype(np.float64)
    dist = ((X.astype(np.float64)[:, None] - c64[None]) ** 2).sum(-1)
    print(f"kmeans: vs model {same}; labels are the exact nearest centres {np.array_equal(g.labels, dist.argmin(1))}")
    bad += not same
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
