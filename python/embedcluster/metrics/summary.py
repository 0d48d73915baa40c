"""clustering_report: every external metric from one contingency table, as JSON-ready values."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np
from numpy.typing import ArrayLike

from ._validation import _check_pair
from .contingency import _contingency
from .information import _ari, _nmi, _v_measure
from .matching import _accuracy, _match, _per_class, _purity


def clustering_report(labels_true: ArrayLike, labels_pred: ArrayLike, *,
                      class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """All external metrics at once, as JSON-serialisable plain Python types.

    Parameters
    ----------
    labels_true : array-like of shape (n_samples,)
        Ground-truth class labels (integers or strings).
    labels_pred : array-like of shape (n_samples,)
        Predicted cluster ids (``-1`` is treated as its own cluster by every
        metric).
    class_names : sequence of str, optional
        Names of the true classes when ``labels_true`` holds their indices (class ``i`` is
        ``class_names[i]``): ``per_class`` is then keyed by name (see :func:`name_classes`).

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
        "nmi": _nmi(lt, lp, "arithmetic"),
        "ari": _ari(lt, lp),
        "v_measure": _v_measure(lt, lp, 1.0),
        "purity": _purity(ct),
        "n_clusters": int(clusters.shape[0] - int(has_noise)),
        "n_noise": n_noise,
        "n_classes": int(ct["classes"].shape[0]),
        "n_samples": int(lt.shape[0]),
        "per_class": name_classes(_per_class(ct, match), class_names),
    }


def name_classes(per_class: Dict[Any, Any], class_names: Optional[Sequence[str]]) -> Dict[Any, Any]:
    """``per_class`` (of :func:`clustering_report` or :func:`per_class_report`) keyed by class
    name: an integer key ``i`` with ``0 <= i < len(class_names)`` becomes ``class_names[i]``;
    other keys (names already, or indices without a name) stay. Order is kept. Two classes that
    would get the same name raise ValueError (a name must say which class it is)."""
    if class_names is None:
        return dict(per_class)
    names = [str(c) for c in class_names]

    def name(key: Any) -> Any:
        is_index = isinstance(key, (int, np.integer)) and not isinstance(key, bool)
        return names[int(key)] if is_index and 0 <= int(key) < len(names) else key

    out = {name(k): v for k, v in per_class.items()}
    if len(out) != len(per_class):
        raise ValueError(f"class_names {names} give two classes the same name; each class needs its own")
    return out
