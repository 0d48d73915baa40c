#!/usr/bin/env python3
"""k-means, kNN and DBSCAN on a .npy file larger than the machine's RAM: peak private memory, and
k-means' time per pass against one sequential read of the file, measured in the same run.

    python benchmarks/out_of_core.py                  # a file 1.1x the RAM, 128 columns, all cases
    python benchmarks/out_of_core.py --rows 2000000   # a small smoke run
    python benchmarks/out_of_core.py --cases kmeans   # only k-means (kmeans, knn, dbscan)

The rows are unit vectors in clusters of about 4,096 rows (as normalised embeddings are): a
random unit centre plus Gaussian noise of norm about 0.3, normalised; DBSCAN runs with the
cosine metric (eps 0.072: a median of about 75 neighbours a row at 384 columns) on groups of
4,096 rows (GROUP_ROWS, set here to the cluster size). DBSCAN's work grows with the
neighbours, and a file of isotropic noise would make it a brute force.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakSampler:
    """Peak RssAnon of this process while the block runs (sampled every 0.1 s)."""

    def __enter__(self):
        self.base, self.peak, self._stop = rss_anon(), rss_anon(), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, rss_anon())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_anon())


def ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def drop_page_cache(path: Path) -> None:
    """Asks the kernel to forget the file's cached pages (so a read goes to the disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


ROWS_PER_CLUSTER = 4096


def generate(path: Path, n: int, d: int, seed: int, rows_per_centre: int = ROWS_PER_CLUSTER) -> None:
    rng = np.random.default_rng(seed)
    centres = max(1, n // rows_per_centre)
    means = rng.normal(size=(centres, d))
    means = (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    step = max(1, (256 << 20) // (4 * d))
    for a in range(0, n, step):
        b = min(n, a + step)
        block = rng.standard_normal((b - a, d), dtype=np.float32) * np.float32(0.3 / np.sqrt(d))
        block += means[rng.integers(0, centres, b - a)]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[a:b] = block
    out.flush()
    del out
    drop_page_cache(path)


def sequential_read(path: Path) -> float:
    drop_page_cache(path)
    buf = bytearray(64 << 20)
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
    return time.perf_counter() - t


def run_kmeans(X: np.ndarray, args, info: dict) -> None:
    from embedcluster import KMeans

    n = X.shape[0]
    rng = np.random.default_rng(1)
    init = np.ascontiguousarray(X[np.sort(rng.choice(n, args.k, replace=False))], dtype=np.float32)
    drop_page_cache(Path(X.filename))
    with PeakSampler() as mem:
        t = time.perf_counter()
        km = KMeans(args.k, init=init, max_iter=args.iters, tol=0.0).fit(X)
        seconds = time.perf_counter() - t
    # Passes over the file: the norms and checks, one per Lloyd iteration, the final
    # assignment, and the objective's maxima and sum.
    passes = 1 + km.n_iter_ + 1 + 2
    r = dict(seconds=seconds, n_iter=km.n_iter_, passes=passes, seconds_per_pass=seconds / passes,
             pass_vs_read=seconds / passes / info["sequential_read_s"],
             seconds_per_iteration=seconds / km.n_iter_,
             peak_private_gib=(mem.peak - mem.base) / 2**30, inertia=km.inertia_)
    info["kmeans"] = r
    print(f"k-means {args.iters} iterations: {seconds:.1f} s, {passes} passes, "
          f"{r['seconds_per_pass']:.1f} s per pass = {r['pass_vs_read']:.2f}x one sequential read; "
          f"peak private memory {r['peak_private_gib']:.2f} GiB", flush=True)


def run_knn(X: np.ndarray, args, info: dict) -> None:
    from embedcluster import NearestNeighbors

    n = X.shape[0]
    rng = np.random.default_rng(2)
    Q = np.ascontiguousarray(X[np.sort(rng.choice(n, args.queries, replace=False))], dtype=np.float32)
    Q += rng.normal(size=Q.shape).astype(np.float32) * 0.1
    drop_page_cache(Path(X.filename))
    with PeakSampler() as mem:
        t = time.perf_counter()
        nn = NearestNeighbors(n_neighbors=10, memory_limit=args.memory_limit).fit(X)  # a small limit streams
        dist, idx = nn.kneighbors(Q)
        seconds = time.perf_counter() - t
    check = np.sort(rng.choice(args.queries, 20, replace=False))
    ok = verify_knn(X, Q[check], idx[check], dist[check])
    info["knn"] = dict(queries=args.queries, k=10, seconds=seconds, peak_private_gib=(mem.peak - mem.base) / 2**30,
                       spot_check_queries=len(check), spot_check_ok=ok, streamed=bool(nn._streamed),
                       seconds_vs_read=seconds / info["sequential_read_s"])
    print(f"kNN of {args.queries:,} queries, k=10 (streamed: {nn._streamed}): {seconds:.1f} s "
          f"= {info['knn']['seconds_vs_read']:.1f}x one sequential read; peak private memory "
          f"{info['knn']['peak_private_gib']:.2f} GiB; {len(check)} queries checked by numpy: {ok}", flush=True)


def verify_knn(X: np.ndarray, Q: np.ndarray, idx: np.ndarray, dist: np.ndarray, block: int = 1 << 20) -> bool:
    """The k nearest of a few queries by a float64 numpy scan of the file (an independent oracle)."""
    best = np.full((len(Q), idx.shape[1]), np.inf)
    best_i = np.zeros((len(Q), idx.shape[1]), np.int64)
    Q64 = Q.astype(np.float64)
    for a in range(0, X.shape[0], block):
        B = np.asarray(X[a:a + block], dtype=np.float64)
        d2 = (Q64 ** 2).sum(1)[:, None] + (B ** 2).sum(1)[None, :] - 2 * Q64 @ B.T
        allv = np.concatenate([best, d2], 1)
        alli = np.concatenate([best_i, np.arange(a, a + len(B))[None, :].repeat(len(Q), 0)], 1)
        o = np.argsort(allv, axis=1, kind="stable")[:, :idx.shape[1]]
        best, best_i = np.take_along_axis(allv, o, 1), np.take_along_axis(alli, o, 1)
    return bool(np.allclose(np.sqrt(np.maximum(best, 0)), dist, rtol=1e-4, atol=1e-3)
                and (np.sort(best_i, 1) == np.sort(idx, 1)).mean() > 0.99)


def run_dbscan(X: np.ndarray, args, info: dict, scratch: Path) -> None:
    from embedcluster import DBSCAN

    drop_page_cache(Path(X.filename))
    with PeakSampler() as mem:
        t = time.perf_counter()
        import embedcluster._dbscan_groups as grouping

        grouping.GROUP_ROWS = ROWS_PER_CLUSTER
        db = DBSCAN(eps=args.eps, min_samples=args.min_samples, metric="cosine", scratch_dir=scratch,
                    memory_limit=args.memory_limit).fit(X)
        seconds = time.perf_counter() - t
    left = list(scratch.iterdir())
    info["dbscan"] = dict(eps=args.eps, min_samples=args.min_samples, seconds=seconds,
                          peak_private_gib=(mem.peak - mem.base) / 2**30, n_clusters=db.n_clusters_,
                          noise=int((db.labels_ == -1).sum()), core=len(db.core_sample_indices_),
                          streamed="groups_pairs" in db.stats_, stats=db.stats_, scratch_left=[str(p) for p in left])
    print(f"DBSCAN (cosine) eps={args.eps} min_samples={args.min_samples}: {seconds:.1f} s, {db.n_clusters_} clusters, "
          f"{info['dbscan']['noise']:,} noise, peak private memory {info['dbscan']['peak_private_gib']:.2f} GiB, "
          f"{db.stats_}; scratch folder left: {left or 'nothing'}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=0, help="rows (default: a file 1.1x the RAM)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--cases", default="kmeans,knn,dbscan")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--queries", type=int, default=10000)
    ap.add_argument("--eps", type=float, default=0.072)
    ap.add_argument("--memory-limit", type=int, default=None,
                    help="DBSCAN's and NearestNeighbors' memory_limit (a small one streams a smaller file too)")
    ap.add_argument("--min-samples", type=int, default=10)
    ap.add_argument("--dir", default=str(Path(__file__).parent / "out" / "ooc"))
    ap.add_argument("--keep", action="store_true", help="keep the generated file")
    args = ap.parse_args()
    cases = args.cases.split(",")
    d = args.dim
    n = args.rows or int(1.1 * ram_bytes() / (4 * d))
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"x_{n}x{d}.npy"
    info = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": n, "dim": d, "k": args.k,
            "file_gib": n * d * 4 / 2**30, "ram_gib": ram_bytes() / 2**30,
            "private_bar_gib": (2 * 2**30 + 64 * n) / 2**30,
            "cpu": subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | cut -d: -f2"], capture_output=True,
                                  text=True).stdout.strip() or platform.processor()}
    print(f"{n:,} x {d} float32 = {info['file_gib']:.1f} GiB on a machine with {info['ram_gib']:.1f} GiB RAM; "
          f"private memory bar 2 GiB + 64 B/row = {info['private_bar_gib']:.2f} GiB", flush=True)
    try:
        if not path.exists():
            t = time.perf_counter()
            generate(path, n, d, seed=0)
            info["generate_s"] = time.perf_counter() - t
        info["sequential_read_s"] = sequential_read(path)
        print(f"generated in {info.get('generate_s', 0):.0f} s; one sequential read {info['sequential_read_s']:.1f} s",
              flush=True)
        X = np.load(path, mmap_mode="r")
        if "kmeans" in cases:
            run_kmeans(X, args, info)
        if "knn" in cases:
            run_knn(X, args, info)
        if "dbscan" in cases:
            scratch = folder / "scratch"
            scratch.mkdir(exist_ok=True)
            run_dbscan(X, args, info, scratch)
    finally:
        if not args.keep and path.exists():
            path.unlink()
    out = Path(__file__).parent / "out" / f"out_of_core_{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
