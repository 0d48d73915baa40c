"""DBSCAN with scikit-learn conventions: :class:`DBSCAN`.

Runs on the native engine by default (``backend="native"`` or ``"auto"``) and on FAISS when
asked (``backend="faiss"``). Input is converted to float32 once (see ``as_matrix``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from numbers import Integral, Real
from os import PathLike
from typing import Any, Iterator, Optional

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from .. import _faiss
from .._interface import advice
from .._backend import (EngineMetric, _core, as_matrix, engine_metric, memory_budget, memory_limit_arg, resolve_backend,
                        threads_arg)
from .._progress import Progress
from ._common import CLUSTER_METRICS, check_features, engine_constraints, store_params
from ._eps import EpsWarning, auto_eps, core_distances, eps_advice

# Core rows a streamed fit's predict reads at a time.
STREAM_ROWS = 1 << 16


def _streams(X: Any, memory_limit: Any) -> bool:
    """True for a memory map or ShardedArray whose in-memory fit (its rows in float32 and the
    engine's packed copy of them) would not fit the memory budget."""
    from ..data.sharded import ShardedArray

    if not isinstance(X, (np.memmap, ShardedArray)) or len(X.shape) != 2:
        return False
    return 8.0 * X.shape[0] * X.shape[1] > memory_budget(memory_limit)


@contextmanager
def scratch_folder(parent: Any, needed: float) -> Iterator[str]:
    """A new folder under `parent` (default: the temporary folder) with room for `needed`
    bytes, removed with everything in it afterwards."""
    base = tempfile.gettempdir() if parent is None else os.fspath(parent)
    if not os.path.isdir(base):
        raise ValueError(advice(f"scratch_dir={base!r} is not a folder", f"--scratch-dir {base} is not a folder"))
    free = shutil.disk_usage(base).free
    if free < needed + (64 << 20):
        raise OSError(f"DBSCAN on streamed input writes a reordered copy of the rows ({needed / 2**30:.2f} GiB) "
                      f"but {base!r} has {free / 2**30:.2f} GiB free; "
                      + advice("pass scratch_dir= a folder with room", "pass --scratch-dir a folder with room"))
    path = tempfile.mkdtemp(prefix="embedcluster-dbscan-", dir=base)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class DBSCAN(ClusterMixin, BaseEstimator):
    """DBSCAN on the native engine, in O(n) memory beyond the data.

    Parameters
    ----------
    eps : float or "auto", default="auto"
        Neighbourhood radius (inclusive): a Euclidean distance for "euclidean", a cosine
        distance 1 - cos for "cosine". "auto": the knee of the sorted k-distance curve (each
        point's distance to its (min_samples - 1)-th nearest other point, the smallest eps
        that makes it core), from the engine's exact kNN; the value is ``eps_``. The knee is
        the point of the curve farthest below the chord from its first to its last point, both
        axes scaled to [0, 1] (Kneedle): where the flat part (points inside clusters) turns
        into the steep tail (noise). It costs one exact kNN search (k = min_samples - 1) of
        every row, or above 20,000 rows of a fixed random sample of 20,000 rows against all
        rows (a uniform sample's sorted curve has the full curve's quantiles).
    min_samples : int, default=5
        Neighbours within eps, the point itself included, that make a core point (as
        scikit-learn).
    metric : {"euclidean", "l2", "cosine"}, default="euclidean"
    backend : {"auto", "native", "faiss", "cuda"}, default="auto"
        "faiss" builds the neighbourhood graph with a FAISS range search (more memory).
    n_threads : int or None, default=None
    memory_limit : int or None, default=None
        Bytes of working memory the fit may use (see ``embedcluster.NearestNeighbors``).
        When the optional projection bounds (16 bytes per pair of 192-row tiles) do not fit,
        they are left out: the same result, with less pruning. So is the bf16 copy of the
        rows (half the input) that bf16 kernels read gathered rows from: the same result,
        with rows packed per product instead.
    scratch_dir : str, path or None, default=None
        Where a fit on data streamed from disk (a memory map or ShardedArray too large for
        memory: see Notes) writes its reordered copy of the rows (as many bytes as the rows in
        float32), in a new folder of its own that it removes afterwards. None: the system's
        temporary folder.
    verbose : bool, int or None, default=None
        Progress of ``fit`` (with ``eps="auto"`` the kNN search first, then the four steps:
        layout, tile bounds, neighbour counts, clusters),
        as ``embedcluster.KMeans``'s ``verbose``: 0 / False silent, 1 / True shown, None shown
        only inside a caller that shows progress (the command line, ``TransferClustering``).

    Attributes
    ----------
    eps_ : float
        The eps the fit used: ``eps`` as given, or the one "auto" chose.
    k_distances_ : ndarray float64 or None
        With ``eps="auto"``: the sorted k-distance curve the knee was read from (each point's
        distance to its (min_samples - 1)-th nearest other point, ascending; of a fixed random
        sample of 20,000 points above that size), to plot or to pick another eps from; None
        when eps was given.
    labels_ : ndarray (n_samples,), int64
        Cluster of each row, -1 for noise. Clusters are numbered in the order of their
        lowest-index core point.
    core_sample_indices_ : ndarray of core-point indices (ascending)
    components_ : ndarray (n_core, n_features), float32, the core points (for a streamed fit
        whose core rows would not fit in memory, a view that reads them from X when sliced)
    n_clusters_ : int
    n_features_in_ : int

    Warns
    -----
    EpsWarning (a UserWarning)
        When more than 90% of the points (of at least 20) end up noise (eps too small) or in one
        cluster (eps too large); the message says which way to move eps.

    Notes
    -----
    Core points and the partition of core points are those of the DBSCAN definition and
    equal scikit-learn's. A border point (not core, within eps of a core point) joins the
    cluster of its nearest core point (ties: lower index), which makes the result independent
    of visiting order; scikit-learn instead gives it the first cluster that reaches it.
    Every eps decision is exact: the fast tiles (bf16 where the CPU has AVX-512 BF16, else
    float32) are narrowed with float32 products and re-checked in float64 near eps.

    A memory map (``np.load(path, mmap_mode="r")``) or a ``ShardedArray`` whose in-memory fit
    would need more than the memory budget (twice its rows in float32 against ``memory_limit``
    or the default limit) is streamed: its rows are grouped by a k-means of a sample into a
    scratch copy (``scratch_dir``) and every pair of groups whose bounding balls come within
    eps is compared with the engine's exact calls. The labels and core points are the same;
    private memory stays about 60 bytes per row plus the tiles.
    """

    def __init__(self, eps: Any = "auto", *, min_samples: int = 5, metric: str = "euclidean",
                 backend: str = "auto", n_threads: Optional[int] = None, memory_limit: Optional[int] = None,
                 scratch_dir: Any = None, verbose: Any = None):
        store_params(self, locals())

    # See embedcluster.KMeans._parameter_constraints.
    _parameter_constraints: dict = {
        **engine_constraints(),
        "eps": [Interval(Real, 0, np.inf, closed="neither"), StrOptions({"auto"})],
        "min_samples": [Interval(Integral, 1, None, closed="left")],
        "metric": [StrOptions(CLUSTER_METRICS)],
        "scratch_dir": [str, PathLike, None],
    }

    def fit(self, X: Any, y: Any = None) -> DBSCAN:
        """Finds clusters and noise. ``y`` is ignored."""
        self._validate_params()
        metric = engine_metric(self.metric)
        memory_limit = memory_limit_arg(self.memory_limit)
        backend = resolve_backend(self.backend, "DBSCAN", X)
        if backend == "cuda":
            self._fit_cuda(X, metric)
            return self._warn_on_eps()
        if _streams(X, self.memory_limit):
            self._fit_streamed(X, metric)
            return self._warn_on_eps()
        X = as_matrix(X, estimator="DBSCAN")
        self._choose_eps(X, "native")
        if backend == "native":
            with Progress("DBSCAN", verbose=self.verbose) as shown:
                r = _core.dbscan_fit(X, self.eps_, int(self.min_samples), metric,
                                     n_threads=threads_arg(self.n_threads), memory_limit=memory_limit,
                                     progress=shown.callback())
            labels, is_core = r.labels, r.is_core
            self.stats_ = {k: int(getattr(r, k))
                           for k in ("tile_pairs", "pairs_computed_pass1", "pairs_computed_pass2")}
        else:
            labels, is_core, _ = _faiss.dbscan(X, self.eps_, int(self.min_samples), metric)
            self.stats_ = {}
        self.labels_ = np.asarray(labels, dtype=np.int64)
        self.core_sample_indices_ = np.flatnonzero(np.asarray(is_core, dtype=bool))
        self.components_ = X[self.core_sample_indices_]  # fancy indexing copies already
        self.n_clusters_ = int(self.labels_.max() + 1) if len(self.labels_) else 0
        self.n_features_in_ = X.shape[1]
        self.backend_ = backend
        return self._warn_on_eps()

    def _choose_eps(self, X: Any, backend: str) -> None:
        """Sets eps_: eps as given, or for "auto" the knee of the sorted core distances of X
        (the engine's exact kNN on `backend`)."""
        if not isinstance(self.eps, str):
            self.eps_, self.k_distances_ = float(self.eps), None
            return
        if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
            raise ValueError(f"X must be a non-empty 2-D array (n_samples, n_features), got shape {X.shape}")
        from .neighbors import NearestNeighbors

        def exact_knn(k: int) -> NearestNeighbors:
            return NearestNeighbors(k, metric=self.metric, backend=backend, n_threads=self.n_threads,
                                    memory_limit=self.memory_limit, verbose=self.verbose)

        self.k_distances_ = core_distances(X, int(self.min_samples), exact_knn)
        self.eps_ = auto_eps(self.k_distances_)

    def _warn_on_eps(self) -> DBSCAN:
        """Warns (EpsWarning) when the fit labelled nearly everything noise or one cluster;
        returns the estimator."""
        message = eps_advice(self.labels_, self.eps_, k_distances=self.k_distances_)
        if message is not None:
            warnings.warn(message, EpsWarning, stacklevel=3)
        return self

    def _fit_cuda(self, X: Any, metric: EngineMetric) -> DBSCAN:
        """fit on the CUDA engine (embedcluster.cuda.dbscan): the CPU engine's labels."""
        from .. import cuda
        from .._backend import cuda_engine

        if not cuda.is_device_array(X):
            X = as_matrix(X, estimator="DBSCAN")
        self._choose_eps(X, "cuda")
        labels, is_core, _, n_clusters = cuda.dbscan(X, self.eps_, int(self.min_samples), metric,
                                                     engine=cuda_engine())
        self.labels_ = np.asarray(cuda.to_host(labels), dtype=np.int64)
        self.core_sample_indices_ = np.flatnonzero(np.asarray(is_core, dtype=bool))
        self.components_ = np.ascontiguousarray(cuda.to_host(X)[self.core_sample_indices_], dtype=np.float32)
        self.n_clusters_ = int(n_clusters)
        self.n_features_in_ = int(X.shape[1])
        self.stats_ = {}
        self.backend_ = "cuda"
        return self

    def _fit_streamed(self, X: Any, metric: EngineMetric) -> DBSCAN:
        from .._dbscan_groups import RowSelection, fit_streamed, span_rows_for

        if resolve_backend(self.backend, "DBSCAN") != "native":
            raise ValueError("backend='faiss' needs X as one in-memory array; memory-mapped or sharded input "
                             "too large for memory is streamed by the native engine (backend='native')")
        if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
            raise ValueError(f"X must be a non-empty 2-D array (n_samples, n_features), got shape {X.shape}")
        n, d = int(X.shape[0]), int(X.shape[1])
        self._choose_eps(X, "native")
        with scratch_folder(self.scratch_dir, 4.0 * n * d) as scratch:
            # A set of groups with no neighbours outside it is fitted whole when its rows, their
            # packed copy and the engine's per-row state fit the budget (about 14 bytes a value).
            budget = memory_budget(self.memory_limit)
            whole_rows = int(min(budget / (14.0 * d), 2**40))
            r = fit_streamed(X, self.eps_, int(self.min_samples), metric, scratch, threads_arg(self.n_threads),
                             max_component_rows=whole_rows, span_rows=span_rows_for(d, budget),
                             verbose=self.verbose)
        self.labels_ = r.labels
        self.core_sample_indices_ = np.flatnonzero(r.is_core)
        core_bytes = 4.0 * len(self.core_sample_indices_) * d
        self.components_ = (np.ascontiguousarray(X[self.core_sample_indices_], dtype=np.float32)
                            if core_bytes <= memory_budget(self.memory_limit) / 4 else
                            RowSelection(X, self.core_sample_indices_))
        self.n_clusters_ = int(r.labels.max() + 1) if n else 0
        self.n_features_in_ = d
        self.backend_ = "native"
        self.stats_ = {"groups_pairs": r.pairs, "groups_pairs_linked": r.pairs_linked,
                       "groups_components_whole": r.components}
        return self

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fits and returns ``labels_``."""
        return self.fit(X).labels_

    def predict(self, X: Any) -> np.ndarray:
        """Cluster of each new row: that of its nearest core point when within eps, else -1."""
        # components_, not any attribute: fit sets eps_ before its native call, so an
        # interrupted fit must still read as unfitted.
        check_is_fitted(self, "components_")
        X = as_matrix(X, estimator="DBSCAN")
        check_features(self, X)
        if len(self.core_sample_indices_) == 0:
            return np.full(X.shape[0], -1, dtype=np.int64)
        metric = engine_metric(self.metric)
        if not isinstance(self.components_, np.ndarray):  # a streamed fit's core rows, read in blocks
            from .._dbscan_groups import nearest_over_blocks

            d0, i0 = nearest_over_blocks(self.components_, X, metric, STREAM_ROWS, threads_arg(self.n_threads))
            dist, idx = d0[:, None], i0[:, None]
        elif self.backend_ in ("native", "cuda"):  # after a GPU fit, new rows are placed on the CPU
            dist, idx = _core.knn_search(self.components_, X, 1, metric, n_threads=threads_arg(self.n_threads),
                                         memory_limit=memory_limit_arg(self.memory_limit))
        else:
            dist, idx = _faiss.knn(self.components_, X, 1, metric, exclude_self=False)
        limit = self.eps_ * self.eps_ if metric == "l2" else self.eps_
        core_labels = self.labels_[self.core_sample_indices_]
        return np.where(dist[:, 0] <= limit, core_labels[idx[:, 0]], -1).astype(np.int64)
