#!/usr/bin/env python3
"""Is the kernel choice by measurement as fast as the best kernel set, case by case?

In one process, each benchmark case (k-means 200k x 384 k=256 20 iterations, the 10-NN self-join
through ``kneighbors()``, DBSCAN 60k x 384 on bench_engine.py's data) runs under every kernel set
forced in turn (``_core.select_kernels``) and under the automatic choice, alternating modes
repeat by repeat so a busy machine slows all alike. Printed per case: the median time of each
mode, auto / best forced set (bar: within 5%), and auto / main's behaviour (main chose the last
available set: bar, no case slower). Every mode must give bit-identical results (SHA-256 of the
outputs), checked here too.

    python benchmarks/kernel_choice.py                 # full sizes
    python benchmarks/kernel_choice.py --quick         # minutes, smaller sizes
    python benchmarks/kernel_choice.py --kmeans-n 50000 --knn-n 20000 --dbscan-n 20000 --repeats 5
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import make_sphere_mixture  # noqa: E402

import embedcluster as ec  # noqa: E402
from embedcluster import _core  # noqa: E402

AUTO = "auto"


def digest(*arrays: Any) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def kmeans_case(n: int, k: int, iters: int, d: int, seed: int) -> Tuple[str, Callable[[], str]]:
    X, _ = make_sphere_mixture(n, d, 256, 1.0, seed=seed)
    C0 = X[np.sort(np.random.default_rng(seed + 1).choice(n, k, replace=False))].copy()

    def run() -> str:
        m = ec.KMeans(k, init=C0, n_init=1, max_iter=iters, tol=0.0, random_state=seed, backend="native").fit(X)
        return digest(m.labels_, m.cluster_centers_)

    return f"k-means {n:,} x {d} k={k} {iters} it", run


def knn_case(n: int, k: int, d: int, seed: int) -> Tuple[str, Callable[[], str]]:
    X, _ = make_sphere_mixture(n, d, 256, 1.0, seed=seed + 2)

    def run() -> str:
        dist, ids = ec.NearestNeighbors(n_neighbors=k, metric="euclidean", backend="native").fit(X).kneighbors()
        return digest(dist, ids)

    return f"{k}-NN self-join {n:,} x {d} kneighbors()", run


def dbscan_case(n: int, d: int, seed: int) -> Tuple[str, Callable[[], str]]:
    # bench_engine.py's DBSCAN data: 40 tight clusters plus 5% uniform noise on the sphere
    X, _ = make_sphere_mixture(n, d, 40, (0.5, 0.7), noise_frac=0.05, seed=seed)

    def run() -> str:
        m = ec.DBSCAN(eps=0.9, min_samples=10).fit(X)
        return digest(m.labels_, m.core_sample_indices_)

    return f"DBSCAN {n:,} x {d} eps=0.9 min_samples=10", run


def time_modes(run: Callable[[], str], modes: List[str], repeats: int) -> Tuple[Dict[str, List[float]], Dict[str, str]]:
    """Seconds per mode over `repeats` rounds (the order rotates each round) and each mode's digest."""
    times: Dict[str, List[float]] = {m: [] for m in modes}
    digests: Dict[str, str] = {}
    for rep in range(repeats + 1):  # round 0 warms up (data in cache, choices measured), untimed
        order = modes[rep % len(modes):] + modes[:rep % len(modes)]
        for mode in order:
            _core.select_kernels(mode)
            t0 = time.perf_counter()
            out = run()
            elapsed = time.perf_counter() - t0
            if rep:
                times[mode].append(elapsed)
            digests.setdefault(mode, out)
            if digests[mode] != out:
                raise SystemExit(f"{mode}: two runs gave different results")
    _core.select_kernels(AUTO)
    return times, digests


def auto_sets(family: str, d: int) -> List[str]:
    """The sets the automatic choice picked for `family` (measured at d's bucket)."""
    bucket = max(4, (d - 1).bit_length())
    return [f["chosen"] for f in _core.kernel_choice()["families"]
            if f["family"] == family and max(4, (f["d"] - 1).bit_length()) == bucket]


def report_case(title: str, times: Dict[str, List[float]], digests: Dict[str, str], main_set: str,
                chosen: List[str]) -> Dict[str, Any]:
    med = {m: statistics.median(t) for m, t in times.items()}
    forced = {m: v for m, v in med.items() if m != AUTO}
    best = min(forced, key=lambda m: forced[m])
    identical = len(set(digests.values())) == 1
    row = {"case": title, "median_s": med, "best_forced": best, "auto_over_best": med[AUTO] / forced[best],
           "main_set": main_set, "auto_over_main": med[AUTO] / forced[main_set], "identical": identical,
           "times_s": times, "auto_chose": chosen}
    print(f"\n{title}")
    for m in sorted(med, key=lambda m: med[m]):
        spread = f"{min(times[m]):.3f}-{max(times[m]):.3f}"
        print(f"  {m:<11} median {med[m]:8.3f} s  (range {spread})")
    print(f"  auto / best forced ({best}) = {row['auto_over_best']:.3f}   [bar: <= 1.05]")
    print(f"  auto / main (last available set, {main_set}) = {row['auto_over_main']:.3f}   [bar: no case slower]")
    same = " (main's set: the same work, the ratio is noise)" if chosen == [main_set] else ""
    print(f"  auto chose: {', '.join(chosen)}{same}")
    print(f"  results bit-identical across modes: {identical}")
    return row


def cpu_model() -> str:
    """The CPU's model name (lscpu's "Model name")."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.processor())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (k-means 40k k=128, kNN 10k, DBSCAN 10k)")
    p.add_argument("--cases", default="kmeans,knn,dbscan", help="comma-separated subset of kmeans,knn,dbscan")
    p.add_argument("--kmeans-n", type=int, default=None)
    p.add_argument("--kmeans-k", type=int, default=None)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--knn-n", type=int, default=None)
    p.add_argument("--dbscan-n", type=int, default=None)
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--k", type=int, default=10, help="neighbours of the kNN case")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per mode (after one untimed round)")
    p.add_argument("--sets", default=None,
                   help="comma-separated kernel sets to force (default: every available set but the portable "
                        "'generic', tens of times slower than any vector set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the figures to this file")
    a = p.parse_args()
    kmeans_n = a.kmeans_n or (40_000 if a.quick else 200_000)
    kmeans_k = a.kmeans_k or (128 if a.quick else 256)
    knn_n = a.knn_n or (10_000 if a.quick else 50_000)
    dbscan_n = a.dbscan_n or (10_000 if a.quick else 60_000)

    available = list(_core.build_info()["kernels_available"])
    sets = a.sets.split(",") if a.sets else [s for s in available if s != "generic" or len(available) == 1]
    main_set = [s for s in available if s not in _core.kernel_choice()["manual_only"]][-1]
    modes = sets + [AUTO] if main_set in sets else sets + [main_set, AUTO]
    cpu = cpu_model()
    print(f"CPU: {cpu}; threads: {_core.build_info()['max_threads']}; modes: {', '.join(modes)}")

    builders = {"kmeans": lambda: kmeans_case(kmeans_n, kmeans_k, a.iters, a.d, a.seed),
                "knn": lambda: knn_case(knn_n, a.k, a.d, a.seed),
                "dbscan": lambda: dbscan_case(dbscan_n, a.d, a.seed)}
    rows = []
    for name in a.cases.split(","):
        title, run = builders[name]()
        times, digests = time_modes(run, modes, a.repeats)
        rows.append(report_case(title, times, digests, main_set, auto_sets(name, a.d)))
    choice = _core.kernel_choice()
    print("\nautomatic choice per family (GFLOP/s on the family's tile; ~ a strip's estimate):")
    for f in choice["families"]:
        rates = ", ".join(f"{r['name']} {'~' * r['from_strip']}{r['gflops']:.1f}" for r in f["rates"])
        print(f"  {f['family']:<7} d={f['d']:<5} {f['chosen']:<11} ({rates})")
    ok = all(r["identical"] and r["auto_over_best"] <= 1.05 and r["auto_over_main"] <= 1.0 for r in rows)
    print(f"\nall bars met: {ok} (noise on a busy machine can exceed a few per cent either way)")
    if a.json:
        Path(a.json).write_text(json.dumps({"cpu": cpu, "cases": rows, "choice": choice}, indent=1))
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
