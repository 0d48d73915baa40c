"""Agreement scores that need no matching: NMI, ARI and V-measure."""

from __future__ import annotations

import math
import numbers
from typing import Dict

import numpy as np
from numpy.typing import ArrayLike

from ._validation import _check_pair
from .contingency import _contingency, _entropy, _mutual_info


_AVERAGE_METHODS = ("min", "geometric", "arithmetic", "max")


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
