"""Label-free scores computed in bounded memory: sampled silhouette and Davies-Bouldin."""

from __future__ import annotations

import logging
import numbers
from typing import Any, Optional

import numpy as np
from numpy.typing import ArrayLike

from ._validation import _check_X_labels, _check_dense, _check_finite_chunk

logger = logging.getLogger(__name__)


#: Approximate upper bound, in bytes, on the temporary distance blocks allocated by
#: :func:`silhouette_sampled` and :func:`davies_bouldin`.
_CHUNK_BYTES = 64 * 2**20


_SILHOUETTE_METRICS = ("euclidean", "sqeuclidean", "cosine", "manhattan")


# --------------------------------------------------------------------------- #
# Internal (label-free) metrics
# --------------------------------------------------------------------------- #
def _distances(A: np.ndarray, B: np.ndarray, metric: str, b_sq: Optional[np.ndarray]) -> np.ndarray:
    """Distance block between rows of A and rows of B (both float64)."""
    if metric in ("euclidean", "sqeuclidean"):
        assert b_sq is not None, "Euclidean blocks take the squared norms of B"
        a_sq = np.einsum("ij,ij->i", A, A)
        D = A @ B.T
        D *= -2.0
        D += a_sq[:, None]
        D += b_sq[None, :]
        np.maximum(D, 0.0, out=D)
        if metric == "euclidean":
            np.sqrt(D, out=D)
        return D
    if metric == "cosine":  # A and B are already row-normalised
        D = A @ B.T
        np.subtract(1.0, D, out=D)
        np.clip(D, 0.0, 2.0, out=D)
        return D
    # manhattan: broadcast in column blocks so that the 3-D temporary stays bounded
    D = np.empty((A.shape[0], B.shape[0]), dtype=np.float64)
    step = max(1, _CHUNK_BYTES // (16 * max(1, A.shape[0] * A.shape[1])))
    for j0 in range(0, B.shape[0], step):
        blk = B[j0 : j0 + step]
        diff = A[:, None, :] - blk[None, :, :]
        np.abs(diff, out=diff)
        D[:, j0 : j0 + blk.shape[0]] = diff.sum(axis=2)
        del diff
    return D


def silhouette_sampled(
    X: ArrayLike,
    labels: ArrayLike,
    sample_size: Optional[int] = 10000,
    random_state: Any = 0,
    metric: str = "euclidean",
    *,
    memory_limit: Any = None,
) -> float:
    """Mean silhouette coefficient, computed on a seeded random sample.

    If ``n_samples > sample_size``, ``sample_size`` points are drawn without
    replacement with ``numpy.random.default_rng(random_state)`` and the silhouette
    is computed *within that sample* (the same approach as
    ``sklearn.metrics.silhouette_score(..., sample_size=...)``, though the drawn
    sample differs).  Otherwise all points are used and the result equals
    :func:`sklearn.metrics.silhouette_score`.  Distances are computed in row chunks
    of about 64 MiB, so memory is ``O(sample_size * n_features + chunk)``, never
    ``O(sample_size**2)``.

    For a point ``i`` with mean intra-cluster distance ``a`` and smallest mean
    distance to another cluster ``b``, ``s(i) = (b - a) / max(a, b)``; points in
    singleton clusters (and points with ``a == b == 0``) get ``s(i) = 0``.  The noise
    label ``-1`` is treated as an ordinary cluster; drop noise points first if they
    should be ignored.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Data (e.g. embeddings).  Only the sampled rows are converted to float64.
    labels : array-like of shape (n_samples,)
        Cluster labels (integers or strings).
    sample_size : int or None, default 10000
        Maximum number of points used; ``None`` uses all points.
    random_state : int, numpy.random.Generator or None, default 0
        Seed for the sample (ignored when no subsampling happens).
    metric : {"euclidean", "sqeuclidean", "cosine", "manhattan"}, default "euclidean"
        Distance metric.
    memory_limit : int, optional
        Bytes the float64 copy of the sampled rows may take (0: no limit); None: the default.

    Returns
    -------
    float
        Mean silhouette in ``[-1, 1]``.

    Raises
    ------
    ValueError
        If ``X`` is not 2-D, contains NaN/inf or its length differs from ``labels``;
        if ``sample_size`` is not a positive integer or ``metric`` is unknown; or if
        the (sampled) labels do not have between 2 and ``n_sampled - 1`` distinct
        values.
    TypeError
        If ``X`` is not numeric or the labels have an unsupported dtype.
    """
    if metric not in _SILHOUETTE_METRICS:
        raise ValueError(f"metric must be one of {list(_SILHOUETTE_METRICS)}, got {metric!r}")
    if sample_size is not None and (
        isinstance(sample_size, bool)
        or not isinstance(sample_size, numbers.Integral)
        or sample_size < 1
    ):
        raise ValueError(f"sample_size must be a positive integer or None, got {sample_size!r}")
    Xa, lab = _check_X_labels(X, labels)
    n = Xa.shape[0]

    s_rows = n if sample_size is None else min(n, int(sample_size))
    _check_dense(8.0 * s_rows * Xa.shape[1] * 2, f"silhouette_sampled: a float64 copy of {s_rows} rows x "
                 f"{Xa.shape[1]} features (and its reordering)", memory_limit,
                 "pass a smaller sample_size= or memory_limit= in bytes (0: no limit)")
    if sample_size is not None and n > sample_size:
        rng = np.random.default_rng(random_state)
        idx = np.sort(rng.choice(n, size=int(sample_size), replace=False))
        logger.debug("silhouette_sampled: using %d of %d points", sample_size, n)
        Xs = np.asarray(Xa[idx], dtype=np.float64)
        ls = lab[idx]
    else:
        Xs = np.array(Xa, dtype=np.float64)
        ls = lab
    _check_finite_chunk(Xs)
    s = Xs.shape[0]

    _, codes = np.unique(ls, return_inverse=True)
    codes = codes.reshape(-1)
    order = np.argsort(codes, kind="stable")
    Xs, codes = Xs[order], codes[order]
    counts = np.bincount(codes)
    k = counts.shape[0]
    if not 2 <= k <= s - 1:
        raise ValueError(
            f"silhouette needs between 2 and n_samples - 1 = {s - 1} distinct labels "
            f"among the {s} (sampled) points, got {k}"
        )
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))

    b_sq = None
    if metric in ("euclidean", "sqeuclidean"):
        b_sq = np.einsum("ij,ij->i", Xs, Xs)
    elif metric == "cosine":
        norms = np.sqrt(np.einsum("ij,ij->i", Xs, Xs))
        norms[norms == 0] = 1.0
        Xs = Xs / norms[:, None]

    rows_per_chunk = max(1, _CHUNK_BYTES // (8 * s))
    sil_sum = 0.0
    for i0 in range(0, s, rows_per_chunk):
        i1 = min(s, i0 + rows_per_chunk)
        D = _distances(Xs[i0:i1], Xs, metric, b_sq)
        r = np.arange(i1 - i0)
        D[r, i0 + r] = 0.0  # exact zero self-distance
        sums = np.add.reduceat(D, starts, axis=1)  # (rows, k)
        own = codes[i0:i1]
        own_size = counts[own]
        a = sums[r, own] / np.maximum(own_size - 1, 1)
        means = sums / counts[None, :]
        means[r, own] = np.inf
        b = means.min(axis=1)
        denom = np.maximum(a, b)
        with np.errstate(divide="ignore", invalid="ignore"):
            sil = np.where(denom > 0, (b - a) / denom, 0.0)
        sil[own_size == 1] = 0.0
        sil_sum += float(sil.sum())
        del D, sums, means  # free the block before the next one is allocated
    return float(sil_sum / s)


def davies_bouldin(X: ArrayLike, labels: ArrayLike, *, memory_limit: Any = None) -> float:
    """Davies-Bouldin index (lower is better).

    For clusters ``i`` with centroid ``c_i`` and mean distance ``s_i`` of their
    points to ``c_i``, ``DB = mean_i max_{j != i} (s_i + s_j) / ||c_i - c_j||``.
    Matches :func:`sklearn.metrics.davies_bouldin_score`, including returning 0.0
    when all ``s_i`` or all centroid distances are (close to) zero.  ``X`` is
    processed in row chunks, so extra memory is ``O(n_clusters * n_features +
    chunk)``.  The noise label ``-1`` is treated as an ordinary cluster.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Data (e.g. embeddings).
    labels : array-like of shape (n_samples,)
        Cluster labels (integers or strings).
    memory_limit : int, optional
        Bytes the per-cluster sums and centroids may take (0: no limit); None: the default.

    Returns
    -------
    float
        Davies-Bouldin index, ``>= 0``.

    Raises
    ------
    ValueError
        If ``X`` is not 2-D, contains NaN/inf or its length differs from
        ``labels``, or the labels do not have between 2 and ``n_samples - 1``
        distinct values.
    TypeError
        If ``X`` is not numeric or the labels have an unsupported dtype.
    """
    Xa, lab = _check_X_labels(X, labels)
    n, d = Xa.shape
    _, codes = np.unique(lab, return_inverse=True)
    codes = codes.reshape(-1)
    counts = np.bincount(codes)
    k = counts.shape[0]
    if not 2 <= k <= n - 1:
        raise ValueError(
            f"davies_bouldin needs between 2 and n_samples - 1 = {n - 1} distinct labels, got {k}"
        )
    step = max(1, _CHUNK_BYTES // (8 * d))
    _check_dense(2 * 8.0 * k * d, f"davies_bouldin: the sums and centroids of {k} clusters x {d} features",
                 memory_limit, "pass fewer distinct labels (e.g. drop singleton clusters) or memory_limit= "
                 "in bytes (0: no limit)")

    sums = np.zeros((k, d), dtype=np.float64)
    for i0 in range(0, n, step):
        blk = np.asarray(Xa[i0 : i0 + step], dtype=np.float64)
        _check_finite_chunk(blk)
        np.add.at(sums, codes[i0 : i0 + step], blk)
    centroids = sums / counts[:, None]

    intra = np.zeros(k, dtype=np.float64)
    for i0 in range(0, n, step):
        blk = np.asarray(Xa[i0 : i0 + step], dtype=np.float64)
        cc = codes[i0 : i0 + step]
        diff = blk - centroids[cc]
        dist = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        intra += np.bincount(cc, weights=dist, minlength=k)
    intra /= counts

    # Centroid distances block by block (the k x k matrix is never stored: k may be close to
    # n); each row's worst ratio is kept, and whether every distance is ~0 (sklearn's rule).
    scores = np.empty(k, dtype=np.float64)
    max_cdist = 0.0
    c_sq = np.einsum("ij,ij->i", centroids, centroids)
    rows_per_block = max(1, _CHUNK_BYTES // (8 * k * 4))  # ~4 row x k temporaries
    for i0 in range(0, k, rows_per_block):
        blk = centroids[i0 : i0 + rows_per_block]
        cd = _distances(blk, centroids, "euclidean", c_sq)
        cd[np.arange(blk.shape[0]), np.arange(i0, i0 + blk.shape[0])] = 0.0  # exact, as sklearn's
        max_cdist = max(max_cdist, float(np.abs(cd).max()))
        cd[cd == 0] = np.inf
        scores[i0 : i0 + blk.shape[0]] = np.max((intra[i0 : i0 + blk.shape[0], None] + intra[None, :]) / cd, axis=1)

    if np.allclose(intra, 0) or max_cdist <= 1e-8:  # np.allclose(cdist, 0)
        return 0.0
    return float(np.mean(scores))
