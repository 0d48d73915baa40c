"""Time versus n for each library, side by side in one process: k-means, exact 10-NN, DBSCAN.

Writes benchmarks/out/scaling/scaling.json, scaling.md and scaling.png (one panel per task,
log-log, one line per library). Same data generator as bench_engine.py; every engine runs on
the same array; one run per point (this is a shape-of-the-curve plot; the ratios at full size
are in bench_engine.py with medians of repeats).

Run with faiss and scikit-learn at their fastest OpenBLAS core on an AVX-512 CPU:
    OPENBLAS_CORETYPE=SkylakeX env -u OPENBLAS_L2_SIZE python benchmarks/scaling.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

import embedcluster as ec
from embedcluster.bench import make_sphere_mixture  # the data of the main benchmark


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def kmeans_engines(X: np.ndarray, k: int, iters: int) -> Dict[str, Callable[[], object]]:
    import faiss
    from sklearn.cluster import KMeans as SkKMeans

    C0 = X[np.random.default_rng(0).choice(len(X), k, replace=False)].copy()

    def run_faiss():
        km = faiss.Kmeans(X.shape[1], k, niter=iters, max_points_per_centroid=10**9, verbose=False, seed=1)
        km.train(X, init_centroids=C0)

    return {"embedcluster": lambda: ec.KMeans(k, init=C0, max_iter=iters, tol=0).fit(X),
            "faiss": run_faiss,
            "scikit-learn": lambda: SkKMeans(k, init=C0, n_init=1, max_iter=iters, tol=0, algorithm="lloyd").fit(X)}


def knn_engines(X: np.ndarray, k: int) -> Dict[str, Callable[[], object]]:
    import faiss
    from sklearn.neighbors import NearestNeighbors as SkNN

    def run_faiss():
        index = faiss.IndexFlatL2(X.shape[1])
        index.add(X)
        index.search(X, k + 1)

    return {"embedcluster": lambda: ec.NearestNeighbors(n_neighbors=k).fit(X).kneighbors(),
            "faiss": run_faiss,
            "scikit-learn": lambda: SkNN(n_neighbors=k, algorithm="brute").fit(X).kneighbors()}


def dbscan_engines(X: np.ndarray, eps: float, min_samples: int) -> Dict[str, Callable[[], object]]:
    from sklearn.cluster import DBSCAN as SkDBSCAN

    return {"embedcluster": lambda: ec.DBSCAN(eps=eps, min_samples=min_samples).fit(X),
            "scikit-learn": lambda: SkDBSCAN(eps=eps, min_samples=min_samples, algorithm="brute").fit(X)}


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/out/scaling", help="output folder")
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = ap.parse_args(argv)
    q = args.quick
    sizes = {"k-means (d=384, k=256, 20 it)": [5_000, 10_000] if q else [25_000, 50_000, 100_000, 200_000],
             "exact 10-NN self-join (d=384)": [2_000, 4_000] if q else [10_000, 20_000, 40_000, 80_000],
             "DBSCAN (d=384, eps=0.9)": [2_000, 4_000] if q else [10_000, 20_000, 40_000, 60_000]}
    results: Dict[str, Dict[str, List[float]]] = {}
    for task, ns in sizes.items():
        results[task] = {}
        for n in ns:
            if task.startswith("k-means"):
                X, _ = make_sphere_mixture(n, 384, 256, 1.0, seed=0)
                engines = kmeans_engines(X, 64 if q else 256, 20)
            elif task.startswith("exact"):
                X, _ = make_sphere_mixture(n, 384, 256, 1.0, seed=1)
                engines = knn_engines(X, 10)
            else:
                X, _ = make_sphere_mixture(n, 384, 40, (0.5, 0.7), noise_frac=0.05, seed=2)
                engines = dbscan_engines(X, 0.9, 10)
            for name, fn in engines.items():
                t = timed(fn)
                results[task].setdefault(name, []).append(t)
                print(f"{task:32s} n={n:>7,d} {name:13s} {t:8.2f} s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")},
            "embedcluster": ec.build_info()["build"].get("kernels_active")}
    (out / "scaling.json").write_text(json.dumps({"meta": meta, "sizes": sizes, "seconds": results}, indent=2))
    lines = [f"# Time vs n ({meta['date']}, {meta['cpus']} CPUs, embedcluster kernels {meta['embedcluster']})", ""]
    for task, ns in sizes.items():
        lines += [f"## {task}", "", "| n | " + " | ".join(results[task]) + " |",
                  "|---" * (len(results[task]) + 1) + "|"]
        for i, n in enumerate(ns):
            lines.append(f"| {n:,} | " + " | ".join(f"{v[i]:.2f} s" for v in results[task].values()) + " |")
        lines.append("")
    (out / "scaling.md").write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4))
    for ax, (task, ns) in zip(axes, sizes.items()):
        for name, ts in results[task].items():
            ax.plot(ns, ts, marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n (points)")
        ax.set_ylabel("seconds")
        ax.set_title(task, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"Time vs n on {meta['cpus']} CPU cores, {meta['date'][:10]}")
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=110)
    print(f"wrote {out}/scaling.json, scaling.md, scaling.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
