#!/usr/bin/env python
"""Clustering heads (SCAN, TEMI) against k-means on frozen embeddings, offline.

Sets (``--sets``):

* ``fashion``: Fashion-MNIST test split (Debian package dataset-fashion-mnist), raw pixels
  -> PCA 128 (fitted on the test split itself, no labels) -> L2; k = 10.
* ``packages``: all-MiniLM-L6-v2 embeddings (L2) of Debian package one-line descriptions
  labelled by section (benchmarks/text_corpora.py: 12 topical sections, <= 200 texts each).
* ``manpages``: the same encoder on manual-page NAME lines labelled by section (only 6
  sections have >= 100 pages on a typical Debian install, short of the 8 classes asked).

Methods, each for ``--seeds`` seeds: k-means (n_init=10), SCAN and TEMI heads without and
with self-labeling. The head's neighbours are mined once per set (they do not depend on the
seed) and the time of that is reported apart. Labels only score; nothing is chosen on them.

Run::

    PYTHONPATH=python python benchmarks/heads.py --sets packages fashion --seeds 0 1 2

Output: a Markdown table on stdout and ``<out>/heads.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    import embedcluster  # noqa: F401
except ImportError:  # running from a checkout without PYTHONPATH=python
    sys.path.insert(0, str(REPO / "python"))

import torch  # noqa: E402

from embedcluster import ClusterHead, KMeans, metrics  # noqa: E402
from embedcluster.bench import cpu_info  # noqa: E402
from embedcluster.transfer.heads import mine_neighbors  # noqa: E402


def _l2(Z: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(Z / np.linalg.norm(Z, axis=1, keepdims=True), np.float32)


def fashion_set() -> Tuple[np.ndarray, np.ndarray, int]:
    """Fashion-MNIST test split, raw pixels -> PCA 128 -> L2."""
    from sklearn.decomposition import PCA

    from embedcluster.data import as_feature_matrix, load_fashion_mnist

    ds = load_fashion_mnist("test")
    X = as_feature_matrix(ds).astype(np.float32)
    Z = PCA(128, random_state=0).fit_transform(X).astype(np.float32)
    return _l2(Z), np.asarray(ds.y), 10


def text_set(name: str) -> Tuple[np.ndarray, np.ndarray, int]:
    """MiniLM embeddings (L2) of one of the text corpora."""
    import text_corpora

    from embedcluster.encoders import load_encoder

    texts, y, classes = text_corpora.debian_packages() if name == "packages" else text_corpora.man_pages()
    enc = load_encoder("all-MiniLM-L6-v2")
    start = time.perf_counter()
    Z = enc.encode(texts, batch_size=128, normalize=True, progress=False)
    print(f"{name}: embedded {len(texts)} texts in {time.perf_counter() - start:.1f} s")
    return _l2(Z), y, len(classes)


def _score(y: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
    return {"acc": float(metrics.cluster_accuracy(y, labels)),
            "nmi": float(metrics.nmi(y, labels))}


def run_set(name: str, Z: np.ndarray, y: np.ndarray, k: int, seeds: List[int], args: Any) -> List[Dict[str, Any]]:
    rows: List[Dict[str, Any]] = []
    start = time.perf_counter()
    mine_neighbors(Z, args.n_neighbors, None)
    knn_s = time.perf_counter() - start
    print(f"{name}: {len(Z)} x {Z.shape[1]}, k={k}; exact cosine {args.n_neighbors}-NN in {knn_s:.1f} s")
    configs: List[Tuple[str, Dict[str, Any]]] = [("kmeans", {})]
    for method in args.methods:
        configs += [(f"{method}", {"method": method, "self_label": False}),
                    (f"{method}+self-label", {"method": method, "self_label": True})]
    for label, kw in configs:
        for seed in seeds:
            t0 = time.perf_counter()
            if label == "kmeans":
                pred = KMeans(k, n_init=10, random_state=seed).fit(Z).labels_
                extra: Dict[str, Any] = {}
            else:
                head = ClusterHead(k, n_neighbors=args.n_neighbors, epochs=args.epochs, hidden=args.hidden,
                                   random_state=seed, **kw).fit(Z)
                pred = head.labels_
                extra = {"n_confident": head.n_confident_}
            row = {"set": name, "method": label, "seed": seed, "time_s": time.perf_counter() - t0,
                   **_score(y, pred), **extra}
            rows.append(row)
            print(json.dumps(row))
    return rows


def _table(rows: List[Dict[str, Any]]) -> str:
    out = ["| set | method | ACC (mean of seeds) | NMI | s / seed | confident |", "|---|---|---|---|---|---|"]
    keys: List[Tuple[str, str]] = []
    for r in rows:
        if (r["set"], r["method"]) not in keys:
            keys.append((r["set"], r["method"]))
    for s, m in keys:
        rs = [r for r in rows if r["set"] == s and r["method"] == m]
        conf = [r["n_confident"] for r in rs if "n_confident" in r]
        out.append(f"| {s} | {m} | {np.mean([r['acc'] for r in rs]):.3f} "
                   f"(+-{np.std([r['acc'] for r in rs]):.3f}) | {np.mean([r['nmi'] for r in rs]):.3f} | "
                   f"{np.mean([r['time_s'] for r in rs]):.1f} | {int(np.mean(conf)) if conf else ''} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=["packages", "fashion"], choices=["packages", "manpages", "fashion"])
    ap.add_argument("--methods", nargs="+", default=["scan", "temi"], choices=["scan", "temi"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--n-neighbors", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=None, help="hidden width (default: the head's, per method)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench_out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows: List[Dict[str, Any]] = []
    for name in args.sets:
        Z, y, k = fashion_set() if name == "fashion" else text_set(name)
        rows += run_set(name, Z, y, k, args.seeds, args)
    table = _table(rows)
    print(f"\nCPU: {cpu_info()['model']}, torch threads {args.threads}\n")
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "heads.json").write_text(json.dumps({"cpu": cpu_info()["model"], "args": vars(args), "rows": rows},
                                               indent=2))


if __name__ == "__main__":
    main()
