"""Choosing and checking DBSCAN's eps: the knee of the sorted k-distance curve (``eps="auto"``)
and the warning for a fit that labels nearly everything noise or puts nearly everything in one
cluster."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import numpy as np

#: A fit whose noise (or largest cluster) holds more than this fraction of the points warns.
WARN_FRACTION = 0.9

#: Fewer rows than this never warn: a handful of points says little about eps.
WARN_MIN_ROWS = 20


class EpsWarning(UserWarning):
    """A DBSCAN fit labelled nearly every point noise or put nearly every point in one cluster:
    eps is probably too small or too large for the data."""


#: eps="auto" reads the k-distances of at most this many rows (a fixed random sample of the
#: queries, each searched exactly against every row): the sorted curve of a uniform sample has
#: the full curve's quantiles, and the knee is read in quantiles, at a fraction of a full
#: self-join's cost on large data.
AUTO_EPS_QUERIES = 20_000


def core_distances(X: Any, min_samples: int, nearest_neighbors: Callable[[int], Any],
                   max_queries: int = AUTO_EPS_QUERIES) -> np.ndarray:
    """The sorted k-distance curve, ascending: each row's distance (in eps units) to its
    (min_samples - 1)-th nearest other row, the smallest eps at which the row is a core point
    (min_samples counts the row itself). With min_samples=1 every row is core at any eps, so
    the nearest other row is used instead. Above `max_queries` rows, the curve of a fixed
    random sample of that many rows (each against all rows, exactly).
    ``nearest_neighbors(k)`` makes the exact kNN estimator (``embedcluster.NearestNeighbors``
    or ``embedcluster.dask.NearestNeighbors``)."""
    n = int(X.shape[0])
    k = max(int(min_samples) - 1, 1)
    if n <= k:
        raise ValueError(f"eps='auto' reads each point's distance to its {k}-th nearest neighbour, so it needs more "
                         f"than {k} rows (min_samples={min_samples}); got n_samples={n}. Pass a number for eps or "
                         "lower min_samples")
    if n <= max_queries:
        dist, _ = nearest_neighbors(k).fit(X).kneighbors()  # the self-join, each row left out
        return np.sort(np.asarray(dist[:, -1], dtype=np.float64))
    rows = np.sort(np.random.default_rng(0).choice(n, max_queries, replace=False))
    queries = X[rows]
    queries = queries.compute() if hasattr(queries, "compute") else np.asarray(queries)
    # Each query is among the rows searched: its k+1 nearest include itself (or a duplicate) at 0.
    dist, _ = nearest_neighbors(k + 1).fit(X).kneighbors(queries)
    return np.sort(np.asarray(dist[:, -1], dtype=np.float64))


def knee_of_sorted(values: np.ndarray) -> int:
    """Index of the knee of an ascending curve: the point farthest below the chord from its first
    to its last point once both axes are scaled to [0, 1] (Kneedle's difference curve). The
    flat part of a sorted k-distance curve is the clustered points, the steep tail the noise;
    the knee is where one turns into the other."""
    y = np.asarray(values, dtype=np.float64)
    n = len(y)
    if n < 3 or y[-1] <= y[0]:
        return n - 1
    x = np.arange(n) / (n - 1)
    gap = x - (y - y[0]) / (y[-1] - y[0])
    return int(np.argmax(gap))


#: auto_eps rounds the knee's value up by this relative amount: the kNN reports distances rounded
#: to float32 while DBSCAN decides exactly, so the knee's own point stays core.
KNEE_ROUND_UP = 1e-6


def auto_eps(curve: np.ndarray) -> float:
    """eps at the knee of the sorted core distances `curve` (see :func:`knee_of_sorted`),
    rounded up by KNEE_ROUND_UP. A curve with no positive value (every row has min_samples - 1
    exact duplicates) gives the smallest positive float32, which still joins the duplicates."""
    eps = float(curve[knee_of_sorted(curve)]) * (1.0 + KNEE_ROUND_UP)
    return eps if eps > 0 else float(np.finfo(np.float32).tiny)


#: How the advice names the settings in Python (eps_advice's ``names``); the CLI passes its flags.
PYTHON_NAMES = {"eps": "eps", "auto": "eps='auto'", "min_samples": "min_samples", "kmeans": "embedcluster.KMeans"}


def eps_advice(labels: np.ndarray, eps: float, *, names: Optional[Dict[str, str]] = None,
               k_distances: Optional[np.ndarray] = None) -> Optional[str]:
    """A message when a fit labelled more than WARN_FRACTION of the points noise (eps too
    small) or put more than WARN_FRACTION of them in one cluster (eps too large), else None.
    ``names`` names the settings in the caller's interface (keys as PYTHON_NAMES, the default;
    ``--eps``, ``--eps auto``, ... on the command line); ``k_distances``: the sorted curve when
    eps came from its knee (the message then gives the eps at which half the points are core,
    a value to try)."""
    names = PYTHON_NAMES if names is None else names
    keyword, auto = names["eps"], names["auto"]
    labels = np.asarray(labels)
    n = len(labels)
    if n < WARN_MIN_ROWS:
        return None
    noise = int((labels == -1).sum())
    clustered = labels[labels >= 0]
    largest = int(np.bincount(clustered).max()) if len(clustered) else 0
    if noise > WARN_FRACTION * n:
        what, move = f"labelled {noise} of {n} points noise ({noise / n:.0%})", "too small for this data; raise"
    elif largest > WARN_FRACTION * n:
        what, move = f"put {largest} of {n} points ({largest / n:.0%}) in one cluster", "too large for this data; lower"
    else:
        return None
    if k_distances is None:
        return (f"DBSCAN {what} at {keyword}={eps:.4g}: eps is {move} {keyword}, or pass {auto} to take it from the "
                "knee of the k-distance curve")
    median = float(np.median(k_distances))
    return (f"DBSCAN {what} at {keyword}={eps:.4g}, the knee of the k-distance curve ({auto}): this data has no "
            f"density gap that one eps separates at this min_samples; eps is {move} {keyword} by hand (at "
            f"{keyword}={median:.4g} half the points are core), change {names['min_samples']}, or use k-means "
            f"({names['kmeans']})")
