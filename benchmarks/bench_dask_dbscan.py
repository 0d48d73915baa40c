"""Dask DBSCAN side by side: embedcluster.dask.DBSCAN on a distributed.LocalCluster (2 worker
processes x 1 thread, OMP_NUM_THREADS=1) against embedcluster.DBSCAN on the same rows in this
process (2 threads), and the grouped fit of a memory map in this process.

    python benchmarks/bench_dask_dbscan.py                # 200k x 128, two data sets
    python benchmarks/bench_dask_dbscan.py --rows 50000   # smoke

Data sets (seeded): "spread" has Gaussian clusters of ~16,384 rows (unit spread) whose centres
are 10 apart per coordinate on average (rows far from the origin, tens of neighbours a row at
eps 13.5); "blobs" is scikit-learn's make_blobs (100 centres in a +-10 box, unit spread; eps 14).
Labels and core points are compared with the single-machine fit. JSON goes to
benchmarks/out/dask_dbscan_<timestamp>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_dask import _reset_peak_rss, _rss_status, cpu_model, start_cluster, versions, worker_memory

OUT_DIR = Path(__file__).resolve().parent / "out"


def spread_data(n, d, seed=0, rows_per_centre=16384):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(max(1, n // rows_per_centre), d)) * 10
    return (means[rng.integers(0, len(means), n)] + rng.normal(size=(n, d))).astype(np.float32)


def blobs_data(n, d, seed=0):
    from sklearn.datasets import make_blobs
    return make_blobs(n, d, centers=100, cluster_std=1.0, random_state=seed)[0].astype(np.float32)


def median_time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, times


def run_case(client, name, X, eps, min_samples, args):
    import dask.array as da

    import embedcluster.dask as ecd
    from embedcluster import DBSCAN
    from embedcluster._dbscan_groups import fit_streamed

    single, t_single = median_time(lambda: DBSCAN(eps=eps, min_samples=min_samples, n_threads=2).fit(X), args.repeats)
    dX = da.from_array(X, chunks=(args.chunk_rows, X.shape[1])).persist()
    client.run(_reset_peak_rss)
    before = client.run(_rss_status)
    dmodel, t_dask = median_time(lambda: ecd.DBSCAN(eps=eps, min_samples=min_samples, client=client).fit(dX),
                                 args.repeats)
    mem = worker_memory(client, before)
    peaks = " / ".join(f"{m['peak_extra_mib']:.0f}" for m in mem.values())
    with tempfile.TemporaryDirectory() as scratch:
        local, t_local = median_time(lambda: fit_streamed(X, eps, min_samples, "l2", scratch, 2), args.repeats)
    case = {"data": name, "rows": len(X), "dim": X.shape[1], "eps": eps, "min_samples": min_samples,
            "clusters": int(single.n_clusters_), "noise": int((single.labels_ == -1).sum()),
            "core": len(single.core_sample_indices_), "single_s": t_single, "dask_s": t_dask,
            "grouped_local_s": t_local,
            "dask_over_single": statistics.median(t_dask) / statistics.median(t_single),
            "grouped_local_over_single": statistics.median(t_local) / statistics.median(t_single),
            "groups": dmodel.n_groups_, "pairs": dmodel.n_pairs_, "bytes_received": dmodel.bytes_received_,
            "worker_memory": mem,
            "identical": {"dask_labels": bool(np.array_equal(dmodel.labels_, single.labels_)),
                          "dask_core": bool(np.array_equal(dmodel.core_sample_indices_, single.core_sample_indices_)),
                          "grouped_local_labels": bool(np.array_equal(local.labels, single.labels_))}}
    print(f"{name}: {len(X):,} x {X.shape[1]}, eps={eps}, min_samples={min_samples}: {case['clusters']} clusters, "
          f"{case['noise']:,} noise; single {statistics.median(t_single):.2f} s, dask "
          f"{statistics.median(t_dask):.2f} s ({case['dask_over_single']:.2f}x), grouped in-process "
          f"{statistics.median(t_local):.2f} s ({case['grouped_local_over_single']:.2f}x); {case['groups']} groups, "
          f"{case['pairs']} pairs; {case['bytes_received']:,} bytes to the client; worker peak extra "
          f"{peaks} MiB; identical {case['identical']}",
          flush=True)
    return case


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--chunk-rows", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", default="spread,blobs")
    args = ap.parse_args()
    cluster, client = start_cluster()
    record = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "load_before": os.getloadavg()},
              "versions": versions(), "cluster": "LocalCluster(n_workers=2, threads_per_worker=1, processes=True)",
              "args": vars(args), "cases": []}
    print(f"{record['machine']['cpu_model']}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    try:
        for name in args.data.split(","):
            if name == "spread":
                record["cases"].append(run_case(client, name, spread_data(args.rows, args.dim), 13.5, 10, args))
            else:
                record["cases"].append(run_case(client, name, blobs_data(args.rows, args.dim), 14.0, 10, args))
    finally:
        client.close()
        cluster.close()
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"dask_dbscan_{datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(record, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
