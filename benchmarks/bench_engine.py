#!/usr/bin/env python
"""Side-by-side benchmark of embedcluster vs faiss-cpu vs scikit-learn.

All engines run in one process (DBSCAN: one fresh worker process per engine, to measure its
peak memory) on the *same* seeded data, and every quality number is computed the same way for
every engine. Three cases:

* ``kmeans``  20 Lloyd iterations from the same initial centres (k random rows), n=200,000,
  d=384, k=256. Median time, GFLOP/s (2*n*k*d*iterations / time), inertia recomputed here in
  float64 (sum of squared distances to the nearest final centre), relative difference vs faiss.
  Plus one line: embedcluster's default k-means++ initialisation time.
* ``knn``     exact 10-NN self-join, n=100,000, d=384: embedcluster ``NearestNeighbors`` vs
  faiss ``IndexFlatL2`` (k=11, self dropped) vs scikit-learn brute force (quick mode or
  ``--sklearn-knn`` only). GFLOP/s = 2*n*n*d / time; agreement with faiss; recall@10 against
  a float64 brute force on a sample of queries.
* ``dbscan``  n=50,000, d=384, tight clusters plus ~5% uniform noise on the sphere:
  embedcluster ``DBSCAN`` vs scikit-learn ``DBSCAN(algorithm="brute")``. Median time and the
  peak RSS each engine adds over the loaded data, measured in a fresh worker process;
  agreement (adjusted Rand index, identical core samples).

Prints a Markdown table and writes ``engine.json`` / ``engine.md`` to ``--out``
(default ``benchmarks/out/``). The ``bars`` section of the JSON says whether each target was
met; it is computed from the measurements.

Run (see benchmarks/README.md)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_engine.py
    python benchmarks/bench_engine.py --quick            # smoke test, small sizes
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import numpy as np

from embedcluster.bench import (blas_libraries, cpu_info, drop_self, exact_knn_f64, fastest_openblas_core,
                                inertia_f64, json_default, knn_agreement, make_sphere_mixture, narrow_blas,
                                recall, time_repeats, usable_cores)

SCRIPT = Path(__file__).resolve()
DEFAULT_OUT = SCRIPT.parent / "out"
CASES = ("kmeans", "kmeans1m", "knn", "dbscan")
EC, FAISS, SKLEARN = "embedcluster", "faiss", "scikit-learn"
FAISS_SUB = "faiss (default: subsampled)"
ENGINES = (EC, FAISS, FAISS_SUB, SKLEARN)
BLAS_ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
REEXEC_MARK = "_BENCH_ENGINE_REEXEC"
MIB = 2.0**20

T = TypeVar("T")
Timed = Tuple[List[float], Any]  # (wall times of the repeats, output of the last repeat)


# --------------------------------------------------------------------------------------------
# Case sizes
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KMeansCase:
    n: int
    d: int
    k: int
    n_centers: int = 256  # mixture components of the data
    iters: int = 20
    intra_dist: float = 1.0  # typical distance between two points of one mixture component
    name: str = "kmeans"
    faiss_subsample: bool = False  # also run faiss with its default 256 points per centroid


@dataclass(frozen=True)
class KnnCase:
    n: int
    d: int
    k: int
    n_centers: int
    intra_dist: float = 1.0
    recall_queries: int = 1000  # queries checked against a float64 brute force


@dataclass(frozen=True)
class DbscanCase:
    n: int
    d: int
    n_clusters: int
    noise_frac: float
    intra_dist: Tuple[float, float]  # per-cluster typical intra-cluster distance, drawn in range
    eps: float
    min_samples: int


FULL_SIZES: Dict[str, Any] = {
    "kmeans": KMeansCase(n=200_000, d=384, k=256),
    "kmeans1m": KMeansCase(n=1_000_000, d=128, k=1000, n_centers=1000, name="kmeans1m", faiss_subsample=True),
    "knn": KnnCase(n=100_000, d=384, k=10, n_centers=256),
    "dbscan": DbscanCase(n=100_000, d=384, n_clusters=40, noise_frac=0.05,
                         intra_dist=(0.5, 0.7), eps=0.9, min_samples=10),
}
QUICK_SIZES: Dict[str, Any] = {
    # more components than clusters and looser ones, so Lloyd does not converge in 20 iterations
    "kmeans": KMeansCase(n=20_000, d=384, k=64, intra_dist=1.2),
    "kmeans1m": KMeansCase(n=60_000, d=128, k=100, n_centers=100, name="kmeans1m", faiss_subsample=True),
    "knn": KnnCase(n=10_000, d=384, k=10, n_centers=64, recall_queries=200),
    "dbscan": DbscanCase(n=5_000, d=384, n_clusters=10, noise_frac=0.05,
                         intra_dist=(0.5, 0.7), eps=0.9, min_samples=10),
}


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
@dataclass
class EngineRun:
    """One engine's measurements in one case."""

    engine: str
    times: List[float]
    flop: Optional[float] = None  # floating-point operations of one run (nominal count)
    quality: Dict[str, Any] = field(default_factory=dict)
    summary: str = ""  # short quality text for the table
    mem_extra_mib: Optional[float] = None
    ratio: Optional[float] = None  # time of this engine / time of embedcluster

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def gflops(self) -> Optional[float]:
        return self.flop / self.median / 1e9 if self.flop else None

    def to_json(self) -> Dict[str, Any]:
        out = asdict(self)
        out.update(median_s=self.median, gflops=self.gflops)
        return out


@dataclass
class CaseResult:
    """All engines' runs of one case, plus what is not tied to one engine."""

    case: str
    title: str
    params: Dict[str, Any]
    runs: Dict[str, EngineRun] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def finalize(self) -> None:
        """Fills the time ratios vs embedcluster."""
        base = self.runs.get(EC)
        for run in self.runs.values():
            run.ratio = run.median / base.median if base else None

    def to_json(self) -> Dict[str, Any]:
        return {"title": self.title, "params": self.params,
                "engines": {name: run.to_json() for name, run in self.runs.items()},
                "skipped": self.skipped, "extra": self.extra, "notes": self.notes}


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------
_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def timed(fit: Callable[[], Any], repeats: int) -> Callable[[], Timed]:
    """A runner that times ``repeats`` in-process calls of ``fit``."""
    return lambda: time_repeats(fit, repeats)


def run_engines(result: CaseResult, eng: Engines, runners: Dict[str, Callable[[], Timed]]) -> Dict[str, Any]:
    """Runs each engine's runner, records an :class:`EngineRun` per engine, returns the outputs.

    A runner returns ``(times, output)``. Engines that are not installed, or whose runner
    raises, are recorded in ``result.skipped`` with the reason.
    """
    outputs: Dict[str, Any] = {}
    for engine, runner in runners.items():
        if not eng.available(engine):
            result.skipped[engine] = eng.missing[FAISS if engine == FAISS_SUB else engine]
            continue
        log(f"{result.case}: {engine} ...")
        try:
            times, out = runner()
        except Exception as exc:  # report and go on with the other engines
            result.skipped[engine] = f"failed: {type(exc).__name__}: {exc}"
            log(f"{result.case}: {engine} FAILED: {exc!r}")
            continue
        result.runs[engine] = EngineRun(engine, times)
        outputs[engine] = out
        log(f"{result.case}: {engine} median {statistics.median(times):.3f} s over {len(times)} run(s)")
    return outputs


def fmt_pct(x: float) -> str:
    return f"{100.0 * x:.2f}%"


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------
def blas_warnings(cpu: Dict[str, Any], libs: Sequence[Dict[str, Any]]) -> List[str]:
    """Loud warnings: OPENBLAS_* set, or a BLAS running kernels narrower than the CPU allows."""
    out = []
    set_vars = {v: os.environ[v] for v in BLAS_ENV_VARS if v in os.environ}
    if set_vars:
        cores = ", ".join(f"{lib['owner']} BLAS core {lib['architecture']}" for lib in libs
                          if lib.get("user_api") == "blas")
        what = ", ".join(f"{k}={v}" for k, v in set_vars.items())
        if os.environ.get(REEXEC_MARK):
            out.append(f"{what} was set by --openblas-coretype for this run ({cores}).")
        else:
            out.append(
                f"OpenBLAS environment variables are set: {what}. OpenBLAS read them when numpy/faiss"
                f" were loaded, so they apply to this run ({cores}). They can slow numpy/faiss; for the"
                " reference setting run `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python"
                " benchmarks/bench_engine.py` (or pass --openblas-coretype unset)."
            )
    slow = [f"{lib['owner']} (OpenBLAS {lib.get('version')}, core '{lib['architecture']}': {lib['simd']})"
            for lib in narrow_blas(cpu, libs)]
    if slow:
        why = ("OPENBLAS_CORETYPE forces it" if "OPENBLAS_CORETYPE" in os.environ else
               "an OpenBLAS older than the CPU falls back to older kernels")
        suggest = fastest_openblas_core(cpu)
        out.append(
            f"BLAS kernels narrower than this {cpu['simd']} CPU allows ({why}): " + "; ".join(slow)
            + f". Those libraries are NOT at their fastest setting; re-run with --openblas-coretype "
            f"{suggest} (sets OPENBLAS_CORETYPE={suggest} before they load) and compare."
        )
    return out


def apply_openblas_choice(choice: str) -> None:
    """Re-executes this script with the OpenBLAS environment asked for (before any BLAS work).

    OpenBLAS reads OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE once, when it is loaded, so changing
    them needs a fresh interpreter. "inherit" keeps the environment as it is.
    """
    if choice == "inherit":
        return
    env = dict(os.environ)
    env.pop("OPENBLAS_L2_SIZE", None)
    if choice == "unset":
        env.pop("OPENBLAS_CORETYPE", None)
    else:
        env["OPENBLAS_CORETYPE"] = choice
    if all(env.get(v) == os.environ.get(v) for v in BLAS_ENV_VARS):
        return
    if os.environ.get(REEXEC_MARK):
        raise RuntimeError("re-executing did not change the OpenBLAS environment")
    env[REEXEC_MARK] = "1"
    log(f"re-executing with OPENBLAS_CORETYPE={env.get('OPENBLAS_CORETYPE', '<unset>')}, "
        f"OPENBLAS_L2_SIZE=<unset>")
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, str(SCRIPT), *sys.argv[1:]], env)


@dataclass
class Engines:
    """The imported libraries; a peer that cannot be imported is in ``missing``, with the reason."""

    ec: Any
    faiss: Any  # None when missing
    missing: Dict[str, str]
    threads: int

    @classmethod
    def load(cls, threads: int) -> Engines:
        try:
            import embedcluster
        except ImportError as exc:
            raise SystemExit(f"embedcluster is not importable ({exc}); run `pip install .` in the repo first") from exc

        missing: Dict[str, str] = {}
        try:
            import faiss

            faiss.omp_set_num_threads(threads)
        except ImportError as exc:
            faiss = None
            missing[FAISS] = f"not installed ({exc})"
        try:
            import sklearn  # noqa: F401
        except ImportError as exc:
            missing[SKLEARN] = f"not installed ({exc})"
        return cls(embedcluster, faiss, missing, threads)

    def available(self, engine: str) -> bool:
        return (FAISS if engine == FAISS_SUB else engine) not in self.missing

    def versions(self) -> Dict[str, Any]:
        import importlib.metadata as md

        def ver(dist: str) -> Optional[str]:
            try:
                return md.version(dist)
            except md.PackageNotFoundError:
                return None

        return {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "faiss": getattr(self.faiss, "__version__", None),
            "scikit-learn": ver("scikit-learn"),
            "threadpoolctl": ver("threadpoolctl"),
            "embedcluster": getattr(self.ec, "__version__", None),
        }

    def thread_counts(self) -> Dict[str, Any]:
        build = self.ec.build_info().get("build", {})
        return {
            "requested": self.threads,
            "embedcluster_max_threads": build.get("max_threads"),
            "faiss_omp_max_threads": self.faiss.omp_get_max_threads() if self.faiss else None,
            "env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "MKL_", "OPENBLAS_NUM"))},
        }


def environment_report(engines: Engines) -> Tuple[Dict[str, Any], List[str]]:
    cpu = cpu_info()
    libs = blas_libraries()
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": cpu,
        "versions": engines.versions(),
        "embedcluster_build_info": engines.ec.build_info(),
        "threads": engines.thread_counts(),
        "env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")},
        "threadpoolctl": libs,
    }
    return report, blas_warnings(cpu, libs)


# --------------------------------------------------------------------------------------------
# Case 1: k-means
# --------------------------------------------------------------------------------------------
def bench_kmeans(cfg: KMeansCase, eng: Engines, args: argparse.Namespace) -> CaseResult:
    X, _ = make_sphere_mixture(cfg.n, cfg.d, cfg.n_centers, cfg.intra_dist, seed=args.seed)
    rng = np.random.default_rng(args.seed + 1)
    C0 = X[np.sort(rng.choice(cfg.n, cfg.k, replace=False))].copy()
    result = CaseResult(
        cfg.name, f"k-means n={cfg.n:,} d={cfg.d} k={cfg.k} {cfg.iters} it", asdict(cfg),
        notes=["all engines start from the same k random rows and run exactly "
               f"{cfg.iters} Lloyd iterations (tol=0); inertia recomputed here in float64 on all points",
               "embedcluster and scikit-learn end with one more assignment pass (labels match "
               "the final centres); faiss does not"])
    if cfg.faiss_subsample:
        result.notes.append(f"'{FAISS_SUB}': faiss.Kmeans with its default max_points_per_centroid=256, "
                            f"i.e. trained on {min(cfg.n, 256 * cfg.k):,} sampled rows")

    def fit_ec() -> Tuple[np.ndarray, int]:
        m = eng.ec.KMeans(cfg.k, init=C0, n_init=1, max_iter=cfg.iters, tol=0.0,
                          random_state=args.seed, backend="native").fit(X)
        fit_ec.last_model = m  # type: ignore[attr-defined]
        return m.cluster_centers_, m.n_iter_

    def fit_faiss() -> Tuple[np.ndarray, int]:
        km = eng.faiss.Kmeans(cfg.d, cfg.k, niter=cfg.iters, max_points_per_centroid=10**9,
                              seed=args.seed, verbose=False)
        km.train(X, init_centroids=C0)
        return km.centroids, len(km.obj)

    def fit_faiss_sub() -> Tuple[np.ndarray, int]:
        km = eng.faiss.Kmeans(cfg.d, cfg.k, niter=cfg.iters, seed=args.seed, verbose=False)
        km.train(X, init_centroids=C0)
        return km.centroids, len(km.obj)

    def fit_sklearn() -> Tuple[np.ndarray, int]:
        from sklearn.cluster import KMeans

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = KMeans(cfg.k, init=C0, n_init=1, max_iter=cfg.iters, tol=0.0, algorithm="lloyd",
                       random_state=args.seed).fit(X)
        return m.cluster_centers_, m.n_iter_

    runners = {EC: timed(fit_ec, args.repeats), FAISS: timed(fit_faiss, args.repeats)}
    if cfg.faiss_subsample:
        runners[FAISS_SUB] = timed(fit_faiss_sub, args.repeats)
    runners[SKLEARN] = timed(fit_sklearn, args.repeats if cfg.name == "kmeans" else args.sklearn_repeats)
    outputs = run_engines(result, eng, runners)

    for engine, (centers, n_iter) in outputs.items():
        run = result.runs[engine]
        rows = min(cfg.n, 256 * cfg.k) if engine == FAISS_SUB else cfg.n
        run.flop = 2.0 * rows * cfg.k * cfg.d * n_iter
        run.quality = {"inertia": inertia_f64(X, centers), "n_iter": int(n_iter)}
        if n_iter != cfg.iters:
            result.notes.append(f"{engine} stopped after {n_iter} iterations (labels stopped changing)")
    # The reference "fp32 Lloyd": scikit-learn's lloyd (float32 data) when it ran, else faiss.
    ref_name = SKLEARN if SKLEARN in result.runs else FAISS
    ref = result.runs.get(ref_name)
    for run in result.runs.values():
        text = f"inertia {run.quality['inertia']:.6g}"
        if ref and run is not ref:
            rel = run.quality["inertia"] / ref.quality["inertia"] - 1.0
            run.quality["inertia_rel_diff_vs_ref"] = rel
            text += f" (vs {ref_name} {rel:+.1e})"
        run.summary = text
    ec_model = getattr(fit_ec, "last_model", None)
    if ec_model is not None and ec_model.computed_fraction_ is not None:
        result.extra["embedcluster_computed_fraction"] = ec_model.computed_fraction_
        result.extra["embedcluster_mover_fraction"] = ec_model.mover_fraction_
        result.runs[EC].summary += (f"; {ec_model.computed_fraction_:.0%} of distance rows computed in full, "
                                    f"{ec_model.mover_fraction_:.0%} against the mobile centres only (pruning)")

    if args.kmeanspp and cfg.name == "kmeans":
        result.extra["embedcluster_kmeanspp_init"] = time_kmeanspp_init(eng, X, C0, cfg, args)
    return result


def time_kmeanspp_init(eng: Engines, X: np.ndarray, C0: np.ndarray, cfg: KMeansCase,
                       args: argparse.Namespace) -> Dict[str, Any]:
    """embedcluster's default k-means++ init time, through the public API only.

    = median time of ``KMeans(init="k-means++", max_iter=1)`` minus that of
    ``KMeans(init=C0, max_iter=1)``: one iteration costs the same whatever the init.
    """
    def one_iteration(init: Any) -> Callable[[], Any]:
        return lambda: eng.ec.KMeans(cfg.k, init=init, n_init=1, max_iter=1, tol=0.0,
                                     random_state=args.seed, backend="native").fit(X)

    log("kmeans: embedcluster k-means++ init ...")
    t_pp, model = time_repeats(one_iteration("k-means++"), args.repeats)
    t_given, _ = time_repeats(one_iteration(C0), args.repeats)
    init_s = statistics.median(t_pp) - statistics.median(t_given)
    return {
        "init_s": max(init_s, 0.0),
        "method": "median fit(init='k-means++', max_iter=1) - median fit(init=C0, max_iter=1)",
        "fit_max_iter1_kmeanspp_s": t_pp,
        "fit_max_iter1_given_init_s": t_given,
        "inertia_after_1_iter": inertia_f64(X, model.cluster_centers_),
    }


# --------------------------------------------------------------------------------------------
# Case 2: exact kNN self-join
# --------------------------------------------------------------------------------------------
def bench_knn(cfg: KnnCase, eng: Engines, args: argparse.Namespace) -> CaseResult:
    X, _ = make_sphere_mixture(cfg.n, cfg.d, cfg.n_centers, cfg.intra_dist, seed=args.seed + 2)
    result = CaseResult(
        "knn", f"exact {cfg.k}-NN self-join n={cfg.n:,} d={cfg.d}", asdict(cfg),
        notes=["distances are Euclidean; faiss searches k+1 and drops each point itself",
               f"recall@{cfg.k} against a float64 brute force on {cfg.recall_queries} sampled queries"])

    def fit_ec() -> Tuple[np.ndarray, np.ndarray]:
        return eng.ec.NearestNeighbors(n_neighbors=cfg.k, metric="euclidean",
                                       backend="native").fit(X).kneighbors()

    def fit_faiss() -> Tuple[np.ndarray, np.ndarray]:
        index = eng.faiss.IndexFlatL2(cfg.d)
        index.add(X)
        D, ids = drop_self(*index.search(X, cfg.k + 1))
        return np.sqrt(np.maximum(D, 0.0)), ids

    def fit_sklearn() -> Tuple[np.ndarray, np.ndarray]:
        from sklearn.neighbors import NearestNeighbors

        return NearestNeighbors(n_neighbors=cfg.k, algorithm="brute").fit(X).kneighbors()

    runners = {EC: timed(fit_ec, args.repeats), FAISS: timed(fit_faiss, args.repeats)}
    if args.quick or args.sklearn_knn:
        runners[SKLEARN] = timed(fit_sklearn, args.sklearn_repeats)
    else:
        result.skipped[SKLEARN] = "not run (about a minute at full size); pass --sklearn-knn"
    outputs = run_engines(result, eng, runners)

    rng = np.random.default_rng(args.seed + 3)
    sample = np.sort(rng.choice(cfg.n, min(cfg.recall_queries, cfg.n), replace=False))
    truth = exact_knn_f64(X, sample, cfg.k) if outputs else None
    ref = outputs.get(FAISS)
    for engine, (D, ids) in outputs.items():
        run = result.runs[engine]
        run.flop = 2.0 * cfg.n * cfg.n * cfg.d
        run.quality[f"recall_at_{cfg.k}_vs_f64"] = recall(ids[sample], truth)
        run.summary = f"recall {run.quality[f'recall_at_{cfg.k}_vs_f64']:.4f}"
        if ref is not None and engine != FAISS:
            agree = knn_agreement(D, ids, *ref)
            run.quality["vs_faiss"] = agree
            run.summary += (f"; = faiss: ids {fmt_pct(agree['ids_identical'])}, "
                            f"dists {fmt_pct(agree['dists_agree_rtol_1e-4'])}")
    return result


# --------------------------------------------------------------------------------------------
# Case 3: DBSCAN (each engine in a fresh worker process, for its peak memory)
# --------------------------------------------------------------------------------------------
def bench_dbscan(cfg: DbscanCase, eng: Engines, args: argparse.Namespace) -> CaseResult:
    if args.dbscan_eps is not None:
        cfg = replace(cfg, eps=args.dbscan_eps)
    X, truth = make_sphere_mixture(cfg.n, cfg.d, cfg.n_clusters, cfg.intra_dist,
                                   noise_frac=cfg.noise_frac, seed=args.seed + 4)
    result = CaseResult(
        "dbscan", f"DBSCAN n={cfg.n:,} d={cfg.d} eps={cfg.eps} min_samples={cfg.min_samples}",
        {**asdict(cfg), "sklearn_params": {"algorithm": "brute", "n_jobs": None}},
        notes=["each engine runs in a fresh worker process; 'extra peak RSS' = peak RSS during "
               "fit minus RSS after imports and data load",
               "scikit-learn: algorithm='brute', n_jobs=None (default); its brute radius search "
               "runs in OpenMP threads on all cores regardless of n_jobs",
               f"generated: {cfg.n_clusters} clusters, {int((truth < 0).sum()):,} noise points"])

    with tempfile.TemporaryDirectory(prefix="bench_engine_") as tmp:
        data = Path(tmp) / "X.npy"
        np.save(data, X)

        def worker(engine: str, repeats: int) -> Callable[[], Timed]:
            spec = {"task": "dbscan", "engine": engine, "data": str(data), "eps": cfg.eps,
                    "min_samples": cfg.min_samples, "repeats": repeats, "out": str(Path(tmp) / engine)}
            return lambda: run_worker(spec)

        outputs = run_engines(result, eng, {EC: worker(EC, args.repeats),
                                            SKLEARN: worker(SKLEARN, args.sklearn_repeats)})

    for engine, out in outputs.items():
        run = result.runs[engine]
        run.mem_extra_mib = out["report"]["extra_peak_mib"]
        lab = out["labels"]
        run.quality = {
            "n_clusters": int(lab.max() + 1) if len(lab) else 0,
            "n_noise": int((lab < 0).sum()),
            "n_core": int(len(out["core"])),
            "ari_vs_truth": adjusted_rand(lab, truth),
            "memory": out["report"],
        }
        run.summary = (f"{run.quality['n_clusters']} clusters, {run.quality['n_noise']:,} noise, "
                       f"ARI vs truth {_cell(run.quality['ari_vs_truth'], '.4f')}")
        stats = out["report"]["engine_stats"]
        if stats.get("tile_pairs"):  # embedcluster: share of tile pairs not pruned by the partition
            run.summary += f", {stats['pairs_computed_pass1'] / stats['tile_pairs']:.0%} of tile pairs computed"
    if EC in outputs and SKLEARN in outputs:
        same_core = bool(np.array_equal(np.sort(outputs[EC]["core"]), np.sort(outputs[SKLEARN]["core"])))
        ari = adjusted_rand(outputs[EC]["labels"], outputs[SKLEARN]["labels"])
        result.extra["agreement"] = {"ari_embedcluster_vs_sklearn": ari, "core_samples_identical": same_core}
        result.runs[EC].summary += (f"; ARI vs sklearn {_cell(ari, '.4f')}, "
                                    f"core sets {'identical' if same_core else 'DIFFER'}")
    return result


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    try:
        from sklearn.metrics import adjusted_rand_score
    except ImportError:
        return None
    return float(adjusted_rand_score(a, b))


def run_worker(spec: Dict[str, Any]) -> Timed:
    """Runs one engine's repeats in a fresh interpreter (``--worker``); returns its times."""
    cmd = [sys.executable, str(SCRIPT), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker exited with status {proc.returncode}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(spec["out"] + ".npz") as z:
        labels, core = z["labels"], z["core"]
    return report["times"], {"report": report, "labels": labels, "core": core}


def _status_kib(key: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _peak_rss_kib() -> int:
    hwm = _status_kib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


DbscanFit = Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray, Dict[str, Any]]]


def dbscan_fitter(engine: str, eps: float, min_samples: int) -> DbscanFit:
    """Imports the engine and returns fit(X) -> (labels, core sample indices, engine stats)."""
    if engine == EC:
        import embedcluster

        def fit(X: np.ndarray) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
            m = embedcluster.DBSCAN(eps=eps, min_samples=min_samples, metric="euclidean",
                                    backend="native").fit(X)
            return m.labels_, m.core_sample_indices_, dict(getattr(m, "stats_", {}))
    elif engine == SKLEARN:
        from sklearn.cluster import DBSCAN

        def fit(X: np.ndarray) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
            m = DBSCAN(eps=eps, min_samples=min_samples, metric="euclidean", algorithm="brute",
                       n_jobs=None).fit(X)
            return m.labels_, m.core_sample_indices_, {}
    else:
        raise ValueError(f"unknown engine {engine!r}")
    return fit


def worker_main(spec: Dict[str, Any]) -> int:
    """Body of the hidden ``--worker`` mode: load data, reset the RSS peak, time the fits.

    Prints a one-line JSON report on stdout and saves labels / core indices to ``out.npz``.
    """
    if spec.get("task") != "dbscan":
        raise ValueError(f"unknown worker task {spec.get('task')!r}")
    fit = dbscan_fitter(spec["engine"], float(spec["eps"]), int(spec["min_samples"]))
    X = np.load(spec["data"])  # fully in memory: part of the baseline
    gc.collect()
    baseline = _status_kib("VmRSS")
    try:  # Linux: "5" resets the peak RSS (VmHWM) to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
        hwm_reset = _status_kib("VmHWM") is not None
    except OSError:
        hwm_reset = False
    if baseline is None:  # no /proc: fall back to getrusage (peak includes imports/loading)
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, (labels, core, stats) = time_repeats(lambda: fit(X), int(spec["repeats"]))
    peak = _peak_rss_kib()
    np.savez(spec["out"] + ".npz", labels=np.asarray(labels), core=np.asarray(core))
    report = {"times": times, "baseline_rss_mib": baseline / 1024, "peak_rss_mib": peak / 1024,
              "extra_peak_mib": (peak - baseline) / 1024, "peak_reset_after_load": hwm_reset,
              "engine_stats": stats, "threadpoolctl": blas_libraries()}
    print(json.dumps(report, default=json_default), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# Bars
# --------------------------------------------------------------------------------------------
def condition(name: str, value: Optional[float], op: str, threshold: float) -> Dict[str, Any]:
    met = None if value is None else (value >= threshold if op == ">=" else
                                      value <= threshold if op == "<=" else value < threshold)
    return {"name": name, "value": value, "op": op, "threshold": threshold, "met": met}


def bar(case: str, text: str, conditions: List[Dict[str, Any]], proposed: bool = False) -> Dict[str, Any]:
    mets = [c["met"] for c in conditions]
    met = None if any(m is None for m in mets) else all(mets)
    return {"case": case, "bar": text, "met": met, "proposed": proposed, "conditions": conditions}


def _get(results: Dict[str, CaseResult], case: str, engine: str, *path: str) -> Any:
    """results[case].runs[engine] attribute / nested quality value, or None when absent."""
    res = results.get(case)
    run = res.runs.get(engine) if res else None
    if run is None:
        return None
    value: Any = getattr(run, path[0])
    for key in path[1:]:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def evaluate_bars(results: Dict[str, CaseResult]) -> List[Dict[str, Any]]:
    """Whether each target of issue 4 was met, from the measurements (None: not measured)."""
    bars: List[Dict[str, Any]] = []
    if "kmeans" in results:
        rel = _get(results, "kmeans", EC, "quality", "inertia_rel_diff_vs_ref")
        bars.append(bar("kmeans", ">= 4x faster than faiss on all points, inertia within 0.1% of the "
                                  "fp32 Lloyd result (scikit-learn lloyd) from the same init", [
            condition("time faiss / time embedcluster", _get(results, "kmeans", FAISS, "ratio"), ">=", 4.0),
            condition("|inertia rel. diff vs fp32 Lloyd|", None if rel is None else abs(rel), "<=", 0.001)]))
    if "kmeans1m" in results:
        ec_in = _get(results, "kmeans1m", EC, "quality", "inertia")
        sub_in = _get(results, "kmeans1m", FAISS_SUB, "quality", "inertia")
        bars.append(bar("kmeans1m", ">= 4x faster than faiss on all points; faster than faiss's "
                                    "subsampling default with lower inertia", [
            condition("time faiss / time embedcluster", _get(results, "kmeans1m", FAISS, "ratio"), ">=", 4.0),
            condition("time faiss subsampled / time embedcluster",
                      _get(results, "kmeans1m", FAISS_SUB, "ratio"), ">=", 1.0),
            condition("inertia embedcluster / faiss subsampled", _ratio(ec_in, sub_in), "<", 1.0)]))
    if "knn" in results:
        rec = None
        run = results["knn"].runs.get(EC)
        if run is not None:
            rec = next((v for k, v in run.quality.items() if k.startswith("recall_at_")), None)
        bars.append(bar("knn", ">= 3x faster than faiss IndexFlatL2, neighbours identical to the "
                               "float64 brute force on the sampled queries", [
            condition("time faiss / time embedcluster", _get(results, "knn", FAISS, "ratio"), ">=", 3.0),
            condition("recall vs float64 brute force", rec, ">=", 1.0)]))
    if "dbscan" in results:
        res = results["dbscan"]
        n = res.params.get("n")
        bars.append(bar("dbscan", f">= 50x faster than scikit-learn (the issue sets n=100,000; this run n={n:,}), "
                                  "lower peak memory", [
            condition("time sklearn / time embedcluster", _get(results, "dbscan", SKLEARN, "ratio"), ">=", 50.0),
            condition("extra peak RSS embedcluster / sklearn",
                      _ratio(_get(results, "dbscan", EC, "mem_extra_mib"),
                             _get(results, "dbscan", SKLEARN, "mem_extra_mib")), "<", 1.0)]))
        same = res.extra.get("agreement", {}).get("core_samples_identical")
        bars.append(bar("dbscan", "same core samples as scikit-learn", [
            condition("core sample sets identical", None if same is None else float(same), ">=", 1.0)]))
    return bars


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None or b <= 0 else a / b


# --------------------------------------------------------------------------------------------
# Rates against the machine's peaks
# --------------------------------------------------------------------------------------------
def _torch_matmul_gflops(threads: int) -> Dict[str, Optional[float]]:
    """PyTorch's fp32 and bf16 4096^3 matrix products (best of 3 after a warm-up), the peaks
    the issue quotes; None where torch is not importable."""
    try:
        import torch
    except ImportError:
        return {"fp32": None, "bf16": None}
    torch.set_num_threads(threads)
    out: Dict[str, Optional[float]] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(4096, 4096).to(dtype)
        a @ a
        best = min(_seconds(lambda a=a: a @ a) for _ in range(3))
        out[name] = 2.0 * 4096 ** 3 / best / 1e9
    return out


def _seconds(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure_peaks(results: Dict[str, CaseResult], eng: Engines) -> Dict[str, Any]:
    """The tile products alone (``_core.tile_rate``: pack + multiply, no epilogue, fastest of 3)
    at each case's shape, bf16 and fp32, and PyTorch's matrix-product peaks: what the
    effective rates of the cases compare with. k-means: rows x k; kNN and DBSCAN: 100,000 rows
    x 1,024 columns (a block of the database)."""
    core = eng.ec._core
    peaks: Dict[str, Any] = {"torch_matmul_4096": _torch_matmul_gflops(eng.threads), "cases": {}}
    for name, res in results.items():
        p = res.params
        rows, cols = (p["n"], p["k"]) if name.startswith("kmeans") else (min(p["n"], 100_000), 1024)
        rates = {}
        for prec in ("auto", "fp32"):
            r = core.tile_rate(rows, cols, p["d"], precision=prec, n_threads=eng.threads)
            rates[prec] = {"seconds": r.seconds, "gflops": r.gflops, "kernels": r.kernels}
        peaks["cases"][name] = {"rows": rows, "cols": cols, "d": p["d"],
                                "tiles_bf16_or_auto": rates["auto"], "tiles_fp32": rates["fp32"]}
        log(f"{name}: tile products {rates['auto']['gflops']:.0f} GFLOP/s ({rates['auto']['kernels']}), "
            f"{rates['fp32']['gflops']:.0f} (fp32)")
    return peaks


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def _cell(value: Optional[float], fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def render_markdown(report: Dict[str, Any], results: Dict[str, CaseResult],
                    bars: List[Dict[str, Any]], warns: List[str]) -> str:
    env, cpu, ver = report["environment"], report["environment"]["machine"], report["environment"]["versions"]
    blas = "; ".join(f"{lib['owner']}: {lib.get('internal_api')} {lib.get('version')} "
                     f"core={lib.get('architecture')} threads={lib.get('num_threads')}"
                     for lib in env["threadpoolctl"] if lib.get("user_api") == "blas")
    lines = [
        "# embedcluster engine benchmark" + (" (QUICK MODE: smoke-test sizes)" if report["quick"] else ""),
        "",
        f"- date: {env['date']}; CPU: {cpu['model']} ({cpu['simd']}), {cpu['usable_cpus']} usable "
        f"of {cpu['logical_cpus']} logical CPUs, {cpu['ram_gib']} GiB RAM",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()),
        f"- threads: {report['environment']['threads']['requested']} for every engine; BLAS: {blas}",
        f"- OPENBLAS_* env: {env['env'] or 'none'}; median of {report['args']['repeats']} repeat(s) "
        f"(scikit-learn kNN/DBSCAN: {report['args']['sklearn_repeats']})",
        "",
    ]
    lines += [f"> **WARNING:** {w}" for w in warns] + ([""] if warns else [])
    lines += ["| case | engine | time (s) | GFLOP/s | ratio vs embedcluster | extra peak RSS (MiB) | quality |",
              "|---|---|---:|---:|---:|---:|---|"]
    for res in results.values():
        for engine in ENGINES:
            run = res.runs.get(engine)
            if run is not None:
                lines.append(f"| {res.title} | {engine} | {run.median:.3f} | {_cell(run.gflops, '.1f')} | "
                             f"{_cell(run.ratio, '.2f')} | {_cell(run.mem_extra_mib, '.1f')} | {run.summary} |")
            elif engine in res.skipped:
                lines.append(f"| {res.title} | {engine} | – | – | – | – | {res.skipped[engine]} |")
    lines.append("")
    lines.append("ratio = time of the engine / time of embedcluster (> 1: embedcluster is faster).")
    init = results["kmeans"].extra.get("embedcluster_kmeanspp_init") if "kmeans" in results else None
    if init:
        lines.append(f"embedcluster default k-means++ init (k={results['kmeans'].params['k']}): "
                     f"{init['init_s']:.3f} s ({init['method']}).")
    peaks = report.get("peaks")
    if peaks:
        tm = peaks["torch_matmul_4096"]
        lines += ["", "## Rates against the peaks", "",
                  "Effective rate = the case's nominal flops / time (pruning and symmetry skip work, so it "
                  "can exceed what the kernels do). Tile products = `_core.tile_rate` at the case's shape: "
                  "packing and the product kernel alone, no epilogue, fastest of 3. PyTorch 4096^3 matrix "
                  f"products on the same threads: fp32 {_cell(tm['fp32'], '.0f')} GFLOP/s, "
                  f"bf16 {_cell(tm['bf16'], '.0f')} GFLOP/s.", "",
                  "| case | effective GFLOP/s | tile shape (rows x cols x d) | tile products, default kernels "
                  "| tile products, fp32 |",
                  "|---|---:|---|---:|---:|"]
        for name, c in peaks["cases"].items():
            run = results[name].runs.get(EC)
            a, f = c["tiles_bf16_or_auto"], c["tiles_fp32"]
            lines.append(f"| {results[name].title} | {_cell(run.gflops if run else None, '.0f')} | "
                         f"{c['rows']:,} x {c['cols']:,} x {c['d']} | {a['gflops']:.0f} ({a['kernels']}) | "
                         f"{f['gflops']:.0f} |")
    lines += ["", "## Bars", ""]
    for b in bars:
        status = {True: "**met**", False: "**NOT met**", None: "n/a (not measured)"}[b["met"]]
        conds = "; ".join(f"{c['name']} = {_cell(c['value'], '.4g')} {c['op']} {c['threshold']:g}"
                          for c in b["conditions"])
        lines.append(f"- {status} — {b['case']}: {b['bar']}{' (proposed)' if b['proposed'] else ''} ({conds})")
    if report["quick"]:
        lines.append("- (quick mode: sizes are too small for the bars to mean anything)")
    lines += ["", "## Notes", ""]
    for res in results.values():
        lines += [f"- {res.case}: {note}" for note in res.notes]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------
BENCHES: Dict[str, Callable[[Any, Engines, argparse.Namespace], CaseResult]] = {
    "kmeans": bench_kmeans, "kmeans1m": bench_kmeans, "knn": bench_knn, "dbscan": bench_dbscan,
}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per engine (median reported)")
    p.add_argument("--no-peaks", action="store_true",
                   help="skip the tile-product and PyTorch matrix-product rates (about 10 s)")
    p.add_argument("--sklearn-repeats", type=int, default=1,
                   help="timed runs of the slow scikit-learn kNN and DBSCAN (default 1)")
    p.add_argument("--sklearn-knn", action="store_true",
                   help="also run scikit-learn's brute kNN at full size (about a minute)")
    p.add_argument("--no-kmeanspp", dest="kmeanspp", action="store_false",
                   help="skip timing embedcluster's k-means++ init")
    p.add_argument("--dbscan-eps", type=float, default=None,
                   help="override the DBSCAN eps (default 0.9; eps in about 0.7-1.2 finds the generated "
                        "clusters exactly, and embedcluster's pruning, unlike scikit-learn, "
                        "is faster the smaller eps is)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and initial centres")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for engine.json / engine.md")
    p.add_argument("--openblas-coretype", default="inherit", metavar="{inherit,unset,NAME}",
                   help="inherit: keep the environment (default); unset: drop OPENBLAS_CORETYPE and "
                        "OPENBLAS_L2_SIZE; NAME (e.g. SkylakeX, Haswell): force that OpenBLAS core for "
                        "numpy and faiss. Anything but inherit re-executes the script")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(args.cases) - set(CASES)
    if unknown or not args.cases:
        p.error(f"--cases: unknown {sorted(unknown)}; choose from {','.join(CASES)}")
    if args.repeats < 1 or args.sklearn_repeats < 1:
        p.error("--repeats and --sklearn-repeats must be >= 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))
    apply_openblas_choice(args.openblas_coretype)

    engines = Engines.load(usable_cores())
    env, warns = environment_report(engines)
    for w in warns:
        print(f"\n!!! WARNING: {w}\n", file=sys.stderr, flush=True)

    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    results: Dict[str, CaseResult] = {}
    for case in args.cases:
        result = BENCHES[case](sizes[case], engines, args)
        result.finalize()
        results[case] = result
    bars = evaluate_bars(results)
    peaks = None if args.no_peaks else measure_peaks(results, engines)

    report = {
        "quick": args.quick,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "worker"},
        "environment": env,
        "warnings": warns,
        "cases": {name: res.to_json() for name, res in results.items()},
        "bars": bars,
        "peaks": peaks,
    }
    markdown = render_markdown(report, results, bars, warns)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine.json").write_text(json.dumps(report, indent=2, default=json_default) + "\n")
    (args.out / "engine.md").write_text(markdown)
    print(markdown)
    log(f"wrote {args.out / 'engine.json'} and {args.out / 'engine.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
