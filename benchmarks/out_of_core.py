#!/usr/bin/env python3
"""k-means on a .npy file larger than the machine's RAM: peak private memory and time per pass
against one sequential read of the file, measured in the same run.

    python benchmarks/out_of_core.py                  # a file 1.1x the RAM, 128 columns, k=100
    python benchmarks/out_of_core.py --rows 2000000   # a small smoke run

The file is generated in a scratch folder (default benchmarks/out/ooc, or --dir) and deleted
afterwards unless --keep. It needs that much free disk. KMeans reads the file through a memory
map, so its pages belong to the page cache, not to the process: "private" memory here is the
process's anonymous resident memory (RssAnon), sampled every 0.1 s; its peak is what the fit
itself holds (per-row state, tiles), whatever the file size.
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


def generate(path: Path, n: int, d: int, seed: int, centres: int = 200) -> None:
    rng = np.random.default_rng(seed)
    means = (rng.normal(size=(centres, d)) * 3).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    step = max(1, (256 << 20) // (4 * d))
    for a in range(0, n, step):
        b = min(n, a + step)
        block = rng.standard_normal((b - a, d), dtype=np.float32)
        block += means[rng.integers(0, centres, b - a)]
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=0, help="rows (default: a file 1.1x the RAM)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--dir", default=str(Path(__file__).parent / "out" / "ooc"))
    ap.add_argument("--keep", action="store_true", help="keep the generated file")
    args = ap.parse_args()
    from embedcluster import KMeans

    d = args.dim
    n = args.rows or int(1.1 * ram_bytes() / (4 * d))
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"x_{n}x{d}.npy"
    info = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": n, "dim": d, "k": args.k,
            "file_gib": n * d * 4 / 2**30, "ram_gib": ram_bytes() / 2**30,
            "cpu": subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | cut -d: -f2"], capture_output=True,
                                  text=True).stdout.strip() or platform.processor()}
    print(f"{n:,} x {d} float32 = {info['file_gib']:.1f} GiB on a machine with {info['ram_gib']:.1f} GiB RAM",
          flush=True)
    try:
        t = time.perf_counter()
        generate(path, n, d, seed=0)
        info["generate_s"] = time.perf_counter() - t
        info["sequential_read_s"] = sequential_read(path)
        print(f"generated in {info['generate_s']:.0f} s; one sequential read {info['sequential_read_s']:.1f} s",
              flush=True)
        X = np.load(path, mmap_mode="r")
        rng = np.random.default_rng(1)
        init = np.ascontiguousarray(X[np.sort(rng.choice(n, args.k, replace=False))], dtype=np.float32)
        drop_page_cache(path)
        with PeakSampler() as mem:
            t = time.perf_counter()
            km = KMeans(args.k, init=init, max_iter=args.iters, tol=0.0).fit(X)
            info["kmeans_s"] = time.perf_counter() - t
        # Passes over the file: the norms and checks, one per Lloyd iteration, the final
        # assignment, and the objective's maxima and sum.
        passes = 1 + km.n_iter_ + 1 + 2
        info.update(n_iter=km.n_iter_, passes=passes, seconds_per_pass=info["kmeans_s"] / passes,
                    pass_vs_read=info["kmeans_s"] / passes / info["sequential_read_s"],
                    peak_private_gib=(mem.peak - mem.base) / 2**30,
                    private_bar_gib=(2 * 2**30 + 64 * n) / 2**30, inertia=km.inertia_)
        print(f"k-means {args.iters} iterations: {info['kmeans_s']:.1f} s, {passes} passes, "
              f"{info['seconds_per_pass']:.1f} s per pass = {info['pass_vs_read']:.2f}x one sequential read; "
              f"peak private memory {info['peak_private_gib']:.2f} GiB "
              f"(bar: 2 GiB + 64 B/row = {info['private_bar_gib']:.2f} GiB)", flush=True)
    finally:
        if not args.keep and path.exists():
            path.unlink()
    out = Path(__file__).parent / "out" / f"out_of_core_{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(info, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
