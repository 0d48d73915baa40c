"""Peak memory of DBSCAN and the exact k-NN self-join on 1,000,000 x 128 (issue 5).

Each run happens in a fresh interpreter that loads the data from a .npy file, resets the
kernel's peak-RSS counter (Linux ``/proc/self/clear_refs``), runs the fit once, and reports
``extra peak RSS = peak RSS during the fit - RSS after loading``. The input itself (512 MB
here) is therefore not counted; the outputs are (labels, or the n x k neighbour arrays).

    python benchmarks/memory_1m.py                      # both, full size (kNN takes minutes)
    python benchmarks/memory_1m.py --cases dbscan
    python benchmarks/memory_1m.py --n 100000           # smaller smoke run

The target is at most 2 GiB of extra memory for each. Results go to
``benchmarks/out/memory_1m.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_engine import _peak_rss_kib, _status_kib  # noqa: E402

from embedcluster.bench import cpu_info, make_sphere_mixture  # noqa: E402

TARGET_MIB = 2048.0


def worker(spec: Dict[str, Any]) -> Dict[str, Any]:
    import embedcluster as ec

    X = np.load(spec["data"])
    gc.collect()
    baseline = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    t0 = time.perf_counter()
    if spec["task"] == "dbscan":
        m = ec.DBSCAN(eps=spec["eps"], min_samples=spec["min_samples"]).fit(X)
        summary = {"n_clusters": int(m.n_clusters_), "n_noise": int((m.labels_ < 0).sum()),
                   "n_core": int(len(m.core_sample_indices_)), "stats": m.stats_}
    elif spec["task"] == "knn":
        nq = spec["queries"]
        nn = ec.NearestNeighbors(n_neighbors=spec["k"]).fit(X)
        dist, idx = nn.kneighbors() if nq >= len(X) else nn.kneighbors(X[:nq])
        summary = {"queries": int(len(idx)), "k": int(idx.shape[1]), "mean_kth_distance": float(dist[:, -1].mean())}
    else:
        raise ValueError(spec["task"])
    seconds = time.perf_counter() - t0
    peak = _peak_rss_kib()
    return {"task": spec["task"], "seconds": seconds, "baseline_rss_mib": baseline / 1024,
            "peak_rss_mib": peak / 1024, "extra_peak_mib": (peak - baseline) / 1024, **summary}


def main(argv: List[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--cases", default="dbscan,knn")
    p.add_argument("--k", type=int, default=10, help="neighbours per query")
    p.add_argument("--knn-queries", type=int, default=None,
                   help="queries for k-NN (default: all rows, the self-join)")
    p.add_argument("--eps", type=float, default=0.9)
    p.add_argument("--min-samples", type=int, default=10)
    p.add_argument("--out", type=Path, default=HERE / "out" / "memory_1m.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    X, truth = make_sphere_mixture(args.n, args.d, 1000, (0.5, 0.7), noise_frac=0.05, seed=0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="memory_1m_") as tmp:
        data = Path(tmp) / "X.npy"
        np.save(data, X)
        input_mib = X.nbytes / 2**20
        del X
        for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
            spec = {"task": case, "data": str(data), "eps": args.eps, "min_samples": args.min_samples,
                    "k": args.k, "queries": args.knn_queries or args.n}
            print(f"[{time.strftime('%H:%M:%S')}] {case} ...", file=sys.stderr, flush=True)
            out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                                 stdout=subprocess.PIPE, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": cpu_info(), "n": args.n, "d": args.d,
              "input_mib": input_mib, "target_extra_mib": TARGET_MIB, "runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"| case | n x d | time (s) | extra peak RSS (MiB) | within {TARGET_MIB:.0f} MiB | result |")
    print("|---|---|---:|---:|---|---|")
    for r in rows:
        what = (f"{r['n_clusters']} clusters, {r['n_noise']:,} noise" if r["task"] == "dbscan"
                else f"{r['queries']:,} queries x {r['k']} neighbours")
        print(f"| {r['task']} | {args.n:,} x {args.d} | {r['seconds']:.1f} | {r['extra_peak_mib']:.0f} | "
              f"{'yes' if r['extra_peak_mib'] <= TARGET_MIB else 'NO'} | {what} |")
    print(f"\ninput {input_mib:.0f} MiB (not counted); wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
