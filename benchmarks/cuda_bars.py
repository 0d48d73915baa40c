#!/usr/bin/env python
"""The CUDA engine's bars (issue 17) on one GPU, side by side with plain PyTorch on the same GPU,
and identity with the CPU engine.

Data: 1M x 128 float32, 1,000 Gaussian clusters (centres N(0, 1), spread 0.25) plus 5% noise
(isolated N(0, 1) points), generated from a seed. Cases:

* k-means, k=1,000, 20 iterations from the same initial centres: embedcluster.cuda.kmeans vs a
  PyTorch loop (matmul + argmin + index_add_), and the CPU engine's labels from the same init;
* exact 10-NN self-join: embedcluster.cuda.kneighbors vs PyTorch in query blocks (matmul +
  topk), and the CPU engine on a sample of queries;
* DBSCAN (eps chosen for the clusters, min_samples=10): the GPU time, and the CPU engine's labels.

The CPU references run in background processes while the GPU is timed. Times are medians of
``--repeats`` runs after a warm-up; TFLOP/s count 2 n m d per product (DBSCAN: two passes).

    python benchmarks/cuda_bars.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

try:
    import embedcluster  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

from embedcluster import _core, cuda  # noqa: E402

TF32_PEAK_H100_SXM = 494.7e12  # dense TF32 tensor-core rate, NVIDIA H100/H200 SXM datasheet
FP32_PEAK_H100_SXM = 66.9e12


def make_data(n: int, d: int, k: int, seed: int, spread: float = 0.25, noise: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)).astype(np.float32)
    X = centres[rng.integers(0, k, n)] + spread * rng.normal(size=(n, d)).astype(np.float32)
    m = int(noise * n)  # noise: isolated points drawn like the centres (same norms, far from every cluster)
    X[rng.choice(n, m, replace=False)] = rng.normal(size=(m, d)).astype(np.float32)
    return np.ascontiguousarray(X, dtype=np.float32)


def cpu_reference(kind: str, path: str, args: dict, out: str, threads: int) -> None:
    """Runs one CPU-engine reference in a child process and saves its labels."""
    X = np.load(path, mmap_mode="r")
    X = np.ascontiguousarray(X)
    t = time.perf_counter()
    if kind == "kmeans":
        init = np.load(args["init"])
        r = _core.kmeans_fit(X, init.shape[0], max_iter=args["iters"], tol=0.0, init=init, n_threads=threads)
        np.save(out, r.labels)
    elif kind == "dbscan":
        X = np.ascontiguousarray(X[: args["rows"]])
        r = _core.dbscan_fit(X, args["eps"], args["min_samples"], "l2", n_threads=threads)
        np.save(out, r.labels)
    elif kind == "knn":
        q = np.load(args["rows"])
        dist, idx = _core.knn_search(X, np.ascontiguousarray(X[q]), args["k"] + 1, "l2", n_threads=threads)
        np.save(out, idx)
    with open(out + ".time", "w") as f:
        f.write(str(time.perf_counter() - t))


def timed(fn, repeats: int, sync, warmup: bool = True) -> tuple:
    if warmup:
        fn()
        sync()
    times, result = [], None
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), result


def torch_kmeans(X, C0, iters: int):
    import torch

    C = C0.clone()
    k = C.shape[0]
    for _ in range(iters):
        d = (C * C).sum(1)[None, :] - 2.0 * (X @ C.T)
        lab = d.argmin(1)
        S = torch.zeros_like(C).index_add_(0, lab, X)
        cnt = torch.bincount(lab, minlength=k).to(X.dtype)
        C = torch.where(cnt[:, None] > 0, S / cnt.clamp(min=1)[:, None], C)
    return lab


def torch_knn(X, k: int, block: int = 2048):
    import torch

    n = X.shape[0]
    x2 = (X * X).sum(1)
    out = torch.empty((n, k), dtype=torch.int64, device=X.device)
    for a in range(0, n, block):
        b = min(n, a + block)
        d = x2[a:b, None] + x2[None, :] - 2.0 * (X[a:b] @ X.T)
        d[torch.arange(b - a, device=X.device), torch.arange(a, b, device=X.device)] = float("inf")
        out[a:b] = torch.topk(d, k, dim=1, largest=False).indices
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--eps", type=float, default=4.6)
    ap.add_argument("--min-samples", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--knn-check", type=int, default=2000, help="queries checked against the CPU engine")
    ap.add_argument("--dbscan-check", type=int, default=200_000,
                    help="DBSCAN identity with the CPU engine on the first rows (the 1M CPU fit takes too long)")
    ap.add_argument("--cases", nargs="+", default=["kmeans", "knn", "dbscan"])
    ap.add_argument("--cpu-threads", type=int, default=max(1, (os.cpu_count() or 2) // 3))
    ap.add_argument("--scratch", default="/tmp/cuda_bars")
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU engine's identity references")
    a = ap.parse_args()
    ok, why = cuda.available()
    if not ok:
        print(f"cuda_bars: the CUDA engine cannot run here ({why})")
        return 2
    import torch

    from embedcluster import _cuda

    dev = torch.device("cuda")
    sync = torch.cuda.synchronize
    os.makedirs(a.scratch, exist_ok=True)
    X = make_data(a.n, a.d, a.k, 0)
    xpath = os.path.join(a.scratch, "X.npy")
    np.save(xpath, X)
    init = X[np.random.default_rng(1).choice(a.n, a.k, replace=False)].copy()
    np.save(os.path.join(a.scratch, "init.npy"), init)
    qrows = np.random.default_rng(2).choice(a.n, a.knn_check, replace=False)
    np.save(os.path.join(a.scratch, "q.npy"), qrows)
    ctx = mp.get_context("spawn")
    refs = {}
    ref_args = {
        "kmeans": {"init": os.path.join(a.scratch, "init.npy"), "iters": a.iters},
        "dbscan": {"eps": a.eps, "min_samples": a.min_samples, "rows": a.dbscan_check},
        "knn": {"rows": os.path.join(a.scratch, "q.npy"), "k": 10},
    }
    for name in ("kmeans", "dbscan", "knn"):
        if name in a.cases and not a.no_cpu:
            out = os.path.join(a.scratch, f"{name}.npy")
            refs[name] = ctx.Process(target=cpu_reference, args=(name, xpath, ref_args[name], out, a.cpu_threads))
    for p in refs.values():
        p.start()

    Xd = torch.from_numpy(X).to(dev)
    rows = []
    info = {"gpu": _cuda.device_summary(), "torch": torch.__version__, "n": a.n, "d": a.d}
    print("GPU:", info["gpu"], flush=True)
    gpu_labels = {}
    if "kmeans" in a.cases:
        C0 = torch.from_numpy(init).to(dev)
        t_gpu, fit = timed(lambda: cuda.kmeans(Xd, a.k, init, max_iter=a.iters, tol=0.0), a.repeats, sync)
        t_torch, _ = timed(lambda: torch_kmeans(Xd, C0, a.iters), a.repeats, sync)
        flops = 2.0 * a.n * a.k * a.d * (fit.n_iter + 1)
        gpu_labels["kmeans"] = fit.labels.cpu().numpy() if hasattr(fit.labels, "cpu") else np.asarray(fit.labels)
        rows.append({"case": f"k-means {a.n}x{a.d} k={a.k} {a.iters} it", "gpu_s": t_gpu, "torch_s": t_torch,
                     "ratio": t_torch / t_gpu, "tflops": flops / t_gpu / 1e12, "n_iter": fit.n_iter})
        print(rows[-1], flush=True)
    if "knn" in a.cases:
        # Seconds-long calls: one timed run each, after the k-means case warmed the device up.
        t_gpu, (dist, idx) = timed(lambda: cuda.kneighbors(Xd, None, 10), 1, sync, warmup=False)
        t_torch, tidx = timed(lambda: torch_knn(Xd, 10), 1, sync, warmup=False)
        gpu_labels["knn"] = idx.cpu().numpy()
        same_as_torch = float((np.sort(tidx.cpu().numpy(), 1) == np.sort(gpu_labels["knn"], 1)).all(1).mean())
        rows.append({"case": f"10-NN self-join {a.n}x{a.d}", "gpu_s": t_gpu, "torch_s": t_torch,
                     "ratio": t_torch / t_gpu, "tflops": 2.0 * a.n * a.n * a.d / t_gpu / 1e12,
                     "rows_same_set_as_torch": same_as_torch})
        print(rows[-1], flush=True)
    if "dbscan" in a.cases:
        t_gpu, res = timed(lambda: cuda.dbscan(Xd, a.eps, a.min_samples), 1, sync, warmup=False)
        gpu_labels["dbscan"] = res[0].cpu().numpy() if hasattr(res[0], "cpu") else np.asarray(res[0])
        sub = cuda.dbscan(Xd[: a.dbscan_check].contiguous(), a.eps, a.min_samples)[0]
        gpu_labels["dbscan_check"] = sub.cpu().numpy() if hasattr(sub, "cpu") else np.asarray(sub)
        rows.append({"case": f"DBSCAN {a.n}x{a.d} eps={a.eps} min_samples={a.min_samples}", "gpu_s": t_gpu,
                     "tflops": 4.0 * a.n * a.n * a.d / t_gpu / 1e12, "n_clusters": res[3],
                     "noise": int((gpu_labels['dbscan'] < 0).sum())})
        print(rows[-1], flush=True)
    # Identity with the CPU engine (its processes ran meanwhile).
    for name, p in refs.items():
        p.join(timeout=max(1.0, float(os.environ.get("CUDA_BARS_CPU_WAIT", "240"))))
        ref_path = os.path.join(a.scratch, f"{name}.npy")
        prefix = {"kmeans": "k-means", "knn": "10-nn", "dbscan": "dbscan"}[name]
        row = next(r for r in rows if r["case"].lower().startswith(prefix))
        if p.is_alive() or not os.path.exists(ref_path):
            p.terminate()
            state = "still running" if p.is_alive() else f"exited {p.exitcode}"
            row["identical_to_cpu"] = f"not compared (CPU reference {state})"
            continue
        ref = np.load(ref_path)
        row["cpu_s"] = float(open(ref_path + ".time").read())
        if name == "knn":
            got = gpu_labels["knn"][qrows]
            row["identical_to_cpu"] = bool(np.array_equal(got, ref[:, 1:]) and np.array_equal(ref[:, 0], qrows))
        elif name == "dbscan":
            same = bool(np.array_equal(gpu_labels["dbscan_check"], ref))
            row["identical_to_cpu"] = f"first {a.dbscan_check} rows: {same}"
        else:
            row["identical_to_cpu"] = bool(np.array_equal(gpu_labels[name], ref))
    print("\n| case | GPU s | PyTorch s | PyTorch / GPU | TFLOP/s (% of TF32 peak) | identical to CPU engine |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        torch_s = f"{r['torch_s']:.3f}" if "torch_s" in r else "-"
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
        print(f"| {r['case']} | {r['gpu_s']:.3f} | {torch_s} | {ratio} | {r['tflops']:.1f} "
              f"({100 * r['tflops'] * 1e12 / TF32_PEAK_H100_SXM:.0f}%) | {r.get('identical_to_cpu')} |")
    if a.out:
        Path(a.out).write_text(json.dumps({"info": info, "rows": rows}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
