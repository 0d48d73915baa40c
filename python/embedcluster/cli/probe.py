"""`embedcluster probe`: a linear probe trained on cluster pseudo-labels."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict

from ._common import (POSITIVE, add_quiet, check_output_dir, check_same_length, emit, int_at_least,
                      load_cluster_labels, load_npy, metric_line, read_truth, real_in, require, set_command)


def _cmd_probe(args: argparse.Namespace) -> int:
    check_output_dir(args.out, "--out")
    require(["torch"], "training a probe")
    import numpy as np

    from .. import metrics
    from .._io import save_json, save_safetensors
    from ..transfer.probe import self_label

    Z = np.ascontiguousarray(load_npy(args.embeddings, "embeddings"), np.float32)
    labels = load_cluster_labels(args.labels).astype(np.int64)
    check_same_length(labels, Z, args.labels, args.embeddings)
    truth = read_truth(args.truth)[0] if args.truth else None
    if truth is not None:
        check_same_length(truth, Z, args.truth, args.embeddings)
    if labels.min() < -1:
        raise ValueError(f"{args.labels} holds label {labels.min()}; cluster labels are >= 0, and -1 marks noise")
    ids, inverse = np.unique(labels, return_inverse=True)  # by distinct value, never by the largest
    if ids[0] == -1:
        ids, inverse = ids[1:], inverse - 1
    if len(ids) == 0:
        raise ValueError(f"{args.labels} holds only noise (-1); there is no cluster to train a probe on")
    lab = np.where(labels >= 0, inverse, -1)
    centers = np.stack([Z[lab == i].mean(0) for i in range(len(ids))])
    probe, _ = self_label(Z, lab, centers, n_rounds=args.rounds, fraction=args.fraction, weighting=args.weighting,
                          epochs=args.epochs, seed=args.seed)
    arrays, cfg = probe.to_arrays()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(out / "probe.safetensors", arrays, {"format": "embedcluster-probe"})
    save_json(out / "probe.json", {**cfg, "cluster_ids": ids.tolist()})
    pred = ids[probe.predict(Z)]
    res: Dict[str, Any] = {"out": str(out), "agreement_with_clusters": float((pred == labels).mean())}
    lines = [f"probe trained on {len(Z)} points ({len(ids)} clusters) -> {out}",
             f"agrees with the clusters on {res['agreement_with_clusters']:.3f} of the points"]
    if truth is not None:
        y = truth
        res["clusters"] = metrics.clustering_report(y, labels)
        res["probe"] = metrics.clustering_report(y, pred)
        lines += [metric_line("clusters", res["clusters"]), metric_line("probe", res["probe"])]
    return emit(args, res, lines)


def add_parser(sub: Any) -> None:
    """The sub-command probe."""
    pp = sub.add_parser("probe", help="train a linear probe on cluster pseudo-labels",
                        description="Train a linear probe on EMBEDDINGS with the cluster LABELS as pseudo-labels "
                                    "(points weighted by their distance margin, optional self-labeling rounds) and "
                                    "save it (safetensors + JSON).")
    pp.add_argument("embeddings", help="embeddings (.npy)")
    pp.add_argument("--labels", required=True, help="cluster labels (.npy, or the labels.csv that run and cluster "
                    "write); -1 (noise) is not trained on")
    pp.add_argument("--out", required=True, help="output folder for probe.safetensors + probe.json")
    pp.add_argument("--truth", metavar="FILE", help="true labels to score clusters and probe: a text file with one "
                    "label per line, a .npy array, TABLE.csv:COLUMN, or a data set with labels")
    pp.add_argument("--rounds", type=POSITIVE, default=1, help="self-labeling rounds (default 1)")
    pp.add_argument("--fraction", type=real_in(0.0, 1.0), default=0.5, help="confident share per cluster (default 0.5)")
    pp.add_argument("--weighting", choices=["margin", "select"], default="margin",
                    help="margin: every point weighted by confidence (default); select: confident points only")
    pp.add_argument("--epochs", type=POSITIVE, default=100, help="probe training epochs (default 100)")
    pp.add_argument("--seed", type=int_at_least(0), default=0, help="random seed (default 0)")
    add_quiet(pp)
    set_command(pp, _cmd_probe, "print the result as JSON")

