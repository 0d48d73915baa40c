"""The CUDA engine: exact k-means, k nearest neighbours and DBSCAN on an NVIDIA GPU.

Results are the CPU engine's, bit for bit: the GPU computes distance tiles on TF32 tensor cores,
and every decision within the tiles' proven error bound of its threshold (nearest centre, k-th
neighbour, eps) is re-made in float64 from the float32 inputs, in the same order of operations as
the CPU engine; k-means accumulates its centre sums in the same fixed point and runs the same
Lloyd loop (:mod:`embedcluster._chunked`), so the same initial centres give the same labels.

Inputs may be numpy arrays (copied to the device once) or device arrays that expose
``__cuda_array_interface__`` (PyTorch CUDA tensors, CuPy arrays): those are used in place, on
the caller's current stream, and results come back as arrays of the same framework.

The module ``embedcluster._cuda`` is built when CMake finds a CUDA compiler
(``EMBEDCLUSTER_CUDA=AUTO|ON|OFF``). ``engine="model"`` runs the same algorithms in the host
model compiled into the CPU engine (slow; for tests on machines without a GPU).
"""

from __future__ import annotations

import importlib
from typing import Any, Optional, Tuple

import numpy as np

from ._backend import EngineMetric

_METRIC_IDS = {"l2": 0, "ip": 1, "cosine": 2}
ENGINES = ("cuda", "model")


def _module(engine: str) -> Any:
    if engine == "model":
        from . import _core

        return _core.cuda_model
    if engine != "cuda":
        raise ValueError(f"engine={engine!r} should be one of {ENGINES}")
    try:
        _cuda = importlib.import_module("embedcluster._cuda")
    except ImportError as exc:
        raise ImportError(
            "embedcluster was built without its CUDA engine (no CUDA compiler was found at build time); "
            "install the CUDA toolkit (nvcc) and reinstall with `pip install .`, or use the CPU engine "
            f"(backend='native'). ({exc})"
        ) from exc
    ok, why = _cuda.available()
    if not ok:
        raise RuntimeError(f"the CUDA engine cannot run here: {why}; use the CPU engine (backend='native')")
    return _cuda


def compiled() -> bool:
    """Whether this installation has the CUDA engine (built where CMake found a CUDA compiler)."""
    try:
        importlib.import_module("embedcluster._cuda")
    except ImportError:
        return False
    return True


def device_summary() -> str:
    """The first CUDA device in words ('' when there is none or no CUDA engine)."""
    try:
        return str(importlib.import_module("embedcluster._cuda").device_summary())
    except ImportError:
        return ""


def available() -> Tuple[bool, str]:
    """Whether the CUDA engine can run here, and why not (``(True, "")`` when it can)."""
    try:
        _cuda = importlib.import_module("embedcluster._cuda")
    except ImportError:
        return False, "embedcluster was built without its CUDA engine (no CUDA compiler at build time)"
    ok, why = _cuda.available()
    return bool(ok), str(why)


def to_host(X: Any) -> np.ndarray:
    """A host (numpy) copy of an array: numpy as is, a device array copied back."""
    if not is_device_array(X):
        return np.asarray(X)
    mod = type(X).__module__
    if mod.startswith("torch"):
        return X.detach().cpu().numpy()
    if mod.startswith("cupy"):
        return X.get()
    return np.asarray(X)


def is_device_array(X: Any) -> bool:
    """True for arrays in GPU memory (``__cuda_array_interface__``: PyTorch CUDA tensors, CuPy)."""
    try:
        return hasattr(X, "__cuda_array_interface__")
    except Exception:  # torch raises for CPU tensors on attribute access of the interface
        return False


def _stream_of(X: Any) -> int:
    """The caller's current stream for a device array (0: the default stream)."""
    mod = type(X).__module__
    if mod.startswith("torch"):
        import torch

        return int(torch.cuda.current_stream(X.device).cuda_stream)
    if mod.startswith("cupy"):
        import cupy

        return int(cupy.cuda.get_current_stream().ptr)
    stream = X.__cuda_array_interface__.get("stream")
    return int(stream) if isinstance(stream, int) and stream > 2 else 0


class _Input:
    """An input array on the engine's device: a numpy array copied once, or a device array wrapped."""

    def __init__(self, mod: Any, X: Any, name: str = "X", ndim: int = 2):
        self.framework = "numpy"
        self.source = X
        if mod.__name__.endswith("_cuda") and is_device_array(X):
            cai = X.__cuda_array_interface__
            shape = tuple(int(s) for s in cai["shape"])
            if cai["typestr"] != "<f4":
                raise TypeError(f"{name} must be float32 on the device (got {cai['typestr']}); convert it first, "
                                "e.g. X.float() in PyTorch or X.astype('float32') in CuPy")
            strides = cai.get("strides")
            dense = tuple(4 * int(np.prod(shape[i + 1:])) for i in range(len(shape)))
            if strides is not None and tuple(strides) != dense:
                raise ValueError(f"{name} must be C-contiguous on the device; call .contiguous() first")
            if len(shape) != ndim:
                raise ValueError(f"{name} must be {ndim}-D (got shape {shape})")
            mod.set_stream(_stream_of(X))
            self.array = mod.DeviceArray.wrap(int(cai["data"][0]), shape, "<f4", X)
            self.framework = type(X).__module__.split(".")[0]
        else:
            host = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
            if host.ndim != ndim:
                raise ValueError(f"{name} must be {ndim}-D (got shape {host.shape})")
            mod.set_stream(0)
            self.array = mod.DeviceArray.from_numpy(host)
        self.shape = tuple(self.array.shape)

    def output(self, arr: Any) -> Any:
        """A result DeviceArray in this input's framework (numpy: a host copy)."""
        if self.framework == "torch":
            import torch

            return torch.as_tensor(arr, device=self.source.device)
        if self.framework == "cupy":
            import cupy

            return cupy.asarray(arr)
        return arr.numpy()


def kneighbors(database: Any, queries: Any = None, n_neighbors: int = 10, metric: EngineMetric = "l2",
               engine: str = "cuda") -> Tuple[Any, Any]:
    """Exact k nearest neighbours on the GPU: (distances, indices), each (n_queries, k), nearest
    first, ties to the lower index; distances as the CPU engine reports them (squared for "l2",
    the inner product for "ip", 1 - cos for "cosine"). Without ``queries``, the database is
    searched for itself and row i never returns itself (the self-join)."""
    mod = _module(engine)
    db = _Input(mod, database, "database")
    q = db if queries is None else _Input(mod, queries, "queries")
    dist, idx = mod.knn_search(db.array, q.array, int(n_neighbors), _METRIC_IDS[metric], queries is None)
    return q.output(dist), q.output(idx)


def dbscan(X: Any, eps: float, min_samples: int = 5, metric: EngineMetric = "l2",
           engine: str = "cuda") -> Tuple[Any, np.ndarray, np.ndarray, int]:
    """DBSCAN on the GPU: (labels, is_core, counts, n_clusters) as the CPU engine's ``dbscan_fit``
    gives them (clusters numbered by their lowest core row, noise -1; counts include the point)."""
    if metric not in ("l2", "cosine"):
        raise ValueError("DBSCAN supports metric 'l2' or 'cosine'")
    if not eps > 0 or not np.isfinite(eps):
        raise ValueError(f"eps={eps} should be a finite number > 0")
    if min_samples < 1:
        raise ValueError(f"min_samples={min_samples} should be >= 1")
    mod = _module(engine)
    x = _Input(mod, X)
    labels, is_core, counts, n_clusters = mod.dbscan(x.array, float(eps), int(min_samples), _METRIC_IDS[metric])
    if x.framework != "numpy":
        labels = x.output(mod.DeviceArray.from_numpy(labels))
    return labels, is_core.astype(bool), counts, int(n_clusters)


class DeviceChunks:
    """The k-means chunk runner (:class:`embedcluster._chunked.ChunkRunner`) for one array on the
    GPU: stats, passes, repair rows and the objective run on the device; the k-means|| seeding runs
    on the CPU engine from a host copy (it reads the rows a few times, the Lloyd loop many)."""

    def __init__(self, X: Any, sample_weight: Optional[np.ndarray] = None, engine: str = "cuda"):
        self.mod = _module(engine)
        self.x = _Input(self.mod, X)
        n, d = self.x.shape
        self.n, self.d = int(n), int(d)
        self.w_host = None if sample_weight is None else np.ascontiguousarray(sample_weight, dtype=np.float32)
        self.w = None if self.w_host is None else self.mod.DeviceArray.from_numpy(self.w_host)
        self.passes = 0
        self._host: Optional[Any] = None
        self.state: Any = None
        self.reset()

    def reset(self) -> None:
        """A new run: labels forgotten, the rows' norms (from stats) kept."""
        if getattr(self, "state", None) is None:
            self.state = self.mod.ChunkState(self.n, self.d)
        else:
            self.state.reset()

    def _host_chunks(self) -> Any:
        from ._chunked import LocalChunks

        if self._host is None:
            self._host = LocalChunks(self.x.array.numpy(), max(1, self.n), sample_weight=self.w_host)
        return self._host

    def stats(self, metric):
        n, colmax, absmax, wmax = self.mod.kmeans_chunk_stats(self.state, self.x.array, self.w, _METRIC_IDS[metric], 0)
        return [_Stats(n, colmax, absmax, wmax)]

    def moments(self, absmax, n_total, metric):
        return [self.mod.kmeans_chunk_moments(self.state, self.x.array, np.asarray(absmax, np.float64), int(n_total),
                                              _METRIC_IDS[metric])]

    def assign(self, centers, qscale, wscale, metric, prune):
        self.passes += 1
        changed, sums = self.mod.kmeans_chunk_pass(self.state, self.x.array, self.w, np.asarray(centers, np.float32),
                                                   np.asarray(qscale, np.float64), float(wscale), _METRIC_IDS[metric])
        return [(int(changed), sums)]

    def farthest(self, centers, count, metric):
        dist, rows = self.mod.kmeans_chunk_farthest(self.state, self.x.array, np.asarray(centers, np.float32),
                                                    int(count), _METRIC_IDS[metric])
        return [(dist, rows)]

    def rows(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        host = self._host_chunks().X
        labels = self.labels()[rows]
        w = None if self.w_host is None else self.w_host[rows]
        return np.ascontiguousarray(host[rows]), w, labels

    def objective(self, centers, scale, metric):
        return [self.mod.kmeans_chunk_objective(self.state, self.x.array, self.w, np.asarray(centers, np.float32),
                                                float(scale), _METRIC_IDS[metric])]

    def labels(self):
        return self.state.labels.numpy()

    def seed_units(self, wscale):
        return self._host_chunks().seed_units(wscale)

    def seed_pick(self, chunk, target, wscale):
        return self._host_chunks().seed_pick(chunk, target, wscale)

    def seed_nearer(self, batch, pscale, metric):
        return self._host_chunks().seed_nearer(batch, pscale, metric)

    def seed_sample(self, pot, n_clusters, seed, round_):
        return self._host_chunks().seed_sample(pot, n_clusters, seed, round_)

    def seed_candidate_units(self, candidates, wscale, metric):
        return self._host_chunks().seed_candidate_units(candidates, wscale, metric)


class _Stats:
    """One chunk's statistics (the attributes ChunkStats.merge reads)."""

    def __init__(self, n: int, colmax: np.ndarray, absmax: np.ndarray, wmax: float):
        self.n, self.colmax, self.absmax, self.wmax = int(n), colmax, absmax, float(wmax)


def kmeans(X: Any, n_clusters: int, init: Any = "k-means||", *, max_iter: int = 300, tol: float = 1e-4,
           metric: EngineMetric = "l2", seed: int = 0, n_init: int = 1, sample_weight: Optional[np.ndarray] = None,
           engine: str = "cuda", device_labels: bool = True) -> Any:
    """k-means on the GPU: the CPU engine's ``kmeans_fit`` (same init, same Lloyd loop, same
    fixed-point sums), so the result (centres, labels, inertia, iterations) is bit-identical to
    ``embedcluster.KMeans`` on the CPU from the same initial centres. ``init``: an array of initial
    centres or ``"k-means||"`` (seeded on the CPU engine). Returns the fields of
    :class:`embedcluster._chunked.ChunkedFit`; ``labels`` is in the input's framework (numpy with
    ``device_labels=False``)."""
    from ._chunked import FitParams, fit_over_chunks

    if metric not in ("l2", "cosine"):
        raise ValueError("k-means supports metric 'l2' or 'cosine'")
    runner = DeviceChunks(X, sample_weight, engine)
    params = FitParams(int(n_clusters), metric=metric, max_iter=int(max_iter), tol=float(tol), prune=False,
                       weighted=sample_weight is not None)
    if not isinstance(init, str):
        init = np.ascontiguousarray(init, dtype=np.float32)
    fit = fit_over_chunks(runner, init, params, int(seed), int(n_init))
    if device_labels and runner.x.framework != "numpy":
        fit.labels = runner.x.output(runner.mod.DeviceArray.from_numpy(np.ascontiguousarray(fit.labels)))
    return fit
