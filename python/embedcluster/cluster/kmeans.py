"""k-means with scikit-learn conventions: :class:`KMeans`.

Runs on the native engine by default (``backend="native"`` or ``"auto"``) and on FAISS when
asked (``backend="faiss"``). Input is converted to float32 once (see ``as_matrix``).
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real
from typing import Any, Literal, Optional, cast

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from .. import _faiss
from .._interface import advice
from .._backend import (PRECISIONS, EngineMetric, _core, as_matrix, as_weights, check_python_memory, engine_metric,
                        memory_limit_arg, precision_arg, resolve_backend, seed_of, threads_arg)
from .._progress import Progress
from ._common import CLUSTER_METRICS, check_features, engine_constraints, store_params

_KMEANS_INITS = {"auto", "k-means++", "k-means||", "random"}

# Bytes of float32 rows converted at a time when X is streamed (shards, memory maps of another dtype).
STREAM_BLOCK_BYTES = 64 << 20


def streamed_rows(X: Any) -> Any:
    """X itself when fit should stream it block by block instead of converting it whole: a
    ShardedArray (shards are never concatenated) or a memory map that is not float32 and
    C-contiguous (converting it would copy the file into memory). None otherwise."""
    from ..data.sharded import ShardedArray

    if isinstance(X, ShardedArray):
        return X
    if isinstance(X, np.memmap) and X.ndim == 2 and not (X.dtype == np.float32 and X.flags.c_contiguous):
        return X
    return None



def _too_few_points(n: int, k: int) -> str:
    return advice(f"n_samples={n} should be >= n_clusters={k}.",
                  f"--n-clusters {k} asks for more clusters than the {n} points; choose --n-clusters {n} or fewer")

class KMeans(ClusterMixin, TransformerMixin, BaseEstimator):
    """k-means clustering on the native engine (Lloyd iterations with exact assignment).

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters.
    init : {"auto", "k-means++", "k-means||", "random"} or array (n_clusters, n_features), default="auto"
        Greedy k-means++ (seeded); k-means|| (a few sampling rounds, then k-means++ on the
        weighted candidates: reads the data ~10 times instead of k times); k distinct random
        rows; or given centres. "auto" picks k-means|| when n_samples * n_clusters >= 2**22
        (on 200,000 x 384, k=256 it took 2.2 s against 6.8 s and reached a lower inertia),
        else k-means++.
    n_init : int, default=1
        Runs from different seeds; the one with the lowest inertia is kept.
    max_iter : int, default=300
        Maximum Lloyd iterations per run.
    tol : float, default=1e-4
        Stop when the summed squared centre shift is at most ``tol`` times the mean feature
        variance of X (scikit-learn's rule); ``tol=0`` stops only when labels stop changing.
    metric : {"l2", "euclidean", "cosine"}, default="l2"
        "cosine" runs spherical k-means: rows are compared by cosine and centres are unit-norm.
    random_state : int, RandomState, Generator or None, default=None
        Seed for the initialisation. The same seed gives bit-identical results for any
        number of threads.
    backend : {"auto", "native", "faiss", "cuda"}, default="auto"
        Engine. "faiss" uses faiss.Kmeans on all points (no sample weights beyond FAISS's
        support, no tol).
    n_threads : int or None, default=None
        Worker threads; None or -1 uses all cores.
    precision : {"auto", "fp32"}, default="auto"
        Tile arithmetic: "auto" uses the kernel set measured fastest on this CPU at first use
        (bf16 products where AVX-512 BF16 runs at about twice the fp32 rate, as on AMD Zen 5;
        fp32 where it does not; ``embedcluster info`` shows the choice), "fp32" the fastest
        fp32 kernels. Results are identical either way: decisions within the kernel's error
        bound are re-checked in float64.
    prune : {"auto", True, False}, default="auto"
        Bound-based pruning of the assignment (Hamerly's bounds with the centre-gap test):
        each row keeps an upper bound on its distance to its centre and a lower bound to every
        other centre, and rows whose bounds prove the centre unchanged skip the distance
        products. Centres that keep jumping while the others settle form a mobile group with
        its own lower bound (Yinyang with two groups, chosen per pass by a cost model); rows
        that fail only that bound get products against the group alone. Results are
        bit-identical either way; "auto" turns it on for ``n_clusters >= 16``.
        ``computed_fraction_`` and ``mover_fraction_`` report how much work remained.
    memory_limit : int or None, default=None
        Bytes of working memory a fit may use (see ``embedcluster.NearestNeighbors``).
    verbose : bool, int or None, default=None
        Progress of ``fit`` (seeding, then each iteration against ``max_iter``): a bar on a
        terminal, else a log line every ~10 s or tenth of the work (see ``embedcluster._progress``).
        0 / False: silent; 1 / True: shown; None: shown only inside a caller that shows
        progress (the command line, ``TransferClustering(progress=True)``), so a plain library
        call stays silent, as scikit-learn's estimators do. Results do not depend on it.

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features), float32
    labels_ : ndarray of shape (n_samples,), int64
        Consistent with ``cluster_centers_`` (a final assignment follows the last update).
    inertia_ : float
        Sum of (weighted) squared distances to the nearest centre; for "cosine", the sum of
        cosine distances 1 - cos.
    n_iter_ : int
    n_features_in_ : int
    computed_fraction_ : float
        Share of (row, assignment pass) pairs whose distances to all centres were computed
        (1.0 without pruning; native backend only, else None).
    mover_fraction_ : float
        Share of (row, assignment pass) pairs whose distances to the mobile group only were
        computed (0.0 without pruning; native backend only, else None).

    Notes
    -----
    Input is converted to float32 once (logged at INFO). Assignments are exact: the fast
    float32 tiles are re-checked in float64 wherever a near-tie could flip the nearest centre.
    Centre sums are accumulated in 64-bit fixed point (per-feature power-of-two scale, at
    most n * 2^-62 of the feature's largest magnitude off), so they do not depend on the
    summation order: the same seed gives bit-identical results on any number of threads,
    with or without pruning.
    """

    def __init__(self, n_clusters: int = 8, *, init: Any = "auto", n_init: int = 1,
                 max_iter: int = 300, tol: float = 1e-4, metric: str = "l2",
                 random_state: Any = None, backend: str = "auto", n_threads: Optional[int] = None,
                 precision: str = "auto", prune: Any = "auto", memory_limit: Optional[int] = None,
                 verbose: Any = None):
        store_params(self, locals())

    # Every parameter's rule, checked by fit (scikit-learn's declarative validation); the engine
    # asserts its own invariants again for direct callers, the bindings only convert types.
    _parameter_constraints: dict = {
        **engine_constraints(),
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "init": [StrOptions(_KMEANS_INITS), "array-like"],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, np.inf, closed="left")],
        "metric": [StrOptions(CLUSTER_METRICS)],
        "random_state": [None, Integral, np.random.RandomState, np.random.Generator],
        "precision": [StrOptions(set(PRECISIONS))],
        "prune": [StrOptions({"auto"}), "boolean"],
    }

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> KMeans:
        """Computes the clustering. ``y`` is ignored; ``sample_weight`` weights each row."""
        self._validate_params()
        for stale in ("counts_", "n_steps_"):  # partial_fit's state belongs to earlier centres
            self.__dict__.pop(stale, None)
        memory_limit = memory_limit_arg(self.memory_limit)
        metric = engine_metric(self.metric)
        backend = resolve_backend(self.backend, "k-means", X)
        if backend == "cuda":
            return self._fit_cuda(X, sample_weight, metric)
        if streamed_rows(X) is not None:
            return self._fit_streamed(streamed_rows(X), sample_weight, backend, metric)
        # The native fit checks NaN / infinity in its first pass over the data.
        X = as_matrix(X, estimator="KMeans", check_finite=backend != "native")
        n, d = X.shape
        if n < self.n_clusters:
            raise ValueError(_too_few_points(n, self.n_clusters))
        w = as_weights(sample_weight, n)
        init: Any = self.init
        if isinstance(init, str):
            if init == "auto":
                init = "k-means||" if n * self.n_clusters >= 2**22 else "k-means++"
        else:
            init = as_matrix(init, "init", estimator="KMeans")
            if init.shape != (self.n_clusters, d):
                raise ValueError(
                    f"init has shape {init.shape} but should be (n_clusters, n_features) = ({self.n_clusters}, {d})"
                )
        seed = seed_of(self.random_state)
        computed: Optional[float] = None
        movers: Optional[float] = None
        if backend == "native":
            with Progress("k-means", verbose=self.verbose, rounds=int(self.n_init) if isinstance(init, str) else 1
                          ) as shown:
                r = _core.kmeans_fit(X, int(self.n_clusters), max_iter=int(self.max_iter), tol=float(self.tol),
                                     n_init=int(self.n_init), metric=metric, init=init, seed=seed,
                                     sample_weight=w, n_threads=threads_arg(self.n_threads),
                                     precision=precision_arg(self.precision),
                                     prune="auto" if isinstance(self.prune, str) else bool(self.prune),
                                     memory_limit=memory_limit, progress=shown.callback())
                shown.close(f"{r.n_iter} iterations")
            centers, labels, inertia, n_iter = r.centers, r.labels, r.inertia, r.n_iter
            computed, movers = r.computed_fraction, r.mover_fraction
        else:
            init_arr = None if isinstance(init, str) else init
            centers, labels, inertia, n_iter = _faiss.kmeans(X, int(self.n_clusters), int(self.max_iter),
                                                             metric, init_arr, seed, w)
        self._store(centers, labels, inertia, n_iter, computed, movers, d, backend)
        return self

    def _store(self, centers, labels, inertia, n_iter, computed, movers, d, backend) -> None:
        distinct = len(np.unique(labels))
        if distinct < self.n_clusters:
            warnings.warn(
                f"Number of distinct clusters ({distinct}) found smaller than n_clusters "
                f"({self.n_clusters}). Possibly due to duplicate points in X.",
                ConvergenceWarning, stacklevel=2,
            )
        self.cluster_centers_ = np.asarray(centers, dtype=np.float32)
        self.labels_ = np.asarray(labels, dtype=np.int64)
        self.inertia_ = float(inertia)
        self.n_iter_ = int(n_iter)
        self.computed_fraction_ = computed
        self.mover_fraction_ = movers
        self.n_features_in_ = d
        self.backend_ = backend

    def _over_chunks_init(self, X: Any, sample_weight: Any, refusal: str):
        """(d, weights, init) for a fit over chunks (streamed or on the GPU): init "k-means||"
        ("auto" too: k-means++ and random read the data once per centre, so they are refused
        with `refusal`) or an array of initial centres."""
        n, d = int(X.shape[0]), int(X.shape[1])
        if n < self.n_clusters:
            raise ValueError(_too_few_points(n, self.n_clusters))
        w = as_weights(sample_weight, n)
        init: Any = self.init
        if isinstance(init, str):
            if init in ("k-means++", "random"):
                raise ValueError(f"init={init!r} {refusal}: use init='k-means||' (or 'auto') or an array of "
                                 "initial centres")
            init = "k-means||"
        else:
            init = as_matrix(init, "init", estimator="KMeans")
            if init.shape != (self.n_clusters, d):
                raise ValueError(f"init has shape {init.shape} but should be (n_clusters, n_features) = "
                                 f"({self.n_clusters}, {d})")
        return d, w, init

    def _fit_cuda(self, X: Any, sample_weight: Any, metric: EngineMetric) -> KMeans:
        """fit on the CUDA engine (embedcluster.cuda.kmeans): the same Lloyd loop and fixed-point
        sums as the CPU engine, so the same initial centres give the same result."""
        from .. import cuda
        from .._backend import cuda_engine

        if not cuda.is_device_array(X):
            X = as_matrix(X, estimator="KMeans")
        d, w, init = self._over_chunks_init(X, sample_weight, "is not available on the CUDA backend")
        r = cuda.kmeans(X, int(self.n_clusters), init, max_iter=int(self.max_iter), tol=float(self.tol), metric=metric,
                        seed=seed_of(self.random_state), n_init=int(self.n_init), sample_weight=w,
                        engine=cuda_engine(), device_labels=False)
        self._store(r.centers, r.labels, r.inertia, r.n_iter, None, None, d, "cuda")
        return self

    def _fit_streamed(self, X: Any, sample_weight: Any, backend: str, metric: EngineMetric) -> KMeans:
        """fit on rows read block by block (shards, memory maps of another dtype): the engine's
        chunked k-means, bit-identical to fitting the same rows as one array with the same init
        (``init="auto"`` means k-means|| here, whatever the size)."""
        from .._chunked import FitParams, LocalChunks, fit_over_chunks, iteration_progress

        if backend != "native":
            raise ValueError("backend='faiss' needs X as one in-memory array; sharded or memory-mapped "
                             "input is streamed by the native engine (backend='native')")
        n = int(X.shape[0])
        d, w, init = self._over_chunks_init(X, sample_weight, "needs X as one in-memory array; for sharded or "
                                                              "memory-mapped input")
        prune = self.n_clusters >= _core.KMEANS_PRUNE_MIN_K if isinstance(self.prune, str) else bool(self.prune)
        params = FitParams(int(self.n_clusters), metric=metric, max_iter=int(self.max_iter), tol=float(self.tol),
                           prune=prune, weighted=w is not None)
        block = max(1, STREAM_BLOCK_BYTES // (4 * d))
        runner = LocalChunks(X, block, sample_weight=w, n_threads=threads_arg(self.n_threads),
                             precision=precision_arg(self.precision))
        with iteration_progress(int(self.max_iter), int(self.n_init), self.verbose) as (report, runner.tick):
            r = fit_over_chunks(runner, init, params, seed_of(self.random_state), int(self.n_init), progress=report,
                                n_threads=threads_arg(self.n_threads), precision=precision_arg(self.precision),
                                verbose=self.verbose)
        computed = runner.rows_computed() / (float(n) * max(1, runner.passes)) if prune else 1.0
        self._store(r.centers, r.labels, r.inertia, r.n_iter, computed, 0.0, d, backend)  # no mover stage
        return self

    def partial_fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> KMeans:
        """One mini-batch step of k-means, for data that arrives as a stream (Sculley 2010, the
        update of scikit-learn's ``MiniBatchKMeans`` without random reassignment).

        The first call chooses the centres from its batch with ``init`` (which needs at least
        ``n_clusters`` rows) unless the estimator is already fitted. Every call assigns the
        batch's rows to their nearest centre (exact) and moves each centre to the weighted mean
        of everything it has been given so far: ``c <- (c * n_c + sum of the batch's rows in
        c) / (n_c + their weight)``, ``n_c`` the weight seen before (``counts_``); for
        "cosine" the centre is then scaled to unit length. ``labels_`` are the batch's labels
        against the centres before the step; ``n_steps_`` counts the calls.
        """
        first = not hasattr(self, "cluster_centers_")
        if first:
            self._validate_params()
        X = as_matrix(X, estimator="KMeans")
        w = as_weights(sample_weight, X.shape[0])
        if first:
            if X.shape[0] < self.n_clusters:
                raise ValueError(f"the first batch has n_samples={X.shape[0]} but should have >= "
                                 f"n_clusters={self.n_clusters} to choose the initial centres")
            if isinstance(self.init, str):
                seeding: Literal["k-means++", "k-means||", "random"] = (
                    "k-means++" if self.init == "auto" else cast(Any, self.init))
                centers = _core.kmeans_init(X, int(self.n_clusters), metric=engine_metric(self.metric), init=seeding,
                                            seed=seed_of(self.random_state), sample_weight=w,
                                            n_threads=threads_arg(self.n_threads),
                                            memory_limit=memory_limit_arg(self.memory_limit))
            else:
                centers = as_matrix(self.init, "init", estimator="KMeans")
                if centers.shape != (self.n_clusters, X.shape[1]):
                    raise ValueError(f"init has shape {centers.shape} but should be (n_clusters, n_features) = "
                                     f"({self.n_clusters}, {X.shape[1]})")
            self.cluster_centers_ = _core.kmeans_start_centres(centers, engine_metric(self.metric))
            self.counts_ = np.zeros(self.n_clusters, dtype=np.float64)
            self.n_features_in_ = X.shape[1]
            self.n_steps_ = 0
            self.backend_ = "native"
        elif not hasattr(self, "counts_"):  # fitted by fit(): continue from its clusters' weights
            labels = np.asarray(self.labels_)
            self.counts_ = np.bincount(labels, minlength=self.n_clusters).astype(np.float64)
            self.n_steps_ = 0
        check_features(self, X)
        labels, _ = self._assign(X)
        weights = np.ones(X.shape[0]) if w is None else w.astype(np.float64)
        sums = np.zeros((self.n_clusters, X.shape[1]))
        np.add.at(sums, labels, X.astype(np.float64) * weights[:, None])
        batch = np.bincount(labels, weights=weights, minlength=self.n_clusters)
        moved = batch > 0
        total = self.counts_[moved] + batch[moved]
        centers = self.cluster_centers_.astype(np.float64)
        centers[moved] = (centers[moved] * self.counts_[moved, None] + sums[moved]) / total[:, None]
        if engine_metric(self.metric) == "cosine":
            norms = np.linalg.norm(centers[moved], axis=1, keepdims=True)
            centers[moved] /= np.where(norms > 0, norms, 1.0)
        self.cluster_centers_ = centers.astype(np.float32)
        self.counts_[moved] = total
        self.labels_ = labels
        self.n_steps_ += 1
        return self

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> np.ndarray:
        """Fits and returns ``labels_``."""
        return self.fit(X, sample_weight=sample_weight).labels_

    def predict(self, X: Any) -> np.ndarray:
        """Index of the nearest centre of each row (exact, ties to the lower index)."""
        labels, _ = self._assign(X)
        return labels

    def _assign(self, X: Any):
        check_is_fitted(self)
        X = as_matrix(X, estimator="KMeans")
        check_features(self, X)
        metric = engine_metric(self.metric)
        if self.backend_ in ("native", "cuda"):  # after a GPU fit, new rows are assigned on the CPU (same results)
            return _core.kmeans_assign(self.cluster_centers_, X, metric, n_threads=threads_arg(self.n_threads),
                                       precision=precision_arg(self.precision),
                                       memory_limit=memory_limit_arg(self.memory_limit))
        d, i = _faiss.knn(self.cluster_centers_, X, 1, metric, exclude_self=False)
        return i[:, 0], d[:, 0]

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Opposite of the inertia of X against the fitted centres (higher is better)."""
        _, dist = self._assign(X)
        w = as_weights(sample_weight, len(dist))
        return -float(np.dot(dist.astype(np.float64), w if w is not None else np.ones(len(dist))))

    def transform(self, X: Any) -> np.ndarray:
        """Distances of each row to every centre, shape (n_samples, n_clusters), float32.

        Euclidean distances for "l2", cosine distances (1 - cos) for "cosine". This is the
        one place that materialises an n x k matrix, because it is the requested output.
        """
        check_is_fitted(self)
        X = as_matrix(X, estimator="KMeans")
        check_features(self, X)
        n, k, d = X.shape[0], self.cluster_centers_.shape[0], X.shape[1]
        step = max(1, (1 << 22) // max(1, k))
        rows = min(n, step)  # the float64 temporaries of one chunk: x, x @ C.T, d2, and C itself
        if self.backend_ == "native":
            check_python_memory(4.0 * n * k + 8.0 * rows * (3 * k + 2 * d) + 16.0 * k * d, self.memory_limit,
                                f"KMeans.transform of {n} rows x {k} clusters")
        C = self.cluster_centers_.astype(np.float64)
        out = np.empty((n, k), dtype=np.float32)
        for s in range(0, X.shape[0], step):
            x = X[s:s + step].astype(np.float64)
            if engine_metric(self.metric) == "l2":
                d2 = (x * x).sum(1)[:, None] + (C * C).sum(1)[None, :] - 2.0 * x @ C.T
                out[s:s + step] = np.sqrt(np.maximum(d2, 0.0))
            else:
                xn = x / np.linalg.norm(x, axis=1, keepdims=True)
                cn = C / np.linalg.norm(C, axis=1, keepdims=True)
                out[s:s + step] = 1.0 - xn @ cn.T
        return out

    def fit_transform(self, X: Any, y: Any = None, sample_weight: Any = None) -> np.ndarray:
        """Fits, then returns ``transform(X)``."""
        return self.fit(X, sample_weight=sample_weight).transform(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags
