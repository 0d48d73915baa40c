"""Exact nearest-neighbour search with scikit-learn conventions: :class:`NearestNeighbors`."""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any, Optional

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from .. import _faiss
from .. import _knn_blocks as blocks
from .._backend import (METRICS, PRECISIONS, _core, as_matrix, check_python_memory, engine_metric, memory_budget,
                        memory_limit_arg, precision_arg, reports_sqrt, resolve_backend, threads_arg)
from .._progress import Progress
from ._common import check_features, engine_constraints, store_params
from .kmeans import streamed_rows

# Python objects per query of radius_neighbors' result: two array views and two object slots.
_RADIUS_OBJECTS_PER_QUERY = 2 * 112 + 2 * 8

# Bytes of float32 rows per block when rows are streamed (the most; a small memory budget cuts it,
# see stream_block_rows). Each engine call packs a private copy of its database block.
STREAM_BLOCK_BYTES = 64 << 20

# A float32 C-contiguous memory map is searched in place by one engine call when this many times its
# size fits in the memory budget (the call packs a private copy of all rows); else it is streamed.
SINGLE_CALL_FACTOR = 2


def stream_source(X: Any, memory_limit: Any) -> Any:
    """X itself when its rows should be streamed block by block instead of used as one array: a
    ShardedArray, a memory map that is not float32 and C-contiguous (see ``KMeans``), or a
    float32 C-contiguous memory map too large for one call (SINGLE_CALL_FACTOR times its size
    beyond the memory budget: ``memory_limit``, or ``_core.default_memory_limit()``). None else."""
    if streamed_rows(X) is not None:
        return X
    if isinstance(X, np.memmap) and X.ndim == 2 and SINGLE_CALL_FACTOR * float(X.nbytes) > memory_budget(memory_limit):
        return X
    return None


def stream_block_rows(d: int, memory_limit: Any) -> int:
    """Rows per streamed block: STREAM_BLOCK_BYTES of float32 rows, or a sixteenth of the memory
    budget when that is smaller (a query block, a database block, its packed copy and the
    engine's buffers stay well within the budget)."""
    budget = memory_budget(memory_limit)
    return max(1, int(min(float(STREAM_BLOCK_BYTES), budget / 16)) // (4 * d))


def read_block(X: Any, a: int, b: int, name: str = "X", check_finite: bool = True) -> np.ndarray:
    """Rows a..b of a streamed source as float32 C-contiguous (a view when they already are),
    checked as ``as_matrix`` checks a whole array (messages name rows of X)."""
    return as_matrix(X[a:b], name, estimator="NearestNeighbors", allow_empty=True, check_finite=check_finite,
                     row_offset=a)


def check_stream_header(X: Any, name: str = "X", allow_empty: bool = False) -> None:
    """The checks of ``as_matrix`` that need no rows (dimensions, dtype, features, emptiness), made
    on the first row only."""
    if X.ndim != 2:
        as_matrix(X[:1], name, estimator="NearestNeighbors")  # raises as for an in-memory array
    as_matrix(X[:min(1, int(X.shape[0]))], name, estimator="NearestNeighbors", allow_empty=allow_empty,
              check_finite=False)


def knn_graph(dist: np.ndarray, idx: np.ndarray, n_samples_fit: int, mode: str) -> Any:
    """The CSR graph (n_queries, n_samples_fit) of kneighbors' output: ones or distances."""
    from scipy.sparse import csr_matrix

    nq, k = idx.shape
    data = np.ones(nq * k) if mode == "connectivity" else dist.ravel().astype(np.float64)
    return csr_matrix((data, idx.ravel(), np.arange(0, nq * k + 1, k)), shape=(nq, n_samples_fit))


def check_n_neighbors(k: Any) -> int:
    """n_neighbors of a query: an int >= 1 (the message of scikit-learn)."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"Expected n_neighbors > 0. Got {k!r}")
    return int(k)


# Bytes compared per step when queries may be the fitted rows (the comparison stops at the first
# block that differs).
_SAME_ROWS_BLOCK_BYTES = 4 << 20


def same_rows(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` hold the same rows bit for bit: the same object or buffer, or
    C-contiguous arrays of the same shape and dtype with the same bytes (compared block by
    block, stopping at the first difference; nothing is read unless shape and dtype match).
    Arrays that are not C-contiguous compare False (the estimator's arrays always are)."""
    if a is b:
        return True
    if a.shape != b.shape or a.dtype != b.dtype or not (a.flags.c_contiguous and b.flags.c_contiguous):
        return False
    if a.__array_interface__["data"][0] == b.__array_interface__["data"][0]:
        return True
    # Raw bytes, so that -0.0 and 0.0 differ as they do in the rows.
    flat_a, flat_b = a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)
    step = _SAME_ROWS_BLOCK_BYTES
    return all(np.array_equal(flat_a[s:s + step], flat_b[s:s + step]) for s in range(0, flat_a.size, step))


def check_k_available(k: int, n_samples_fit: int, self_join: bool, n_queries: int) -> None:
    """k must not exceed the fitted rows (one fewer in the self-join, which leaves each row out)."""
    if k > n_samples_fit - (1 if self_join else 0):
        raise ValueError(
            f"Expected n_neighbors <= n_samples_fit, but n_neighbors = {k}, n_samples_fit = "
            f"{n_samples_fit}, n_samples = {n_queries}"
        )


def _host_rows(X: Any) -> Any:
    """Device arrays copied to the host; anything else as it is."""
    from .. import cuda

    return cuda.to_host(X) if cuda.is_device_array(X) else X


class NearestNeighbors(BaseEstimator):
    """Exact k-nearest-neighbour and radius search (brute force on fast tiles, exact results).

    Parameters
    ----------
    n_neighbors : int, default=5
        Neighbours returned by :meth:`kneighbors` when none is given.
    radius : float, default=1.0
        Radius of :meth:`radius_neighbors` when none is given, in the metric's units.
    metric : {"euclidean", "l2", "sqeuclidean", "cosine", "inner_product"}, default="euclidean"
        "inner_product" ranks by the dot product, largest first, and reports the dot products.
    backend : {"auto", "native", "faiss", "cuda"}, default="auto"
    n_threads : int or None, default=None
    precision : {"auto", "fp32"}, default="auto"
        "auto" uses the kernel set measured fastest on this CPU at first use (bf16 tile products
        where they beat fp32; ``embedcluster info`` shows the choice), "fp32" the fastest fp32
        kernels; results are identical (float64 re-check within the error bound).
    memory_limit : int or None, default=None
        Bytes of working memory one native call may use (its outputs included, the input data
        not); also the budget that sizes streamed blocks (see Notes). None:
        ``embedcluster._core.default_memory_limit()`` when the call starts (3/4 of the least
        of the available memory, the room RLIMIT_AS leaves and the room the memory cgroup
        leaves); 0: no limit; a value between 0 and 1 is an error.
        A call that would need more raises ``MemoryError`` (``_core.MemoryLimitError``) naming
        the size it needed, before allocating it. The faiss backend ignores it.
    verbose : bool, int or None, default=None
        Progress of :meth:`kneighbors` and :meth:`radius_neighbors` (query blocks searched), as
        ``embedcluster.KMeans``'s ``verbose``: 0 / False silent, 1 / True shown, None shown
        only inside a caller that shows progress (the command line, ``TransferClustering``).

    Notes
    -----
    Results are those of a float64 brute force on the float32 data: neighbours within the
    float32 tiles' error bound of the k-th are re-checked in float64; ties go to the lower
    index. ``kneighbors()`` with no X is the self-join that leaves each point out, as in
    scikit-learn; ``kneighbors(X)`` with the fitted rows again (the same array or the same bytes;
    checked cheaply, an in-memory fit only) runs the same symmetric self-join keeping each point,
    with results bit-identical to the one-sided scan of other queries.

    Data bigger than memory: ``fit`` takes a memory-mapped ``.npy`` (``np.load(path,
    mmap_mode="r")``) or a :class:`~embedcluster.data.ShardedArray` without loading it. A
    ShardedArray, a memory map that is not float32 C-contiguous, and a float32 C-contiguous
    memory map whose size, doubled, exceeds the memory budget (``memory_limit``, else
    ``_core.default_memory_limit()``) are streamed: :meth:`kneighbors`, :meth:`kneighbors_graph`
    and :meth:`radius_neighbors` read the fitted rows in blocks (at most 64 MiB of float32 rows,
    or a sixteenth of the budget), search each block with the engine and merge the blocks' exact
    results, bit-identical to the in-memory search. Queries given as such an array are streamed
    too (``kneighbors()`` on a streamed fit is the self-join by query blocks x database blocks).
    Private memory: the outputs (n_queries x k), a query block, a database block and the
    engine's buffers, whatever the file size. A smaller memory map is searched in place by one
    engine call (faster). ``fit`` reads a streamed X once to check it (finite values; nonzero
    rows for cosine). Streaming needs the native backend.
    """

    def __init__(self, n_neighbors: int = 5, *, radius: float = 1.0, metric: str = "euclidean",
                 backend: str = "auto", n_threads: Optional[int] = None, precision: str = "auto",
                 memory_limit: Optional[int] = None, verbose: Any = None):
        store_params(self, locals())

    # See embedcluster.KMeans._parameter_constraints.
    _parameter_constraints: dict = {
        **engine_constraints(),
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "radius": [Interval(Real, 0, np.inf, closed="left")],
        "metric": [StrOptions(set(METRICS))],
        "precision": [StrOptions(set(PRECISIONS))],
    }

    def fit(self, X: Any, y: Any = None) -> NearestNeighbors:
        """Stores the database rows (float32; no copy when X already is float32 C-contiguous), or a
        reference to a streamed X (a memory map or ShardedArray; see the class notes)."""
        self._validate_params()
        memory_limit_arg(self.memory_limit)
        if resolve_backend(self.backend, "nearest neighbours", X) == "cuda":
            return self._fit_cuda(X)
        streamed = stream_source(X, self.memory_limit)
        if streamed is not None:
            return self._fit_streamed(streamed)
        X = as_matrix(X, estimator="NearestNeighbors")
        if self.metric == "cosine" and (np.einsum("ij,ij->i", X, X) == 0).any():
            raise ValueError("X has zero-norm rows; the cosine metric is undefined for them")
        self._fit_X = X
        self._streamed = False
        self.n_samples_fit_ = X.shape[0]
        self.n_features_in_ = X.shape[1]
        self.backend_ = resolve_backend(self.backend, "nearest neighbours")
        return self

    def _fit_cuda(self, X: Any) -> NearestNeighbors:
        """Keeps X (a device array as it is, anything else as float32) for the CUDA engine's
        kneighbors; radius queries and graphs run on the CPU engine from a host copy."""
        from .. import cuda

        if not cuda.is_device_array(X):
            X = as_matrix(X, estimator="NearestNeighbors")
        self._fit_X = X
        self._streamed = False
        self.n_samples_fit_ = int(X.shape[0])
        self.n_features_in_ = int(X.shape[1])
        self.backend_ = "cuda"
        return self

    def _host_twin(self) -> NearestNeighbors:
        """The same estimator fitted on the CPU engine with a host copy of the rows (radius queries)."""
        twin = getattr(self, "_twin", None)
        if twin is None:
            params = {**self.get_params(), "backend": "native"}
            twin = self._twin = NearestNeighbors(**params).fit(_host_rows(self._fit_X))
        return twin

    def _kneighbors_cuda(self, X: Any, k: int):
        from .. import cuda
        from .._backend import cuda_engine

        self_join = X is None
        if not self_join and not cuda.is_device_array(X):
            X = as_matrix(X, estimator="NearestNeighbors")
            check_features(self, X)
        check_k_available(k, self.n_samples_fit_, self_join, self.n_samples_fit_ if self_join else int(X.shape[0]))
        dist, idx = cuda.kneighbors(self._fit_X, X, k, engine_metric(self.metric), engine=cuda_engine())
        return cuda.to_host(dist), np.asarray(cuda.to_host(idx), dtype=np.int64)

    def _fit_streamed(self, X: Any) -> NearestNeighbors:
        backend = resolve_backend(self.backend, "nearest neighbours")
        if backend != "native":
            raise ValueError("backend='faiss' needs X as one in-memory array; sharded or memory-mapped "
                             "input is streamed by the native engine (backend='native')")
        check_stream_header(X)
        n, d = int(X.shape[0]), int(X.shape[1])
        step = stream_block_rows(d, self.memory_limit)
        for a, b in blocks.block_bounds(n, step):  # one pass: the checks as_matrix makes in memory
            block = read_block(X, a, b)
            if self.metric == "cosine" and (np.einsum("ij,ij->i", block, block) == 0).any():
                raise ValueError("X has zero-norm rows; the cosine metric is undefined for them")
        self._fit_X = X
        self._streamed = True
        self.n_samples_fit_ = n
        self.n_features_in_ = d
        self.backend_ = backend
        return self

    def _queries(self, X: Any):
        """(queries, self_join, streamed): an in-memory float32 array, or a streamed source
        (checked here up to its values, which are checked as its blocks are read); streamed
        when the queries or the fitted rows are read by blocks."""
        check_is_fitted(self, "_fit_X")
        if X is None:
            return self._fit_X, True, getattr(self, "_streamed", False)
        if stream_source(X, self.memory_limit) is not None:
            check_stream_header(X, allow_empty=True)
            check_features(self, X)
            return X, False, True
        Q = as_matrix(X, "X", estimator="NearestNeighbors", allow_empty=True)
        check_features(self, Q)
        streamed = getattr(self, "_streamed", False)
        if not streamed and same_rows(Q, self._fit_X):
            # The fitted rows themselves: the engine sees queries that are its database and runs
            # the symmetric self-join (each point among its own neighbours), whose results are
            # those of the one-sided scan bit for bit.
            Q = self._fit_X
        return Q, False, streamed

    def _plan(self, Q: Any, self_join: bool):
        """Blocks of the queries and of the fitted rows, and how to read them: a streamed source
        block by block (checked as it is read), an in-memory array by views."""
        step = stream_block_rows(self.n_features_in_, self.memory_limit)
        n_db, nq = self.n_samples_fit_, int(Q.shape[0])
        db_bounds = blocks.block_bounds(n_db, step) if getattr(self, "_streamed", False) else [(0, n_db)]
        q_bounds = db_bounds if self_join else blocks.block_bounds(nq, step)
        plan = blocks.PairPlan(q_bounds, db_bounds, self_join)

        def query_block(i: int) -> np.ndarray:
            a, b = q_bounds[i]
            return read_block(Q, a, b)

        def db_block(j: int) -> np.ndarray:
            a, b = db_bounds[j]
            return read_block(self._fit_X, a, b, check_finite=False)  # checked by fit

        limit = memory_limit_arg(self.memory_limit)  # the default limit read once, not per block
        args = blocks.EngineArgs(engine_metric(self.metric), threads_arg(self.n_threads), precision_arg(self.precision),
                                 _core.default_memory_limit() if limit is None else limit)
        return plan, query_block, db_block, args

    def _report(self, values: np.ndarray) -> np.ndarray:
        if reports_sqrt(self.metric):
            return np.sqrt(np.maximum(values, 0.0))
        return values

    def kneighbors(self, X: Any = None, n_neighbors: Optional[int] = None, return_distance: bool = True):
        """The k nearest fitted rows of each query, nearest first.

        Returns ``(distances, indices)`` of shape (n_queries, k), or only indices when
        ``return_distance=False``. X=None queries the fitted rows, each leaving itself out.
        X holding the fitted rows (the fitted array, or any array whose float32 form has the same
        bytes) runs the symmetric self-join with each point among its own neighbours, as
        scikit-learn does when X is passed: half the products, the one-sided scan's results.
        """
        k = check_n_neighbors(self.n_neighbors if n_neighbors is None else n_neighbors)
        if getattr(self, "backend_", None) == "cuda":
            dist, idx = self._kneighbors_cuda(X, k)
            return (self._report(dist), idx) if return_distance else idx
        Q, self_join, streamed = self._queries(X)
        check_k_available(k, self.n_samples_fit_, self_join, int(Q.shape[0]))
        metric = engine_metric(self.metric)
        if Q.shape[0] == 0:
            dist, idx = np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        elif streamed:
            plan, query_block, db_block, args = self._plan(Q, self_join)
            with Progress("kNN search", total=len(plan.query_bounds), verbose=self.verbose, unit="block") as shown:
                dist, idx = blocks.knn_over_blocks(plan, query_block, db_block, k, args,
                                                   progress=lambda done, total: shown.update(1))
        elif self.backend_ == "native":
            with Progress("kNN search", verbose=self.verbose) as shown:
                dist, idx = _core.knn_search(self._fit_X, Q, k, metric, self_join, threads_arg(self.n_threads),
                                             precision_arg(self.precision), memory_limit_arg(self.memory_limit),
                                             progress=shown.callback())
        else:
            dist, idx = _faiss.knn(self._fit_X, Q, int(k), metric, self_join)
        return (self._report(dist), idx) if return_distance else idx

    def radius_neighbors(self, X: Any = None, radius: Optional[float] = None, return_distance: bool = True,
                         sort_results: bool = False):
        """Fitted rows within ``radius`` (inclusive) of each query.

        Returns object arrays of per-query arrays, like scikit-learn: ``(distances, indices)``
        or only indices. Indices are ascending unless ``sort_results=True`` (nearest first).
        The results count against ``memory_limit`` as they are found: a radius that finds
        more neighbours than the limit holds raises ``MemoryError`` before exceeding it (count
        them first with ``_core.radius_count``, use a smaller radius, or query in batches).
        """
        r = self.radius if radius is None else radius
        if not np.isfinite(r) or r < 0:
            raise ValueError(f"radius={r!r} should be a finite number >= 0")
        if self.metric == "inner_product":
            raise ValueError("radius queries need a distance metric, not 'inner_product'")
        if getattr(self, "backend_", None) == "cuda":  # the CUDA engine has no radius search yet
            return self._host_twin().radius_neighbors(None if X is None else _host_rows(X), r, return_distance,
                                                      sort_results)
        Q, self_join, streamed = self._queries(X)
        metric = engine_metric(self.metric)
        r_engine = r * r if reports_sqrt(self.metric) else r
        if self.backend_ == "native":  # the native call charges the neighbours; here the per-query objects
            check_python_memory(float(Q.shape[0]) * _RADIUS_OBJECTS_PER_QUERY, self.memory_limit,
                                f"radius_neighbors' result objects for {Q.shape[0]} queries")
        if Q.shape[0] == 0:
            ptr, ind, dist = np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        elif streamed:
            plan, query_block, db_block, args = self._plan(Q, self_join)
            ptr, ind, dist = blocks.radius_over_blocks(plan, query_block, db_block, float(r_engine), args)
        elif self.backend_ == "native":
            with Progress("radius search", verbose=self.verbose) as shown:
                ptr, ind, dist = _core.radius_search(self._fit_X, Q, float(r_engine), metric, self_join,
                                                     threads_arg(self.n_threads), precision_arg(self.precision),
                                                     memory_limit_arg(self.memory_limit), progress=shown.callback())
        else:
            ptr, ind, dist = _faiss.radius(self._fit_X, Q, float(r_engine), metric, self_join)
        dist = self._report(dist)
        out_i = np.empty(Q.shape[0], dtype=object)
        out_d = np.empty(Q.shape[0], dtype=object)
        for q in range(Q.shape[0]):
            ii, dd = ind[ptr[q]:ptr[q + 1]], dist[ptr[q]:ptr[q + 1]]
            if sort_results:
                o = np.lexsort((ii, dd))
                ii, dd = ii[o], dd[o]
            out_i[q], out_d[q] = ii, dd
        return (out_d, out_i) if return_distance else out_i

    def kneighbors_graph(self, X: Any = None, n_neighbors: Optional[int] = None, mode: str = "connectivity"):
        """Sparse CSR graph (n_queries, n_samples_fit) of the k nearest neighbours.

        ``mode="connectivity"`` stores ones, ``mode="distance"`` the distances.
        """
        if mode not in ("connectivity", "distance"):
            raise ValueError(f"mode={mode!r} should be 'connectivity' or 'distance'")
        check_is_fitted(self, "_fit_X")
        if self.backend_ == "native":  # the kNN outputs, their reported copy, the graph's data and indices
            nq = self.n_samples_fit_ if X is None else len(X)
            k = self.n_neighbors if n_neighbors is None else n_neighbors
            if isinstance(k, (int, np.integer)) and k > 0:
                check_python_memory(float(nq) * k * (12 + 4 + 8 + 8) + 8.0 * (nq + 1), self.memory_limit,
                                    f"kneighbors_graph of {nq} queries x {k} neighbours")
        dist, idx = self.kneighbors(X, n_neighbors)
        return knn_graph(dist, idx, self.n_samples_fit_, mode)
