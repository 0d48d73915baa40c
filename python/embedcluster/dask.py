"""embedcluster on a Dask cluster: the same exact algorithms, run next to the data.

:class:`KMeans` fits on a :class:`dask.array.Array` (any chunking along rows) with the engine's
chunk calls as tasks: every chunk stays on its worker with its labels and pruning bounds, and
only fixed-point centre sums (integers, added exactly in any order) travel to the client. The
centres, labels, inertia and iteration count are bit-identical to
:class:`embedcluster.KMeans` on the same rows from the same initial centres (given, or seeded
by k-means|| over the chunks with the same integer ``random_state``), for any chunking and any
number of workers.

:func:`embed` embeds a dask array or bag with an encoder on the workers (see
:mod:`embedcluster._dask_embed`); its result, a dask array, goes straight into :class:`KMeans`.

Needs ``dask[array]`` and ``distributed`` (``pip install embedcluster[dask]``) on the client
and on every worker, with the same embedcluster version.

Faults: a task lost with its worker is recomputed by Dask from its inputs (every task is
deterministic), so the result does not change. Ctrl-C on the client cancels the fit's futures.

:class:`NearestNeighbors` (kneighbors / kneighbors_graph by block-pair tasks merged on the
workers, identical to :class:`embedcluster.NearestNeighbors`) lives in ``_dask_knn``.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from . import _core
from ._chunked import ChunkStats, FitParams, fit_over_chunks, iteration_progress
from ._progress import check_verbose
from ._dask_embed import embed
from .cluster._eps import EpsWarning, auto_eps, core_distances, eps_advice

__all__ = ["DBSCAN", "DaskChunks", "KMeans", "NearestNeighbors", "embed"]

log = logging.getLogger(__name__)


def _require_dask():
    try:
        import dask.array as da
        from distributed import Client, default_client
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "embedcluster.dask needs dask and distributed: pip install 'embedcluster[dask]' "
            "(or pip install 'dask[array]' distributed)"
        ) from e
    return da, Client, default_client


# ---- Tasks (module-level functions: workers import them by name).

def _block_f32(block: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(block, dtype=np.float32)


def _weights_f32(w: Optional[np.ndarray]) -> Optional[np.ndarray]:
    return None if w is None else np.ascontiguousarray(w, dtype=np.float32)


def _stats_task(block, w, metric, offset, n_threads):
    s = _core.kmeans_chunk_stats(block, metric, _weights_f32(w), offset, n_threads)
    return (s.n, np.asarray(s.colmax), np.asarray(s.absmax), s.wmax)


def _moments_task(block, absmax, n_total, metric, n_threads):
    return _core.kmeans_chunk_moments(block, absmax, n_total, metric, n_threads)


def _pass_task(state, block, w, centers, qscale, wscale, metric, prune, n_threads, precision):
    # A new state each pass: a task may run twice (a lost worker, a retry) and must give the
    # same result from the same input.
    st = _core.KMeansChunkState() if state is None else state.copy()
    changed = _core.kmeans_chunk_pass(st, centers, block, qscale, wscale, metric, _weights_f32(w), prune,
                                      n_threads, precision)
    return st, changed


def _summary_task(result):
    st, changed = result
    return changed, st.sums


def _state_task(result):
    return result[0]


def _farthest_task(state, block, centers, count, metric, offset, n_threads):
    dist, rows = _core.kmeans_chunk_farthest(centers, block, state.labels, count, metric, n_threads)
    return dist, rows + offset


def _rows_task(state, block, w, local_rows):
    return (np.ascontiguousarray(block[local_rows]), None if w is None else np.asarray(w)[local_rows],
            state.labels[local_rows])


def _objective_task(state, block, w, centers, scale, metric, n_threads):
    return _core.kmeans_chunk_objective(centers, block, state.labels, scale, metric, _weights_f32(w), n_threads)


def _labels_task(state):
    return state.labels


def _seed_units_task(block, w, wscale):
    return _core.kmeans_seed_units(block, wscale, _weights_f32(w))


def _seed_pick_task(block, w, target, wscale):
    return block[_core.kmeans_seed_pick(block, target, wscale, _weights_f32(w))]


def _seed_nearer_task(state, block, w, batch, pscale, metric, n_threads, precision):
    # A new state each call, as _pass_task: a task run twice gives the same result.
    st = _core.KMeansSeedState() if state is None else state.copy()
    limbs = _core.kmeans_seed_nearer(st, batch, block, pscale, metric, _weights_f32(w), n_threads, precision)
    return st, limbs


def _seed_sample_task(state, block, w, pot, n_clusters, seed, round_, offset):
    return _core.kmeans_seed_sample(state, block, pot, n_clusters, seed, round_, offset, _weights_f32(w))


def _seed_units_of_candidates_task(block, w, candidates, wscale, metric, n_threads, precision):
    return _core.kmeans_seed_candidate_units(candidates, block, wscale, metric, _weights_f32(w), n_threads, precision)


class DaskChunks:
    """A :class:`~embedcluster._chunked.ChunkRunner` whose chunks are the blocks of a Dask array,
    kept in the workers' memory for the whole fit.

    Every reduction happens on the client in chunk order; bytes received from the workers are
    counted in ``bytes_received``.
    """

    def __init__(self, client: Any, X: Any, sample_weight: Any = None, n_threads: int = 0,
                 precision: str = "auto"):
        da, _, _ = _require_dask()
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (n_samples, n_features), got {X.ndim}-D")
        if len(X.chunks[1]) != 1:
            X = X.rechunk({1: -1})  # a chunk holds whole rows
        self.client = client
        self.row_chunks = [int(c) for c in X.chunks[0]]
        self.offsets = np.concatenate([[0], np.cumsum(self.row_chunks)]).astype(np.int64)
        blocks = X.map_blocks(_block_f32, dtype=np.float32).to_delayed().ravel().tolist()
        self.blocks = client.compute(blocks)
        if sample_weight is not None:
            w = da.asarray(sample_weight)
            if w.shape != (X.shape[0],):
                raise ValueError(f"sample_weight must have one weight per row ({X.shape[0]}), got shape {w.shape}")
            w = w.rechunk((tuple(self.row_chunks),))
            self.weights = client.compute(w.to_delayed().ravel().tolist())
        else:
            self.weights = [None] * len(self.blocks)
        self.n_threads, self.precision = n_threads, precision
        self.reset()
        self.bytes_received = 0
        self._waiting: list = []  # the futures the client waits on now (for cancel)
        self.tick: Optional[Callable[[], None]] = None  # called while a wait goes on (progress)

    def _gather(self, futures):
        self._waiting = list(futures)
        if self.tick is not None:
            for _ in finished(self._waiting, self.tick):
                pass
        out = self.client.gather(futures)
        self._waiting = []
        self.bytes_received += sum(_nbytes(o) for o in out)
        return out

    def reset(self) -> None:
        """Fresh per-chunk states (a new run of the fit or of the seeding)."""
        self.states: list = [None] * len(self.blocks)
        self.seed_states: list = [None] * len(self.blocks)

    def cancel(self) -> None:
        """Cancels the fit's work in flight and what it holds on the workers (Ctrl-C)."""
        held = self._waiting + [s for s in self.states + self.seed_states if s is not None] + list(self.blocks)
        self.client.cancel(held + [w for w in self.weights if w is not None])

    def release(self) -> None:
        """Drops the client's references, so the workers free the blocks and states."""
        self.blocks, self.states, self.weights, self._waiting = [], [], [], []
        self.seed_states = []

    def stats(self, metric):
        futs = [self.client.submit(_stats_task, b, w, metric, int(o), self.n_threads)
                for b, w, o in zip(self.blocks, self.weights, self.offsets)]
        return [ChunkStats(*s) for s in self._gather(futs)]

    def moments(self, absmax, n_total, metric):
        futs = [self.client.submit(_moments_task, b, absmax, n_total, metric, self.n_threads) for b in self.blocks]
        return self._gather(futs)

    def assign(self, centers, qscale, wscale, metric, prune):
        passes = [self.client.submit(_pass_task, s, b, w, centers, qscale, wscale, metric, prune, self.n_threads,
                                     self.precision)
                  for s, b, w in zip(self.states, self.blocks, self.weights)]
        self.states = [self.client.submit(_state_task, p) for p in passes]
        return self._gather([self.client.submit(_summary_task, p) for p in passes])

    def farthest(self, centers, count, metric):
        futs = [self.client.submit(_farthest_task, s, b, centers, count, metric, int(o), self.n_threads)
                for s, b, o in zip(self.states, self.blocks, self.offsets)]
        return self._gather(futs)

    def rows(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        chunk = np.searchsorted(self.offsets, rows, side="right") - 1
        parts = {}
        for c in np.unique(chunk):
            local = rows[chunk == c] - self.offsets[c]
            parts[int(c)] = self.client.submit(_rows_task, self.states[c], self.blocks[c], self.weights[c], local)
        got = dict(zip(parts, self._gather(list(parts.values()))))
        x = np.empty((len(rows), got[int(chunk[0])][0].shape[1]), dtype=np.float32)
        w = None if self.weights[0] is None else np.empty(len(rows), dtype=np.float32)
        labels = np.empty(len(rows), dtype=np.int64)
        for c, (cx, cw, cl) in got.items():
            sel = np.flatnonzero(chunk == c)
            x[sel], labels[sel] = cx, cl
            if w is not None:
                w[sel] = cw
        return x, w, labels

    def objective(self, centers, scale, metric):
        futs = [self.client.submit(_objective_task, s, b, w, centers, scale, metric, self.n_threads)
                for s, b, w in zip(self.states, self.blocks, self.weights)]
        return self._gather(futs)

    def labels(self):
        parts = self._gather([self.client.submit(_labels_task, s) for s in self.states])
        return np.concatenate(parts)


    def seed_units(self, wscale):
        return self._gather([self.client.submit(_seed_units_task, b, w, wscale)
                             for b, w in zip(self.blocks, self.weights)])

    def seed_pick(self, chunk, target, wscale):
        return self._gather([self.client.submit(_seed_pick_task, self.blocks[chunk], self.weights[chunk], target,
                                                wscale)])[0]

    def seed_nearer(self, batch, pscale, metric):
        calls = [self.client.submit(_seed_nearer_task, s, b, w, batch, pscale, metric, self.n_threads, self.precision)
                 for s, b, w in zip(self.seed_states, self.blocks, self.weights)]
        self.seed_states = [self.client.submit(_state_task, c) for c in calls]
        return self._gather([self.client.submit(_second_task, c) for c in calls])

    def seed_sample(self, pot, n_clusters, seed, round_):
        futs = [self.client.submit(_seed_sample_task, s, b, w, pot, n_clusters, seed, round_, int(o))
                for s, b, w, o in zip(self.seed_states, self.blocks, self.weights, self.offsets)]
        return self._gather(futs)

    def seed_candidate_units(self, candidates, wscale, metric):
        futs = [self.client.submit(_seed_units_of_candidates_task, b, w, candidates, wscale, metric, self.n_threads,
                                   self.precision)
                for b, w in zip(self.blocks, self.weights)]
        return self._gather(futs)


def _second_task(result):
    return result[1]


#: While no task finishes, finished() calls its ``tick`` this often (so progress can say the
#: work goes on: a log line every ``_progress.LOG_EVERY_S``, a bar's elapsed time).
TICK_S = 0.5


def finished(futures: Sequence[Any], tick: Optional[Callable[[], None]] = None,
             with_results: bool = False) -> Iterator[Any]:
    """Each future once it has finished (any order; with ``with_results``, its result), as
    ``distributed.as_completed``; ``tick()`` is called every ``TICK_S`` while none finishes."""
    from distributed import as_completed

    done = as_completed(list(futures), with_results=with_results)
    if tick is None:
        yield from done
        return
    # as_completed notifies this condition after queueing each finished future: checking the
    # queue while holding it cannot miss a wake-up, so a result is taken as soon as it comes.
    woken = getattr(done, "thread_condition", None)
    while not done.is_empty():
        if woken is not None:
            with woken:
                if not done.has_ready():
                    woken.wait(timeout=TICK_S)
        elif not done.has_ready():
            time.sleep(0.01)
        batch = done.next_batch(block=False)
        if batch:
            yield from batch
        else:
            tick()


def _nbytes(obj: Any) -> int:
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o) for o in obj)
    return 8


class KMeans:
    """Exact k-means on a Dask cluster, bit-identical to :class:`embedcluster.KMeans`.

    Parameters
    ----------
    n_clusters : int, default=8
    init : "k-means||" or array (n_clusters, n_features), default=None
        The initial centres (pass the same array to :class:`embedcluster.KMeans` to get the same
        fit on one machine), or "k-means||": seeded over the chunks, bit-identical to
        :class:`embedcluster.KMeans` with ``init="k-means||"`` and the same integer
        ``random_state`` for any chunking. When the rounds of k-means|| find no more candidate
        rows than clusters (data with few distinct rows), the single-machine estimator falls back
        to k-means++ on all rows; here that raises ValueError: pass init as an array then.
    n_init : int, default=1
        With init="k-means||": runs from seeds ``seed + r * 0x9E3779B97F4A7C15`` (r < n_init);
        the lowest inertia wins, as :class:`embedcluster.KMeans` does.
    random_state : int, RandomState, Generator or None, default=None
        The seed of k-means|| (as :class:`embedcluster.KMeans`).
    max_iter, tol, metric, precision, prune
        As :class:`embedcluster.KMeans` (``prune="auto"`` prunes for ``n_clusters >= 16``).
    n_threads : int, default=0
        Threads of each task on its worker (0: the worker's OpenMP default; start workers with
        ``OMP_NUM_THREADS`` equal to their threads' share of the cores).
    client : distributed.Client or None
        The cluster to run on; None uses the current default client.
    verbose : None, bool or int, default=None
        Progress on the client, as :class:`embedcluster.KMeans`'s: the k-means|| rounds, then
        the iterations as their sums arrive (None: as the caller shows progress, e.g. on in the
        command line; silent in plain library calls; see ``embedcluster._progress``).

    Attributes
    ----------
    cluster_centers_, labels_, inertia_, n_iter_, n_features_in_
        As :class:`embedcluster.KMeans` (``labels_`` is a numpy array).
    n_empty_repaired_ : int
    iteration_seconds_ : list of float
        Wall time of each Lloyd iteration (of every run when n_init > 1; a run's first iteration
        includes its k-means|| seeding).
    bytes_received_ : int
        Bytes the client received from the workers during the fit (sums, statistics, labels).
    """

    def __init__(self, n_clusters: int = 8, *, init: Any = None, n_init: int = 1, max_iter: int = 300,
                 tol: float = 1e-4, metric: str = "l2", precision: str = "auto", prune: Any = "auto",
                 n_threads: int = 0, random_state: Any = None, client: Any = None, verbose: Any = None):
        self.n_clusters, self.init, self.max_iter, self.tol = n_clusters, init, max_iter, tol
        self.verbose = verbose
        self.n_init, self.random_state = n_init, random_state
        self.metric, self.precision, self.prune = metric, precision, prune
        self.n_threads, self.client = n_threads, client

    def _params(self, d: int, weighted: bool):
        from ._backend import engine_metric

        if not (isinstance(self.n_clusters, (int, np.integer)) and self.n_clusters >= 1):
            raise ValueError(f"n_clusters={self.n_clusters!r} should be an int >= 1")
        if not (isinstance(self.max_iter, (int, np.integer)) and self.max_iter >= 1):
            raise ValueError(f"max_iter={self.max_iter!r} should be an int >= 1")
        if not (isinstance(self.tol, (int, float)) and self.tol >= 0):
            raise ValueError(f"tol={self.tol!r} should be a number >= 0")
        if self.metric not in ("l2", "euclidean", "cosine"):
            raise ValueError(f"metric={self.metric!r} should be 'l2', 'euclidean' or 'cosine'")
        if not (isinstance(self.n_init, (int, np.integer)) and self.n_init >= 1):
            raise ValueError(f"n_init={self.n_init!r} should be an int >= 1")
        prune = self.n_clusters >= _core.KMEANS_PRUNE_MIN_K if self.prune == "auto" else bool(self.prune)
        p = FitParams(int(self.n_clusters), metric=engine_metric(self.metric), max_iter=int(self.max_iter),
                      tol=float(self.tol), prune=prune, weighted=weighted)
        return self._init_of(d), p

    def _init_of(self, d: int) -> Any:
        """init checked: "k-means||" or an array of n_clusters finite centres."""
        if isinstance(self.init, str) and self.init == "k-means||":
            return self.init
        if self.init is None or isinstance(self.init, str):
            raise ValueError("embedcluster.dask.KMeans needs init as an array of initial centres "
                             f"(shape (n_clusters, n_features) = ({self.n_clusters}, {d})) or init='k-means||'"
                             + (f", not {self.init!r}" if self.init is not None else ""))
        init = np.ascontiguousarray(self.init, dtype=np.float32)
        if init.shape != (self.n_clusters, d):
            raise ValueError(f"init has shape {init.shape} but should be (n_clusters, n_features) = "
                             f"({self.n_clusters}, {d})")
        if not np.isfinite(init).all():
            raise ValueError("init contains NaN or infinity")
        return init

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> KMeans:
        """Fits on a dask array (or anything ``dask.array.asarray`` takes). ``y`` is ignored."""
        da, _, default_client = _require_dask()
        client = self.client or default_client()
        X = da.asarray(X)
        init, p = self._params(int(X.shape[1]), sample_weight is not None)
        check_verbose(self.verbose, "embedcluster.dask.KMeans")
        runner = DaskChunks(client, X, sample_weight, self.n_threads, self.precision)
        times: list = []
        last = [time.perf_counter()]

        def timed(it: int, changed: int, shift: float) -> None:
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now
            log.debug("k-means iteration %d: %d labels changed, centre shift %.3g", it, changed, shift)

        try:
            from ._backend import precision_arg, seed_of

            with iteration_progress(p.max_iter, int(self.n_init), self.verbose, timed) as (progress, runner.tick):
                r = fit_over_chunks(runner, init, p, seed_of(self.random_state), int(self.n_init), progress,
                                    self.n_threads, precision_arg(self.precision), self.verbose)
        except KeyboardInterrupt:
            runner.cancel()
            raise
        self.cluster_centers_ = r.centers
        self.labels_ = r.labels
        self.inertia_ = r.inertia
        self.n_iter_ = r.n_iter
        self.n_empty_repaired_ = r.n_empty_repaired
        self.n_features_in_ = int(X.shape[1])
        self.iteration_seconds_ = times
        self.bytes_received_ = runner.bytes_received
        runner.release()
        return self

    def predict(self, X: Any) -> Any:
        """Nearest centre of each row, as a lazy dask array (exact, ties to the lower index)."""
        da, _, _ = _require_dask()
        from ._backend import engine_metric, precision_arg

        X = da.asarray(X)
        if len(X.chunks[1]) != 1:
            X = X.rechunk({1: -1})
        centers, metric = self.cluster_centers_, engine_metric(self.metric)
        n_threads, precision = self.n_threads, precision_arg(self.precision)

        def assign(block):
            labels, _ = _core.kmeans_assign(centers, _block_f32(block), metric, n_threads=n_threads,
                                            precision=precision)
            return labels

        return X.map_blocks(assign, dtype=np.int64, drop_axis=1)



class DBSCAN:
    """Exact DBSCAN on a Dask cluster: labels and core points identical to :class:`embedcluster.DBSCAN`.

    The rows are split into groups of nearby rows (centres fitted on a sample, every row to
    its nearest centre; the groups move between workers once), and each pair of groups whose
    bounding balls come within ``eps`` is a task on the engine's exact calls: neighbour counts
    (core points), then the core-core components and each border point's nearest core point.
    The client unions the components and numbers the clusters as :class:`embedcluster.DBSCAN`
    does. The grouping only decides which pairs are skipped (a skipped pair provably holds no
    neighbours), so the result does not depend on it, on the chunking or on the worker count.

    Parameters
    ----------
    eps, min_samples, metric
        As :class:`embedcluster.DBSCAN` (same checks, same messages). ``eps="auto"`` (the
        default) takes eps from the knee of the sorted k-distance curve, whose exact kNN runs on
        the cluster (:class:`embedcluster.dask.NearestNeighbors`); the value is ``eps_``. A fit
        that labels more than 90% of the points noise or puts them in one cluster warns
        (``EpsWarning``), as the single-machine estimator does.
    n_threads : int, default=0
        Threads of each task on its worker (0: the worker's OpenMP default).
    max_component_bytes : int, default=2**30
        Groups that no pair links to the rest are an independent DBSCAN: one whose rows take at
        most this many bytes (float32) is fitted whole on one worker (the in-memory engine,
        with all its pruning); larger ones go through the pair tasks.
    client : distributed.Client or None
        The cluster to run on; None uses the current default client.
    verbose : None, bool or int, default=None
        Progress on the client as the tasks finish: the kNN of eps="auto", the grouping of the
        chunks, the whole components and the group pairs (None: as the caller shows progress,
        e.g. on in the command line; silent in plain library calls).

    Attributes
    ----------
    eps_ : float
        The eps the fit used (``eps``, or the one "auto" chose).
    k_distances_ : ndarray or None
        As :class:`embedcluster.DBSCAN`'s (the sorted k-distance curve of eps="auto").
    labels_ : ndarray (n_samples,), int64
    core_sample_indices_ : ndarray, int64
    components_ : dask array (n_core, n_features), float32, the core rows (lazy)
    n_clusters_, n_features_in_ : int
    n_groups_, n_pairs_, n_components_ : int
        Groups of rows, pairs of groups whose balls came within eps, and independent sets of
        groups fitted whole on one worker.
    seconds_ : float
        Wall time of the fit.
    bytes_received_ : int
        Bytes the client received from the workers (sample, group summaries, links, flags).
    """

    def __init__(self, eps: Any = "auto", *, min_samples: int = 5, metric: str = "euclidean", n_threads: int = 0,
                 max_component_bytes: float = 2**30, client: Any = None, verbose: Any = None):
        self.eps, self.min_samples, self.metric = eps, min_samples, metric
        self.verbose = verbose
        self.n_threads, self.max_component_bytes, self.client = n_threads, max_component_bytes, client

    def fit(self, X: Any, y: Any = None) -> DBSCAN:
        """Finds clusters and noise in a dask array (any chunking along rows). ``y`` is ignored."""
        da, _, default_client = _require_dask()
        from ._backend import engine_metric
        from ._dask_dbscan import fit_on_dask
        from .cluster.dbscan import DBSCAN as LocalDBSCAN

        LocalDBSCAN(eps=self.eps, min_samples=self.min_samples, metric=self.metric)._validate_params()
        check_verbose(self.verbose, "embedcluster.dask.DBSCAN")
        X = da.asarray(X)
        if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
            raise ValueError(f"X must be a non-empty 2-D array (n_samples, n_features), got shape {X.shape}")
        client = self.client or default_client()
        t = time.perf_counter()
        self.k_distances_ = self._k_distances(client, X) if isinstance(self.eps, str) else None
        self.eps_ = float(self.eps) if self.k_distances_ is None else auto_eps(self.k_distances_)
        r, ex, seconds = fit_on_dask(client, X, self.eps_, int(self.min_samples), engine_metric(self.metric),
                                     int(self.n_threads), float(self.max_component_bytes), self.verbose)
        seconds = time.perf_counter() - t
        self.labels_ = r.labels
        self.core_sample_indices_ = np.flatnonzero(r.is_core)
        self.components_ = X[self.core_sample_indices_]
        self.n_clusters_ = int(r.labels.max() + 1) if len(r.labels) else 0
        self.n_features_in_ = int(X.shape[1])
        self.n_groups_, self.n_pairs_, self.n_components_ = int(ex.n_groups), int(r.pairs), int(r.components)
        self.seconds_, self.bytes_received_ = seconds, int(ex.bytes_received)
        advice = eps_advice(self.labels_, self.eps_, k_distances=self.k_distances_)
        if advice is not None:
            warnings.warn(advice, EpsWarning, stacklevel=2)
        return self

    def _k_distances(self, client: Any, X: Any) -> np.ndarray:
        """eps="auto": the sorted k-distance curve, from the exact kNN on the cluster."""
        def exact_knn(k: int) -> NearestNeighbors:
            return NearestNeighbors(k, metric=self.metric, n_threads=self.n_threads, client=client,
                                    verbose=self.verbose)

        return core_distances(X, int(self.min_samples), exact_knn)

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fits and returns ``labels_``."""
        return self.fit(X).labels_


from ._dask_knn import NearestNeighbors  # noqa: E402  (it imports this module's helpers lazily)
