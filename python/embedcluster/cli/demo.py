"""`embedcluster demo`: the transfer story on scikit-learn's digits, with a report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, cast

from ._common import check_output_dir, int_at_least, require, set_command


def _cmd_demo(args: argparse.Namespace) -> int:
    """The transfer story on scikit-learn's digits (shipped with scikit-learn, no download)."""
    check_output_dir(args.out, "--out")
    require(["torch", "matplotlib"], "the demo")
    import time

    import numpy as np

    from .. import metrics
    from ..data import Dataset, load_digits_dataset
    from ..encoders import save_checkpoint
    from ..transfer.pipeline import TransferClustering
    from ..transfer.pretrain import pretrain_supervised
    from ..transfer.report import write_report

    t0 = time.perf_counter()
    digits = load_digits_dataset()
    # 8x8 images with values 0..16 -> uint8 0..255, the scale every encoder here expects.
    img = np.rint(np.asarray(digits.X, np.float32) * (255.0 / 16.0)).astype(np.uint8)
    ds = Dataset(X=img, y=digits.y, kind="images", class_names=digits.class_names, source="digits")
    source, target = ds.select_classes([0, 1, 2, 3, 4]), ds.select_classes([5, 6, 7, 8, 9])
    assert source.y is not None and target.y is not None, "digits come with their labels"
    target_y = target.y
    out = Path(args.out)
    rows: List[Dict[str, Any]] = []

    def score(name: str, labels, seconds: float) -> Dict[str, Any]:
        rep = metrics.clustering_report(target_y, labels)
        row = {"method": name, "accuracy": rep["accuracy"], "nmi": rep["nmi"], "ari": rep["ari"], "seconds": seconds}
        rows.append(row)
        return row

    t = time.perf_counter()
    raw = TransferClustering(n_clusters=5, normalize=False, progress=False, seed=args.seed).fit(target)
    score("k-means on raw pixels", raw.labels_, time.perf_counter() - t)
    score("  + linear probe on pseudo-labels", _probe_predictions(raw), 0.0)

    # The source task: an MLP trained with labels on digits 0-4 only.
    t = time.perf_counter()
    config = {"arch": "mlp", "in_shape": [8, 8], "hidden": [256, 128], "embed_dim": 64}
    enc, _ = pretrain_supervised(source.X, source.y, config, epochs=30, seed=args.seed, progress=False)
    ckpt = save_checkpoint(enc, out / "encoder", cast(Dict[str, Any], enc.config), embedding_layer="concat")
    pre_s = time.perf_counter() - t
    t = time.perf_counter()
    tc = TransferClustering(encoder=str(ckpt), n_clusters=5, progress=False, seed=args.seed).fit(target)
    score("k-means on transferred embeddings (0-4 encoder)", tc.labels_, time.perf_counter() - t)
    score("  + linear probe on pseudo-labels", _probe_predictions(tc), 0.0)
    tc.save(out / "pipeline")
    report = write_report(out / "report", tc.labels_, labels_true=target.y, embeddings=tc.embeddings_,
                          images=target.X, class_names=target.class_names, comparison=rows,
                          title="embedcluster demo: transfer from digits 0-4 to unseen digits 5-9",
                          notes=["An MLP was trained with labels on digits 0-4 (the source task), then used "
                                 "without labels to cluster digits 5-9, which it never saw. The maps and "
                                 "samples below are for the transferred embeddings."])
    result = {"rows": rows, "pretrain_seconds": pre_s, "total_seconds": time.perf_counter() - t0,
              "report": str(report), "pipeline": str(out / "pipeline"), "encoder": str(ckpt)}
    if args.json:
        from .._io import dumps

        print(dumps(result, allow_nan=True))
        return 0
    print("embedcluster demo: scikit-learn digits. Source task: digits 0-4 with labels (an MLP is trained);")
    print("target: digits 5-9, never seen by the encoder, clustered without labels (k=5).")
    print("Labels of 5-9 are used only to score.\n")
    print(f"{'method':50s} {'ACC':>6s} {'NMI':>6s} {'ARI':>6s}")
    for r in rows:
        print(f"{r['method']:50s} {r['accuracy']:6.3f} {r['nmi']:6.3f} {r['ari']:6.3f}")
    raw_best = max(r["accuracy"] for r in rows[:2])
    tr_best = max(r["accuracy"] for r in rows[2:])
    if raw_best >= tr_best:
        print(f"\nRaw pixels win here (ACC {raw_best:.3f} vs {tr_best:.3f}): 8x8 digits are already a good feature")
        print("space, and an encoder trained to separate 0-4 discards part of what separates 5-9. That is why the")
        print("raw baseline is always shown beside the transferred features.")
    else:
        print(f"\nThe transferred features win (ACC {tr_best:.3f} vs {raw_best:.3f} on raw pixels).")
    print(f"\npretraining {pre_s:.1f}s, total {result['total_seconds']:.1f}s")
    print(f"report:   {report}\npipeline: {out / 'pipeline'}  (embedcluster predict {out / 'pipeline'} DATA)")
    return 0


def _probe_predictions(pipeline: Any) -> Any:
    """The labels a fitted pipeline's probe gives its embeddings (the demo fits every pipeline
    with a probe)."""
    assert pipeline.probe_ is not None
    return pipeline.probe_.predict(pipeline.embeddings_)


def add_parser(sub: Any) -> None:
    """The sub-command demo."""
    pd = sub.add_parser("demo", help="the transfer story on scikit-learn's digits, with a report",
                        description="Pretrain an encoder with labels on digits 0-4 (the source task), cluster digits "
                                    "5-9 that it never saw without labels, and compare k-means on raw pixels, on the "
                                    "transferred embeddings, and after a linear probe trained on the pseudo-labels "
                                    "(accuracy after Hungarian matching, NMI, ARI). Writes an HTML report, the "
                                    "encoder checkpoint and the fitted pipeline. No download.")
    pd.add_argument("--out", default="embedcluster-demo", help="output folder (default ./embedcluster-demo)")
    pd.add_argument("--seed", type=int_at_least(0), default=0, help="random seed (default 0)")
    set_command(pd, _cmd_demo, "print the results as JSON")
