"""Command line of embedcluster: demo, embed, cluster, evaluate, probe, run, predict, info."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import build_info

    info = build_info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    b = info["build"]
    print(f"embedcluster {info['version']}  (Python {info['python']}, {info['platform']})")
    if info["native"]:
        print(f"  native engine : {b.get('compiler', '?')}; flags: {b.get('build_flags', '?')}")
        print(f"  OpenMP        : {'yes (' + str(b.get('openmp_version')) + ')' if b.get('openmp') else 'no'}; "
              f"threads: {b.get('max_threads')} of {info['cpu_count']} CPUs")
        print(f"  CPU features  : {', '.join(b.get('cpu_features', [])) or 'none detected'}")
        print(f"  kernels       : {b.get('kernels_active')} (available: {', '.join(b.get('kernels_available', []))})")
        print(f"  -march=native : {'yes' if b.get('march_native') else 'no (portable build, run-time dispatch)'}")
        print(f"  CUDA          : {'compiled' if b.get('cuda_compiled') else 'not compiled'}")
    else:
        print(f"  native engine : NOT AVAILABLE ({info['native_error']})")
    print(f"  backends      : {', '.join(info['backends']) or 'none'}")
    for k, v in sorted(info["environment"].items()):
        print(f"  env {k}={v}")
    return 0


def _emit(args: argparse.Namespace, result: Dict[str, Any], lines: List[str]) -> int:
    """Prints the result as JSON (--json) or as human lines."""
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, default=_json_default))
    else:
        for line in lines:
            print(line)
    return 0


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _load_npy(path: str, what: str):
    import numpy as np

    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    return np.load(path, allow_pickle=False)


def _save_npy(path: str, arr) -> None:
    import io

    import numpy as np

    from ._io import atomic_write_bytes

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def _metric_line(name: str, rep: Dict[str, Any]) -> str:
    return f"{name:44s} ACC {rep['accuracy']:.3f}  NMI {rep['nmi']:.3f}  ARI {rep['ari']:.3f}"


def _cmd_embed(args: argparse.Namespace) -> int:
    from .data import load
    from .pipeline import TransferClustering

    ds = load(args.data)
    tc = TransferClustering(encoder=args.encoder, normalize=args.normalize, batch_size=args.batch_size,
                            cache_dir=args.cache_dir, progress=not args.no_progress)
    Z = tc.embed(ds)
    _save_npy(args.out, Z)
    if ds.y is not None and args.labels_out:
        _save_npy(args.labels_out, ds.y)
    return _emit(args, {"out": args.out, "shape": list(Z.shape), "source": ds.source},
                 [f"embedded {len(Z)} items from {ds.source} -> {args.out} {tuple(Z.shape)}"])


def _cmd_cluster(args: argparse.Namespace) -> int:
    from .cluster import DBSCAN, KMeans

    Z = _load_npy(args.embeddings, "embeddings")
    if args.algorithm == "kmeans":
        est = KMeans(args.n_clusters, n_init=args.n_init, metric=args.metric, random_state=args.seed)
    else:
        est = DBSCAN(eps=args.eps, min_samples=args.min_samples,
                     metric="euclidean" if args.metric == "l2" else args.metric)
    labels = est.fit(Z).labels_
    _save_npy(args.out, labels)
    res = {"out": args.out, "n_points": int(len(labels)), "n_clusters": int(len(set(labels.tolist()) - {-1})),
           "n_noise": int((labels == -1).sum())}
    if args.algorithm == "kmeans":
        res["inertia"] = est.inertia_
        res["n_iter"] = est.n_iter_
    return _emit(args, res, [f"{res['n_clusters']} clusters, {res['n_noise']} noise points -> {args.out}"])


def _truth(spec: str):
    if spec.endswith(".npy"):
        return _load_npy(spec, "labels")
    from .data import load

    y = load(spec).y
    if y is None:
        raise ValueError(f"{spec} has no labels to evaluate against")
    return y


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from . import metrics

    pred = _load_npy(args.labels, "labels")
    rep = metrics.clustering_report(_truth(args.truth), pred)
    lines = [_metric_line("clusters", rep), f"  purity {rep['purity']:.3f}  V-measure {rep['v_measure']:.3f}"]
    return _emit(args, rep, lines)


def _cmd_probe(args: argparse.Namespace) -> int:
    import numpy as np

    from . import metrics
    from ._io import save_json, save_safetensors
    from .cluster import KMeans
    from .probe import self_label

    Z = _load_npy(args.embeddings, "embeddings").astype(np.float32)
    labels = _load_npy(args.labels, "labels").astype(np.int64)
    ids = np.unique(labels[labels >= 0])
    centers = np.stack([Z[labels == c].mean(0) for c in ids])
    remap = np.full(labels.max() + 2, -1)
    remap[ids] = np.arange(len(ids))
    lab = np.where(labels >= 0, remap[labels], -1)
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
    if args.truth:
        y = _truth(args.truth)
        res["clusters"] = metrics.clustering_report(y, labels)
        res["probe"] = metrics.clustering_report(y, pred)
        lines += [_metric_line("clusters", res["clusters"]), _metric_line("probe", res["probe"])]
    return _emit(args, res, lines)


def _run_config(args: argparse.Namespace) -> Dict[str, Any]:
    """Flags, overridden by nothing, on top of a JSON config file when one is given."""
    cfg: Dict[str, Any] = {}
    if args.config:
        from ._io import load_json

        cfg = dict(load_json(args.config))
        unknown = set(cfg) - {"data", "encoder", "n_clusters", "algorithm", "eps", "min_samples", "normalize",
                              "probe", "probe_rounds", "out", "cache_dir", "seed", "report", "batch_size"}
        if unknown:
            raise ValueError(f"unknown keys in {args.config}: {sorted(unknown)}")
    for k in ("data", "encoder", "n_clusters", "algorithm", "eps", "min_samples", "out", "cache_dir", "seed",
              "batch_size", "probe_rounds"):
        v = getattr(args, k)
        if v is not None:
            cfg[k] = v
    if args.no_normalize:
        cfg["normalize"] = False
    if args.no_probe:
        cfg["probe"] = False
    if args.no_report:
        cfg["report"] = False
    for need in ("data", "out"):
        if need not in cfg:
            raise ValueError(f"run needs {need}: pass --{need} or put it in the config file")
    return cfg


def _cmd_run(args: argparse.Namespace) -> int:
    from .cluster import DBSCAN, KMeans
    from .data import load
    from .pipeline import TransferClustering
    from .report import write_report

    cfg = _run_config(args)
    ds = load(cfg["data"])
    k = int(cfg.get("n_clusters") or (len(ds.class_names) if ds.class_names else 8))
    seed = int(cfg.get("seed", 0))
    clusterer = (DBSCAN(eps=float(cfg.get("eps", 0.5)), min_samples=int(cfg.get("min_samples", 5)))
                 if cfg.get("algorithm", "kmeans") == "dbscan" else KMeans(k, n_init=10, random_state=seed))
    tc = TransferClustering(encoder=cfg.get("encoder"), clusterer=clusterer, probe=cfg.get("probe", True),
                            normalize=cfg.get("normalize", True), probe_rounds=int(cfg.get("probe_rounds", 1)),
                            cache_dir=cfg.get("cache_dir"), batch_size=int(cfg.get("batch_size", 256)),
                            progress=not args.no_progress, seed=seed)
    tc.fit(ds)
    out = Path(cfg["out"])
    tc.save(out / "pipeline")
    res: Dict[str, Any] = {"data": ds.source, "n_points": len(ds), "n_clusters": int(tc.centers_.shape[0]),
                           "pipeline": str(out / "pipeline")}
    lines = [f"{len(ds)} items from {ds.source}: {res['n_clusters']} clusters; pipeline saved to {out / 'pipeline'}"]
    if ds.y is not None:
        ev = tc.evaluate(y=ds.y)
        res.update(ev)
        lines.append(_metric_line("clusters", ev["clusters"]))
        if "probe" in ev:
            lines.append(_metric_line("probe on pseudo-labels", ev["probe"]))
    if cfg.get("report", True):
        path = write_report(out / "report", tc.labels_, labels_true=ds.y, embeddings=tc.embeddings_,
                            images=ds.X if ds.kind == "images" else None, texts=ds.texts,
                            class_names=ds.class_names, title=f"embedcluster run: {ds.source}")
        res["report"] = str(path)
        lines.append(f"report: {path}")
    from ._io import save_json

    save_json(out / "metrics.json", res)
    return _emit(args, res, lines)


def _cmd_predict(args: argparse.Namespace) -> int:
    from .data import load
    from .pipeline import TransferClustering

    tc = TransferClustering.load(args.pipeline)
    tc.progress = not args.no_progress
    ds = load(args.data)
    pred = tc.predict(ds, flag_unknown=args.flag_unknown)
    if args.out:
        _save_npy(args.out, pred)
    res: Dict[str, Any] = {"n_points": int(len(pred)), "n_unknown": int((pred == -1).sum())}
    lines = [f"{len(pred)} items predicted" + (f" -> {args.out}" if args.out else "")
             + (f"; {res['n_unknown']} flagged unknown" if args.flag_unknown else "")]
    if not args.out:
        res["labels"] = pred.tolist()
        lines.append(" ".join(map(str, pred.tolist()[:50])) + (" ..." if len(pred) > 50 else ""))
    return _emit(args, res, lines)


def _cmd_demo(args: argparse.Namespace) -> int:
    """The transfer story on scikit-learn's digits (shipped with scikit-learn, no download)."""
    import time

    import numpy as np

    from . import metrics
    from .data import Dataset, load_digits_dataset
    from .encoders import save_checkpoint
    from .pipeline import TransferClustering
    from .pretrain import pretrain_supervised
    from .report import write_report

    t0 = time.perf_counter()
    digits = load_digits_dataset()
    # 8x8 images with values 0..16 -> uint8 0..255, the scale every encoder here expects.
    img = np.rint(np.asarray(digits.X, np.float32) * (255.0 / 16.0)).astype(np.uint8)
    ds = Dataset(X=img, y=digits.y, kind="images", class_names=digits.class_names, source="digits")
    source, target = ds.select_classes([0, 1, 2, 3, 4]), ds.select_classes([5, 6, 7, 8, 9])
    out = Path(args.out)
    rows: List[Dict[str, Any]] = []

    def score(name: str, labels, seconds: float) -> Dict[str, Any]:
        rep = metrics.clustering_report(target.y, labels)
        row = {"method": name, "accuracy": rep["accuracy"], "nmi": rep["nmi"], "ari": rep["ari"], "seconds": seconds}
        rows.append(row)
        return row

    t = time.perf_counter()
    raw = TransferClustering(n_clusters=5, normalize=False, progress=False, seed=args.seed).fit(target)
    score("k-means on raw pixels", raw.labels_, time.perf_counter() - t)
    score("  + linear probe on pseudo-labels", raw.probe_.predict(raw.embeddings_), 0.0)

    # The source task: an MLP trained with labels on digits 0-4 only.
    t = time.perf_counter()
    config = {"arch": "mlp", "in_shape": [8, 8], "hidden": [256, 128], "embed_dim": 64}
    enc, _ = pretrain_supervised(source.X, source.y, config, epochs=30, seed=args.seed, progress=False)
    ckpt = save_checkpoint(enc, out / "encoder", enc.config, embedding_layer="concat")
    pre_s = time.perf_counter() - t
    t = time.perf_counter()
    tc = TransferClustering(encoder=str(ckpt), n_clusters=5, progress=False, seed=args.seed).fit(target)
    score("k-means on transferred embeddings (0-4 encoder)", tc.labels_, time.perf_counter() - t)
    score("  + linear probe on pseudo-labels", tc.probe_.predict(tc.embeddings_), 0.0)
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
        print(json.dumps(result, indent=2))
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``embedcluster`` command."""
    p = argparse.ArgumentParser(prog="embedcluster", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    pi = sub.add_parser("info", help="version, build options, CPU features, threads, backends",
                        description="Print what this installation is: version, build options, CPU features "
                                    "seen, threads, OpenMP, whether CUDA was compiled, and the backends available.")
    pi.add_argument("--json", action="store_true", help="print the report as JSON")
    pi.set_defaults(func=_cmd_info)
    pd = sub.add_parser("demo", help="the transfer story on scikit-learn's digits, with a report",
                        description="Pretrain an encoder with labels on digits 0-4 (the source task), cluster digits "
                                    "5-9 that it never saw without labels, and compare k-means on raw pixels, on the "
                                    "transferred embeddings, and after a linear probe trained on the pseudo-labels "
                                    "(accuracy after Hungarian matching, NMI, ARI). Writes an HTML report, the "
                                    "encoder checkpoint and the fitted pipeline. No download.")
    pd.add_argument("--out", default="embedcluster-demo", help="output folder (default ./embedcluster-demo)")
    pd.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    pd.add_argument("--json", action="store_true", help="print the results as JSON")
    pd.set_defaults(func=_cmd_demo)

    def data_help(what: str) -> str:
        return (f"{what}: a .npy file, a folder of .npy shards or images, IDX files, a .txt / .csv / .jsonl file, "
                "'digits' or 'fashion-mnist[:train|test]'")

    pe = sub.add_parser("embed", help="embed a data set with an encoder", description="Embed DATA with ENCODER and "
                        "save the embeddings as a .npy file (float32). Embeddings are cached on disk with --cache-dir.")
    pe.add_argument("data", help=data_help("DATA"))
    pe.add_argument("--encoder", help="TorchScript file, embedcluster checkpoint folder, sentence-transformers "
                    "folder, 'all-MiniLM-L6-v2', 'torchvision:NAME' / 'timm:NAME' with local weights; none: raw features")
    pe.add_argument("--out", required=True, help="where to write the embeddings (.npy)")
    pe.add_argument("--labels-out", help="also write the data's true labels here (.npy), when it has them")
    pe.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    pe.add_argument("--batch-size", type=int, default=256, help="items per forward pass (default 256)")
    pe.add_argument("--cache-dir", help="embedding cache folder: a second run with the same encoder and data is instant")
    pe.add_argument("--no-progress", action="store_true", help="no progress bar")
    pe.add_argument("--json", action="store_true", help="print the result as JSON")
    pe.set_defaults(func=_cmd_embed)

    pc = sub.add_parser("cluster", help="cluster embeddings (k-means or DBSCAN)",
                        description="Cluster the rows of EMBEDDINGS (.npy) and write the labels (.npy, -1 = noise).")
    pc.add_argument("embeddings", help="embeddings (.npy, n x d)")
    pc.add_argument("--algorithm", choices=["kmeans", "dbscan"], default="kmeans", help="default kmeans")
    pc.add_argument("--n-clusters", type=int, default=8, help="k for k-means (default 8)")
    pc.add_argument("--n-init", type=int, default=10, help="k-means restarts, the lowest inertia wins (default 10)")
    pc.add_argument("--eps", type=float, default=0.5, help="DBSCAN radius (default 0.5)")
    pc.add_argument("--min-samples", type=int, default=5, help="DBSCAN core threshold (default 5)")
    pc.add_argument("--metric", choices=["l2", "cosine"], default="l2", help="default l2")
    pc.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    pc.add_argument("--out", required=True, help="where to write the labels (.npy)")
    pc.add_argument("--json", action="store_true", help="print the result as JSON")
    pc.set_defaults(func=_cmd_cluster)

    pv = sub.add_parser("evaluate", help="score cluster labels against true labels",
                        description="Accuracy after Hungarian matching, NMI, ARI, V-measure, purity and per-class "
                                    "precision / recall / F1 of LABELS against TRUTH.")
    pv.add_argument("--labels", required=True, help="predicted cluster labels (.npy)")
    pv.add_argument("--truth", required=True, help="true labels (.npy) or " + data_help("a data set with labels"))
    pv.add_argument("--json", action="store_true", help="print the full report as JSON")
    pv.set_defaults(func=_cmd_evaluate)

    pp = sub.add_parser("probe", help="train a linear probe on cluster pseudo-labels",
                        description="Train a linear probe on EMBEDDINGS with the cluster LABELS as pseudo-labels "
                                    "(points weighted by their distance margin, optional self-labeling rounds) and "
                                    "save it (safetensors + JSON).")
    pp.add_argument("embeddings", help="embeddings (.npy)")
    pp.add_argument("--labels", required=True, help="cluster labels (.npy); -1 (noise) is not trained on")
    pp.add_argument("--out", required=True, help="output folder for probe.safetensors + probe.json")
    pp.add_argument("--truth", help="true labels (.npy or a data set) to score clusters and probe")
    pp.add_argument("--rounds", type=int, default=1, help="self-labeling rounds (default 1)")
    pp.add_argument("--fraction", type=float, default=0.5, help="confident share per cluster (default 0.5)")
    pp.add_argument("--weighting", choices=["margin", "select"], default="margin",
                    help="margin: every point weighted by confidence (default); select: confident points only")
    pp.add_argument("--epochs", type=int, default=100, help="probe training epochs (default 100)")
    pp.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    pp.add_argument("--json", action="store_true", help="print the result as JSON")
    pp.set_defaults(func=_cmd_probe)

    pr = sub.add_parser("run", help="the whole chain: embed, cluster, probe, evaluate, save, report",
                        description="Embed DATA, cluster, train the probe, evaluate when labels exist, save the "
                                    "pipeline (OUT/pipeline), the metrics (OUT/metrics.json) and the HTML report "
                                    "(OUT/report). Settings come from flags and/or a JSON config file (--config) "
                                    "with the same names (flags win).")
    pr.add_argument("data", nargs="?", help=data_help("DATA"))
    pr.add_argument("--config", help="JSON file with any of: data, encoder, n_clusters, algorithm, eps, "
                    "min_samples, normalize, probe, probe_rounds, out, cache_dir, seed, report, batch_size")
    pr.add_argument("--encoder", help="encoder spec (see `embedcluster embed --help`); none: raw features")
    pr.add_argument("--n-clusters", type=int, help="k (default: the number of classes when known, else 8)")
    pr.add_argument("--algorithm", choices=["kmeans", "dbscan"], help="default kmeans")
    pr.add_argument("--eps", type=float, help="DBSCAN radius")
    pr.add_argument("--min-samples", type=int, help="DBSCAN core threshold")
    pr.add_argument("--probe-rounds", type=int, help="self-labeling rounds (default 1)")
    pr.add_argument("--no-normalize", action="store_true", help="do not L2-normalise embeddings")
    pr.add_argument("--no-probe", action="store_true", help="no linear probe")
    pr.add_argument("--no-report", action="store_true", help="no HTML report")
    pr.add_argument("--cache-dir", help="embedding cache folder")
    pr.add_argument("--batch-size", type=int, help="items per forward pass (default 256)")
    pr.add_argument("--seed", type=int, help="random seed (default 0)")
    pr.add_argument("--out", help="output folder")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    pr.add_argument("--json", action="store_true", help="print the results as JSON")
    pr.set_defaults(func=_cmd_run)

    pq = sub.add_parser("predict", help="assign new data to the clusters of a saved pipeline",
                        description="Load a pipeline saved by `run` (or TransferClustering.save) and predict the "
                                    "cluster of every item of DATA. With --flag-unknown, items farther from every "
                                    "cluster centre than the pipeline's threshold get -1.")
    pq.add_argument("pipeline", help="pipeline folder")
    pq.add_argument("data", help=data_help("DATA"))
    pq.add_argument("--out", help="write the labels here (.npy); otherwise they are printed")
    pq.add_argument("--flag-unknown", action="store_true", help="label items far from every cluster -1")
    pq.add_argument("--no-progress", action="store_true", help="no progress bar")
    pq.add_argument("--json", action="store_true", help="print the result as JSON")
    pq.set_defaults(func=_cmd_predict)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``embedcluster`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, ImportError, MemoryError) as exc:
        print(f"embedcluster {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"embedcluster {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
