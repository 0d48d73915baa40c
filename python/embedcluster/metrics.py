"""Clustering evaluation metrics.

Two families of metrics are provided:

* **External metrics** compare a predicted clustering with ground-truth
  classes: :func:`confusion_matrix`, :func:`match_clusters`,
  :func:`cluster_accuracy`, :func:`nmi`, :func:`ari`, :func:`v_measure`,
  :func:`purity`, :func:`per_class_report` and :func:`clustering_report`.
* **Internal (label-free) metrics** score a clustering from the data alone:
  :func:`silhouette_sampled` and :func:`davies_bouldin`.

Everything is implemented with NumPy (plus :func:`scipy.optimize.linear_sum_assignment`
for the Hungarian matching); scikit-learn is *not* needed at runtime.  NMI, ARI,
V-measure, silhouette and Davies-Bouldin follow the same definitions and edge-case
conventions as :mod:`sklearn.metrics`.

Input conventions
-----------------
* Label arrays may be Python sequences, NumPy arrays or PyTorch tensors
  (tensors are copied to the host by :func:`embedcluster._io.to_numpy`; torch is never
  imported by this module).
* Labels must be 1-D, non-empty and of equal length.  ``labels_true`` may hold
  integers or strings (strings are encoded via :func:`numpy.unique`);
  ``labels_pred`` must hold integer-like cluster ids.  Floats are accepted when
  every value is integral (``1.0``); NaN/None, infinities and fractional values are
  rejected.
* **Noise**: the label ``-1`` in ``labels_pred`` (as produced by DBSCAN/HDBSCAN) is
  treated as one ordinary cluster everywhere -- it gets its own column in the
  confusion matrix, takes part in the Hungarian matching, and counts as a cluster
  for NMI/ARI/V-measure/purity/silhouette/Davies-Bouldin (the same convention as
  scikit-learn).  To ignore noise points instead, filter them out beforehand,
  e.g. ``keep = labels_pred != -1``.

Memory
------
Nothing here allocates by the number of distinct labels squared unless asked to: NMI, ARI,
V-measure and purity work on the sparse contingency table (its non-zero cells, at most
``n_samples``), as scikit-learn does. The Hungarian matching (accuracy, :func:`match_clusters`,
:func:`per_class_report`) runs on the dense ``n_classes x n_clusters`` table while it is small
(at most ``2**22`` cells and within the memory budget) and otherwise on the sparse table with
:func:`scipy.sparse.csgraph.min_weight_full_bipartite_matching` (the same optimum; classes
whose best remaining cluster shares no sample with them are left unmatched instead of being
paired with an arbitrary empty cell). :func:`confusion_matrix` returns a dense matrix only
within the budget (``sparse=True`` gives a scipy.sparse matrix of any size). The budget is
``memory_limit`` bytes when given (0: no limit), else
:func:`embedcluster._core.default_memory_limit` (3/4 of the available memory); a dense result
over it raises ``MemoryError`` that says what to do.

Errors
------
``ValueError`` is raised for wrong shapes, empty or mismatched inputs, NaN/None,
infinite or fractional label values, and invalid parameters.  ``TypeError`` is
raised for label dtypes that cannot be labels at all (complex, datetime, arbitrary
objects, or strings in ``labels_pred``).
"""

from __future__ import annotations

import logging
import math
import numbers
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike

from ._io import to_numpy

__all__ = [
    "confusion_matrix",
    "match_clusters",
    "cluster_accuracy",
    "nmi",
    "ari",
    "v_measure",
    "purity",
    "per_class_report",
    "clustering_report",
    "silhouette_sampled",
    "davies_bouldin",
]

logger = logging.getLogger(__name__)

#: Approximate upper bound, in bytes, on the temporary distance blocks allocated by
#: :func:`silhouette_sampled` and :func:`davies_bouldin`.
_CHUNK_BYTES = 64 * 2**20

_AVERAGE_METHODS = ("min", "geometric", "arithmetic", "max")
_SILHOUETTE_METRICS = ("euclidean", "sqeuclidean", "cosine", "manhattan")

Label = Union[int, str]


# --------------------------------------------------------------------------- #
# Input validation
# --------------------------------------------------------------------------- #
def _as_numpy(x: Any) -> np.ndarray:
    """Convert list / ndarray / torch tensor to an ndarray without importing torch."""
    return np.asarray(to_numpy(x))


def _check_labels(x: Any, name: str, allow_strings: bool) -> np.ndarray:
    """Validate one label array and return it as int64 or string ndarray."""
    arr = _as_numpy(x)
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D array-like of labels, got an array of shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty; at least one sample is required")

    if arr.dtype.kind == "O":
        if all(isinstance(v, (str, bytes, np.str_, np.bytes_)) for v in arr):
            arr = arr.astype(str)
        else:
            try:
                arr = arr.astype(np.float64)
            except (TypeError, ValueError):
                raise TypeError(
                    f"{name} must contain integer-like"
                    + (" or string" if allow_strings else "")
                    + " labels; got an object array with unsupported or mixed values"
                ) from None

    kind = arr.dtype.kind
    if kind in ("U", "S"):
        if not allow_strings:
            raise TypeError(
                f"{name} must contain integer cluster ids, got string labels "
                f"(dtype {arr.dtype}); string labels are only accepted for labels_true"
            )
        return arr
    if kind == "b":
        return arr.astype(np.int64)
    if kind in ("i", "u"):
        if kind == "u" and arr.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{name} contains values larger than the int64 range")
        return arr.astype(np.int64, copy=False)
    if kind == "f":
        nan = np.isnan(arr)
        if nan.any():
            idx = int(np.flatnonzero(nan)[0])
            raise ValueError(
                f"{name} contains NaN (a missing label) at index {idx}; "
                "labels must be integer-like" + (" or strings" if allow_strings else "")
            )
        inf = np.isinf(arr)
        if inf.any():
            idx = int(np.flatnonzero(inf)[0])
            raise ValueError(f"{name} contains an infinite value at index {idx}")
        frac = arr != np.round(arr)
        if frac.any():
            idx = int(np.flatnonzero(frac)[0])
            raise ValueError(
                f"{name} must contain integer-like values; found {arr[idx].item()!r} at index {idx}"
            )
        if np.abs(arr).max() >= 2.0**63:
            raise ValueError(f"{name} contains values outside the int64 range")
        return arr.astype(np.int64)
    raise TypeError(
        f"{name} must contain integer-like"
        + (" or string" if allow_strings else "")
        + f" labels, got dtype {arr.dtype}"
    )


def _check_pair(labels_true: Any, labels_pred: Any) -> Tuple[np.ndarray, np.ndarray]:
    lt = _check_labels(labels_true, "labels_true", allow_strings=True)
    lp = _check_labels(labels_pred, "labels_pred", allow_strings=False)
    if lt.shape[0] != lp.shape[0]:
        raise ValueError(
            f"labels_true has {lt.shape[0]} samples but labels_pred has {lp.shape[0]}"
        )
    return lt, lp


def _check_X_labels(X: Any, labels: Any) -> Tuple[np.ndarray, np.ndarray]:
    """Validate a (n_samples, n_features) matrix and its labels (not converted yet)."""
    Xa = _as_numpy(X)
    if Xa.ndim != 2:
        raise ValueError(
            f"X must be a 2-D array of shape (n_samples, n_features), got shape {Xa.shape}"
        )
    if Xa.dtype.kind not in ("b", "i", "u", "f"):
        raise TypeError(f"X must be numeric, got dtype {Xa.dtype}")
    if Xa.shape[1] == 0:
        raise ValueError("X has 0 features; at least one feature is required")
    lab = _check_labels(labels, "labels", allow_strings=True)
    if Xa.shape[0] != lab.shape[0]:
        raise ValueError(f"X has {Xa.shape[0]} samples but labels has {lab.shape[0]}")
    return Xa, lab


def _check_finite_chunk(block: np.ndarray) -> None:
    if not np.isfinite(block).all():
        raise ValueError("X contains NaN or infinity")


def _py(v: Any) -> Any:
    """NumPy scalar -> plain Python scalar."""
    return v.item() if isinstance(v, np.generic) else v


def _budget(memory_limit: Any) -> float:
    """Bytes a dense result may take (see :func:`embedcluster._backend.memory_budget`)."""
    from ._backend import memory_budget

    return memory_budget(memory_limit)


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.3g} MiB"


def _check_dense(nbytes: float, what: str, memory_limit: Any, hint: str) -> None:
    """MemoryError before allocating ``nbytes`` when they exceed the budget."""
    budget = _budget(memory_limit)
    if nbytes > budget:
        source = "memory_limit" if memory_limit is not None else "the default memory limit (3/4 of the available memory)"
        raise MemoryError(f"{what} needs {_gib(nbytes)}, more than {source} ({_gib(budget)}); {hint}")


#: Largest dense table (cells) the Hungarian matching uses; larger tables are matched sparsely.
_DENSE_MATCH_CELLS = 2**22


# --------------------------------------------------------------------------- #
# Contingency tables
# --------------------------------------------------------------------------- #
def _contingency(lt: np.ndarray, lp: np.ndarray) -> Dict[str, np.ndarray]:
    """Sparse contingency table (only non-zero cells), O(n) memory."""
    classes, ti = np.unique(lt, return_inverse=True)
    clusters, pi = np.unique(lp, return_inverse=True)
    ti = ti.reshape(-1).astype(np.int64)
    pi = pi.reshape(-1).astype(np.int64)
    codes = ti * clusters.shape[0] + pi
    cells, counts = np.unique(codes, return_counts=True)
    return {
        "classes": classes,
        "clusters": clusters,
        "rows": cells // clusters.shape[0],
        "cols": cells % clusters.shape[0],
        "counts": counts.astype(np.int64),
        "row_sums": np.bincount(ti, minlength=classes.shape[0]).astype(np.int64),
        "col_sums": np.bincount(pi, minlength=clusters.shape[0]).astype(np.int64),
    }


def _dense(ct: Dict[str, np.ndarray], memory_limit: Any = None, what: str = "confusion_matrix",
           hint: str = "") -> np.ndarray:
    kt, kp = ct["classes"].shape[0], ct["clusters"].shape[0]
    _check_dense(8.0 * kt * kp, f"{what}: a dense {kt} x {kp} int64 table ({kt} classes x {kp} clusters)",
                 memory_limit, hint or "pass sparse=True for a scipy.sparse matrix of the non-zero cells, or "
                 "memory_limit= in bytes (0: no limit)")
    mat = np.zeros((kt, kp), dtype=np.int64)
    mat[ct["rows"], ct["cols"]] = ct["counts"]
    return mat


def _entropy(counts: np.ndarray) -> float:
    counts = counts[counts > 0].astype(np.float64)
    if counts.shape[0] <= 1:
        return 0.0
    total = counts.sum()
    return float(-np.sum((counts / total) * (np.log(counts) - math.log(total))))


def _mutual_info(ct: Dict[str, np.ndarray]) -> float:
    a, b = ct["row_sums"], ct["col_sums"]
    if a.shape[0] == 1 or b.shape[0] == 1:
        return 0.0
    nij = ct["counts"].astype(np.float64)
    n = float(nij.sum())
    terms = (nij / n) * (
        np.log(nij)
        + math.log(n)
        - np.log(a[ct["rows"]].astype(np.float64))
        - np.log(b[ct["cols"]].astype(np.float64))
    )
    terms = np.where(np.abs(terms) < np.finfo(np.float64).eps, 0.0, terms)
    return float(max(terms.sum(), 0.0))


def _hungarian(mat: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as exc:  # pragma: no cover - scipy is a hard dependency
        raise ImportError(
            "embedcluster.metrics needs scipy for Hungarian matching "
            "(scipy.optimize.linear_sum_assignment)"
        ) from exc
    rows, cols = linear_sum_assignment(mat, maximize=True)
    return rows, cols


def _sparse_matching(ct: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """Maximum-weight matching on the non-zero cells only (LAPJVsp), O(cells + classes +
    clusters) memory. Each vertex of the smaller side also gets a private dummy partner of
    weight 1 while real cells weigh count * (K + 1) (K: the smaller side's size), so a full
    matching always exists and the real weight is maximised first: the optimum of the dense
    problem, whose zero cells add nothing. Vertices matched to their dummy stay unmatched."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    kt, kp = ct["classes"].shape[0], ct["clusters"].shape[0]
    r, c = ct["rows"], ct["cols"]
    if kt > kp:  # rows: the smaller side
        r, c, kt_, kp_ = c, r, kp, kt
    else:
        kt_, kp_ = kt, kp
    w = ct["counts"].astype(np.float64) * (kt_ + 1)
    dummy = np.arange(kt_, dtype=np.int64)
    g = coo_matrix((np.concatenate([w, np.ones(kt_)]),
                    (np.concatenate([r, dummy]), np.concatenate([c, kp_ + dummy]))),
                   shape=(kt_, kp_ + kt_)).tocsr()
    rows, cols = min_weight_full_bipartite_matching(g, maximize=True)
    real = cols < kp_
    rows, cols = rows[real], cols[real]
    if kt > kp:
        rows, cols = cols, rows
        o = np.argsort(rows, kind="stable")
        rows, cols = rows[o], cols[o]
    return rows.astype(np.int64), cols.astype(np.int64)


# --------------------------------------------------------------------------- #
# External metrics
# --------------------------------------------------------------------------- #
def confusion_matrix(
    labels_true: ArrayLike, labels_pred: ArrayLike, *, sparse: bool = False, memory_limit: Any = None
) -> Tuple[Any, np.ndarray, np.ndarray]:
    """Contingency table between true classes and predicted clusters.

    Parameters
    ----------
    labels_true : array-like of shape (n_samples,)
        Ground-truth class labels (integers or strings).
    labels_pred : array-like of shape (n_samples,)
        Predicted cluster ids (integer-like).  The noise label ``-1`` is treated as
        its own cluster and therefore gets its own column (the first one, since the
        columns are sorted).
    sparse : bool, default False
        Return a ``scipy.sparse.csr_matrix`` of the non-zero cells (any number of labels)
        instead of a dense array.
    memory_limit : int, optional
        Bytes the dense matrix may take (0: no limit); None: the default memory limit.

    Returns
    -------
    matrix : ndarray of int64 (or csr_matrix), shape (n_true_classes, n_pred_clusters)
        ``matrix[i, j]`` is the number of samples of class ``true_classes[i]``
        assigned to cluster ``pred_clusters[j]``.
    true_classes : ndarray of shape (n_true_classes,)
        Sorted unique values of ``labels_true``.
    pred_clusters : ndarray of shape (n_pred_clusters,)
        Sorted unique values of ``labels_pred`` (including ``-1`` if present).

    Raises
    ------
    ValueError
        If the inputs are not 1-D, are empty, differ in length, or contain NaN,
        infinite or fractional values.
    TypeError
        If a label dtype is unsupported (e.g. strings in ``labels_pred``).
    MemoryError
        If the dense matrix would exceed the memory budget (before allocating it).

    Examples
    --------
    >>> m, t, p = confusion_matrix([0, 0, 1, 1], [1, 1, 1, -1])
    >>> m.tolist(), t.tolist(), p.tolist()
    ([[0, 2], [1, 1]], [0, 1], [-1, 1])
    """
    lt, lp = _check_pair(labels_true, labels_pred)
    ct = _contingency(lt, lp)
    if sparse:
        from scipy.sparse import csr_matrix

        mat = csr_matrix((ct["counts"], (ct["rows"], ct["cols"])),
                         shape=(ct["classes"].shape[0], ct["clusters"].shape[0]), dtype=np.int64)
        return mat, ct["classes"], ct["clusters"]
    return _dense(ct, memory_limit), ct["classes"], ct["clusters"]


def _match(ct: Dict[str, np.ndarray], memory_limit: Any = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (matched row indices, matched col indices, their counts).

    Dense Hungarian for small tables (the int64 table and scipy's float64 copy within the
    budget), else the sparse matching, which finds the same optimum."""
    kt, kp = ct["classes"].shape[0], ct["clusters"].shape[0]
    if kt * kp <= _DENSE_MATCH_CELLS and 16.0 * kt * kp <= _budget(memory_limit):
        mat = _dense(ct, None, "matching")
        rows, cols = _hungarian(mat)
        return rows, cols, mat[rows, cols]
    rows, cols = _sparse_matching(ct)
    cells = ct["rows"] * kp + ct["cols"]  # sorted (np.unique in _contingency)
    pos = np.searchsorted(cells, rows * kp + cols)
    pos = np.minimum(pos, len(cells) - 1)
    tp = np.where(cells[pos] == rows * kp + cols, ct["counts"][pos], 0)
    return rows, cols, tp


def match_clusters(labels_true: ArrayLike, labels_pred: ArrayLike) -> Dict[Label, Label]:
    """Optimal one-to-one matching of predicted clusters to true classes.

    The Hungarian algorithm (:func:`scipy.optimize.linear_sum_assignment`) is run on
    the confusion matrix so that the total number of samples whose cluster is
    matched to their own class is maximised.  The matrix may be rectangular: with
    more clusters than classes, only ``n_true_classes`` clusters are matched; with
    more classes than clusters, some classes receive no cluster.

    Parameters
    ----------
    labels_true : array-like of shape (n_samples,)
        Ground-truth class labels (integers or strings).
    labels_pred : array-like of shape (n_samples,)
        Predicted cluster ids.  The noise label ``-1`` is an ordinary cluster here
        and may be matched to a class like any other cluster.

    Returns
    -------
    dict
        Maps every predicted cluster id (plain Python ``int``) to its matched true
        class (plain Python ``int`` or ``str``).  Clusters left unmatched map to
        ``-1``.  Note that ``-1`` is ambiguous if ``labels_true`` itself contains
        the class ``-1``; use :func:`per_class_report` (``matched_cluster``) in that
        case.

    Raises
    ------
    ValueError, TypeError
        On invalid inputs, see :func:`confusion_matrix`.

    Examples
    --------
    >>> match_clusters([0, 0, 1, 1], [5, 5, 7, 7])
    {5: 0, 7: 1}
    """
    lt, lp = _check_pair(labels_true, labels_pred)
    ct = _contingency(lt, lp)
    rows, cols, _ = _match(ct)
    mapping: Dict[Label, Label] = {_py(c): -1 for c in ct["clusters"]}
    for r, c in zip(rows, cols):
        mapping[_py(ct["clusters"][c])] = _py(ct["classes"][r])
    return mapping


def cluster_accuracy(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Clustering accuracy after the optimal one-to-one cluster-to-class matching.

    Parameters
    ----------
    labels_true : array-like of shape (n_samples,)
        Ground-truth class labels (integers or strings).
    labels_pred : array-like of shape (n_samples,)
        Predicted cluster ids (``-1`` is treated as its own cluster).

    Returns
    -------
    float
        Fraction of samples, in ``[0, 1]``, whose cluster is matched (by
        :func:`match_clusters`) to their true class.  Samples in unmatched clusters
        count as errors.

    Raises
    ------
    ValueError, TypeError
        On invalid inputs, see :func:`confusion_matrix`.

    Examples
    --------
    >>> cluster_accuracy([0, 0, 1, 1], [1, 1, 0, 0])
    1.0
    """
    lt, lp = _check_pair(labels_true, labels_pred)
    return _accuracy(_contingency(lt, lp))


def _accuracy(ct: Dict[str, np.ndarray], match: Optional[Tuple[np.ndarray, ...]] = None) -> float:
    _, _, tp = match if match is not None else _match(ct)
    return float(tp.sum() / ct["row_sums"].sum())


def nmi(
    labels_true: ArrayLike, labels_pred: ArrayLike, average_method: str = "arithmetic"
) -> float:
    """Normalized mutual information between two labelings.

    ``NMI = MI(U, V) / mean(H(U), H(V))`` where the mean is chosen by
    ``average_method``.  Matches :func:`sklearn.metrics.normalized_mutual_info_score`
    including its edge cases: 1.0 when both labelings consist of a single label,
    0.0 when the mutual information is zero otherwise.

    Parameters
    ----------
    labels_true : array-like of shape (n_samples,)
        Ground-truth class labels (integers or strings).
    labels_pred : array-like of shape (n_samples,)
        Predicted cluster ids (``-1`` is treated as its own cluster).
    average_method : {"min", "geometric", "arithmetic", "max"}, default "arithmetic"
        How the two entropies are averaged in the denominator.

    Returns
    -------
    float
        NMI in ``[0, 1]``.

    Raises
    ------
    ValueError
        On invalid inputs (see :func:`confusion_matrix`) or an unknown
        ``average_method``.
    """
    if average_method not in _AVERAGE_METHODS:
        raise ValueError(
            f"average_method must be one of {list(_AVERAGE_METHODS)}, got {average_method!r}"
        )
    lt, lp = _check_pair(labels_true, labels_pred)
    return _nmi(_contingency(lt, lp), average_method)


def _nmi(ct: Dict[str, np.ndarray], average_method: str) -> float:
    k_true, k_pred = ct["classes"].shape[0], ct["clusters"].shape[0]
    if k_true == k_pred == 1:
        return 1.0
    mi = _mutual_info(ct)
    if mi == 0.0:
        return 0.0
    h_true, h_pred = _entropy(ct["row_sums"]), _entropy(ct["col_sums"])
    if average_method == "min":
        norm = min(h_true, h_pred)
    elif average_method == "geometric":
        norm = math.sqrt(h_true * h_pred)
    elif average_method == "arithmetic":
        norm = (h_true + h_pred) / 2.0
    else:
        norm = max(h_true, h_pred)
    return float(mi / norm)


def ari(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Adjusted Rand index (Hubert & Arabie), chance-corrected pair agreement.

    Computed exactly from the pair-confusion matrix with Python integers, matching
    :func:`sklearn.metrics.adjusted_rand_score` (1.0 for identical partitions,
    including the degenerate all-in-one / all-singletons cases).

    Parameters
    ----------
    labels_true : array-like of shape (n_samples,)
        Ground-truth class labels (integers or strings).
    labels_pred : array-like of shape (n_samples,)
        Predicted cluster ids (``-1`` is treated as its own cluster).

    Returns
    -------
    float
        ARI in ``[-0.5, 1]``; about 0 for random labelings.

    Raises
    ------
    ValueError, TypeError
        On invalid inputs, see :func:`confusion_matrix`.
    """
    lt, lp = _check_pair(labels_true, labels_pred)
    return _ari(_contingency(lt, lp))


def _ari(ct: Dict[str, np.ndarray]) -> float:
    nij = ct["counts"]
    a, b = ct["row_sums"], ct["col_sums"]
    n = int(a.sum())
    sum_sq = int(np.dot(nij, nij))
    # sum_ij n_ij * b_j  and  sum_ij n_ij * a_i
    sum_nb = int(np.dot(nij, b[ct["cols"]]))
    sum_na = int(np.dot(nij, a[ct["rows"]]))
    tp = sum_sq - n
    fp = sum_nb - sum_sq
    fn = sum_na - sum_sq
    tn = n * n - fp - fn - sum_sq
    if fn == 0 and fp == 0:
        return 1.0
    return float(2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)))


def v_measure(labels_true: ArrayLike, labels_pred: ArrayLike, beta: float = 1.0) -> float:
    """V-measure: weighted harmonic mean of homogeneity and completeness.

    ``V = (1 + beta) * h * c / (beta * h + c)``, as in
    :func:`sklearn.metrics.v_measure_score`.  ``beta > 1`` weights completeness
    more, ``beta < 1`` homogeneity.

    Parameters
    ----------
    labels_true : array-like of shape (n_samples,)
        Ground-truth class labels (integers or strings).
    labels_pred : array-like of shape (n_samples,)
        Predicted cluster ids (``-1`` is treated as its own cluster).
    beta : float, default 1.0
        Non-negative, finite weight.

    Returns
    -------
    float
        V-measure in ``[0, 1]``.

    Raises
    ------
    ValueError
        On invalid inputs (see :func:`confusion_matrix`) or a negative / non-finite
        ``beta``.
    """
    if (
        isinstance(beta, bool)
        or not isinstance(beta, numbers.Real)
        or not math.isfinite(beta)
        or beta < 0
    ):
        raise ValueError(f"beta must be a finite real number >= 0, got {beta!r}")
    lt, lp = _check_pair(labels_true, labels_pred)
    return _v_measure(_contingency(lt, lp), float(beta))


def _v_measure(ct: Dict[str, np.ndarray], beta: float) -> float:
    h_true, h_pred = _entropy(ct["row_sums"]), _entropy(ct["col_sums"])
    mi = _mutual_info(ct)
    homogeneity = mi / h_true if h_true else 1.0
    completeness = mi / h_pred if h_pred else 1.0
    if homogeneity + completeness == 0.0:
        return 0.0
    return float((1 + beta) * homogeneity * completeness / (beta * homogeneity + completeness))


def purity(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Cluster purity.

    Each cluster is credited with its most frequent true class:
    ``purity = sum_k max_c n_ck / n``.  Unlike :func:`cluster_accuracy`, several
    clusters may be credited with the same class, so purity is 1.0 for all-singleton
    clusterings.

    Parameters
    ----------
    labels_true : array-like of shape (n_samples,)
        Ground-truth class labels (integers or strings).
    labels_pred : array-like of shape (n_samples,)
        Predicted cluster ids (``-1`` is treated as its own cluster).

    Returns
    -------
    float
        Purity in ``(0, 1]``.

    Raises
    ------
    ValueError, TypeError
        On invalid inputs, see :func:`confusion_matrix`.
    """
    lt, lp = _check_pair(labels_true, labels_pred)
    return _purity(_contingency(lt, lp))


def _purity(ct: Dict[str, np.ndarray]) -> float:
    best = np.zeros(ct["clusters"].shape[0], dtype=np.int64)
    np.maximum.at(best, ct["cols"], ct["counts"])
    return float(best.sum() / ct["row_sums"].sum())


def per_class_report(
    labels_true: ArrayLike, labels_pred: ArrayLike
) -> Dict[Label, Dict[str, Any]]:
    """Per-class precision, recall and F1 after Hungarian matching.

    Each true class is compared with the cluster it was matched to by
    :func:`match_clusters`: precision is the fraction of that cluster belonging to
    the class, recall the fraction of the class inside that cluster.  A class that
    received no cluster has precision, recall and F1 equal to 0.0.  Divisions by
    zero give 0.0 (``zero_division=0`` in scikit-learn terms).

    Parameters
    ----------
    labels_true : array-like of shape (n_samples,)
        Ground-truth class labels (integers or strings).
    labels_pred : array-like of shape (n_samples,)
        Predicted cluster ids (``-1`` is treated as its own cluster).

    Returns
    -------
    dict
        Keyed by true class (plain ``int`` or ``str``, sorted); each value is a dict
        with keys ``"precision"``, ``"recall"``, ``"f1"`` (float), ``"support"``
        (int, samples of that class) and ``"matched_cluster"`` (int, or ``None`` when
        unmatched).

    Raises
    ------
    ValueError, TypeError
        On invalid inputs, see :func:`confusion_matrix`.
    """
    lt, lp = _check_pair(labels_true, labels_pred)
    return _per_class(_contingency(lt, lp))


def _per_class(ct: Dict[str, np.ndarray], match: Optional[Tuple[np.ndarray, ...]] = None
               ) -> Dict[Label, Dict[str, Any]]:
    rows, cols, tps = match if match is not None else _match(ct)
    col_of_row = {int(r): int(c) for r, c in zip(rows, cols)}
    tp_of_row = {int(r): int(t) for r, t in zip(rows, tps)}
    report: Dict[Label, Dict[str, Any]] = {}
    for i, cls in enumerate(ct["classes"]):
        support = int(ct["row_sums"][i])
        j = col_of_row.get(i)
        if j is None:
            precision = recall = f1 = 0.0
            matched: Optional[Label] = None
        else:
            tp = tp_of_row[i]
            predicted = int(ct["col_sums"][j])
            precision = tp / predicted if predicted else 0.0
            recall = tp / support if support else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            matched = _py(ct["clusters"][j])
        report[_py(cls)] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": support,
            "matched_cluster": matched,
        }
    return report


def clustering_report(labels_true: ArrayLike, labels_pred: ArrayLike) -> Dict[str, Any]:
    """All external metrics at once, as JSON-serialisable plain Python types.

    Parameters
    ----------
    labels_true : array-like of shape (n_samples,)
        Ground-truth class labels (integers or strings).
    labels_pred : array-like of shape (n_samples,)
        Predicted cluster ids (``-1`` is treated as its own cluster by every
        metric).

    Returns
    -------
    dict
        ``accuracy``, ``nmi`` (arithmetic), ``ari``, ``v_measure`` (beta=1),
        ``purity`` (floats); ``n_clusters`` (number of distinct predicted clusters
        *excluding* the noise label ``-1``), ``n_noise`` (number of samples labelled
        ``-1``), ``n_classes``, ``n_samples`` (ints); and ``per_class``, the output
        of :func:`per_class_report`.  Class keys of ``per_class`` are ints or
        strings (``json.dumps`` turns int keys into strings).

    Raises
    ------
    ValueError, TypeError
        On invalid inputs, see :func:`confusion_matrix`.
    """
    lt, lp = _check_pair(labels_true, labels_pred)
    ct = _contingency(lt, lp)
    clusters = ct["clusters"]
    has_noise = bool(np.any(clusters == -1))
    n_noise = int(ct["col_sums"][np.flatnonzero(clusters == -1)[0]]) if has_noise else 0
    match = _match(ct)
    return {
        "accuracy": _accuracy(ct, match),
        "nmi": _nmi(ct, "arithmetic"),
        "ari": _ari(ct),
        "v_measure": _v_measure(ct, 1.0),
        "purity": _purity(ct),
        "n_clusters": int(clusters.shape[0] - int(has_noise)),
        "n_noise": n_noise,
        "n_classes": int(ct["classes"].shape[0]),
        "n_samples": int(lt.shape[0]),
        "per_class": _per_class(ct, match),
    }


# --------------------------------------------------------------------------- #
# Internal (label-free) metrics
# --------------------------------------------------------------------------- #
def _distances(A: np.ndarray, B: np.ndarray, metric: str, b_sq: Optional[np.ndarray]) -> np.ndarray:
    """Distance block between rows of A and rows of B (both float64)."""
    if metric in ("euclidean", "sqeuclidean"):
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
    rows_per_block = max(1, _CHUNK_BYTES // (8 * k * (d + 4)))  # diff, then ~4 row x k temporaries
    for i0 in range(0, k, rows_per_block):
        blk = centroids[i0 : i0 + rows_per_block]
        diff = blk[:, None, :] - centroids[None, :, :]
        cd = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
        del diff
        max_cdist = max(max_cdist, float(np.abs(cd).max()))
        cd[cd == 0] = np.inf
        scores[i0 : i0 + blk.shape[0]] = np.max((intra[i0 : i0 + blk.shape[0], None] + intra[None, :]) / cd, axis=1)

    if np.allclose(intra, 0) or max_cdist <= 1e-8:  # np.allclose(cdist, 0)
        return 0.0
    return float(np.mean(scores))
