"""Exact k-nearest neighbours on a Dask cluster (:class:`embedcluster.dask.NearestNeighbors`):
block-pair tasks on the workers, merged there by a fixed-order tree (see ``_knn_blocks``)."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import numpy as np

from . import _knn_blocks as blocks
from ._backend import as_matrix, engine_metric, memory_limit_arg, precision_arg, reports_sqrt
from ._progress import Progress, check_verbose
from .cluster.neighbors import NearestNeighbors as LocalNearestNeighbors
from .cluster.neighbors import check_k_available, check_n_neighbors, knn_graph, stream_block_rows

# ---- Tasks (module-level functions: workers import them by name).


def _checked_block_task(block: Any, offset: int, cosine: bool) -> np.ndarray:
    """A chunk as float32 C-contiguous, checked as the single-machine fit checks X (the same
    messages; Dask re-raises a task's exception on the client)."""
    out = as_matrix(np.asarray(block), estimator="NearestNeighbors", allow_empty=True, row_offset=offset)
    if cosine and (np.einsum("ij,ij->i", out, out) == 0).any():
        raise ValueError("X has zero-norm rows; the cosine metric is undefined for them")
    return out


def _read_rows_task(paths: List[str], a: int, b: int, cosine: bool) -> np.ndarray:
    """Rows a..b of the .npy files at `paths` read as one array (memory-mapped on the worker)."""
    from .data.sharded import ShardedArray

    shards = [np.load(p, mmap_mode="r") for p in paths]
    src = shards[0] if len(shards) == 1 else ShardedArray(shards)
    return _checked_block_task(src[a:b], a, cosine)


def _pair_task(db: np.ndarray, queries: np.ndarray, k: int, db_offset: int, diagonal: bool,
               args: blocks.EngineArgs) -> blocks.TopK:
    return blocks.pair_topk(db, queries if not diagonal else db, k, db_offset, diagonal, args)


def _merge_task(a: blocks.TopK, b: blocks.TopK, k: int) -> blocks.TopK:
    return blocks.merge_topk([a, b], k)


def _report_task(part: blocks.TopK, metric: str, sqrt: bool) -> Tuple[np.ndarray, np.ndarray]:
    dist = blocks.reported_distances(part[0], metric)
    return (np.sqrt(np.maximum(dist, 0.0)) if sqrt else dist), part[1]


def _file_paths(X: Any) -> Optional[List[str]]:
    """The .npy files behind X when X is a whole memory-mapped .npy file (np.load(mmap_mode="r"))
    or a ShardedArray of them: workers then read their rows by path. None otherwise."""
    from .data.sharded import ShardedArray

    parts = X.shards if isinstance(X, ShardedArray) else [X]
    paths = []
    for m in parts:
        filename = getattr(m, "filename", None)
        if not isinstance(m, np.memmap) or not filename:
            return None
        try:
            whole = np.load(str(filename), mmap_mode="r")
        except (OSError, ValueError):
            return None
        if (whole.shape, whole.dtype, whole.strides, whole.offset) != (m.shape, m.dtype, m.strides, m.offset):
            return None
        paths.append(str(filename))
    return paths


class NearestNeighbors:
    """Exact k-nearest neighbours on a Dask cluster, identical to :class:`embedcluster.NearestNeighbors`.

    ``fit`` keeps the rows on the workers, one block per chunk: a :class:`dask.array.Array`
    (any chunking along rows, uneven included), a memory-mapped ``.npy`` or a
    :class:`~embedcluster.data.ShardedArray` of them (workers read their blocks from the same
    paths: a shared or local file system; blocks of at most 64 MiB), or a numpy array (its blocks
    are sent to the workers). :meth:`kneighbors` runs one task per (query chunk, fitted chunk)
    pair (``_core.knn_search`` with the exact fp64 values), merges each query chunk's results on
    the workers in a fixed pairwise tree by (value, index), and the client receives only the
    final (n_queries, k) arrays. Distances and indices are bit-identical to the single-machine
    estimator on the same rows, for any chunking and number of workers. Results are numpy
    arrays.

    Parameters
    ----------
    n_neighbors, radius, metric, precision, memory_limit
        As :class:`embedcluster.NearestNeighbors` (the same validation and messages);
        ``memory_limit`` applies to each task on its worker. Only the native backend runs here.
    n_threads, client
        As :class:`embedcluster.dask.KMeans` (threads of each task, default 0: the worker's
        OpenMP default; the cluster, default the current client).
    verbose : None, bool or int, default=None
        Progress of :meth:`kneighbors` on the client, one query block at a time as its result is
        ready (None: as the caller shows progress; silent in plain library calls).

    Attributes
    ----------
    n_samples_fit_, n_features_in_
    bytes_received_ : int
        Bytes the client received from the workers in the last :meth:`kneighbors` (or fit).

    Ctrl-C on the client cancels the futures in flight. A task lost with its worker is recomputed
    by Dask (every task is deterministic), so results do not change. ``radius_neighbors`` is not
    offered here: use the single-machine estimator, which streams memory maps and shards.
    """

    def __init__(self, n_neighbors: int = 5, *, radius: float = 1.0, metric: str = "euclidean",
                 n_threads: int = 0, precision: str = "auto", memory_limit: Optional[int] = None,
                 client: Any = None, verbose: Any = None):
        self.n_neighbors, self.radius, self.metric = n_neighbors, radius, metric
        self.verbose = verbose
        self.n_threads, self.precision, self.memory_limit, self.client = n_threads, precision, memory_limit, client

    def _local(self) -> LocalNearestNeighbors:
        """The single-machine estimator with these parameters (its validation, its messages)."""
        return LocalNearestNeighbors(self.n_neighbors, radius=self.radius, metric=self.metric, backend="native",
                                     n_threads=None if self.n_threads == 0 else self.n_threads,
                                     precision=self.precision, memory_limit=self.memory_limit)

    def _args(self) -> blocks.EngineArgs:
        return blocks.EngineArgs(engine_metric(self.metric), int(self.n_threads), precision_arg(self.precision),
                                 memory_limit_arg(self.memory_limit))

    def _blocks(self, client: Any, X: Any, name: str = "X") -> Tuple[list, List[Tuple[int, int]]]:
        """X as futures of checked float32 blocks on the workers, and their row bounds."""
        from .dask import _require_dask

        da, _, _ = _require_dask()
        cosine = self.metric == "cosine"
        if isinstance(X, da.Array):
            if X.ndim != 2:
                as_matrix(np.zeros((1,) * X.ndim, np.float32), name, estimator="NearestNeighbors")
            if len(X.chunks[1]) != 1:
                X = X.rechunk({1: -1})  # a chunk holds whole rows
            bounds = blocks.bounds_of_sizes(X.chunks[0])
            parts = X.to_delayed().ravel().tolist()
            futs = [client.submit(_checked_block_task, p, a, cosine) for p, (a, _) in zip(client.compute(parts),
                                                                                          bounds)]
            return futs, bounds
        if not hasattr(X, "shape") or not hasattr(X, "dtype"):
            X = as_matrix(X, name, estimator="NearestNeighbors", allow_empty=True)
        if len(X.shape) != 2:
            as_matrix(X[:1], name, estimator="NearestNeighbors")  # the single-machine message
        bounds = blocks.block_bounds(int(X.shape[0]), stream_block_rows(int(X.shape[1]), self.memory_limit)) \
            or [(0, 0)]
        paths = _file_paths(X)
        if paths is not None:
            return [client.submit(_read_rows_task, paths, a, b, cosine, pure=False) for a, b in bounds], bounds
        scattered = client.scatter([np.asarray(X[a:b]) for a, b in bounds])
        return [client.submit(_checked_block_task, s, a, cosine) for s, (a, _) in zip(scattered, bounds)], bounds

    def fit(self, X: Any, y: Any = None) -> NearestNeighbors:
        """Keeps X's rows on the workers (checked there: finite values, nonzero rows for cosine)."""
        from .dask import _require_dask

        _, _, default_client = _require_dask()
        self._local()._validate_params()
        memory_limit_arg(self.memory_limit)
        if not (isinstance(self.n_threads, (int, np.integer)) and self.n_threads >= 0):
            raise ValueError(f"n_threads={self.n_threads!r} should be an int >= 0 (0: the worker's default)")
        client = self.client or default_client()
        futs, bounds = self._blocks(client, X)
        if bounds[-1][1] == 0:
            as_matrix(np.zeros((0, int(X.shape[1])), np.float32), estimator="NearestNeighbors")  # the empty message
        self._gather(client, [client.submit(_shape_task, f) for f in futs])  # the checks, now
        self._client, self._fit_blocks, self._fit_bounds = client, futs, bounds
        self.n_samples_fit_, self.n_features_in_ = int(bounds[-1][1]), int(X.shape[1])
        return self

    def _gather(self, client: Any, futures: list) -> list:
        try:
            out = client.gather(futures)
        except KeyboardInterrupt:
            client.cancel(futures)
            raise
        from .dask import _nbytes

        self.bytes_received_ = sum(_nbytes(o) for o in out)
        return out

    def kneighbors(self, X: Any = None, n_neighbors: Optional[int] = None, return_distance: bool = True):
        """The k nearest fitted rows of each query, nearest first, as numpy arrays:
        ``(distances, indices)`` (n_queries, k), or only indices. X=None is the self-join that
        leaves each row out. X: a dask array, memory map, ShardedArray or array."""
        if not hasattr(self, "_fit_blocks"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError("This NearestNeighbors instance is not fitted yet. Call 'fit' first.")
        from .dask import finished

        k = check_n_neighbors(self.n_neighbors if n_neighbors is None else n_neighbors)
        check_verbose(self.verbose, "embedcluster.dask.NearestNeighbors")
        client = self._client
        if X is None:
            q_futs, q_bounds, self_join = self._fit_blocks, self._fit_bounds, True
        else:
            if hasattr(X, "shape") and len(X.shape) == 2 and int(X.shape[1]) != self.n_features_in_:
                raise ValueError(f"X has {X.shape[-1]} features, but NearestNeighbors is expecting "
                                 f"{self.n_features_in_} features as input.")
            q_futs, q_bounds = self._blocks(client, X)
            self_join = False
        nq = q_bounds[-1][1]
        check_k_available(k, self.n_samples_fit_, self_join, nq)
        plan = blocks.PairPlan(q_bounds, self._fit_bounds, self_join)
        args, sqrt = self._args(), reports_sqrt(self.metric)
        submitted: list = [] if X is None else list(q_futs)  # cancelled on Ctrl-C
        finals = []

        def merge(a: Any, b: Any) -> Any:
            return _track(submitted, client.submit(_merge_task, a, b, k))

        try:
            for i, q in enumerate(q_futs):
                parts = [client.submit(_pair_task, self._fit_blocks[j], q, k, self._fit_bounds[j][0], diag, args)
                         for j, diag in plan.pairs(i)]
                submitted += parts
                merged = blocks.tree_merge(parts, merge)
                finals.append(_track(submitted, client.submit(_report_task, merged, args.metric, sqrt)))
            with Progress("kNN search", total=len(finals), verbose=self.verbose, unit="query block") as shown:
                for _ in finished(finals, shown.ticker()):
                    shown.update(1)
            out = self._gather(client, finals)
        except KeyboardInterrupt:
            client.cancel(submitted)
            raise
        dist = np.concatenate([o[0] for o in out]) if out else np.zeros((0, k), np.float32)
        idx = np.concatenate([o[1] for o in out]) if out else np.zeros((0, k), np.int64)
        return (dist, idx) if return_distance else idx

    def kneighbors_graph(self, X: Any = None, n_neighbors: Optional[int] = None, mode: str = "connectivity"):
        """Sparse CSR graph (n_queries, n_samples_fit) of the k nearest neighbours, as
        :meth:`embedcluster.NearestNeighbors.kneighbors_graph`."""
        if mode not in ("connectivity", "distance"):
            raise ValueError(f"mode={mode!r} should be 'connectivity' or 'distance'")
        dist, idx = self.kneighbors(X, n_neighbors)
        return knn_graph(dist, idx, self.n_samples_fit_, mode)


def _shape_task(block: np.ndarray) -> Tuple[int, int]:
    return block.shape


def _track(submitted: list, future: Any) -> Any:
    submitted.append(future)
    return future
