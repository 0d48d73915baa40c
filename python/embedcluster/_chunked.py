"""k-means over chunks of rows: one Lloyd loop for data that is not one in-memory array.

The rows of a fit may come from a memory-mapped file, a folder of ``.npy`` shards or the
chunks of a Dask array. Whatever holds them, the fit is the same loop as the engine's
``kmeans_fit``, driven from Python through the engine's chunk calls (``_core.kmeans_chunk_*``):
each chunk returns integers (fixed-point centre sums and moments) or maxima, which add exactly in
any order, so the centres, labels, inertia and iteration count are bit-identical to
``kmeans_fit`` on the concatenated rows, for any chunking, order or number of workers.

Where the chunks live is a :class:`ChunkRunner`'s business: :class:`LocalChunks` streams them
in this process; ``embedcluster.dask`` runs the same calls as tasks next to the data.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

import numpy as np

from . import _core
from ._backend import EngineMetric, Precision
from ._progress import Progress

log = logging.getLogger(__name__)


@dataclass
class ChunkStats:
    """The merged :func:`_core.kmeans_chunk_stats` of every chunk."""

    n: int
    colmax: np.ndarray
    absmax: np.ndarray
    wmax: float

    @classmethod
    def merge(cls, parts: Sequence[Any]) -> ChunkStats:
        parts = [p for p in parts if p.n > 0]
        if not parts:
            raise ValueError("k-means needs at least one row (every chunk is empty)")
        return cls(
            n=int(sum(p.n for p in parts)),
            colmax=np.maximum.reduce([np.asarray(p.colmax) for p in parts]),
            absmax=np.maximum.reduce([np.asarray(p.absmax) for p in parts]),
            wmax=float(max(p.wmax for p in parts)),
        )


@dataclass
class PassResult:
    """The summed outcome of one pass over every chunk."""

    changed: int
    sums: np.ndarray  # uint64 (k * d + k,), added mod 2^64


@dataclass
class FitParams:
    n_clusters: int
    metric: EngineMetric = "l2"
    max_iter: int = 300
    tol: float = 1e-4
    prune: bool = True
    weighted: bool = False
    n_local_trials: int = 0  # k-means|| finish: k-means++ trials per step (0: 2 + ln k)


class ChunkRunner(Protocol):
    """Runs the engine's per-chunk calls wherever the chunks are, and reduces their results.

    Every method returns the per-chunk results in chunk order (lists); the driver reduces them.
    The runner keeps each chunk's :class:`_core.KMeansChunkState` between passes.
    """

    def stats(self, metric: EngineMetric) -> list: ...
    def moments(self, absmax: np.ndarray, n_total: int, metric: EngineMetric) -> list: ...
    def assign(self, centers: np.ndarray, qscale: np.ndarray, wscale: float, metric: EngineMetric,
               prune: bool) -> list[tuple[int, np.ndarray]]: ...
    def farthest(self, centers: np.ndarray, count: int,
                 metric: EngineMetric) -> list[tuple[np.ndarray, np.ndarray]]: ...
    def rows(self, rows: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray], np.ndarray]: ...
    def objective(self, centers: np.ndarray, scale: float, metric: EngineMetric) -> list[np.ndarray]: ...
    def labels(self) -> np.ndarray: ...
    # k-means|| seeding (see seed_over_chunks); the runner keeps each chunk's KMeansSeedState.
    def seed_units(self, wscale: float) -> list[int]: ...
    def seed_pick(self, chunk: int, target: int, wscale: float) -> np.ndarray: ...
    def seed_nearer(self, batch: np.ndarray, pscale: float, metric: EngineMetric) -> list[np.ndarray]: ...
    def seed_sample(self, pot: float, n_clusters: int, seed: int, round_: int) -> list[np.ndarray]: ...
    def seed_candidate_units(self, candidates: np.ndarray, wscale: float, metric: EngineMetric) -> list[np.ndarray]: ...
    def reset(self) -> None: ...


@dataclass
class ChunkedFit:
    """What :func:`lloyd_over_chunks` returns (the fields of ``_core.KMeansResult``)."""

    centers: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int
    n_empty_repaired: int
    computed_fraction: float = 1.0


def _sum_uint64(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Sum of uint64 arrays modulo 2^64 (numpy's unsigned addition wraps; that is the point)."""
    total = np.zeros_like(np.asarray(parts[0], dtype=np.uint64))
    for p in parts:
        total += np.asarray(p, dtype=np.uint64)
    return total


def _repair_rows(runner: ChunkRunner, centers: np.ndarray, count: int, metric: EngineMetric):
    """The `count` rows farthest from their centres over every chunk (distance, then global row)."""
    dist, rows = [], []
    for d, r in runner.farthest(centers, count, metric):
        dist.append(np.asarray(d, dtype=np.float32))
        rows.append(np.asarray(r, dtype=np.int64))
    dist_all, rows_all = np.concatenate(dist), np.concatenate(rows)
    order = np.lexsort((rows_all, -dist_all.astype(np.float64)))[:count]
    return runner.rows(rows_all[order])


def checked_stats(runner: ChunkRunner, p: FitParams) -> ChunkStats:
    """The merged chunk statistics, with kmeans_fit's checks of the row count and weights."""
    stats = ChunkStats.merge(runner.stats(p.metric))
    if stats.n < p.n_clusters:
        raise ValueError(f"n_samples={stats.n} should be >= n_clusters={p.n_clusters}")
    if p.weighted and not stats.wmax > 0:
        raise ValueError("sample weights sum to zero; at least one must be positive")
    return stats


def seed_over_chunks(runner: ChunkRunner, seed: int, p: FitParams, stats: Optional[ChunkStats] = None,
                     n_threads: int = 0, precision: Precision = "auto", verbose: Any = False) -> np.ndarray:
    """k-means|| initial centres over the runner's chunks: bit-identical to
    ``_core.kmeans_init(X, k, init="k-means||", seed=seed)`` on the concatenated rows (with
    ``tol=p.tol``, as ``kmeans_fit`` seeds its run), for any chunking. The chunks must be in row
    order (their batches concatenate into the single array's batch).

    The single-array seeding falls back to k-means++ on all rows when the rounds find no more
    candidates than clusters (data with few distinct rows); over chunks that raises ValueError:
    pass the initial centres as an array then. ``verbose``: progress of the rounds (see
    :mod:`embedcluster._progress`).
    """
    stats = stats if stats is not None else checked_stats(runner, p)
    k = p.n_clusters
    _, wscale = _core.kmeans_fixed_scales(stats.n, stats.colmax, stats.wmax, p.weighted)
    pscale = _core.kmeans_seed_potential_scale(stats.n, stats.absmax, stats.wmax, p.metric)
    units = [int(u) for u in runner.seed_units(wscale)]
    target, finish_seed = _core.kmeans_seed_draws(seed & 0xFFFFFFFFFFFFFFFF, sum(units))
    below = np.cumsum([0] + units)  # Python ints: exact
    chunk = next(c for c in range(len(units)) if below[c] <= target < below[c + 1])
    first = np.ascontiguousarray(runner.seed_pick(chunk, int(target - below[chunk]), wscale), dtype=np.float32)
    candidates = [first.reshape(1, -1)]
    limbs = _sum_uint64(runner.seed_nearer(candidates[0], pscale, p.metric))
    rounds = _core.KMEANS_PARALLEL_ROUNDS
    with Progress("k-means|| seeding", total=rounds, verbose=verbose, unit="round") as shown:
        for r in range(rounds):
            pot = _core.kmeans_objective_total(limbs, pscale)
            if not pot > 0:
                shown.update(rounds - r)  # every row sits on a candidate: no more rounds
                break
            batch = np.concatenate([np.asarray(b, np.float32).reshape(-1, first.size)
                                    for b in runner.seed_sample(pot, k, seed & 0xFFFFFFFFFFFFFFFF, r)])
            if len(batch):
                candidates.append(np.ascontiguousarray(batch))
                limbs = _sum_uint64(runner.seed_nearer(candidates[-1], pscale, p.metric))
            shown.update(1)
    cand = np.ascontiguousarray(np.concatenate(candidates))
    if len(cand) <= k:
        raise ValueError(f"k-means|| over chunks found only {len(cand)} candidate rows for n_clusters={k} (the "
                         "data has few distinct rows); pass init as an array of initial centres instead")
    wc = _sum_uint64(runner.seed_candidate_units(cand, wscale, p.metric))
    return _core.kmeans_parallel_finish(cand, wc, wscale, k, finish_seed, p.metric, p.tol, p.n_local_trials,
                                        n_threads, precision)


def lloyd_over_chunks(runner: ChunkRunner, init: np.ndarray, p: FitParams,
                      progress: Optional[Callable[[int, int, float], None]] = None,
                      stats: Optional[ChunkStats] = None) -> ChunkedFit:
    """k-means from the centres `init` over the runner's chunks; the loop of ``kmeans_fit``.

    progress(iteration, labels_changed, shift), when given, is called after every iteration.
    stats: the runner's checked_stats when the caller has them already.
    """
    stats = stats if stats is not None else checked_stats(runner, p)
    qscale, wscale = _core.kmeans_fixed_scales(stats.n, stats.colmax, stats.wmax, p.weighted)
    tol_abs = 0.0
    if p.tol > 0:
        limbs = _sum_uint64(runner.moments(stats.absmax, stats.n, p.metric))
        tol_abs = p.tol * _core.kmeans_mean_variance(limbs, stats.absmax, stats.n)
    centers = _core.kmeans_start_centres(np.ascontiguousarray(init, dtype=np.float32), p.metric)
    strict, n_iter, repaired = False, p.max_iter, 0

    def one_pass() -> PassResult:
        parts = runner.assign(centers, qscale, wscale, p.metric, p.prune)
        return PassResult(int(sum(c for c, _ in parts)), _sum_uint64([s for _, s in parts]))

    for it in range(p.max_iter):
        res = one_pass()
        nxt, shift, empty = _core.kmeans_update_centres(centers, res.sums, qscale, wscale, p.metric)
        if len(empty):
            rx, rw, rl = _repair_rows(runner, centers, min(len(empty), stats.n), p.metric)
            nxt, shift, _ = _core.kmeans_update_centres(centers, res.sums, qscale, wscale, p.metric,
                                                        repair_X=rx, repair_weight=rw, repair_labels=rl)
            repaired += int(np.count_nonzero(rw > 0)) if rw is not None else len(rl)
        centers = nxt
        if progress is not None:
            progress(it + 1, res.changed, float(shift))
        if res.changed == 0:
            strict, n_iter = True, it + 1
            break
        if shift <= tol_abs:
            n_iter = it + 1
            break
    if not strict:
        one_pass()  # labels that match the final centres
    scale = _core.kmeans_objective_scale(stats.n, stats.absmax, stats.wmax, centers, p.metric)
    inertia = _core.kmeans_objective_total(_sum_uint64(runner.objective(centers, scale, p.metric)), scale)
    return ChunkedFit(centers=centers, labels=runner.labels(), inertia=float(inertia), n_iter=n_iter,
                      n_empty_repaired=repaired)


class LocalChunks:
    """Chunks read in this process, one at a time: row blocks of an array-like (a numpy array or
    memory map, a :class:`~embedcluster.data.ShardedArray`, anything with ``shape`` and row
    slicing), each converted to float32 C-contiguous while it is used.

    Private memory: the per-row state of the fit (labels, bounds: about 45 bytes a row) plus one
    block; the rows themselves are read again on every pass (the page cache keeps them when
    they fit in memory).
    """

    def __init__(self, X: Any, block_rows: int, sample_weight: Optional[np.ndarray] = None,
                 n_threads: int = 0, precision: Precision = "auto"):
        n = int(X.shape[0])
        if block_rows < 1:
            raise ValueError(f"block_rows={block_rows} should be >= 1")
        self.X, self.n, self.w = X, n, sample_weight
        self.bounds = [(a, min(n, a + block_rows)) for a in range(0, n, block_rows)] or [(0, 0)]
        self.n_threads, self.precision = n_threads, precision
        self.passes = 0
        self.tick: Optional[Callable[[], None]] = None  # called after each chunk of a pass (progress)
        self.reset()

    def reset(self):
        """Fresh per-chunk states (a new run of the fit or of the seeding)."""
        self.states = [_core.KMeansChunkState() for _ in self.bounds]
        self.seed_states = [_core.KMeansSeedState() for _ in self.bounds]

    def _block(self, a: int, b: int) -> np.ndarray:
        return np.ascontiguousarray(self.X[a:b], dtype=np.float32)

    def _weights(self, a: int, b: int) -> Optional[np.ndarray]:
        return None if self.w is None else np.ascontiguousarray(self.w[a:b], dtype=np.float32)

    def stats(self, metric):
        return [_core.kmeans_chunk_stats(self._block(a, b), metric, self._weights(a, b), a, self.n_threads)
                for a, b in self.bounds]

    def moments(self, absmax, n_total, metric):
        return [_core.kmeans_chunk_moments(self._block(a, b), absmax, n_total, metric, self.n_threads)
                for a, b in self.bounds]

    def rows_computed(self) -> int:
        """Rows whose distances to every centre were computed, over all passes (pruning's work)."""
        return int(sum(st.rows_computed for st in self.states))

    def assign(self, centers, qscale, wscale, metric, prune):
        self.passes += 1
        out = []
        for (a, b), st in zip(self.bounds, self.states):
            changed = _core.kmeans_chunk_pass(st, centers, self._block(a, b), qscale, wscale, metric,
                                              self._weights(a, b), prune, self.n_threads, self.precision)
            out.append((changed, st.sums))
            if self.tick is not None:
                self.tick()
        return out

    def farthest(self, centers, count, metric):
        out = []
        for (a, b), st in zip(self.bounds, self.states):
            dist, rows = _core.kmeans_chunk_farthest(centers, self._block(a, b), st.labels, count, metric,
                                                     self.n_threads)
            out.append((dist, rows + a))
        return out

    def rows(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        x = np.ascontiguousarray(np.stack([np.asarray(self.X[r], dtype=np.float32) for r in rows]))
        w = None if self.w is None else np.ascontiguousarray(np.asarray(self.w)[rows], dtype=np.float32)
        labels = np.empty(len(rows), dtype=np.int64)
        starts = np.array([a for a, _ in self.bounds])
        chunk = np.searchsorted(starts, rows, side="right") - 1
        for c in np.unique(chunk):
            sel = chunk == c
            labels[sel] = self.states[c].labels[rows[sel] - starts[c]]
        return x, w, labels

    def objective(self, centers, scale, metric):
        return [_core.kmeans_chunk_objective(centers, self._block(a, b), st.labels, scale, metric,
                                             self._weights(a, b), self.n_threads)
                for (a, b), st in zip(self.bounds, self.states)]

    def labels(self):
        return np.concatenate([st.labels for st in self.states]) if self.n else np.empty(0, np.int64)

    def seed_units(self, wscale):
        return [_core.kmeans_seed_units(self._block(a, b), wscale, self._weights(a, b)) for a, b in self.bounds]

    def seed_pick(self, chunk, target, wscale):
        a, b = self.bounds[chunk]
        block = self._block(a, b)
        return block[_core.kmeans_seed_pick(block, target, wscale, self._weights(a, b))]

    def seed_nearer(self, batch, pscale, metric):
        return [_core.kmeans_seed_nearer(st, batch, self._block(a, b), pscale, metric, self._weights(a, b),
                                         self.n_threads, self.precision)
                for (a, b), st in zip(self.bounds, self.seed_states)]

    def seed_sample(self, pot, n_clusters, seed, round_):
        return [_core.kmeans_seed_sample(st, self._block(a, b), pot, n_clusters, seed, round_, a, self._weights(a, b))
                for (a, b), st in zip(self.bounds, self.seed_states)]

    def seed_candidate_units(self, candidates, wscale, metric):
        return [_core.kmeans_seed_candidate_units(candidates, self._block(a, b), wscale, metric, self._weights(a, b),
                                                  self.n_threads, self.precision)
                for a, b in self.bounds]


def fit_over_chunks(runner: ChunkRunner, init: Any, p: FitParams, seed: int, n_init: int = 1,
                    progress: Optional[Callable[[int, int, float], None]] = None, n_threads: int = 0,
                    precision: Precision = "auto", verbose: Any = False) -> ChunkedFit:
    """A whole fit over chunks, as ``kmeans_fit`` makes it: from the given centres (an array),
    or (``init="k-means||"``) the best of ``n_init`` runs seeded ``seed + r * 0x9E3779B97F4A7C15``
    (the lowest inertia; the first on ties). ``verbose``: progress of the k-means|| rounds
    (``progress`` is the caller's per-iteration callback)."""
    if not isinstance(init, str):
        return lloyd_over_chunks(runner, init, p, progress)
    if init != "k-means||":
        raise ValueError(f"init={init!r}: over chunks the initial centres come from 'k-means||' or an array")
    stats = checked_stats(runner, p)
    best = None
    for r in range(n_init):
        runner.reset()
        run_seed = (seed + r * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        start = seed_over_chunks(runner, run_seed, p, stats, n_threads, precision, verbose)
        fit = lloyd_over_chunks(runner, start, p, progress, stats)
        if best is None or fit.inertia < best.inertia:  # labels are read now: the states change next run
            best = fit
    assert best is not None
    return best


IterationCallback = Callable[[int, int, float], None]


@contextlib.contextmanager
def iteration_progress(max_iter: int, n_init: int, verbose: Any,
                       also: Optional[IterationCallback] = None) -> Iterator[tuple]:
    """The ``progress`` callback of :func:`fit_over_chunks` shown as "k-means" progress over
    ``max_iter * n_init`` iterations (``also``, when given, is called too). A run that stops
    before ``max_iter`` counts its remaining iterations as done when the next run starts or the
    fit ends, so the count ends at its total; the last line says how many ran. Yields (that
    callback, the step's :meth:`~embedcluster._progress.Progress.ticker` for waits on work
    elsewhere)."""
    total = int(max_iter) * int(n_init)
    ran = [0, 0, 0]  # iterations run, the current run's last iteration, runs begun
    with Progress("k-means", total=total, verbose=verbose, unit="iteration") as shown:
        def report(it: int, changed: int, shift: float) -> None:
            skipped = 0
            if it <= ran[1] or ran[2] == 0:  # a new run begins: the last one's unrun iterations count
                skipped = int(max_iter) - ran[1] if ran[2] else 0
                ran[2] += 1
            ran[0], ran[1] = ran[0] + 1, it
            shown.update(skipped + 1, f"k-means (run {ran[2]}/{n_init})" if n_init > 1 else None)
            if also is not None:
                also(it, changed, shift)

        yield report, shown.ticker()
        if shown.done < total:
            shown.update(total - shown.done)
        shown.close(f"{ran[0]} iterations")
