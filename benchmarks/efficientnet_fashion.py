#!/usr/bin/env python
"""ImageNet EfficientNet-Lite features on Fashion-MNIST: speed and k-means quality per image size,
pooled head vs concatenated layer taps, with and without inverted images.

For every (image size, invert) pair: the images are embedded once with the taps
``--taps`` (each pooled, L2-normalised, concatenated; the last part is the pooled head), timed
on ``--threads`` threads, then k-means (k=10, embedcluster.KMeans, ``--seeds`` seeds) runs on
(a) the pooled head alone, L2-normalised, and (b) the whole concatenation. Labels only score
(Hungarian ACC, NMI): nothing is chosen on them here.

Needs ``pip install 'embedcluster[pretrained]'`` and Debian's ``dataset-fashion-mnist``::

    python benchmarks/efficientnet_fashion.py --n 2000 --sizes 32 48 64 96
    python benchmarks/efficientnet_fashion.py --n 10000 --sizes 64 --invert both
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

try:
    import embedcluster  # noqa: F401  (the installed copy, with its native engine)
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

import torch  # noqa: E402

from embedcluster import KMeans  # noqa: E402
from embedcluster.bench import cpu_info  # noqa: E402
from embedcluster.data import load_fashion_mnist  # noqa: E402
from embedcluster.encoders import load_encoder  # noqa: E402
from embedcluster.metrics import cluster_accuracy, nmi  # noqa: E402


def scores(Z: np.ndarray, y: np.ndarray, seeds: int) -> dict:
    acc, mi = [], []
    for seed in range(seeds):
        labels = KMeans(10, n_init=1, random_state=seed).fit_predict(Z)
        acc.append(cluster_accuracy(y, labels))
        mi.append(nmi(y, labels))
    return {"acc": float(np.mean(acc)), "nmi": float(np.mean(mi))}


def run_one(X, y, model, size, invert, taps, batch_size, seeds) -> dict:
    enc = load_encoder(model, device="cpu", image_size=size, invert=invert, embedding_layer=taps)
    enc.encode(X[:batch_size], batch_size=batch_size, progress=False)  # warm-up
    t0 = time.perf_counter()
    Z = enc.encode(X, batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - t0
    head = Z[:, -1280:] / np.linalg.norm(Z[:, -1280:], axis=1, keepdims=True)
    row = {"model": model, "size": size, "invert": invert, "n": len(X), "embed_s": seconds,
           "images_per_s": len(X) / seconds, "head": scores(head, y, seeds),
           "taps": scores(Z, y, seeds), "taps_names": list(taps)}
    print(f"{model} {size:>3} px invert={invert!s:5}: {row['images_per_s']:6.1f} img/s | head ACC "
          f"{row['head']['acc']:.3f} NMI {row['head']['nmi']:.3f} | taps ACC "
          f"{row['taps']['acc']:.3f} NMI {row['taps']['nmi']:.3f}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--n", type=int, default=2000, help="images of the test split (a seeded subset)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 48, 64, 96])
    ap.add_argument("--invert", choices=["yes", "no", "both"], default="both")
    ap.add_argument("--taps", nargs="+", default=["block10", "block14", "block15", "head"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the rows")
    args = ap.parse_args()
    if args.taps[-1] != "head":
        ap.error("--taps must end with 'head' (the head is scored on its own too)")
    torch.set_num_threads(args.threads)
    ds = load_fashion_mnist("test")
    idx = np.arange(len(ds.X)) if args.n >= len(ds.X) else \
        np.sort(np.random.default_rng(0).choice(len(ds.X), args.n, replace=False))
    X, y = ds.X[idx], ds.y[idx]
    cpu = cpu_info()
    print(f"CPU: {cpu.get('model')}; torch threads {args.threads}; batch {args.batch_size}; "
          f"n={len(X)}; k-means seeds {args.seeds}", flush=True)
    inverts = {"yes": [True], "no": [False], "both": [False, True]}[args.invert]
    rows = [run_one(X, y, args.model, size, inv, tuple(args.taps), args.batch_size, args.seeds)
            for size in args.sizes for inv in inverts]
    if args.out:
        args.out.write_text(json.dumps({"cpu": cpu, "torch": torch.__version__, "rows": rows},
                                       indent=1, default=str))


if __name__ == "__main__":
    main()
