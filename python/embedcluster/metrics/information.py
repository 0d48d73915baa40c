"""Agreement scores that need no matching: NMI, ARI and V-measure, computed by scikit-learn
(sparse contingency table, O(n) memory) after the package's own label checks."""

from __future__ import annotations

import math
import numbers

import numpy as np
from numpy.typing import ArrayLike

from ._validation import _check_pair


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
    return _nmi(lt, lp, average_method)


def _nmi(lt: np.ndarray, lp: np.ndarray, average_method: str) -> float:
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(lt, lp, average_method=average_method))


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
    return _ari(lt, lp)


def _ari(lt: np.ndarray, lp: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(lt, lp))


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
    return _v_measure(lt, lp, float(beta))


def _v_measure(lt: np.ndarray, lp: np.ndarray, beta: float) -> float:
    from sklearn.metrics import v_measure_score

    return float(v_measure_score(lt, lp, beta=beta))
