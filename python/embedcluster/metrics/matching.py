"""Metrics that match clusters to classes: confusion matrix, Hungarian matching and accuracy,
purity, per-class reports."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike

from ._validation import Label, _budget, _check_pair, _py
from .contingency import _contingency, _dense


#: Largest dense table (cells) the Hungarian matching uses; larger tables are matched sparsely.
_DENSE_MATCH_CELLS = 2**22


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
