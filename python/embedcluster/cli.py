"""Command line of embedcluster: ``embedcluster info`` and ``embedcluster demo``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import build_info

    info = build_info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    b = info["build"]
    print(f"embedcluster {info['version']}  (Python {info['python']}, {info['platform']})")
    if info["native"]:
        print(f"  native engine : {b.get('compiler', '?')}; flags: {b.get('build_flags', '?')}")
        print(f"  OpenMP        : {'yes (' + str(b.get('openmp_version')) + ')' if b.get('openmp') else 'no'}; "
              f"threads: {b.get('max_threads')} of {info['cpu_count']} CPUs")
        print(f"  CPU features  : {', '.join(b.get('cpu_features', [])) or 'none detected'}")
        print(f"  kernels       : {b.get('kernels_active')} (available: {', '.join(b.get('kernels_available', []))})")
        print(f"  -march=native : {'yes' if b.get('march_native') else 'no (portable build, run-time dispatch)'}")
        print(f"  CUDA          : {'compiled' if b.get('cuda_compiled') else 'not compiled'}")
    else:
        print(f"  native engine : NOT AVAILABLE ({info['native_error']})")
    print(f"  backends      : {', '.join(info['backends']) or 'none'}")
    for k, v in sorted(info["environment"].items()):
        print(f"  env {k}={v}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Clusters scikit-learn's digits (1,797 real 8x8 images, shipped with scikit-learn)."""
    import time

    import numpy as np
    from sklearn.datasets import load_digits

    from . import metrics
    from .cluster import DBSCAN, KMeans
    from .neighbors import NearestNeighbors

    digits = load_digits()
    X = digits.data.astype(np.float32)
    y = digits.target
    rows = []

    def add(name: str, labels: np.ndarray, seconds: float) -> None:
        rep = metrics.clustering_report(y, labels)
        rows.append({"method": name, "accuracy": rep["accuracy"], "nmi": rep["nmi"], "ari": rep["ari"],
                     "n_clusters": rep["n_clusters"], "seconds": seconds})

    for name, est in [
        ("k-means, L2, raw pixels", KMeans(10, n_init=10, random_state=args.seed)),
        ("k-means, cosine, raw pixels", KMeans(10, n_init=10, metric="cosine", random_state=args.seed)),
        ("DBSCAN, cosine eps=0.06, min_samples=5", DBSCAN(eps=0.06, min_samples=5, metric="cosine")),
    ]:
        t = time.perf_counter()
        labels = est.fit_predict(X)
        add(name, labels, time.perf_counter() - t)
    t = time.perf_counter()
    _, idx = NearestNeighbors(n_neighbors=10).fit(X).kneighbors()
    agreement = float((y[idx] == y[:, None]).mean())
    knn_s = time.perf_counter() - t
    result = {"data": "scikit-learn digits (1797 x 64, 10 classes)", "rows": rows,
              "knn10_label_agreement": agreement, "knn_seconds": knn_s}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"embedcluster demo on {result['data']}; labels are used only to score.")
    print(f"{'method':42s} {'ACC':>6s} {'NMI':>6s} {'ARI':>6s} {'clusters':>8s} {'time':>8s}")
    for r in rows:
        print(f"{r['method']:42s} {r['accuracy']:6.3f} {r['nmi']:6.3f} {r['ari']:6.3f} {r['n_clusters']:8d} "
              f"{r['seconds']:7.3f}s")
    print(f"exact 10-NN self-join: {agreement:.3f} of neighbours share the point's class ({knn_s:.3f}s)")
    print("DBSCAN leaves points in sparse regions as noise (label -1); its ACC counts them as one more cluster.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``embedcluster`` command."""
    p = argparse.ArgumentParser(prog="embedcluster", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    pi = sub.add_parser("info", help="version, build options, CPU features, threads, backends",
                        description="Print what this installation is: version, build options, CPU features "
                                    "seen, threads, OpenMP, whether CUDA was compiled, and the backends available.")
    pi.add_argument("--json", action="store_true", help="print the report as JSON")
    pi.set_defaults(func=_cmd_info)
    pd = sub.add_parser("demo", help="cluster scikit-learn's digits and score the clusters",
                        description="Cluster scikit-learn's handwritten digits (shipped with scikit-learn, no "
                                    "download) with k-means and DBSCAN on the native engine, and score the "
                                    "clusters against the true digits: accuracy after Hungarian matching, NMI, "
                                    "ARI; plus how often exact 10-NN neighbours share a class.")
    pd.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    pd.add_argument("--json", action="store_true", help="print the results as JSON")
    pd.set_defaults(func=_cmd_demo)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``embedcluster`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, ImportError, MemoryError) as exc:
        print(f"embedcluster {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"embedcluster {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
