"""Side-by-side benchmark of embedcluster against the peers installed (faiss-cpu, scikit-learn):
the library behind ``embedcluster bench``, and the shared parts of ``benchmarks/bench_engine.py``.

Every engine runs in this process on the same synthetic data (generated here, seeded), with the
same thread count; each case reports median times of repeats and checks that the results agree:

* ``kmeans``: Lloyd iterations from the same k random rows; inertia (float64, recomputed here)
  equal to scikit-learn's Lloyd within ``inertia_rtol``;
* ``knn``: the exact k-NN self-join (each point left out); neighbours identical to faiss's and
  scikit-learn's up to ties (where two lists differ at a rank, both rows lie at that rank's
  distance within ``knn_rtol``, measured in float64);
* ``dbscan``: the same core points as scikit-learn's DBSCAN.

faiss's bundled OpenBLAS may not recognise a new CPU and fall back to narrower kernels; OpenBLAS
reads ``OPENBLAS_CORETYPE`` when it is loaded, so faiss is then run a second time in a child
process (``python -m embedcluster.bench``) with the core this CPU supports.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np

T = TypeVar("T")
EC, FAISS, SKLEARN = "embedcluster", "faiss", "scikit-learn"
CASES = ("kmeans", "knn", "dbscan")
INSTALL_HINT = {FAISS: "pip install faiss-cpu (or pip install 'embedcluster[bench]')",
                SKLEARN: "pip install scikit-learn"}
# The kernel-choice calls of embedcluster._core reported when present (name -> how to call):
# a newer engine adds per-family choices here without changing the report's code.
KERNEL_CALLS: Dict[str, Callable[[Any], Any]] = {
    "active": lambda core: core.active_kernels(),
    "chosen": lambda core: core.kernel_choice(),
}


# --------------------------------------------------------------------------------------------
# Timing and data
# --------------------------------------------------------------------------------------------
def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def time_repeats(fn: Callable[[], T], repeats: int) -> Tuple[List[float], T]:
    """Runs ``fn`` ``repeats`` times (at least once); returns the wall times and the last output."""
    times: List[float] = []
    out: Any = None
    for _ in range(max(1, repeats)):
        out = None  # free the previous output before the next run
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def noise_std_for(intra_dist: np.ndarray, d: int) -> np.ndarray:
    """Per-dimension noise std giving ``intra_dist`` between two points of one component.

    A point is ``(c + e) / |c + e|`` with unit ``c`` and ``e ~ N(0, s^2 I_d)``; in high
    dimension two such points are at distance ``sqrt(2 s^2 d / (1 + s^2 d))`` almost surely.
    """
    t = np.asarray(intra_dist, dtype=np.float64) ** 2
    return np.sqrt(t / ((2.0 - t) * d))


def make_sphere_mixture(n: int, d: int, n_centers: int, intra_dist: Union[float, Tuple[float, float]],
                        *, noise_frac: float = 0.0, seed: int = 0,
                        chunk: int = 16384) -> Tuple[np.ndarray, np.ndarray]:
    """Unit-norm float32 Gaussian mixture on the sphere, shuffled, and its true labels.

    ``n_centers`` random unit centres; component sizes vary (Dirichlet weights); each point is
    centre + Gaussian noise, renormalised. ``intra_dist`` (a value or a (low, high) range,
    drawn per component) sets the typical distance between two points of one component,
    while distinct components and noise are ~sqrt(2) apart. A ``noise_frac`` of the rows is
    uniform on the sphere (label -1). Built in chunks to bound memory.
    """
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_centers, d)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    lo, hi = (intra_dist, intra_dist) if isinstance(intra_dist, (int, float)) else intra_dist
    stds = noise_std_for(rng.uniform(lo, hi, n_centers), d).astype(np.float32)
    n_noise = int(round(noise_frac * n))
    weights = rng.dirichlet(np.full(n_centers, 5.0))
    labels = np.concatenate([rng.choice(n_centers, n - n_noise, p=weights),
                             np.full(n_noise, -1)])[rng.permutation(n)]
    X = np.empty((n, d), dtype=np.float32)
    for i in range(0, n, chunk):
        lab = labels[i:i + chunk]
        block = rng.standard_normal((len(lab), d), dtype=np.float32)
        member = lab >= 0
        block[member] = centers[lab[member]] + stds[lab[member], None] * block[member]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        X[i:i + chunk] = block
    return X, labels.astype(np.int64)


# --------------------------------------------------------------------------------------------
# Quality measures and agreement checks (computed identically for every engine)
# --------------------------------------------------------------------------------------------
def inertia_f64(X: np.ndarray, centers: np.ndarray, block_bytes: int = 2**25) -> float:
    """Sum over rows of the squared distance to the nearest centre, in float64, chunked."""
    C = np.asarray(centers, dtype=np.float64)
    cc = np.einsum("ij,ij->i", C, C)
    rows = max(1, block_bytes // (8 * max(len(C), X.shape[1])))
    total = 0.0
    for i in range(0, len(X), rows):
        B = X[i:i + rows].astype(np.float64)
        d2 = np.einsum("ij,ij->i", B, B)[:, None] - 2.0 * (B @ C.T) + cc[None, :]
        total += float(np.maximum(d2.min(axis=1), 0.0).sum())
    return total


def exact_knn_f64(X: np.ndarray, queries: np.ndarray, k: int, block: int = 64) -> np.ndarray:
    """Indices of the k nearest rows (self excluded) of ``X[queries]`` by float64 brute force."""
    X64 = X.astype(np.float64)
    xx = np.einsum("ij,ij->i", X64, X64)
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), block):
        q = queries[s:s + block]
        d2 = xx[q, None] - 2.0 * (X64[q] @ X64.T) + xx[None, :]
        d2[np.arange(len(q)), q] = np.inf
        part = np.argpartition(d2, k, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(d2, part, axis=1), axis=1, kind="stable")
        out[s:s + block] = np.take_along_axis(part, order, axis=1)
    return out


def drop_self(D: np.ndarray, ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Removes each query's own index from a (k+1)-NN self-join (else its last column)."""
    n, k1 = ids.shape
    keep = ids != np.arange(n)[:, None]
    keep[keep.all(axis=1), -1] = False
    return D[keep].reshape(n, k1 - 1), ids[keep].reshape(n, k1 - 1)


def knn_agreement(D: np.ndarray, ids: np.ndarray, D_ref: np.ndarray, ids_ref: np.ndarray,
                  rtol: float = 1e-4) -> Dict[str, float]:
    """Fractions of queries whose neighbour lists match the reference (Euclidean distances)."""
    a = np.sort(np.asarray(D, np.float64), axis=1)
    b = np.sort(np.asarray(D_ref, np.float64), axis=1)
    close = np.abs(a - b) <= rtol * np.maximum(np.abs(a), np.abs(b)) + 1e-7
    return {
        "ids_identical": float((ids == ids_ref).all(axis=1).mean()),
        "ids_same_set": float((np.sort(ids, axis=1) == np.sort(ids_ref, axis=1)).all(axis=1).mean()),
        "dists_agree_rtol_1e-4": float(close.all(axis=1).mean()),
    }


def knn_same_up_to_ties(X: np.ndarray, D: np.ndarray, ids: np.ndarray, ids_other: np.ndarray,
                        rtol: float = 1e-4) -> float:
    """Fraction of queries (rows of X, each its own query) whose neighbour lists are identical up
    to ties: wherever the two lists differ at a rank, both rows there lie at the distance ``D``
    reports for that rank (float64 Euclidean distances from X, within rtol; 1e-6 absolute)."""
    rows, cols = np.nonzero(ids != ids_other)
    ok = np.ones(len(ids), dtype=bool)
    if len(rows) == 0:
        return 1.0
    X64 = np.asarray(X, np.float64)
    want = np.asarray(D, np.float64)[rows, cols]
    tol = rtol * np.abs(want) + 1e-6
    for other in (ids, ids_other):
        j = other[rows, cols]
        valid = (j >= 0) & (j < len(X64))
        dist = np.full(len(rows), np.inf)
        dist[valid] = np.linalg.norm(X64[rows[valid]] - X64[j[valid]], axis=1)
        ok[rows[np.abs(dist - want) > tol]] = False
    return float(ok.mean())


def recall(ids: np.ndarray, ids_true: np.ndarray) -> float:
    """Mean fraction of the true neighbours found."""
    return float((ids[:, :, None] == ids_true[:, None, :]).any(axis=2).mean())


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars and arrays and paths."""
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# --------------------------------------------------------------------------------------------
# Environment: CPU, BLAS, kernel sets, versions, threads
# --------------------------------------------------------------------------------------------
_SIMD_LEVEL = {"sse": 0, "avx": 1, "avx2": 2, "avx512": 3}
OPENBLAS_CORE_SIMD = {  # OpenBLAS core names (lower case) -> widest SIMD their kernels use
    "skylakex": "avx512", "cooperlake": "avx512", "sapphirerapids": "avx512",
    "haswell": "avx2", "zen": "avx2", "excavator": "avx2",
    "sandybridge": "avx", "bulldozer": "avx", "piledriver": "avx", "steamroller": "avx",
}


def cpu_info() -> Dict[str, Any]:
    """CPU model, widest SIMD, the SIMD / AMX feature flags, CPU counts, RAM, platform."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    flags_m = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    flags = set(flags_m.group(1).split()) if flags_m else set()
    simd = ("avx512" if "avx512f" in flags else "avx2" if {"avx2", "fma"} <= flags
            else "avx" if "avx" in flags else "sse")
    mem = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    ram = re.search(r"^MemTotal:\s*(\d+)\s*kB", mem, re.M)
    return {
        "model": model.group(1).strip() if model else platform.processor(),
        "simd": simd,
        "flags": sorted(f for f in flags if f.startswith(("avx", "fma", "amx")) or f in ("sse4_2", "f16c")),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cores(),
        "ram_gib": round(int(ram.group(1)) / 2**20, 1) if ram else None,
        "platform": platform.platform(),
    }


def blas_libraries() -> List[Dict[str, Any]]:
    """threadpoolctl's view of the loaded BLAS/OpenMP libraries (call after all imports), each
    with the package that ships it (``owner``)."""
    try:
        from threadpoolctl import threadpool_info  # type: ignore[import-untyped]
    except ImportError:
        return [{"error": "threadpoolctl not installed"}]
    keys = ("user_api", "internal_api", "prefix", "version", "architecture", "threading_layer",
            "num_threads", "filepath")
    libs = []
    for info in threadpool_info():
        lib = {k: info.get(k) for k in keys}
        path = str(info.get("filepath", ""))
        lib["owner"] = next((o for o in ("faiss", "numpy", "scipy", "sklearn", "scikit_learn",
                                          "embedcluster", "torch") if o in path), "system")
        libs.append(lib)
    return libs


def narrow_blas(cpu: Dict[str, Any], libs: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The BLAS libraries running kernels narrower than the CPU allows (an OpenBLAS older than
    the CPU falls back to an older core, or OPENBLAS_CORETYPE forces one)."""
    out = []
    for lib in libs:
        core = str(lib.get("architecture") or "")
        level = OPENBLAS_CORE_SIMD.get(core.lower(), "sse")
        if lib.get("user_api") == "blas" and core and _SIMD_LEVEL[level] < _SIMD_LEVEL[cpu["simd"]]:
            out.append({**lib, "simd": level})
    return out


def fastest_openblas_core(cpu: Dict[str, Any]) -> str:
    """The OPENBLAS_CORETYPE whose kernels are the widest this CPU runs."""
    return "SkylakeX" if cpu["simd"] == "avx512" else "Haswell"


def kernel_report() -> Dict[str, Any]:
    """embedcluster's kernel sets: those built and supported here, the CPU features the engine
    sees, and each choice call of ``_core`` that this engine has (KERNEL_CALLS)."""
    from ._backend import _core

    if _core is None:
        return {"available": [], "error": "the native engine is not importable"}
    build = _core.build_info()
    out: Dict[str, Any] = {"available": list(build.get("kernels_available", [])),
                           "cpu_features_seen": list(build.get("cpu_features", []))}
    for name, call in KERNEL_CALLS.items():
        with contextlib.suppress(AttributeError):
            out[name] = call(_core)
    out["forced_by_env"] = os.environ.get("EMBEDCLUSTER_ISA")
    return out


def library_versions() -> Dict[str, Optional[str]]:
    """Versions of Python, numpy, embedcluster and the peers (None: not installed)."""
    import importlib.metadata as md

    def ver(dist: str) -> Optional[str]:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    from ._version import __version__

    return {"python": platform.python_version(), "numpy": np.__version__, "embedcluster": __version__,
            "faiss-cpu": ver("faiss-cpu"), "scikit-learn": ver("scikit-learn"),
            "threadpoolctl": ver("threadpoolctl")}


def find_peers() -> Tuple[Dict[str, Any], Dict[str, str]]:
    """The peer libraries importable here ({name: module}) and those missing ({name: why, and
    the command that installs it})."""
    found: Dict[str, Any] = {}
    missing: Dict[str, str] = {}
    for name, module in ((FAISS, "faiss"), (SKLEARN, "sklearn")):
        try:
            found[name] = __import__(module)
        except ImportError as exc:
            missing[name] = f"not installed ({exc}); install it with `{INSTALL_HINT[name]}`"
    return found, missing


@contextlib.contextmanager
def limited_threads(threads: int) -> Iterator[None]:
    """Every engine on ``threads`` threads: faiss's OpenMP, and BLAS / OpenMP pools through
    threadpoolctl where it is installed (embedcluster takes n_threads per call)."""
    with contextlib.suppress(ImportError):
        import faiss

        faiss.omp_set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(threads):
        yield


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------
@dataclass
class Config:
    """What ``embedcluster bench`` runs; n=None takes each case's default size."""

    cases: Tuple[str, ...] = CASES
    n: Optional[int] = None
    d: int = 384
    k: int = 100
    iters: int = 20
    n_neighbors: int = 10
    eps: float = 0.9
    min_samples: int = 10
    repeats: int = 3
    threads: int = 0  # 0: every usable core
    seed: int = 0
    inertia_rtol: float = 1e-6
    knn_rtol: float = 1e-4

    DEFAULT_N = {"kmeans": 50_000, "knn": 20_000, "dbscan": 10_000}

    def size(self, case: str) -> int:
        """Rows of a case."""
        return self.DEFAULT_N[case] if self.n is None else self.n

    def thread_count(self) -> int:
        """The threads every engine gets."""
        return self.threads or usable_cores()


@dataclass
class Run:
    """One engine's measurements in one case; ``agrees`` is None for the reference itself or
    when no peer to check against ran."""

    engine: str
    times: List[float]
    agrees: Optional[bool] = None
    detail: str = ""
    quality: Dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def case_data(case: str, cfg: Config) -> np.ndarray:
    """The seeded data of a case (the same in this process and in a child process)."""
    n = cfg.size(case)
    if case == "kmeans":
        return make_sphere_mixture(n, cfg.d, max(1, cfg.k), 1.0, seed=cfg.seed)[0]
    if case == "knn":
        return make_sphere_mixture(n, cfg.d, 64, 1.0, seed=cfg.seed + 2)[0]
    return make_sphere_mixture(n, cfg.d, 10, (0.5, 0.7), noise_frac=0.05, seed=cfg.seed + 4)[0]


def kmeans_init(X: np.ndarray, cfg: Config) -> np.ndarray:
    """The k random rows every engine starts from."""
    rng = np.random.default_rng(cfg.seed + 1)
    return X[np.sort(rng.choice(len(X), cfg.k, replace=False))].copy()


# Each engine's run of each case: module functions, looked up when a case runs (tests replace them).
def ec_kmeans(X: np.ndarray, C0: np.ndarray, cfg: Config) -> np.ndarray:
    from .cluster import KMeans

    model = KMeans(cfg.k, init=C0, n_init=1, max_iter=cfg.iters, tol=0.0, backend="native",
                   n_threads=cfg.thread_count()).fit(X)
    return np.asarray(model.cluster_centers_)


def faiss_kmeans(X: np.ndarray, C0: np.ndarray, cfg: Config) -> np.ndarray:
    import faiss

    km = faiss.Kmeans(X.shape[1], cfg.k, niter=cfg.iters, max_points_per_centroid=10**9, seed=cfg.seed,
                      verbose=False)
    km.train(X, init_centroids=C0)
    return np.asarray(km.centroids)


def sklearn_kmeans(X: np.ndarray, C0: np.ndarray, cfg: Config) -> np.ndarray:
    from sklearn.cluster import KMeans

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = KMeans(cfg.k, init=C0, n_init=1, max_iter=cfg.iters, tol=0.0, algorithm="lloyd").fit(X)
    return np.asarray(model.cluster_centers_)


def ec_knn(X: np.ndarray, cfg: Config) -> Tuple[np.ndarray, np.ndarray]:
    from .cluster import NearestNeighbors

    return NearestNeighbors(n_neighbors=cfg.n_neighbors, backend="native",
                            n_threads=cfg.thread_count()).fit(X).kneighbors()


def faiss_knn(X: np.ndarray, cfg: Config) -> Tuple[np.ndarray, np.ndarray]:
    import faiss

    index = faiss.IndexFlatL2(X.shape[1])
    index.add(X)
    D, ids = drop_self(*index.search(X, cfg.n_neighbors + 1))
    return np.sqrt(np.maximum(D, 0.0)), ids


def sklearn_knn(X: np.ndarray, cfg: Config) -> Tuple[np.ndarray, np.ndarray]:
    from sklearn.neighbors import NearestNeighbors

    return NearestNeighbors(n_neighbors=cfg.n_neighbors, algorithm="brute").fit(X).kneighbors()


def ec_dbscan(X: np.ndarray, cfg: Config) -> np.ndarray:
    from .cluster import DBSCAN

    return DBSCAN(eps=cfg.eps, min_samples=cfg.min_samples, backend="native",
                  n_threads=cfg.thread_count()).fit(X).core_sample_indices_


def sklearn_dbscan(X: np.ndarray, cfg: Config) -> np.ndarray:
    from sklearn.cluster import DBSCAN

    return DBSCAN(eps=cfg.eps, min_samples=cfg.min_samples, algorithm="brute").fit(X).core_sample_indices_


RUNNERS: Dict[str, Dict[str, str]] = {  # case -> engine -> name of its function in this module
    "kmeans": {EC: "ec_kmeans", FAISS: "faiss_kmeans", SKLEARN: "sklearn_kmeans"},
    "knn": {EC: "ec_knn", FAISS: "faiss_knn", SKLEARN: "sklearn_knn"},
    "dbscan": {EC: "ec_dbscan", SKLEARN: "sklearn_dbscan"},
}


def run_engine(case: str, engine: str, X: np.ndarray, cfg: Config) -> Tuple[List[float], Any]:
    """Times ``cfg.repeats`` runs of one engine on a case's data; returns times and last output."""
    fn = globals()[RUNNERS[case][engine]]
    if case == "kmeans":
        C0 = kmeans_init(X, cfg)
        return time_repeats(lambda: fn(X, C0, cfg), cfg.repeats)
    return time_repeats(lambda: fn(X, cfg), cfg.repeats)


def check_runs(case: str, X: np.ndarray, outputs: Dict[str, Any], runs: Dict[str, Run], cfg: Config) -> None:
    """Fills each run's quality and whether it agrees: k-means inertia against scikit-learn's
    Lloyd, the neighbours and core points of each peer against embedcluster's."""
    if case == "kmeans":
        _check_kmeans(X, outputs, runs, cfg)
    elif EC in outputs:
        check = _check_knn if case == "knn" else _check_dbscan
        for name, out in outputs.items():
            if name != EC:
                check(X, outputs[EC], out, runs[name], cfg)


def _check_kmeans(X: np.ndarray, outputs: Dict[str, Any], runs: Dict[str, Run], cfg: Config) -> None:
    for name, centers in outputs.items():
        runs[name].quality["inertia"] = inertia_f64(X, centers)
    if EC in runs and SKLEARN in runs:
        rel = runs[EC].quality["inertia"] / runs[SKLEARN].quality["inertia"] - 1.0
        runs[EC].quality["inertia_rel_diff_vs_sklearn"] = rel
        runs[EC].agrees = abs(rel) <= cfg.inertia_rtol
        runs[EC].detail = f"inertia vs scikit-learn Lloyd {rel:+.1e} (tolerance {cfg.inertia_rtol:g})"
        runs[SKLEARN].detail = "the reference: Lloyd from the same initial centres"
    for name, run in runs.items():
        if name not in (EC, SKLEARN) and EC in runs:
            rel = run.quality["inertia"] / runs[EC].quality["inertia"] - 1.0
            run.detail = f"inertia vs embedcluster {rel:+.1e} (not checked: faiss sums in float32)"


def _check_knn(X: np.ndarray, ours: Any, theirs: Any, run: Run, cfg: Config) -> None:
    agree = knn_agreement(ours[0], ours[1], theirs[0], theirs[1], cfg.knn_rtol)
    agree["identical_up_to_ties"] = knn_same_up_to_ties(X, ours[0], ours[1], theirs[1], cfg.knn_rtol)
    run.quality["vs_embedcluster"] = agree
    run.agrees = agree["identical_up_to_ties"] == 1.0
    run.detail = (f"neighbours = embedcluster: {agree['ids_identical']:.2%} identical, "
                  f"{agree['identical_up_to_ties']:.2%} up to ties")


def _check_dbscan(X: np.ndarray, ours: Any, theirs: Any, run: Run, cfg: Config) -> None:
    run.quality["n_core"] = int(len(theirs))
    run.agrees = bool(np.array_equal(np.sort(theirs), np.sort(ours)))
    run.detail = (f"core points {'identical to' if run.agrees else 'DIFFER from'} embedcluster's "
                  f"({len(theirs):,} vs {len(ours):,})")


def bench_case(case: str, cfg: Config, peers: Sequence[str]) -> Tuple[Dict[str, Run], Dict[str, Any]]:
    """Runs embedcluster and the peers on one case in this process and checks their agreement;
    returns the runs and each engine's output."""
    X = case_data(case, cfg)
    outputs: Dict[str, Any] = {}
    runs: Dict[str, Run] = {}
    for engine in (EC, *peers):
        if engine not in RUNNERS[case]:
            continue
        times, outputs[engine] = run_engine(case, engine, X, cfg)
        runs[engine] = Run(engine, times)
    check_runs(case, X, outputs, runs, cfg)
    return runs, outputs


# --------------------------------------------------------------------------------------------
# faiss with another OpenBLAS core: a child process
# --------------------------------------------------------------------------------------------
def faiss_in_child(cfg: Config, coretype: str) -> Dict[str, Dict[str, Any]]:
    """Times faiss's cases in a child process with OPENBLAS_CORETYPE=coretype (OpenBLAS reads it
    when it loads); returns {case: {"times": [...], "output": arrays}}."""
    cases = [c for c in cfg.cases if FAISS in RUNNERS[c]]
    with tempfile.TemporaryDirectory(prefix="embedcluster_bench_") as tmp:
        spec = {"config": {**asdict(cfg), "cases": cases}, "out": tmp}
        env = {**os.environ, "OPENBLAS_CORETYPE": coretype}
        proc = subprocess.run([sys.executable, "-m", "embedcluster.bench", json.dumps(spec)], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(f"the faiss child process failed ({proc.returncode}): {last}")
        times = json.loads(proc.stdout.strip().splitlines()[-1])
        result = {}
        for case in cases:
            with np.load(Path(tmp) / f"{case}.npz") as z:
                arrays = [z[key] for key in sorted(z.files)]
            result[case] = {"times": times[case], "output": arrays[0] if len(arrays) == 1 else tuple(arrays)}
        return result


def _child_main(spec: Dict[str, Any]) -> int:
    """Body of ``python -m embedcluster.bench SPEC``: faiss's cases, outputs saved as .npz, the
    times printed as one JSON line."""
    raw = dict(spec["config"])
    raw["cases"] = tuple(raw["cases"])
    cfg = Config(**raw)
    times = {}
    with limited_threads(cfg.thread_count()):
        for case in cfg.cases:
            X = case_data(case, cfg)
            times[case], out = run_engine(case, FAISS, X, cfg)
            parts = out if isinstance(out, tuple) else (out,)
            arrays: Dict[str, Any] = {f"a{i}": np.asarray(p) for i, p in enumerate(parts)}
            np.savez(Path(spec["out"]) / f"{case}.npz", **arrays)
    print(json.dumps(times))
    return 0


# --------------------------------------------------------------------------------------------
# The whole benchmark
# --------------------------------------------------------------------------------------------
FAISS_TUNED = "faiss (OPENBLAS_CORETYPE={})"


def environment(cfg: Config) -> Dict[str, Any]:
    """Date, CPU, BLAS libraries, kernel sets, versions and thread counts of this run."""
    from ._backend import _core

    libs = blas_libraries()
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_info(),
        "kernel_sets": kernel_report(),
        "versions": library_versions(),
        "threads": {"every_engine": cfg.thread_count(),
                    "embedcluster_max_threads": _core.build_info().get("max_threads") if _core else None,
                    "blas": {lib.get("filepath"): lib.get("num_threads") for lib in libs},
                    "env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "MKL_", "OPENBLAS_"))}},
        "blas": libs,
    }


def run_benchmark(cfg: Config, log: Callable[[str], None] = lambda s: None,
                  faiss_both_ways: bool = True) -> Dict[str, Any]:
    """Runs the cases of ``cfg`` and returns the report (what ``--out`` writes as JSON).
    ``faiss_both_ways``: when faiss's OpenBLAS does not recognise the CPU, also time faiss in a
    child process with the fastest OPENBLAS_CORETYPE."""
    found, missing = find_peers()
    peers = [p for p in (FAISS, SKLEARN) if p in found]
    report: Dict[str, Any] = {"config": asdict(cfg), "peers_missing": missing, "warnings": []}
    cases: Dict[str, Dict[str, Run]] = {}
    outputs: Dict[str, Dict[str, Any]] = {}
    with limited_threads(cfg.thread_count()):
        for case in cfg.cases:
            log(f"{case}: n={cfg.size(case):,} d={cfg.d} ...")
            cases[case], outputs[case] = bench_case(case, cfg, peers)
    report["environment"] = env = environment(cfg)  # after the imports: every BLAS is loaded
    slow = [lib for lib in narrow_blas(env["cpu"], env["blas"]) if lib["owner"] == "faiss"]
    if slow and FAISS in found:
        core = fastest_openblas_core(env["cpu"])
        report["warnings"].append(
            f"faiss's bundled OpenBLAS {slow[0].get('version')} does not recognise this CPU: it runs core "
            f"'{slow[0].get('architecture')}' ({slow[0]['simd']}) on a {env['cpu']['simd']} CPU. faiss is shown "
            f"as is and with OPENBLAS_CORETYPE={core} (set it before faiss loads for its fastest kernels).")
        if faiss_both_ways and any(FAISS in RUNNERS[c] for c in cfg.cases):
            log(f"faiss again with OPENBLAS_CORETYPE={core} (child process) ...")
            try:
                _add_tuned_faiss(cases, outputs, cfg, core)
            except RuntimeError as exc:
                report["warnings"].append(str(exc))
    report["cases"] = {case: _case_json(case, cfg, runs) for case, runs in cases.items()}
    return report


def _add_tuned_faiss(cases: Dict[str, Dict[str, Run]], outputs: Dict[str, Dict[str, Any]], cfg: Config,
                     core: str) -> None:
    """Adds faiss's runs from a child process with OPENBLAS_CORETYPE=core, checked as the others."""
    name = FAISS_TUNED.format(core)
    for case, res in faiss_in_child(cfg, core).items():
        runs = cases[case]
        runs[name] = Run(name, res["times"])
        if EC in runs:
            X = case_data(case, cfg)
            check_runs(case, X, {EC: outputs[case][EC], name: res["output"]}, {EC: runs[EC], name: runs[name]}, cfg)


def _case_json(case: str, cfg: Config, runs: Dict[str, Run]) -> Dict[str, Any]:
    base = runs[EC].median if EC in runs else None
    engines = {}
    for name, run in runs.items():
        engines[name] = {"times_s": run.times, "median_s": run.median,
                         "ratio": run.median / base if base else None, "agrees": run.agrees,
                         "check": run.detail, "quality": run.quality}
    return {"n": cfg.size(case), "d": cfg.d, "engines": engines}


if __name__ == "__main__":
    sys.exit(_child_main(json.loads(sys.argv[1])))
