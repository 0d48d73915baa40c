"""Dask k-means side by side: embedcluster.dask.KMeans, dask_ml.cluster.KMeans and
single-machine embedcluster.KMeans, on the same seeded data and the same initial centres.

The cluster is a distributed.LocalCluster (2 worker processes x 1 thread, OMP_NUM_THREADS=1
in the workers). The data is generated on the workers as a dask array and persisted there
before any timing; the single-machine fit runs on the same rows gathered into the client.

    python benchmarks/bench_dask.py --quick                 # 200k rows, k=100 (smoke)
    python benchmarks/bench_dask.py                         # 2M x 128, k=100 and k=1000
    python benchmarks/bench_dask.py --ks 1000 --daskml-iters 5
    python benchmarks/bench_dask.py --case knn              # kNN self-join, 200k x 128, k=10

The kNN case times embedcluster.dask.NearestNeighbors().fit(X).kneighbors() (the self-join)
against the single-machine NearestNeighbors on the same rows with --single-threads threads, checks
that indices and distances are identical, and reports bytes to the client and worker peaks.

Every inertia is recomputed here, once, in float64 from each engine's returned centres and
labels (dask-ml's own inertia_ is reported beside it; after max_iter it is the sum of
non-squared distances). JSON goes to benchmarks/out/dask_<timestamp>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

N_TRUE_CENTRES = 200
CHUNK_ROWS = 250_000
OUT_DIR = Path(__file__).resolve().parent / "out"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200,000 rows, k=100 only (smoke test)")
    ap.add_argument("--sizes", type=str, default=None, help="comma-separated row counts (default 2000000)")
    ap.add_argument("--ks", type=str, default=None, help="comma-separated k (default 100,1000)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--max-iter", type=int, default=20, help="Lloyd iterations (tol=0: all of them run)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each embedcluster fit (median)")
    ap.add_argument("--daskml-repeats", type=int, default=1, help="timed runs of the dask-ml fit (slow)")
    ap.add_argument("--daskml-iters", type=int, default=None,
                    help="cap dask-ml's max_iter (per-iteration figures stay comparable)")
    ap.add_argument("--skip-daskml", action="store_true")
    ap.add_argument("--chunk-rows", type=int, default=CHUNK_ROWS)
    ap.add_argument("--single-threads", type=int, default=2, help="threads of the single-machine fit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--case", choices=["kmeans", "knn", "all"], default="kmeans")
    ap.add_argument("--knn-rows", type=int, default=200_000)
    ap.add_argument("--knn-k", type=int, default=10)
    ap.add_argument("--knn-chunk-rows", type=int, default=50_000)
    ap.add_argument("--knn-repeats", type=int, default=1, help="timed runs of each kNN self-join (median)")
    a = ap.parse_args()
    a.sizes = [int(s) for s in a.sizes.split(",")] if a.sizes else ([200_000] if a.quick else [2_000_000])
    a.ks = [int(k) for k in a.ks.split(",")] if a.ks else ([100] if a.quick else [100, 1000])
    return a


# ---- Environment record.

def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def versions() -> dict:
    import dask
    import distributed

    import embedcluster
    out = {"python": platform.python_version(), "numpy": np.__version__, "dask": dask.__version__,
           "distributed": distributed.__version__, "embedcluster": embedcluster.__version__}
    try:
        import dask_ml
        out["dask_ml"] = dask_ml.__version__
    except ImportError:
        out["dask_ml"] = None
    return out


# ---- Worker-side helpers (run through client.run in each worker process).

def _worker_env():
    return {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "pid": os.getpid()}


def _reset_peak_rss():
    # Writing 5 to clear_refs resets VmHWM, so the next read is the peak since now.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _rss_status():
    got = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                got[line.split(":")[0]] = int(line.split()[1]) * 1024
    return got


def _warm_daskml_numba():
    # dask-ml's centre sums are a numba function compiled on first call in each process.
    from dask_ml.cluster.k_means import _centers_dense
    _centers_dense(np.zeros((4, 2), np.float32), np.zeros(4, np.int32), 2)
    return True


# ---- Data.

def _blob_block(block_id_seed, rows, centres, noise):
    rng = np.random.default_rng(block_id_seed)
    which = rng.integers(len(centres), size=rows)
    x = centres[which] + noise * rng.standard_normal((rows, centres.shape[1]), dtype=np.float32)
    return x.astype(np.float32, copy=False)


def make_data(client, n, d, chunk_rows, seed):
    """Seeded blobs as a dask array persisted on the workers, and k-independent metadata."""
    import dask.array as da
    from dask import delayed
    from distributed import wait

    rng = np.random.default_rng(seed)
    centres = (rng.standard_normal((N_TRUE_CENTRES, d)) * 4.0).astype(np.float32)
    sizes = [min(chunk_rows, n - s) for s in range(0, n, chunk_rows)]
    blocks = [da.from_delayed(delayed(_blob_block)([seed, i], r, centres, 1.0), (r, d), dtype=np.float32)
              for i, r in enumerate(sizes)]
    X = da.concatenate(blocks, axis=0).persist()
    wait(X)
    return X


def initial_centres(X, k, seed):
    rng = np.random.default_rng([seed, k])
    rows = np.sort(rng.choice(X.shape[0], size=k, replace=False))
    return np.ascontiguousarray(X[rows].compute(), dtype=np.float32)


def empty_clusters(labels, k) -> int:
    return int(k - np.unique(np.asarray(labels)).size)


def inertia_f64(X_np, centres, labels, chunk=100_000) -> float:
    """Sum of squared distances of each row to its labelled centre, in float64."""
    c = np.asarray(centres, dtype=np.float64)
    labels = np.asarray(labels)
    total = 0.0
    for s in range(0, X_np.shape[0], chunk):
        diff = X_np[s:s + chunk].astype(np.float64) - c[labels[s:s + chunk]]
        total += float(np.einsum("ij,ij->", diff, diff))
    return total


# ---- One engine fit, timed, with worker peak memory.

def worker_memory(client, before):
    after = client.run(_rss_status)
    return {str(i): {"rss_before_mib": before[w]["VmRSS"] / 2**20, "rss_after_mib": after[w]["VmRSS"] / 2**20,
                     "peak_mib": after[w]["VmHWM"] / 2**20,
                     "peak_extra_mib": (after[w]["VmHWM"] - before[w]["VmRSS"]) / 2**20}
            for i, w in enumerate(sorted(after))}


def timed_fit(client, make_model, X, repeats):
    """Fits make_model() on X `repeats` times; returns (last model, times, per-worker memory of the last)."""
    times, mem = [], None
    model = None
    for _ in range(repeats):
        client.run(_reset_peak_rss)
        before = client.run(_rss_status)
        model = make_model()
        t0 = time.perf_counter()
        model.fit(X)
        times.append(time.perf_counter() - t0)
        mem = worker_memory(client, before)
    return model, times, mem


def run_embedcluster_dask(client, X, C0, args):
    import embedcluster.dask as ecd
    k = len(C0)
    model, times, mem = timed_fit(
        client, lambda: ecd.KMeans(n_clusters=k, init=C0, max_iter=args.max_iter, tol=0, client=client),
        X, args.repeats)
    return model, {"engine": "embedcluster.dask", "times_s": times, "total_s": statistics.median(times),
                   "n_iter": int(model.n_iter_), "per_iter_s": statistics.median(model.iteration_seconds_),
                   "iteration_seconds": list(model.iteration_seconds_), "bytes_received": int(model.bytes_received_),
                   "own_inertia": float(model.inertia_), "worker_memory": mem}


def run_daskml(client, X, C0, args):
    from dask_ml.cluster import KMeans as DKMeans
    k = len(C0)
    iters = args.daskml_iters or args.max_iter
    model, times, mem = timed_fit(
        client, lambda: DKMeans(n_clusters=k, init=C0, max_iter=iters, tol=0, n_init=1), X, args.daskml_repeats)
    labels = model.labels_
    labels = np.asarray(labels.compute() if hasattr(labels, "compute") else labels)
    total = statistics.median(times)
    return (model.cluster_centers_, labels), {
        "engine": "dask_ml", "times_s": times, "total_s": total, "n_iter": int(model.n_iter_),
        "max_iter_cap": iters, "per_iter_s": total / int(model.n_iter_), "bytes_received": None,
        "own_inertia": float(model.inertia_), "worker_memory": mem}


def run_single(X_np, C0, args):
    from embedcluster import KMeans
    k = len(C0)
    times, model = [], None
    for _ in range(args.repeats):
        model = KMeans(n_clusters=k, init=C0, n_init=1, max_iter=args.max_iter, tol=0, n_threads=args.single_threads)
        t0 = time.perf_counter()
        model.fit(X_np)
        times.append(time.perf_counter() - t0)
    total = statistics.median(times)
    return model, {"engine": f"embedcluster ({args.single_threads} threads, one process)", "times_s": times,
                   "total_s": total, "n_iter": int(model.n_iter_), "per_iter_s": total / int(model.n_iter_),
                   "bytes_received": None, "own_inertia": float(model.inertia_), "worker_memory": None}


def run_case(client, X, X_np, n, k, args):
    """All engines at one (n, k); returns the case record."""
    C0 = initial_centres(X, k, args.seed)
    ecd_model, ecd = run_embedcluster_dask(client, X, C0, args)
    ecd["inertia_f64"] = inertia_f64(X_np, ecd_model.cluster_centers_, ecd_model.labels_)
    ecd["empty_clusters"] = empty_clusters(ecd_model.labels_, k)
    single_model, single = run_single(X_np, C0, args)
    single["inertia_f64"] = inertia_f64(X_np, single_model.cluster_centers_, single_model.labels_)
    single["empty_clusters"] = empty_clusters(single_model.labels_, k)
    case = {"n": n, "d": int(X.shape[1]), "k": k, "chunks": len(X.chunks[0]), "max_iter": args.max_iter,
            "engines": [ecd, single],
            "dask_equals_single": {
                "centres": bool(np.array_equal(ecd_model.cluster_centers_, single_model.cluster_centers_)),
                "labels": bool(np.array_equal(ecd_model.labels_, single_model.labels_)),
                "inertia": float(ecd_model.inertia_) == float(single_model.inertia_),
                "n_iter": int(ecd_model.n_iter_) == int(single_model.n_iter_)}}
    if not args.skip_daskml:
        (centres, labels), dml = run_daskml(client, X, C0, args)
        dml["inertia_f64"] = inertia_f64(X_np, centres, labels)
        dml["empty_clusters"] = empty_clusters(labels, k)
        dml["ratio_per_iter_vs_embedcluster_dask"] = dml["per_iter_s"] / ecd["per_iter_s"]
        dml["ratio_total_vs_embedcluster_dask"] = (dml["total_s"] / ecd["total_s"]
                                                   if dml["n_iter"] == ecd["n_iter"] else None)
        case["engines"].append(dml)
    return case


def run_knn_case(client, args):
    """The kNN self-join on both engines; returns the case record."""
    import embedcluster
    import embedcluster.dask as ecd

    X = make_data(client, args.knn_rows, args.dim, args.knn_chunk_rows, args.seed)
    X_np = X.compute()
    k = args.knn_k
    single_t, ref = [], None
    for _ in range(args.knn_repeats):
        t0 = time.perf_counter()
        ref = embedcluster.NearestNeighbors(n_neighbors=k, n_threads=args.single_threads).fit(X_np).kneighbors()
        single_t.append(time.perf_counter() - t0)
    dask_t, got, mem, received = [], None, None, 0
    for _ in range(args.knn_repeats):
        client.run(_reset_peak_rss)
        before = client.run(_rss_status)
        t0 = time.perf_counter()
        model = ecd.NearestNeighbors(n_neighbors=k, client=client).fit(X)
        got = model.kneighbors()
        dask_t.append(time.perf_counter() - t0)
        mem, received = worker_memory(client, before), int(model.bytes_received_)
    assert ref is not None and got is not None
    same = bool(np.array_equal(got[1], ref[1]) and np.array_equal(got[0].view(np.int32), ref[0].view(np.int32)))
    single_s, dask_s = statistics.median(single_t), statistics.median(dask_t)
    return {"case": "knn", "n": args.knn_rows, "d": args.dim, "k": k, "chunks": len(X.chunks[0]),
            "single_s": single_s, "single_times_s": single_t, "dask_s": dask_s, "dask_times_s": dask_t,
            "ratio_dask_vs_single": dask_s / single_s, "identical": same, "bytes_received": received,
            "worker_memory": mem}


def knn_table(c) -> str:
    peak = " / ".join(f"{m['peak_extra_mib']:.0f}" for m in c["worker_memory"].values())
    return ("| n x d | k | chunks | single-machine (s) | embedcluster.dask (s) | dask / single | identical "
            "| bytes to client | worker peak extra (MiB) |\n|---|---|---|---|---|---|---|---|---|\n"
            f"| {c['n']:,} x {c['d']} | {c['k']} | {c['chunks']} | {c['single_s']:.2f} | {c['dask_s']:.2f} | "
            f"{c['ratio_dask_vs_single']:.2f}x | {c['identical']} | {c['bytes_received']:,} | {peak} |")


# ---- Output.

def table(cases) -> str:
    rows = ["| n | k | engine | iters | total (s) | s / iter | dask-ml / ec.dask (per iter) | inertia (f64, recomputed)"
            " | engine's own inertia | empty clusters | bytes to client | worker peak extra (MiB) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        for e in c["engines"]:
            mem = e["worker_memory"]
            peak = " / ".join(f"{m['peak_extra_mib']:.0f}" for m in mem.values()) if mem else "-"
            ratio = e.get("ratio_per_iter_vs_embedcluster_dask")
            received = "-" if e["bytes_received"] is None else f"{e['bytes_received']:,}"
            rows.append(f"| {c['n']:,} | {c['k']} | {e['engine']} | {e['n_iter']} | {e['total_s']:.2f} | "
                        f"{e['per_iter_s']:.3f} | {'-' if ratio is None else f'{ratio:.1f}x'} | "
                        f"{e['inertia_f64']:.6e} | {e['own_inertia']:.6e} | {e['empty_clusters']} | "
                        f"{received} | {peak} |")
        eq = c["dask_equals_single"]
        rows.append(f"| | | embedcluster.dask == single-machine | | | | | centres {eq['centres']}, "
                    f"labels {eq['labels']}, inertia {eq['inertia']}, n_iter {eq['n_iter']} | | | | |")
    return "\n".join(rows)


def start_cluster():
    from distributed import Client, LocalCluster
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           env={"OMP_NUM_THREADS": "1"})
    return cluster, Client(cluster)


def warm_up(client, args):
    """Imports and JIT compilation on the workers, outside the timings."""
    import dask.array as da

    import embedcluster.dask as ecd
    small = da.from_array(np.random.default_rng(1).standard_normal((2000, 8)).astype(np.float32), chunks=1000)
    ecd.KMeans(n_clusters=4, init=small[:4].compute(), max_iter=2, tol=0, client=client).fit(small)
    if not args.skip_daskml:
        client.run(_warm_daskml_numba)
        from dask_ml.cluster import KMeans as DKMeans
        DKMeans(n_clusters=4, init=small[:4].compute(), max_iter=2, tol=0, n_init=1).fit(small)


def main():
    args = parse_args()
    cluster, client = start_cluster()
    record = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform()},
              "versions": versions(), "worker_env": client.run(_worker_env),
              "cluster": "LocalCluster(n_workers=2, threads_per_worker=1, processes=True)",
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "cases": []}
    print(f"{record['machine']['cpu_model']}, {os.cpu_count()} CPUs; {record['versions']}; "
          f"workers {record['worker_env']}")
    try:
        warm_up(client, args)
        if args.case in ("knn", "all"):
            print(f"kNN self-join n={args.knn_rows:,} d={args.dim} k={args.knn_k} ...", flush=True)
            record["knn"] = run_knn_case(client, args)
            print(knn_table(record["knn"]), flush=True)
        for n in (args.sizes if args.case in ("kmeans", "all") else []):
            X = make_data(client, n, args.dim, args.chunk_rows, args.seed)
            X_np = X.compute()
            for k in args.ks:
                print(f"n={n:,} d={args.dim} k={k} ...", flush=True)
                record["cases"].append(run_case(client, X, X_np, n, k, args))
                print(table(record["cases"][-1:]), flush=True)
            del X, X_np
    finally:
        client.close()
        cluster.close()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"dask_{datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(record, indent=1))
    if record["cases"]:
        print("\n" + table(record["cases"]))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
