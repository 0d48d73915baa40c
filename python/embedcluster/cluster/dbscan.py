"""DBSCAN with scikit-learn conventions: :class:`DBSCAN`.

Runs on the native engine by default (``backend="native"`` or ``"auto"``) and on FAISS when
asked (``backend="faiss"``). Input is converted to float32 once (see ``as_matrix``).
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, Optional

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from .. import _faiss
from .._backend import _core, as_matrix, engine_metric, memory_limit_arg, resolve_backend, threads_arg
from ._common import CLUSTER_METRICS, check_features, engine_constraints, store_params


class DBSCAN(ClusterMixin, BaseEstimator):
    """DBSCAN on the native engine, in O(n) memory beyond the data.

    Parameters
    ----------
    eps : float, default=0.5
        Neighbourhood radius (inclusive): a Euclidean distance for "euclidean", a cosine
        distance 1 - cos for "cosine".
    min_samples : int, default=5
        Neighbours within eps, the point itself included, that make a core point (as
        scikit-learn).
    metric : {"euclidean", "l2", "cosine"}, default="euclidean"
    backend : {"auto", "native", "faiss"}, default="auto"
        "faiss" builds the neighbourhood graph with a FAISS range search (more memory).
    n_threads : int or None, default=None
    memory_limit : int or None, default=None
        Bytes of working memory the fit may use (see ``embedcluster.NearestNeighbors``).
        When the optional projection bounds (16 bytes per pair of 192-row tiles) do not fit,
        they are left out: the same result, with less pruning. So is the bf16 copy of the
        rows (half the input) that bf16 kernels read gathered rows from: the same result,
        with rows packed per product instead.

    Attributes
    ----------
    labels_ : ndarray (n_samples,), int64
        Cluster of each row, -1 for noise. Clusters are numbered in the order of their
        lowest-index core point.
    core_sample_indices_ : ndarray of core-point indices (ascending)
    components_ : ndarray (n_core, n_features), float32, the core points
    n_clusters_ : int
    n_features_in_ : int

    Notes
    -----
    Core points and the partition of core points are those of the DBSCAN definition and
    equal scikit-learn's. A border point (not core, within eps of a core point) joins the
    cluster of its nearest core point (ties: lower index), which makes the result independent
    of visiting order; scikit-learn instead gives it the first cluster that reaches it.
    Every eps decision is exact: the fast tiles (bf16 where the CPU has AVX-512 BF16, else
    float32) are narrowed with float32 products and re-checked in float64 near eps.
    """

    def __init__(self, eps: float = 0.5, *, min_samples: int = 5, metric: str = "euclidean",
                 backend: str = "auto", n_threads: Optional[int] = None, memory_limit: Optional[int] = None):
        store_params(self, locals())

    # See embedcluster.KMeans._parameter_constraints.
    _parameter_constraints: dict = {
        **engine_constraints(),
        "eps": [Interval(Real, 0, np.inf, closed="neither")],
        "min_samples": [Interval(Integral, 1, None, closed="left")],
        "metric": [StrOptions(CLUSTER_METRICS)],
    }

    def fit(self, X: Any, y: Any = None) -> DBSCAN:
        """Finds clusters and noise. ``y`` is ignored."""
        self._validate_params()
        metric = engine_metric(self.metric)
        memory_limit = memory_limit_arg(self.memory_limit)
        X = as_matrix(X, estimator="DBSCAN")
        backend = resolve_backend(self.backend, "DBSCAN")
        if backend == "native":
            r = _core.dbscan_fit(X, float(self.eps), int(self.min_samples), metric,
                                 n_threads=threads_arg(self.n_threads), memory_limit=memory_limit)
            labels, is_core = r.labels, r.is_core
            self.stats_ = {k: int(getattr(r, k))
                           for k in ("tile_pairs", "pairs_computed_pass1", "pairs_computed_pass2")}
        else:
            labels, is_core, _ = _faiss.dbscan(X, float(self.eps), int(self.min_samples), metric)
            self.stats_ = {}
        self.labels_ = np.asarray(labels, dtype=np.int64)
        self.core_sample_indices_ = np.flatnonzero(np.asarray(is_core, dtype=bool))
        self.components_ = X[self.core_sample_indices_]  # fancy indexing copies already
        self.n_clusters_ = int(self.labels_.max() + 1) if len(self.labels_) else 0
        self.n_features_in_ = X.shape[1]
        self.backend_ = backend
        return self

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fits and returns ``labels_``."""
        return self.fit(X).labels_

    def predict(self, X: Any) -> np.ndarray:
        """Cluster of each new row: that of its nearest core point when within eps, else -1."""
        check_is_fitted(self)
        X = as_matrix(X, estimator="DBSCAN")
        check_features(self, X)
        if len(self.core_sample_indices_) == 0:
            return np.full(X.shape[0], -1, dtype=np.int64)
        metric = engine_metric(self.metric)
        if self.backend_ == "native":
            dist, idx = _core.knn_search(self.components_, X, 1, metric, n_threads=threads_arg(self.n_threads),
                                         memory_limit=memory_limit_arg(self.memory_limit))
        else:
            dist, idx = _faiss.knn(self.components_, X, 1, metric, exclude_self=False)
        limit = self.eps * self.eps if metric == "l2" else self.eps
        core_labels = self.labels_[self.core_sample_indices_]
        return np.where(dist[:, 0] <= limit, core_labels[idx[:, 0]], -1).astype(np.int64)
