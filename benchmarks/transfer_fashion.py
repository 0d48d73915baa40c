#!/usr/bin/env python
"""Transfer clustering on the real Fashion-MNIST, measured with embedcluster's public API.

Two protocols (``--protocol transfer|unsupervised|both``):

1. **transfer**: an encoder is pretrained *with labels* on the TRAIN split restricted to
   classes 0-4 (T-shirt/top, Trouser, Pullover, Dress, Coat: the source task). Then, without
   labels, the TEST split restricted to classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot)
   is clustered with k-means, k=5. Rows: raw pixels; the transferred encoder at the layers
   ``embedding``, ``penultimate`` and ``concat``. For each row: the k-means clusters and the
   linear probe trained on the k-means pseudo-labels (``TransferClustering``'s probe), both
   scored against the true labels (Hungarian ACC, NMI, ARI).
2. **unsupervised**: encoders are pretrained *without labels* on the whole TRAIN split
   (``--methods``: SimCLR-style ``contrastive`` on a CNN and/or ``autoencoder`` on a dense MLP,
   N2D-like 784-500-500-2000-10), then the whole TEST split is clustered with k=10. Raw pixels
   are the reference row.

Every pretraining runs under the same wall-clock budget (``--time-budget`` seconds). Labels of
the clustered split are used only to score; nothing is selected on them by this script (every
option is reported, each row says which it is). Embeddings are clustered twice: L2-normalised
rows (the pipeline's default ``normalize=True``, cosine geometry) and as they are
(``normalize=False``). Note that ``TransferClustering.fit(data, Z=...)`` uses a precomputed
``Z`` as given, so this script L2-normalises ``Z`` itself for the ``normalize=True`` rows.

Run (about 10-15 minutes on 2 cores with the default budget)::

    PYTHONPATH=python python benchmarks/transfer_fashion.py --protocol both --time-budget 180

Output: a Markdown table on stdout and ``<out>/transfer_fashion.json`` (+ ``.md``) with machine
info, date, wall times and all figures.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

REPO = Path(__file__).resolve().parent.parent
try:
    import embedcluster  # noqa: F401
except ImportError:  # running from a checkout without PYTHONPATH=python
    sys.path.insert(0, str(REPO / "python"))

import torch  # noqa: E402

import embedcluster  # noqa: E402
from embedcluster import KMeans, metrics  # noqa: E402
from embedcluster.data import Dataset, as_feature_matrix, load_fashion_mnist  # noqa: E402
from embedcluster.pipeline import TransferClustering  # noqa: E402
from embedcluster.pretrain import encode, pretrain_self_supervised, pretrain_supervised  # noqa: E402

SOURCE_CLASSES = [0, 1, 2, 3, 4]
TARGET_CLASSES = [5, 6, 7, 8, 9]
LAYERS = ["embedding", "penultimate", "concat"]

# The library's default CNN (channels [32, 64], no dense block, embed_dim 128): layers conv0,
# conv1 (global-average-pooled) and embedding; "penultimate" is conv1.
CNN_CONFIG = {"arch": "cnn", "in_shape": [1, 28, 28], "channels": [32, 64], "embed_dim": 128}
# N2D's dense autoencoder shape (784-500-500-2000-10).
AE_CONFIG = {"arch": "mlp", "in_shape": [784], "hidden": [500, 500, 2000], "embed_dim": 10}

T_START = time.perf_counter()
N_SEEDS = 5  # set from --cluster-seeds


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T_START:7.1f}s] {msg}", file=sys.stderr, flush=True)


def l2_normalize(Z: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation, zero rows kept at zero (the pipeline's rule)."""
    n = np.linalg.norm(Z, axis=1, keepdims=True)
    return np.ascontiguousarray(Z / np.where(n > 0, n, 1.0), np.float32)


def short(report: Dict[str, Any]) -> Dict[str, Any]:
    return {k: report[k] for k in ("accuracy", "nmi", "ari", "v_measure", "purity", "n_clusters")}


def cluster_and_score(ds: Dataset, Z: np.ndarray, k: int, seed: int, normalize: bool,
                      n_seeds: int) -> Dict[str, Any]:
    """k-means (alone, timed) and TransferClustering (k-means + probe on pseudo-labels)."""
    Zc = l2_normalize(Z) if normalize else np.ascontiguousarray(Z, np.float32)
    t0 = time.perf_counter()
    km = KMeans(k, n_init=4, random_state=seed).fit(Zc)
    t_km = time.perf_counter() - t0
    t0 = time.perf_counter()
    pipe = TransferClustering(n_clusters=k, normalize=normalize, progress=False, seed=seed).fit(ds, Z=Zc)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    ev = pipe.evaluate(y=ds.y)
    t_eval = time.perf_counter() - t0
    # The pipeline's default clusterer is KMeans(k, n_init=4, random_state=seed): same labels.
    same = bool(np.array_equal(km.labels_, pipe.labels_))
    km_rep = metrics.clustering_report(ds.y, km.labels_)
    # k-means alone from several seeds: the spread, and the run of lowest inertia (a label-free
    # choice, like a larger n_init). Fashion-MNIST has k-means basins far apart in ACC.
    seeds = [seed + i for i in range(n_seeds)]
    runs = []
    t0 = time.perf_counter()
    for s in seeds:
        kms = km if s == seed else KMeans(k, n_init=4, random_state=s).fit(Zc)
        runs.append({"seed": s, "inertia": kms.inertia_,
                     **{m: v for m, v in short(metrics.clustering_report(ds.y, kms.labels_)).items()
                        if m in ("accuracy", "nmi", "ari")}})
    t_seeds = time.perf_counter() - t0
    best = min(runs, key=lambda r: r["inertia"])
    spread = {m: {"mean": float(np.mean([r[m] for r in runs])), "std": float(np.std([r[m] for r in runs])),
                  "min": float(min(r[m] for r in runs)), "max": float(max(r[m] for r in runs))}
              for m in ("accuracy", "nmi", "ari")}
    return {
        "normalize": normalize,
        "kmeans": short(km_rep),
        "kmeans_per_class": km_rep["per_class"],
        "kmeans_inertia": km.inertia_,
        "kmeans_n_iter": km.n_iter_,
        "clusters": short(ev["clusters"]),
        "probe": short(ev["probe"]),
        "probe_per_class": ev["probe"]["per_class"],
        "pipeline_labels_equal_standalone_kmeans": same,
        "kmeans_seed_runs": runs, "kmeans_seed_spread": spread, "kmeans_lowest_inertia_run": best,
        "seconds": {"kmeans": t_km, "pipeline_fit_kmeans_plus_probe": t_fit,
                    "probe_approx": max(t_fit - t_km, 0.0), "evaluate": t_eval,
                    "kmeans_extra_seeds": t_seeds},
    }


def rows_for(name: str, ds: Dataset, Z: np.ndarray, k: int, seed: int, layer: str,
             encode_s: float) -> List[Dict[str, Any]]:
    out = []
    # "concat" rows are unit-norm already (each part L2-normalised, scaled by 1/sqrt(parts)),
    # so normalize=False would repeat normalize=True exactly: run it once.
    for normalize in ((True,) if layer == "concat" else (True, False)):
        r = cluster_and_score(ds, Z, k, seed, normalize, N_SEEDS)
        r.update(representation=name, layer=layer, dim=int(Z.shape[1]), encode_seconds=encode_s)
        log(f"  {name:<28} {layer:<11} d={Z.shape[1]:<4} norm={str(normalize):<5} "
            f"k-means ACC {r['kmeans']['accuracy']:.3f} NMI {r['kmeans']['nmi']:.3f} "
            f"ARI {r['kmeans']['ari']:.3f} | probe ACC {r['probe']['accuracy']:.3f} "
            f"NMI {r['probe']['nmi']:.3f} ARI {r['probe']['ari']:.3f} "
            f"({r['seconds']['pipeline_fit_kmeans_plus_probe']:.1f}s) | {N_SEEDS} seeds ACC "
            f"{r['kmeans_seed_spread']['accuracy']['mean']:.3f}±{r['kmeans_seed_spread']['accuracy']['std']:.3f}"
            f", min-inertia ACC {r['kmeans_lowest_inertia_run']['accuracy']:.3f}")
        if not r["pipeline_labels_equal_standalone_kmeans"]:
            log("  NOTE: pipeline k-means labels differ from standalone KMeans with the same settings")
        out.append(r)
    return out


def encoder_rows(name: str, module: torch.nn.Module, ds: Dataset, k: int, seed: int) -> List[Dict[str, Any]]:
    rows = []
    for layer in LAYERS:
        t0 = time.perf_counter()
        Z = encode(module, ds.X, layer=layer)
        t_enc = time.perf_counter() - t0
        rows += rows_for(name, ds, Z, k, seed, layer, t_enc)
    return rows


def raw_rows(ds: Dataset, k: int, seed: int) -> List[Dict[str, Any]]:
    t0 = time.perf_counter()
    Z = as_feature_matrix(ds)
    return rows_for("raw pixels", ds, Z, k, seed, "-", time.perf_counter() - t0)


def pretrain_summary(history: Dict[str, Any], config: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    out = {"config": config, "epochs_run": history["epochs_run"],
           "stopped_by_time_budget": history["stopped_early"], "seconds": history["seconds"],
           "loss_per_epoch": [float(v) for v in history["loss"]]}
    if "accuracy" in history:
        out["train_accuracy_per_epoch"] = [float(v) for v in history["accuracy"]]
    if "classes" in history:
        out["classes"] = [int(c) for c in history["classes"]]
    out.update(extra)
    return out


# ----------------------------------------------------------------------------- protocols
def protocol_transfer(args, train: Dataset, test: Dataset) -> Dict[str, Any]:
    source = train.select_classes(SOURCE_CLASSES)
    target = test.select_classes(TARGET_CLASSES)
    log(f"transfer: source = train classes {SOURCE_CLASSES} ({len(source)} images); "
        f"target = test classes {TARGET_CLASSES} ({len(target)} images), k=5")
    rows = raw_rows(target, 5, args.seed)
    log(f"transfer: supervised CNN pretraining, budget {args.time_budget:.0f}s")
    t0 = time.perf_counter()
    enc, hist = pretrain_supervised(source.X, source.y, CNN_CONFIG, epochs=args.max_epochs,
                                    time_budget_s=args.time_budget, seed=args.seed,
                                    num_threads=args.threads, progress=False)
    t_pre = time.perf_counter() - t0
    log(f"transfer: pretrained {hist['epochs_run']} epoch(s) in {t_pre:.1f}s, last-epoch train "
        f"accuracy {hist['accuracy'][-1]:.3f}")
    # Source-task check (not used for any choice): the encoder's embeddings on the source
    # classes of the TEST split, k=5, so the reader can see the encoder learned its task.
    src_test = test.select_classes(SOURCE_CLASSES)
    Zs = encode(enc, src_test.X)
    km = KMeans(5, n_init=4, random_state=args.seed).fit(l2_normalize(Zs))
    src_check = short(metrics.clustering_report(src_test.y, km.labels_))
    log(f"transfer: source-task check (test classes 0-4, embedding, L2, k=5) ACC "
        f"{src_check['accuracy']:.3f} NMI {src_check['nmi']:.3f}")
    rows += encoder_rows("CNN supervised on 0-4", enc, target, 5, args.seed)
    return {"source_classes": SOURCE_CLASSES, "target_classes": TARGET_CLASSES,
            "n_source": len(source), "n_target": len(target), "k": 5,
            "pretraining": pretrain_summary(hist, enc.config, wall_seconds=t_pre),
            "source_task_check_embedding_l2_kmeans": src_check, "rows": rows}


def protocol_unsupervised(args, train: Dataset, test: Dataset) -> Dict[str, Any]:
    log(f"unsupervised: pretrain on train ({len(train)} images, no labels); cluster test "
        f"({len(test)} images), k=10")
    rows = raw_rows(test, 10, args.seed)
    pre = {}
    for method in args.methods:
        config = CNN_CONFIG if method == "contrastive" else AE_CONFIG
        arch = "CNN" if config["arch"] == "cnn" else "MLP"
        log(f"unsupervised: {method} {arch} pretraining, budget {args.time_budget:.0f}s")
        t0 = time.perf_counter()
        enc, hist = pretrain_self_supervised(train.X, config, method, epochs=args.max_epochs,
                                             time_budget_s=args.time_budget, seed=args.seed,
                                             num_threads=args.threads, progress=False)
        t_pre = time.perf_counter() - t0
        log(f"unsupervised: {method} ran {hist['epochs_run']} epoch(s) in {t_pre:.1f}s, losses "
            f"{[round(v, 4) for v in hist['loss']]}")
        pre[method] = pretrain_summary(hist, enc.config, wall_seconds=t_pre)
        rows += encoder_rows(f"{arch} {method}", enc, test, 10, args.seed)
    return {"n_train": len(train), "n_test": len(test), "k": 10, "pretraining": pre, "rows": rows,
            "published_reference": {"kmeans_raw_pixels_acc": 0.47, "N2D_acc": 0.672, "N2D_nmi": 0.684}}


# ----------------------------------------------------------------------------- reporting
def table(rows: List[Dict[str, Any]]) -> str:
    head = ("| representation | layer | dim | L2-norm | k-means ACC | NMI | ARI | probe ACC | NMI | ARI "
            f"| ACC {N_SEEDS} seeds mean±sd [min-max] | NMI mean±sd | min-inertia ACC / NMI / ARI "
            "| encode s | k-means s | probe s |")
    lines = [head, "|" + "---|" * 16]
    for r in rows:
        km, pr, s = r["kmeans"], r["probe"], r["seconds"]
        sp, b = r["kmeans_seed_spread"], r["kmeans_lowest_inertia_run"]
        lines.append(
            f"| {r['representation']} | {r['layer']} | {r['dim']} | {'yes' if r['normalize'] else 'no'} "
            f"| {km['accuracy']:.3f} | {km['nmi']:.3f} | {km['ari']:.3f} "
            f"| {pr['accuracy']:.3f} | {pr['nmi']:.3f} | {pr['ari']:.3f} "
            f"| {sp['accuracy']['mean']:.3f}±{sp['accuracy']['std']:.3f} [{sp['accuracy']['min']:.3f}-"
            f"{sp['accuracy']['max']:.3f}] | {sp['nmi']['mean']:.3f}±{sp['nmi']['std']:.3f} "
            f"| {b['accuracy']:.3f} / {b['nmi']:.3f} / {b['ari']:.3f} "
            f"| {r['encode_seconds']:.1f} | {s['kmeans']:.1f} | {s['probe_approx']:.1f} |")
    return "\n".join(lines)


def machine_info(threads: int) -> Dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = None
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu_model": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "threads_requested": threads,
            "loadavg_at_start": os.getloadavg(), "git_commit": commit,
            "embedcluster": embedcluster.build_info()}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--protocol", choices=["transfer", "unsupervised", "both"], default="both")
    ap.add_argument("--time-budget", type=float, default=180.0,
                    help="wall-clock seconds for each pretraining (default 180)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "transfer_fashion"))
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--methods", default="contrastive,autoencoder",
                    help="self-supervised methods for --protocol unsupervised, comma-separated")
    ap.add_argument("--max-epochs", type=int, default=1000,
                    help="epoch cap; the time budget normally stops training first")
    ap.add_argument("--cluster-seeds", type=int, default=5,
                    help="k-means seeds (seed, seed+1, ...) for the spread and min-inertia columns")
    args = ap.parse_args(argv)
    global N_SEEDS
    N_SEEDS = max(1, args.cluster_seeds)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in ("contrastive", "autoencoder")]
    if bad:
        ap.error(f"unknown method(s) {bad}; use contrastive, autoencoder")
    torch.set_num_threads(args.threads)  # encode() and the probe use the global setting
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    result: Dict[str, Any] = {
        "benchmark": "transfer_fashion",
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": vars(args), "machine": machine_info(args.threads),
        "clusterer": "embedcluster.KMeans(k, n_init=4, random_state=seed) (TransferClustering default)",
        "probe": "TransferClustering default: self_label, 1 round, weighting='margin', fraction 0.5, 100 epochs",
    }
    t0 = time.perf_counter()
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    result["seconds_load_data"] = time.perf_counter() - t0
    log(f"loaded Fashion-MNIST train {train.X.shape} test {test.X.shape} in {result['seconds_load_data']:.1f}s")

    md = [f"# Fashion-MNIST transfer clustering ({result['date_utc']})", "",
          f"Machine: {result['machine']['cpu_model']}, {os.cpu_count()} cores, torch threads "
          f"{args.threads}; pretraining budget {args.time_budget:.0f} s each; seed {args.seed}.", ""]
    if args.protocol in ("transfer", "both"):
        t0 = time.perf_counter()
        tr = protocol_transfer(args, train, test)
        tr["wall_seconds"] = time.perf_counter() - t0
        result["transfer"] = tr
        p = tr["pretraining"]
        md += ["## 1. Transfer: CNN trained with labels on train classes 0-4, k-means k=5 on test "
               "classes 5-9", "",
               f"Pretraining: {p['epochs_run']} epoch(s), {p['wall_seconds']:.0f} s, last-epoch train "
               f"accuracy {p['train_accuracy_per_epoch'][-1]:.3f}. Source-task check (test classes "
               f"0-4, embedding, k=5): ACC {tr['source_task_check_embedding_l2_kmeans']['accuracy']:.3f}. "
               f"Protocol wall time {tr['wall_seconds']:.0f} s.", "", table(tr["rows"]), ""]
    if args.protocol in ("unsupervised", "both"):
        t0 = time.perf_counter()
        un = protocol_unsupervised(args, train, test)
        un["wall_seconds"] = time.perf_counter() - t0
        result["unsupervised"] = un
        pre = "; ".join(f"{m}: {p['epochs_run']} epoch(s), {p['wall_seconds']:.0f} s, last loss "
                        f"{p['loss_per_epoch'][-1]:.4f}" for m, p in un["pretraining"].items())
        md += ["## 2. Fully unsupervised: self-supervised on train (no labels), k-means k=10 on test", "",
               f"Pretraining: {pre}. Protocol wall time {un['wall_seconds']:.0f} s. Published: "
               "k-means on raw pixels ≈ 0.47 ACC; N2D 0.672 ACC / 0.684 NMI.", "", table(un["rows"]), ""]
    result["wall_seconds_total"] = time.perf_counter() - T_START
    result["machine"]["loadavg_at_end"] = os.getloadavg()
    md += [f"Total wall time {result['wall_seconds_total']:.0f} s. 'k-means' = KMeans(k, n_init=4, "
           f"random_state={args.seed}), the pipeline's clusterer. 'probe' = the pipeline's linear probe "
           "trained on those k-means pseudo-labels (margin-weighted), scored on the same points. "
           f"'{N_SEEDS} seeds' = the same k-means from seeds {args.seed}..{args.seed + N_SEEDS - 1}; "
           "'min-inertia' = the one of those runs with the lowest k-means inertia (chosen without "
           "labels). 'probe s' = pipeline fit time minus the standalone k-means time. concat rows "
           "are unit-norm already, so they are run with L2-norm only.", ""]
    text = "\n".join(md)
    print(text)
    (out_dir / "transfer_fashion.md").write_text(text)
    with open(out_dir / "transfer_fashion.json", "w") as f:
        json.dump(result, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    log(f"wrote {out_dir / 'transfer_fashion.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
